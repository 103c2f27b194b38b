//! Attention of batch rows over keys and values in the paged pool's [`KvStore`].
//!
//! One task is a tile of consecutive rows of one sequence (a prompt chunk, or one decoding
//! token) and one key/value head: each block of cached keys and values is converted once
//! for the whole tile (an 8-bit pool's are read in place, [`super::attention_q8`]), and the
//! query heads of the rows that see the same positions are scored and added together, each
//! key and value vector loaded once for several of them. Keys are transposed per block so
//! that 16 positions are scored at once in vector lanes. Positions go in chunks of 1024 with
//! an online softmax ([`online`]): a tile's scores stay in the core's L2 cache whatever the
//! context length, and no `[heads, n, T]` matrix is formed.
//!
//! A row's arithmetic is the same whatever tile it is in, whatever else the batch holds
//! and however its prompt was chunked: positions are visited in order and every sum has a
//! fixed shape, so results are bit-identical (batch invariance).

use rayon::prelude::*;

mod blocks;
mod loops;
mod online;
mod quantized;

pub use loops::exp_neg;
use loops::{group_axpys_loops, group_dots_loops, LANES};
use online::{Chunk, Scores, Softmax};

use super::kv_store::{KvStore, Part};
use crate::kv::BlockId;
#[cfg(target_arch = "x86_64")]
use crate::kv::KvDType;

/// What one row attends to: the first `len` positions of a sequence's blocks.
pub struct AttnRow<'a> {
    /// The sequence's blocks.
    pub blocks: &'a [BlockId],
    /// Positions visible to the row (its own included).
    pub len: usize,
}

/// Work below which attention stays on the calling thread.
const PARALLEL_WORK: usize = 1 << 18;

/// Blocks ahead of the one in use whose keys or values are asked for.
const PREFETCH_AHEAD: usize = 2;

/// Rows per tile at most: more rows share each key and value load, fewer keep the tile's
/// scores (`rows * group * 1024` floats a chunk) nearer the core; 32 measured best on Zen 4
/// at depths 4096 and 16384 (q8_0 2-6% faster than 16; 64, and chunks of 512, level).
const TILE: usize = 32;

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
        if let Some(cpu) = Avx2Fma::detect() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (the token proves it).
            return unsafe { tile_avx2(t, cpu) };
        }
    }
    tile_body(t, Kernels::default())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(t: &Tile) -> Vec<f32> {
    let l = t.pool.layout();
    let group = t.heads / l.kv_heads.max(1);
    // A lone row (a decoding step) reads an f16 pool in place (`attention_f16`); runs of
    // rows go through the batched kernels on blocks converted once for the tile.
    let f16 = t.pool.dtype() == KvDType::F16 && (2..=4).contains(&group) && l.head_dim.is_multiple_of(LANES);
    let lone = t.rows.len() == 1;
    let kernels = Kernels {
        f16_in_place: if f16 && lone { Avx512::detect() } else { None },
        avx2: Avx2Fma::detect(),
        avx512: Avx512::detect(),
        halves: None,
    };
    tile_body(t, kernels)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2(t: &Tile, cpu: Avx2Fma) -> Vec<f32> {
    let l = t.pool.layout();
    let group = t.heads / l.kv_heads.max(1);
    // A lone row (a decoding step) reads an f16 pool in place: converting each block first
    // would be a pass of its own that no other row shares.
    let lone = t.rows.len() == 1 && t.pool.dtype() == KvDType::F16;
    let fits = lone && (2..=4).contains(&group) && l.head_dim.is_multiple_of(LANES);
    let kernels = Kernels {
        f16_in_place: None,
        avx2: Some(cpu),
        avx512: None,
        halves: fits.then_some(cpu),
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
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86 kernels only
struct Kernels {
    /// Read an f16 pool's blocks in place with AVX-512 instead of converting them.
    f16_in_place: Option<Avx512>,
    /// Score and add converted blocks with the AVX2 kernels ([`super::attention_avx2`]).
    avx2: Option<Avx2Fma>,
    /// Score and add blocks with the AVX-512 kernels ([`super::attention_avx512`]) where
    /// present, before the AVX2 ones.
    avx512: Option<Avx512>,
    /// Read an f16 pool's blocks in place with the AVX2 kernels instead of converting them.
    halves: Option<Avx2Fma>,
}

/// A block's keys or values as the batched kernels read them.
#[derive(Debug, Clone, Copy)]
pub(super) enum Block<'a> {
    /// f32 values (an f32 pool's, or a block converted once for a tile's rows).
    F32(&'a [f32]),
    /// An f16 pool's bits, widened as they are read (exactly).
    F16(&'a [u16]),
}

impl<'a> Block<'a> {
    /// Values held.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86 kernels only
    pub(super) fn len(self) -> usize {
        match self {
            Self::F32(b) => b.len(),
            Self::F16(b) => b.len(),
        }
    }

    /// The first value's address and whether the values are f16 (for the SIMD kernels).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // used by the x86 kernels only
    pub(super) fn raw(self) -> (*const u8, bool) {
        match self {
            Self::F32(b) => (b.as_ptr().cast(), false),
            Self::F16(b) => (b.as_ptr().cast(), true),
        }
    }

    /// The values from the `at`-th on.
    fn from(self, at: usize) -> Self {
        match self {
            Self::F32(b) => Self::F32(&b[at..]),
            Self::F16(b) => Self::F16(&b[at..]),
        }
    }

    /// The values as f32: borrowed, or widened into a new buffer (for the loops).
    fn floats(self) -> std::borrow::Cow<'a, [f32]> {
        match self {
            Self::F32(b) => b.into(),
            Self::F16(b) => b.iter().map(|&h| half::f16::from_bits(h).to_f32()).collect(),
        }
    }
}

/// [`group_dots_loops`] on a block's f16 bits, with AVX-512.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // no kernel: `cpu` cannot exist
fn dots_in_place(cpu: Avx512, group: usize, qr: &[f32], kt: &[u16], stride: usize, out: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    super::attention_f16::dots(cpu, group, qr, kt, stride, out);
    #[cfg(not(target_arch = "x86_64"))]
    match cpu {}
}

/// [`group_axpys_loops`] on a block's f16 bits, with AVX-512.
#[inline(always)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))] // no kernel: `cpu` cannot exist
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

/// What a tile keeps from chunk to chunk, by the pool's storage.
enum PoolParts<'t> {
    /// A q8_0 pool's ([`quantized`]).
    Q8(Box<quantized::Parts>),
    /// An f16 or f32 pool's ([`blocks`]).
    Floats(blocks::Floats<'t>),
}

/// Scores, softmax and the weighted sum of values in plain loops that the compiler
/// vectorises for the caller's target features (closures and library calls would not be),
/// or the [`Kernels`] given; chunk by chunk of positions ([`online`]).
#[inline(always)]
fn tile_body(t: &Tile, kernels: Kernels) -> Vec<f32> {
    let Some(s) = TileShape::of(t) else {
        return Vec::new();
    };
    let mut out = vec![0f32; t.rows.len() * s.width];
    let mut softmax = Softmax::new(t.rows.len(), s.group, s.d);
    let mut scores = Scores::default();
    let mut pool = match quantized::Parts::new(t, &s) {
        Some(q8) => PoolParts::Q8(Box::new(q8)),
        None => PoolParts::Floats(blocks::Floats::new(t, &s)),
    };
    for chunk in Chunk::all(t.rows, &s) {
        chunk.prepare(s.group, &mut scores);
        match &mut pool {
            PoolParts::Q8(p) => p.score(t, &s, &chunk, &mut scores),
            PoolParts::Floats(p) => p.score(t, &s, kernels, &chunk, &mut scores),
        }
        softmax.update(&chunk, &mut scores, &mut out);
        match &mut pool {
            PoolParts::Q8(p) => p.add_values(t, &s, (&chunk, &scores), &mut out),
            PoolParts::Floats(p) => p.add_values(t, &s, kernels, (&chunk, &scores), &mut out),
        }
    }
    softmax.finish(&mut out);
    if let PoolParts::Q8(p) = &pool {
        p.finish(&s, &mut out);
    }
    out
}

/// Asks for the keys or values (`part`) of the block [`PREFETCH_AHEAD`] after block `j`, and at
/// the tile's first block for those before it too: a hint, given while block `j` is used.
#[inline(always)]
fn prefetch_ahead(t: &Tile, s: &TileShape, part: (usize, Part), j: usize) {
    let (from, to) = (if j == 0 { 1 } else { j + PREFETCH_AHEAD }, j + PREFETCH_AHEAD);
    for &next in s.blocks.iter().take(to + 1).skip(from) {
        t.pool.prefetch_head_block(part, next, t.kv);
    }
}

/// Scores of query vectors `qs` (each `d` wide) against 16 positions of transposed keys
/// (`kt[i * stride..]`): per vector [`group_dots_loops`]'s chain, by the AVX-512 or AVX2
/// kernel where given and the shapes fit ([`super::attention_avx512`],
/// [`super::attention_avx2`], the same bits).
#[inline(always)]
fn batch_dots(kernels: Kernels, qs: &[&[f32]], (kt, stride): (Block, usize), out: &mut [[f32; LANES]]) {
    #[cfg(target_arch = "x86_64")]
    if kernels
        .avx512
        .is_some_and(|cpu| super::attention_avx512::dots(cpu, qs, (kt, stride), out))
        || kernels
            .avx2
            .is_some_and(|cpu| super::attention_avx2::dots(cpu, qs, (kt, stride), out))
    {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernels;
    let kt = kt.floats();
    for (q, o) in qs.iter().zip(out.iter_mut()) {
        group_dots_loops::<1>(q, &kt, stride, std::slice::from_mut(o));
    }
}

/// For every weight vector `ws[n]` (all `m` long): `out[at[n]..][..d]` gains `sum_s ws[n][s]
/// * v[s * d..][..d]`: per vector [`group_axpys_loops`]' chains, by the AVX-512 or AVX2
/// kernel where given and the shapes fit ([`super::attention_avx512`],
/// [`super::attention_avx2`], the same bits).
#[inline(always)]
fn batch_axpys(kernels: Kernels, ws: &[&[f32]], (v, d): (Block, usize), (out, at): (&mut [f32], &[usize])) {
    #[cfg(target_arch = "x86_64")]
    if kernels
        .avx512
        .is_some_and(|cpu| super::attention_avx512::axpys(cpu, ws, (v, d), (out, at)))
    {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if kernels
        .avx2
        .is_some_and(|cpu| super::attention_avx2::axpys(cpu, ws, (v, d), (out, at)))
    {
        return;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = kernels;
    let v = v.floats();
    for (w, &o) in ws.iter().zip(at) {
        group_axpys_loops::<1>((w, w.len(), 0), w.len(), &v, &mut out[o..o + d]);
    }
}

/// [`batch_axpys`] over a run of whole blocks `vs` (each `[bs, d]`) in one call, with the
/// AVX-512 kernel ([`super::attention_avx512::axpys_blocks`], the same bits as a call a
/// block); `false`, doing nothing, where it is not given or the shapes do not fit.
#[inline(always)]
fn batch_axpys_blocks(
    kernels: Kernels,
    ws: &[&[f32]],
    (vs, bs, d): (&[&[f32]], usize, usize),
    (out, at): (&mut [f32], &[usize]),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    return kernels
        .avx512
        .is_some_and(|cpu| super::attention_avx512::axpys_blocks(cpu, ws, (vs, bs, d), (out, at)));
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernels, ws, vs, bs, d, out, at);
        false
    }
}

/// [`batch_dots`] over a run of whole blocks of transposed keys `kts` in one call, each
/// score times `scale` written to `out` with the AVX-512 kernel
/// ([`super::attention_avx512::dots_blocks`], the bits of a call per 16 positions and
/// [`super::attention_q8::store_scores`]); `false`, doing nothing, where it is not given or
/// the shapes do not fit.
#[inline(always)]
fn batch_dots_blocks(
    kernels: Kernels,
    qs: &[&[f32]],
    (kts, bs, stride): (&[&[f32]], usize, usize),
    (out, scale): (&mut [&mut [f32]], f32),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    return kernels
        .avx512
        .is_some_and(|cpu| super::attention_avx512::dots_blocks(cpu, qs, (kts, bs, stride), (out, scale)));
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (kernels, qs, kts, bs, stride, out, scale);
        false
    }
}

/// How many positions of block `j` (blocks of `bs`) `row` sees; `None` for none.
#[inline(always)]
fn visible(row: &AttnRow, j: usize, bs: usize) -> Option<usize> {
    row.len.checked_sub(j * bs).filter(|&m| m > 0).map(|m| m.min(bs))
}

#[cfg(test)]
mod tests;
