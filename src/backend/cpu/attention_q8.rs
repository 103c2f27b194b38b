//! Attention scores against a q8_0 pool's keys with integer dot products, read in place.
//!
//! A query row is quantized as the keys are (8-bit integers, one scale per group of
//! dimensions: what llama.cpp does to a query before its q8_0 dot product), and each group's
//! sum of products is exact in `i32`; one multiply-add per group and position turns it into
//! the score: `score[p] = sum_g isum[g][p] * (key_scale[g][p] * query_scale[g])`.
//!
//! The keys of a block lie as `[head_dim / 4, padded, 4]` bytes (four consecutive dimensions
//! of a position together, see [`super::kv_store`]), so that one 32-byte load holds eight
//! positions' quads: `vpmaddubsw` and `vpmaddwd` give eight 4-wide dot products at once
//! (AVX2), and one 64-byte load sixteen positions' for one `vpdpbusd` ([`avx512`], with
//! VNNI). Those kernels and [`dots_portable`] (the reference) add the same exact integers and
//! make the same float operations in the same order, so they give the same bits.
//!
//! Values are read in place too, with the scale folded into the weight: each position's
//! weight times its group's scale is rounded to bf16 ([`bf16_weight`]), and the 8-bit values
//! (every one a bf16) are added with it in pairs of positions, the odd one first: exactly
//! what `vdpbf16ps` computes, so that a tile with AVX-512 BF16 may convert a block once into
//! bf16 pairs for all its rows ([`pairs`]) and get the same bits as a lone row's kernel.

use half::f16;

#[cfg(target_arch = "x86_64")]
use super::isa::in_fours;

/// Positions scored per call.
pub const LANES: usize = 16;

/// Dimensions that lie together for one position.
pub const QUAD: usize = 4;

/// A query row quantized for the dot products: `G` heads' values `[G * d]` and their scales
/// `[G * d / group]` (one per head and group of `group` dimensions).
#[derive(Debug, Default)]
pub struct QuantQuery {
    q: Vec<i8>,
    scales: Vec<f32>,
    /// Per head and group, `-128 * sum(q)`: what undoes the keys' offset of 128 in the
    /// unsigned-by-signed products of `vpdpbusd`.
    offsets: Vec<i32>,
    /// Values per scale.
    group: usize,
}

impl QuantQuery {
    /// Quantizes `x` (`[G * d]`, `d` a multiple of `group`) in groups of `group` values:
    /// each group's largest magnitude maps to 127.
    pub fn new(x: &[f32], group: usize) -> Self {
        let mut out = Self {
            q: vec![0; x.len()],
            scales: Vec::with_capacity(x.len() / group.max(1)),
            offsets: Vec::with_capacity(x.len() / group.max(1)),
            group: group.max(1),
        };
        for (xs, qs) in x.chunks(group.max(1)).zip(out.q.chunks_mut(group.max(1))) {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = amax / 127.0;
            let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            }
            out.scales.push(scale);
            out.offsets.push(-128 * qs.iter().map(|&q| i32::from(q)).sum::<i32>());
        }
        out
    }
}

/// One block's keys of one KV head: `q` as `[d / 4, padded, 4]`, `scales` as f16 bits
/// `[d / group, padded]`.
#[derive(Debug, Clone, Copy)]
pub struct KeyTile<'a> {
    /// The 8-bit keys.
    pub q: &'a [i8],
    /// One scale per position and group of dimensions.
    pub scales: &'a [u16],
    /// Positions a row of the tile holds (a multiple of [`LANES`]).
    pub padded: usize,
    /// Dimensions per scale (a multiple of [`QUAD`]).
    pub group: usize,
}

/// A scoring kernel: `out[g][s]` = the score of query head `g` against position `from + s`
/// (`s < LANES`) of the tile, for every head of the query.
pub type Dots = fn(&QuantQuery, KeyTile, usize, &mut [[f32; LANES]]);

/// The fastest kernel this CPU runs (all give the same bits).
pub fn kernel() -> Dots {
    #[cfg(target_arch = "x86_64")]
    if avx512::vnni() {
        return avx512::dots_kernel;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        return dots_avx2;
    }
    dots_portable
}

/// Where a [`RowDots`] call writes its rows' scores.
#[derive(Debug)]
pub struct ScoreOut<'a> {
    /// The rows' scores, `[rows, heads, len]`: row `r`'s head `h` against position `from +
    /// s` at `(r * heads + h) * len + at + s`.
    pub scores: &'a mut [f32],
    /// Positions a head's scores span.
    pub len: usize,
    /// Where the 16 positions lie in a head's scores.
    pub at: usize,
    /// Positions of each row's heads' scores in use: the call writes those of the 16 below
    /// it.
    pub seen: &'a [usize],
    /// What every score is multiplied by last.
    pub scale: f32,
}

/// A scoring kernel for several query rows at once, every row of the same heads: each
/// row's scores against positions `from..from + 16` of the tile, as [`Dots`] gives them
/// (the same bits) times the scale, written where [`ScoreOut`] says; `partial` is scratch
/// for one `[f32; 16]` per row and head.
pub type RowDots = fn(&[QuantQuery], KeyTile, usize, ScoreOut, &mut [[f32; LANES]]);

/// The fastest kernel for several rows this CPU runs.
pub fn rows_kernel() -> RowDots {
    #[cfg(target_arch = "x86_64")]
    if avx512::vnni() {
        return avx512::dots_rows_kernel;
    }
    dots_rows_each
}

/// A lone row's scaled scores against a chunk's key tiles (each with the positions it
/// holds, in order), its `heads` heads' against the chunk's position `s` at `scores[h *
/// len + s]`: the bits of [`rows_kernel`]'s, in one call for the chunk. `false` (nothing
/// written) where this CPU has no kernel for it (AVX-512 VNNI) or the row more than 4 heads.
pub fn lone_scores(
    q: &QuantQuery,
    heads: usize,
    tiles: &[(KeyTile, usize)],
    scores: (&mut [f32], usize),
    scale: f32,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx512::vnni() {
        return avx512::lone_scores(q, heads, tiles, scores, scale);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (q, heads, tiles, scores, scale);
    false
}

/// [`RowDots`] by [`kernel`], row by row.
pub fn dots_rows_each(qs: &[QuantQuery], k: KeyTile, from: usize, mut out: ScoreOut, partial: &mut [[f32; LANES]]) {
    let heads = rows_heads(qs, &out, partial);
    let dots = kernel();
    for (r, q) in qs.iter().enumerate() {
        let part = &mut partial[r * heads..(r + 1) * heads];
        dots(q, k, from, part);
        write_scores(part, r, &mut out);
    }
}

/// Row `r`'s heads' scores `part` (of [`Dots`]) where `out` says, times its scale.
#[inline(always)]
fn write_scores(part: &[[f32; LANES]], r: usize, out: &mut ScoreOut) {
    let valid = out.seen[r].saturating_sub(out.at).min(LANES);
    let row = &mut out.scores[r * part.len() * out.len..];
    store_scores(part, (row, out.len), out.at, valid, out.scale);
}

/// Writes the first `valid` of each head's 16 dot products `accs`, times `scale`, to a
/// row's scores (`[heads, len]`) from position `at`.
#[inline(always)]
pub fn store_scores(accs: &[[f32; LANES]], (scores, len): (&mut [f32], usize), at: usize, valid: usize, scale: f32) {
    for (h, acc) in accs.iter().enumerate() {
        let dst = &mut scores[h * len + at..][..valid];
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = a * scale;
        }
    }
}

/// The heads per row of a [`RowDots`] call (`partial` holds as many for every row), having
/// checked that `out` holds every row's scores.
fn rows_heads(qs: &[QuantQuery], out: &ScoreOut, partial: &[[f32; LANES]]) -> usize {
    let heads = partial.len() / qs.len().max(1);
    let ok = heads > 0
        && heads * qs.len() == partial.len()
        && out.seen.len() == qs.len()
        && out.seen.iter().all(|&n| n <= out.len)
        && (qs.len() * heads)
            .checked_mul(out.len)
            .is_some_and(|n| n <= out.scores.len());
    assert!(ok, "attention_q8: the rows' outputs disagree with their queries");
    heads
}

/// Checks what every kernel indexes: `q` and `out` hold whole heads, the tile holds
/// `from + LANES` positions of `d` dimensions.
fn check(q: &QuantQuery, k: KeyTile, from: usize, out: &[[f32; LANES]]) -> (usize, usize) {
    let heads = out.len();
    let d = q.q.len() / heads.max(1);
    let ok = heads > 0
        && d > 0
        && k.group > 0
        && k.group.is_multiple_of(QUAD)
        && q.group == k.group
        && d.is_multiple_of(k.group)
        && q.q.len() == heads * d
        && q.scales.len() == heads * d / k.group
        && from.checked_add(LANES).is_some_and(|end| end <= k.padded)
        && d.checked_mul(k.padded).is_some_and(|n| k.q.len() >= n)
        && (d / k.group).checked_mul(k.padded).is_some_and(|n| k.scales.len() >= n);
    assert!(ok, "attention_q8: shapes of the query and key tile disagree");
    (heads, d)
}

/// The reference kernel: plain loops over exact integer sums.
pub fn dots_portable(q: &QuantQuery, k: KeyTile, from: usize, out: &mut [[f32; LANES]]) {
    let (_, d) = check(q, k, from, out);
    let groups = d / k.group;
    for (g, row) in out.iter_mut().enumerate() {
        for (s, o) in row.iter_mut().enumerate() {
            let p = from + s;
            let mut acc = 0f32;
            for gi in 0..groups {
                let mut sum = 0i32;
                for i in gi * k.group..(gi + 1) * k.group {
                    let key = k.q[(i / QUAD) * k.padded * QUAD + p * QUAD + i % QUAD];
                    sum += i32::from(q.q[g * d + i]) * i32::from(key);
                }
                let scale = f16::from_bits(k.scales[gi * k.padded + p]).to_f32() * q.scales[g * groups + gi];
                acc = (sum as f32).mul_add(scale, acc);
            }
            *o = acc;
        }
    }
}

/// One block's values of one KV head: `q` as `[n, d]`, `scales` as f16 bits `[n, d / group]`.
#[derive(Debug, Clone, Copy)]
pub struct ValueBlock<'a> {
    /// The 8-bit values of the block's first `n` positions.
    pub q: &'a [i8],
    /// One scale per position and group of dimensions.
    pub scales: &'a [u16],
    /// Dimensions per scale (a multiple of [`VLANES`]).
    pub group: usize,
}

/// Dimensions of one chain of the value kernels (one AVX2 vector; AVX-512 holds two).
pub const VLANES: usize = 8;

/// A value kernel: `orow[g * d + i] += sum_{s < m} w[g][s] * value[s][i]` for every head `g`
/// of `orow` (`[G * d]`), with `w[g][s] = scores[g * len + at + s]`, one chain of fused
/// multiply-adds from `orow`'s value ([`axpys_portable`]); `scratch` holds at least
/// [`value_scratch`] floats.
pub type Axpys = fn((&[f32], usize, usize), usize, ValueBlock, &mut [f32], &mut [f32]);

/// The fastest value kernel this CPU runs (all give the same bits).
pub fn value_kernel() -> Axpys {
    #[cfg(target_arch = "x86_64")]
    if avx512::vnni() {
        return avx512::axpys_kernel;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        return axpys_avx2;
    }
    axpys_portable
}

/// Floats of scratch a value kernel needs for `m` positions of `heads` heads of `d`
/// dimensions in groups of `group`: the scales twice (as stored, then by group), then the
/// weights.
pub fn value_scratch(m: usize, d: usize, group: usize, heads: usize) -> usize {
    let groups = d / group.max(1);
    2 * m * groups + heads * groups * m.next_multiple_of(2)
}

/// `x` rounded to the nearest bf16 (ties to even) and held as the f32 it equals;
/// magnitudes below 2^-100 go to zero, so that no sum of such weights times 8-bit values is
/// ever subnormal (which `vdpbf16ps` would flush); NaN stays NaN. Branch-free, so that it
/// vectorises.
#[inline(always)]
pub fn bf16_weight(x: f32) -> f32 {
    /// 2^-100's bits: its biased exponent, 27.
    const TINY: u32 = 27 << 23;
    let b = x.to_bits();
    let magnitude = b & 0x7fff_ffff;
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    let quiet = (b | 0x0040_0000) & 0xffff_0000;
    let bits = if magnitude > 0x7f80_0000 { quiet } else { rounded };
    f32::from_bits(if magnitude < TINY { b & 0x8000_0000 } else { bits })
}

/// Checks a value kernel's shapes (`scratch` floats of scratch given): the head width and
/// the heads; `None` when there is nothing to add.
pub(super) fn check_values(
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: ValueBlock,
    orow: &[f32],
    scratch: usize,
) -> Option<(usize, usize)> {
    let d = v.q.len().checked_div(m)?;
    let groups = d / v.group.max(1);
    let heads = orow.len() / d.max(1);
    let ok = d > 0
        && v.group > 0
        && v.group.is_multiple_of(VLANES)
        && d.is_multiple_of(v.group)
        && v.q.len() == m * d
        && orow.len() == heads * d
        && v.scales.len() >= m * groups
        && scratch >= value_scratch(m, d, v.group, heads)
        && (heads == 0 || scores.len() >= (heads - 1) * len + at + m);
    assert!(ok, "attention_q8: shapes of the scores and value block disagree");
    Some((d, heads))
}

/// The first `m` positions' scales (f16 bits `[m, groups]`) as f32 by group, through
/// `flat` (`m * groups` floats): group `g`'s `m` in `out` from `g * stride + at`.
#[inline(always)]
fn block_scales(
    scales: &[u16],
    (m, groups): (usize, usize),
    flat: &mut [f32],
    (out, stride, at): (&mut [f32], usize, usize),
) {
    let flat = &mut flat[..m * groups];
    super::widen::widen(&scales[..m * groups], flat);
    for (g, column) in out.chunks_mut(stride).take(groups).enumerate() {
        for (s, x) in column[at..at + m].iter_mut().enumerate() {
            *x = flat[s * groups + g];
        }
    }
}

/// A row's weights `[heads, groups, m2]` in `out` (`m2` = `m` rounded up to even, the last
/// zero where `m` is odd): `bf16_weight(score * scale)` of each head, group and position,
/// the scales `[groups, stride]` by group.
#[inline(always)]
fn row_weights(
    (scores, len, at): (&[f32], usize, usize),
    (m, heads, groups): (usize, usize, usize),
    (scales, stride): (&[f32], usize),
    out: &mut [f32],
) {
    let m2 = m.next_multiple_of(2);
    for (h, head) in out[..heads * groups * m2].chunks_exact_mut(groups * m2).enumerate() {
        let sc = &scores[h * len + at..][..m];
        for (w, column) in head.chunks_exact_mut(m2).zip(scales.chunks(stride)) {
            for ((w, &x), &scale) in w.iter_mut().zip(sc).zip(&column[..m]) {
                *w = bf16_weight(x * scale);
            }
            w[m..].fill(0.0);
        }
    }
}

isa_dispatch! {
    /// [`value_weights`] compiled for the CPU's vector unit (the same bits on each).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86 kernels only
    fn value_weights_fast<'s>(
        scores: (&[f32], usize, usize),
        m: usize,
        v: ValueBlock,
        orow: &[f32],
        scratch: &'s mut [f32],
    ) -> Option<(&'s [f32], usize)> => value_weights;
}

/// The value kernels' weights: checks the shapes, then makes each head's weights
/// ([`row_weights`]) in `scratch` from the block's scales; returns them and the head width,
/// `None` when there is nothing to add.
#[inline(always)]
fn value_weights<'s>(
    scores: (&[f32], usize, usize),
    m: usize,
    v: ValueBlock,
    orow: &[f32],
    scratch: &'s mut [f32],
) -> Option<(&'s [f32], usize)> {
    let (d, heads) = check_values(scores, m, v, orow, scratch.len())?;
    let groups = d / v.group;
    let (flat, rest) = scratch.split_at_mut(m * groups);
    let (scales, weights) = rest.split_at_mut(m * groups);
    block_scales(v.scales, (m, groups), flat, (&mut *scales, m, 0));
    row_weights(scores, (m, heads, groups), (scales, m), weights);
    Some((&weights[..heads * groups * m.next_multiple_of(2)], d))
}

/// Positions of a block in the value kernels' order: pairs in order, the odd one of each
/// first (as `vdpbf16ps` adds them), those past `m` left out.
#[inline(always)]
fn pair_order(m: usize) -> impl Iterator<Item = usize> {
    (0..m.div_ceil(2))
        .flat_map(move |p| [2 * p + 1, 2 * p])
        .filter(move |&s| s < m)
}

/// The reference value kernel: per head and dimension one chain of fused multiply-adds of
/// the 8-bit values with the weights ([`value_weights`]) over the positions in
/// [`pair_order`], continuing from the output's value (a chunk's sum is one chain over its
/// blocks, from zero: [`pairs`] keeps it in registers).
pub fn axpys_portable(scores: (&[f32], usize, usize), m: usize, v: ValueBlock, orow: &mut [f32], scratch: &mut [f32]) {
    let Some((weights, d)) = value_weights(scores, m, v, orow, scratch) else {
        return;
    };
    let (groups, m2) = (d / v.group, m.next_multiple_of(2));
    for (g, o) in orow.chunks_mut(d).enumerate() {
        for (i, o) in o.iter_mut().enumerate() {
            let w = &weights[(g * groups + i / v.group) * m2..][..m2];
            for s in pair_order(m) {
                *o = f32::from(v.q[s * d + i]).mul_add(w[s], *o);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn axpys_avx2(scores: (&[f32], usize, usize), m: usize, v: ValueBlock, orow: &mut [f32], scratch: &mut [f32]) {
    let Some((weights, d)) = value_weights_fast(scores, m, v, orow, scratch) else {
        return;
    };
    use avx2::axpys;
    in_fours(orow.len() / d, |g, n| {
        // SAFETY: AVX2 and FMA were detected by `value_kernel`, the only way here;
        // `value_weights` proved the bounds every load relies on.
        unsafe { by_count!(n, axpys::<[4, 3, 2]>((m, d), v, weights, g, orow)) }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
#[macro_use]
mod bf16;
#[cfg(target_arch = "x86_64")]
pub mod pairs;

/// Off x86 no chunk is converted into pairs: the rows read each block in place.
#[cfg(not(target_arch = "x86_64"))]
#[path = "attention_q8/no_pairs.rs"]
pub mod pairs;

#[cfg(target_arch = "x86_64")]
fn dots_avx2(q: &QuantQuery, k: KeyTile, from: usize, out: &mut [[f32; LANES]]) {
    use avx2::dots;
    let (heads, d) = check(q, k, from, out);
    in_fours(heads, |g, n| {
        let rows = &mut out[g..g + n];
        // SAFETY: AVX2, FMA and F16C were detected by `kernel`, the only way to this function;
        // `check` proved the bounds every load relies on.
        unsafe { by_count!(n, dots::<[4, 3, 2]>(q, k, (from, d), g, rows)) }
    });
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::needless_range_loop)] // `h` indexes several arrays in step
mod avx2;

#[cfg(test)]
mod tests;
