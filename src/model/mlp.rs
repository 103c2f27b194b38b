//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use crate::error::Result;
use crate::model::linear::Linear;

/// Llama's gated MLP.
#[derive(Debug, Clone)]
pub struct Mlp {
    /// `[intermediate, hidden]`
    pub gate: Linear,
    /// `[intermediate, hidden]`
    pub up: Linear,
    /// `[hidden, intermediate]`
    pub down: Linear,
}

impl Mlp {
    /// `x: [tokens, hidden] -> [tokens, hidden]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.gate.forward(x)?)?;
        let up = self.up.forward(x)?;
        self.down.forward(&(gate * up)?)
    }
}
