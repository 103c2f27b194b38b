//! AVX-512 kernels for attention over a block's keys and values, batched as
//! [`super::attention_avx2`]'s are (a run of rows' query vectors share each key or value
//! load) with sixteen lanes a register: the scores of up to [`BATCH`] query vectors against
//! 16 positions, one register each, and the weighted sums of values 32 dimensions at a time
//! for up to [`BATCH`] `/ 2` vectors. The keys and values are f32 or an f16 pool's bits
//! widened in registers. Per vector the fused multiply-adds are the generic loops', in the
//! same order, so the bits are the same (tested against the loops in `attention::tests`).

use std::arch::x86_64::*;

use super::attention::Block;
use super::attention_f16::Avx512;

/// Positions a score register holds.
const LANES: usize = 16;

/// Accumulators a kernel call keeps: twelve of the 32 registers, with room for the loaded
/// keys or values and the broadcasts.
const BATCH: usize = 12;

/// Sixteen values from value `at` of a block starting at `base` (f16 when `HALF`).
///
/// # Safety
/// AVX-512F; the sixteen values lie within the block.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<const HALF: bool>(base: *const u8, at: usize) -> __m512 {
    // SAFETY: the caller's.
    unsafe {
        match HALF {
            true => _mm512_cvtph_ps(_mm256_loadu_si256(base.add(2 * at).cast())),
            false => _mm512_loadu_ps(base.add(4 * at).cast()),
        }
    }
}

/// Whether a transposed key tile of `len` values holds `width` positions from each of the
/// `d` dimensions' rows (`(d - 1) * stride + width` values; checked, so that no overflow
/// passes).
fn tile_holds(len: usize, d: usize, stride: usize, width: usize) -> bool {
    d.checked_sub(1)
        .and_then(|r| r.checked_mul(stride))
        .and_then(|n| n.checked_add(width))
        .is_some_and(|n| len >= n)
}

/// `out[n][s] = sum_i qs[n][i] * kt[i * stride + s]` for 16 positions `s` and every query
/// vector `n` (all `d` wide): one chain of fused multiply-adds over `i` in order per vector
/// and position. Returns `false`, doing nothing, where the shapes do not fit.
pub fn dots(_: Avx512, qs: &[&[f32]], (kt, stride): (Block, usize), out: &mut [[f32; LANES]]) -> bool {
    let d = qs.first().map_or(0, |q| q.len());
    let fits =
        d > 0 && qs.iter().all(|q| q.len() == d) && out.len() >= qs.len() && tile_holds(kt.len(), d, stride, LANES);
    if !fits {
        return false;
    }
    let (base, half) = kt.raw();
    for (qc, oc) in qs.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        // SAFETY: the `Avx512` token proves AVX-512F; `fits` proved the bounds every load
        // relies on, and the chunks hold `qc.len()` vectors and rows.
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
#[target_feature(enable = "avx512f")]
unsafe fn dots_chunk<const HALF: bool>(qs: &[&[f32]], kt: (*const u8, usize), d: usize, out: &mut [[f32; LANES]]) {
    // SAFETY: the caller's.
    unsafe { by_count!(qs.len(), dots_n::<[12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2], HALF>(qs, kt, d, out)) }
}

/// [`dots`] for `N` vectors.
///
/// # Safety
/// AVX-512F; `qs` holds `N` vectors of `d` floats, the block at `kt` at least `(d - 1) *
/// stride + 16` values, `out` `N` rows.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `n` indexes several arrays in step
unsafe fn dots_n<const N: usize, const HALF: bool>(
    qs: &[&[f32]],
    (kt, stride): (*const u8, usize),
    d: usize,
    out: &mut [[f32; LANES]],
) {
    let mut qp = [std::ptr::null::<f32>(); N];
    for n in 0..N {
        qp[n] = qs[n].as_ptr();
    }
    let mut acc = [_mm512_setzero_ps(); N];
    for i in 0..d {
        // SAFETY: `i < d`: 16 keys from `i * stride` are within the block, and `i` within
        // every query vector.
        unsafe {
            let k = load16::<HALF>(kt, i * stride);
            for n in 0..N {
                acc[n] = _mm512_fmadd_ps(_mm512_set1_ps(*qp[n].add(i)), k, acc[n]);
            }
        }
    }
    for n in 0..N {
        // SAFETY: `out[n]` holds 16 f32.
        unsafe { _mm512_storeu_ps(out[n].as_mut_ptr(), acc[n]) };
    }
}

/// For every weight vector `n` (all `m` long): `out[at[n] + i] += sum_{s < m} ws[n][s] *
/// v[s * d + i]` for `i < d`, `d` a multiple of 32; per vector and dimension one chain of
/// fused multiply-adds over the positions in order, added to the output at the end. Returns
/// `false`, doing nothing, where the shapes do not fit.
pub fn axpys(_: Avx512, ws: &[&[f32]], (v, d): (Block, usize), (out, at): (&mut [f32], &[usize])) -> bool {
    let m = ws.first().map_or(0, |w| w.len());
    let fits = d > 0
        && d.is_multiple_of(2 * LANES)
        && ws.iter().all(|w| w.len() == m)
        && at.len() == ws.len()
        && m.checked_mul(d).is_some_and(|n| v.len() >= n)
        && at.iter().all(|&a| a.checked_add(d).is_some_and(|end| end <= out.len()));
    if !fits {
        return false;
    }
    let (base, half) = v.raw();
    for (wc, ac) in ws.chunks(BATCH / 2).zip(at.chunks(BATCH / 2)) {
        let o = out.as_mut_ptr();
        // SAFETY: the `Avx512` token proves AVX-512F; `fits` proved the bounds every load and
        // store relies on.
        unsafe {
            match half {
                true => axpys_chunk::<true>(wc, (m, d), base, (o, ac)),
                false => axpys_chunk::<false>(wc, (m, d), base, (o, ac)),
            }
        }
    }
    true
}

/// [`axpys`] for up to [`BATCH`] `/ 2` vectors.
///
/// # Safety
/// As [`axpys_n`], for `N = ws.len()`.
#[target_feature(enable = "avx512f")]
unsafe fn axpys_chunk<const HALF: bool>(ws: &[&[f32]], md: (usize, usize), v: *const u8, out: (*mut f32, &[usize])) {
    // SAFETY: the caller's.
    unsafe { by_count!(ws.len(), axpys_n::<[6, 5, 4, 3, 2], HALF>(ws, md, v, out)) }
}

/// [`axpys`] for `N` vectors.
///
/// # Safety
/// AVX-512F; `ws` holds `N` vectors of `m` weights, the block at `v` at least `m * d`
/// values, `out + at[n]` `d` floats for every `n < N`, `d` a multiple of 32.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `n` indexes several arrays in step
unsafe fn axpys_n<const N: usize, const HALF: bool>(
    ws: &[&[f32]],
    (m, d): (usize, usize),
    v: *const u8,
    (out, at): (*mut f32, &[usize]),
) {
    let mut wp = [std::ptr::null::<f32>(); N];
    for n in 0..N {
        wp[n] = ws[n].as_ptr();
    }
    for c in (0..d).step_by(2 * LANES) {
        let (mut lo, mut hi) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
        for s in 0..m {
            // SAFETY: `s < m` and `c + 32 <= d`: within the block's `m * d`; `s` within every
            // weight vector.
            unsafe {
                let (a, b) = (load16::<HALF>(v, s * d + c), load16::<HALF>(v, s * d + c + LANES));
                for n in 0..N {
                    let w = _mm512_set1_ps(*wp[n].add(s));
                    lo[n] = _mm512_fmadd_ps(w, a, lo[n]);
                    hi[n] = _mm512_fmadd_ps(w, b, hi[n]);
                }
            }
        }
        for n in 0..N {
            // SAFETY: `at[n] + c + 32 <= at[n] + d`, within `out`.
            unsafe {
                let o = out.add(at[n] + c);
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), lo[n]));
                _mm512_storeu_ps(o.add(LANES), _mm512_add_ps(_mm512_loadu_ps(o.add(LANES)), hi[n]));
            }
        }
    }
}

/// [`axpys`] over a run of whole blocks in one call: for every weight vector `n` (all
/// `vs.len() * bs` long) and block `j` in order, the block's sum `sum_{s < bs} ws[n][j * bs +
/// s] * vs[j][s * d + i]` (one chain from zero, as [`axpys`] makes it) is added to `out[at[n]
/// + i]`, the output kept in registers from the first block to the last: the bits of one
/// [`axpys`] call a block, without a call, a load and a store of the output per block.
/// Returns `false`, doing nothing, where the shapes do not fit.
pub fn axpys_blocks(
    _: Avx512,
    ws: &[&[f32]],
    (vs, bs, d): (&[&[f32]], usize, usize),
    (out, at): (&mut [f32], &[usize]),
) -> bool {
    let fits = bs > 0
        && d > 0
        && d.is_multiple_of(2 * LANES)
        && vs.iter().all(|v| bs.checked_mul(d).is_some_and(|n| v.len() >= n))
        && vs
            .len()
            .checked_mul(bs)
            .is_some_and(|m| ws.iter().all(|w| w.len() == m))
        && at.len() == ws.len()
        && at.iter().all(|&a| a.checked_add(d).is_some_and(|end| end <= out.len()));
    if !fits {
        return false;
    }
    let blocks: Vec<*const f32> = vs.iter().map(|v| v.as_ptr()).collect();
    for (wc, ac) in ws.chunks(BATCH / 2).zip(at.chunks(BATCH / 2)) {
        let o = out.as_mut_ptr();
        // SAFETY: the `Avx512` token proves AVX-512F; `fits` proved the bounds every load and
        // store relies on.
        unsafe { by_count!(wc.len(), axpys_blocks_n::<[6, 5, 4, 3, 2]>(wc, (&blocks, bs, d), (o, ac))) }
    }
    true
}

/// [`axpys_blocks`] for `N` vectors.
///
/// # Safety
/// AVX-512F; `ws` holds `N` vectors of `vs.len() * bs` weights, each block at `vs[j]` at
/// least `bs * d` values, `out + at[n]` `d` floats for every `n < N`, `d` a multiple of 32.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `n` indexes several arrays in step
unsafe fn axpys_blocks_n<const N: usize>(
    ws: &[&[f32]],
    (vs, bs, d): (&[*const f32], usize, usize),
    (out, at): (*mut f32, &[usize]),
) {
    let mut wp = [std::ptr::null::<f32>(); N];
    for n in 0..N {
        wp[n] = ws[n].as_ptr();
    }
    for c in (0..d).step_by(2 * LANES) {
        let (mut olo, mut ohi) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
        for n in 0..N {
            // SAFETY: `at[n] + c + 32 <= at[n] + d`, within `out`.
            unsafe {
                olo[n] = _mm512_loadu_ps(out.add(at[n] + c));
                ohi[n] = _mm512_loadu_ps(out.add(at[n] + c + LANES));
            }
        }
        for (j, &v) in vs.iter().enumerate() {
            let (mut lo, mut hi) = ([_mm512_setzero_ps(); N], [_mm512_setzero_ps(); N]);
            for s in 0..bs {
                // SAFETY: `s < bs` and `c + 32 <= d`: within the block's `bs * d`; `j * bs +
                // s` within every weight vector.
                unsafe {
                    let (a, b) = (
                        _mm512_loadu_ps(v.add(s * d + c)),
                        _mm512_loadu_ps(v.add(s * d + c + LANES)),
                    );
                    for n in 0..N {
                        let w = _mm512_set1_ps(*wp[n].add(j * bs + s));
                        lo[n] = _mm512_fmadd_ps(w, a, lo[n]);
                        hi[n] = _mm512_fmadd_ps(w, b, hi[n]);
                    }
                }
            }
            for n in 0..N {
                olo[n] = _mm512_add_ps(olo[n], lo[n]);
                ohi[n] = _mm512_add_ps(ohi[n], hi[n]);
            }
        }
        for n in 0..N {
            // SAFETY: as the loads above.
            unsafe {
                _mm512_storeu_ps(out.add(at[n] + c), olo[n]);
                _mm512_storeu_ps(out.add(at[n] + c + LANES), ohi[n]);
            }
        }
    }
}

/// [`dots`] over a run of whole blocks of transposed keys (`kts[j][i * stride + p]`, `bs`
/// positions each, a multiple of 16) in one call, each score times `scale` written to
/// `out[n][j * bs + p]`: the bits of a [`dots`] call per 16 positions and a multiplication
/// of its sums. Returns `false`, doing nothing, where the shapes do not fit.
pub fn dots_blocks(
    _: Avx512,
    qs: &[&[f32]],
    (kts, bs, stride): (&[&[f32]], usize, usize),
    (out, scale): (&mut [&mut [f32]], f32),
) -> bool {
    let d = qs.first().map_or(0, |q| q.len());
    let fits = d > 0
        && bs.is_multiple_of(LANES)
        && stride >= bs
        && qs.iter().all(|q| q.len() == d)
        && kts.iter().all(|k| tile_holds(k.len(), d, stride, bs))
        && out.len() == qs.len()
        && kts
            .len()
            .checked_mul(bs)
            .is_some_and(|m| out.iter().all(|o| o.len() >= m));
    if !fits {
        return false;
    }
    let tiles: Vec<*const f32> = kts.iter().map(|k| k.as_ptr()).collect();
    for (qc, oc) in qs.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        // SAFETY: the `Avx512` token proves AVX-512F; `fits` proved the bounds every load and
        // store relies on.
        unsafe {
            by_count!(qc.len(), dots_blocks_n::<[12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2]>(qc, (&tiles, bs, stride, d), (oc, scale)))
        }
    }
    true
}

/// [`dots_blocks`] for `N` vectors.
///
/// # Safety
/// AVX-512F; `qs` holds `N` vectors of `d` floats (`d > 0`), each tile at `kts[j]` at least
/// `(d - 1) * stride + bs` values, `out` `N` rows of at least `kts.len() * bs`, `bs` a
/// multiple of 16.
#[inline]
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `n` indexes several arrays in step
unsafe fn dots_blocks_n<const N: usize>(
    qs: &[&[f32]],
    (kts, bs, stride, d): (&[*const f32], usize, usize, usize),
    (out, scale): (&mut [&mut [f32]], f32),
) {
    let mut qp = [std::ptr::null::<f32>(); N];
    let mut op = [std::ptr::null_mut::<f32>(); N];
    for n in 0..N {
        qp[n] = qs[n].as_ptr();
        op[n] = out[n].as_mut_ptr();
    }
    let scale = _mm512_set1_ps(scale);
    for (j, &kt) in kts.iter().enumerate() {
        for p in (0..bs).step_by(LANES) {
            let mut acc = [_mm512_setzero_ps(); N];
            for i in 0..d {
                // SAFETY: `i < d` and `p + 16 <= bs`: within the tile; `i` within every
                // query vector.
                unsafe {
                    let k = _mm512_loadu_ps(kt.add(i * stride + p));
                    for n in 0..N {
                        acc[n] = _mm512_fmadd_ps(_mm512_set1_ps(*qp[n].add(i)), k, acc[n]);
                    }
                }
            }
            for n in 0..N {
                // SAFETY: `j * bs + p + 16 <= kts.len() * bs`, within `out[n]`.
                unsafe { _mm512_storeu_ps(op[n].add(j * bs + p), _mm512_mul_ps(acc[n], scale)) };
            }
        }
    }
}
