//! f16 bits to f32, many at a time: the conversion every attention step does on the cached
//! keys and values. `half`'s slice conversion calls a non-inlined routine per 8 values;
//! here one loop converts 16 (AVX-512) or 8 (F16C) per instruction. f16 -> f32 is exact,
//! so every path gives the same bits ([`widen_portable`] is the reference).

use half::f16;

/// `dst[i] = f32(src[i])` for `src` holding f16 bits; the lengths must match.
pub fn widen(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F; the lengths are equal (checked above).
            return unsafe { widen_avx512(src, dst) };
        }
        if std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports F16C and AVX; the lengths are equal (checked above).
            return unsafe { widen_f16c(src, dst) };
        }
    }
    widen_portable(src, dst)
}

/// Asks the memory system for the cache lines of `data` (a hint: no effect on results).
pub fn prefetch<T>(data: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let bytes = std::mem::size_of_val(data);
        let p = data.as_ptr() as *const i8;
        for off in (0..bytes).step_by(64) {
            // SAFETY: a prefetch never faults; the address is inside `data` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(off)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = data;
}

/// The reference: one value at a time.
pub fn widen_portable(src: &[u16], dst: &mut [f32]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f16::from_bits(s).to_f32();
    }
}

/// # Safety
/// AVX-512F; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn widen_avx512(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len() / 16 * 16;
    for i in (0..n).step_by(16) {
        // SAFETY: `i + 16 <= n <= len` for both slices.
        unsafe {
            let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
            _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
        }
    }
    widen_portable(&src[n..], &mut dst[n..]);
}

/// # Safety
/// F16C and AVX; `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[u16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        // SAFETY: `i + 8 <= n <= len` for both slices.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
    }
    widen_portable(&src[n..], &mut dst[n..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_gives_the_reference_bits() {
        // Every f16 bit pattern (NaN payloads, infinities, subnormals), odd lengths for tails.
        let src: Vec<u16> = (0..=u16::MAX).collect();
        let mut want = vec![0f32; src.len()];
        widen_portable(&src, &mut want);
        for len in [0, 1, 7, 8, 15, 16, 17, 33, src.len()] {
            let mut got = vec![0f32; len];
            widen(&src[..len], &mut got);
            let same = got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "length {len}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("f16c") {
                let mut got = vec![0f32; len];
                // SAFETY: F16C checked; equal lengths.
                unsafe { widen_f16c(&src[..len], &mut got) };
                assert!(
                    got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "f16c {len}"
                );
            }
        }
    }
}
