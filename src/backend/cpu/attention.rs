//! Attention of batch rows over keys and values in the paged pool's [`KvStore`].
//!
//! One task is a tile of consecutive rows of one sequence (a prompt chunk, or one decoding
//! token) and one key/value head: each block of cached keys and values is converted once
//! for the whole tile (an 8-bit pool's are read in place, [`attention_q8`]), and the query
//! heads sharing the KV head are scored together. Keys
//! are transposed per block so that 16 positions are scored at once in vector lanes. Scores
//! live in a buffer of the row's context length: no `[heads, n, T]` matrix is formed, so a
//! long prompt needs memory linear in its length.
//!
//! A row's arithmetic is the same whatever tile it is in, whatever else the batch holds
//! and however its prompt was chunked: positions are visited in order and every sum has a
//! fixed shape, so results are bit-identical (batch invariance).

use rayon::prelude::*;

use super::attention_q8::{self, QuantQuery, ValueBlock};
use super::kv_store::{KvStore, Part};
use crate::kv::{BlockId, KvDType};

/// What one row attends to: the first `len` positions of a sequence's blocks.
pub struct AttnRow<'a> {
    /// The sequence's blocks.
    pub blocks: &'a [BlockId],
    /// Positions visible to the row (its own included).
    pub len: usize,
}

/// Work below which attention stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// Rows per tile at most.
const TILE: usize = 16;

/// Positions scored at once.
const LANES: usize = 16;

/// `q: [rows, heads * head_dim]` (rotated) -> `[rows, heads * head_dim]`, each row over its
/// sequence's cached positions in `layer`, written into `out`'s buffer.
pub fn attend_rows(pool: &KvStore, layer: usize, q: &[f32], rows: &[AttnRow], heads: usize, out: Vec<f32>) -> Vec<f32> {
    let l = pool.layout();
    let group = heads / l.kv_heads.max(1);
    let width = group * l.head_dim;
    // Tiles: runs of consecutive rows of the same sequence.
    let mut tiles: Vec<(usize, usize)> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        match tiles.last_mut() {
            Some((start, end)) if *end == r && r - *start < TILE && std::ptr::eq(rows[*start].blocks, row.blocks) => {
                *end += 1
            }
            _ => tiles.push((r, r + 1)),
        }
    }
    let tasks: Vec<(usize, usize, usize)> = tiles
        .iter()
        .flat_map(|&(a, b)| (0..l.kv_heads).map(move |kv| (a, b, kv)))
        .collect();
    let run = |&(a, b, kv): &(usize, usize, usize)| {
        let t = Tile {
            pool,
            layer,
            kv,
            rows: &rows[a..b],
            q: &q[a * heads * l.head_dim..b * heads * l.head_dim],
            heads,
        };
        tile_attend(&t)
    };
    let work: usize = rows.iter().map(|r| r.len).sum::<usize>() * heads * l.head_dim;
    let outs: Vec<Vec<f32>> = match work >= PARALLEL_WORK {
        true => tasks.par_iter().map(run).collect(),
        false => tasks.iter().map(run).collect(),
    };
    let mut out = out;
    out.clear();
    out.resize(q.len(), 0.0);
    for (&(a, _, kv), o) in tasks.iter().zip(outs) {
        for (i, part) in o.chunks(width).enumerate() {
            let at = (a + i) * heads * l.head_dim + kv * width;
            out[at..at + width].copy_from_slice(part);
        }
    }
    out
}

/// Rows of one sequence and one KV head of one layer.
struct Tile<'a> {
    pool: &'a KvStore,
    layer: usize,
    kv: usize,
    rows: &'a [AttnRow<'a>],
    /// The rows' queries, `[rows, heads * head_dim]`.
    q: &'a [f32],
    heads: usize,
}

/// The tile's output `[rows, group * head_dim]`.
fn tile_attend(t: &Tile) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { tile_avx512(t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { tile_avx2(t) };
        }
    }
    tile_body(t, Kernels::default())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(t: &Tile) -> Vec<f32> {
    let l = t.pool.layout();
    let group = t.heads / l.kv_heads.max(1);
    // An f16 pool is read in place (`paged_f16`) where its kernels cover the shape.
    let fits = t.pool.dtype() == KvDType::F16 && (2..=4).contains(&group) && l.head_dim.is_multiple_of(LANES);
    let kernels = Kernels {
        f16_in_place: if fits { Avx512::detect() } else { None },
        avx2: Avx2Fma::detect(),
    };
    tile_body(t, kernels)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(t: &Tile) -> Vec<f32> {
    let kernels = Kernels {
        f16_in_place: None,
        avx2: Avx2Fma::detect(),
    };
    tile_body(t, kernels)
}

#[cfg(target_arch = "x86_64")]
use super::{attention_avx2::Avx2Fma, attention_f16::Avx512};

/// Never present off x86: the in-place kernels do not exist there.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Avx512 {}

/// Never present off x86: the AVX2 kernels do not exist there.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Avx2Fma {}

/// The kernels a tile may use beside the generic loops, each with its proof of the CPU's
/// support (none: the loops alone, the reference).
#[derive(Clone, Copy, Default)]
struct Kernels {
    /// Read an f16 pool's blocks in place with AVX-512 instead of converting them.
    f16_in_place: Option<Avx512>,
    /// Score and add converted blocks with the AVX2 kernels ([`super::attention_avx2`]).
    avx2: Option<Avx2Fma>,
}

/// [`group_dots`] on a block's f16 bits.
#[inline(always)]
fn dots_in_place(cpu: Avx512, group: usize, qr: &[f32], kt: &[u16], stride: usize, out: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    super::attention_f16::dots(cpu, group, qr, kt, stride, out);
    #[cfg(not(target_arch = "x86_64"))]
    match cpu {}
}

/// [`group_axpys`] on a block's f16 bits.
#[inline(always)]
fn axpys_in_place(cpu: Avx512, group: usize, scores: (&[f32], usize, usize), m: usize, v: &[u16], orow: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    super::attention_f16::axpys(cpu, group, scores, m, v, orow);
    #[cfg(not(target_arch = "x86_64"))]
    match cpu {}
}

/// Scores, softmax and the weighted sum of values in plain loops that the compiler
/// vectorises for the caller's target features (closures and library calls would not be),
/// or the [`Kernels`] given.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // index loops vectorise reliably here
fn tile_body(t: &Tile, kernels: Kernels) -> Vec<f32> {
    if t.pool.dtype() == KvDType::Q8_0 {
        return tile_q8(t, kernels.avx2);
    }
    let (in_place, avx2) = (kernels.f16_in_place, kernels.avx2);
    let l = t.pool.layout();
    let (d, bs) = (l.head_dim, l.block_size);
    let group = t.heads / l.kv_heads.max(1);
    let width = group * d;
    let padded = l.padded();
    let scale = 1.0 / (d as f32).sqrt();
    let max_len = t.rows.iter().map(|r| r.len).max().unwrap_or(0);
    let Some(first) = t.rows.first() else {
        return Vec::new();
    };
    let blocks = &first.blocks[..max_len.div_ceil(bs)];
    let mut scores: Vec<Vec<f32>> = t.rows.iter().map(|r| vec![0f32; group * r.len]).collect();
    let mut raw = vec![0f32; padded * d];
    let mut accs = vec![[0f32; LANES]; group];
    for (j, &block) in blocks.iter().enumerate() {
        let n = bs.min(max_len - j * bs);
        // Keys are stored transposed, `[d, padded]`: positions in lanes.
        if let Some(&next) = blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Keys), next, t.kv);
        }
        let bits = in_place.and_then(|cpu| Some((cpu, t.pool.head_block_bits((t.layer, Part::Keys), block, t.kv, n)?)));
        let kt = match bits {
            Some(_) => &[][..],
            None => t.pool.head_block((t.layer, Part::Keys), block, t.kv, n, &mut raw),
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, bs) else { continue };
            let qr = &t.q[ri * t.heads * d + t.kv * width..][..width];
            for c in 0..m.div_ceil(LANES) {
                match (bits, group) {
                    (Some((cpu, kb)), _) => dots_in_place(cpu, group, qr, &kb[c * LANES..], padded, &mut accs),
                    (None, 4) => group_dots::<4>(avx2, qr, (&kt[c * LANES..], padded), &mut accs),
                    (None, 3) => group_dots::<3>(avx2, qr, (&kt[c * LANES..], padded), &mut accs),
                    (None, 2) => group_dots::<2>(avx2, qr, (&kt[c * LANES..], padded), &mut accs),
                    (None, _) => {
                        for (g, acc) in accs.iter_mut().enumerate() {
                            *acc = lane_dots(&qr[g * d..(g + 1) * d], &kt[c * LANES..], padded);
                        }
                    }
                }
                store_scores(
                    &accs,
                    (&mut scores[ri], row.len),
                    j * bs + c * LANES,
                    (m - c * LANES).min(LANES),
                    scale,
                );
            }
        }
    }
    softmax_rows(t.rows, &mut scores);
    let mut out = vec![0f32; t.rows.len() * width];
    for (j, &block) in blocks.iter().enumerate() {
        let n = bs.min(max_len - j * bs);
        if let Some(&next) = blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Values), next, t.kv);
        }
        let bits =
            in_place.and_then(|cpu| Some((cpu, t.pool.head_block_bits((t.layer, Part::Values), block, t.kv, n)?)));
        let values = match bits {
            Some(_) => &[][..],
            None => t.pool.head_block((t.layer, Part::Values), block, t.kv, n, &mut raw),
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, bs) else { continue };
            let orow = &mut out[ri * width..(ri + 1) * width];
            let (sc, at) = (&scores[ri], j * bs);
            match (bits, group) {
                (Some((cpu, vb)), _) => axpys_in_place(cpu, group, (sc, row.len, at), m, vb, orow),
                (None, 4) => group_axpys::<4>(avx2, (sc, row.len, at), m, values, orow),
                (None, 3) => group_axpys::<3>(avx2, (sc, row.len, at), m, values, orow),
                (None, 2) => group_axpys::<2>(avx2, (sc, row.len, at), m, values, orow),
                (None, _) => {
                    for (g, o) in orow.chunks_mut(d).enumerate() {
                        lane_axpys(&sc[g * row.len + at..][..m], values, o);
                    }
                }
            }
        }
    }
    out
}

/// [`tile_body`] over a q8_0 pool: keys scored with integer dot products and values added
/// from their 8-bit form, both read in place ([`attention_q8`]). Inlined like
/// [`tile_body`], so that its softmax is compiled for the caller's vector unit.
#[inline(always)]
fn tile_q8(t: &Tile, avx2: Option<Avx2Fma>) -> Vec<f32> {
    let l = t.pool.layout();
    let (d, bs) = (l.head_dim, l.block_size);
    let group = t.heads / l.kv_heads.max(1);
    let width = group * d;
    let scale = 1.0 / (d as f32).sqrt();
    let max_len = t.rows.iter().map(|r| r.len).max().unwrap_or(0);
    let Some(first) = t.rows.first() else {
        return Vec::new();
    };
    let blocks = &first.blocks[..max_len.div_ceil(bs)];
    let (dots, axpys) = (attention_q8::kernel(), attention_q8::value_kernel());
    let queries: Vec<QuantQuery> = (0..t.rows.len())
        .map(|ri| {
            QuantQuery::new(
                &t.q[ri * t.heads * d + t.kv * width..][..width],
                l.q8_group().unwrap_or(d),
            )
        })
        .collect();
    let mut scores: Vec<Vec<f32>> = t.rows.iter().map(|r| vec![0f32; group * r.len]).collect();
    let mut accs = vec![[0f32; LANES]; group];
    for (j, &block) in blocks.iter().enumerate() {
        if let Some(&next) = blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Keys), next, t.kv);
        }
        let Some(tile) = t.pool.q8_key_tile(t.layer, block, t.kv) else {
            continue;
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, bs) else { continue };
            for c in 0..m.div_ceil(LANES) {
                dots(&queries[ri], tile, c * LANES, &mut accs);
                let at = j * bs + c * LANES;
                store_scores(&accs, (&mut scores[ri], row.len), at, (m - c * LANES).min(LANES), scale);
            }
        }
    }
    softmax_rows(t.rows, &mut scores);
    let mut out = vec![0f32; t.rows.len() * width];
    let mut scratch = vec![0f32; bs * d];
    // Several rows share one conversion of each block: the same bits as converting in
    // registers per row (see `attention_q8`) where `group_axpys` adds in the same order.
    let shared = t.rows.len() > 1 && (2..=4).contains(&group) && d.is_multiple_of(LANES);
    for (j, &block) in blocks.iter().enumerate() {
        if let Some(&next) = blocks.get(j + 1) {
            t.pool.prefetch_head_block((t.layer, Part::Values), next, t.kv);
        }
        let n = bs.min(max_len - j * bs);
        if shared {
            let values = t.pool.head_block((t.layer, Part::Values), block, t.kv, n, &mut scratch);
            for (ri, row) in t.rows.iter().enumerate() {
                let Some(m) = visible(row, j, bs) else { continue };
                let (scores, orow) = (
                    (&scores[ri][..], row.len, j * bs),
                    &mut out[ri * width..(ri + 1) * width],
                );
                match group {
                    4 => group_axpys::<4>(avx2, scores, m, values, orow),
                    3 => group_axpys::<3>(avx2, scores, m, values, orow),
                    _ => group_axpys::<2>(avx2, scores, m, values, orow),
                }
            }
            continue;
        }
        let Some(vb) = t.pool.q8_value_block(t.layer, block, t.kv, n) else {
            continue;
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, bs) else { continue };
            let part = ValueBlock {
                q: &vb.q[..m * d],
                scales: &vb.scales[..m * d / vb.group],
                group: vb.group,
            };
            axpys(
                (&scores[ri], row.len, j * bs),
                m,
                part,
                &mut out[ri * width..(ri + 1) * width],
                &mut scratch,
            );
        }
    }
    out
}

/// Softmax over each head's scores of each row (`[heads, len]`).
#[inline(always)]
fn softmax_rows(rows: &[AttnRow], scores: &mut [Vec<f32>]) {
    for (row, sc) in rows.iter().zip(scores.iter_mut()) {
        for s in sc.chunks_mut(row.len.max(1)) {
            softmax(s);
        }
    }
}

/// Writes the first `valid` of each head's 16 dot products, scaled, to the row's scores
/// (`[heads, len]`) from position `at`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn store_scores(accs: &[[f32; LANES]], (scores, len): (&mut [f32], usize), at: usize, valid: usize, scale: f32) {
    for (g, acc) in accs.iter().enumerate() {
        let dst = &mut scores[g * len + at..][..valid];
        for s in 0..valid {
            dst[s] = acc[s] * scale;
        }
    }
}

/// [`lane_dots`] for all `G` query heads of a group at once (`qr: [G * d]`): each key
/// vector is loaded once for the `G` heads, whose sums are `G` independent chains.
///
/// With `avx2`, where the AVX2 kernel takes the shape ([`super::attention_avx2`]), it runs
/// instead of the loops, with the same bits.
#[inline(always)]
fn group_dots<const G: usize>(
    avx2: Option<Avx2Fma>,
    qr: &[f32],
    (kt, stride): (&[f32], usize),
    out: &mut [[f32; LANES]],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2.is_some_and(|cpu| super::attention_avx2::group_dots(cpu, G, qr, (kt, stride), out)) {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    group_dots_loops::<G>(qr, kt, stride, out)
}

/// [`group_dots`] in plain loops: the reference of the AVX2 kernel, and what other CPUs run.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn group_dots_loops<const G: usize>(qr: &[f32], kt: &[f32], stride: usize, out: &mut [[f32; LANES]]) {
    let d = qr.len() / G;
    let mut acc = [[0f32; LANES]; G];
    for i in 0..d {
        let k = &kt[i * stride..i * stride + LANES];
        for g in 0..G {
            let qv = qr[g * d + i];
            for s in 0..LANES {
                acc[g][s] = qv.mul_add(k[s], acc[g][s]);
            }
        }
    }
    out[..G].copy_from_slice(&acc);
}

/// [`lane_axpys`] for all `G` query heads of a group at once: `orow: [G * d]` gains
/// `sum_s w_g[s] * v[s]` with `w_g = scores[g * len + at..][..m]`; each value vector is
/// loaded once for the `G` heads.
///
/// With `avx2`, where the AVX2 kernel takes the shape ([`super::attention_avx2`]), it runs
/// instead of the loops, with the same bits.
#[inline(always)]
fn group_axpys<const G: usize>(
    avx2: Option<Avx2Fma>,
    scores: (&[f32], usize, usize),
    m: usize,
    v: &[f32],
    orow: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2.is_some_and(|cpu| super::attention_avx2::group_axpys(cpu, G, scores, m, v, orow)) {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    group_axpys_loops::<G>(scores, m, v, orow)
}

/// [`group_axpys`] in plain loops: the reference of the AVX2 kernel, and what other CPUs run.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn group_axpys_loops<const G: usize>((scores, len, at): (&[f32], usize, usize), m: usize, v: &[f32], orow: &mut [f32]) {
    let d = orow.len() / G;
    for c in 0..d / LANES {
        let mut acc = [[0f32; LANES]; G];
        for s in 0..m {
            let vr = &v[s * d + c * LANES..s * d + (c + 1) * LANES];
            for g in 0..G {
                let w = scores[g * len + at + s];
                for l in 0..LANES {
                    acc[g][l] = w.mul_add(vr[l], acc[g][l]);
                }
            }
        }
        for g in 0..G {
            let o = &mut orow[g * d + c * LANES..g * d + (c + 1) * LANES];
            for l in 0..LANES {
                o[l] += acc[g][l];
            }
        }
    }
    for i in d / LANES * LANES..d {
        for g in 0..G {
            for s in 0..m {
                orow[g * d + i] = scores[g * len + at + s].mul_add(v[s * d + i], orow[g * d + i]);
            }
        }
    }
}

/// `LANES` dot products at once: `q` against columns `0..LANES` of the rows
/// `kt[i * stride..]` (`i < q.len()`). Four independent accumulators (over `i mod 4`,
/// added in a fixed order at the end) keep the FMA units busy instead of waiting on one
/// chain.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn lane_dots(q: &[f32], kt: &[f32], stride: usize) -> [f32; LANES] {
    let mut acc = [[0f32; LANES]; 4];
    let quads = q.len() / 4;
    for i4 in 0..quads {
        for u in 0..4 {
            let i = 4 * i4 + u;
            let (qv, k) = (q[i], &kt[i * stride..i * stride + LANES]);
            for s in 0..LANES {
                acc[u][s] = qv.mul_add(k[s], acc[u][s]);
            }
        }
    }
    for i in 4 * quads..q.len() {
        let (qv, k) = (q[i], &kt[i * stride..i * stride + LANES]);
        for s in 0..LANES {
            acc[0][s] = qv.mul_add(k[s], acc[0][s]);
        }
    }
    let mut out = [0f32; LANES];
    for s in 0..LANES {
        out[s] = (acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]);
    }
    out
}

/// `o += sum_s w[s] * v[s]` for the rows `v[s * d..]` (`d = o.len()`), 16 output lanes at a
/// time with four accumulators (over `s mod 4`, added in a fixed order), so that the
/// block's positions do not wait on one another.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn lane_axpys(w: &[f32], v: &[f32], o: &mut [f32]) {
    let (d, m) = (o.len(), w.len());
    let quads = m / 4;
    for c in 0..d / LANES {
        let mut acc = [[0f32; LANES]; 4];
        for s4 in 0..quads {
            for u in 0..4 {
                let s = 4 * s4 + u;
                let (wv, vr) = (w[s], &v[s * d + c * LANES..s * d + (c + 1) * LANES]);
                for l in 0..LANES {
                    acc[u][l] = wv.mul_add(vr[l], acc[u][l]);
                }
            }
        }
        for s in 4 * quads..m {
            let (wv, vr) = (w[s], &v[s * d + c * LANES..s * d + (c + 1) * LANES]);
            for l in 0..LANES {
                acc[0][l] = wv.mul_add(vr[l], acc[0][l]);
            }
        }
        let oc = &mut o[c * LANES..(c + 1) * LANES];
        for l in 0..LANES {
            oc[l] += (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
    }
    for i in d / LANES * LANES..d {
        for s in 0..m {
            o[i] = w[s].mul_add(v[s * d + i], o[i]);
        }
    }
}

/// How many positions of block `j` (blocks of `bs`) `row` sees; `None` for none.
#[inline(always)]
fn visible(row: &AttnRow, j: usize, bs: usize) -> Option<usize> {
    row.len.checked_sub(j * bs).filter(|&m| m > 0).map(|m| m.min(bs))
}

/// In-place softmax with a lane-wise (fixed-order) sum and a vectorisable exp.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn softmax(s: &mut [f32]) {
    // Whole vectors, then the rest: a comparison (not `f32::max`, whose NaN rule keeps the
    // loop scalar) that skips NaN as `max` does.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut whole = s.chunks_exact(LANES);
    for c in &mut whole {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    for (l, &v) in whole.remainder().iter().enumerate() {
        lanes[l] = if v > lanes[l] { v } else { lanes[l] };
    }
    let max = lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0f32; LANES];
    for c in s.chunks_mut(LANES) {
        for (l, v) in c.iter_mut().enumerate() {
            *v = exp_neg(*v - max);
            sums[l] += *v;
        }
    }
    let inv = 1.0 / sums.iter().sum::<f32>();
    for v in s.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` for `x <= 0` (0 below -87), within 2 ulp: Cephes' polynomial after reducing by
/// powers of two, written with plain arithmetic so that it vectorises.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n from `n`'s bits after the magic addition (an integer in the low mantissa bits):
    // integer arithmetic only, where `n as i32` would be a saturating scalar conversion.
    let k = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
    y * f32::from_bits(k.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests;
