//! Block bookkeeping for the paged key/value pool: one memory budget for every sequence,
//! in fixed-size blocks. The bytes themselves live in the backend that computes them
//! (`backend::cpu::kv_store`); this module only says which block holds what.
//!
//! A sequence owns a [`BlockTable`]: the blocks holding its positions in order, so growing
//! it never copies the cache. Full blocks are registered in the [`prefix`] cache under a
//! hash of every token up to their end: a later sequence whose prompt starts with the same
//! tokens shares them (reference counted) instead of computing them again, and blocks no
//! sequence uses any more stay cached until the least recently used is taken for new
//! positions. Where positions must move (a partly filled cached block continued by another
//! sequence, a rollback into a shared block), the pool returns a [`BlockCopy`] for the
//! storage to carry out before anything else is allocated.

pub mod prefix;

use prefix::PrefixCache;

/// How keys and values are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum KvDType {
    /// IEEE half precision (default).
    #[default]
    F16,
    /// f32: exactly what the model computed.
    F32,
    /// 8-bit integers with one f16 scale per 32 values of a position's head (llama.cpp's
    /// `-ctk q8_0 -ctv q8_0`): a little over half the memory of f16.
    Q8_0,
    /// Keys as [`KvDType::Q8_0`]; values as 4-bit integers with one f16 scale per 32 values
    /// of a position's head (llama.cpp's `-ctk q8_0 -ctv q4_0`), after a Hadamard rotation
    /// of each head's values that spreads their outlying dimensions over the group (undone
    /// when they are read): 41% of f16's memory against [`KvDType::Q8_0`]'s 53%. Needs a
    /// head width that is a power of two of at least 8.
    Q8Q4,
}

/// Values sharing one scale in [`KvDType::Q8_0`] (fewer when a head is narrower).
pub const Q8_GROUP: usize = 32;

impl KvDType {
    /// Bytes `keys` keys and `values` values of heads `head_dim` wide take as stored (a
    /// q8_0 or q4_0 scale per group of up to 32 values of a head; f16 where the heads cannot
    /// be grouped, see [`Self::stored`]).
    pub fn bytes(self, (keys, values): (usize, usize), head_dim: usize) -> usize {
        let q8 = |n: usize, g: usize| n + 2 * n.div_ceil(g);
        match (self.stored(head_dim), q8_group(head_dim)) {
            (Self::F16, _) | (Self::Q8_0 | Self::Q8Q4, None) => 2 * (keys + values),
            (Self::F32, _) => 4 * (keys + values),
            (Self::Q8_0, Some(g)) => q8(keys, g) + q8(values, g),
            (Self::Q8Q4, Some(g)) => q8(keys, g) + values.div_ceil(2) + 2 * values.div_ceil(g),
        }
    }

    /// What a pool of heads `head_dim` wide keeps for `self`: f16 for a quantized pool whose
    /// heads are not a multiple of 8 wide (no group of 8 or more), and for 4-bit values whose
    /// heads are not a power of two wide (the rotation's length).
    pub fn stored(self, head_dim: usize) -> Self {
        match self {
            Self::Q8_0 | Self::Q8Q4 if q8_group(head_dim).is_none() => Self::F16,
            Self::Q8Q4 if !head_dim.is_power_of_two() => Self::F16,
            other => other,
        }
    }
}

/// Values of a head `head_dim` wide sharing one scale in [`KvDType::Q8_0`]: [`Q8_GROUP`], or
/// the largest power of two dividing a narrower head; `None` for a head width without one
/// of at least 8.
pub fn q8_group(head_dim: usize) -> Option<usize> {
    [Q8_GROUP, 16, 8].into_iter().find(|g| head_dim.is_multiple_of(*g))
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F16 => "f16",
            Self::F32 => "f32",
            Self::Q8_0 => "q8_0",
            Self::Q8Q4 => "q8_0-q4_0",
        })
    }
}

impl std::str::FromStr for KvDType {
    type Err = crate::Error;

    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => Ok(Self::F16),
            "f32" => Ok(Self::F32),
            "q8_0" | "q8" => Ok(Self::Q8_0),
            "q8_0-q4_0" => Ok(Self::Q8Q4),
            _ => Err(crate::Error::InvalidParameter {
                name: "kv-dtype",
                reason: format!("`{s}` is not f16, f32, q8_0 or q8_0-q4_0 (8-bit keys, 4-bit values)"),
            }),
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
        self.layers * dtype.bytes((self.key_block_len(), self.block_len()), self.head_dim)
    }

    /// [`q8_group`] of this layout's heads.
    pub fn q8_group(&self) -> Option<usize> {
        q8_group(self.head_dim)
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
    /// The parent key of its first block: its cache scope's root.
    root: u64,
}

impl BlockTable {
    /// Positions computed.
    pub fn len(&self) -> usize {
        self.len
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

/// Positions to copy from one block to another, in every layer, keys and values: the first
/// `positions` of `from` into the start of `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// The block copied from.
    pub from: BlockId,
    /// The block copied into.
    pub to: BlockId,
    /// Leading positions copied.
    pub positions: usize,
}

/// Which blocks every sequence holds, and which are cached.
pub struct BlockPool {
    layout: KvLayout,
    refs: Vec<u32>,
    /// Blocks holding nothing cached.
    free: Vec<BlockId>,
    cache: PrefixCache,
}

impl BlockPool {
    /// A pool of `blocks` blocks (at least one).
    pub fn new(layout: KvLayout, blocks: usize) -> Self {
        let blocks = blocks.max(1);
        Self {
            layout,
            refs: vec![0; blocks],
            free: (0..blocks as BlockId).rev().collect(),
            cache: PrefixCache::new(blocks),
        }
    }

    /// The pool's shape.
    pub fn layout(&self) -> KvLayout {
        self.layout
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
    /// full blocks found in the prefix cache of cache scope `scope` is shared, leaving at
    /// least the last token to compute (its logits are needed). The copy, if any, must be
    /// carried out now.
    pub fn start(&mut self, prompt: &[u32], scope: u64) -> (BlockTable, Option<BlockCopy>) {
        let bs = self.layout.block_size;
        let usable = prompt.len().saturating_sub(1) / bs;
        let root = prefix::root(scope);
        let mut table = BlockTable {
            root,
            ..BlockTable::default()
        };
        let mut parent = root;
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
        let copy = match self.cache.find_partial(parent, &prompt[table.len..table.len + rest]) {
            Some((from, common)) => self.copy_partial(&mut table, from, common),
            None => None,
        };
        table.cached = table.len;
        (table, copy)
    }

    /// Starts a new block of `table` with the first `n` positions of the cached partial
    /// block `from` (the same tokens after the same prefix: the same keys and values); the
    /// copy for the storage to make, `None` when no block was free.
    fn copy_partial(&mut self, table: &mut BlockTable, from: BlockId, n: usize) -> Option<BlockCopy> {
        self.take(from);
        let copy = self.alloc().map(|to| {
            table.blocks.push(to);
            table.len += n;
            BlockCopy { from, to, positions: n }
        });
        self.release_block(from);
        copy
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
            let parent = table.hashes.last().copied().unwrap_or(table.root);
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
    /// are simply computed again. The copy, if any, must be carried out now.
    pub fn truncate(&mut self, table: &mut BlockTable, len: usize) -> Option<BlockCopy> {
        if len >= table.len {
            return None;
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
        let mut copy = None;
        if table.hashes.len() > full {
            table.hashes.truncate(full);
            if !len.is_multiple_of(bs) {
                if let Some(shared) = table.blocks.pop() {
                    table.len = full * bs;
                    copy = self.copy_partial(table, shared, len % bs);
                    self.release_block(shared);
                }
            }
        }
        table.cached = table.cached.min(table.len);
        copy
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
                    None => Some(table.root),
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
}

#[cfg(test)]
mod tests;
