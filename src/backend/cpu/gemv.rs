//! f32 matrix x vector for the decode step on CPU: `y = W x`, parallel over rows.
//!
//! Decoding one token reads every weight once, so it is bound by memory bandwidth; a
//! general matmul kernel leaves a good part of that on the table for a single row. This
//! streams each weight row once through a wide dot product (AVX-512 or AVX2+FMA picked at
//! run time, portable code elsewhere), with rows split over the available cores.

use rayon::prelude::*;

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 32;

/// `y = W x` for `w: [n, k]` row-major and `x: [k]`, rows in parallel.
pub fn gemv(w: &[f32], x: &[f32]) -> Vec<f32> {
    let k = x.len();
    let n = w.len().checked_div(k).unwrap_or(0);
    let mut y = vec![0f32; n];
    y.par_chunks_mut(ROWS_PER_TASK).enumerate().for_each(|(task, out)| {
        let first = task * ROWS_PER_TASK;
        for (i, yi) in out.iter_mut().enumerate() {
            *yi = dot(&w[(first + i) * k..(first + i + 1) * k], x);
        }
    });
    y
}

isa_dispatch! {
    /// Dot product with the widest vector unit available.
    pub fn dot(a: &[f32], b: &[f32]) -> f32 => dot_lanes;
}

/// Portable dot product over 16 independent lanes (vectorisable, and the reference twin
/// of the SIMD versions, which compile this same code for wider units).
#[inline(always)]
pub fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
/// Slow, obviously correct twin: the textbook sum in f64.
pub fn dot_slow(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_the_slow_sum() {
        for len in [0, 1, 15, 16, 17, 100, 2048, 8195] {
            let a: Vec<f32> = (0..len).map(|i| ((i * 7 % 13) as f32 - 6.0) / 3.0).collect();
            let b: Vec<f32> = (0..len).map(|i| ((i * 5 % 11) as f32 - 5.0) / 2.0).collect();
            let (fast, slow) = (dot(&a, &b) as f64, dot_slow(&a, &b));
            assert!(
                (fast - slow).abs() <= 1e-4 * (1.0 + slow.abs()),
                "{len}: {fast} vs {slow}"
            );
        }
    }

    #[test]
    fn gemv_matches_the_slow_dot_of_each_row() {
        let (n, k) = (300, 200);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let x: Vec<f32> = (0..k).map(|i| ((i * 31 % 17) as f32 - 8.0) * 0.1).collect();
        let y = gemv(&w, &x);
        for (r, &got) in y.iter().enumerate() {
            let want = dot_slow(&w[r * k..(r + 1) * k], &x);
            assert!((got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()), "row {r}");
        }
    }
}
