//! Activations quantized to 8 bits in blocks of 32, the form the integer kernels consume.
//!
//! Each block of 32 values `x` gets `d = max|x| / 127` and `q = round(x / d)` in
//! `[-127, 127]`, and remembers `sum(q)` (the packed formats need it to undo their offsets
//! and minimums). This is llama.cpp's `Q8_0` activation format with an f32 scale.

use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;

/// `rows` activation rows of `cols` values each (`cols` a multiple of [`BLOCK`]).
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    /// Row length.
    pub cols: usize,
    /// Quantized values, row-major `[rows, cols]`.
    pub qs: Vec<i8>,
    /// Block scales `[rows, cols / 32]`.
    pub scales: Vec<f32>,
    /// Block sums of `qs` `[rows, cols / 32]`.
    pub sums: Vec<i32>,
    /// `scale * sum` per block, as f32 (what the 4-bit kernels' minimum term multiplies).
    pub scaled_sums: Vec<f32>,
}

impl QuantizedRows {
    /// Quantizes `x: [rows, cols]` (row-major), rows in parallel when there are many.
    pub fn quantize(x: &[f32], cols: usize) -> Self {
        debug_assert!(cols.is_multiple_of(BLOCK) && x.len().is_multiple_of(cols));
        let blocks = x.len() / BLOCK;
        let mut out = Self {
            cols,
            qs: vec![0; x.len()],
            scales: vec![0.0; blocks],
            sums: vec![0; blocks],
            scaled_sums: Vec::new(),
        };
        let (qs, scales, sums) = (&mut out.qs, &mut out.scales, &mut out.sums);
        if x.len() >= 1 << 16 {
            x.par_chunks(BLOCK)
                .zip(qs.par_chunks_mut(BLOCK))
                .zip(scales.par_iter_mut().zip(sums.par_iter_mut()))
                .with_min_len(64)
                .for_each(|((src, dst), (d, s))| (*d, *s) = quantize_block(src, dst));
        } else {
            x.chunks(BLOCK)
                .zip(qs.chunks_mut(BLOCK))
                .zip(scales.iter_mut().zip(sums.iter_mut()))
                .for_each(|((src, dst), (d, s))| (*d, *s) = quantize_block(src, dst));
        }
        out.scaled_sums = out.scales.iter().zip(&out.sums).map(|(&d, &s)| d * s as f32).collect();
        out
    }

    /// Number of rows.
    #[cfg(test)]
    pub fn rows(&self) -> usize {
        self.qs.len().checked_div(self.cols).unwrap_or(0)
    }

    /// The quantized values of row `r`.
    pub fn row(&self, r: usize) -> &[i8] {
        &self.qs[r * self.cols..(r + 1) * self.cols]
    }

    /// The block scales of row `r`.
    pub fn row_scales(&self, r: usize) -> &[f32] {
        let nb = self.cols / BLOCK;
        &self.scales[r * nb..(r + 1) * nb]
    }

    /// The block sums of row `r`.
    pub fn row_sums(&self, r: usize) -> &[i32] {
        let nb = self.cols / BLOCK;
        &self.sums[r * nb..(r + 1) * nb]
    }

    /// The `scale * sum` of each block of row `r`.
    pub fn row_scaled_sums(&self, r: usize) -> &[f32] {
        let nb = self.cols / BLOCK;
        &self.scaled_sums[r * nb..(r + 1) * nb]
    }
}

/// Quantizes one block; returns its scale and the sum of its quantized values.
fn quantize_block(src: &[f32], dst: &mut [i8]) -> (f32, i32) {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        // Non-finite activations propagate as NaN so that the logits check catches them.
        dst.fill(0);
        return (if amax == 0.0 { 0.0 } else { f32::NAN }, 0);
    }
    let d = amax / 127.0;
    let inv = 1.0 / d;
    let mut sum = 0i32;
    for (q, &v) in dst.iter_mut().zip(src) {
        let r = super::round_clamped(v * inv, -127.0, 127.0) as i8;
        sum += r as i32;
        *q = r;
    }
    (d, sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let q = QuantizedRows::quantize(&x, 64);
        assert_eq!(q.rows(), 2);
        for (b, chunk) in x.chunks(BLOCK).enumerate() {
            let d = q.scales[b];
            let mut sum = 0;
            for (i, &v) in chunk.iter().enumerate() {
                let qv = q.qs[b * BLOCK + i];
                sum += qv as i32;
                assert!((qv as f32 * d - v).abs() <= d * 0.5 + 1e-6);
            }
            assert_eq!(sum, q.sums[b]);
        }
    }

    #[test]
    fn zero_and_non_finite_blocks() {
        let mut x = vec![0f32; 64];
        x[40] = f32::INFINITY;
        let q = QuantizedRows::quantize(&x, 64);
        assert_eq!(q.scales[0], 0.0);
        assert!(q.scales[1].is_nan());
    }
}
