//! Dense 16-bit weights (bf16 or f16) with f32 activations: each weight row is widened to
//! f32 as it is read (in L1, once per use), so the weights take half the memory and half
//! the bytes per decoded token of f32, and every sum is an f32 sum.

use half::{bf16, f16};
use rayon::prelude::*;

use super::gemv::dot;

/// How 16-bit weights encode their values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HalfKind {
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
}

impl HalfKind {
    /// The 16-bit bits of each of `src`.
    pub fn encode(self, src: &[f32]) -> Vec<u16> {
        match self {
            Self::Bf16 => src.iter().map(|&v| bf16::from_f32(v).to_bits()).collect(),
            Self::F16 => src.iter().map(|&v| f16::from_f32(v).to_bits()).collect(),
        }
    }

    /// Widens `src` into `dst` (same length).
    pub fn widen(self, src: &[u16], dst: &mut [f32]) {
        match self {
            Self::Bf16 => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = f32::from_bits(u32::from(s) << 16);
                }
            }
            Self::F16 => super::widen::widen(src, dst),
        }
    }
}

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 32;

isa_dispatch! {
    /// Dot product of bf16 bits `w` (widened as read) with `x`, with the widest vector unit
    /// available: the same sums in the same order as [`dot`] of the widened row.
    fn dot_bf16(w: &[u16], x: &[f32]) -> f32 => dot_bf16_lanes;
}

/// Portable twin of [`dot_bf16`] (the SIMD versions compile this same code).
#[inline(always)]
fn dot_bf16_lanes(w: &[u16], x: &[f32]) -> f32 {
    let wide = |b: u16| f32::from_bits(u32::from(b) << 16);
    let mut acc = [0f32; 16];
    let (wc, xc) = (w.chunks_exact(16), x.chunks_exact(16));
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(&a, y)| wide(a) * y)
        .sum();
    for (a, y) in wc.zip(xc) {
        for l in 0..16 {
            acc[l] = wide(a[l]).mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot product of f16 bits `w` with `x`: converted in registers with F16C where the CPU
/// has it (the same sums in the same order as [`dot`] of the widened row), else widened
/// into `row` first.
fn dot_f16(w: &[u16], x: &[f32], row: &mut Vec<f32>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        let f16c = std::arch::is_x86_feature_detected!("f16c");
        if f16c && std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked just above).
            return unsafe { dot_f16_f16c(w, x) };
        }
    }
    row.resize(w.len(), 0.0);
    HalfKind::F16.widen(w, row);
    dot(row, x)
}

/// [`dot_f16`] with F16C conversions: lanes 0-7 and 8-15 of 16-wide chunks in two
/// accumulators, summed lane by lane as [`super::gemv::dot_lanes`] does.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_f16_f16c(w: &[u16], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = w.len().min(x.len());
    let chunks = n / 16;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    for c in 0..chunks {
        let at = c * 16;
        // SAFETY: `at + 16 <= n`, inside both slices; unaligned loads.
        let (wl, wh, xl, xh) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(at) as *const __m128i)),
                _mm256_cvtph_ps(_mm_loadu_si128(w.as_ptr().add(at + 8) as *const __m128i)),
                _mm256_loadu_ps(x.as_ptr().add(at)),
                _mm256_loadu_ps(x.as_ptr().add(at + 8)),
            )
        };
        lo = _mm256_fmadd_ps(wl, xl, lo);
        hi = _mm256_fmadd_ps(wh, xh, hi);
    }
    let mut acc = [0f32; 16];
    // SAFETY: `acc` holds 16 f32: two unaligned stores of 8.
    unsafe {
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
    }
    let tail: f32 = w[chunks * 16..n]
        .iter()
        .zip(&x[chunks * 16..n])
        .map(|(&a, y)| half::f16::from_bits(a).to_f32() * y)
        .sum();
    acc.iter().sum::<f32>() + tail
}

/// `y = W x` for 16-bit `w: [n, k]` row-major and `x: [k]`, rows in parallel.
pub(crate) fn gemv_half(w: &[u16], kind: HalfKind, x: &[f32]) -> Vec<f32> {
    let k = x.len();
    let n = w.len().checked_div(k).unwrap_or(0);
    let mut y = vec![0f32; n];
    y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, out)| {
        // Only f16 without F16C widens into a buffer.
        let mut row = Vec::new();
        let first = task * ROWS_PER_TASK;
        for (i, yi) in out.iter_mut().enumerate() {
            let bits = &w[(first + i) * k..(first + i + 1) * k];
            *yi = match kind {
                HalfKind::Bf16 => dot_bf16(bits, x),
                HalfKind::F16 => dot_f16(bits, x, &mut row),
            };
        }
    });
    y
}

/// Rows of `w` widened at once for a prompt's GEMM (bounds the f32 copy to a few MB).
pub(crate) const GEMM_BLOCK_ROWS: usize = 512;

/// Widens rows `first..first + rows` of 16-bit `w: [n, k]` into `dst`, in parallel.
pub(crate) fn widen_rows(w: &[u16], kind: HalfKind, k: usize, first: usize, dst: &mut [f32]) {
    dst.par_chunks_mut(k.max(1)).enumerate().for_each(|(i, row)| {
        let at = (first + i) * k;
        kind.widen(&w[at..at + k], row);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_rows_widen_exactly_and_gemv_matches_f32_of_the_same_values() {
        let (n, k) = (70, 48);
        let vals: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let x: Vec<f32> = (0..k).map(|i| (i as f32 - 20.0) * 0.05).collect();
        for kind in [HalfKind::Bf16, HalfKind::F16] {
            let bits = kind.encode(&vals);
            let mut wide = vec![0f32; n * k];
            widen_rows(&bits, kind, k, 0, &mut wide);
            for (w, v) in wide.iter().zip(&vals) {
                let want = match kind {
                    HalfKind::Bf16 => bf16::from_f32(*v).to_f32(),
                    HalfKind::F16 => f16::from_f32(*v).to_f32(),
                };
                assert_eq!(*w, want);
            }
            let got = gemv_half(&bits, kind, &x);
            let want = super::super::gemv::gemv(&wide, &x);
            assert_eq!(got, want, "{kind:?}: the same sums in the same order");
        }
    }
}
