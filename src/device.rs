//! Device and compute-dtype selection, with clear errors for what this build or machine
//! cannot do.

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceKind {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// An NVIDIA GPU by ordinal (needs the `cuda` cargo feature).
    Cuda(usize),
    /// An Apple GPU by ordinal (needs the `metal` cargo feature).
    Metal(usize),
}

/// Compute dtype of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComputeDType {
    /// 32-bit float: the exact reference path.
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// Linear layers quantized in place to Q8_0 (8-bit blocks of 32), f32 activations.
    Q8_0,
    /// Linear layers quantized in place to 4 bits with Q4_K's structure (super-blocks of
    /// 256, sub-blocks of 32 with their own scale and minimum), f32 activations.
    Q4K,
    /// Q4K with more bits where they matter most, like llama.cpp's Q4_K_M: the output
    /// projection, every `v_proj` and the `down_proj` of a third of the layers (the first
    /// and last eighth and every third between) in Q8_0.
    Q4KM,
}

/// Which linear layer a weight is, for mixed formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerRole {
    /// The output projection (`lm_head`, or the tied embedding).
    Output,
    /// `self_attn.v_proj` of layer `.0` of `.1`.
    Value(usize, usize),
    /// `mlp.down_proj` of layer `.0` of `.1`.
    Down(usize, usize),
    /// Any other linear layer.
    Other,
}

impl FromStr for DeviceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (name, ordinal) = match s.split_once(':') {
            Some((n, o)) => (n, o.parse::<usize>().ok()),
            None => (s, Some(0)),
        };
        match (name, ordinal) {
            ("cpu", _) => Ok(Self::Cpu),
            ("cuda", Some(o)) => Ok(Self::Cuda(o)),
            ("metal", Some(o)) => Ok(Self::Metal(o)),
            _ => Err(Error::InvalidParameter {
                name: "device",
                reason: format!("`{s}` is not one of cpu, cuda[:N], metal[:N]"),
            }),
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(o) => write!(f, "cuda:{o}"),
            Self::Metal(o) => write!(f, "metal:{o}"),
        }
    }
}

impl FromStr for ComputeDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::Bf16),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q4k" | "q4_k" => Ok(Self::Q4K),
            "q4k_m" | "q4_k_m" => Ok(Self::Q4KM),
            _ => Err(Error::InvalidParameter {
                name: "dtype",
                reason: format!("`{s}` is not one of f32, f16, bf16, q8_0, q4k, q4k_m"),
            }),
        }
    }
}

impl fmt::Display for ComputeDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4k",
            Self::Q4KM => "q4k_m",
        })
    }
}

impl ComputeDType {
    /// The candle dtype of activations (and of the weights unless quantized).
    pub fn to_candle(self) -> DType {
        match self {
            Self::F32 | Self::Q8_0 | Self::Q4K | Self::Q4KM => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }

    /// The block format of quantized linear layers, `None` for dense ones.
    pub fn quant(self) -> Option<GgmlDType> {
        match self {
            Self::Q8_0 => Some(GgmlDType::Q8_0),
            Self::Q4K | Self::Q4KM => Some(GgmlDType::Q4K),
            _ => None,
        }
    }

    /// The block format of one linear layer (mixed for [`ComputeDType::Q4KM`]).
    pub fn quant_for(self, role: LayerRole) -> Option<GgmlDType> {
        // llama.cpp's `use_more_bits`: the first and last eighth, and every third between.
        let more = |l: usize, n: usize| l < n / 8 || l >= 7 * n / 8 || (l - n / 8) % 3 == 2;
        match (self, role) {
            (Self::Q4KM, LayerRole::Output | LayerRole::Value(..)) => Some(GgmlDType::Q8_0),
            (Self::Q4KM, LayerRole::Down(l, n)) if more(l, n) => Some(GgmlDType::Q8_0),
            _ => self.quant(),
        }
    }
}

impl DeviceKind {
    /// Opens the device, or explains why this build cannot.
    pub fn open(self) -> Result<Device> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(_) if !cfg!(feature = "cuda") => Err(Error::Unsupported(
                "this build has no CUDA support: rebuild with `--features cuda`".into(),
            )),
            Self::Metal(_) if !cfg!(feature = "metal") => Err(Error::Unsupported(
                "this build has no Metal support: rebuild with `--features metal`".into(),
            )),
            Self::Cuda(o) => Device::new_cuda(o).map_err(|e| Error::Unsupported(format!("cuda:{o}: {e}"))),
            Self::Metal(o) => Device::new_metal(o).map_err(|e| Error::Unsupported(format!("metal:{o}: {e}"))),
        }
    }

    /// The dtype used when the user asks for none: Q8_0 on CPU (decode is memory-bound:
    /// 8-bit weights run about 4x faster than f32 with top-1 agreement close to f32;
    /// `--dtype f32` is the exact path), the checkpoint's 16-bit dtype on a GPU.
    pub fn default_dtype(self, stored: Option<DType>) -> ComputeDType {
        match (self, stored) {
            (Self::Cpu, _) => ComputeDType::Q8_0,
            (_, Some(DType::F32)) => ComputeDType::F32,
            (_, Some(DType::F16)) => ComputeDType::F16,
            _ => ComputeDType::Bf16,
        }
    }
}

/// Checks that `device` can run the ops the model needs in `dtype` (a tiny matmul,
/// softmax and RMSNorm), so an unsupported combination fails before loading weights.
pub fn check_dtype(device: &Device, kind: DeviceKind, dtype: ComputeDType) -> Result<()> {
    let probe = || -> candle_core::Result<()> {
        let a = Tensor::ones((2, 4), dtype.to_candle(), device)?;
        let w = Tensor::ones(4, dtype.to_candle(), device)?;
        let s = a.matmul(&a.t()?)?;
        candle_nn::ops::softmax_last_dim(&s)?;
        candle_nn::ops::rms_norm(&a, &w, 1e-5)?;
        Ok(())
    };
    probe().map_err(|e| {
        Error::Unsupported(format!(
            "--dtype {dtype} is not supported on {kind} by this build ({}); use --dtype f32",
            e.to_string().lines().next().unwrap_or_default()
        ))
    })
}

#[cfg(test)]
mod mixed_tests {
    use super::*;

    #[test]
    fn q4k_m_gives_more_bits_where_llama_cpp_does() {
        let q = ComputeDType::Q4KM;
        assert_eq!(q.quant_for(LayerRole::Output), Some(GgmlDType::Q8_0));
        assert_eq!(q.quant_for(LayerRole::Value(5, 16)), Some(GgmlDType::Q8_0));
        assert_eq!(q.quant_for(LayerRole::Other), Some(GgmlDType::Q4K));
        // 16 layers: the first and last two, and every third from layer 2 on.
        let more: Vec<usize> = (0..16)
            .filter(|&l| q.quant_for(LayerRole::Down(l, 16)) == Some(GgmlDType::Q8_0))
            .collect();
        assert_eq!(more, vec![0, 1, 4, 7, 10, 13, 14, 15]);
        assert_eq!(ComputeDType::Q4K.quant_for(LayerRole::Output), Some(GgmlDType::Q4K));
        assert_eq!("q4k_m".parse::<ComputeDType>().unwrap(), q);
    }
}
