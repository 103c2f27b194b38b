//! AVX-512 VNNI kernels of [`super`]: sixteen positions' quads in one 64-byte load, one
//! `vpdpbusd` per quad and query head for all sixteen, and values widened sixteen
//! dimensions at a time.
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the keys are offset by 128 (one `xor` per
//! load, shared by every head) and each group's sum starts at the query's `-128 * sum`
//! ([`QuantQuery`]'s offsets), which undoes the offset exactly. The integer sums are exact
//! whatever their order, and the float work per group and position is the reference's one
//! multiply and one fused multiply-add, so the bits are the reference's.

use std::arch::x86_64::*;

use super::super::isa::in_fours;
use super::{KeyTile, QuantQuery, ValueBlock, LANES, QUAD, VLANES};

/// Whether this CPU runs these kernels.
pub(super) fn vnni() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

/// [`super::Dots`] with [`dots`], four heads a call.
pub(super) fn dots_kernel(q: &QuantQuery, k: KeyTile, from: usize, out: &mut [[f32; LANES]]) {
    assert!(vnni(), "attention_q8: the AVX-512 VNNI kernel on a CPU without it");
    let (heads, d) = super::check(q, k, from, out);
    in_fours(heads, |g, n| {
        let rows = &mut out[g..g + n];
        // SAFETY: AVX-512F/BW/VNNI were detected (asserted above); `check` proved the bounds
        // every load relies on.
        unsafe { by_count!(n, dots::<[4, 3, 2]>(q, k, (from, d), g, rows)) }
    });
}

/// [`super::RowDots`] with [`dots_rows`] for several rows where the tile's groups are of 32
/// dimensions, else [`dots_kernel`] row by row (a lone row gains nothing from sharing the
/// keys' registers, and keeps its sums in registers across groups there).
pub(super) fn dots_rows_kernel(qs: &[QuantQuery], k: KeyTile, from: usize, out: &mut [[f32; LANES]]) {
    assert!(vnni(), "attention_q8: the AVX-512 VNNI kernel on a CPU without it");
    let heads = super::rows_heads(qs, out);
    let mut dims = None;
    for (q, o) in qs.iter().zip(out.chunks_exact(heads)) {
        let d = super::check(q, k, from, o).1;
        assert!(dims.is_none_or(|w| w == d), "attention_q8: rows of different widths");
        dims = Some(d);
    }
    let Some(d) = dims else { return };
    if k.group == ROW_QUADS * QUAD && heads <= 4 && qs.len() > 1 {
        // SAFETY: AVX-512F/BW/VNNI were detected (asserted above); `check` proved every row's
        // bounds, all rows `d` wide with `heads` (at most 4) heads, and the groups are of 8
        // quads.
        return unsafe { by_count!(heads, dots_rows::<[4, 3, 2]>(qs, k, (from, d), out)) };
    }
    for (q, o) in qs.iter().zip(out.chunks_exact_mut(heads)) {
        in_fours(heads, |g, n| {
            let rows = &mut o[g..g + n];
            // SAFETY: as above (`check` proved this row's bounds).
            unsafe { by_count!(n, dots::<[4, 3, 2]>(q, k, (from, d), g, rows)) }
        });
    }
}

/// Quads of a scale group that [`dots_rows`] keeps in registers.
const ROW_QUADS: usize = 8;

/// Every row of `qs` against 16 positions from `from`, group by group of 32 dimensions:
/// the group's keys loaded (and offset) once into eight registers for all the rows, each
/// head's sum the [`dots`] kernel's (exact integers, then the same multiply and fused
/// multiply-add per group in order, through `out`), so the same bits. The `H` heads of a
/// row go together, their chains independent.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VNNI; every row `d` wide with `H` heads, the shapes as
/// `check` proves them for each, `k.group == 32`, `out` `H` rows per query.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // `h` indexes several arrays in step
unsafe fn dots_rows<const H: usize>(
    qs: &[QuantQuery],
    k: KeyTile,
    (from, d): (usize, usize),
    out: &mut [[f32; LANES]],
) {
    let groups = d / k.group;
    let flip = _mm512_set1_epi8(-128);
    for gi in 0..groups {
        let mut keys = [_mm512_setzero_si512(); ROW_QUADS];
        for (qi, key) in keys.iter_mut().enumerate() {
            let quad = gi * ROW_QUADS + qi;
            // SAFETY: `quad < d / 4` and `from + 16 <= padded`: 64 bytes in the tile.
            let bytes = unsafe { _mm512_loadu_si512(k.q.as_ptr().add((quad * k.padded + from) * QUAD).cast()) };
            *key = _mm512_xor_si512(bytes, flip);
        }
        // SAFETY: `gi < d / group` and `from + 16 <= padded`: 16 scales in the tile.
        let ks = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(k.scales.as_ptr().add(gi * k.padded + from).cast()) });
        for (q, o) in qs.iter().zip(out.chunks_exact_mut(H)) {
            let base = q.q.as_ptr();
            // A macro rather than a closure, which would not share the target features; a
            // float broadcast, which loads the four bytes straight into every lane.
            macro_rules! four {
                ($h:expr, $qi:expr) => {
                    // SAFETY: `h * d + gi * 32 + 32 <= q.q.len()`: head and group in range.
                    _mm512_castps_si512(_mm512_set1_ps(unsafe {
                        (base.add($h * d + gi * k.group + $qi * QUAD) as *const f32).read_unaligned()
                    }))
                };
            }
            let mut even = [_mm512_setzero_si512(); H];
            let mut odd = [_mm512_setzero_si512(); H];
            for h in 0..H {
                even[h] = _mm512_set1_epi32(q.offsets[h * groups + gi]);
            }
            for qi in (0..ROW_QUADS).step_by(2) {
                for h in 0..H {
                    even[h] = _mm512_dpbusd_epi32(even[h], keys[qi], four!(h, qi));
                    odd[h] = _mm512_dpbusd_epi32(odd[h], keys[qi + 1], four!(h, qi + 1));
                }
            }
            for h in 0..H {
                let scale = _mm512_mul_ps(ks, _mm512_set1_ps(q.scales[h * groups + gi]));
                let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(even[h], odd[h]));
                let acc = o[h].as_mut_ptr();
                let prev = match gi {
                    0 => _mm512_setzero_ps(),
                    // SAFETY: `o[h]` holds 16 f32.
                    _ => unsafe { _mm512_loadu_ps(acc) },
                };
                // SAFETY: as above.
                unsafe { _mm512_storeu_ps(acc, _mm512_fmadd_ps(sums, scale, prev)) };
            }
        }
    }
}

/// [`super::Axpys`] with [`axpys`], four heads a call (the AVX2 kernel where `d` is not a
/// multiple of 16).
pub(super) fn axpys_kernel(
    scores: (&[f32], usize, usize),
    m: usize,
    v: ValueBlock,
    orow: &mut [f32],
    scratch: &mut [f32],
) {
    assert!(vnni(), "attention_q8: the AVX-512 value kernel on a CPU without it");
    // Before the scales are widened, which the AVX2 kernel does itself.
    if !v.q.len().checked_div(m).is_some_and(|d| d.is_multiple_of(2 * VLANES)) {
        return super::axpys_avx2(scores, m, v, orow, scratch);
    }
    let Some((scales, d)) = super::value_scales(scores, m, v, orow, scratch) else {
        return;
    };
    let pairs = d.is_multiple_of(4 * VLANES);
    let split = !v.group.is_multiple_of(2 * VLANES);
    in_fours(orow.len() / d, |g, n| {
        // SAFETY: AVX-512F was detected (asserted above); `d` is a multiple of 16 (of 32 for
        // two registers a head), `split` unless the group is a multiple of 16;
        // `value_scales` proved the bounds.
        unsafe {
            match (pairs, split) {
                (true, false) => by_count!(n, axpys::<[4, 3, 2], 2, false>(scores, (m, d), v, scales, g, orow)),
                (true, true) => by_count!(n, axpys::<[4, 3, 2], 2, true>(scores, (m, d), v, scales, g, orow)),
                (false, false) => by_count!(n, axpys::<[4, 3, 2], 1, false>(scores, (m, d), v, scales, g, orow)),
                (false, true) => by_count!(n, axpys::<[4, 3, 2], 1, true>(scores, (m, d), v, scales, g, orow)),
            }
        }
    });
}

/// Heads `first..first + H` of `q` (`d` dimensions each) against 16 positions from `from`.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VNNI; the shapes as `check` proves them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // `h` indexes several arrays in step
pub(super) unsafe fn dots<const H: usize>(
    q: &QuantQuery,
    k: KeyTile,
    (from, d): (usize, usize),
    first: usize,
    out: &mut [[f32; LANES]],
) {
    let groups = d / k.group;
    let quads = k.group / QUAD;
    let flip = _mm512_set1_epi8(-128);
    let mut acc = [_mm512_setzero_ps(); H];
    // Macros rather than closures, which would not share the function's target features.
    macro_rules! keys {
        ($quad:expr) => {
            _mm512_xor_si512(
                // SAFETY: `quad < d / 4` and `from + 16 <= padded`: 64 bytes in the tile.
                unsafe { _mm512_loadu_si512(k.q.as_ptr().add(($quad * k.padded + from) * QUAD).cast()) },
                flip,
            )
        };
    }
    macro_rules! four {
        ($h:expr, $quad:expr) => {
            // SAFETY: `(first + h) * d + quad * 4 + 4 <= q.q.len()` (head and quad in range).
            _mm512_set1_epi32(unsafe {
                (q.q.as_ptr().add((first + $h) * d + $quad * QUAD) as *const i32).read_unaligned()
            })
        };
    }
    for gi in 0..groups {
        // Two sums per head (even and odd quads) halve the chains' wait on `vpdpbusd`.
        let mut even = [_mm512_setzero_si512(); H];
        let mut odd = [_mm512_setzero_si512(); H];
        for h in 0..H {
            even[h] = _mm512_set1_epi32(q.offsets[(first + h) * groups + gi]);
        }
        let mut qi = 0;
        while qi + 2 <= quads {
            let quad = gi * quads + qi;
            let (ka, kb) = (keys!(quad), keys!(quad + 1));
            for h in 0..H {
                even[h] = _mm512_dpbusd_epi32(even[h], ka, four!(h, quad));
                odd[h] = _mm512_dpbusd_epi32(odd[h], kb, four!(h, quad + 1));
            }
            qi += 2;
        }
        if qi < quads {
            let quad = gi * quads + qi;
            let ka = keys!(quad);
            for h in 0..H {
                even[h] = _mm512_dpbusd_epi32(even[h], ka, four!(h, quad));
            }
        }
        // SAFETY: `gi < d / group` and `from + 16 <= padded`: 16 scales in the tile.
        let ks = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(k.scales.as_ptr().add(gi * k.padded + from).cast()) });
        for h in 0..H {
            let scale = _mm512_mul_ps(ks, _mm512_set1_ps(q.scales[(first + h) * groups + gi]));
            let sums = _mm512_add_epi32(even[h], odd[h]);
            acc[h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), scale, acc[h]);
        }
    }
    for h in 0..H {
        // SAFETY: `out[h]` holds 16 f32.
        unsafe { _mm512_storeu_ps(out[h].as_mut_ptr(), acc[h]) };
    }
}

/// Heads `first..first + H` of [`super::axpys_portable`], `16 * C` dimensions at a time
/// (the reference's 8-dimension chains, two to a register; `C * H` chains at once).
///
/// # Safety
/// AVX-512F; `d` a multiple of `16 * C`; `SPLIT` unless the group is a multiple of 16; the
/// shapes as `value_scales` proves them.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `h` and `i` index several arrays in step
pub(super) unsafe fn axpys<const H: usize, const C: usize, const SPLIT: bool>(
    (sc, len, at): (&[f32], usize, usize),
    (m, d): (usize, usize),
    v: ValueBlock,
    scales: &[f32],
    first: usize,
    orow: &mut [f32],
) {
    const WIDE: usize = 2 * VLANES;
    let groups = d / v.group;
    let mut w = [std::ptr::null::<f32>(); H];
    for h in 0..H {
        w[h] = sc[(first + h) * len + at..][..m].as_ptr();
    }
    for c in (0..d).step_by(C * WIDE) {
        let mut acc = [[_mm512_setzero_ps(); H]; C];
        for s in 0..m {
            // SAFETY: `s < m` and `c + 16 * C <= d`: the bytes lie in the block; the scale
            // indices are below `m * groups`, the scales' length; `s < m`, each head's number
            // of scores (`w[h]` points at `m` of them).
            unsafe {
                let mut ws = [_mm512_setzero_ps(); H];
                for h in 0..H {
                    ws[h] = _mm512_set1_ps(*w[h].add(s));
                }
                for i in 0..C {
                    let at = c + i * WIDE;
                    let q = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                        v.q.as_ptr().add(s * d + at).cast(),
                    )));
                    let sa = *scales.get_unchecked(s * groups + at / v.group);
                    let scale = match SPLIT {
                        // A 16-wide register spans two scale groups where the group is 8.
                        true => {
                            let sb = *scales.get_unchecked(s * groups + (at + VLANES) / v.group);
                            let (a, b) = (
                                _mm512_castps_pd(_mm512_set1_ps(sa)),
                                _mm256_castps_pd(_mm256_set1_ps(sb)),
                            );
                            _mm512_castpd_ps(_mm512_insertf64x4::<1>(a, b))
                        }
                        false => _mm512_set1_ps(sa),
                    };
                    let x = _mm512_mul_ps(q, scale);
                    for h in 0..H {
                        acc[i][h] = _mm512_fmadd_ps(ws[h], x, acc[i][h]);
                    }
                }
            }
        }
        for i in 0..C {
            for h in 0..H {
                let o = &mut orow[(first + h) * d + c + i * WIDE..][..WIDE];
                // SAFETY: `o` holds 16 f32.
                unsafe { _mm512_storeu_ps(o.as_mut_ptr(), _mm512_add_ps(_mm512_loadu_ps(o.as_ptr()), acc[i][h])) };
            }
        }
    }
}
