//! AVX-512 attention kernels that read an f16 pool's keys and values in place: each vector
//! of 16 halves is widened in a register and used at once, instead of converting a whole
//! block into a scratch buffer first (at long contexts the cache is read once per token and
//! that extra pass was a fifth of the decode step).
//!
//! They do exactly what [`super::paged`]'s generic loops do on the converted block (the same
//! fused multiply-adds in the same order, and f16 -> f32 is exact), so the results are
//! bit-identical; the tests there compare the two paths.

use std::arch::x86_64::*;

/// Positions (lanes) per vector.
const LANES: usize = 16;

/// Proof that this CPU supports AVX-512F: the kernels below take one, so they are safe to
/// call.
#[derive(Debug, Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    /// `Some` on a CPU with AVX-512F.
    pub fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512f").then_some(Self(()))
    }
}

/// Scores of 16 positions for the `G` query heads of a group: `out[g][s] = sum_i
/// qr[g * d + i] * kt[i * stride + s]`, `kt` the block's transposed keys as f16 bits.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn group_dots<const G: usize>(qr: &[f32], kt: &[u16], stride: usize, out: &mut [[f32; LANES]]) {
    let d = qr.len() / G;
    assert!(
        d > 0 && kt.len() >= (d - 1) * stride + LANES && out.len() >= G,
        "group_dots: short slices"
    );
    let mut acc = [_mm512_setzero_ps(); G];
    for i in 0..d {
        // SAFETY: `i * stride + 16 <= kt.len()` (checked above).
        let k = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(kt.as_ptr().add(i * stride) as *const __m256i) });
        for g in 0..G {
            acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(qr[g * d + i]), k, acc[g]);
        }
    }
    for g in 0..G {
        // SAFETY: `out[g]` holds 16 f32.
        unsafe { _mm512_storeu_ps(out[g].as_mut_ptr(), acc[g]) };
    }
}

/// `orow[g * d..][..d] += sum_s scores[g * len + at + s] * v[s * d..][..d]` for `s < m`,
/// `v` the block's values as f16 bits; `d` a multiple of 16.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn group_axpys<const G: usize>(
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: &[u16],
    orow: &mut [f32],
) {
    let d = orow.len() / G;
    assert!(d.is_multiple_of(LANES) && v.len() >= m * d, "group_axpys: short slices");
    assert!(
        m == 0 || (G - 1) * len + at + m <= scores.len(),
        "group_axpys: short scores"
    );
    for c in 0..d / LANES {
        let mut acc = [_mm512_setzero_ps(); G];
        for s in 0..m {
            // SAFETY: `s * d + c * 16 + 16 <= m * d <= v.len()` (checked above).
            let vr =
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(v.as_ptr().add(s * d + c * LANES) as *const __m256i) });
            for g in 0..G {
                acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(scores[g * len + at + s]), vr, acc[g]);
            }
        }
        for g in 0..G {
            let o = &mut orow[g * d + c * LANES..g * d + (c + 1) * LANES];
            // SAFETY: `o` holds 16 f32.
            unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(o.as_ptr()), acc[g])) };
        }
    }
}

/// [`group_dots`] for a group of 2 to 4 query heads (groups of 1 sum in another order).
pub fn dots(_: Avx512, group: usize, qr: &[f32], kt: &[u16], stride: usize, out: &mut [[f32; LANES]]) {
    match group {
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        2 => unsafe { group_dots::<2>(qr, kt, stride, out) },
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        3 => unsafe { group_dots::<3>(qr, kt, stride, out) },
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        _ => unsafe { group_dots::<4>(qr, kt, stride, out) },
    }
}

/// [`group_axpys`] for a group of 2 to 4 query heads.
pub fn axpys(_: Avx512, group: usize, scores: (&[f32], usize, usize), m: usize, v: &[u16], orow: &mut [f32]) {
    match group {
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        2 => unsafe { group_axpys::<2>(scores, m, v, orow) },
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        3 => unsafe { group_axpys::<3>(scores, m, v, orow) },
        // SAFETY: the `Avx512` token proves the CPU supports AVX-512F.
        _ => unsafe { group_axpys::<4>(scores, m, v, orow) },
    }
}
