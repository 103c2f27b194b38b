//! A chunk's value scales by group: each block's f16 scales (`[n, groups]` as stored)
//! widened into the columns (`[groups, 2 * ROOM]`) that [`super::weights`] reads sixteen
//! positions at a time.

use std::arch::x86_64::*;

use super::{available, LANES, ROOM};

/// A chunk's blocks' scales (each block's f16 bits `[n, groups]` with its `n` positions, in
/// order) widened into the chunk's scales by group (`[groups, 2 * ROOM]`) from position
/// `at`: [`few_groups`] for up to four groups a position (the 1B's two, the 3B's four), in
/// one call for all the blocks, else [`super::super::block_scales`] through `flat`.
pub(super) fn widen_chunk<'v>(
    scales: impl Iterator<Item = (&'v [u16], usize)>,
    groups: usize,
    flat: &mut Vec<f32>,
    (out, at): (&mut [f32], usize),
) {
    if (1..=FEW).contains(&groups) && available() {
        // SAFETY: AVX-512F/BW were detected just above.
        unsafe { few_groups_chunk(scales, groups, (out, at)) };
    } else {
        let mut at = at;
        for (stored, n) in scales {
            flat.resize(n * groups, 0.0);
            super::super::block_scales(stored, (n, groups), flat, (out, 2 * ROOM, at));
            at += n;
        }
    }
}

/// [`few_groups`] of every block of a chunk, its calls inlined here.
///
/// # Safety
/// AVX-512F/BW; `groups` at most [`FEW`].
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn few_groups_chunk<'v>(
    scales: impl Iterator<Item = (&'v [u16], usize)>,
    groups: usize,
    (out, at): (&mut [f32], usize),
) {
    let mut at = at;
    for (stored, n) in scales {
        // SAFETY: AVX-512F/BW (the caller's contract); `few_groups` checks its slices.
        unsafe { few_groups(&stored[..groups * n], groups, (out, 2 * ROOM, at)) };
        at += n;
    }
}

/// Each word's position within a step of sixteen, twice (the low 256 bits are the ones used).
const POSITIONS: [u16; 32] = {
    let mut p = [0u16; 32];
    let mut i = 0;
    while i < 32 {
        p[i] = (i % LANES) as u16;
        i += 1;
    }
    p
};

/// Groups a position that [`few_groups`] takes: sixteen positions' scales in two registers.
const FEW: usize = 4;

/// [`super::super::block_scales`] for `groups` (at most [`FEW`]) groups a position, sixteen
/// positions a step: the scales `stored` (f16 bits `[m, groups]`) widened, group `g`'s into
/// `out` from `g * stride + at` (picked out of two registers by `vpermt2w`, then
/// `vcvtph2ps`, exact as the widening there).
///
/// # Safety
/// AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn few_groups(stored: &[u16], groups: usize, (out, stride, at): (&mut [f32], usize, usize)) {
    let m = stored.len() / groups.max(1);
    let fits = (1..=FEW).contains(&groups) && at + m <= stride && (groups - 1) * stride + at + m <= out.len();
    assert!(fits, "attention_q8: scales out of place");
    // Position `p`'s scale of group `g` is word `p * groups + g` of a step's two registers:
    // the indices made in registers (built as arrays, they cost more than the permutes).
    // SAFETY: 64 bytes from a 32-word array.
    let positions = unsafe { _mm512_loadu_si512(POSITIONS.as_ptr().cast()) };
    let first = _mm512_mullo_epi16(positions, _mm512_set1_epi16(groups as i16));
    for s in (0..m).step_by(LANES) {
        let k = (m - s).min(LANES);
        // The step's words, `k * groups <= 64`, in two registers of 32.
        let words = k * groups;
        let mask = |w: usize| -> __mmask32 {
            if w >= 32 {
                !0
            } else {
                (1u32 << w) - 1
            }
        };
        let lanes: __mmask16 = if k == LANES { !0 } else { (1 << k) - 1 };
        let from = stored.as_ptr().wrapping_add(groups * s);
        // SAFETY: the masks load the step's `words` words from `from`, within `stored`.
        let (lo, hi) = unsafe {
            (
                _mm512_maskz_loadu_epi16(mask(words), from.cast()),
                _mm512_maskz_loadu_epi16(mask(words.saturating_sub(32)), from.wrapping_add(32).cast()),
            )
        };
        for g in 0..groups {
            // SAFETY: the store's mask keeps the `k` positions from `s`, within group `g`'s
            // place in `out` (asserted above).
            unsafe {
                let index = _mm512_add_epi16(first, _mm512_set1_epi16(g as i16));
                let picked = _mm512_castsi512_si256(_mm512_permutex2var_epi16(lo, index, hi));
                _mm512_mask_storeu_ps(
                    out.as_mut_ptr().add(g * stride + at + s),
                    lanes,
                    _mm512_cvtph_ps(picked),
                );
            }
        }
    }
}
