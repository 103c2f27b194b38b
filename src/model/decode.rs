//! The one-token decode step on CPU in f32, over plain slices.
//!
//! A decode step moves one row of 2-8 thousand values through each layer; as candle ops
//! that is a few dozen tiny tensor operations per layer, each with its own allocation,
//! dispatch and sometimes thread hand-off, which cost about as much as attention itself.
//! Here the same arithmetic runs on `Vec<f32>`s: norms, RoPE, attention over the cache
//! and the SwiGLU product in plain loops, and only the matmuls go parallel (one region per
//! projection group). [`Llama::forward`](super::Llama::forward) on a multi-token chunk, the
//! candle-op path, is this path's reference and is tested against it.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::attention::Attention;
use super::gemv::dot_lanes;
use super::host::with_f32_strided;
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::mlp::Mlp;
use super::Llama;
use crate::error::{Error, Result};

impl Llama {
    /// True when decode steps can run on slices: CPU, f32 activations, and every layer
    /// packed or dense f32.
    pub(super) fn steps_on_slices(&self) -> bool {
        let layers_ok = self.layers.iter().all(|l| {
            let a = &l.attn;
            [&a.q, &a.k, &a.v, &a.o, &l.mlp.gate, &l.mlp.up, &l.mlp.down]
                .iter()
                .all(|lin| lin.runs_on_slices())
        });
        self.device.is_cpu() && self.dtype == DType::F32 && layers_ok && self.lm_head.runs_on_slices()
    }

    /// Runs `token` at position `cache.len()`, appends it to `cache` and returns the logits.
    ///
    /// The step runs on a worker of the thread pool (one hand-off per token): its ~80
    /// parallel matmuls then start from inside the pool, instead of each paying a
    /// cross-thread wake-up (~15 us) from a caller outside it.
    pub(super) fn step_on_slices(&self, token: u32, cache: &mut KvCache) -> Result<Vec<f32>> {
        rayon::scope(|_| self.step_in_pool(token, cache))
    }

    fn step_in_pool(&self, token: u32, cache: &mut KvCache) -> Result<Vec<f32>> {
        let ids = Tensor::new(&[token], &Device::Cpu)?;
        let mut x: Vec<f32> = self
            .embed
            .index_select(&ids, 0)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let (cos, sin) = self.rope.angles(cache.len());
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward_slice(&x)?;
            add_assign(&mut x, &layer.attn.step(&h, l, cache, &cos, &sin)?);
            let h = layer.post_attn_norm.forward_slice(&x)?;
            add_assign(&mut x, &layer.mlp.step(&h)?);
        }
        cache.advance(1);
        let h = self.norm.forward_slice(&x)?;
        single(Linear::forward_slices(&[&self.lm_head], &h)?)
    }
}

impl Attention {
    /// One token `h: [hidden]` of layer `layer` -> `[hidden]`, its K/V appended to `cache`.
    fn step(&self, h: &[f32], layer: usize, cache: &mut KvCache, cos: &[f32], sin: &[f32]) -> Result<Vec<f32>> {
        let d = self.head_dim;
        let mut qkv = Linear::forward_slices(&[&self.q, &self.k, &self.v], h)?.into_iter();
        let (Some(mut q), Some(mut k), Some(v)) = (qkv.next(), qkv.next(), qkv.next()) else {
            return Err(Error::Candle(candle_core::Error::Msg("q/k/v projection count".into())));
        };
        rotate(&mut q, d, cos, sin);
        rotate(&mut k, d, cos, sin);
        let k = Tensor::from_vec(k, (self.kv_heads, 1, d), &Device::Cpu)?;
        let v = Tensor::from_vec(v, (self.kv_heads, 1, d), &Device::Cpu)?;
        let (k_all, v_all) = cache.append(layer, &k, &v)?;
        let out = Cached::with(&k_all, &v_all, |c| attend(&q, c, self.heads, self.kv_heads, d))?;
        single(Linear::forward_slices(&[&self.o], &out)?)
    }
}

impl Mlp {
    /// One token `h: [hidden]` -> `[hidden]`.
    fn step(&self, h: &[f32]) -> Result<Vec<f32>> {
        let mut gate_up = Linear::forward_slices(&[&self.gate, &self.up], h)?.into_iter();
        let (Some(mut gate), Some(up)) = (gate_up.next(), gate_up.next()) else {
            return Err(Error::Candle(candle_core::Error::Msg(
                "gate/up projection count".into(),
            )));
        };
        for (g, u) in gate.iter_mut().zip(&up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        single(Linear::forward_slices(&[&self.down], &gate)?)
    }
}

/// The one output of a one-layer [`Linear::forward_slices`].
pub(super) fn single(mut outs: Vec<Vec<f32>>) -> Result<Vec<f32>> {
    outs.pop()
        .ok_or_else(|| Error::Candle(candle_core::Error::Msg("missing matmul output".into())))
}

pub(super) fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// RoPE on every head of `x` (HF's rotate-half convention) with one position's angles.
pub fn rotate(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_mut(head_dim) {
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

/// One layer's cached keys and values, `[kv_heads, len, head_dim]` views with strides.
pub struct Cached<'a> {
    /// Key data from the view's start.
    pub k: &'a [f32],
    /// Key strides in elements.
    pub k_stride: [usize; 3],
    /// Value data from the view's start.
    pub v: &'a [f32],
    /// Value strides in elements.
    pub v_stride: [usize; 3],
    /// Positions cached, the new one included.
    pub len: usize,
}

impl Cached<'_> {
    /// Runs `f` on the f32 CPU views `k, v: [kv_heads, len, head_dim]` (possibly strided).
    pub fn with<R>(k: &Tensor, v: &Tensor, f: impl FnOnce(&Cached) -> R) -> Result<R> {
        let len = k.dim(1)?;
        with_f32_strided(k, |k, k_stride| {
            with_f32_strided(v, |v, v_stride| {
                f(&Cached {
                    k,
                    k_stride,
                    v,
                    v_stride,
                    len,
                })
            })
        })?
    }
}

/// Attention of one query token `q: [heads * d]` (already rotated) over every cached
/// position; query head `h` reads KV head `h / (heads / kv_heads)`. Returns `[heads * d]`.
pub fn attend(q: &[f32], c: &Cached, heads: usize, kv_heads: usize, d: usize) -> Vec<f32> {
    let group = (heads / kv_heads.max(1)).max(1);
    let one_head = |(h, out): (usize, &mut [f32])| head(&q[h * d..(h + 1) * d], c, h / group, out);
    let mut out = vec![0f32; heads * d];
    // Short contexts are cheaper on one thread than the hand-off to the pool.
    if c.len * heads * d >= 1 << 18 {
        out.par_chunks_mut(d).enumerate().for_each(one_head);
    } else {
        out.chunks_mut(d).enumerate().for_each(one_head);
    }
    out
}

isa_dispatch! {
    /// One query head against KV head `kv`, with the widest vector unit available.
    fn head(qh: &[f32], c: &Cached, kv: usize, out: &mut [f32]) => head_body;
}

/// Softmax-weighted sum of the values, written to be vectorised by the compiler: plain
/// loops only, since closures (iterator adapters) would not inherit the caller's target
/// features and `mul_add` would become a library call.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // plain index loops vectorise reliably here
fn head_body(qh: &[f32], c: &Cached, kv: usize, out: &mut [f32]) {
    let d = qh.len();
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; c.len];
    let mut max = f32::NEG_INFINITY;
    for t in 0..c.len {
        let at = kv * c.k_stride[0] + t * c.k_stride[1];
        let s = dot_lanes(qh, &c.k[at..at + d]) * scale;
        max = max.max(s);
        scores[t] = s;
    }
    let mut sum = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in scores.iter_mut() {
        *s *= inv;
    }
    // 16 output lanes at a time, accumulated over every position in registers.
    let full = d / 16 * 16;
    for (ci, o) in out[..full].chunks_exact_mut(16).enumerate() {
        let mut acc = [0f32; 16];
        for (t, &w) in scores.iter().enumerate() {
            let at = kv * c.v_stride[0] + t * c.v_stride[1] + ci * 16;
            let x = &c.v[at..at + 16];
            for l in 0..16 {
                acc[l] += w * x[l];
            }
        }
        o.copy_from_slice(&acc);
    }
    for (t, &w) in scores.iter().enumerate() {
        let at = kv * c.v_stride[0] + t * c.v_stride[1];
        for i in full..d {
            out[i] += w * c.v[at + i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::attention::grouped_attention_slow;

    #[test]
    fn attend_matches_the_candle_attention() {
        let dev = Device::Cpu;
        for (heads, kv, len) in [(4, 2, 1), (4, 1, 7), (6, 3, 300), (2, 2, 5)] {
            let d = 8;
            let q = Tensor::randn(0f32, 1.0, (heads, 1, d), &dev).unwrap();
            // A strided view, like the cache's: the first `len` of 400 positions.
            let k = Tensor::randn(0f32, 1.0, (kv, 400, d), &dev).unwrap();
            let v = Tensor::randn(0f32, 1.0, (kv, 400, d), &dev).unwrap();
            let (k, v) = (k.narrow(1, 0, len).unwrap(), v.narrow(1, 0, len).unwrap());
            let want = grouped_attention_slow(&q, &k, &v, None).unwrap();
            let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
            let qs: Vec<f32> = q.flatten_all().unwrap().to_vec1().unwrap();
            let got = Cached::with(&k, &v, |c| attend(&qs, c, heads, kv, d)).unwrap();
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(err < 1e-5, "heads {heads} kv {kv} len {len}: {err}");
        }
    }

    #[test]
    fn rotate_matches_the_candle_rope() {
        let dev = Device::Cpu;
        let (heads, d) = (3, 8);
        let x = Tensor::randn(0f32, 1.0, (heads, 1, d), &dev).unwrap();
        let cos = Tensor::randn(0f32, 1.0, (1, d / 2), &dev).unwrap();
        let sin = Tensor::randn(0f32, 1.0, (1, d / 2), &dev).unwrap();
        let want: Vec<f32> = crate::model::rope::apply_slow(&x, &cos, &sin)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut got: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let (c, s): (Vec<f32>, Vec<f32>) = (
            cos.flatten_all().unwrap().to_vec1().unwrap(),
            sin.flatten_all().unwrap().to_vec1().unwrap(),
        );
        rotate(&mut got, d, &c, &s);
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-6, "{err}");
    }
}
