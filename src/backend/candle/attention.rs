//! Grouped-query self-attention with RoPE and the KV cache.
//!
//! Query heads are grouped by the key/value head they share, so attention runs as one
//! batched matmul per KV head without materialising repeated K/V heads.

use candle_core::{DType, Device, Tensor};

use super::kv_cache::KvCache;
use super::linear::Linear;
use super::rope;
use crate::error::Result;

/// One layer's attention projections and head layout.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    /// `[heads * head_dim, hidden]`
    pub q: Linear,
    /// `[kv_heads * head_dim, hidden]`
    pub k: Linear,
    /// `[kv_heads * head_dim, hidden]`
    pub v: Linear,
    /// `[hidden, heads * head_dim]`
    pub o: Linear,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

/// Inputs shared by all layers of one forward pass.
pub(crate) struct Step<'a> {
    /// Cosine table for the new positions, `[n, head_dim / 2]`.
    pub cos: &'a Tensor,
    /// Sine table for the new positions.
    pub sin: &'a Tensor,
    /// Additive causal mask `[n, past + n]`, `None` for a single token.
    pub mask: Option<&'a Tensor>,
}

impl Attention {
    /// `x: [n, hidden]` at positions `cache.len()..+n` -> `[n, hidden]`; writes K/V of
    /// layer `layer` into `cache`.
    pub fn forward(&self, x: &Tensor, layer: usize, cache: &mut KvCache, step: &Step) -> Result<Tensor> {
        let n = x.dim(0)?;
        let heads_first = |t: Tensor, h: usize| -> Result<Tensor> {
            Ok(t.reshape((n, h, self.head_dim))?.transpose(0, 1)?.contiguous()?)
        };
        let [q, k, v]: [Tensor; 3] = Linear::forward_shared(&[&self.q, &self.k, &self.v], x)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("q/k/v projection count".into()))?;
        let q = heads_first(q, self.heads)?;
        let k = heads_first(k, self.kv_heads)?;
        let v = heads_first(v, self.kv_heads)?;
        let q = rope::apply(&q, step.cos, step.sin)?;
        let k = rope::apply(&k, step.cos, step.sin)?;
        let (k_all, v_all) = cache.append(layer, &k, &v)?;
        let out = grouped_attention(&q, &k_all, &v_all, step.mask)?;
        let out = out.transpose(0, 1)?.reshape((n, self.heads * self.head_dim))?;
        self.o.forward(&out)
    }
}

/// Scaled dot-product attention of `q: [heads, n, d]` against `k, v: [kv_heads, t, d]`,
/// query head `h` using KV head `h / (heads / kv_heads)` like HF's `repeat_kv`.
pub fn grouped_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (heads, n, d) = q.dims3()?;
    let (kv_heads, t, _) = k.dims3()?;
    let group = heads / kv_heads;
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.reshape((kv_heads, group * n, d))?;
    let scores = (q.matmul(&k.t()?)? * scale)?;
    let scores = match mask {
        Some(mask) => {
            scores
                .reshape((kv_heads, group, n, t))?
                .broadcast_add(mask)?
                .reshape((kv_heads, group * n, t))?
        }
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    Ok(probs.matmul(&v.contiguous()?)?.reshape((heads, n, d))?)
}

#[cfg(test)]
/// Slow twin of [`grouped_attention`]: repeats KV heads explicitly and uses a plain softmax.
pub fn grouped_attention_slow(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (heads, _, d) = q.dims3()?;
    let group = heads / k.dim(0)?;
    let mut outs = Vec::with_capacity(heads);
    for h in 0..heads {
        let (qh, kh, vh) = (q.get(h)?, k.get(h / group)?, v.get(h / group)?);
        let mut s = (qh.matmul(&kh.t()?)? / (d as f64).sqrt())?;
        if let Some(m) = mask {
            s = (s + m)?;
        }
        let p = candle_nn::ops::softmax(&s, candle_core::D::Minus1)?;
        outs.push(p.matmul(&vh.contiguous()?)?);
    }
    Ok(Tensor::stack(&outs, 0)?)
}

/// The additive causal mask for `n` new tokens after `past` cached ones: `[n, past + n]`,
/// 0 where query `i` may see key `j` (`j <= past + i`), `-inf` elsewhere.
pub fn causal_mask(n: usize, past: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let t = past + n;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..t).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    Ok(Tensor::from_vec(data, (n, t), device)?.to_dtype(dtype)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_matches_repeated_heads() {
        let dev = Device::Cpu;
        for (heads, kv) in [(4, 1), (4, 2), (6, 3), (2, 2)] {
            for (n, past) in [(1, 5), (4, 0), (3, 6)] {
                let q = Tensor::randn(0f32, 1.0, (heads, n, 8), &dev).unwrap();
                let k = Tensor::randn(0f32, 1.0, (kv, past + n, 8), &dev).unwrap();
                let v = Tensor::randn(0f32, 1.0, (kv, past + n, 8), &dev).unwrap();
                let mask = causal_mask(n, past, DType::F32, &dev).unwrap();
                let m = (n > 1).then_some(&mask);
                let fast = grouped_attention(&q, &k, &v, m).unwrap();
                let slow = grouped_attention_slow(&q, &k, &v, m).unwrap();
                let d = crate::backend::testutil::max_abs_diff(&fast, &slow);
                assert!(d < 1e-5, "heads {heads} kv {kv} n {n}");
            }
        }
    }
}
