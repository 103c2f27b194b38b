//! Attention of batch rows over keys and values in the paged [`BlockPool`].
//!
//! One task is one row and one key/value head: the query heads sharing that KV head are
//! scored together, so each cached key is read once per group. Scores live in a buffer of
//! the row's context length per task: no `[heads, n, T]` matrix is ever formed, so a long
//! prompt needs memory linear in its length. Positions are visited in order, so a row's
//! result does not depend on what else is in the batch.

use rayon::prelude::*;

use super::gemv::dot_lanes;
use crate::kv::{BlockId, BlockPool, Part};

/// What one row attends to: the first `len` positions of a sequence's blocks.
pub struct AttnRow<'a> {
    /// The sequence's blocks.
    pub blocks: &'a [BlockId],
    /// Positions visible to the row (its own included).
    pub len: usize,
}

/// Work below which attention stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// `q: [rows, heads * head_dim]` (rotated) -> `[rows, heads * head_dim]`, each row over its
/// sequence's cached positions in `layer`.
pub fn attend_rows(pool: &BlockPool, layer: usize, q: &[f32], rows: &[AttnRow], heads: usize) -> Vec<f32> {
    let l = pool.layout();
    let group = heads / l.kv_heads.max(1);
    let width = group * l.head_dim;
    let mut out = vec![0f32; q.len()];
    let task = |(i, o): (usize, &mut [f32])| {
        let (r, kv) = (i / l.kv_heads, i % l.kv_heads);
        let qg = &q[i * width..(i + 1) * width];
        let c = Ctx {
            pool,
            layer,
            row: &rows[r],
            kv,
        };
        group_attend(qg, &c, o);
    };
    let work: usize = rows.iter().map(|r| r.len).sum::<usize>() * heads * l.head_dim;
    if work >= PARALLEL_WORK {
        out.par_chunks_mut(width).enumerate().for_each(task);
    } else {
        out.chunks_mut(width).enumerate().for_each(task);
    }
    out
}

/// One row's view of one KV head of one layer.
struct Ctx<'a> {
    pool: &'a BlockPool,
    layer: usize,
    row: &'a AttnRow<'a>,
    kv: usize,
}

/// The query heads `qg: [group * d]` of one KV head -> `out: [group * d]`.
fn group_attend(qg: &[f32], c: &Ctx, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { group_avx512(qg, c, out) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { group_avx2(qg, c, out) };
        }
    }
    group_body(qg, c, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn group_avx512(qg: &[f32], c: &Ctx, out: &mut [f32]) {
    group_body(qg, c, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2(qg: &[f32], c: &Ctx, out: &mut [f32]) {
    group_body(qg, c, out)
}

/// Scores, softmax and the weighted sum of values, block by block, in plain loops the
/// compiler vectorises (see `decode::head_body`).
#[inline(always)]
fn group_body(qg: &[f32], c: &Ctx, out: &mut [f32]) {
    let l = c.pool.layout();
    let (d, bs) = (l.head_dim, l.block_size);
    let (len, group) = (c.row.len, qg.len() / d);
    let scale = 1.0 / (d as f32).sqrt();
    let mut scores = vec![0f32; group * len];
    let mut scratch = vec![0f32; bs * d];
    for (j, &block) in c.row.blocks.iter().enumerate().take(len.div_ceil(bs)) {
        let n = bs.min(len - j * bs);
        let keys = c.pool.head_block((c.layer, Part::Keys), block, c.kv, n, &mut scratch);
        for (s, k) in keys.chunks_exact(d).enumerate() {
            for g in 0..group {
                scores[g * len + j * bs + s] = dot_lanes(&qg[g * d..(g + 1) * d], k) * scale;
            }
        }
    }
    for s in scores.chunks_mut(len.max(1)) {
        softmax(s);
    }
    out.fill(0.0);
    for (j, &block) in c.row.blocks.iter().enumerate().take(len.div_ceil(bs)) {
        let n = bs.min(len - j * bs);
        let values = c.pool.head_block((c.layer, Part::Values), block, c.kv, n, &mut scratch);
        for (s, v) in values.chunks_exact(d).enumerate() {
            for g in 0..group {
                let w = scores[g * len + j * bs + s];
                let o = &mut out[g * d..(g + 1) * d];
                for i in 0..d {
                    o[i] += w * v[i];
                }
            }
        }
    }
}

#[inline(always)]
fn softmax(s: &mut [f32]) {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in s.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in s.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{BlockTable, KvDType, KvLayout};
    use crate::model::attention::{causal_mask, grouped_attention_slow};
    use candle_core::{DType, Device, Tensor};

    /// Writes `len` random positions into a fresh sequence of `pool`; returns the table and
    /// the keys and values as `[kv_heads, len, d]` tensors.
    fn fill(pool: &mut BlockPool, len: usize) -> (BlockTable, Tensor, Tensor) {
        let l = pool.layout();
        let mut t = pool.start(&[]);
        assert!(pool.reserve(&mut t, len));
        let k = Tensor::randn(0f32, 1.0, (len, l.kv_heads * l.head_dim), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (len, l.kv_heads * l.head_dim), &Device::Cpu).unwrap();
        let (kr, vr): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (k.to_vec2().unwrap(), v.to_vec2().unwrap());
        for p in 0..len {
            pool.write(0, &t, p, &kr[p], &vr[p]);
        }
        let heads_first = |x: Tensor| {
            x.reshape((len, l.kv_heads, l.head_dim))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        pool.commit(&mut t, &[], 0);
        (t, heads_first(k), heads_first(v))
    }

    #[test]
    fn paged_attention_matches_the_straightforward_one() {
        let cases = [
            (4, 2, 1, 1),
            (4, 2, 37, 5),
            (6, 3, 16, 16),
            (2, 2, 50, 3),
            (8, 1, 33, 33),
        ];
        for ((heads, kv_heads, len, n), (dtype, tol)) in cases
            .into_iter()
            .flat_map(|c| [(c, (KvDType::F32, 1e-5f32)), (c, (KvDType::F16, 1e-2))])
        {
            let d = 8;
            let layout = KvLayout {
                layers: 1,
                kv_heads,
                head_dim: d,
                block_size: 16,
            };
            let mut pool = BlockPool::new(layout, 8, dtype);
            let (table, k, v) = fill(&mut pool, len);
            // The last `n` positions as queries, causal.
            let q = Tensor::randn(0f32, 1.0, (n, heads * d), &Device::Cpu).unwrap();
            let rows: Vec<AttnRow> = (0..n)
                .map(|i| AttnRow {
                    blocks: table.blocks(),
                    len: len - n + i + 1,
                })
                .collect();
            let got = attend_rows(&pool, 0, &q.flatten_all().unwrap().to_vec1().unwrap(), &rows, heads);
            let qh = q
                .reshape((n, heads, d))
                .unwrap()
                .transpose(0, 1)
                .unwrap()
                .contiguous()
                .unwrap();
            let mask = causal_mask(n, len - n, DType::F32, &Device::Cpu).unwrap();
            let want = grouped_attention_slow(&qh, &k, &v, (n > 1).then_some(&mask)).unwrap();
            let want: Vec<f32> = want.transpose(0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(
                err < tol,
                "{dtype:?} heads {heads} kv {kv_heads} len {len} n {n}: {err}"
            );
        }
    }
}
