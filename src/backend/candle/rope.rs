//! RoPE as candle ops: f32 cos/sin tables cast to the compute dtype, and candle-nn's
//! rotary kernel, with its slow twin.

use candle_core::{DType, Device, Tensor};

use crate::error::Result;
use crate::model::rope::Rope;

/// `(cos, sin)` tables of shape `[len, head_dim / 2]` for positions `start..start+len`,
/// computed in f32 and then cast to `dtype`.
pub(crate) fn tables(rope: &Rope, start: usize, len: usize, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = rope.inv_freq().len();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for pos in start..start + len {
        for &f in rope.inv_freq() {
            let angle = pos as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    let cos = Tensor::from_vec(cos, (len, half), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (len, half), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// Applies RoPE in the "rotate half" layout of HF Llama to `x: [heads, len, head_dim]`.
pub(crate) fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let x = x.unsqueeze(0)?.contiguous()?;
    Ok(candle_nn::rotary_emb::rope(&x, cos, sin)?.squeeze(0)?)
}

#[cfg(test)]
/// Slow, obviously correct twin of [`apply`]: `x * cos + rotate_half(x) * sin`.
pub(crate) fn apply_slow(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(2)?;
    let (x1, x2) = (x.narrow(2, 0, d / 2)?, x.narrow(2, d / 2, d / 2)?);
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], 2)?;
    let cos = Tensor::cat(&[cos, cos], 1)?.unsqueeze(0)?;
    let sin = Tensor::cat(&[sin, sin], 1)?.unsqueeze(0)?;
    Ok((x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_rope_matches_slow_rope() {
        let cfg = crate::model::rope::tests::cfg(None);
        let rope = Rope::new(&cfg);
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (3, 5, 16), &dev).unwrap();
        let (cos, sin) = tables(&rope, 7, 5, DType::F32, &dev).unwrap();
        let fast = apply(&x, &cos, &sin).unwrap();
        let slow = apply_slow(&x, &cos, &sin).unwrap();
        assert!(crate::backend::testutil::max_abs_diff(&fast, &slow) < 1e-6);
    }
}
