//! A bias-free linear layer over `[tokens, in]` activations.

use candle_core::Tensor;

use crate::error::Result;

/// `y = x W^T` with `W: [out, in]` as stored in HF checkpoints.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    /// Wraps a `[out, in]` weight.
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// `x: [tokens, in] -> [tokens, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.matmul(&self.weight.t()?)?)
    }
}
