//! AVX2 kernels for attention over a block's keys and values, in f32 (an f32 pool's, or f16
//! or q8_0 blocks converted once for a tile's rows) or as an f16 pool's bits widened in
//! registers (a lone row's tile: converting the block first would be a pass of its own): the
//! scores of query vectors against transposed keys, and the weighted sums of values. The
//! query vectors of a call are a row's heads, or several rows' heads: up to [`BATCH`] of
//! them share each key or value load, so that twelve independent chains of fused
//! multiply-adds keep both FMA units busy (six or eight chains wait on the multiply-add
//! latency). The generic loops (`attention::group_dots_loops`, `attention::group_axpys_loops`)
//! make the same fused multiply-adds in the same order per vector, and widening f16 is
//! exact, so the bits are the same (tested against the loops in `attention::tests`).

use std::arch::x86_64::*;

use super::attention::Block;

/// Output lanes per step: two vectors.
const WIDE: usize = 16;

/// Query vectors one kernel call takes: twelve accumulators, two loaded vectors and a
/// broadcast fill the 16 registers.
const BATCH: usize = 6;

/// Proof that this CPU supports AVX2, FMA and F16C: the kernels below take one, so a tile
/// detects the CPU once instead of every call checking.
#[derive(Debug, Clone, Copy)]
pub struct Avx2Fma(());

impl Avx2Fma {
    /// `Some` on a CPU with AVX2, FMA and F16C.
    pub fn detect() -> Option<Self> {
        let cpu = std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c");
        cpu.then_some(Self(()))
    }
}

/// Eight values from value `at` of a block starting at `base` (f16 when `HALF`).
///
/// # Safety
/// AVX2 and F16C; the eight values lie within the block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn load8<const HALF: bool>(base: *const u8, at: usize) -> __m256 {
    // SAFETY: the caller's.
    unsafe {
        match HALF {
            true => _mm256_cvtph_ps(_mm_loadu_si128(base.add(2 * at).cast())),
            false => _mm256_loadu_ps(base.add(4 * at).cast()),
        }
    }
}

/// `out[n][s] = sum_i qs[n][i] * kt[i * stride + s]` for 16 positions `s` and every query
/// vector `n` (all `d` wide): one chain of fused multiply-adds over `i` in order per vector
/// and position. Returns `false`, doing nothing, where the shapes do not fit.
pub fn dots(_: Avx2Fma, qs: &[&[f32]], (kt, stride): (Block, usize), out: &mut [[f32; WIDE]]) -> bool {
    let d = qs.first().map_or(0, |q| q.len());
    let fits = d > 0
        && qs.iter().all(|q| q.len() == d)
        && out.len() >= qs.len()
        && (d - 1)
            .checked_mul(stride)
            .and_then(|n| n.checked_add(WIDE))
            .is_some_and(|n| kt.len() >= n);
    if !fits {
        return false;
    }
    let (base, half) = kt.raw();
    for (qc, oc) in qs.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        // SAFETY: the `Avx2Fma` token proves AVX2, FMA and F16C; `fits` proved the bounds
        // every load relies on, and the chunks hold `qc.len()` vectors and rows.
        unsafe {
            match half {
                true => dots_chunk::<true>(qc, (base, stride), d, oc),
                false => dots_chunk::<false>(qc, (base, stride), d, oc),
            }
        }
    }
    true
}

/// [`dots`] for up to [`BATCH`] vectors.
///
/// # Safety
/// As [`dots_n`], for `N = qs.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_chunk<const HALF: bool>(qs: &[&[f32]], kt: (*const u8, usize), d: usize, out: &mut [[f32; WIDE]]) {
    // SAFETY: the caller's.
    unsafe { by_count!(qs.len(), dots_n::<[6, 5, 4, 3, 2], HALF>(qs, kt, d, out)) }
}

/// [`dots`] for `N` vectors.
///
/// # Safety
/// AVX2, FMA and F16C; `qs` holds `N` vectors of `d` floats, the block at `kt` at least `(d
/// - 1) * stride + 16` values, `out` `N` rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_n<const N: usize, const HALF: bool>(
    qs: &[&[f32]],
    (kt, stride): (*const u8, usize),
    d: usize,
    out: &mut [[f32; WIDE]],
) {
    let qp: [*const f32; N] = std::array::from_fn(|n| qs[n].as_ptr());
    let (mut lo, mut hi) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
    for i in 0..d {
        // SAFETY: `i < d`: 16 keys from `i * stride` are within the block, and `i` within
        // every query vector.
        unsafe {
            let (a, b) = (load8::<HALF>(kt, i * stride), load8::<HALF>(kt, i * stride + 8));
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
pub fn axpys(_: Avx2Fma, ws: &[&[f32]], (v, d): (Block, usize), (out, at): (&mut [f32], &[usize])) -> bool {
    let m = ws.first().map_or(0, |w| w.len());
    let fits = d > 0
        && d.is_multiple_of(WIDE)
        && ws.iter().all(|w| w.len() == m)
        && at.len() == ws.len()
        && m.checked_mul(d).is_some_and(|n| v.len() >= n)
        && at.iter().all(|&a| a.checked_add(d).is_some_and(|end| end <= out.len()));
    if !fits {
        return false;
    }
    let (base, half) = v.raw();
    for (wc, ac) in ws.chunks(BATCH).zip(at.chunks(BATCH)) {
        let o = out.as_mut_ptr();
        // SAFETY: the `Avx2Fma` token proves AVX2, FMA and F16C; `fits` proved the bounds
        // every load and store relies on.
        unsafe {
            match half {
                true => axpys_chunk::<true>(wc, (m, d), base, (o, ac)),
                false => axpys_chunk::<false>(wc, (m, d), base, (o, ac)),
            }
        }
    }
    true
}

/// [`axpys`] for up to [`BATCH`] vectors.
///
/// # Safety
/// As [`axpys_n`], for `N = ws.len()`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpys_chunk<const HALF: bool>(ws: &[&[f32]], md: (usize, usize), v: *const u8, out: (*mut f32, &[usize])) {
    // SAFETY: the caller's.
    unsafe { by_count!(ws.len(), axpys_n::<[6, 5, 4, 3, 2], HALF>(ws, md, v, out)) }
}

/// [`axpys`] for `N` vectors.
///
/// # Safety
/// AVX2, FMA and F16C; `ws` holds `N` vectors of `m` weights, the block at `v` at least `m *
/// d` values, `out + at[n]` `d` floats for every `n < N`, `d` a multiple of 16.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpys_n<const N: usize, const HALF: bool>(
    ws: &[&[f32]],
    (m, d): (usize, usize),
    v: *const u8,
    (out, at): (*mut f32, &[usize]),
) {
    let wp: [*const f32; N] = std::array::from_fn(|n| ws[n].as_ptr());
    for c in (0..d).step_by(WIDE) {
        let (mut lo, mut hi) = ([_mm256_setzero_ps(); N], [_mm256_setzero_ps(); N]);
        for s in 0..m {
            // SAFETY: `s < m` and `c + 16 <= d`: within the block's `m * d`; `s` within every
            // weight vector.
            unsafe {
                let (a, b) = (load8::<HALF>(v, s * d + c), load8::<HALF>(v, s * d + c + 8));
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
