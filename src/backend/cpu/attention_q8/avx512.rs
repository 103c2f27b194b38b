//! AVX-512 VNNI kernels of [`super`]: sixteen positions' quads in one 64-byte load, one
//! `vpdpbusd` per quad and query head for all sixteen (a group's keys kept in registers for
//! all of a tile's rows), and values widened sixteen dimensions at a time with their
//! weights made in registers ([`values`]).
//!
//! `vpdpbusd` multiplies unsigned by signed bytes: the keys are offset by 128 (one `xor` per
//! load, shared by every head) and each group's sum starts at the query's `-128 * sum`
//! ([`QuantQuery`]'s offsets), which undoes the offset exactly. The integer sums are exact
//! whatever their order, and the float work per group and position is the reference's one
//! multiply and one fused multiply-add, so the bits are the reference's.

use std::arch::x86_64::*;

use super::super::isa::in_fours;
use super::{KeyTile, QuantQuery, LANES, QUAD};

mod values;
pub(super) use values::axpys_kernel;

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
pub(super) fn dots_rows_kernel(
    qs: &[QuantQuery],
    k: KeyTile,
    from: usize,
    mut out: super::ScoreOut,
    partial: &mut [[f32; LANES]],
) {
    assert!(vnni(), "attention_q8: the AVX-512 VNNI kernel on a CPU without it");
    let heads = super::rows_heads(qs, &out, partial);
    let Some(first) = qs.first() else { return };
    let d = super::check(first, k, from, &partial[..heads]).1;
    // Every row shaped as the first, which `check` proved.
    let same = |q: &QuantQuery| {
        q.q.len() == first.q.len()
            && q.scales.len() == first.scales.len()
            && q.offsets.len() == first.offsets.len()
            && q.group == first.group
    };
    assert!(qs.iter().all(same), "attention_q8: rows of different shapes");
    if k.group == ROW_QUADS * QUAD && heads <= 4 && qs.len() > 1 {
        // SAFETY: AVX-512F/BW/VNNI were detected (asserted above); `check` proved the first
        // row's bounds and every row has its shape, `d` wide with `heads` (at most 4) heads;
        // `rows_heads` proved `out` holds `[rows, heads, len]` scores, every row's `seen` at
        // most `len`; the groups are of 8 quads.
        return unsafe { by_count!(heads, dots_rows::<[4, 3, 2]>(qs, k, (from, d), &mut out, partial)) };
    }
    for (r, q) in qs.iter().enumerate() {
        let part = &mut partial[r * heads..(r + 1) * heads];
        in_fours(heads, |g, n| {
            let rows = &mut part[g..g + n];
            // SAFETY: as above (`check` proved the first row's bounds, this one has its
            // shape).
            unsafe { by_count!(n, dots::<[4, 3, 2]>(q, k, (from, d), g, rows)) }
        });
        super::write_scores(part, r, &mut out);
    }
}

/// [`super::lone_scores`]: the shapes checked once for the chunk, then [`lone`].
pub(super) fn lone_scores(
    q: &QuantQuery,
    heads: usize,
    tiles: &[(KeyTile, usize)],
    (scores, len): (&mut [f32], usize),
    scale: f32,
) -> bool {
    if !(1..=4).contains(&heads) {
        return false;
    }
    let part = [[0f32; LANES]; 4];
    let m: usize = tiles.iter().map(|&(_, n)| n).sum();
    let mut d = 0;
    for &(k, n) in tiles {
        // The last 16 positions the tile is read at.
        d = super::check(q, k, n.max(1).next_multiple_of(LANES) - LANES, &part[..heads]).1;
    }
    let ok = m <= len && (heads - 1).checked_mul(len).is_some_and(|x| x + m <= scores.len());
    assert!(ok, "attention_q8: a lone row's scores disagree with its key tiles");
    // SAFETY: AVX-512F/BW/VNNI were detected by the caller (`vnni`); `check` proved every
    // tile's bounds up to its last 16 positions for this row (`heads` heads of `d`), and the
    // scores hold `heads` heads' `m` from `h * len`.
    unsafe { by_count!(heads, lone::<[4, 3, 2]>(q, tiles, d, (scores, len), scale)) };
    true
}

/// A lone row's `H` heads against every tile, 16 positions a [`dots`] call, each score
/// times `scale` stored (masked to the tile's positions) at its place in the chunk. The
/// tiles two on are asked for while one is used.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VNNI; the shapes as `check` proves them for every tile's
/// last 16 positions, `d` wide with `H` heads; `scores` `H` heads' positions `len` apart.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn lone<const H: usize>(
    q: &QuantQuery,
    tiles: &[(KeyTile, usize)],
    d: usize,
    (scores, len): (&mut [f32], usize),
    scale: f32,
) {
    const AHEAD: usize = 2;
    let scale = _mm512_set1_ps(scale);
    let mut part = [[0f32; LANES]; H];
    let mut at = 0;
    for (j, &(k, n)) in tiles.iter().enumerate() {
        let first = if j == 0 { 1 } else { j + AHEAD };
        for (ahead, _) in tiles.iter().take(j + AHEAD + 1).skip(first) {
            super::super::widen::prefetch(ahead.q);
        }
        for from in (0..n).step_by(LANES) {
            // SAFETY: `from + 16 <= padded` (the tile's last 16 positions are checked).
            unsafe { dots::<H>(q, k, (from, d), 0, &mut part) };
            let valid = n - from;
            let mask: __mmask16 = if valid >= LANES { !0 } else { (1u16 << valid) - 1 };
            for (h, acc) in part.iter().enumerate() {
                // SAFETY: the mask stores the positions below `n` from `at + from`, within
                // head `h`'s `m <= len` scores.
                unsafe {
                    let x = _mm512_mul_ps(_mm512_loadu_ps(acc.as_ptr()), scale);
                    _mm512_mask_storeu_ps(scores.as_mut_ptr().add(h * len + at + from), mask, x);
                }
            }
        }
        at += n;
    }
}

/// Quads of a scale group that [`dots_rows`] keeps in registers.
const ROW_QUADS: usize = 8;

/// Every row of `qs` against 16 positions from `from`, group by group of 32 dimensions:
/// the group's keys loaded (and offset) once into eight registers for all the rows, each
/// head's sum the [`dots`] kernel's (exact integers, then the same multiply and fused
/// multiply-add per group in order, through `partial`), so the same bits; the last group's
/// times the scale stored straight into the row's scores. The `H` heads of a row go
/// together, their chains independent.
///
/// # Safety
/// AVX-512F, AVX-512BW and AVX-512VNNI; every row `d` wide with `H` heads, the shapes as
/// `check` proves them for each, `k.group == 32`, `partial` `H` rows per query, `out`
/// `[rows, H, len]` scores with every row's `seen` at most `len`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[allow(clippy::needless_range_loop)] // `h` indexes several arrays in step
unsafe fn dots_rows<const H: usize>(
    qs: &[QuantQuery],
    k: KeyTile,
    (from, d): (usize, usize),
    out: &mut super::ScoreOut,
    partial: &mut [[f32; LANES]],
) {
    let groups = d / k.group;
    let flip = _mm512_set1_epi8(-128);
    let scale_all = _mm512_set1_ps(out.scale);
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
        for (r, (q, o)) in qs.iter().zip(partial.chunks_exact_mut(H)).enumerate() {
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
            let valid = out.seen[r].saturating_sub(out.at).min(LANES);
            let mask: __mmask16 = if valid >= LANES { !0 } else { (1u16 << valid) - 1 };
            for h in 0..H {
                // Four chains (quads by their index mod 4): a head's eight `vpdpbusd` wait
                // on one another two deep, however the compiler orders the heads.
                let mut four_sums = [
                    _mm512_set1_epi32(q.offsets[h * groups + gi]),
                    _mm512_setzero_si512(),
                    _mm512_setzero_si512(),
                    _mm512_setzero_si512(),
                ];
                for qi in 0..ROW_QUADS {
                    four_sums[qi % 4] = _mm512_dpbusd_epi32(four_sums[qi % 4], keys[qi], four!(h, qi));
                }
                let scale = _mm512_mul_ps(ks, _mm512_set1_ps(q.scales[h * groups + gi]));
                let sums = _mm512_cvtepi32_ps(_mm512_add_epi32(
                    _mm512_add_epi32(four_sums[0], four_sums[1]),
                    _mm512_add_epi32(four_sums[2], four_sums[3]),
                ));
                let acc = o[h].as_mut_ptr();
                let prev = match gi {
                    0 => _mm512_setzero_ps(),
                    // SAFETY: `o[h]` holds 16 f32.
                    _ => unsafe { _mm512_loadu_ps(acc) },
                };
                let x = _mm512_fmadd_ps(sums, scale, prev);
                if gi + 1 < groups {
                    // SAFETY: as above.
                    unsafe { _mm512_storeu_ps(acc, x) };
                    continue;
                }
                // SAFETY: the mask stores the scores below `seen[r]` of the 16 from `at`,
                // within the row's head's `len` (`seen[r] <= len`, `out` `[rows, H, len]`).
                unsafe {
                    let dst = out.scores.as_mut_ptr().add((r * H + h) * out.len + out.at);
                    _mm512_mask_storeu_ps(dst, mask, _mm512_mul_ps(x, scale_all));
                }
            }
        }
    }
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
