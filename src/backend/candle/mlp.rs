//! The SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`.

use candle_core::Tensor;

use super::linear::Linear;
use crate::error::Result;

/// Llama's gated MLP.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
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
        let mut gate_up = Linear::forward_shared(&[&self.gate, &self.up], x)?.into_iter();
        let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
            return Err(candle_core::Error::Msg("gate/up projection count".into()).into());
        };
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}
