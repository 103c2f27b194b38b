//! AVX2 kernels for attention over blocks already in f32 (an f32 pool's, or f16 or q8_0
//! blocks converted once for a tile's rows): the scores of a group's query heads against
//! transposed keys, and the weighted sum of values. The generic loops
//! (`attention::group_dots_loops`, `attention::group_axpys_loops`) compile to bounds checks
//! and reloads around every multiply-add; these keep pointers and sums in registers. They
//! make the same fused multiply-adds in the same order, so the bits are the same (tested
//! against the loops in `attention::tests`).

use std::arch::x86_64::*;

/// Output lanes per step: two vectors.
const WIDE: usize = 16;

/// Proof that this CPU supports AVX2 and FMA: the kernels below take one, so a tile
/// detects the CPU once instead of every call checking.
#[derive(Debug, Clone, Copy)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` on a CPU with AVX2 and FMA.
    pub fn detect() -> Option<Self> {
        (std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")).then_some(Self(()))
    }
}

/// Whether `heads` is a group size the kernels take (2 to 4), and which.
fn group_of(heads: usize) -> Option<usize> {
    (2..=4).contains(&heads).then_some(heads)
}

/// For the `heads` (2 to 4) query heads of a group, `qr: [heads * d]`: `out[g][s] = sum_i
/// qr[g * d + i] * kt[i * stride + s]` for 16 positions `s`, one chain of fused
/// multiply-adds over `i` in order per head and position. Returns `false`, doing nothing,
/// where the shapes do not fit.
pub fn group_dots(
    _: Avx2Fma,
    heads: usize,
    qr: &[f32],
    (kt, stride): (&[f32], usize),
    out: &mut [[f32; WIDE]],
) -> bool {
    let d = qr.len() / heads.max(1);
    let fits = d > 0 && qr.len() == heads * d && out.len() >= heads && kt.len() >= (d - 1) * stride + WIDE;
    if !fits {
        return false;
    }
    // SAFETY: the `Avx2Fma` token proves AVX2 and FMA; `fits` proved the bounds every load
    // relies on.
    unsafe {
        match group_of(heads) {
            Some(2) => dots::<2>(qr, (kt, stride), d, out),
            Some(3) => dots::<3>(qr, (kt, stride), d, out),
            Some(_) => dots::<4>(qr, (kt, stride), d, out),
            None => return false,
        }
    }
    true
}

/// [`group_dots`] for `G` heads.
///
/// # Safety
/// AVX2 and FMA; `qr` holds `G * d` floats, `kt` at least `(d - 1) * stride + 16`, `out` `G`
/// rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn dots<const G: usize>(qr: &[f32], (kt, stride): (&[f32], usize), d: usize, out: &mut [[f32; WIDE]]) {
    let (qp, kp) = (qr.as_ptr(), kt.as_ptr());
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); G], [_mm256_setzero_ps(); G]);
    for i in 0..d {
        // SAFETY: `i < d`: 16 keys from `i * stride` are within `kt`; `g * d + i < G * d`.
        unsafe {
            let k = kp.add(i * stride);
            let (a, b) = (_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8)));
            for g in 0..G {
                let q = _mm256_broadcast_ss(&*qp.add(g * d + i));
                lo[g] = _mm256_fmadd_ps(q, a, lo[g]);
                hi[g] = _mm256_fmadd_ps(q, b, hi[g]);
            }
        }
    }
    for g in 0..G {
        // SAFETY: `out[g]` holds 16 f32.
        unsafe {
            _mm256_storeu_ps(out[g].as_mut_ptr(), lo[g]);
            _mm256_storeu_ps(out[g].as_mut_ptr().add(8), hi[g]);
        }
    }
}

/// For the `heads` (2 to 4) query heads of a group: `orow[g * d + i] += sum_{s < m}
/// scores[g * len + at + s] * v[s * d + i]`, `d = orow.len() / heads` a multiple of 16; per
/// head and 16 dimensions one chain of fused multiply-adds over the positions in order,
/// added to the output at the end. Returns `false`, doing nothing, where the shapes do not
/// fit.
pub fn group_axpys(
    _: Avx2Fma,
    heads: usize,
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: &[f32],
    orow: &mut [f32],
) -> bool {
    let d = orow.len() / heads.max(1);
    let fits = d > 0
        && d.is_multiple_of(WIDE)
        && orow.len() == heads * d
        && v.len() >= m * d
        && m <= len
        && at <= scores.len()
        && scores.len() >= heads.saturating_sub(1) * len + at + m;
    if !fits {
        return false;
    }
    let w = (&scores[at..], len);
    // SAFETY: the `Avx2Fma` token proves AVX2 and FMA; `fits` proved the bounds every load
    // and store relies on.
    unsafe {
        match group_of(heads) {
            Some(2) => axpys::<2>(w, (m, d), v, orow),
            Some(3) => axpys::<3>(w, (m, d), v, orow),
            Some(_) => axpys::<4>(w, (m, d), v, orow),
            None => return false,
        }
    }
    true
}

/// [`group_axpys`] for `G` heads.
///
/// # Safety
/// AVX2 and FMA; `w` holds `(G - 1) * stride + m` weights, `v` at least `m * d` values,
/// `orow` `G * d` floats, `d` a multiple of 16.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpys<const G: usize>((w, stride): (&[f32], usize), (m, d): (usize, usize), v: &[f32], orow: &mut [f32]) {
    let (wp, vp, op) = (w.as_ptr(), v.as_ptr(), orow.as_mut_ptr());
    for c in (0..d).step_by(WIDE) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); G], [_mm256_setzero_ps(); G]);
        for s in 0..m {
            // SAFETY: `s < m` and `c + 16 <= d`: within `v`'s `m * d`; `g * stride + s` is
            // within `w`'s `(G - 1) * stride + m`.
            unsafe {
                let x = vp.add(s * d + c);
                let (a, b) = (_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)));
                for g in 0..G {
                    let wg = _mm256_broadcast_ss(&*wp.add(g * stride + s));
                    lo[g] = _mm256_fmadd_ps(wg, a, lo[g]);
                    hi[g] = _mm256_fmadd_ps(wg, b, hi[g]);
                }
            }
        }
        for g in 0..G {
            // SAFETY: `g * d + c + 16 <= G * d`, `orow`'s length.
            unsafe {
                let o = op.add(g * d + c);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), lo[g]));
                _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), hi[g]));
            }
        }
    }
}
