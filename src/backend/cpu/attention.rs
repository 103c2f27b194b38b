//! Attention of batch rows over keys and values in the paged pool's [`KvStore`].
//!
//! One task is a tile of consecutive rows of one sequence (a prompt chunk, or one decoding
//! token) and one key/value head: each block of cached keys and values is converted once
//! for the whole tile (an 8-bit pool's are read in place, [`super::attention_q8`]), and the
//! query heads of the rows that see the same positions are scored and added together, each
//! key and value vector loaded once for several of them. Keys are transposed per block so
//! that 16 positions are scored at once in vector lanes. Scores
//! live in a buffer of the row's context length: no `[heads, n, T]` matrix is formed, so a
//! long prompt needs memory linear in its length.
//!
//! A row's arithmetic is the same whatever tile it is in, whatever else the batch holds
//! and however its prompt was chunked: positions are visited in order and every sum has a
//! fixed shape, so results are bit-identical (batch invariance).

use rayon::prelude::*;

mod loops;
mod quantized;

pub use loops::exp_neg;
use loops::{group_axpys_loops, group_dots_loops, lane_axpys, lane_dots, softmax, LANES};

use super::kv_store::{KvStore, Part};
use crate::kv::{BlockId, KvDType};

/// What one row attends to: the first `len` positions of a sequence's blocks.
pub struct AttnRow<'a> {
    /// The sequence's blocks.
    pub blocks: &'a [BlockId],
    /// Positions visible to the row (its own included).
    pub len: usize,
}

/// Work below which attention stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// Rows per tile at most.
const TILE: usize = 16;

/// `q: [rows, heads * head_dim]` (rotated) -> `[rows, heads * head_dim]`, each row over its
/// sequence's cached positions in `layer`, written into `out`'s buffer.
pub fn attend_rows(pool: &KvStore, layer: usize, q: &[f32], rows: &[AttnRow], heads: usize, out: Vec<f32>) -> Vec<f32> {
    let l = pool.layout();
    let group = heads / l.kv_heads.max(1);
    let width = group * l.head_dim;
    // Tiles: runs of consecutive rows of the same sequence.
    let mut tiles: Vec<(usize, usize)> = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        match tiles.last_mut() {
            Some((start, end)) if *end == r && r - *start < TILE && std::ptr::eq(rows[*start].blocks, row.blocks) => {
                *end += 1
            }
            _ => tiles.push((r, r + 1)),
        }
    }
    let tasks: Vec<(usize, usize, usize)> = tiles
        .iter()
        .flat_map(|&(a, b)| (0..l.kv_heads).map(move |kv| (a, b, kv)))
        .collect();
    let run = |&(a, b, kv): &(usize, usize, usize)| {
        let t = Tile {
            pool,
            layer,
            kv,
            rows: &rows[a..b],
            q: &q[a * heads * l.head_dim..b * heads * l.head_dim],
            heads,
        };
        tile_attend(&t)
    };
    let work: usize = rows.iter().map(|r| r.len).sum::<usize>() * heads * l.head_dim;
    let outs: Vec<Vec<f32>> = match work >= PARALLEL_WORK {
        true => tasks.par_iter().map(run).collect(),
        false => tasks.iter().map(run).collect(),
    };
    let mut out = out;
    out.clear();
    out.resize(q.len(), 0.0);
    for (&(a, _, kv), o) in tasks.iter().zip(outs) {
        for (i, part) in o.chunks(width).enumerate() {
            let at = (a + i) * heads * l.head_dim + kv * width;
            out[at..at + width].copy_from_slice(part);
        }
    }
    out
}

/// Rows of one sequence and one KV head of one layer.
struct Tile<'a> {
    pool: &'a KvStore,
    layer: usize,
    kv: usize,
    rows: &'a [AttnRow<'a>],
    /// The rows' queries, `[rows, heads * head_dim]`.
    q: &'a [f32],
    heads: usize,
}

/// The tile's output `[rows, group * head_dim]`.
fn tile_attend(t: &Tile) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { tile_avx512(t) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { tile_avx2(t) };
        }
    }
    tile_body(t, Kernels::default())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(t: &Tile) -> Vec<f32> {
    let l = t.pool.layout();
    let group = t.heads / l.kv_heads.max(1);
    // An f16 pool is read in place (`paged_f16`) where its kernels cover the shape.
    let fits = t.pool.dtype() == KvDType::F16 && (2..=4).contains(&group) && l.head_dim.is_multiple_of(LANES);
    let kernels = Kernels {
        f16_in_place: if fits { Avx512::detect() } else { None },
        avx2: Avx2Fma::detect(),
    };
    tile_body(t, kernels)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(t: &Tile) -> Vec<f32> {
    let kernels = Kernels {
        f16_in_place: None,
        avx2: Avx2Fma::detect(),
    };
    tile_body(t, kernels)
}

#[cfg(target_arch = "x86_64")]
use super::{attention_avx2::Avx2Fma, attention_f16::Avx512};

/// Never present off x86: the in-place kernels do not exist there.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Avx512 {}

/// Never present off x86: the AVX2 kernels do not exist there.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy)]
enum Avx2Fma {}

/// The kernels a tile may use beside the generic loops, each with its proof of the CPU's
/// support (none: the loops alone, the reference).
#[derive(Clone, Copy, Default)]
struct Kernels {
    /// Read an f16 pool's blocks in place with AVX-512 instead of converting them.
    f16_in_place: Option<Avx512>,
    /// Score and add converted blocks with the AVX2 kernels ([`super::attention_avx2`]).
    avx2: Option<Avx2Fma>,
}

/// [`group_dots`] on a block's f16 bits.
#[inline(always)]
fn dots_in_place(cpu: Avx512, group: usize, qr: &[f32], kt: &[u16], stride: usize, out: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    super::attention_f16::dots(cpu, group, qr, kt, stride, out);
    #[cfg(not(target_arch = "x86_64"))]
    match cpu {}
}

/// [`group_axpys`] on a block's f16 bits.
#[inline(always)]
fn axpys_in_place(cpu: Avx512, group: usize, scores: (&[f32], usize, usize), m: usize, v: &[u16], orow: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    super::attention_f16::axpys(cpu, group, scores, m, v, orow);
    #[cfg(not(target_arch = "x86_64"))]
    match cpu {}
}

/// What every part of a tile's attention uses: the shapes, and the blocks its longest row
/// reads.
struct TileShape<'a> {
    d: usize,
    bs: usize,
    /// Positions a transposed key block holds per dimension.
    padded: usize,
    /// Query heads per KV head.
    group: usize,
    /// A row's query and output width for the KV head, `group * d`.
    width: usize,
    scale: f32,
    max_len: usize,
    blocks: &'a [BlockId],
}

impl<'a> TileShape<'a> {
    /// `None` for a tile without rows.
    #[inline(always)]
    fn of(t: &Tile<'a>) -> Option<Self> {
        let l = t.pool.layout();
        let group = t.heads / l.kv_heads.max(1);
        let max_len = t.rows.iter().map(|r| r.len).max().unwrap_or(0);
        let first = t.rows.first()?;
        Some(Self {
            d: l.head_dim,
            bs: l.block_size,
            padded: l.padded(),
            group,
            width: group * l.head_dim,
            scale: 1.0 / (l.head_dim as f32).sqrt(),
            max_len,
            blocks: &first.blocks[..max_len.div_ceil(l.block_size)],
        })
    }

    /// Positions of block `j` the longest row reads.
    #[inline(always)]
    fn count(&self, j: usize) -> usize {
        self.bs.min(self.max_len - j * self.bs)
    }
}

/// How a block's keys are read.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// An f16 pool's bits, in place.
    Bits(Avx512, &'a [u16]),
    /// Converted to f32 (or an f32 pool's).
    Floats(&'a [f32]),
}

/// Scores, softmax and the weighted sum of values in plain loops that the compiler
/// vectorises for the caller's target features (closures and library calls would not be),
/// or the [`Kernels`] given.
#[inline(always)]
fn tile_body(t: &Tile, kernels: Kernels) -> Vec<f32> {
    let Some(s) = TileShape::of(t) else {
        return Vec::new();
    };
    if t.pool.dtype() == KvDType::Q8_0 {
        return quantized::tile_q8(t, &s, kernels.avx2);
    }
    let mut scores = score_blocks(t, &s, kernels);
    softmax_rows(t.rows, &mut scores);
    add_value_blocks(t, &s, kernels, &scores)
}

/// Every row's scaled scores `[group, len]` against an f16 or f32 pool's keys.
#[inline(always)]
fn score_blocks(t: &Tile, s: &TileShape, kernels: Kernels) -> Vec<Vec<f32>> {
    let mut scores: Vec<Vec<f32>> = t.rows.iter().map(|r| vec![0f32; s.group * r.len]).collect();
    let mut raw = vec![0f32; s.padded * s.d];
    let mut accs = vec![[0f32; LANES]; t.rows.len() * s.group];
    // Every row's query vectors, row by row: a run of rows is a slice of it.
    let queries: Vec<&[f32]> = (0..t.rows.len() * s.group)
        .map(|k| &t.q[(k / s.group) * t.heads * s.d + t.kv * s.width + (k % s.group) * s.d..][..s.d])
        .collect();
    let part = (t.layer, Part::Keys);
    for (j, &block) in s.blocks.iter().enumerate() {
        if let Some(&next) = s.blocks.get(j + 1) {
            t.pool.prefetch_head_block(part, next, t.kv);
        }
        let n = s.count(j);
        let bits = kernels
            .f16_in_place
            .and_then(|cpu| Some((cpu, t.pool.head_block_bits(part, block, t.kv, n)?)));
        let keys = match bits {
            Some((cpu, kb)) => Keys::Bits(cpu, kb),
            None => Keys::Floats(t.pool.head_block(part, block, t.kv, n, &mut raw)),
        };
        match keys {
            Keys::Floats(kt) if (2..=4).contains(&s.group) => {
                score_runs(t, s, j, (kt, kernels.avx2), &queries, &mut accs, &mut scores)
            }
            _ => score_rows(t, s, j, keys, &mut accs, &mut scores),
        }
    }
    scores
}

/// Scores block `j` (keys `kt` in f32) for every run of consecutive rows that sees each 16
/// positions, all the run's query vectors in one [`batch_dots`].
#[inline(always)]
fn score_runs(
    t: &Tile,
    s: &TileShape,
    j: usize,
    (kt, avx2): (&[f32], Option<Avx2Fma>),
    queries: &[&[f32]],
    accs: &mut [[f32; LANES]],
    scores: &mut [Vec<f32>],
) {
    let g = s.group;
    let seen = |ri: usize, c: usize| visible(&t.rows[ri], j, s.bs).filter(|&m| m > c * LANES);
    for c in 0..s.count(j).div_ceil(LANES) {
        let mut a = 0;
        while a < t.rows.len() {
            if seen(a, c).is_none() {
                a += 1;
                continue;
            }
            let b = (a..t.rows.len())
                .find(|&r| seen(r, c).is_none())
                .unwrap_or(t.rows.len());
            batch_dots(
                avx2,
                &queries[a * g..b * g],
                (&kt[c * LANES..], s.padded),
                &mut accs[a * g..b * g],
            );
            for ri in a..b {
                let (len, m) = (t.rows[ri].len, seen(ri, c).unwrap_or(0));
                let at = j * s.bs + c * LANES;
                store_scores(
                    &accs[ri * g..(ri + 1) * g],
                    (&mut scores[ri], len),
                    at,
                    (m - c * LANES).min(LANES),
                    s.scale,
                );
            }
            a = b;
        }
    }
}

/// Scores block `j` row by row: an f16 block in place, or a group size the batched kernels
/// do not take with [`lane_dots`].
#[inline(always)]
fn score_rows(t: &Tile, s: &TileShape, j: usize, keys: Keys, accs: &mut [[f32; LANES]], scores: &mut [Vec<f32>]) {
    let (d, accs) = (s.d, &mut accs[..s.group]);
    for (ri, row) in t.rows.iter().enumerate() {
        let Some(m) = visible(row, j, s.bs) else { continue };
        let qr = &t.q[ri * t.heads * d + t.kv * s.width..][..s.width];
        for c in 0..m.div_ceil(LANES) {
            match keys {
                Keys::Bits(cpu, kb) => dots_in_place(cpu, s.group, qr, &kb[c * LANES..], s.padded, accs),
                Keys::Floats(kt) => {
                    for (g, acc) in accs.iter_mut().enumerate() {
                        *acc = lane_dots(&qr[g * d..(g + 1) * d], &kt[c * LANES..], s.padded);
                    }
                }
            }
            let at = j * s.bs + c * LANES;
            store_scores(
                accs,
                (&mut scores[ri], row.len),
                at,
                (m - c * LANES).min(LANES),
                s.scale,
            );
        }
    }
}

/// The rows' outputs `[rows, group * d]`: each block's values of an f16 or f32 pool added
/// with the rows' weights.
#[inline(always)]
fn add_value_blocks(t: &Tile, s: &TileShape, kernels: Kernels, scores: &[Vec<f32>]) -> Vec<f32> {
    let mut out = vec![0f32; t.rows.len() * s.width];
    let mut raw = vec![0f32; s.padded * s.d];
    let mut runs = (Vec::new(), Vec::new());
    let part = (t.layer, Part::Values);
    for (j, &block) in s.blocks.iter().enumerate() {
        if let Some(&next) = s.blocks.get(j + 1) {
            t.pool.prefetch_head_block(part, next, t.kv);
        }
        let n = s.count(j);
        let bits = kernels
            .f16_in_place
            .and_then(|cpu| Some((cpu, t.pool.head_block_bits(part, block, t.kv, n)?)));
        let Some((cpu, vb)) = bits else {
            let values = t.pool.head_block(part, block, t.kv, n, &mut raw);
            add_values(t, s, j, (values, kernels.avx2), (scores, &mut runs), &mut out);
            continue;
        };
        for (ri, row) in t.rows.iter().enumerate() {
            let Some(m) = visible(row, j, s.bs) else { continue };
            let orow = &mut out[ri * s.width..(ri + 1) * s.width];
            axpys_in_place(cpu, s.group, (&scores[ri], row.len, j * s.bs), m, vb, orow);
        }
    }
    out
}

/// The weights and output offsets of a run of rows' query heads, kept between blocks.
type Runs<'s> = (Vec<&'s [f32]>, Vec<usize>);

/// Adds block `j`'s values (f32, `[n, d]`) to the rows' outputs with their weights: each run
/// of consecutive rows that sees the same positions in one [`batch_axpys`] (groups of 2 to
/// 4 heads), other group sizes row by row with [`lane_axpys`].
#[inline(always)]
fn add_values<'s>(
    t: &Tile,
    s: &TileShape,
    j: usize,
    (values, avx2): (&[f32], Option<Avx2Fma>),
    (scores, runs): (&'s [Vec<f32>], &mut Runs<'s>),
    out: &mut [f32],
) {
    let (g, d) = (s.group, s.d);
    let seen = |ri: usize| visible(&t.rows[ri], j, s.bs);
    let mut a = 0;
    while a < t.rows.len() {
        let Some(m) = seen(a) else {
            a += 1;
            continue;
        };
        let b = (a..t.rows.len()).find(|&r| seen(r) != Some(m)).unwrap_or(t.rows.len());
        let (ws, at) = (&mut runs.0, &mut runs.1);
        ws.clear();
        at.clear();
        for ri in a..b {
            for h in 0..g {
                ws.push(&scores[ri][h * t.rows[ri].len + j * s.bs..][..m]);
                at.push(ri * s.width + h * d);
            }
        }
        if (2..=4).contains(&g) {
            batch_axpys(avx2, ws, (values, d), (out, at));
        } else {
            for (w, &o) in ws.iter().zip(at.iter()) {
                lane_axpys(w, values, &mut out[o..o + d]);
            }
        }
        a = b;
    }
}

/// Softmax over each head's scores of each row (`[heads, len]`).
#[inline(always)]
fn softmax_rows(rows: &[AttnRow], scores: &mut [Vec<f32>]) {
    for (row, sc) in rows.iter().zip(scores.iter_mut()) {
        for s in sc.chunks_mut(row.len.max(1)) {
            softmax(s);
        }
    }
}

/// Writes the first `valid` of each head's 16 dot products, scaled, to the row's scores
/// (`[heads, len]`) from position `at`.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn store_scores(accs: &[[f32; LANES]], (scores, len): (&mut [f32], usize), at: usize, valid: usize, scale: f32) {
    for (g, acc) in accs.iter().enumerate() {
        let dst = &mut scores[g * len + at..][..valid];
        for s in 0..valid {
            dst[s] = acc[s] * scale;
        }
    }
}

/// Scores of query vectors `qs` (each `d` wide) against 16 positions of transposed keys
/// (`kt[i * stride..]`): per vector [`group_dots_loops`]'s chain, by the AVX2 kernel where
/// given and the shapes fit ([`super::attention_avx2`], the same bits).
#[inline(always)]
fn batch_dots(avx2: Option<Avx2Fma>, qs: &[&[f32]], (kt, stride): (&[f32], usize), out: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    if avx2.is_some_and(|cpu| super::attention_avx2::dots(cpu, qs, (kt, stride), out)) {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    for (q, o) in qs.iter().zip(out.iter_mut()) {
        group_dots_loops::<1>(q, kt, stride, std::slice::from_mut(o));
    }
}

/// For every weight vector `ws[n]` (all `m` long): `out[at[n]..][..d]` gains `sum_s ws[n][s]
/// * v[s * d..][..d]`: per vector [`group_axpys_loops`]' chains, by the AVX2 kernel where
/// given and the shapes fit ([`super::attention_avx2`], the same bits).
#[inline(always)]
fn batch_axpys(avx2: Option<Avx2Fma>, ws: &[&[f32]], (v, d): (&[f32], usize), (out, at): (&mut [f32], &[usize])) {
    #[cfg(target_arch = "x86_64")]
    if avx2.is_some_and(|cpu| super::attention_avx2::axpys(cpu, ws, (v, d), (out, at))) {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = avx2;
    for (w, &o) in ws.iter().zip(at) {
        group_axpys_loops::<1>((w, w.len(), 0), w.len(), v, &mut out[o..o + d]);
    }
}

/// How many positions of block `j` (blocks of `bs`) `row` sees; `None` for none.
#[inline(always)]
fn visible(row: &AttnRow, j: usize, bs: usize) -> Option<usize> {
    row.len.checked_sub(j * bs).filter(|&m| m > 0).map(|m| m.min(bs))
}

#[cfg(test)]
mod tests;
