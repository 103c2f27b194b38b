//! `q8_0`: 8-bit weights in blocks of 32 with one f16 scale per block (llama.cpp's Q8_0
//! numbers), repacked 16 rows at a time for the integer dot-product units.
//!
//! Layout of one group of 16 rows and one block of 32 columns: 8 lines of 64 bytes, line
//! `j` holding for each row `i` the 4 weights of columns `4j..4j + 4` at bytes
//! `4i..4i + 4`, each stored as `q + 128` (`q` in `[-127, 127]`), then 16 f16 scales in
//! `scales`. One 512-bit load thus feeds 16 row accumulators at once (`vpdpbusd`), and the
//! `+ 128` makes the weights the unsigned operand: `sum((q + 128) a) = sum(q a) + 128 sum(a)`
//! is corrected with the activation block's sum.

// The kernels index several arrays in lockstep by token and row.
#![allow(clippy::needless_range_loop)]

use half::f16;

use super::activation::BLOCK;
use super::{Acts, Line, GROUP};

/// Bytes of quantized weights per group and block.
pub const TILE: usize = GROUP * BLOCK;
const LINES: usize = TILE / 64;

/// One group of 16 rows (`w: [16, cols]`, row-major) quantized into `lines` (`cols / 32 * 8`)
/// and `scales` (`cols / 32 * 16` f16 as little-endian bytes). Written so that the compiler
/// vectorizes it (packing a model quantizes every weight): the rounded value is read from
/// the float's bits, with no float-to-integer conversion; the same numbers as
/// [`pack_group_reference`].
pub fn pack_group(w: &[f32], cols: usize, lines: &mut [Line], scales: &mut [u8]) {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: its low mantissa byte holds the integer.
    for b in 0..cols / BLOCK {
        let tile = &mut lines[b * LINES..(b + 1) * LINES];
        for i in 0..GROUP {
            let src = &w[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
            let (d, inv) = block_scale(src);
            let at = 2 * (b * GROUP + i);
            scales[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
            let mut q = [0u8; BLOCK];
            for (q, &v) in q.iter_mut().zip(src) {
                let x = v * inv;
                // A NaN becomes 0, as `as i32` makes it in the reference.
                let x = if x.is_nan() { 0.0 } else { x.clamp(-127.0, 127.0) };
                // `(x + MAGIC)` has the rounded integer (ties to even) in its low bits, and
                // MAGIC's low byte is 0: the low byte is `q` as two's complement.
                *q = ((x + MAGIC).to_bits() as u8).wrapping_add(128);
            }
            for (line, four) in tile.iter_mut().zip(q.chunks_exact(4)) {
                line.0[i * 4..i * 4 + 4].copy_from_slice(four);
            }
        }
    }
}

/// A block's f16 scale (`amax / 127`) and the reciprocal its values are multiplied by.
fn block_scale(src: &[f32]) -> (f16, f32) {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
    (d, inv)
}

/// Slow, obviously correct twin of [`pack_group`].
#[cfg(test)]
pub fn pack_group_reference(w: &[f32], cols: usize, lines: &mut [Line], scales: &mut [u8]) {
    for b in 0..cols / BLOCK {
        let tile = &mut lines[b * LINES..(b + 1) * LINES];
        for i in 0..GROUP {
            let src = &w[i * cols + b * BLOCK..i * cols + (b + 1) * BLOCK];
            let (d, inv) = block_scale(src);
            let at = 2 * (b * GROUP + i);
            scales[at..at + 2].copy_from_slice(&d.to_bits().to_le_bytes());
            for (k, &v) in src.iter().enumerate() {
                let q = super::round_clamped(v * inv, -127.0, 127.0) as i32;
                tile[k / 4].0[i * 4 + k % 4] = (q + 128) as u8;
            }
        }
    }
}

/// Bytes of one llama.cpp Q8_0 block: an f16 scale, then 32 `i8`.
pub const GGML_BLOCK: usize = 34;

/// One group of 16 rows given as llama.cpp Q8_0 blocks (`blocks`: 16 rows of `cols / 32`
/// blocks, missing rows zero), copied into `lines` and `scales` unchanged (only `-128`,
/// which llama.cpp never writes, is clamped to `-127`).
pub fn pack_group_blocks(blocks: &[u8], cols: usize, lines: &mut [Line], scales: &mut [u8]) {
    let nb = cols / BLOCK;
    for b in 0..nb {
        let tile = &mut lines[b * LINES..(b + 1) * LINES];
        for i in 0..GROUP {
            let src = &blocks[(i * nb + b) * GGML_BLOCK..(i * nb + b + 1) * GGML_BLOCK];
            let at = 2 * (b * GROUP + i);
            scales[at..at + 2].copy_from_slice(&src[..2]);
            for (k, &q) in src[2..].iter().enumerate() {
                let q = i32::from((q as i8).max(-127));
                tile[k / 4].0[i * 4 + k % 4] = (q + 128) as u8;
            }
        }
    }
}

/// Scale number `i` of `scales`.
fn scale(scales: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([scales[2 * i], scales[2 * i + 1]])).to_f32()
}

/// The f32 value of weight (`row` in the group, `col`).
pub fn weight(lines: &[Line], scales: &[u8], row: usize, col: usize) -> f32 {
    let (b, k) = (col / BLOCK, col % BLOCK);
    let q = lines[b * LINES + k / 4].0[row * 4 + k % 4] as i32 - 128;
    q as f32 * scale(scales, b * GROUP + row)
}

/// Portable kernel: `out[t][i] += dot(row i, activation t)` over the group.
pub fn group_dot_portable<const T: usize>(lines: &[Line], scales: &[u8], a: &Acts<T>, out: &mut [[f32; GROUP]; T]) {
    for b in 0..lines.len() / LINES {
        let tile = &lines[b * LINES..(b + 1) * LINES];
        for t in 0..T {
            let x = &a.qs[t][b * BLOCK..(b + 1) * BLOCK];
            let corr = 128 * a.sums[t][b];
            for i in 0..GROUP {
                let mut acc = 0i32;
                for (k, &xv) in x.iter().enumerate() {
                    acc += tile[k / 4].0[i * 4 + k % 4] as i32 * xv as i32;
                }
                let d = scale(scales, b * GROUP + i);
                out[t][i] += (acc - corr) as f32 * d * a.scales[t][b];
            }
        }
    }
}

/// AVX-512 VNNI kernel (same contract as [`group_dot_portable`]). Each token's integer sums
/// start at the activation block's `-128 * sum` (which undoes the weights' offset with no
/// instruction of its own); the float work per block and token is one conversion, one
/// multiply and one fused multiply-add for eight `vpdpbusd`.
///
/// # Safety
/// The CPU must support AVX-512F, AVX-512BW and AVX-512VNNI.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub unsafe fn group_dot_avx512<const T: usize>(
    lines: &[Line],
    scales: &[u8],
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    use std::arch::x86_64::*;
    let blocks = lines.len() / LINES;
    debug_assert!(
        scales.len() >= blocks * GROUP * 2
            && (0..T).all(|t| {
                a.qs[t].len() >= blocks * BLOCK && a.scales[t].len() >= blocks && a.offsets[t].len() >= blocks
            })
    );
    let mut y = [_mm512_setzero_ps(); T];
    let base = lines.as_ptr() as *const __m512i;
    for b in 0..blocks {
        if T >= 8 {
            // Batched decode computes as long as it streams: ask for the weights 4 KiB ahead
            // so that memory keeps up (+13-20% at 8 tokens; a hint, never a fault).
            super::prefetch_lines(lines.as_ptr().wrapping_add((b + 8) * LINES), LINES);
        }
        let mut acc = [_mm512_setzero_si512(); T];
        for t in 0..T {
            // SAFETY (here and below): every activation array holds `blocks` blocks (checked
            // above, guaranteed by the caller).
            // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
            acc[t] = _mm512_set1_epi32(unsafe { *a.offsets[t].get_unchecked(b) });
        }
        for j in 0..LINES {
            // SAFETY: `b * LINES + j < lines.len()`; lines are 64-byte aligned.
            let w = unsafe { _mm512_load_si512(base.add(b * LINES + j)) };
            for t in 0..T {
                // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
                let x = unsafe { (a.qs[t].as_ptr().add(b * BLOCK + 4 * j) as *const i32).read_unaligned() };
                acc[t] = _mm512_dpbusd_epi32(acc[t], w, _mm512_set1_epi32(x));
            }
        }
        // SAFETY: 16 scales per block (checked above).
        let d = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(scales.as_ptr().add(2 * b * GROUP) as *const __m256i) });
        for t in 0..T {
            // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
            let s = _mm512_mul_ps(d, _mm512_set1_ps(unsafe { *a.scales[t].get_unchecked(b) }));
            y[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), s, y[t]);
        }
    }
    for t in 0..T {
        // SAFETY: `out[t]` holds 16 f32.
        let prev = unsafe { _mm512_loadu_ps(out[t].as_ptr()) };
        // SAFETY: in bounds of `lines`, `meta` and the activations, as checked on entry.
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), _mm512_add_ps(prev, y[t])) };
    }
}

/// AVX2 kernel (same contract as [`group_dot_portable`]): 8 rows per 256-bit half,
/// `maddubs` on `|q|` and the activation carrying `q`'s sign.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group_dot_avx2<const T: usize>(lines: &[Line], scales: &[u8], a: &Acts<T>, out: &mut [[f32; GROUP]; T]) {
    use std::arch::x86_64::*;
    let blocks = lines.len() / LINES;
    debug_assert!(scales.len() >= blocks * GROUP * 2 && (0..T).all(|t| a.qs[t].len() >= blocks * BLOCK));
    if T <= 2 {
        // SAFETY: the same contract.
        return unsafe { group_dot_avx2_one_pass(lines, scales, a, out) };
    }
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    for half in 0..2 {
        let mut y = [_mm256_setzero_ps(); T];
        // SAFETY: `half` is 0 or 1, inside the first line of 64 bytes.
        let base = unsafe { (lines.as_ptr() as *const __m256i).add(half) };
        for b in 0..blocks {
            let mut acc = [_mm256_setzero_si256(); T];
            for j in 0..LINES {
                // SAFETY: in bounds of `lines` (two 256-bit halves per line).
                let w = _mm256_xor_si256(unsafe { _mm256_load_si256(base.add(2 * (b * LINES + j))) }, flip);
                let wabs = _mm256_abs_epi8(w);
                for t in 0..T {
                    // SAFETY: as in the AVX-512 kernel.
                    let x = unsafe { (a.qs[t].as_ptr().add(b * BLOCK + 4 * j) as *const i32).read_unaligned() };
                    let xs = _mm256_sign_epi8(_mm256_set1_epi32(x), w);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, xs), ones);
                    acc[t] = _mm256_add_epi32(acc[t], p);
                }
            }
            // SAFETY: 16 scales per block, 8 per half.
            let d = _mm256_cvtph_ps(unsafe {
                _mm_loadu_si128(scales.as_ptr().add(2 * (b * GROUP + 8 * half)) as *const __m128i)
            });
            for t in 0..T {
                let s = _mm256_mul_ps(d, _mm256_set1_ps(a.scales[t][b]));
                y[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[t]), s, y[t]);
            }
        }
        for t in 0..T {
            let dst = out[t][8 * half..].as_mut_ptr();
            // SAFETY: `out[t]` holds 16 f32; this half is 8 of them.
            unsafe { _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), y[t])) };
        }
    }
}

/// [`group_dot_avx2`] for one or two tokens (decoding): both 8-row halves of every line at
/// once, so the weights stream through once (the two-pass form reads each line twice, the
/// second time from cache, and leaves memory idle in between). The same operations per half
/// as the two-pass form, so the same bits.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_dot_avx2_one_pass<const T: usize>(
    lines: &[Line],
    scales: &[u8],
    a: &Acts<T>,
    out: &mut [[f32; GROUP]; T],
) {
    use std::arch::x86_64::*;
    let blocks = lines.len() / LINES;
    let ones = _mm256_set1_epi16(1);
    let flip = _mm256_set1_epi8(-128);
    let mut y = [[_mm256_setzero_ps(); T]; 2];
    let base = lines.as_ptr() as *const __m256i;
    for b in 0..blocks {
        let mut acc = [[_mm256_setzero_si256(); T]; 2];
        for j in 0..LINES {
            let x: [__m256i; T] = std::array::from_fn(|t| {
                // SAFETY: in bounds of the activations, as in the AVX-512 kernel.
                let four = unsafe { (a.qs[t].as_ptr().add(b * BLOCK + 4 * j) as *const i32).read_unaligned() };
                _mm256_set1_epi32(four)
            });
            for half in 0..2 {
                // SAFETY: in bounds of `lines` (two 256-bit halves per line).
                let w = _mm256_xor_si256(unsafe { _mm256_load_si256(base.add(2 * (b * LINES + j) + half)) }, flip);
                let wabs = _mm256_abs_epi8(w);
                for t in 0..T {
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs, _mm256_sign_epi8(x[t], w)), ones);
                    acc[half][t] = _mm256_add_epi32(acc[half][t], p);
                }
            }
        }
        for half in 0..2 {
            // SAFETY: 16 scales per block, 8 per half.
            let d = _mm256_cvtph_ps(unsafe {
                _mm_loadu_si128(scales.as_ptr().add(2 * (b * GROUP + 8 * half)) as *const __m128i)
            });
            for t in 0..T {
                let s = _mm256_mul_ps(d, _mm256_set1_ps(a.scales[t][b]));
                y[half][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[half][t]), s, y[half][t]);
            }
        }
    }
    for half in 0..2 {
        for t in 0..T {
            let dst = out[t][8 * half..].as_mut_ptr();
            // SAFETY: `out[t]` holds 16 f32; this half is 8 of them.
            unsafe { _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), y[half][t])) };
        }
    }
}
