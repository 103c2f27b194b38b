//! AVX2 kernel for the weighted sum of a block of values already in f32 (an f32 pool's, or
//! an f16 or q8_0 block converted once for a tile's rows): the generic loops of
//! `attention::group_axpys_loops` compile to bounds checks and reloads around every multiply-add,
//! this one keeps the weights' pointers and the sums in registers. It makes the same fused
//! multiply-adds in the same order, so the bits are the same (tested against the generic
//! loops in `attention::tests`).

use std::arch::x86_64::*;

/// Output lanes per step: two vectors.
const WIDE: usize = 16;

/// For the `heads` (2 to 4) query heads of a group: `orow[g * d + i] += sum_{s < m}
/// scores[g * len + at + s] * v[s * d + i]`, `d = orow.len() / heads` a multiple of 16; per
/// head and 16 dimensions one chain of fused multiply-adds over the positions in order,
/// added to the output at the end. Returns `false`, doing nothing, where the CPU lacks AVX2
/// or FMA or the shapes do not fit.
pub fn group_axpys(
    heads: usize,
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: &[f32],
    orow: &mut [f32],
) -> bool {
    let d = orow.len() / heads.max(1);
    let fits = (2..=4).contains(&heads)
        && d > 0
        && d.is_multiple_of(WIDE)
        && orow.len() == heads * d
        && v.len() >= m * d
        && m <= len
        && scores.len() >= (heads - 1) * len + at + m
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma");
    if !fits {
        return false;
    }
    let w = (&scores[at..], len);
    // SAFETY: AVX2 and FMA detected; `fits` proved the bounds every load and store relies on.
    unsafe {
        match heads {
            2 => axpys::<2>(w, (m, d), v, orow),
            3 => axpys::<3>(w, (m, d), v, orow),
            _ => axpys::<4>(w, (m, d), v, orow),
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
