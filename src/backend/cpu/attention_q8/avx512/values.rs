//! The AVX-512 value kernel of [`super::super`]: values widened sixteen dimensions at a time,
//! their weights made in registers for short blocks.

use std::arch::x86_64::*;

use super::super::super::isa::in_fours;
use super::super::{ValueBlock, LANES, VLANES};

/// [`super::super::Axpys`] with [`axpys`], four heads a call (the AVX2 kernel where `d` is not a
/// multiple of 16).
pub(in super::super) fn axpys_kernel(
    scores: (&[f32], usize, usize),
    m: usize,
    v: ValueBlock,
    orow: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(
        super::vnni(),
        "attention_q8: the AVX-512 value kernel on a CPU without it"
    );
    // Before the weights are made, which the AVX2 kernel does itself.
    if !v.q.len().checked_div(m).is_some_and(|d| d.is_multiple_of(2 * VLANES)) {
        return super::super::axpys_avx2(scores, m, v, orow, scratch);
    }
    let Some((d, heads)) = super::super::check_values(scores, m, v, orow, scratch.len()) else {
        return;
    };
    let groups = d / v.group;
    let weights: &[f32] = if m <= LANES && matches!(groups, 1 | 2 | 4) {
        let size = heads * groups * m.next_multiple_of(2);
        // SAFETY: AVX-512F/BW were detected (asserted above); `check_values` proved the
        // shapes (scores of `heads` heads, `m * groups` scales, scratch for the weights),
        // `m <= 16` and 1, 2 or 4 groups.
        unsafe { weights_in_registers(scores, (m, heads, groups), v.scales, &mut scratch[..size]) };
        &scratch[..size]
    } else {
        match super::super::value_weights_fast(scores, m, v, orow, scratch) {
            Some((weights, _)) => weights,
            None => return,
        }
    };
    let pairs = d.is_multiple_of(4 * VLANES);
    let split = !v.group.is_multiple_of(2 * VLANES);
    in_fours(orow.len() / d, |g, n| {
        // SAFETY: AVX-512F was detected (asserted above); `d` is a multiple of 16 (of 32 for
        // two registers a head), `split` unless the group is a multiple of 16;
        // `value_weights` proved the bounds.
        unsafe {
            match (pairs, split) {
                (true, false) => by_count!(n, axpys::<[4, 3, 2], 2, false>((m, d), v, weights, g, orow)),
                (true, true) => by_count!(n, axpys::<[4, 3, 2], 2, true>((m, d), v, weights, g, orow)),
                (false, false) => by_count!(n, axpys::<[4, 3, 2], 1, false>((m, d), v, weights, g, orow)),
                (false, true) => by_count!(n, axpys::<[4, 3, 2], 1, true>((m, d), v, weights, g, orow)),
            }
        }
    });
}

/// [`super::super::row_weights`] in registers for `m <= 16` positions and 1, 2 or 4 groups: the
/// scales (f16 bits `[m, groups]`) widened and split by group with permutes, each head's
/// scores times them rounded as [`super::super::bf16_weight`] rounds, in integer operations;
/// written `[heads, groups, m2]` into `out`.
///
/// # Safety
/// AVX-512F and AVX-512BW; `m <= 16`, `groups` 1, 2 or 4, `scales` `m * groups` bits, the
/// scores `heads` heads' `m` from `at` (`len` apart), `out` `heads * groups * m2` floats.
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::needless_range_loop)] // `g` indexes several arrays in step
unsafe fn weights_in_registers(
    (sc, len, at): (&[f32], usize, usize),
    (m, heads, groups): (usize, usize, usize),
    scales: &[u16],
    out: &mut [f32],
) {
    let m2 = m.next_multiple_of(2);
    let rows: __mmask16 = if m >= LANES { !0 } else { (1u16 << m) - 1 };
    let bits = |n: usize| -> __mmask32 {
        if n >= 32 {
            !0
        } else {
            (1u32 << n) - 1
        }
    };
    let p = scales.as_ptr();
    let mut column = [_mm512_setzero_ps(); 4];
    // SAFETY: every load is masked to the `m * groups` scales.
    unsafe {
        match groups {
            1 => column[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_maskz_loadu_epi16(bits(m), p.cast()))),
            2 => {
                let all = _mm512_maskz_loadu_epi16(bits(2 * m), p.cast());
                let (lo, hi) = (
                    _mm512_cvtph_ps(_mm512_castsi512_si256(all)),
                    _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(all)),
                );
                let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
                column[0] = _mm512_permutex2var_ps(lo, even, hi);
                column[1] = _mm512_permutex2var_ps(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi);
            }
            _ => {
                let first = _mm512_maskz_loadu_epi16(bits(4 * m), p.cast());
                let second = _mm512_maskz_loadu_epi16(bits((4 * m).saturating_sub(32)), p.add(32).cast());
                // A macro: a closure would not share the target features.
                macro_rules! wide {
                    ($x:expr) => {
                        (
                            _mm512_cvtph_ps(_mm512_castsi512_si256($x)),
                            _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>($x)),
                        )
                    };
                }
                let ((a, b), (c, e)) = (wide!(first), wide!(second));
                let every4 = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
                for g in 0..4 {
                    let idx = _mm512_add_epi32(every4, _mm512_set1_epi32(g as i32));
                    let (x, y) = (_mm512_permutex2var_ps(a, idx, b), _mm512_permutex2var_ps(c, idx, e));
                    column[g] = _mm512_shuffle_f32x4::<0b01_00_01_00>(x, y);
                }
            }
        }
    }
    let (high, quiet_bit, sign) = (
        _mm512_set1_epi32(0xffff_0000u32 as i32),
        _mm512_set1_epi32(0x0040_0000),
        _mm512_set1_epi32(0x8000_0000u32 as i32),
    );
    let (magnitude_bits, infinity, tiny) = (
        _mm512_set1_epi32(0x7fff_ffff),
        _mm512_set1_epi32(0x7f80_0000),
        _mm512_set1_epi32(27 << 23),
    );
    let (half, one) = (_mm512_set1_epi32(0x7fff), _mm512_set1_epi32(1));
    let stores: __mmask16 = if m2 >= LANES { !0 } else { (1u16 << m2) - 1 };
    for h in 0..heads {
        // SAFETY: `m` scores of head `h` from `at`, which the mask loads.
        let w = unsafe { _mm512_maskz_loadu_ps(rows, sc.as_ptr().add(h * len + at)) };
        for g in 0..groups {
            let b = _mm512_castps_si512(_mm512_mul_ps(w, column[g]));
            let magnitude = _mm512_and_si512(b, magnitude_bits);
            let bias = _mm512_add_epi32(half, _mm512_and_si512(_mm512_srli_epi32::<16>(b), one));
            let rounded = _mm512_and_si512(_mm512_add_epi32(b, bias), high);
            let quiet = _mm512_and_si512(_mm512_or_si512(b, quiet_bit), high);
            let x = _mm512_mask_blend_epi32(_mm512_cmpgt_epu32_mask(magnitude, infinity), rounded, quiet);
            let x = _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(magnitude, tiny), x, _mm512_and_si512(b, sign));
            // SAFETY: `m2` floats of `out` from `(h * groups + g) * m2`, which the mask stores
            // (zero past `m`: the scores were loaded as zero there).
            unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add((h * groups + g) * m2).cast(), stores, x) };
        }
    }
}

/// Heads `first..first + H` of [`super::super::axpys_portable`], `16 * C` dimensions at a time
/// (`C * H` chains at once).
///
/// # Safety
/// AVX-512F; `d` a multiple of `16 * C`; `SPLIT` unless the group is a multiple of 16; the
/// shapes as `value_weights` proves them, `weights` its output.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `h` and `i` index several arrays in step
unsafe fn axpys<const H: usize, const C: usize, const SPLIT: bool>(
    (m, d): (usize, usize),
    v: ValueBlock,
    weights: &[f32],
    first: usize,
    orow: &mut [f32],
) {
    const WIDE: usize = 2 * VLANES;
    let (groups, m2) = (d / v.group, m.next_multiple_of(2));
    for c in (0..d).step_by(C * WIDE) {
        // Each register's weights per head: of its group, and of its upper half's.
        let mut wa = [[std::ptr::null::<f32>(); H]; C];
        let mut wb = [[std::ptr::null::<f32>(); H]; C];
        for i in 0..C {
            let at = c + i * WIDE;
            for h in 0..H {
                wa[i][h] = weights[((first + h) * groups + at / v.group) * m2..][..m2].as_ptr();
                wb[i][h] = weights[((first + h) * groups + (at + VLANES) / v.group) * m2..][..m2].as_ptr();
            }
        }
        // Each chain continues from the output's value.
        let mut acc = [[_mm512_setzero_ps(); H]; C];
        for i in 0..C {
            for h in 0..H {
                let o = &orow[(first + h) * d + c + i * WIDE..][..WIDE];
                // SAFETY: `o` holds 16 f32.
                acc[i][h] = unsafe { _mm512_loadu_ps(o.as_ptr()) };
            }
        }
        // One position's values with the heads' weights (a macro: a closure would not share
        // the target features).
        macro_rules! position {
            ($s:expr) => {{
                let s = $s;
                for i in 0..C {
                    // SAFETY: `s < m` and `c + 16 * C <= d`: the bytes lie in the block; `s <
                    // m2`, each weight list's length.
                    unsafe {
                        let x = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            v.q.as_ptr().add(s * d + c + i * WIDE).cast(),
                        )));
                        for h in 0..H {
                            let w = match SPLIT {
                                // A 16-wide register spans two groups where the group is 8.
                                true => {
                                    let (a, b) = (
                                        _mm512_castps_pd(_mm512_set1_ps(*wa[i][h].add(s))),
                                        _mm256_castps_pd(_mm256_set1_ps(*wb[i][h].add(s))),
                                    );
                                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(a, b))
                                }
                                false => _mm512_set1_ps(*wa[i][h].add(s)),
                            };
                            acc[i][h] = _mm512_fmadd_ps(x, w, acc[i][h]);
                        }
                    }
                }
            }};
        }
        // The positions in `pair_order`: pairs, the odd one first.
        let mut p = 0;
        while p + 1 < m {
            position!(p + 1);
            position!(p);
            p += 2;
        }
        if p < m {
            position!(p);
        }
        for i in 0..C {
            for h in 0..H {
                let o = &mut orow[(first + h) * d + c + i * WIDE..][..WIDE];
                // SAFETY: `o` holds 16 f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc[i][h]) };
            }
        }
    }
}
