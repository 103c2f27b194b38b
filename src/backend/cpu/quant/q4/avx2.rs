//! The AVX2 kernels of [`super`]: 8 rows per 256-bit half of each line, the nibbles'
//! products with `vpmaddubsw` summed in 16 bits, widened once per block.

// The kernels index several arrays in lockstep by token and row.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::super::activation::BLOCK;
use super::super::{Acts, Line, GROUP};
use super::{meta_len, LINES};

/// One line's 8-row half `v` against a token's eight activations (`x0`, `x1`: four each)
/// in the AVX2 kernels: the low and high nibbles' products with `maddubs`, summed in 16
/// bits. A macro: a function would not share the kernels' target features.
macro_rules! nibble_sums {
    ($v:expr, $nib:expr, $x0:expr, $x1:expr) => {{
        let lo = _mm256_and_si256($v, $nib);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>($v), $nib);
        _mm256_add_epi16(_mm256_maddubs_epi16(lo, $x0), _mm256_maddubs_epi16(hi, $x1))
    }};
}

/// A block's float work in the AVX2 kernels for one 8-row half: each token's `y` gains its
/// integer sums (`acc`, widened) times the rows' step (super-block scale times sub-block
/// scale) times the token's scale, less the rows' offset times the token's scaled sum. `m`
/// is the block's super-block meta. A macro, as [`nibble_sums!`].
macro_rules! half_epilogue {
    ($m:expr, ($b:expr, $sub:expr, $half:expr), $a:expr, $acc:expr, $y:expr) => {{
        let (m, b, half) = ($m, $b, $half);
        // SAFETY: the four loads lie in the block's super-block meta (`meta_len`), as the
        // kernels checked on entry.
        let (d, dmin, sc, mn) = unsafe {
            let sm = m.add(4 * GROUP + (b % $sub) * 2 * GROUP + 8 * half);
            (
                _mm256_cvtph_ps(_mm_loadu_si128(m.add(16 * half) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(m.add(2 * GROUP + 16 * half) as *const __m128i)),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sm as *const __m128i))),
                _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(sm.add(GROUP) as *const __m128i))),
            )
        };
        let (step, off) = (_mm256_mul_ps(d, sc), _mm256_mul_ps(dmin, mn));
        for (t, (acc, y)) in $acc.iter().zip($y.iter_mut()).enumerate() {
            let scaled = _mm256_mul_ps(step, _mm256_set1_ps($a.scales[t][b]));
            *y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(*acc), scaled, *y);
            *y = _mm256_fnmadd_ps(off, _mm256_set1_ps($a.scaled_sums[t][b]), *y);
        }
    }};
}

/// AVX2 kernel (same contract as [`group_dot_portable`]), 8 rows per 256-bit half.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group_dot_avx2<const T: usize>(
    lines: &[Line],
    meta: &[u8],
    sub: usize,
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    let blocks = lines.len() / LINES;
    let mlen = meta_len(sub);
    debug_assert!(meta.len() >= blocks / sub * mlen && (0..T).all(|t| a.qs[t].len() >= blocks * BLOCK));
    if T == 1 {
        // SAFETY: the same contract.
        return unsafe { group_dot_avx2_one_pass(lines, meta, sub, a, out) };
    }
    let nib = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    for half in 0..2 {
        let mut y = [_mm256_setzero_ps(); T];
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        let base = unsafe { (lines.as_ptr() as *const __m256i).add(half) };
        for b in 0..blocks {
            // 16-bit sums over the block's lines, widened once (see `super::LANE_SUM`).
            let mut acc = [_mm256_setzero_si256(); T];
            for j in 0..LINES {
                // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                let v = unsafe { _mm256_load_si256(base.add(2 * (b * LINES + j))) };
                for t in 0..T {
                    // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                    let p = unsafe { a.qs[t].as_ptr().add(b * BLOCK + 8 * j) as *const i32 };
                    // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                    let (x0, x1) = unsafe { (p.read_unaligned(), p.add(1).read_unaligned()) };
                    let s = nibble_sums!(v, nib, _mm256_set1_epi32(x0), _mm256_set1_epi32(x1));
                    acc[t] = _mm256_add_epi16(acc[t], s);
                }
            }
            // SAFETY: in bounds of `meta`, as checked on entry.
            let m = unsafe { meta.as_ptr().add(b / sub * mlen) };
            for v in acc.iter_mut() {
                *v = _mm256_madd_epi16(*v, ones);
            }
            half_epilogue!(m, (b, sub, half), a, acc, y);
        }
        for t in 0..T {
            let dst = out[t][8 * half..].as_mut_ptr();
            // SAFETY: `out[t]` holds 16 f32; this half is 8 of them.
            unsafe { _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), y[t])) };
        }
    }
}

/// [`group_dot_avx2`] for one token (decoding): both 8-row halves of every line at once, so
/// the weights stream through once instead of twice; the same operations per half, so the
/// same bits.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_dot_avx2_one_pass<const T: usize>(
    lines: &[Line],
    meta: &[u8],
    sub: usize,
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    let blocks = lines.len() / LINES;
    let mlen = meta_len(sub);
    let nib = _mm256_set1_epi8(15);
    let ones = _mm256_set1_epi16(1);
    let mut y = [[_mm256_setzero_ps(); T]; 2];
    let base = lines.as_ptr() as *const __m256i;
    for b in 0..blocks {
        // The weights 4 KiB ahead, as the AVX-512 kernel asks (a hint, never a fault): +18%
        // on one core, +20% on two where a plain read ran 58 GB/s (one token, `lm_head`).
        super::super::prefetch_lines(lines.as_ptr().wrapping_add((b + 16) * LINES), LINES);
        let mut acc = [[_mm256_setzero_si256(); T]; 2];
        for j in 0..LINES {
            // SAFETY: in bounds of the activations, as checked on entry.
            let x: [(__m256i, __m256i); T] = std::array::from_fn(|t| unsafe {
                let p = a.qs[t].as_ptr().add(b * BLOCK + 8 * j) as *const i32;
                (
                    _mm256_set1_epi32(p.read_unaligned()),
                    _mm256_set1_epi32(p.add(1).read_unaligned()),
                )
            });
            for half in 0..2 {
                // SAFETY: in bounds of `lines` (two 256-bit halves per line).
                let v = unsafe { _mm256_load_si256(base.add(2 * (b * LINES + j) + half)) };
                for t in 0..T {
                    acc[half][t] = _mm256_add_epi16(acc[half][t], nibble_sums!(v, nib, x[t].0, x[t].1));
                }
            }
        }
        // SAFETY: in bounds of `meta`, as checked on entry.
        let m = unsafe { meta.as_ptr().add(b / sub * mlen) };
        for (half, (acc, y)) in acc.iter_mut().zip(y.iter_mut()).enumerate() {
            for v in acc.iter_mut() {
                *v = _mm256_madd_epi16(*v, ones);
            }
            half_epilogue!(m, (b, sub, half), a, acc, y);
        }
    }
    for half in 0..2 {
        for t in 0..T {
            let dst = out[t][8 * half..].as_mut_ptr();
            // SAFETY: `out[t]` holds 16 f32; this half is 8 of them.
            unsafe { _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), y[half][t])) };
        }
    }
}
