//! A tile's attention over an f16 or f32 pool, block by block: scores, then values added
//! with the softmax's weights. Groups of 2 to 4 heads go through the batched kernels (runs of
//! rows that see the same positions at once); on AVX-512 a lone row reads an f16 pool in
//! place; other group sizes run row by row in the loops. With AVX-512, the blocks that every
//! row of a tile sees whole are converted a run at a time and each kernel call takes all of
//! the run for every row's heads, the outputs in registers from its first block to its last
//! (the same bits as a call a block).

use super::super::attention_q8::store_scores;
use super::super::kv_store::Part;
use super::loops::{lane_axpys, lane_dots, LANES};
use super::{
    axpys_in_place, batch_axpys, batch_axpys_blocks, batch_dots, batch_dots_blocks, dots_in_place, prefetch_ahead,
    visible, Avx512, Block, Chunk, Kernels, Scores, Tile, TileShape,
};

/// How a block's keys are scored.
enum Route<'a> {
    /// By the batched kernels, runs of rows at once (groups of 2 to 4 heads).
    Runs(Block<'a>),
    /// Row by row.
    Rows(Keys<'a>),
}

/// A block's keys read row by row.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// An f16 pool's bits, in place with AVX-512.
    Bits(Avx512, &'a [u16]),
    /// Converted to f32 (or an f32 pool's), for group sizes the batched kernels do not take.
    Floats(&'a [f32]),
}

/// An f16 pool's block read in place, and by which kernels.
enum InPlace<'a> {
    /// Row by row with AVX-512.
    Avx512(Avx512, &'a [u16]),
    /// By the batched AVX2 kernels.
    Avx2(&'a [u16]),
}

/// Asks for a later block of `part` ([`prefetch_ahead`], for runs of rows), and gives block
/// `j`'s bits where the kernels read it in place (`None`: it is to be converted, or the pool
/// is not f16).
#[inline(always)]
fn in_place<'a>(
    t: &Tile<'a>,
    s: &TileShape,
    kernels: Kernels,
    (part, j): ((usize, Part), usize),
) -> Option<InPlace<'a>> {
    // A lone row (a decoding step) reads an f16 pool faster without the hints (on the Zen
    // 4, one row at 32k: 50-54 ms a token against 64-79); a run of rows faster with them.
    if t.rows.len() > 1 {
        prefetch_ahead(t, s, part, j);
    }
    let block = *s.blocks.get(j)?;
    let bits = || t.pool.head_block_bits(part, block, t.kv, s.count(j));
    match (kernels.f16_in_place, kernels.halves) {
        (Some(cpu), _) => Some(InPlace::Avx512(cpu, bits()?)),
        (None, Some(_)) => Some(InPlace::Avx2(bits()?)),
        (None, None) => None,
    }
}

/// What a tile over an f16 or f32 pool keeps from chunk to chunk: every row's query vectors
/// and the buffers of a converted block and of the batched kernels' sums.
pub(super) struct Floats<'t> {
    /// Every row's query vectors, row by row: a run of rows is a slice of it.
    queries: Vec<&'t [f32]>,
    raw: Vec<f32>,
    /// A run of whole value blocks converted for [`Floats::add_whole_blocks`].
    run: Vec<f32>,
    accs: Vec<[f32; LANES]>,
}

/// Values converted at most for one [`Floats::add_whole_blocks`] call: 128 KiB, which the
/// L2 cache keeps beside a chunk's scores while every row's weights are applied.
const RUN_FLOATS: usize = 32 * 1024;

impl<'t> Floats<'t> {
    /// The tile's query vectors and empty buffers.
    #[inline(always)]
    pub fn new(t: &Tile<'t>, s: &TileShape) -> Self {
        let q = t.q;
        Self {
            queries: (0..t.rows.len() * s.group)
                .map(|k| &q[(k / s.group) * t.heads * s.d + t.kv * s.width + (k % s.group) * s.d..][..s.d])
                .collect(),
            raw: vec![0f32; s.padded * s.d],
            run: Vec::new(),
            accs: vec![[0f32; LANES]; t.rows.len() * s.group],
        }
    }

    /// Every row's scaled scores `[group, seen]` against the chunk's keys.
    #[inline(always)]
    pub fn score(&mut self, t: &Tile, s: &TileShape, kernels: Kernels, chunk: &Chunk, scores: &mut Scores) {
        let part = (t.layer, Part::Keys);
        let mut first = chunk.first;
        while let Some(next) = self.score_whole_blocks(t, s, kernels, (chunk, first), scores) {
            first = next;
        }
        for (j, &block) in s.blocks.iter().enumerate().take(chunk.end).skip(first) {
            let route = match in_place(t, s, kernels, (part, j)) {
                Some(InPlace::Avx512(cpu, kb)) => Route::Rows(Keys::Bits(cpu, kb)),
                Some(InPlace::Avx2(kb)) => Route::Runs(Block::F16(kb)),
                None => {
                    let kt = t.pool.head_block(part, block, t.kv, s.count(j), &mut self.raw);
                    match (2..=4).contains(&s.group) {
                        true => Route::Runs(Block::F32(kt)),
                        false => Route::Rows(Keys::Floats(kt)),
                    }
                }
            };
            let (queries, accs) = (&self.queries, &mut self.accs);
            match route {
                Route::Runs(kb) => score_runs(t, s, (chunk, j), (kb, kernels), queries, accs, scores),
                Route::Rows(keys) => score_rows(t, s, (chunk, j), keys, accs, scores),
            }
        }
    }

    /// The rows' outputs `out: [rows, group * d]` gain the chunk's values with the rows'
    /// weights (the runs' lists borrow the chunk's scores, so they are the chunk's own).
    #[inline(always)]
    pub fn add_values(
        &mut self,
        t: &Tile,
        s: &TileShape,
        kernels: Kernels,
        (chunk, scores): (&Chunk, &Scores),
        out: &mut [f32],
    ) {
        let mut runs = (Vec::new(), Vec::new());
        let part = (t.layer, Part::Values);
        let mut first = chunk.first;
        while let Some(next) = self.add_whole_blocks(t, s, kernels, (chunk, first, scores), out) {
            first = next;
        }
        for (j, &block) in s.blocks.iter().enumerate().take(chunk.end).skip(first) {
            let (cpu, vb) = match in_place(t, s, kernels, (part, j)) {
                Some(InPlace::Avx512(cpu, vb)) => (cpu, vb),
                halves => {
                    let values = match halves {
                        Some(InPlace::Avx2(vb)) => Block::F16(vb),
                        _ => Block::F32(t.pool.head_block(part, block, t.kv, s.count(j), &mut self.raw)),
                    };
                    add_values(t, s, (chunk, j), (values, kernels), (scores, &mut runs), out);
                    continue;
                }
            };
            for (ri, row) in t.rows.iter().enumerate() {
                let Some(m) = visible(row, j, s.bs) else { continue };
                let orow = &mut out[ri * s.width..(ri + 1) * s.width];
                axpys_in_place(
                    cpu,
                    s.group,
                    (scores.row(ri), scores.len, chunk.at(j, s.bs)),
                    m,
                    vb,
                    orow,
                );
            }
        }
    }
}

impl Floats<'_> {
    /// The chunk's blocks from `first` on that every row sees whole, as many as
    /// [`RUN_FLOATS`] holds (`None` where there is none such, or no kernel for them).
    #[inline(always)]
    fn whole_run(
        t: &Tile,
        s: &TileShape,
        kernels: Kernels,
        (chunk, first): (&Chunk, usize),
        size: usize,
    ) -> Option<usize> {
        let whole = t.rows.iter().map(|r| r.len).min().unwrap_or(0) / s.bs.max(1);
        let end = whole.min(chunk.end).min(first + (RUN_FLOATS / size.max(1)).max(1));
        let batched = kernels.avx512.is_some() && t.rows.len() > 1 && (2..=4).contains(&s.group);
        (batched && end > first).then_some(end)
    }

    /// Scores the chunk's blocks from `first` on that every row sees whole ([`Self::whole_run`]),
    /// converted once, every row's heads in one [`batch_dots_blocks`] call (the bits of
    /// [`score_runs`] block by block). Returns the first block left, or `None`.
    #[inline(always)]
    fn score_whole_blocks(
        &mut self,
        t: &Tile,
        s: &TileShape,
        kernels: Kernels,
        (chunk, first): (&Chunk, usize),
        scores: &mut Scores,
    ) -> Option<usize> {
        let size = s.padded * s.d;
        let end = Self::whole_run(t, s, kernels, (chunk, first), size)?;
        let n = (end - first) * s.bs;
        let kts = converted(t, s, (Part::Keys, size), first..end, &mut self.run);
        let (at0, len) = (chunk.at(first, s.bs), scores.len);
        let mut outs: Vec<&mut [f32]> = scores
            .rows_mut(0..t.rows.len())
            .chunks_exact_mut(len)
            .map(|h| &mut h[at0..at0 + n])
            .collect();
        batch_dots_blocks(kernels, &self.queries, (&kts, s.bs, s.padded), (&mut outs, s.scale)).then_some(end)
    }

    /// Adds the values of the chunk's blocks from `first` on that every row sees whole, as
    /// many as [`RUN_FLOATS`] holds, converted once and applied to every row's heads in one
    /// [`batch_axpys_blocks`] call (the bits of [`add_values`] block by block). Returns the
    /// first block left, or `None` where there is none such (or no kernel for it).
    #[inline(always)]
    fn add_whole_blocks(
        &mut self,
        t: &Tile,
        s: &TileShape,
        kernels: Kernels,
        (chunk, first, scores): (&Chunk, usize, &Scores),
        out: &mut [f32],
    ) -> Option<usize> {
        let size = s.bs * s.d;
        let end = Self::whole_run(t, s, kernels, (chunk, first), size)?;
        let n = (end - first) * s.bs;
        let vs = converted(t, s, (Part::Values, size), first..end, &mut self.run);
        let (g, at0) = (s.group, chunk.at(first, s.bs));
        let ws: Vec<&[f32]> = (0..t.rows.len() * g)
            .map(|k| &scores.row(k / g)[(k % g) * scores.len + at0..][..n])
            .collect();
        let at: Vec<usize> = (0..t.rows.len() * g)
            .map(|k| (k / g) * s.width + (k % g) * s.d)
            .collect();
        batch_axpys_blocks(kernels, &ws, (&vs, s.bs, s.d), (out, &at)).then_some(end)
    }
}

/// Blocks `blocks`' keys or values (`size` floats a block) as f32: an f32 pool's in place,
/// others converted into `run`, asking for the blocks ahead as it goes.
#[inline(always)]
fn converted<'a>(
    t: &Tile<'a>,
    s: &TileShape,
    (part, size): (Part, usize),
    blocks: std::ops::Range<usize>,
    run: &'a mut Vec<f32>,
) -> Vec<&'a [f32]> {
    let part = (t.layer, part);
    run.resize(blocks.len() * size, 0.0);
    run.chunks_exact_mut(size)
        .zip(blocks)
        .map(|(raw, j)| {
            prefetch_ahead(t, s, part, j);
            t.pool.head_block(part, s.blocks[j], t.kv, s.bs, raw)
        })
        .collect()
}

/// Scores block `j` (keys `kt` in f32) for every run of consecutive rows that sees each 16
/// positions, all the run's query vectors in one [`batch_dots`].
#[inline(always)]
fn score_runs(
    t: &Tile,
    s: &TileShape,
    (chunk, j): (&Chunk, usize),
    (kt, kernels): (Block, Kernels),
    queries: &[&[f32]],
    accs: &mut [[f32; LANES]],
    scores: &mut Scores,
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
                kernels,
                &queries[a * g..b * g],
                (kt.from(c * LANES), s.padded),
                &mut accs[a * g..b * g],
            );
            for ri in a..b {
                let (m, len) = (seen(ri, c).unwrap_or(0), scores.len);
                let at = chunk.at(j, s.bs) + c * LANES;
                store_scores(
                    &accs[ri * g..(ri + 1) * g],
                    (scores.row_mut(ri), len),
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
fn score_rows(
    t: &Tile,
    s: &TileShape,
    (chunk, j): (&Chunk, usize),
    keys: Keys,
    accs: &mut [[f32; LANES]],
    scores: &mut Scores,
) {
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
            let (at, len) = (chunk.at(j, s.bs) + c * LANES, scores.len);
            store_scores(accs, (scores.row_mut(ri), len), at, (m - c * LANES).min(LANES), s.scale);
        }
    }
}

/// The weights and output offsets of a run of rows' query heads, kept between blocks.
pub(super) type Runs<'s> = (Vec<&'s [f32]>, Vec<usize>);

/// Adds block `j`'s values (f32, `[n, d]`) to the rows' outputs with their weights: each run
/// of consecutive rows that sees the same positions in one [`batch_axpys`] (groups of 2 to
/// 4 heads), other group sizes row by row with [`lane_axpys`].
#[inline(always)]
pub(super) fn add_values<'s>(
    t: &Tile,
    s: &TileShape,
    (chunk, j): (&Chunk, usize),
    (values, kernels): (Block, Kernels),
    (scores, runs): (&'s Scores, &mut Runs<'s>),
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
                ws.push(&scores.row(ri)[h * scores.len + chunk.at(j, s.bs)..][..m]);
                at.push(ri * s.width + h * d);
            }
        }
        if (2..=4).contains(&g) {
            batch_axpys(kernels, ws, (values, d), (out, at));
        } else {
            let values = values.floats();
            for (w, &o) in ws.iter().zip(at.iter()) {
                lane_axpys(w, &values, &mut out[o..o + d]);
            }
        }
        a = b;
    }
}
