//! Activations quantized to 8 bits, the form the integer kernels consume.
//!
//! Each span of values `x` (32 for the 8-bit weights: llama.cpp's `Q8_0` activation format
//! with an f32 scale; a whole super-block of up to 256 for the 4-bit ones, as llama.cpp's
//! `Q8_K`) gets `d = max|x| / 127` and `q = round(x / d)` in `[-127, 127]`; every block of
//! 32 remembers `sum(q)` (the packed formats need it to undo their offsets and minimums).
//! One scale per super-block lets the 4-bit kernel add its sub-blocks' integer sums before
//! any float work.

use rayon::prelude::*;

/// Values per block.
pub const BLOCK: usize = 32;

/// `rows` activation rows of `cols` values each (`cols` a multiple of [`BLOCK`]).
#[derive(Debug, Clone, Default)]
pub struct QuantizedRows {
    /// Row length.
    pub cols: usize,
    /// Values per scale: [`BLOCK`] or a multiple of it that divides `cols`.
    pub span: usize,
    /// Quantized values, row-major `[rows, cols]`.
    pub qs: Vec<i8>,
    /// Block scales `[rows, cols / 32]` (each span's scale repeated for its blocks).
    pub scales: Vec<f32>,
    /// Block sums of `qs` `[rows, cols / 32]`.
    pub sums: Vec<i32>,
    /// `-128 * sum` per block: where the 8-bit kernel's integer sums start (its weights are
    /// stored offset by 128).
    pub offsets: Vec<i32>,
    /// `scale * sum` per block, as f32 (what the 4-bit kernels' minimum term multiplies).
    pub scaled_sums: Vec<f32>,
    /// Per span, the block sums two by two as 16-bit halves of one `i32` (low: block `2p`,
    /// high: block `2p + 1` of the span, or 0 past its end), `[rows, cols / span *
    /// pairs]` with `pairs = span / 64` rounded up. The
    /// 4-bit kernel multiplies them with its minimums in pairs (`vpdpwssd`). A sum is at
    /// most 32 * 127 in magnitude, so it fits 16 bits.
    pub pair_sums: Vec<i32>,
}

impl QuantizedRows {
    /// Quantizes `x: [rows, cols]` (row-major) with one scale per `span` values, spans in
    /// parallel when there are many. `span` is [`BLOCK`] or a multiple of it dividing `cols`
    /// (the caller's contract; see [`super::PackedWeight::matmul_many`]).
    #[cfg(test)]
    pub fn quantize(x: &[f32], cols: usize, span: usize) -> Self {
        Self::default().refill(x, cols, span)
    }

    /// [`Self::quantize`] into this value's buffers (no new allocation when they are long
    /// enough).
    pub fn refill(mut self, x: &[f32], cols: usize, span: usize) -> Self {
        debug_assert!(span.is_multiple_of(BLOCK) && cols.is_multiple_of(span) && x.len().is_multiple_of(cols));
        let blocks = x.len() / BLOCK;
        (self.cols, self.span) = (cols, span);
        self.qs.clear();
        self.qs.resize(x.len(), 0);
        self.scales.clear();
        self.scales.resize(blocks, 0.0);
        self.sums.clear();
        self.sums.resize(blocks, 0);
        let mut out = self;
        let per = span / BLOCK;
        let (qs, scales, sums) = (&mut out.qs, &mut out.scales, &mut out.sums);
        if x.len() >= 1 << 16 {
            x.par_chunks(span)
                .zip(qs.par_chunks_mut(span))
                .zip(scales.par_chunks_mut(per).zip(sums.par_chunks_mut(per)))
                .with_min_len(64 / per)
                .for_each(|((src, dst), (d, s))| quantize_span(src, dst, d, s));
        } else {
            x.chunks(span)
                .zip(qs.chunks_mut(span))
                .zip(scales.chunks_mut(per).zip(sums.chunks_mut(per)))
                .for_each(|((src, dst), (d, s))| quantize_span(src, dst, d, s));
        }
        out.offsets.clear();
        out.offsets.extend(out.sums.iter().map(|&s| -128 * s));
        out.scaled_sums.clear();
        out.scaled_sums
            .extend(out.scales.iter().zip(&out.sums).map(|(&d, &s)| d * s as f32));
        out.pair_sums.clear();
        out.pair_sums.extend(
            out.sums
                .chunks(per)
                .flat_map(|span| span.chunks(2).map(|p| pair(p[0], p.get(1).copied().unwrap_or(0)))),
        );
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

    /// The `-128 * sum` of each block of row `r`.
    pub fn row_offsets(&self, r: usize) -> &[i32] {
        let nb = self.cols / BLOCK;
        &self.offsets[r * nb..(r + 1) * nb]
    }

    /// The paired block sums of row `r`.
    pub fn row_pair_sums(&self, r: usize) -> &[i32] {
        let n = self
            .pair_sums
            .len()
            .checked_div(self.qs.len() / self.cols.max(1))
            .unwrap_or(0);
        &self.pair_sums[r * n..(r + 1) * n]
    }
}

/// Two block sums (each within 16 bits) as the low and high halves of one `i32`.
fn pair(lo: i32, hi: i32) -> i32 {
    (lo as i16 as u16 as u32 | ((hi as i16 as u16 as u32) << 16)) as i32
}

/// Quantizes one span with one scale, written to every block's entry of `scales`; the
/// sum of each block's quantized values goes to `sums`.
fn quantize_span(src: &[f32], dst: &mut [i8], scales: &mut [f32], sums: &mut [i32]) {
    let amax = src.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || !amax.is_finite() {
        // Non-finite activations propagate as NaN so that the logits check catches them.
        dst.fill(0);
        sums.fill(0);
        scales.fill(if amax == 0.0 { 0.0 } else { f32::NAN });
        return;
    }
    let d = amax / 127.0;
    let inv = 1.0 / d;
    scales.fill(d);
    for ((dst, src), sum) in dst.chunks_mut(BLOCK).zip(src.chunks(BLOCK)).zip(sums.iter_mut()) {
        *sum = 0;
        for (q, &v) in dst.iter_mut().zip(src) {
            let r = super::round_clamped(v * inv, -127.0, 127.0) as i8;
            *sum += r as i32;
            *q = r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_within_half_a_step() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let q = QuantizedRows::quantize(&x, 64, BLOCK);
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
        let q = QuantizedRows::quantize(&x, 64, BLOCK);
        assert_eq!(q.scales[0], 0.0);
        assert!(q.scales[1].is_nan());
    }

    #[test]
    fn spans_share_one_scale_and_pair_their_block_sums() {
        let x: Vec<f32> = (0..2 * 192)
            .map(|i| ((i * 53 % 97) as f32 - 48.0) / 5.0 * (1 + i % 3) as f32)
            .collect();
        let q = QuantizedRows::quantize(&x, 192, 96);
        for (s, span) in x.chunks(96).enumerate() {
            let d = span.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            for b in 0..3 {
                assert_eq!(q.scales[s * 3 + b], d);
                let blk = &q.qs[s * 96 + b * BLOCK..s * 96 + (b + 1) * BLOCK];
                assert_eq!(q.sums[s * 3 + b], blk.iter().map(|&v| v as i32).sum::<i32>());
            }
            for (i, &v) in span.iter().enumerate() {
                assert!((q.qs[s * 96 + i] as f32 * d - v).abs() <= d * 0.5 + 1e-5);
            }
        }
        // Three blocks per span: two pairs, the second with an empty high half.
        assert_eq!(q.row_pair_sums(1).len(), 4);
        let lo = |p: i32| p as i16 as i32;
        let hi = |p: i32| (p >> 16) as i16 as i32;
        for r in 0..2 {
            for s in 0..2 {
                let ps = &q.row_pair_sums(r)[s * 2..s * 2 + 2];
                let sums = &q.row_sums(r)[s * 3..s * 3 + 3];
                assert_eq!((lo(ps[0]), hi(ps[0])), (sums[0], sums[1]));
                assert_eq!((lo(ps[1]), hi(ps[1])), (sums[2], 0));
            }
        }
    }
}
