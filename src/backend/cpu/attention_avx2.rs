//! AVX2 kernels for attention over blocks already in f32 (an f32 pool's, or f16 or q8_0
//! blocks converted once for a tile's rows): the scores of query vectors against transposed
//! keys, and the weighted sums of values. The query vectors of a call are a row's heads, or
//! several rows' heads: up to [`BATCH`] of them share each key or value load, so that twelve
//! independent chains of fused multiply-adds keep both FMA units busy (six or eight chains
//! wait on the multiply-add latency). The generic loops (`attention::group_dots_loops`,
//! `attention::group_axpys_loops`) make the same fused multiply-adds in the same order per
//! vector, so the bits are the same (tested against the loops in `attention::tests`).

use std::arch::x86_64::*;

/// Output lanes per step: two vectors.
const WIDE: usize = 16;

/// Query vectors one kernel call takes: twelve accumulators, two loaded vectors and a
/// broadcast fill the 16 registers.
const BATCH: usize = 6;

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

/// `out[n][s] = sum_i qs[n][i] * kt[i * stride + s]` for 16 positions `s` and every query
/// vector `n` (all `d` wide): one chain of fused multiply-adds over `i` in order per vector
/// and position. Returns `false`, doing nothing, where the shapes do not fit.
pub fn dots(_: Avx2Fma, qs: &[&[f32]], (kt, stride): (&[f32], usize), out: &mut [[f32; WIDE]]) -> bool {
    let d = qs.first().map_or(0, |q| q.len());
    let fits = d > 0 && qs.iter().all(|q| q.len() == d) && out.len() >= qs.len() && kt.len() >= (d - 1) * stride + WIDE;
    if !fits {
        return false;
    }
    for (qc, oc) in qs.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        // SAFETY: the `Avx2Fma` token proves AVX2 and FMA; `fits` proved the bounds every
        // load relies on, and the chunks hold `qc.len()` vectors and rows.
        unsafe {
            match qc.len() {
                6 => dots_n::<6>(qc, (kt, stride), d, oc),
                5 => dots_n::<5>(qc, (kt, stride), d, oc),
                4 => dots_n::<4>(qc, (kt, stride), d, oc),
                3 => dots_n::<3>(qc, (kt, stride), d, oc),
                2 => dots_n::<2>(qc, (kt, stride), d, oc),
                _ => dots_n::<1>(qc, (kt, stride), d, oc),
            }
        }
    }
    true
}

/// [`dots`] for `N` vectors.
///
/// # Safety
/// AVX2 and FMA; `qs` holds `N` vectors of `d` floats, `kt` at least `(d - 1) * stride +
/// 16`, `out` `N` rows.
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_n<const N: usize>(qs: &[&[f32]], (kt, stride): (&[f32], usize), d: usize, out: &mut [[f32; WIDE]]) {
    let qp: [*const f32; N] = std::array::from_fn(|n| qs[n].as_ptr());
    let kp = kt.as_ptr();
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
    for i in 0..d {
        // SAFETY: `i < d`: 16 keys from `i * stride` are within `kt`, and `i` within every
        // query vector.
        unsafe {
            let k = kp.add(i * stride);
            let (a, b) = (_mm256_loadu_ps(k), _mm256_loadu_ps(k.add(8)));
            for n in 0..N {
                let q = _mm256_broadcast_ss(&*qp[n].add(i));
                lo[n] = _mm256_fmadd_ps(q, a, lo[n]);
                hi[n] = _mm256_fmadd_ps(q, b, hi[n]);
            }
        }
    }
    for n in 0..N {
        // SAFETY: `out[n]` holds 16 f32.
        unsafe {
            _mm256_storeu_ps(out[n].as_mut_ptr(), lo[n]);
            _mm256_storeu_ps(out[n].as_mut_ptr().add(8), hi[n]);
        }
    }
}

/// For every weight vector `n` (all `m` long): `out[at[n] + i] += sum_{s < m} ws[n][s] *
/// v[s * d + i]` for `i < d`, `d` a multiple of 16; per vector and 16 dimensions one chain
/// of fused multiply-adds over the positions in order, added to the output at the end.
/// Returns `false`, doing nothing, where the shapes do not fit.
pub fn axpys(_: Avx2Fma, ws: &[&[f32]], (v, d): (&[f32], usize), (out, at): (&mut [f32], &[usize])) -> bool {
    let m = ws.first().map_or(0, |w| w.len());
    let fits = d > 0
        && d.is_multiple_of(WIDE)
        && ws.iter().all(|w| w.len() == m)
        && at.len() == ws.len()
        && v.len() >= m * d
        && at.iter().all(|&a| a.checked_add(d).is_some_and(|end| end <= out.len()));
    if !fits {
        return false;
    }
    for (wc, ac) in ws.chunks(BATCH).zip(at.chunks(BATCH)) {
        let o = out.as_mut_ptr();
        // SAFETY: the `Avx2Fma` token proves AVX2 and FMA; `fits` proved the bounds every
        // load and store relies on.
        unsafe {
            match wc.len() {
                6 => axpys_n::<6>(wc, (m, d), v, (o, ac)),
                5 => axpys_n::<5>(wc, (m, d), v, (o, ac)),
                4 => axpys_n::<4>(wc, (m, d), v, (o, ac)),
                3 => axpys_n::<3>(wc, (m, d), v, (o, ac)),
                2 => axpys_n::<2>(wc, (m, d), v, (o, ac)),
                _ => axpys_n::<1>(wc, (m, d), v, (o, ac)),
            }
        }
    }
    true
}

/// [`axpys`] for `N` vectors.
///
/// # Safety
/// AVX2 and FMA; `ws` holds `N` vectors of `m` weights, `v` at least `m * d` values, `out +
/// at[n]` `d` floats for every `n < N`, `d` a multiple of 16.
#[target_feature(enable = "avx2,fma")]
unsafe fn axpys_n<const N: usize>(ws: &[&[f32]], (m, d): (usize, usize), v: &[f32], (out, at): (*mut f32, &[usize])) {
    let wp: [*const f32; N] = std::array::from_fn(|n| ws[n].as_ptr());
    let vp = v.as_ptr();
    for c in (0..d).step_by(WIDE) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        for s in 0..m {
            // SAFETY: `s < m` and `c + 16 <= d`: within `v`'s `m * d`; `s` within every
            // weight vector.
            unsafe {
                let x = vp.add(s * d + c);
                let (a, b) = (_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)));
                for n in 0..N {
                    let w = _mm256_broadcast_ss(&*wp[n].add(s));
                    lo[n] = _mm256_fmadd_ps(w, a, lo[n]);
                    hi[n] = _mm256_fmadd_ps(w, b, hi[n]);
                }
            }
        }
        for n in 0..N {
            // SAFETY: `at[n] + c + 16 <= at[n] + d`, within `out`.
            unsafe {
                let o = out.add(at[n] + c);
                _mm256_storeu_ps(o, _mm256_add_ps(_mm256_loadu_ps(o), lo[n]));
                _mm256_storeu_ps(o.add(8), _mm256_add_ps(_mm256_loadu_ps(o.add(8)), hi[n]));
            }
        }
    }
}
