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
//! Values are read in place too: widened and scaled in registers, then added with the
//! scores' weights as the float path adds a converted block ([`axpys_portable`]), so that a
//! tile may also convert a block once for all its rows and get the same bits.

use half::f16;

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

/// A scoring kernel for several query rows at once: `out[r * G + g]` = row `r`'s head `g`
/// against positions `from..from + 16` of the tile, every row of `G` heads. The same bits as
/// [`Dots`] row by row.
pub type RowDots = fn(&[QuantQuery], KeyTile, usize, &mut [[f32; LANES]]);

/// The fastest kernel for several rows this CPU runs.
pub fn rows_kernel() -> RowDots {
    #[cfg(target_arch = "x86_64")]
    if avx512::vnni() {
        return avx512::dots_rows_kernel;
    }
    dots_rows_each
}

/// [`RowDots`] by [`kernel`], row by row.
pub fn dots_rows_each(qs: &[QuantQuery], k: KeyTile, from: usize, out: &mut [[f32; LANES]]) {
    let heads = rows_heads(qs, out);
    let dots = kernel();
    for (q, o) in qs.iter().zip(out.chunks_exact_mut(heads)) {
        dots(q, k, from, o);
    }
}

/// The heads per row of a [`RowDots`] call (`out` holds as many for every row).
fn rows_heads(qs: &[QuantQuery], out: &[[f32; LANES]]) -> usize {
    let heads = out.len() / qs.len().max(1);
    assert!(
        heads > 0 && heads * qs.len() == out.len(),
        "attention_q8: the rows' outputs disagree with their queries"
    );
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
/// of `orow` (`[G * d]`), with `w[g][s] = scores[g * len + at + s]`; `scratch` holds at
/// least `m * d / group` floats.
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

/// The block's scales as f32, `[m, d / group]`, in `scratch`, and the head width. Checks
/// the shapes; `None` when there is nothing to add.
fn value_scales<'s>(
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: ValueBlock,
    orow: &[f32],
    scratch: &'s mut [f32],
) -> Option<(&'s [f32], usize)> {
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
        && scratch.len() >= m * groups
        && (heads == 0 || scores.len() >= (heads - 1) * len + at + m);
    assert!(ok, "attention_q8: shapes of the scores and value block disagree");
    let out = &mut scratch[..m * groups];
    super::widen::widen(&v.scales[..m * groups], out);
    Some((out, d))
}

/// The reference value kernel: each value is `q * scale` (one rounding, as
/// [`super::dequant::groups`] converts a block), then per head and 8 dimensions one chain of
/// fused multiply-adds over the positions in order, added to the output at the end: the
/// operations of the float path on a converted block, so every path gives the same bits.
pub fn axpys_portable(scores: (&[f32], usize, usize), m: usize, v: ValueBlock, orow: &mut [f32], scratch: &mut [f32]) {
    let Some((scales, d)) = value_scales(scores, m, v, orow, scratch) else {
        return;
    };
    let (sc, len, at) = scores;
    let groups = d / v.group;
    for (g, o) in orow.chunks_mut(d).enumerate() {
        for c in 0..d / VLANES {
            let mut acc = [0f32; VLANES];
            for s in 0..m {
                let (w, scale) = (sc[g * len + at + s], scales[s * groups + c * VLANES / v.group]);
                for (l, a) in acc.iter_mut().enumerate() {
                    *a = w.mul_add(f32::from(v.q[s * d + c * VLANES + l]) * scale, *a);
                }
            }
            for (l, a) in acc.iter().enumerate() {
                o[c * VLANES + l] += a;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn axpys_avx2(scores: (&[f32], usize, usize), m: usize, v: ValueBlock, orow: &mut [f32], scratch: &mut [f32]) {
    let Some((scales, d)) = value_scales(scores, m, v, orow, scratch) else {
        return;
    };
    use avx2::axpys;
    in_fours(orow.len() / d, |g, n| {
        // SAFETY: AVX2 and FMA were detected by `value_kernel`, the only way here;
        // `value_scales` proved the bounds every load relies on.
        unsafe { by_count!(n, axpys::<[4, 3, 2]>(scores, (m, d), v, scales, g, orow)) }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512;

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
mod avx2 {
    use super::{KeyTile, QuantQuery, ValueBlock, LANES, QUAD, VLANES};
    use std::arch::x86_64::*;

    /// Heads `first..first + H` of [`super::axpys_portable`], 16 dimensions at a time (two
    /// vectors sharing each position's conversion and weights), then 8.
    ///
    /// # Safety
    /// AVX2 and FMA; the shapes as `value_scales` proves them.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpys<const H: usize>(
        (sc, len, at): (&[f32], usize, usize),
        (m, d): (usize, usize),
        v: ValueBlock,
        scales: &[f32],
        first: usize,
        orow: &mut [f32],
    ) {
        let groups = d / v.group;
        // Each head's scores of the block's positions.
        let w: [&[f32]; H] = std::array::from_fn(|h| &sc[(first + h) * len + at..][..m]);
        let mut c = 0;
        while c < d {
            let wide = c + 2 * VLANES <= d;
            let (ga, gb) = (c / v.group, (c + VLANES).min(d - 1) / v.group);
            let (mut lo, mut hi) = ([_mm256_setzero_ps(); H], [_mm256_setzero_ps(); H]);
            for s in 0..m {
                let row = s * d + c;
                // SAFETY: `s < m` and `c + 8 <= d`: 8 bytes of the block (16 when `wide`);
                // `s * groups + ga` and `+ gb` are below `m * groups`, the scales' length;
                // `s < m`, each head's number of scores.
                unsafe {
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        v.q.as_ptr().add(row) as *const __m128i
                    )));
                    let xa = _mm256_mul_ps(q, _mm256_set1_ps(*scales.get_unchecked(s * groups + ga)));
                    if !wide {
                        for h in 0..H {
                            lo[h] = _mm256_fmadd_ps(_mm256_set1_ps(*w[h].get_unchecked(s)), xa, lo[h]);
                        }
                        continue;
                    }
                    let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        v.q.as_ptr().add(row + VLANES) as *const __m128i
                    )));
                    let xb = _mm256_mul_ps(q, _mm256_set1_ps(*scales.get_unchecked(s * groups + gb)));
                    for h in 0..H {
                        let wh = _mm256_set1_ps(*w[h].get_unchecked(s));
                        lo[h] = _mm256_fmadd_ps(wh, xa, lo[h]);
                        hi[h] = _mm256_fmadd_ps(wh, xb, hi[h]);
                    }
                }
            }
            for h in 0..H {
                let o = &mut orow[(first + h) * d + c..];
                // SAFETY: `o` holds 8 f32 (16 when `wide`).
                unsafe {
                    _mm256_storeu_ps(o.as_mut_ptr(), _mm256_add_ps(_mm256_loadu_ps(o.as_ptr()), lo[h]));
                    if wide {
                        let p = o.as_mut_ptr().add(VLANES);
                        _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), hi[h]));
                    }
                }
            }
            c += if wide { 2 * VLANES } else { VLANES };
        }
    }

    /// Heads `first..first + H` of `q` (`d` dimensions each) against 16 positions from
    /// `from`, eight at a time.
    ///
    /// # Safety
    /// AVX2, F16C and FMA; the shapes as `check` proves them.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dots<const H: usize>(
        q: &QuantQuery,
        k: KeyTile,
        (from, d): (usize, usize),
        first: usize,
        out: &mut [[f32; LANES]],
    ) {
        let groups = d / k.group;
        let quads = k.group / QUAD;
        let ones = _mm256_set1_epi16(1);
        for half in 0..LANES / 8 {
            let p = from + half * 8;
            let mut acc = [_mm256_setzero_ps(); H];
            for gi in 0..groups {
                let mut sums = [_mm256_setzero_si256(); H];
                for qi in 0..quads {
                    let quad = gi * quads + qi;
                    // SAFETY: `quad < d / 4` and `p + 8 <= padded`: 32 bytes in the tile.
                    let kv =
                        unsafe { _mm256_loadu_si256(k.q.as_ptr().add((quad * k.padded + p) * QUAD) as *const __m256i) };
                    let magnitude = _mm256_sign_epi8(kv, kv);
                    for h in 0..H {
                        let at = (first + h) * d + quad * QUAD;
                        // SAFETY: `at + 4 <= q.q.len()` (head and quad in range).
                        let four = unsafe { (q.q.as_ptr().add(at) as *const i32).read_unaligned() };
                        let signed = _mm256_sign_epi8(_mm256_set1_epi32(four), kv);
                        let pairs = _mm256_maddubs_epi16(magnitude, signed);
                        sums[h] = _mm256_add_epi32(sums[h], _mm256_madd_epi16(pairs, ones));
                    }
                }
                // SAFETY: `gi < d / group` and `p + 8 <= padded`: 8 scales in the tile.
                let ks = _mm256_cvtph_ps(unsafe {
                    _mm_loadu_si128(k.scales.as_ptr().add(gi * k.padded + p) as *const __m128i)
                });
                for h in 0..H {
                    let scale = _mm256_mul_ps(ks, _mm256_set1_ps(q.scales[(first + h) * groups + gi]));
                    acc[h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums[h]), scale, acc[h]);
                }
            }
            for h in 0..H {
                // SAFETY: `out[h]` holds 16 f32, `half * 8 + 8 <= 16`.
                unsafe { _mm256_storeu_ps(out[h].as_mut_ptr().add(half * 8), acc[h]) };
            }
        }
    }
}

#[cfg(test)]
mod tests;
