//! `q4k`: 4-bit weights with Q4_K's structure (super-blocks of up to 256 columns made of
//! sub-blocks of 32, each sub-block with its own scale and minimum, quantized against the
//! super-block's f16 `d` and `dmin`), repacked 16 rows at a time.
//!
//! A weight is `d * sc * q - dmin * mn` with `q` in `[0, 15]` and 8-bit `sc`, `mn` (Q4_K
//! keeps 6 of those bits; 8 cost 0.125 bit per weight more and are more exact).
//!
//! Layout of one group of 16 rows and one sub-block of 32 columns: 4 lines of 64 bytes,
//! line `j` holding for row `i` at bytes `4i..4i + 4` the weights of columns `8j + t` (low
//! nibble) and `8j + 4 + t` (high nibble), `t` in `0..4`. Per group and super-block, `meta`
//! holds `d[16]`, `dmin[16]` (f16), then per sub-block `sc[16]` and `mn[16]` (u8).

// The kernels index several arrays in lockstep by token and row.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::activation::BLOCK;
use super::{Acts, Line, GROUP};

const LINES: usize = GROUP * BLOCK / 2 / 64;

/// The most a 16-bit lane of the AVX2 kernels sums over one block: `vpmaddubsw` puts two
/// products of a level (at most 15) and an activation (at most 128 in magnitude) in a
/// lane, and a lane adds a low and a high nibble's for each of the block's lines. Within
/// `i16`, so the lanes add exactly in 16 bits and widen once per block.
const LANE_SUM: i32 = 2 * 2 * LINES as i32 * 15 * 128;
const _: () = assert!(LANE_SUM <= i16::MAX as i32);

/// Sub-blocks per super-block for rows of `cols` columns: 8 (256 columns) where the row
/// allows it, else the largest of 4, 2, 1 that divides it.
pub fn sub_blocks(cols: usize) -> usize {
    let blocks = cols / BLOCK;
    [8, 4, 2, 1]
        .into_iter()
        .find(|s| blocks.is_multiple_of(*s))
        .unwrap_or(1)
}

/// Meta bytes per group and super-block.
pub fn meta_len(sub: usize) -> usize {
    4 * GROUP + 2 * GROUP * sub
}

/// Scale and minimum (as a non-negative offset) of one sub-block, refined by least squares.
/// The levels are computed for the whole sub-block first (the divisions vectorize), then
/// summed in order: the same numbers as computing each level inside the sum.
fn fit_sub_block(w: &[f32]) -> (f32, f32) {
    let (lo, hi) = w.iter().fold((0f32, 0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if hi <= lo {
        return (0.0, -lo);
    }
    let (mut scale, mut min) = ((hi - lo) / 15.0, lo);
    let mut levels = [0f32; BLOCK];
    for _ in 0..2 {
        // Fix the levels, then solve for the (scale, min) minimising the squared error.
        for (q, &v) in levels.iter_mut().zip(w) {
            *q = super::round_clamped((v - min) / scale, 0.0, 15.0);
        }
        let (mut n, mut sq, mut sqq, mut sw, mut sqw) = (0f32, 0f32, 0f32, 0f32, 0f32);
        for (&q, &v) in levels.iter().zip(w) {
            n += 1.0;
            sq += q;
            sqq += q * q;
            sw += v;
            sqw += q * v;
        }
        let det = n * sqq - sq * sq;
        if det <= 0.0 {
            break;
        }
        let s = (n * sqw - sq * sw) / det;
        let m = (sw - s * sq) / n;
        if s.is_nan() || s <= 0.0 || m > 0.0 {
            break;
        }
        (scale, min) = (s, m);
    }
    (scale, -min)
}

/// The 4-bit levels of one sub-block (`chunk`, 32 values) for `step` and `off`, packed into
/// its 4 lines at row `i` (nibble layout of the module doc).
fn put_levels(chunk: &[f32], step: f32, off: f32, i: usize, tile: &mut [Line]) {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: its low mantissa byte holds the integer.
    let mut q = [0u8; BLOCK];
    if step > 0.0 {
        for (q, &v) in q.iter_mut().zip(chunk) {
            // A level in [0, 15] (NaN stays NaN and gives 0 below, as `as u8` does).
            let x = super::round_clamped((v + off) / step, 0.0, 15.0);
            *q = if x.is_nan() { 0 } else { (x + MAGIC).to_bits() as u8 };
        }
    }
    put_nibbles(&q, i, tile);
}

/// Writes the 32 levels `q` (each in `[0, 15]`) of one sub-block into its 4 lines at row
/// `i`: line `j` gets levels `8j + t` in the low and `8j + 4 + t` in the high nibble of
/// byte `4i + t`.
fn put_nibbles(q: &[u8; BLOCK], i: usize, tile: &mut [Line]) {
    for (j, line) in tile.iter_mut().enumerate().take(BLOCK / 8) {
        for t in 0..4 {
            line.0[i * 4 + t] |= q[8 * j + t] | (q[8 * j + 4 + t] << 4);
        }
    }
}

/// One group of 16 rows (`w: [16, cols]`) quantized into `lines` (`cols / 32 * 4`) and
/// `meta` (`cols / 32 / sub` super-blocks of [`meta_len`] bytes).
pub fn pack_group(w: &[f32], cols: usize, lines: &mut [Line], meta: &mut [u8]) {
    pack_group_with(w, cols, lines, meta, fit_sub_block, put_levels);
}

/// Fits one sub-block's scale and minimum.
type Fit = fn(&[f32]) -> (f32, f32);
/// Writes one sub-block's levels (values, step, offset, row, tile).
type PutLevels = fn(&[f32], f32, f32, usize, &mut [Line]);

/// [`pack_group`] with its two inner steps given.
fn pack_group_with(w: &[f32], cols: usize, lines: &mut [Line], meta: &mut [u8], fit: Fit, put: PutLevels) {
    let sub = sub_blocks(cols);
    let mlen = meta_len(sub);
    let mut fits = Vec::with_capacity(sub);
    for s in 0..cols / BLOCK / sub {
        let m = &mut meta[s * mlen..(s + 1) * mlen];
        for i in 0..GROUP {
            let row = &w[i * cols + s * sub * BLOCK..i * cols + (s + 1) * sub * BLOCK];
            fits.clear();
            fits.extend(row.chunks(BLOCK).map(fit));
            let dmax = fits.iter().fold(0f32, |a, f| a.max(f.0));
            let mmax = fits.iter().fold(0f32, |a, f| a.max(f.1));
            let d = f16::from_f32(dmax / 255.0);
            let dmin = f16::from_f32(mmax / 255.0);
            m[2 * i..2 * i + 2].copy_from_slice(&d.to_bits().to_le_bytes());
            m[2 * GROUP + 2 * i..2 * GROUP + 2 * i + 2].copy_from_slice(&dmin.to_bits().to_le_bytes());
            for (j, (&(scale, min), chunk)) in fits.iter().zip(row.chunks(BLOCK)).enumerate() {
                let ratio = |v: f32, unit: f16| if unit.to_f32() > 0.0 { v / unit.to_f32() } else { 0.0 };
                let sc = super::round_clamped(ratio(scale, d), 0.0, 255.0) as u8;
                let mn = super::round_clamped(ratio(min, dmin), 0.0, 255.0) as u8;
                m[4 * GROUP + j * 2 * GROUP + i] = sc;
                m[4 * GROUP + j * 2 * GROUP + GROUP + i] = mn;
                let (step, off) = (d.to_f32() * sc as f32, dmin.to_f32() * mn as f32);
                let tile = &mut lines[(s * sub + j) * LINES..(s * sub + j + 1) * LINES];
                put(chunk, step, off, i, tile);
            }
        }
    }
}

/// Slow, obviously correct twin of [`pack_group`]: the same walk over super-blocks with
/// the scalar level loop (the fit differs from the one before vectorizing only in keeping
/// the levels in an array between computing and summing them, in the same order).
#[cfg(test)]
pub fn pack_group_reference(w: &[f32], cols: usize, lines: &mut [Line], meta: &mut [u8]) {
    pack_group_with(w, cols, lines, meta, fit_sub_block, put_levels_reference);
}

/// Slow, obviously correct twin of [`put_levels`].
#[cfg(test)]
fn put_levels_reference(chunk: &[f32], step: f32, off: f32, i: usize, tile: &mut [Line]) {
    for (k, &v) in chunk.iter().enumerate() {
        let q = if step > 0.0 {
            super::round_clamped((v + off) / step, 0.0, 15.0) as u8
        } else {
            0
        };
        let (line, t, high) = (k / 8, k % 4, k % 8 >= 4);
        tile[line].0[i * 4 + t] |= if high { q << 4 } else { q };
    }
}

/// Bytes of one llama.cpp Q4_K block (256 weights): f16 `d`, f16 `dmin`, 12 bytes of
/// packed 6-bit scales and minimums, 128 bytes of 4-bit levels.
pub const GGML_BLOCK: usize = 144;

/// The 6-bit `(scale, min)` of sub-block `j` from a Q4_K block's 12 packed bytes (as
/// llama.cpp stores them: sub-blocks 0-3 in the low 6 bits of bytes 0-7, 4-7 split).
fn ggml_scale_min(packed: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 15) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

/// One group of 16 rows stored as llama.cpp Q4_K blocks (`blocks`: each row's `cols / 256`
/// blocks of [`GGML_BLOCK`] bytes, row after row; `cols` a multiple of 256) repacked with
/// their numbers kept: `d`, `dmin`, the 6-bit scales and minimums and the 4-bit levels are
/// copied, so every weight is the value llama.cpp computes, `d * sc * q - dmin * m`.
pub fn pack_group_blocks(blocks: &[u8], cols: usize, lines: &mut [Line], meta: &mut [u8]) {
    const SUB: usize = 8;
    let (nb, mlen) = (cols / (SUB * BLOCK), meta_len(SUB));
    for s in 0..nb {
        let m = &mut meta[s * mlen..(s + 1) * mlen];
        for i in 0..GROUP {
            let src = &blocks[(i * nb + s) * GGML_BLOCK..(i * nb + s + 1) * GGML_BLOCK];
            m[2 * i..2 * i + 2].copy_from_slice(&src[0..2]);
            m[2 * GROUP + 2 * i..2 * GROUP + 2 * i + 2].copy_from_slice(&src[2..4]);
            let (packed, qs) = (&src[4..16], &src[16..]);
            for j in 0..SUB {
                let (sc, mn) = ggml_scale_min(packed, j);
                m[4 * GROUP + j * 2 * GROUP + i] = sc;
                m[4 * GROUP + j * 2 * GROUP + GROUP + i] = mn;
                // Sub-blocks 2c and 2c + 1 are the low and high nibbles of bytes 32c..32c + 32.
                let tile = &mut lines[(s * SUB + j) * LINES..(s * SUB + j + 1) * LINES];
                let q: [u8; BLOCK] = std::array::from_fn(|k| {
                    let byte = qs[32 * (j / 2) + k];
                    if j % 2 == 0 {
                        byte & 15
                    } else {
                        byte >> 4
                    }
                });
                put_nibbles(&q, i, tile);
            }
        }
    }
}

/// The per-row `(d, dmin)` of super-block meta `m` and the `(sc, mn)` of sub-block `j`.
fn row_params(m: &[u8], i: usize, j: usize) -> (f32, f32, f32, f32) {
    let h = |o: usize| f16::from_bits(u16::from_le_bytes([m[o], m[o + 1]])).to_f32();
    let sc = m[4 * GROUP + j * 2 * GROUP + i] as f32;
    let mn = m[4 * GROUP + j * 2 * GROUP + GROUP + i] as f32;
    (h(2 * i), h(2 * GROUP + 2 * i), sc, mn)
}

/// The 4-bit level of weight (`row`, column `k` within sub-block tile `tile`).
fn level(tile: &[Line], row: usize, k: usize) -> u8 {
    let byte = tile[k / 8].0[row * 4 + k % 4];
    if k % 8 >= 4 {
        byte >> 4
    } else {
        byte & 15
    }
}

/// The f32 value of weight (`row` in the group, `col`).
pub fn weight(lines: &[Line], meta: &[u8], cols: usize, row: usize, col: usize) -> f32 {
    let sub = sub_blocks(cols);
    let (b, k) = (col / BLOCK, col % BLOCK);
    let m = &meta[b / sub * meta_len(sub)..];
    let (d, dmin, sc, mn) = row_params(m, row, b % sub);
    d * sc * level(&lines[b * LINES..], row, k) as f32 - dmin * mn
}

/// Portable kernel: `out[t][i] += dot(row i, activation t)` over the group.
pub fn group_dot_portable<const T: usize>(
    lines: &[Line],
    meta: &[u8],
    sub: usize,
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    let mlen = meta_len(sub);
    for b in 0..lines.len() / LINES {
        let tile = &lines[b * LINES..(b + 1) * LINES];
        let m = &meta[b / sub * mlen..];
        for t in 0..T {
            let x = &a.qs[t][b * BLOCK..(b + 1) * BLOCK];
            let da = a.scales[t][b];
            for i in 0..GROUP {
                let acc: i32 = x
                    .iter()
                    .enumerate()
                    .map(|(k, &xv)| level(tile, i, k) as i32 * xv as i32)
                    .sum();
                let (d, dmin, sc, mn) = row_params(m, i, b % sub);
                out[t][i] += acc as f32 * (d * sc) * da - dmin * mn * a.scaled_sums[t][b];
            }
        }
    }
}

/// AVX-512 VNNI kernel (same contract as [`group_dot_portable`]), for activations with one
/// scale per super-block (`a.scales[t]` constant over each super-block's blocks) and their
/// `pair_sums`.
///
/// Each sub-block's integer dot products are scaled by its 8-bit `sc` in f32 (exact: the
/// product stays within 24 bits) and summed over the super-block; the minimums meet the
/// activations' block sums in integers, two sub-blocks per `vpdpwssd`; the float scales
/// apply once per super-block. So the float work per sub-block and token is two
/// instructions for eight `vpdpbusd`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn group_dot_avx512<const T: usize>(
    lines: &[Line],
    meta: &[u8],
    sub: usize,
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    use std::arch::x86_64::*;
    let blocks = lines.len() / LINES;
    let (supers, pairs, mlen) = (blocks / sub, sub.div_ceil(2), meta_len(sub));
    debug_assert!(
        meta.len() >= supers * mlen
            && (0..T).all(|t| a.qs[t].len() >= blocks * BLOCK && a.pair_sums[t].len() >= supers * pairs)
    );
    let nib = _mm512_set1_epi8(15);
    let mut y = [_mm512_setzero_ps(); T];
    let base = lines.as_ptr() as *const __m512i;
    for s in 0..supers {
        // SAFETY (all loads below): in bounds of `lines`, `meta` and the activations as
        // checked above; lines are 64-byte aligned.
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        let m = unsafe { meta.as_ptr().add(s * mlen) };
        let mut sum = [_mm512_setzero_ps(); T];
        for j in 0..sub {
            let b = s * sub + j;
            // The weights 4 KiB ahead (a hint, never a fault), at any number of tokens: from
            // 4 on the kernel computes as long as it streams (+14% at 4, +25% at 8 in `cargo
            // bench --bench kernels`); for one its ~9 instructions a line leave the core too
            // few reads in flight when memory is fast (one token, `lm_head`: +17% where a
            // plain read ran 53 GB/s, +5% at 30 GB/s, +12% on one core).
            super::prefetch_lines(lines.as_ptr().wrapping_add((b + 16) * LINES), LINES);
            let mut acc = [_mm512_setzero_si512(); T];
            for l in 0..LINES {
                // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                let v = unsafe { _mm512_load_si512(base.add(b * LINES + l)) };
                let lo = _mm512_and_si512(v, nib);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nib);
                for t in 0..T {
                    // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                    let p = unsafe { a.qs[t].as_ptr().add(b * BLOCK + 8 * l) as *const i32 };
                    // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                    let (x0, x1) = unsafe { (p.read_unaligned(), p.add(1).read_unaligned()) };
                    acc[t] = _mm512_dpbusd_epi32(acc[t], lo, _mm512_set1_epi32(x0));
                    acc[t] = _mm512_dpbusd_epi32(acc[t], hi, _mm512_set1_epi32(x1));
                }
            }
            // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
            let sc = unsafe { _mm_loadu_si128(m.add(4 * GROUP + j * 2 * GROUP) as *const __m128i) };
            let sc = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(sc));
            for t in 0..T {
                sum[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), sc, sum[t]);
            }
        }
        // The minimums: per row, sum over sub-blocks of mn * (activation block sum).
        let mut mins = [_mm512_setzero_si512(); T];
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        let mn_at = unsafe { m.add(4 * GROUP + GROUP) };
        for p in 0..pairs {
            // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
            let low = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(mn_at.add(2 * p * 2 * GROUP) as *const __m128i) });
            let high = match 2 * p + 1 < sub {
                // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                true => _mm512_cvtepu8_epi32(unsafe {
                    _mm_loadu_si128(mn_at.add((2 * p + 1) * 2 * GROUP) as *const __m128i)
                }),
                false => _mm512_setzero_si512(),
            };
            let both = _mm512_or_si512(low, _mm512_slli_epi32::<16>(high));
            for t in 0..T {
                // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                let x = unsafe { *a.pair_sums[t].get_unchecked(s * pairs + p) };
                mins[t] = _mm512_dpwssd_epi32(mins[t], both, _mm512_set1_epi32(x));
            }
        }
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(m as *const __m256i) });
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        let dmin = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(m.add(2 * GROUP) as *const __m256i) });
        for t in 0..T {
            // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
            let da = _mm512_set1_ps(unsafe { *a.scales[t].get_unchecked(s * sub) });
            y[t] = _mm512_fmadd_ps(sum[t], _mm512_mul_ps(d, da), y[t]);
            y[t] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(mins[t]), _mm512_mul_ps(dmin, da), y[t]);
        }
    }
    for t in 0..T {
        // SAFETY: `out[t]` holds 16 f32.
        let prev = unsafe { _mm512_loadu_ps(out[t].as_ptr()) };
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_add_ps(prev, y[t])) };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
pub use avx2::group_dot_avx2;
