//! A tile's softmax chunk by chunk of positions (the online softmax of flash attention): each
//! chunk's scores are turned into `exp(score - max so far)` where they lie, the outputs and
//! sums gathered so far are scaled down when a later chunk raises the maximum, and the
//! outputs are divided by the sums at the end. A chunk's scores (rows x heads x positions)
//! stay in the core's L2 cache however long the context: the whole `[heads, len]` scores of
//! 32 rows at 16k positions were 8 MB a tile, spilled to memory whenever the L3 cache was
//! shared.
//!
//! Chunks start at fixed positions (multiples of [`CHUNK_POSITIONS`]), so a row's arithmetic
//! does not depend on the tile it is in: batch invariance holds as before.

use super::loops::{exp_neg, LANES};
use super::{AttnRow, TileShape};

/// Positions one chunk spans at most (whole blocks): 32 rows x 4 heads (the 1B's and 3B's
/// groups are 4 and 3) x 1024 positions x 4 bytes = 512 KiB of scores.
const CHUNK_POSITIONS: usize = 1024;

/// A run of blocks that a tile's rows are scored against and add together.
pub(super) struct Chunk {
    /// The first block.
    pub first: usize,
    /// One past the last block.
    pub end: usize,
    /// Positions of the chunk that each row sees: how many of each head's scores it uses.
    pub seen: Vec<usize>,
}

impl Chunk {
    /// The tile's chunks, in order (blocks of `s.bs` positions, whole blocks a chunk).
    #[inline(always)]
    pub fn all<'a>(rows: &'a [AttnRow], s: &TileShape) -> impl Iterator<Item = Chunk> + 'a {
        let (bs, blocks) = (s.bs.max(1), s.blocks.len());
        let per = (CHUNK_POSITIONS / bs).max(1);
        (0..blocks).step_by(per).map(move |first| {
            let end = (first + per).min(blocks);
            let seen = rows
                .iter()
                .map(|r| r.len.min(end * bs).saturating_sub(first * bs))
                .collect();
            Chunk { first, end, seen }
        })
    }

    /// Where block `j`'s first position lies in a head's scores.
    #[inline(always)]
    pub fn at(&self, j: usize, bs: usize) -> usize {
        (j - self.first) * bs
    }

    /// The chunk's scores for its rows' `group` heads, zeroed (the buffer kept between
    /// chunks).
    #[inline(always)]
    pub fn prepare(&self, group: usize, scores: &mut Scores) {
        let len = self.seen.iter().copied().max().unwrap_or(0);
        (scores.len, scores.group) = (len, group);
        scores.buf.clear();
        scores.buf.resize(self.seen.len() * group * len, 0.0);
    }
}

/// A chunk's scores of a tile's rows, `[rows, group, len]`, `len` the most positions a
/// row sees (each row's first [`Chunk::seen`] of them used): the scores of row `r`'s head
/// `h` lie from `(r * group + h) * len`.
#[derive(Default)]
pub(super) struct Scores {
    buf: Vec<f32>,
    /// Positions a head's scores span.
    pub len: usize,
    group: usize,
}

impl Scores {
    /// Row `r`'s scores, `[group, len]`.
    #[inline(always)]
    pub fn row(&self, r: usize) -> &[f32] {
        &self.buf[r * self.group * self.len..][..self.group * self.len]
    }

    /// Row `r`'s scores, `[group, len]`, to write.
    #[inline(always)]
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.buf[r * self.group * self.len..][..self.group * self.len]
    }

    /// Rows `rows`' scores, `[rows, group, len]`, to write.
    #[inline(always)]
    pub fn rows_mut(&mut self, rows: std::ops::Range<usize>) -> &mut [f32] {
        let per = self.group * self.len;
        &mut self.buf[rows.start * per..rows.end * per]
    }
}

/// Per row and head: the largest score so far and the sum of `exp(score - max)`.
pub(super) struct Softmax {
    max: Vec<f32>,
    sum: Vec<f32>,
    group: usize,
    d: usize,
}

impl Softmax {
    /// Nothing seen yet, for `rows` rows of `group` heads of `d` dimensions.
    #[inline(always)]
    pub fn new(rows: usize, group: usize, d: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows * group],
            sum: vec![0.0; rows * group],
            group,
            d,
        }
    }

    /// Turns a chunk's scores into `exp(score - max)` in place, the max taken over every
    /// chunk so far; where this chunk raises it, the head's output (`out: [rows, group * d]`)
    /// and sum are first scaled by `exp(old max - new max)`.
    #[inline(always)]
    pub fn update(&mut self, chunk: &Chunk, scores: &mut Scores, out: &mut [f32]) {
        let (g, d, len) = (self.group, self.d, scores.len);
        for (ri, &seen) in chunk.seen.iter().enumerate() {
            if seen == 0 {
                continue;
            }
            for (h, s) in scores.row_mut(ri).chunks_exact_mut(len).enumerate() {
                let s = &mut s[..seen];
                let k = ri * g + h;
                let high = lane_max(s);
                let old = self.max[k];
                // A comparison, not `f32::max`: NaN scores leave the max as it was (and
                // reach the output through their own exponentials).
                let new = if high > old { high } else { old };
                if new > old {
                    let r = exp_neg(old - new);
                    self.sum[k] *= r;
                    for o in &mut out[k * d..(k + 1) * d] {
                        *o *= r;
                    }
                    self.max[k] = new;
                }
                self.sum[k] += exp_sum(s, self.max[k]);
            }
        }
    }

    /// Divides each head's output by its sum: the softmax's weights, applied.
    #[inline(always)]
    pub fn finish(&self, out: &mut [f32]) {
        for (o, &sum) in out.chunks_exact_mut(self.d.max(1)).zip(&self.sum) {
            // A head that saw no position (a row of length 0) keeps its zeros.
            let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
            for v in o {
                *v *= inv;
            }
        }
    }
}

/// The largest of `s` (NaN skipped), lane by lane and then across the lanes.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn lane_max(s: &[f32]) -> f32 {
    // Whole vectors, then the rest: a comparison (not `f32::max`, whose NaN rule keeps the
    // loop scalar) that skips NaN as `max` does.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut whole = s.chunks_exact(LANES);
    for c in &mut whole {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    for (l, &v) in whole.remainder().iter().enumerate() {
        lanes[l] = if v > lanes[l] { v } else { lanes[l] };
    }
    lanes.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

/// `s[i] = exp(s[i] - max)` in place; their sum, lane by lane over the positions in order
/// and then across the lanes in a fixed order.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn exp_sum(s: &mut [f32], max: f32) -> f32 {
    // The exponentials first, then their sums in a loop of their own: in one loop with the
    // exponentials the compiler kept the sums in memory, a store and a load on every step's
    // path (the same additions in the same order either way).
    for v in s.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let mut sums = [0f32; LANES];
    let mut whole = s.chunks_exact(LANES);
    for c in &mut whole {
        for l in 0..LANES {
            sums[l] += c[l];
        }
    }
    for (l, v) in whole.remainder().iter().enumerate() {
        sums[l] += *v;
    }
    sums.iter().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row and head of one dimension through chunks by hand (values added as the
    /// engine adds them): a maximum that rises by more than `exp_neg`'s range (87), a chunk
    /// the row does not see, a lower chunk after; against the softmax in f64.
    #[test]
    fn chunked_softmax_equals_the_whole_one() {
        let chunks: [&[f32]; 4] = [&[0.0, 1.0, 2.0], &[100.0, 99.0], &[], &[50.0, 99.5]];
        let values = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
        let (mut softmax, mut out) = (Softmax::new(1, 1, 1), [0f32]);
        let mut v = values.iter();
        for (i, c) in chunks.iter().enumerate() {
            let chunk = Chunk {
                first: i,
                end: i + 1,
                seen: vec![c.len()],
            };
            let mut scores = Scores::default();
            chunk.prepare(1, &mut scores);
            scores.row_mut(0).copy_from_slice(c);
            softmax.update(&chunk, &mut scores, &mut out);
            for &e in scores.row(0) {
                out[0] += e * v.next().copied().unwrap_or(0.0);
            }
        }
        softmax.finish(&mut out);
        let all: Vec<f64> = chunks.iter().flat_map(|c| c.iter().map(|&s| f64::from(s))).collect();
        let max = all.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = all.iter().map(|s| (s - max).exp()).sum();
        let want: f64 = all
            .iter()
            .zip(values)
            .map(|(s, v)| (s - max).exp() / sum * f64::from(v))
            .sum();
        assert!((f64::from(out[0]) - want).abs() < 1e-5, "{} vs {want}", out[0]);
    }

    /// A row that saw no position keeps a zero output (no division by a zero sum).
    #[test]
    fn a_head_without_positions_stays_zero() {
        let (softmax, mut out) = (Softmax::new(1, 2, 2), [0f32; 4]);
        softmax.finish(&mut out);
        assert_eq!(out, [0.0; 4]);
    }
}
