//! A q8_0 value block converted once into bf16 pairs of positions for all the rows of a
//! tile, then added with `vdpbf16ps` (AVX-512 BF16): one instruction per head, two positions
//! and sixteen dimensions, half the fused multiply-adds of the float path.
//!
//! `vdpbf16ps` adds to each f32 lane the product of the odd elements of its pair, rounded,
//! then the even ones', rounded (the products of two bf16 are exact in f32): per lane the
//! two fused multiply-adds of [`super::axpys_portable`] on a pair in [`super::pair_order`].
//! Its weights are [`super::bf16_weight`]s, its values 8-bit integers (each a bf16), so no
//! input is subnormal, and no sum either (every product is a multiple of 2^-107), where the
//! instruction would flush them: the bits are the reference's.

use std::arch::x86_64::*;

use super::{block_scales, ValueBlock};

/// Dimensions of one register.
const LANES: usize = 16;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// A block's values as bf16 pairs, kept between blocks: `block[p * d + i]` holds dimension
/// `i` of positions `2p` (the low half) and `2p + 1`.
#[derive(Debug, Default)]
pub struct Pairs {
    block: Vec<u32>,
    /// The block's scales by group, `[groups, n]`.
    scales: Vec<f32>,
    flat: Vec<f32>,
    group: usize,
    /// Positions converted (the last pair's odd one zero where this is odd).
    n: usize,
    d: usize,
}

impl Pairs {
    /// Converts the block `v` (`[n, d]`, `n` at most 16, `d` a multiple of 64); `false`,
    /// converting nothing, where the shapes do not fit the kernel (or the CPU lacks it).
    pub fn convert(&mut self, v: ValueBlock, n: usize) -> bool {
        let Some(d) = v.q.len().checked_div(n) else {
            return false;
        };
        let fits = n <= LANES && d.is_multiple_of(4 * LANES) && v.q.len() == n * d && v.group.is_multiple_of(LANES);
        if !fits || !available() {
            return false;
        }
        self.block.resize(n.div_ceil(2) * d, 0);
        (self.n, self.d, self.group) = (n, d, v.group);
        let groups = d / v.group;
        self.scales.resize(n * groups, 0.0);
        self.flat.resize(n * groups, 0.0);
        block_scales(v.scales, (n, groups), &mut self.flat, &mut self.scales);
        // SAFETY: AVX-512F/BW/BF16 were detected; `v.q` holds `n * d` bytes and the block
        // `ceil(n / 2) * d` words, `d` a multiple of 16.
        unsafe { convert(&v.q[..n * d], n, d, &mut self.block) };
        true
    }

    /// Each row's output (`[heads, d]` from `out[row.out..]`) gains the first `row.m`
    /// positions of the converted block with the row's weights: [`super::axpys_portable`]'s
    /// bits on the block's first `m` positions.
    pub fn add_rows(&self, rows: &[RowPart], heads: usize, out: &mut [f32]) {
        let (d, groups) = (self.d, self.d / self.group.max(1));
        let ok = rows.iter().all(|r| {
            let (sc, len, at) = r.scores;
            r.m <= self.n
                && r.out.checked_add(heads * d).is_some_and(|end| end <= out.len())
                && (heads == 0 || sc.len() >= (heads - 1) * len + at + r.m)
        });
        let ok = ok && d > 0 && self.scales.len() >= groups * self.n && (1..=4).contains(&heads) && available();
        assert!(ok, "attention_q8: rows' weights disagree with their converted block");
        let scales = (&self.scales[..], self.n);
        // SAFETY: AVX-512F/BW/BF16 were detected; every row's shapes checked above, the
        // block holds `ceil(n / 2)` pairs of `d` dimensions and its scales `[groups, n]` (`d`
        // a multiple of 64, groups of 16 dimensions or more, `m <= n <= 16`), 1 to 4 heads.
        unsafe { by_count!(heads, add::<[4, 3, 2]>(&self.block, (d, self.group), rows, scales, out)) }
    }
}

/// One row of [`Pairs::add_rows`].
#[derive(Debug, Clone, Copy)]
pub struct RowPart<'a> {
    /// The row's scores of the chunk, `[heads, len]`, and where the block's first position
    /// lies in them: `(scores, len, at)`.
    pub scores: (&'a [f32], usize, usize),
    /// Positions of the block the row sees.
    pub m: usize,
    /// Where the row's output starts.
    pub out: usize,
}

/// [`Pairs::convert`].
///
/// # Safety
/// AVX-512F/BW/BF16; `q` holds `n * d` bytes, `block` `ceil(n / 2) * d` words, `d` a
/// multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn convert(q: &[i8], n: usize, d: usize, block: &mut [u32]) {
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    for p in 0..n.div_ceil(2) {
        for c in (0..d).step_by(LANES) {
            // SAFETY: `2p < n` and `c + 16 <= d`: within `q`; the odd position only where it
            // is below `n`; the words within `block`.
            unsafe {
                // A macro: a closure would not share the target features.
                macro_rules! widen {
                    ($s:expr) => {
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            q.as_ptr().add($s * d + c).cast(),
                        )))
                    };
                }
                let even = _mm512_castps_si512(widen!(2 * p));
                let odd = match 2 * p + 1 < n {
                    true => _mm512_castps_si512(widen!(2 * p + 1)),
                    false => _mm512_setzero_si512(),
                };
                let words = _mm512_or_si512(_mm512_srli_epi32::<16>(even), _mm512_and_si512(odd, high));
                _mm512_storeu_si512(block.as_mut_ptr().add(p * d + c).cast(), words);
            }
        }
    }
}

/// [`Pairs::add_rows`] for `H` heads, row by row and 64 dimensions at a time: each head's
/// weights of a group made in registers (the product with the scales, those below 2^-100
/// zeroed, `vcvtneps2bf16`'s rounding to nearest even: [`super::bf16_weight`]), then one
/// `vdpbf16ps` per head, pair of positions and 16 dimensions.
///
/// # Safety
/// AVX-512F/BW/BF16; `block` `ceil(m / 2)` pairs of `d` dimensions (a multiple of 64) for
/// every row's `m` (at most 16), `scales` `[d / group, stride]` with `m <= stride`, each
/// row's scores `H` heads' `m` from `at` (`len` apart) and its output `H * d` floats of
/// `out`, `group` a multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `h` and `r` index several arrays in step
unsafe fn add<const H: usize>(
    block: &[u32],
    (d, group): (usize, usize),
    rows: &[RowPart],
    (scales, stride): (&[f32], usize),
    out: &mut [f32],
) {
    for row in rows {
        // SAFETY: the caller's, for this row.
        unsafe {
            add_row::<H>(
                block,
                (row.m, d, group),
                row.scores,
                (scales, stride),
                &mut out[row.out..][..H * d],
            )
        }
    }
}

/// One row of [`add`].
///
/// # Safety
/// As [`add`], for this row (`orow` its `H * d` floats).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `h` and `r` index several arrays in step
unsafe fn add_row<const H: usize>(
    block: &[u32],
    (m, d, group): (usize, usize, usize),
    (sc, len, at): (&[f32], usize, usize),
    (scales, stride): (&[f32], usize),
    orow: &mut [f32],
) {
    const R: usize = 4;
    let pairs = m.div_ceil(2);
    let mask: __mmask16 = if m >= LANES { !0 } else { (1u16 << m) - 1 };
    let tiny = _mm512_set1_ps(f32::from_bits(27 << 23));
    // Each head's scores, zero past `m`.
    let mut w = [_mm512_setzero_ps(); H];
    for h in 0..H {
        // SAFETY: `m` scores of head `h` from `at`, which the mask loads.
        w[h] = unsafe { _mm512_maskz_loadu_ps(mask, sc.as_ptr().add(h * len + at)) };
    }
    // The weights of each head and register as bf16 pairs: eight words for 16 positions.
    let mut words = [[[0u32; LANES / 2]; R]; H];
    for c in (0..d).step_by(R * LANES) {
        for r in 0..R {
            let g = (c + r * LANES) / group;
            if r > 0 && g == (c + (r - 1) * LANES) / group {
                for h in 0..H {
                    words[h][r] = words[h][r - 1];
                }
                continue;
            }
            // SAFETY: `g < d / group` and `m <= stride`: the mask loads within the scales.
            let scale = unsafe { _mm512_maskz_loadu_ps(mask, scales.as_ptr().add(g * stride)) };
            for h in 0..H {
                let x = _mm512_mul_ps(w[h], scale);
                // Magnitudes below 2^-100 to zero; NaN (unordered) kept.
                let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(_mm512_abs_ps(x), tiny);
                let packed = _mm512_cvtneps_pbh(_mm512_maskz_mov_ps(keep, x));
                // SAFETY: 32 bytes in a slot; a bf16 vector is 32 bytes of bits.
                unsafe {
                    _mm256_storeu_si256(
                        words[h][r].as_mut_ptr().cast(),
                        std::mem::transmute::<__m256bh, __m256i>(packed),
                    )
                };
            }
        }
        let mut acc = [[_mm512_setzero_ps(); R]; H];
        for p in 0..pairs {
            // SAFETY: `p < ceil(m / 2)` and `c + 64 <= d`: within the block.
            unsafe {
                let mut u = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    u[r] = _mm512_loadu_ps(block.as_ptr().add(p * d + c + r * LANES).cast());
                }
                for h in 0..H {
                    for r in 0..R {
                        let w = _mm512_set1_epi32(words[h][r][p] as i32);
                        let (u, w) = (
                            std::mem::transmute::<__m512, __m512bh>(u[r]),
                            std::mem::transmute::<__m512i, __m512bh>(w),
                        );
                        acc[h][r] = _mm512_dpbf16_ps(acc[h][r], u, w);
                    }
                }
            }
        }
        for h in 0..H {
            for r in 0..R {
                let o = &mut orow[h * d + c + r * LANES..][..LANES];
                // SAFETY: `o` holds 16 f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(o.as_ptr()), acc[h][r])) };
            }
        }
    }
}
