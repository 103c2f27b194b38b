//! The bytes of the paged KV pool: for every layer one value buffer of
//! `[kv_heads, blocks, block_size, head_dim]` and one key buffer of
//! `[kv_heads, blocks, head_dim, padded]` (a head's blocks one after another, so that a
//! row's attention over a long sequence reads memory in order; keys transposed, so that
//! attention scores a block's positions in vector lanes), in f16 (the default, as llama.cpp
//! keeps its cache: half the memory and half the bytes read per token at long context), f32
//! (exact), q8_0 ([`q8`]: 8-bit integers with one f16 scale per 32 values of a position's
//! head, as llama.cpp's `-ctk q8_0 -ctv q8_0`: a little over half of f16 again) or q8_0 keys
//! with 4-bit values ([`q4`]: rotated, as llama.cpp's `-ctv q4_0` otherwise). q8_0 keys lie
//! as `[head_dim / 4, padded, 4]` within a tile (four consecutive dimensions of a position
//! together, for the integer dot products of [`super::attention_q8`]); every method here
//! still takes the transposed tile's index, and the store places it.
//! Which block belongs to whom is [`crate::kv::BlockPool`]'s business; [`KvPool`] holds both.
//!
//! The buffers are allocated zeroed at once (`calloc`): the operating system commits their
//! pages when they are first written, so resident memory follows what is in use.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::attention_q8::{KeyTile, ValueBlock};
use super::widen;
use crate::kv::{BlockCopy, BlockId, BlockPool, BlockTable, KvDType, KvLayout};

mod q4;
mod q8;
use q4::Q4Store;
pub(crate) use q4::{rotate, Q4Block};
use q8::{Q8Shape, Q8Store};

/// Keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// Keys.
    Keys,
    /// Values.
    Values,
}

/// One layer's keys or values for every block. f16 values are kept as their bits in a
/// `u16` vector: zeroed integer vectors come from `calloc`, so untouched blocks cost no
/// resident memory (a `vec![f16::ZERO; n]` would write every element).
pub(crate) enum Store {
    F16(Vec<u16>),
    F32(Vec<f32>),
    Q8(Q8Store),
    Q4(Q4Store),
}

impl Store {
    /// Bytes this buffer holds (scales included).
    #[cfg(test)]
    fn bytes(&self) -> usize {
        match self {
            Self::F16(d) => 2 * d.len(),
            Self::F32(d) => 4 * d.len(),
            Self::Q8(q) => q.q.len() + 2 * q.scales.len(),
            Self::Q4(q) => q.bytes(),
        }
    }

    /// Zeroed storage for `len` keys or values (as `shape` says) of a `dtype` pool.
    fn new(dtype: KvDType, len: usize, shape: Q8Shape) -> Self {
        match dtype {
            KvDType::F16 => Self::F16(vec![0u16; len]),
            KvDType::F32 => Self::F32(vec![0f32; len]),
            KvDType::Q8Q4 if shape.transposed.is_none() => Self::Q4(Q4Store::new(len, shape.group, shape.head_dim)),
            KvDType::Q8_0 | KvDType::Q8Q4 => Self::Q8(Q8Store::new(len, shape)),
        }
    }

    /// Stores one group of values (sharing a scale) at the positions `ats`.
    fn set_group(&mut self, ats: impl Iterator<Item = usize> + Clone, values: &[f32]) {
        match self {
            Self::F16(d) => ats.zip(values).for_each(|(at, v)| d[at] = f16::from_f32(*v).to_bits()),
            Self::F32(d) => ats.zip(values).for_each(|(at, v)| d[at] = *v),
            Self::Q8(q) => q.set_group(ats, values),
            // 4-bit values lie in runs (keys are never 4-bit).
            Self::Q4(q) => {
                if let Some(at) = ats.clone().next() {
                    q.set_group(at, values)
                }
            }
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Self::F16(d) => d[at..at + src.len()]
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(src),
            Self::F32(d) => d[at..at + src.len()].copy_from_slice(src),
            Self::Q8(q) => {
                let g = q.shape.group;
                for (i, chunk) in src.chunks(g).enumerate() {
                    q.set_group(at + i * g..at + i * g + chunk.len(), chunk);
                }
            }
            Self::Q4(q) => {
                let g = q.group();
                for (i, chunk) in src.chunks(g).enumerate() {
                    q.set_group(at + i * g, chunk);
                }
            }
        }
    }

    fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        match self {
            Self::F16(d) => d.copy_within(from..from + len, to),
            Self::F32(d) => d.copy_within(from..from + len, to),
            Self::Q8(q) => q.copy_within(from, len, to),
            Self::Q4(q) => q.copy_within(from, len, to),
        }
    }

    /// Asks the memory system for values `at..at + len` ahead of their use (a hint).
    fn prefetch(&self, at: usize, len: usize) {
        match self {
            Self::F16(d) => widen::prefetch(&d[at..at + len]),
            Self::F32(d) => widen::prefetch(&d[at..at + len]),
            Self::Q8(q) => widen::prefetch(&q.q[at..at + len]),
            Self::Q4(q) => widen::prefetch(q.span(at, len)),
        }
    }

    /// `len` values from `at` as f32: borrowed, or converted into `scratch`.
    fn read<'a>(&'a self, at: usize, len: usize, scratch: &'a mut [f32]) -> &'a [f32] {
        match self {
            Self::F32(d) => &d[at..at + len],
            Self::F16(d) => {
                widen::widen(&d[at..at + len], &mut scratch[..len]);
                &scratch[..len]
            }
            Self::Q8(q) => {
                q.read(at, &mut scratch[..len]);
                &scratch[..len]
            }
            Self::Q4(q) => {
                q.read(at, &mut scratch[..len]);
                &scratch[..len]
            }
        }
    }
}

/// The stored keys and values of every block.
pub(crate) struct KvStore {
    layout: KvLayout,
    dtype: KvDType,
    keys: Vec<Store>,
    values: Vec<Store>,
    /// Blocks held.
    blocks: usize,
    /// A q4_0 pool's rotated keys and values of the position being written.
    rotated: Vec<f32>,
}

impl KvStore {
    /// Zeroed storage for `blocks` blocks of `layout` in `dtype` (q8_0 needs a head width
    /// that [`KvLayout::q8_group`] can group; f16 is kept otherwise).
    pub fn new(layout: KvLayout, blocks: usize, dtype: KvDType) -> Self {
        let blocks = blocks.max(1);
        let dtype = dtype.stored(layout.head_dim);
        let group = layout.q8_group().unwrap_or(layout.head_dim);
        let keys = Q8Shape {
            group,
            head_dim: layout.head_dim,
            transposed: Some((layout.head_dim, layout.padded())),
        };
        let values = Q8Shape {
            group,
            head_dim: layout.head_dim,
            transposed: None,
        };
        Self {
            layout,
            dtype,
            keys: (0..layout.layers)
                .map(|_| Store::new(dtype, blocks * layout.key_block_len(), keys))
                .collect(),
            values: (0..layout.layers)
                .map(|_| Store::new(dtype, blocks * layout.block_len(), values))
                .collect(),
            blocks,
            rotated: Vec::new(),
        }
    }

    /// Where the tile of `block` and KV head `head` starts in a layer's buffer of tiles of
    /// `len` values: head by head, so that one head's blocks lie one after another (a long
    /// sequence's blocks are mostly consecutive, and a row's attention then reads memory in
    /// order, as the hardware prefetchers follow).
    fn tile_at(&self, block: BlockId, head: usize, len: usize) -> usize {
        (head * self.blocks + block as usize) * len
    }

    /// Values a value tile holds: `[block_size, head_dim]`.
    fn value_len(&self) -> usize {
        self.layout.block_size * self.layout.head_dim
    }

    /// Values a key tile holds: `[head_dim, padded]`, transposed.
    fn key_len(&self) -> usize {
        self.layout.head_dim * self.layout.padded()
    }

    /// The shape.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// How values are stored.
    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// Bytes of every layer's keys and values.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(Store::bytes).sum()
    }

    /// Carries out a copy the bookkeeping asked for.
    pub fn copy(&mut self, c: BlockCopy) {
        let (l, vlen, klen) = (self.layout, self.value_len(), self.key_len());
        for layer in 0..l.layers {
            for h in 0..l.kv_heads {
                let (src, dst) = (self.tile_at(c.from, h, vlen), self.tile_at(c.to, h, vlen));
                self.values[layer].copy_within(src, c.positions * l.head_dim, dst);
                let (src, dst) = (self.tile_at(c.from, h, klen), self.tile_at(c.to, h, klen));
                for i in 0..l.head_dim {
                    let at = i * l.padded();
                    self.keys[layer].copy_within(src + at, c.positions, dst + at);
                }
            }
        }
    }

    /// Writes the key and value `[kv_heads * head_dim]` of `slot` of `block` in `layer`.
    pub fn write(&mut self, layer: usize, (block, slot): (BlockId, usize), k: &[f32], v: &[f32]) {
        let rotates = |s: &Store| matches!(s, Store::Q4(_));
        let (rk, rv) = (rotates(&self.keys[layer]), rotates(&self.values[layer]));
        if rk || rv {
            let mut rotated = std::mem::take(&mut self.rotated);
            rotated.clear();
            rotated.extend_from_slice(k);
            rotated.extend_from_slice(v);
            let (kr, vr) = rotated.split_at_mut(k.len());
            let d = self.layout.head_dim;
            for (part, rotate) in [(kr, rk), (vr, rv)] {
                if rotate {
                    part.chunks_exact_mut(d).for_each(q4::rotate);
                }
            }
            let (k, v) = rotated.split_at(k.len());
            self.write_stored(layer, (block, slot), k, v);
            self.rotated = rotated;
        } else {
            self.write_stored(layer, (block, slot), k, v);
        }
    }

    /// [`Self::write`] of keys and values as the pool stores them (rotated for q4_0).
    fn write_stored(&mut self, layer: usize, (block, slot): (BlockId, usize), k: &[f32], v: &[f32]) {
        let (l, vlen, klen) = (self.layout, self.value_len(), self.key_len());
        let group = l.q8_group().unwrap_or(l.head_dim);
        for h in 0..l.kv_heads {
            let at = self.tile_at(block, h, vlen) + slot * l.head_dim;
            self.values[layer].write(at, &v[h * l.head_dim..(h + 1) * l.head_dim]);
            // One position's keys go down a column of the transposed tile, a group at a time.
            let kbase = self.tile_at(block, h, klen);
            for first in (0..l.head_dim).step_by(group) {
                let ats = (first..first + group).map(|i| kbase + i * l.padded() + slot);
                let values = &k[h * l.head_dim + first..h * l.head_dim + first + group];
                self.keys[layer].set_group(ats, values);
            }
        }
    }

    /// Asks the memory system for what [`Self::head_block`] of `block` will read (a hint,
    /// given while the previous block is being used).
    pub fn prefetch_head_block(&self, (layer, part): (usize, Part), block: BlockId, head: usize) {
        let (store, at, len) = self.head_span((layer, part), block, head, self.layout.block_size);
        store.prefetch(at, len)
    }

    /// [`Self::head_block`]'s values as the f16 bits the pool holds; `None` for f32 storage.
    pub fn head_block_bits(
        &self,
        (layer, part): (usize, Part),
        block: BlockId,
        head: usize,
        n: usize,
    ) -> Option<&[u16]> {
        match self.head_span((layer, part), block, head, n) {
            (Store::F16(d), at, len) => Some(&d[at..at + len]),
            (Store::F32(_) | Store::Q8(_) | Store::Q4(_), ..) => None,
        }
    }

    /// The keys of one block of KV head `head` in `layer` as a q8_0 pool holds them, for
    /// [`super::attention_q8`]; `None` for other storage.
    #[inline(always)]
    pub fn q8_key_tile(&self, layer: usize, block: BlockId, head: usize) -> Option<KeyTile<'_>> {
        let Store::Q8(q) = &self.keys[layer] else {
            return None;
        };
        // A tile holds whole groups, so its scales lie as its bytes do, `len / group` a tile
        // (one division, where `Q8Shape::scale_index` takes five).
        let (len, group) = (self.key_len(), q.shape.group);
        Some(KeyTile {
            q: &q.q[self.tile_at(block, head, len)..][..len],
            scales: &q.scales[self.tile_at(block, head, len / group)..][..len / group],
            padded: self.layout.padded(),
            group,
        })
    }

    /// The values of the first `n` positions of one block of KV head `head` in `layer` as a
    /// q8_0 pool holds them; `None` for other storage.
    #[inline(always)]
    pub fn q8_value_block(&self, layer: usize, block: BlockId, head: usize, n: usize) -> Option<ValueBlock<'_>> {
        let Store::Q8(q) = &self.values[layer] else {
            return None;
        };
        // Each position's groups whole (`head_dim` is a multiple of the group).
        let (d, group) = (self.layout.head_dim, q.shape.group);
        let (len, per) = (self.value_len(), d / group);
        Some(ValueBlock {
            q: &q.q[self.tile_at(block, head, len)..][..n * d],
            scales: &q.scales[self.tile_at(block, head, len / group)..][..n * per],
            group,
        })
    }

    /// The values of the first `n` positions of one block of KV head `head` in `layer` as a
    /// pool of 4-bit values holds them (rotated, see [`rotate`]); `None` for other storage.
    pub fn q4_value_block(&self, layer: usize, block: BlockId, head: usize, n: usize) -> Option<Q4Block<'_>> {
        match self.head_span((layer, Part::Values), block, head, n) {
            (Store::Q4(q), at, len) => Some(q.block(at, len)),
            (Store::F16(_) | Store::F32(_) | Store::Q8(_), ..) => None,
        }
    }

    /// One block of KV head `head` in `layer` as f32: values of its first `n` positions,
    /// `[n, head_dim]`; keys of all its positions transposed, `[head_dim, padded]` (see
    /// [`KvLayout::padded`]). Borrowed from f32 storage, converted into `scratch` (long
    /// enough for either) from f16.
    pub fn head_block<'a>(
        &'a self,
        (layer, part): (usize, Part),
        block: BlockId,
        head: usize,
        n: usize,
        scratch: &'a mut [f32],
    ) -> &'a [f32] {
        let (store, at, len) = self.head_span((layer, part), block, head, n);
        store.read(at, len, scratch)
    }

    /// Where one block of KV head `head` lies: its store, offset and length (keys: the whole
    /// transposed `[head_dim, padded]` tile; values: the first `n` positions).
    fn head_span(&self, (layer, part): (usize, Part), block: BlockId, head: usize, n: usize) -> (&Store, usize, usize) {
        let l = self.layout;
        match part {
            Part::Keys => {
                let len = self.key_len();
                (&self.keys[layer], self.tile_at(block, head, len), len)
            }
            Part::Values => {
                let at = self.tile_at(block, head, self.value_len());
                (&self.values[layer], at, n * l.head_dim)
            }
        }
    }
}

/// The CPU backend's KV pool: the block bookkeeping and the bytes, kept in step (every copy
/// the bookkeeping asks for is made before it returns).
pub(crate) struct KvPool {
    blocks: BlockPool,
    store: KvStore,
}

impl KvPool {
    /// A pool of `blocks` blocks of `layout` storing `dtype`.
    pub fn new(layout: KvLayout, blocks: usize, dtype: KvDType) -> Self {
        Self {
            blocks: BlockPool::new(layout, blocks),
            store: KvStore::new(layout, blocks, dtype),
        }
    }

    /// The bookkeeping.
    pub fn blocks(&self) -> &BlockPool {
        &self.blocks
    }

    /// The bytes.
    pub fn store(&self) -> &KvStore {
        &self.store
    }

    /// [`BlockPool::start`], with its copy made.
    pub fn start(&mut self, prompt: &[u32], scope: u64) -> BlockTable {
        let (table, copy) = self.blocks.start(prompt, scope);
        if let Some(c) = copy {
            self.store.copy(c);
        }
        table
    }

    /// [`BlockPool::reserve`].
    pub fn reserve(&mut self, table: &mut BlockTable, n: usize) -> bool {
        self.blocks.reserve(table, n)
    }

    /// [`BlockPool::commit`].
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], n: usize) {
        self.blocks.commit(table, tokens, n)
    }

    /// [`BlockPool::truncate`], with its copy made.
    pub fn truncate(&mut self, table: &mut BlockTable, len: usize) {
        if let Some(c) = self.blocks.truncate(table, len) {
            self.store.copy(c);
        }
    }

    /// [`BlockPool::release`].
    pub fn release(&mut self, table: BlockTable, tokens: &[u32]) {
        self.blocks.release(table, tokens)
    }

    /// Writes the key and value of position `pos` of `table` in `layer`.
    pub fn write(&mut self, layer: usize, table: &BlockTable, pos: usize, k: &[f32], v: &[f32]) {
        let at = self.blocks.locate(table, pos);
        self.store.write(layer, at, k, v)
    }
}

#[cfg(test)]
mod tests;
