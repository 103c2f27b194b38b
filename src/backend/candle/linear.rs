//! A bias-free linear layer over `[tokens, in]` activations as candle ops: dense, or with
//! weights in candle's quantized formats (its CPU NEON and GPU kernels).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Tensor};

use crate::error::Result;

/// `y = x W^T` with `W: [out, in]` as stored in HF checkpoints.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    /// Weights in the compute dtype.
    Dense(Tensor),
    /// Weights quantized in blocks (candle's formats and kernels); activations stay f32.
    Quantized(Arc<QTensor>),
}

impl Linear {
    /// Quantizes a `[out, in]` f32 weight to `dtype` in candle's formats (falling back to
    /// Q8_0, then to dense, when rows are not whole `dtype` blocks).
    pub fn quantize(weight: Tensor, dtype: GgmlDType) -> Result<Self> {
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
            Self::Dense(w) => x.matmul(&w.t()?)?,
            Self::Quantized(q) => QMatMul::from_arc(q.clone())?.forward(x)?,
        })
    }

    /// Applies several layers to the same input; when all are quantized, candle's fused
    /// kernel quantizes `x` once for all of them where it can.
    pub fn forward_shared(layers: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let quantized: Option<Vec<&QTensor>> = layers
            .iter()
            .map(|l| match l {
                Self::Quantized(q) => Some(q.as_ref()),
                Self::Dense(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::testutil::rel_max_diff;
    use candle_core::Device;

    #[test]
    fn quantized_layers_track_the_dense_layer() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.05, (64, 512), &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (3, 512), &dev).unwrap();
        let dense = Linear::Dense(w.clone()).forward(&x).unwrap();
        for (dtype, tol) in [(GgmlDType::Q8_0, 0.02), (GgmlDType::Q4K, 0.15)] {
            let q = Linear::quantize(w.clone(), dtype).unwrap();
            assert!(matches!(q, Linear::Quantized(_)));
            let err = rel_max_diff(&q.forward(&x).unwrap(), &dense);
            assert!(err < tol, "{dtype:?}: {err}");
            let shared = Linear::forward_shared(&[&q, &q], &x.narrow(0, 0, 1).unwrap()).unwrap();
            let single = q.forward(&x.narrow(0, 0, 1).unwrap()).unwrap();
            assert!(rel_max_diff(&shared[1], &single) < 1e-6);
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_stay_dense() {
        let w = Tensor::randn(0f32, 1.0, (4, 40), &Device::Cpu).unwrap();
        assert!(matches!(
            Linear::quantize(w, GgmlDType::Q8_0).unwrap(),
            Linear::Dense(_)
        ));
    }
}
