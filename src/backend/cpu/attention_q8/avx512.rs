//! AVX-512 VNNI kernels of [`super`]: sixteen positions' quads in one 64-byte load, one
//! `vpdpbusd` per quad and query head for all sixteen (a group's keys kept in registers for
//! all of a tile's rows), and values widened sixteen dimensions at a time with their
//! weights made in registers.
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
    // Before the weights are made, which the AVX2 kernel does itself.
    if !v.q.len().checked_div(m).is_some_and(|d| d.is_multiple_of(2 * VLANES)) {
        return super::axpys_avx2(scores, m, v, orow, scratch);
    }
    let Some((d, heads)) = super::check_values(scores, m, v, orow, scratch.len()) else {
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
        match super::value_weights_fast(scores, m, v, orow, scratch) {
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

/// [`super::row_weights`] in registers for `m <= 16` positions and 1, 2 or 4 groups: the
/// scales (f16 bits `[m, groups]`) widened and split by group with permutes, each head's
/// scores times them rounded as [`super::bf16_weight`] rounds, in integer operations;
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
/// (`C * H` chains at once).
///
/// # Safety
/// AVX-512F; `d` a multiple of `16 * C`; `SPLIT` unless the group is a multiple of 16; the
/// shapes as `value_weights` proves them, `weights` its output.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)] // `h` and `i` index several arrays in step
pub(super) unsafe fn axpys<const H: usize, const C: usize, const SPLIT: bool>(
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
