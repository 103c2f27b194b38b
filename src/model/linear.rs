//! A bias-free linear layer over `[tokens, in]` activations: dense, or with weights
//! quantized in place (Q8_0 / Q4_K): our packed formats and integer kernels on CPU
//! ([`crate::model::quant`]), candle's quantized tensors on other devices.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::error::Result;
use crate::model::host::{is_cpu_f32, with_f32_slice};
use crate::model::quant::{Isa, PackedFormat, PackedWeight};
use crate::model::spare::Spare;

/// `y = x W^T` with `W: [out, in]` as stored in HF checkpoints.
#[derive(Debug, Clone)]
pub enum Linear {
    /// Weights in the compute dtype.
    Dense(Tensor),
    /// Weights quantized in blocks (candle's formats and kernels); activations stay f32.
    Quantized(Arc<QTensor>),
    /// Weights in our packed CPU formats, activations quantized to 8 bits per matmul.
    Packed(Arc<PackedWeight>),
}

impl Linear {
    /// Wraps a `[out, in]` weight.
    pub fn new(weight: Tensor) -> Self {
        Self::Dense(weight)
    }

    /// Quantizes a `[out, in]` f32 weight to `dtype`: on an x86 CPU with AVX2 or AVX-512
    /// into our packed format (rows must be whole blocks of 32, else the layer stays dense
    /// f32), elsewhere into candle's (falling back to Q8_0, then to dense, when rows are not
    /// whole `dtype` blocks).
    pub fn quantize(weight: Tensor, dtype: GgmlDType) -> Result<Self> {
        if weight.device().is_cpu() && Isa::detect() != Isa::Portable {
            let format = PackedFormat::from(dtype);
            let (rows, cols) = weight.dims2()?;
            let packed = with_f32_slice(&weight, |w| PackedWeight::pack(w, rows, cols, format))?;
            return Ok(packed.map_or(Self::Dense(weight), |p| Self::Packed(Arc::new(p))));
        }
        let cols = weight.dim(1)?;
        let dtype = [dtype, GgmlDType::Q8_0]
            .into_iter()
            .find(|d| cols % d.block_size() == 0);
        Ok(match dtype {
            Some(d) => Self::Quantized(Arc::new(QTensor::quantize(&weight, d)?)),
            None => Self::Dense(weight),
        })
    }

    /// `x: [tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Dense(w) => match crate::model::gemv::try_gemv(x, w)? {
                Some(y) => y,
                None => x.matmul(&w.t()?)?,
            },
            Self::Quantized(q) => QMatMul::from_arc(q.clone())?.forward(x)?,
            Self::Packed(p) => {
                let mut out = packed_forward(&[p], x)?;
                out.pop()
                    .ok_or_else(|| candle_core::Error::Msg("packed matmul output".into()))?
            }
        })
    }

    /// Applies several layers to the same input; when all are quantized with the same
    /// format, one fused kernel quantizes `x` once and runs them in one parallel region.
    pub fn forward_shared(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        if let Some(ps) = all_packed(layers) {
            return packed_forward(&ps, x);
        }
        let quantized: Option<Vec<&QTensor>> = layers
            .iter()
            .map(|l| match l {
                Self::Quantized(q) => Some(q.as_ref()),
                _ => None,
            })
            .collect();
        if let Some(qs) = quantized {
            if let Some(outs) = QTensor::gemv_fused_shared_lhs(&qs, &x.contiguous()?)? {
                return Ok(outs);
            }
        }
        layers.iter().map(|l| l.forward(x)).collect()
    }
}

impl Linear {
    /// True when [`Linear::forward_slices`] can run this layer (packed, or dense f32 on CPU).
    pub fn runs_on_slices(&self) -> bool {
        match self {
            Self::Packed(_) => true,
            Self::Dense(w) => is_cpu_f32(w),
            Self::Quantized(_) => false,
        }
    }

    /// One token `x: [in]` through several layers sharing it, on plain slices; every layer
    /// must satisfy [`Linear::runs_on_slices`].
    pub fn forward_slices(layers: &[&Linear], x: &[f32]) -> Result<Vec<Vec<f32>>> {
        if let Some(ps) = all_packed(layers) {
            return PackedWeight::matmul_many(&ps, x, 1);
        }
        layers
            .iter()
            .map(|l| match l {
                Self::Packed(p) => p.matmul(x, 1),
                Self::Dense(w) => with_f32_slice(w, |ws| crate::model::gemv::gemv(ws, x)),
                Self::Quantized(_) => Err(candle_core::Error::Msg("quantized layer on slices".into()).into()),
            })
            .collect()
    }
}

impl Linear {
    /// `x: [m, in]` (row-major) through several layers sharing it, on plain slices; every
    /// layer must satisfy [`Linear::runs_on_slices`]. Each output row depends only on its
    /// input row (the packed kernels and dense dot products work row by row). Packed
    /// layers take their buffers from `spare`.
    pub fn forward_rows(layers: &[&Linear], x: &[f32], m: usize, spare: &mut Spare) -> Result<Vec<Vec<f32>>> {
        if let Some(ps) = all_packed(layers) {
            return PackedWeight::matmul_many_spare(&ps, x, m, spare);
        }
        layers
            .iter()
            .map(|l| match l {
                Self::Packed(p) => p.matmul(x, m),
                Self::Dense(w) => with_f32_slice(w, |ws| {
                    let k = x.len().checked_div(m).unwrap_or(0);
                    x.chunks(k.max(1))
                        .flat_map(|row| crate::model::gemv::gemv(ws, row))
                        .collect()
                }),
                Self::Quantized(_) => Err(candle_core::Error::Msg("quantized layer on slices".into()).into()),
            })
            .collect()
    }

    /// True for our packed CPU formats.
    pub fn is_packed(&self) -> bool {
        matches!(self, Self::Packed(_))
    }
}

/// Every layer's packed weight, or `None` unless all of them are packed.
fn all_packed<'a>(layers: &[&'a Linear]) -> Option<Vec<&'a PackedWeight>> {
    layers
        .iter()
        .map(|l| match l {
            Linear::Packed(p) => Some(p.as_ref()),
            _ => None,
        })
        .collect()
}

/// Packed weights with the same input width applied to `x: [tokens, in]`.
fn packed_forward(ps: &[&PackedWeight], x: &Tensor) -> Result<Vec<Tensor>> {
    let m = x.dim(0)?;
    let outs = with_f32_slice(x, |xs| PackedWeight::matmul_many(ps, xs, m))??;
    ps.iter()
        .zip(outs)
        .map(|(p, y)| Ok(Tensor::from_vec(y, (m, p.dims().0), &Device::Cpu)?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::rel_max_diff;
    use candle_core::Device;

    #[test]
    fn quantized_layers_track_the_dense_layer() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 512), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 512), &dev).unwrap();
        let dense = Linear::new(w.clone()).forward(&x).unwrap();
        for (dtype, tol) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::Q4K, 0.15)] {
            let q = Linear::quantize(w.clone(), dtype).unwrap();
            assert!(matches!(q, Linear::Packed(_)));
            let err = rel_max_diff(&q.forward(&x).unwrap(), &dense);
            assert!(err < tol, "{dtype:?}: {err}");
            let shared = Linear::forward_shared(&[&q, &q], &x.narrow(0, 0, 1).unwrap()).unwrap();
            let single = q.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
            assert!(rel_max_diff(&shared[1], &single) < 1e-6);
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_stay_dense() {
        let w = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
        let Linear::Packed(p) = Linear::quantize(w, GgmlDType::Q4K).unwrap() else {
            panic!("64 columns pack")
        };
        assert_eq!(p.format(), PackedFormat::Q4K);
        let w = Tensor::randn(0f32, 1.0, (4, 40), &Device::Cpu).unwrap();
        assert!(matches!(
            Linear::quantize(w, GgmlDType::Q8_0).unwrap(),
            Linear::Dense(_)
        ));
    }
}
