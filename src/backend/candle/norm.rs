//! RMSNorm, computed in f32 like HF's `LlamaRMSNorm`.

use candle_core::Tensor;

use crate::error::Result;

/// Root-mean-square layer norm with a learned per-channel weight.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Wraps a `[hidden]` weight.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self {
            weight,
            eps: eps as f32,
        }
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps)?)
    }

    #[cfg(test)]
    /// Slow twin of [`RmsNorm::forward`]: `w * x / sqrt(mean(x^2) + eps)` in f32.
    pub fn forward_slow(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(candle_core::DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps as f64)?.sqrt()?)?;
        Ok(normed.to_dtype(dtype)?.broadcast_mul(&self.weight)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fast_matches_slow() {
        let dev = Device::Cpu;
        let w = Tensor::randn(1f32, 0.1, 32, &dev).unwrap();
        let x = Tensor::randn(0f32, 3.0, (5, 32), &dev).unwrap();
        let n = RmsNorm::new(w, 1e-5);
        let d = crate::backend::testutil::max_abs_diff(&n.forward(&x).unwrap(), &n.forward_slow(&x).unwrap());
        assert!(d < 1e-5, "{d}");
    }
}
