//! 8-bit values as bf16 pairs of positions, the form `vdpbf16ps` takes (AVX-512): word `i`
//! of a pair holds dimension `i` of the even position (its low half) and of the odd one.
//! An 8-bit integer's bf16 is exact. Two ways: each value widened to f32 and its upper half
//! kept ([`convert`]), or by byte permutes (AVX-512 VBMI, `bf16_pairs!`): the two
//! positions' bytes interleaved, each byte's bf16 looked up by its magnitude in two
//! 128-entry tables (its low and high byte), the sign set (and -128's high byte), the bytes
//! unpacked into words; ~9 instructions a pair and 32 dimensions where widening takes ~14.
//! 4-bit values (`nibble_pairs!`) split into nibbles, permuted and looked up the same way
//! (a 16-entry table, no sign to set): ~8 instructions a pair and 64 dimensions.

use std::arch::x86_64::*;

/// Dimensions of one register.
const LANES: usize = 16;

/// [`super::pairs::ChunkPairs::push`]'s conversion: each value widened to f32, its bf16 the
/// upper half.
///
/// # Safety
/// AVX-512F/BW/BF16; `q` holds `n * d` bytes, `block` `ceil(n / 2) * d` words, `d` a
/// multiple of 16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn convert(q: &[i8], n: usize, d: usize, block: &mut [u32]) {
    let high = _mm512_set1_epi32(0xffff_0000u32 as i32);
    for p in 0..n.div_ceil(2) {
        for c in (0..d).step_by(LANES) {
            // SAFETY: `2p < n` and `c + 16 <= d`: within `q`; the odd position only where it
            // is below `n`; the words within `block`.
            unsafe {
                // A macro: a closure would not share the target features.
                macro_rules! widen {
                    ($s:expr) => {
                        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                            q.as_ptr().add($s * d + c).cast(),
                        )))
                    };
                }
                let even = _mm512_castps_si512(widen!(2 * p));
                let odd = match 2 * p + 1 < n {
                    true => _mm512_castps_si512(widen!(2 * p + 1)),
                    false => _mm512_setzero_si512(),
                };
                let words = _mm512_or_si512(_mm512_srli_epi32::<16>(even), _mm512_and_si512(odd, high));
                _mm512_storeu_si512(block.as_mut_ptr().add(p * d + c).cast(), words);
            }
        }
    }
}

/// The constants of `bf16_pairs!`: the two 128-entry tables of a magnitude's bf16 (its
/// low and high byte), the two interleaving permutes, the sign bit and -128's high byte.
/// A macro: a function would not share its caller's target features.
macro_rules! bf16_constants {
    () => {{
        let (mut low, mut high) = ([0u8; 128], [0u8; 128]);
        for (a, (l, h)) in low.iter_mut().zip(high.iter_mut()).enumerate() {
            [*l, *h] = bf16_bits(a as i8).to_le_bytes();
        }
        let [first, second] = [interleave_index(0), interleave_index(32)];
        // SAFETY: each array holds 128 or 64 bytes: 64-byte loads within them.
        unsafe {
            [
                _mm512_loadu_si512(low.as_ptr().cast()),
                _mm512_loadu_si512(low.as_ptr().add(64).cast()),
                _mm512_loadu_si512(high.as_ptr().cast()),
                _mm512_loadu_si512(high.as_ptr().add(64).cast()),
                _mm512_loadu_si512(first.as_ptr().cast()),
                _mm512_loadu_si512(second.as_ptr().cast()),
                _mm512_set1_epi8(-128),
                _mm512_set1_epi8((bf16_bits(-128) >> 8) as i8),
            ]
        }
    }};
}

/// Two positions' 64 dimensions (`even`, `odd`: 64 bytes each) as bf16 pairs, four
/// registers of 16 dimensions in order, by byte permutes (AVX-512 VBMI, the constants of
/// `bf16_constants!`): the bytes interleaved in the order the unpacks need, each byte's
/// bf16 looked up by its magnitude, the sign set (and -128's high byte), the bytes unpacked
/// into words.
macro_rules! bf16_pairs {
    ($k:expr, $even:expr, $odd:expr) => {{
        let [low0, low1, high0, high1, first, second, sign, minus128] = $k;
        let mut u = [_mm512_setzero_si512(); 4];
        for (h, index) in [first, second].into_iter().enumerate() {
            let x = _mm512_permutex2var_epi8($even, index, $odd);
            let a = _mm512_abs_epi8(x);
            let lo = _mm512_permutex2var_epi8(low0, a, low1);
            // The high byte of the magnitude's bf16, and the sign bit: `hi | (x & sign)`.
            let hi = _mm512_ternarylogic_epi32::<0xf8>(_mm512_permutex2var_epi8(high0, a, high1), x, sign);
            // -128, whose magnitude (still -128, the only one with its top bit set) looked up
            // entry 0: its low byte is 0 as there, its high byte 0xc3.
            let hi = _mm512_mask_mov_epi8(hi, _mm512_movepi8_mask(a), minus128);
            u[2 * h] = _mm512_unpacklo_epi8(lo, hi);
            u[2 * h + 1] = _mm512_unpackhi_epi8(lo, hi);
        }
        u
    }};
}

/// The constants of `nibble_pairs!`: the two 16-entry tables of a stored nibble's bf16 (its
/// low and high byte; the nibble holds the value + 8), the two permutes that put the
/// nibbles in the order the unpacks need, and the low-nibble mask. A macro: a function
/// would not share its caller's target features.
macro_rules! nibble_constants {
    () => {{
        let (mut low, mut high) = ([0u8; 64], [0u8; 64]);
        for (n, (l, h)) in low.iter_mut().zip(high.iter_mut()).take(16).enumerate() {
            [*l, *h] = bf16_bits(n as i8 - 8).to_le_bytes();
        }
        let [first, second] = [nibble_index(0), nibble_index(32)];
        // SAFETY: each array holds 64 bytes: 64-byte loads within them.
        unsafe {
            [
                _mm512_loadu_si512(low.as_ptr().cast()),
                _mm512_loadu_si512(high.as_ptr().cast()),
                _mm512_loadu_si512(first.as_ptr().cast()),
                _mm512_loadu_si512(second.as_ptr().cast()),
                _mm512_set1_epi8(0x0f),
            ]
        }
    }};
}

/// Two positions' 64 dimensions of 4-bit values (`even`, `odd`: 32 bytes each in
/// llama.cpp's q4_0 layout, two groups of 32) as bf16 pairs, four registers of 16
/// dimensions in order (the words of `bf16_pairs!` on the values unpacked), by byte
/// permutes (AVX-512 VBMI, the constants of `nibble_constants!`): both positions' low and
/// high nibbles split, put in the order the unpacks need, each nibble's bf16 looked up
/// (low and high byte), the bytes unpacked into words.
macro_rules! nibble_pairs {
    ($k:expr, $even:expr, $odd:expr) => {{
        let [low, high, first, second, nibble] = $k;
        let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512($even), $odd);
        let lows = _mm512_and_si512(both, nibble);
        let highs = _mm512_and_si512(_mm512_srli_epi16::<4>(both), nibble);
        let mut u = [_mm512_setzero_si512(); 4];
        for (h, index) in [first, second].into_iter().enumerate() {
            let x = _mm512_permutex2var_epi8(lows, index, highs);
            let lo = _mm512_permutexvar_epi8(x, low);
            let hi = _mm512_permutexvar_epi8(x, high);
            u[2 * h] = _mm512_unpacklo_epi8(lo, hi);
            u[2 * h + 1] = _mm512_unpackhi_epi8(lo, hi);
        }
        u
    }};
}

/// The permute of `nibble_pairs!` for dimensions `half..half + 32` of 64: byte `j` takes
/// the nibble of the word [`interleave_index`] puts there, from the low nibbles (below
/// 64) or high ones (64 on) of the two positions' 64 bytes (the even position's 32 first;
/// in each, group `g`'s 16 bytes at `16 g`, dimension `k` of a group in byte `k % 16`, its
/// high nibble from `k = 16`).
pub(super) fn nibble_index(half: usize) -> [u8; 64] {
    interleave_index(half).map(|v| {
        let (parity, dim) = (usize::from(v) / 64, usize::from(v) % 64);
        let (g, k) = (dim / 32, dim % 32);
        (parity * 32 + 16 * g + k % 16 + if k >= 16 { 64 } else { 0 }) as u8
    })
}

/// [`convert`] by byte permutes (`bf16_pairs!`), 64 dimensions of a pair at a time: the
/// same words, an 8-bit integer's bf16 being exact and the tables those bits
/// ([`bf16_bits`]).
///
/// # Safety
/// AVX-512F/BW/VBMI; `q` holds `n * d` bytes, `block` `ceil(n / 2) * d` words, `d` a
/// multiple of 64.
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
pub(super) unsafe fn convert_vbmi(q: &[i8], n: usize, d: usize, block: &mut [u32]) {
    let k = bf16_constants!();
    for p in 0..n.div_ceil(2) {
        for c in (0..d).step_by(64) {
            // SAFETY: `2p < n` and `c + 64 <= d`: within `q`, the odd position only where it
            // is below `n`; the words `p * d + c..+64` within `block`.
            unsafe {
                let even = _mm512_loadu_si512(q.as_ptr().add(2 * p * d + c).cast());
                let odd = match 2 * p + 1 < n {
                    true => _mm512_loadu_si512(q.as_ptr().add((2 * p + 1) * d + c).cast()),
                    false => _mm512_setzero_si512(),
                };
                for (r, u) in bf16_pairs!(k, even, odd).into_iter().enumerate() {
                    _mm512_storeu_si512(block.as_mut_ptr().add(p * d + c + r * LANES).cast(), u);
                }
            }
        }
    }
}

/// The byte permute of [`convert_vbmi`] for dimensions `half..half + 32` of 64: byte `j`
/// takes the even (below 64) or odd (64 on) position's byte of word `k` of the 64 the
/// unpacks then make in order (`unpacklo` takes bytes 0-7 of each 16-byte lane, `unpackhi`
/// bytes 8-15): word `k` is dimension `half + k / 2`, the odd position's where `k` is odd.
pub(super) fn interleave_index(half: usize) -> [u8; 64] {
    let mut index = [0u8; 64];
    for (j, x) in index.iter_mut().enumerate() {
        let (lane, r) = (j / 16, j % 16);
        let k = if r < 8 { 8 * lane + r } else { 32 + 8 * lane + r - 8 };
        *x = ((k % 2) * 64 + half + k / 2) as u8;
    }
    index
}

/// The bf16 bits of an 8-bit integer (exact): the high half of its f32's.
pub(super) fn bf16_bits(x: i8) -> u16 {
    (f32::from(x).to_bits() >> 16) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte-permute conversion gives the widening one's words: every 8-bit value, odd
    /// counts (the last odd position zero), several widths.
    #[test]
    fn both_conversions_give_the_same_words() {
        let cpu = ["avx512f", "avx512bw", "avx512vbmi"];
        if !(std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vbmi"))
        {
            eprintln!("skipped: no {}", cpu.join(", "));
            return;
        }
        for (n, d) in [(1usize, 64usize), (2, 64), (15, 128), (16, 64), (33, 192)] {
            // Every value of -128..=127, in a scrambled order.
            let q: Vec<i8> = (0..n * d)
                .map(|i| (((i * 97 + i / 7) % 256) as i32 - 128) as i8)
                .collect();
            let words = n.div_ceil(2) * d;
            let (mut want, mut got) = (vec![7u32; words], vec![9u32; words]);
            // SAFETY: the features were detected above; `q` holds `n * d` bytes, the blocks
            // `ceil(n / 2) * d` words, `d` a multiple of 64.
            unsafe {
                convert(&q, n, d, &mut want);
                convert_vbmi(&q, n, d, &mut got);
            }
            assert_eq!(got, want, "n {n} d {d}");
        }
        assert!(bf16_bits(-128) == 0xc300 && bf16_bits(0) == 0 && bf16_bits(1) == 0x3f80);
    }
}
