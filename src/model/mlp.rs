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
        let mut gate_up = Linear::forward_shared(&[&self.gate, &self.up], x)?.into_iter();
        let (Some(gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
            return Err(candle_core::Error::Msg("gate/up projection count".into()).into());
        };
        self.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

isa_dispatch! {
    /// `g = silu(g) * u` element-wise (the SwiGLU product of the batched CPU path), vectorised:
    /// the sigmoid comes from `e^-|g|` ([`super::paged::exp_neg`], within 2 ulp of `exp`), not
    /// from a libm call per value. Every ISA gives the same bits (fused multiply-adds only).
    pub fn silu_mul_rows(g: &mut [f32], u: &[f32]) => silu_body;
}

#[inline(always)]
fn silu_body(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        let e = super::paged::exp_neg(-g.abs());
        let r = 1.0 / (1.0 + e);
        let s = if *g >= 0.0 { r } else { e * r };
        *g = *g * s * u;
    }
}

#[cfg(test)]
mod silu_tests {
    use super::*;

    #[test]
    fn silu_mul_follows_the_exact_formula() {
        let g: Vec<f32> = (-2000..2000)
            .map(|i| i as f32 * 0.011)
            .chain([f32::NAN, 0.0, -0.0, 90.0, -90.0])
            .collect();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let mut got = g.clone();
        silu_mul_rows(&mut got, &u);
        let mut portable = g.clone();
        silu_body(&mut portable, &u);
        for i in 0..g.len() {
            let want = (g[i] as f64 / (1.0 + (-g[i] as f64).exp()) * u[i] as f64) as f32;
            let same = got[i].to_bits() == portable[i].to_bits() || (got[i].is_nan() && portable[i].is_nan());
            assert!(same, "ISA paths differ at {}", g[i]);
            if want.is_nan() {
                assert!(got[i].is_nan());
            } else {
                // Relative 4 ulp; below e^-87 (where `exp_neg` stops) absolutely tiny.
                let tol = 4.0 * f32::EPSILON * want.abs() + 1e-30;
                assert!((got[i] - want).abs() <= tol, "{}: {} vs {want}", g[i], got[i]);
            }
        }
    }
}
