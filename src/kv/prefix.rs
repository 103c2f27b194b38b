//! The prefix cache: full blocks found by the tokens they hold and every token before them,
//! and a least-recently-used order of the cached blocks no sequence uses.
//!
//! A block is keyed by a hash of (its parent's key, its tokens). A hit also compares the
//! stored parent key and tokens, so a hash collision can only make a lookup miss, never
//! share the wrong keys and values.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use super::BlockId;

/// The parent key of a sequence's first block.
pub const ROOT: u64 = 0x006c_6c61_6d61_3332;

struct Entry {
    block: BlockId,
    parent: u64,
    tokens: Vec<u32>,
}

/// Cached blocks by prefix key, and the unused ones in least-recently-used order.
pub struct PrefixCache {
    entries: HashMap<u64, Entry>,
    /// The key of each block that is cached.
    key_of: Vec<Option<u64>>,
    /// Partly filled last blocks of finished sequences, by their parent's key: the tokens
    /// they hold. A new sequence copies the positions it shares instead of computing them.
    partial: HashMap<u64, (BlockId, Vec<u32>)>,
    /// The parent key of each block in `partial`.
    partial_of: Vec<Option<u64>>,
    /// Unused cached blocks by the tick they were last released at.
    lru: BTreeMap<u64, BlockId>,
    /// The tick of each block in `lru`.
    tick_of: Vec<Option<u64>>,
    tick: u64,
}

/// The parent key of the first block of a sequence in cache scope `scope`: sequences of
/// different scopes never share blocks (0 is the shared scope).
pub fn root(scope: u64) -> u64 {
    match scope {
        0 => ROOT,
        s => key(ROOT, &[s as u32, (s >> 32) as u32]),
    }
}

/// The key of a block holding `tokens` after the block keyed `parent`.
pub fn key(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl PrefixCache {
    /// An empty cache for a pool of `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        Self {
            entries: HashMap::new(),
            key_of: vec![None; blocks],
            partial: HashMap::new(),
            partial_of: vec![None; blocks],
            lru: BTreeMap::new(),
            tick_of: vec![None; blocks],
            tick: 0,
        }
    }

    /// The cached block holding `tokens` after the block keyed `parent`, with its key.
    pub fn find(&self, parent: u64, tokens: &[u32]) -> Option<(BlockId, u64)> {
        let k = key(parent, tokens);
        let e = self.entries.get(&k)?;
        (e.parent == parent && e.tokens == tokens).then_some((e.block, k))
    }

    /// Registers `block` (full, in use) as holding `tokens` after `parent`; returns its key.
    /// When the key is already cached in another block, that one stays the cached copy.
    pub fn insert(&mut self, parent: u64, tokens: &[u32], block: BlockId) -> u64 {
        let k = key(parent, tokens);
        if !self.entries.contains_key(&k) && self.key_of[block as usize].is_none() {
            self.entries.insert(
                k,
                Entry {
                    block,
                    parent,
                    tokens: tokens.to_vec(),
                },
            );
            self.key_of[block as usize] = Some(k);
            // Also findable by a prompt that shares only the start of this block.
            self.insert_partial(parent, tokens, block);
        }
        k
    }

    /// Remembers `block` as holding `tokens` after the block keyed `parent`, for prompts
    /// that share only the start of it (a full block, or the partly filled last block of a
    /// finished sequence); it replaces an older one of that parent.
    pub fn insert_partial(&mut self, parent: u64, tokens: &[u32], block: BlockId) {
        if tokens.is_empty() {
            return;
        }
        if let Some((old, _)) = self.partial.insert(parent, (block, tokens.to_vec())) {
            if old != block {
                self.partial_of[old as usize] = None;
            }
        }
        self.partial_of[block as usize] = Some(parent);
    }

    /// The partial block after `parent` and how many of its leading positions hold
    /// `tokens`' leading tokens.
    pub fn find_partial(&self, parent: u64, tokens: &[u32]) -> Option<(BlockId, usize)> {
        let (block, held) = self.partial.get(&parent)?;
        let common = held.iter().zip(tokens).take_while(|(a, b)| a == b).count();
        (common > 0).then_some((*block, common))
    }

    /// `block` is no longer used by any sequence: true when it is cached (it then waits in
    /// the LRU order), false when it holds nothing worth keeping.
    pub fn unused(&mut self, block: BlockId) -> bool {
        let b = block as usize;
        if self.key_of[b].is_none() && self.partial_of[b].is_none() {
            return false;
        }
        self.tick += 1;
        self.lru.insert(self.tick, block);
        self.tick_of[block as usize] = Some(self.tick);
        true
    }

    /// A cached, unused `block` is taken by a sequence again.
    pub fn used(&mut self, block: BlockId) {
        if let Some(t) = self.tick_of[block as usize].take() {
            self.lru.remove(&t);
        }
    }

    /// Cached blocks no sequence uses.
    pub fn evictable(&self) -> usize {
        self.lru.len()
    }

    /// Forgets the least recently used unused block and returns it.
    pub fn evict(&mut self) -> Option<BlockId> {
        let (_, block) = self.lru.pop_first()?;
        self.forget(block);
        Some(block)
    }

    /// Drops whatever `block` is cached as (it is about to hold other positions).
    pub fn forget(&mut self, block: BlockId) {
        let b = block as usize;
        self.tick_of[b] = None;
        if let Some(k) = self.key_of[b].take() {
            self.entries.remove(&k);
        }
        if let Some(parent) = self.partial_of[b].take() {
            if self.partial.get(&parent).is_some_and(|(p, _)| *p == block) {
                self.partial.remove(&parent);
            }
        }
    }
}
