//! The paged key/value pool: one memory budget for every sequence, in fixed-size blocks.
//!
//! Each layer keeps one value buffer of `blocks x [kv_heads, block_size, head_dim]` and one
//! key buffer of `blocks x [kv_heads, head_dim, block_size]` (keys transposed, so that
//! attention scores a block's positions in vector lanes), in f16 (the default, as llama.cpp keeps its cache: half the memory
//! and half the bytes read per token at long context) or f32 (exact). A sequence owns a [`BlockTable`]: the blocks holding its
//! positions in order, so growing it never copies the cache. Full blocks are registered in
//! the [`prefix`] cache under a hash of every token up to their end: a later sequence whose
//! prompt starts with the same tokens shares them (reference counted) instead of computing
//! them again, and blocks no sequence uses any more stay cached until the least recently
//! used is taken for new positions.
//!
//! The buffers are allocated zeroed at once (`calloc`): the operating system commits their
//! pages when they are first written, so resident memory follows what is in use.

pub mod prefix;
mod widen;

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};
use prefix::PrefixCache;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDType {
    /// IEEE half precision (default).
    #[default]
    F16,
    /// f32: exactly what the model computed.
    F32,
}

impl KvDType {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            Self::F16 => 2,
            Self::F32 => 4,
        }
    }
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
        })
    }
}

impl std::str::FromStr for KvDType {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            _ => Err(crate::Error::InvalidParameter {
                name: "kv-dtype",
                reason: format!("`{s}` is not f16 or f32"),
            }),
        }
    }
}

/// Keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Keys.
    Keys,
    /// Values.
    Values,
}

/// One layer's keys or values for every block. f16 values are kept as their bits in a
/// `u16` vector: zeroed integer vectors come from `calloc`, so untouched blocks cost no
/// resident memory (a `vec![f16::ZERO; n]` would write every element).
enum Store {
    F16(Vec<u16>),
    F32(Vec<f32>),
}

impl Store {
    fn new(dtype: KvDType, len: usize) -> Self {
        match dtype {
            KvDType::F16 => Self::F16(vec![0u16; len]),
            KvDType::F32 => Self::F32(vec![0f32; len]),
        }
    }

    fn set(&mut self, at: usize, v: f32) {
        match self {
            Self::F16(d) => d[at] = f16::from_f32(v).to_bits(),
            Self::F32(d) => d[at] = v,
        }
    }

    fn write(&mut self, at: usize, src: &[f32]) {
        match self {
            Self::F16(d) => d[at..at + src.len()]
                .reinterpret_cast_mut::<f16>()
                .convert_from_f32_slice(src),
            Self::F32(d) => d[at..at + src.len()].copy_from_slice(src),
        }
    }

    fn copy_within(&mut self, from: usize, len: usize, to: usize) {
        match self {
            Self::F16(d) => d.copy_within(from..from + len, to),
            Self::F32(d) => d.copy_within(from..from + len, to),
        }
    }

    /// Asks the memory system for values `at..at + len` ahead of their use (a hint).
    fn prefetch(&self, at: usize, len: usize) {
        match self {
            Self::F16(d) => widen::prefetch(&d[at..at + len]),
            Self::F32(d) => widen::prefetch(&d[at..at + len]),
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
        }
    }
}

/// Index of a block in the pool.
pub type BlockId = u32;

/// Positions per block by default.
pub const DEFAULT_BLOCK_SIZE: usize = 16;

/// The shape of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    /// Transformer layers.
    pub layers: usize,
    /// Key/value heads per layer.
    pub kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions per block.
    pub block_size: usize,
}

impl KvLayout {
    /// Values of one block in one layer's value buffer.
    pub fn block_len(&self) -> usize {
        self.kv_heads * self.block_size * self.head_dim
    }

    /// Positions of a block rounded up to whole vector lanes (16): the row length of the
    /// transposed keys.
    pub fn padded(&self) -> usize {
        self.block_size.div_ceil(16) * 16
    }

    /// Values of one block in one layer's key buffer.
    pub fn key_block_len(&self) -> usize {
        self.kv_heads * self.padded() * self.head_dim
    }

    /// Bytes one block takes across all layers, keys and values, stored as `dtype`.
    pub fn block_bytes(&self, dtype: KvDType) -> usize {
        self.layers * (self.block_len() + self.key_block_len()) * dtype.size()
    }

    /// Blocks of `dtype` that fit in `bytes` (at least one).
    pub fn blocks_in(&self, bytes: usize, dtype: KvDType) -> usize {
        (bytes / self.block_bytes(dtype).max(1)).max(1)
    }
}

/// The blocks of one sequence and how many positions they hold.
#[derive(Debug, Default)]
pub struct BlockTable {
    blocks: Vec<BlockId>,
    len: usize,
    /// Prefix hash of each full block (`hashes[i]` covers positions `..(i + 1) * block_size`).
    hashes: Vec<u64>,
    /// Positions taken from the prefix cache when the sequence started.
    cached: usize,
}

impl BlockTable {
    /// Positions computed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no position is computed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions that came from the prefix cache.
    pub fn cached(&self) -> usize {
        self.cached
    }

    /// The blocks in position order.
    pub fn blocks(&self) -> &[BlockId] {
        &self.blocks
    }
}

/// Keys and values of all sequences, in blocks.
pub struct BlockPool {
    layout: KvLayout,
    dtype: KvDType,
    keys: Vec<Store>,
    values: Vec<Store>,
    refs: Vec<u32>,
    /// Blocks holding nothing cached.
    free: Vec<BlockId>,
    cache: PrefixCache,
}

impl BlockPool {
    /// A pool of `blocks` blocks (at least one) storing `dtype`.
    pub fn new(layout: KvLayout, blocks: usize, dtype: KvDType) -> Self {
        let blocks = blocks.max(1);
        let len = blocks * layout.block_len();
        Self {
            layout,
            dtype,
            keys: (0..layout.layers)
                .map(|_| Store::new(dtype, blocks * layout.key_block_len()))
                .collect(),
            values: (0..layout.layers).map(|_| Store::new(dtype, len)).collect(),
            refs: vec![0; blocks],
            free: (0..blocks as BlockId).rev().collect(),
            cache: PrefixCache::new(blocks),
        }
    }

    /// The pool's shape.
    pub fn layout(&self) -> KvLayout {
        self.layout
    }

    /// How values are stored.
    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.refs.len()
    }

    /// Blocks used by at least one sequence: every other block is free or cached unused.
    pub fn used(&self) -> usize {
        self.capacity() - self.available()
    }

    /// Blocks that can be given out now: free ones and cached ones no sequence uses.
    pub fn available(&self) -> usize {
        self.free.len() + self.cache.evictable()
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.layout.block_size)
    }

    /// A new sequence whose tokens will start with `prompt`: the longest run of `prompt`'s
    /// full blocks found in the prefix cache is shared, leaving at least the last token
    /// to compute (its logits are needed).
    pub fn start(&mut self, prompt: &[u32]) -> BlockTable {
        let bs = self.layout.block_size;
        let usable = prompt.len().saturating_sub(1) / bs;
        let mut table = BlockTable::default();
        let mut parent = prefix::ROOT;
        for chunk in prompt.chunks_exact(bs).take(usable) {
            let Some((block, hash)) = self.cache.find(parent, chunk) else {
                break;
            };
            self.take(block);
            table.blocks.push(block);
            table.hashes.push(hash);
            parent = hash;
        }
        table.len = table.blocks.len() * bs;
        let rest = prompt.len().saturating_sub(1).saturating_sub(table.len);
        if let Some((from, common)) = self.cache.find_partial(parent, &prompt[table.len..table.len + rest]) {
            self.copy_partial(&mut table, from, common);
        }
        table.cached = table.len;
        table
    }

    /// Starts a new block of `table` with the first `n` positions of the cached partial
    /// block `from` (the same tokens after the same prefix: the same keys and values).
    fn copy_partial(&mut self, table: &mut BlockTable, from: BlockId, n: usize) {
        self.take(from);
        if let Some(to) = self.alloc() {
            let l = self.layout;
            let (src, dst) = (from as usize * l.block_len(), to as usize * l.block_len());
            let (ksrc, kdst) = (from as usize * l.key_block_len(), to as usize * l.key_block_len());
            for layer in 0..l.layers {
                for h in 0..l.kv_heads {
                    let at = h * l.block_size * l.head_dim;
                    self.values[layer].copy_within(src + at, n * l.head_dim, dst + at);
                    for i in 0..l.head_dim {
                        let at = (h * l.head_dim + i) * l.padded();
                        self.keys[layer].copy_within(ksrc + at, n, kdst + at);
                    }
                }
            }
            table.blocks.push(to);
            table.len += n;
        }
        self.release_block(from);
    }

    /// Makes room for `n` more positions of `table`; false (and nothing taken) when the
    /// pool has too few blocks.
    pub fn reserve(&mut self, table: &mut BlockTable, n: usize) -> bool {
        let need = self.blocks_for(table.len + n).saturating_sub(table.blocks.len());
        if need > self.available() {
            return false;
        }
        for _ in 0..need {
            let Some(block) = self.alloc() else { return false };
            table.blocks.push(block);
        }
        true
    }

    /// Marks `n` more positions of `table` as computed (their keys and values written);
    /// `tokens` are the sequence's tokens from position 0. Blocks that become full enter
    /// the prefix cache.
    pub fn commit(&mut self, table: &mut BlockTable, tokens: &[u32], n: usize) {
        let bs = self.layout.block_size;
        table.len += n;
        while table.hashes.len() < table.len / bs {
            let i = table.hashes.len();
            let parent = table.hashes.last().copied().unwrap_or(prefix::ROOT);
            let Some(chunk) = tokens.get(i * bs..(i + 1) * bs) else {
                break;
            };
            let hash = self.cache.insert(parent, chunk, table.blocks[i]);
            table.hashes.push(hash);
        }
    }

    /// Forgets the positions of `table` from `len` on. Blocks past it go back to the pool;
    /// when the block that holds position `len - 1` was already full (and so entered the
    /// prefix cache under its tokens), its kept positions move to a private copy so that
    /// new positions never overwrite a cached block. Positions a failed copy could not keep
    /// are simply computed again.
    pub fn truncate(&mut self, table: &mut BlockTable, len: usize) {
        if len >= table.len {
            return;
        }
        let bs = self.layout.block_size;
        let keep = self.blocks_for(len);
        while table.blocks.len() > keep {
            if let Some(block) = table.blocks.pop() {
                self.release_block(block);
            }
        }
        let full = len / bs;
        table.len = len;
        if table.hashes.len() > full {
            table.hashes.truncate(full);
            if !len.is_multiple_of(bs) {
                if let Some(shared) = table.blocks.pop() {
                    table.len = full * bs;
                    self.copy_partial(table, shared, len % bs);
                    self.release_block(shared);
                }
            }
        }
        table.cached = table.cached.min(table.len);
    }

    /// Gives back every block of `table`, the last first, so that the least recently used
    /// order evicts the ends of cached prefixes before their beginnings. `tokens` are the
    /// sequence's tokens: a partly filled last block is kept for a prompt that continues
    /// the same way (a chat's next turn).
    pub fn release(&mut self, table: BlockTable, tokens: &[u32]) {
        let bs = self.layout.block_size;
        let full = table.len / bs;
        if let (Some(&last), true) = (table.blocks.get(full), !table.len.is_multiple_of(bs)) {
            if self.refs[last as usize] == 1 {
                let parent = match full.checked_sub(1) {
                    None => Some(prefix::ROOT),
                    Some(i) => table.hashes.get(i).copied(),
                };
                if let (Some(parent), Some(held)) = (parent, tokens.get(full * bs..table.len)) {
                    self.cache.insert_partial(parent, held, last);
                }
            }
        }
        for block in table.blocks.into_iter().rev() {
            self.release_block(block);
        }
    }

    fn release_block(&mut self, block: BlockId) {
        let r = &mut self.refs[block as usize];
        *r = r.saturating_sub(1);
        if *r == 0 && !self.cache.unused(block) {
            self.free.push(block);
        }
    }

    fn take(&mut self, block: BlockId) {
        if self.refs[block as usize] == 0 {
            self.cache.used(block);
        }
        self.refs[block as usize] += 1;
    }

    fn alloc(&mut self) -> Option<BlockId> {
        let block = self.free.pop().or_else(|| self.cache.evict())?;
        self.cache.forget(block);
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// Where position `pos` of `table` lives: (block, slot in the block).
    pub fn locate(&self, table: &BlockTable, pos: usize) -> (BlockId, usize) {
        let bs = self.layout.block_size;
        (table.blocks[pos / bs], pos % bs)
    }

    /// Writes the key and value `[kv_heads * head_dim]` of `pos` in `layer`.
    pub fn write(&mut self, layer: usize, table: &BlockTable, pos: usize, k: &[f32], v: &[f32]) {
        let (block, slot) = self.locate(table, pos);
        let l = self.layout;
        let (base, kbase) = (block as usize * l.block_len(), block as usize * l.key_block_len());
        for h in 0..l.kv_heads {
            let at = base + (h * l.block_size + slot) * l.head_dim;
            self.values[layer].write(at, &v[h * l.head_dim..(h + 1) * l.head_dim]);
            for i in 0..l.head_dim {
                let at = kbase + (h * l.head_dim + i) * l.padded() + slot;
                self.keys[layer].set(at, k[h * l.head_dim + i]);
            }
        }
    }

    /// Asks the memory system for what [`Self::head_block`] of `block` will read (a hint,
    /// given while the previous block is being used).
    pub fn prefetch_head_block(&self, (layer, part): (usize, Part), block: BlockId, head: usize) {
        let (store, at, len) = self.head_span((layer, part), block, head, self.layout.block_size);
        store.prefetch(at, len)
    }

    /// [`Self::head_block`]'s values as the f16 bits the pool holds; `None` for an f32 pool.
    pub fn head_block_bits(
        &self,
        (layer, part): (usize, Part),
        block: BlockId,
        head: usize,
        n: usize,
    ) -> Option<&[u16]> {
        match self.head_span((layer, part), block, head, n) {
            (Store::F16(d), at, len) => Some(&d[at..at + len]),
            (Store::F32(_), ..) => None,
        }
    }

    /// One block of KV head `head` in `layer` as f32: values of its first `n` positions,
    /// `[n, head_dim]`; keys of all its positions transposed, `[head_dim, padded]` (see
    /// [`KvLayout::padded`]). Borrowed from an f32 pool, converted into `scratch` (long
    /// enough for either) from an f16 one.
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
                let len = l.head_dim * l.padded();
                (&self.keys[layer], block as usize * l.key_block_len() + head * len, len)
            }
            Part::Values => {
                let at = block as usize * l.block_len() + head * l.block_size * l.head_dim;
                (&self.values[layer], at, n * l.head_dim)
            }
        }
    }
}

#[cfg(test)]
mod tests;
