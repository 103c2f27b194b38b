//! A tile's attention over a q8_0 pool (or q8_0 keys and 4-bit values): keys scored with
//! integer dot products ([`attention_q8`]), a block's keys for all the tile's rows in one
//! call (a lone row's, a chunk's in one call); values converted once into bf16 pairs for the
//! tile's rows, or for a lone row pair by pair in registers a chunk per call, or read from
//! their 8-bit form where the CPU lacks those kernels. 4-bit values are unpacked into 8-bit
//! integers a chunk at a time and go the same way; being rotated ([`rotate`]), the tile's
//! outputs are rotated back at its end.

use super::super::attention_q8::pairs::{self, NibbleBlock, Pairs};
use super::super::attention_q8::{self, Axpys, KeyTile, QuantQuery, RowDots, ScoreOut, ValueBlock};
use super::super::kv_store::{rotate, Part};
use super::{prefetch_ahead, visible, Chunk, Scores, Tile, TileShape, LANES};
use crate::kv::KvDType;

/// What a tile over a q8_0 pool keeps from chunk to chunk: the kernels, the rows' quantized
/// queries and the buffers.
pub(super) struct Parts {
    dots: RowDots,
    axpys: Axpys,
    queries: Vec<QuantQuery>,
    accs: Vec<[f32; LANES]>,
    scratch: Vec<f32>,
    /// Each row's sums of a chunk's values, `[rows, group * d]` (rows read in place).
    sums: Vec<f32>,
    pairs: Pairs,
    /// Whether a lone row's values go through [`Pairs::add_lone`] ([`pairs::converts_fast`]).
    lone_pairs: bool,
    q8_group: usize,
    /// 4-bit values unpacked, a chunk at a time.
    unpacked: Unpacked,
}

/// A chunk's 4-bit values as 8-bit integers and their scales.
#[derive(Default)]
struct Unpacked {
    /// Whether the pool's values are 4-bit (and rotated).
    four_bit: bool,
    q: Vec<i8>,
    scales: Vec<u16>,
}

/// The chunk's value blocks as 8-bit integers, with the positions each holds for the
/// tile's longest row: read in place from a q8_0 pool, unpacked into `buf` from 4-bit
/// values; `None` where the pool holds neither.
#[inline(always)]
fn chunk_values<'a>(
    buf: &'a mut Unpacked,
    t: &'a Tile,
    s: &TileShape,
    (chunk, group): (&Chunk, usize),
) -> Option<Vec<(ValueBlock<'a>, usize)>> {
    let range = chunk.first..chunk.end;
    if !buf.four_bit {
        return value_blocks(t, s, range);
    }
    let positions: usize = range.clone().map(|j| s.count(j)).sum();
    buf.q.resize(positions * s.d, 0);
    buf.scales.resize(positions * s.d / group, 0);
    let mut at = 0;
    for j in range.clone() {
        let n = s.count(j);
        let b = t.pool.q4_value_block(t.layer, s.blocks[j], t.kv, n)?;
        b.unpack(&mut buf.q[at * s.d..(at + n) * s.d]);
        buf.scales[at * s.d / group..(at + n) * s.d / group].copy_from_slice(b.scales);
        at += n;
    }
    let (mut q, mut scales) = (&buf.q[..], &buf.scales[..]);
    let blocks = range.map(|j| {
        let n = s.count(j);
        let (bq, rest) = q.split_at(n * s.d);
        let (bs, rest_scales) = scales.split_at(n * s.d / group);
        (q, scales) = (rest, rest_scales);
        (
            ValueBlock {
                q: bq,
                scales: bs,
                group,
            },
            n,
        )
    });
    Some(blocks.collect())
}

/// The chunk's q8_0 key tiles with the positions each holds (one call a chunk, the store's
/// lookups inlined in its loop); `None` where the pool holds other keys.
#[inline(never)]
fn key_tiles<'a>(t: &Tile<'a>, s: &TileShape, chunk: &Chunk) -> Option<Vec<(KeyTile<'a>, usize)>> {
    each_block(chunk.first..chunk.end, |j| {
        t.pool.q8_key_tile(t.layer, s.blocks[j], t.kv).map(|k| (k, s.count(j)))
    })
}

/// The q8_0 value blocks of `range` with the positions each holds for the tile's longest
/// row (as [`key_tiles`]); `None` where the pool holds other values.
#[inline(never)]
fn value_blocks<'a>(
    t: &Tile<'a>,
    s: &TileShape,
    range: std::ops::Range<usize>,
) -> Option<Vec<(ValueBlock<'a>, usize)>> {
    each_block(range, |j| {
        let n = s.count(j);
        t.pool.q8_value_block(t.layer, s.blocks[j], t.kv, n).map(|v| (v, n))
    })
}

/// `f` of every block in `range`, in order; `None` where one is `None`. One allocation of
/// the range's length (collecting options grows the vector step by step, a tenth of a lone
/// row's attention at 4096 positions).
#[inline(always)]
fn each_block<T>(range: std::ops::Range<usize>, mut f: impl FnMut(usize) -> Option<T>) -> Option<Vec<T>> {
    let mut all = Vec::with_capacity(range.len());
    for j in range {
        all.push(f(j)?);
    }
    Some(all)
}

impl Parts {
    /// `Some` for a q8_0 pool, `None` for the others ([`super::blocks`]).
    #[inline(always)]
    pub fn new(t: &Tile, s: &TileShape) -> Option<Self> {
        let four_bit = match t.pool.dtype() {
            KvDType::Q8_0 => false,
            KvDType::Q8Q4 => true,
            KvDType::F16 | KvDType::F32 => return None,
        };
        let q8_group = t.pool.layout().q8_group().unwrap_or(s.d);
        Some(Self {
            dots: attention_q8::rows_kernel(),
            axpys: attention_q8::value_kernel(),
            queries: (0..t.rows.len())
                .map(|ri| QuantQuery::new(&t.q[ri * t.heads * s.d + t.kv * s.width..][..s.width], q8_group))
                .collect(),
            accs: vec![[0f32; LANES]; t.rows.len() * s.group],
            scratch: vec![0f32; attention_q8::value_scratch(s.bs, s.d, q8_group, s.group)],
            sums: vec![0f32; t.rows.len() * s.width],
            pairs: Pairs::default(),
            lone_pairs: pairs::converts_fast(),
            q8_group,
            unpacked: Unpacked {
                four_bit,
                ..Unpacked::default()
            },
        })
    }

    /// The tile's finished outputs `[rows, group * d]` back from the rotated coordinates
    /// of 4-bit values (each head's output is a sum of its rotated values).
    pub fn finish(&self, s: &TileShape, out: &mut [f32]) {
        if self.unpacked.four_bit {
            out.chunks_exact_mut(s.d).for_each(rotate);
        }
    }

    /// A lone row's scores against the chunk's keys in one call
    /// ([`attention_q8::lone_scores`]); `false` where it cannot be (then nothing was
    /// written).
    #[inline(always)]
    fn lone_scores(&mut self, t: &Tile, s: &TileShape, chunk: &Chunk, scores: &mut Scores) -> bool {
        let tiles = key_tiles(t, s, chunk);
        let (Some(tiles), Some(q)) = (tiles, self.queries.first()) else {
            return false;
        };
        let len = scores.len;
        attention_q8::lone_scores(q, s.group, &tiles, (scores.row_mut(0), len), s.scale)
    }

    /// A lone row's values over the chunk converted into bf16 pairs in registers
    /// ([`Pairs::add_lone`]); `false` where it cannot be (then nothing was added).
    #[inline(always)]
    fn add_lone(&mut self, t: &Tile, s: &TileShape, (chunk, scores): (&Chunk, &Scores), out: &mut [f32]) -> bool {
        let row = (scores.row(0), scores.len, 0);
        if self.unpacked.four_bit {
            if self.q8_group != pairs::NIBBLE_GROUP {
                return false;
            }
            let blocks = each_block(chunk.first..chunk.end, |j| {
                let n = s.count(j);
                let b = t.pool.q4_value_block(t.layer, s.blocks[j], t.kv, n)?;
                Some((
                    NibbleBlock {
                        q: b.q,
                        scales: b.scales,
                    },
                    n,
                ))
            });
            let Some(blocks) = blocks else { return false };
            return self
                .pairs
                .add_lone_nibbles(&blocks, s.d, row, s.group, &mut out[..s.width]);
        }
        let Some(blocks) = chunk_values(&mut self.unpacked, t, s, (chunk, self.q8_group)) else {
            return false;
        };
        self.pairs
            .add_lone(&blocks, (s.d, self.q8_group), row, s.group, &mut out[..s.width])
    }

    /// Every row's scaled scores against the chunk's keys, read in place: each 16
    /// positions' for the run of rows that sees some of them in one call.
    #[inline(always)]
    pub fn score(&mut self, t: &Tile, s: &TileShape, chunk: &Chunk, scores: &mut Scores) {
        if t.rows.len() == 1 && self.lone_scores(t, s, chunk, scores) {
            return;
        }
        let len = scores.len;
        for (j, &block) in s.blocks.iter().enumerate().take(chunk.end).skip(chunk.first) {
            prefetch_ahead(t, s, (t.layer, Part::Keys), j);
            let Some(tile) = t.pool.q8_key_tile(t.layer, block, t.kv) else {
                continue;
            };
            for c in 0..s.count(j).div_ceil(LANES) {
                let at = chunk.at(j, s.bs) + c * LANES;
                let sees = |&n: &usize| n > at;
                let (Some(lo), Some(hi)) = (chunk.seen.iter().position(sees), chunk.seen.iter().rposition(sees)) else {
                    continue;
                };
                let out = ScoreOut {
                    scores: scores.rows_mut(lo..hi + 1),
                    len,
                    at,
                    seen: &chunk.seen[lo..=hi],
                    scale: s.scale,
                };
                let partial = &mut self.accs[lo * s.group..(hi + 1) * s.group];
                (self.dots)(&self.queries[lo..=hi], tile, c * LANES, out, partial);
            }
        }
    }

    /// The rows' outputs `out: [rows, group * d]` gain the chunk's values with the rows'
    /// weights, each row's sum one chain over the chunk's positions from zero, added at the
    /// end: the chunk converted once into bf16 pairs for all the rows where the CPU has
    /// AVX-512 BF16 ([`attention_q8::pairs`]), else each block read in place row by row (the
    /// same bits).
    #[inline(always)]
    pub fn add_values(&mut self, t: &Tile, s: &TileShape, (chunk, scores): (&Chunk, &Scores), out: &mut [f32]) {
        let positions: usize = (chunk.first..chunk.end).map(|j| s.count(j)).sum();
        let shape = (s.d, self.q8_group);
        if t.rows.len() == 1 && self.lone_pairs && s.group <= 4 && self.add_lone(t, s, (chunk, scores), out) {
            return;
        }
        let Some(blocks) = chunk_values(&mut self.unpacked, t, s, (chunk, self.q8_group)) else {
            return;
        };
        if t.rows.len() > 1 && s.group <= 4 {
            if let Some(mut pairs) = self.pairs.start(positions, shape, s.bs) {
                for (j, &(vb, n)) in (chunk.first..).zip(&blocks) {
                    prefetch_ahead(t, s, (t.layer, Part::Values), j);
                    pairs.push(vb, n);
                }
                for (ri, &m) in chunk.seen.iter().enumerate().filter(|(_, &m)| m > 0) {
                    pairs.add_row(
                        (scores.row(ri), scores.len, 0),
                        m,
                        s.group,
                        &mut out[ri * s.width..][..s.width],
                    );
                }
                return;
            }
        }
        let sums = &mut self.sums[..t.rows.len() * s.width];
        sums.fill(0.0);
        for (j, &(vb, _)) in (chunk.first..).zip(&blocks) {
            prefetch_ahead(t, s, (t.layer, Part::Values), j);
            for (ri, row) in t.rows.iter().enumerate() {
                let Some(m) = visible(row, j, s.bs) else { continue };
                let part = ValueBlock {
                    q: &vb.q[..m * s.d],
                    scales: &vb.scales[..m * s.d / vb.group],
                    group: vb.group,
                };
                let sc = (scores.row(ri), scores.len, chunk.at(j, s.bs));
                (self.axpys)(sc, m, part, &mut sums[ri * s.width..][..s.width], &mut self.scratch);
            }
        }
        for (o, x) in out.iter_mut().zip(sums.iter()) {
            *o += x;
        }
    }
}
