//! The CPU backend: every linear layer packed (q8_0, q4k, q4k_m: our integer kernels) or
//! dense f32, one forward pass over all running sequences per step, keys and values in one
//! paged pool with a prefix cache (`kv_store::KvPool`: the bookkeeping of
//! `crate::kv` and the bytes of `kv_store`).
//!
//! This folder is the only place with `unsafe` code: the SIMD kernels of `quant/`, the
//! f16 attention kernels and the one GEMM call, each block with its SAFETY note.

#![deny(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod isa;

mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
mod attention_f16;
mod attention_q8;
mod dequant;
mod forward;
mod gemv;
mod half_rows;
mod kv_store;
mod linear;
pub(crate) mod model;
/// Zeroed buffers in transparent huge pages (the packed weights).
mod pages;
#[doc(hidden)]
pub mod quant;
mod rows;
#[doc(hidden)]
pub mod spare;
mod widen;

use std::sync::Arc;

use super::{KvUsage, SeqId, Slab, Work};
use crate::error::{Error, Result};
use crate::kv::{BlockTable, KvDType, KvLayout, DEFAULT_BLOCK_SIZE};
use forward::BatchChunk;
use kv_store::KvPool;
use model::CpuModel;

/// The CPU model, the pool and the block tables of its sequences.
pub(crate) struct CpuBackend {
    model: Arc<CpuModel>,
    pool: KvPool,
    seqs: Slab<BlockTable>,
}

impl CpuBackend {
    /// A backend running `model` with a pool of `kv_bytes` storing `kv_dtype`.
    pub fn new(model: Arc<CpuModel>, kv_bytes: usize, kv_dtype: KvDType) -> Self {
        let layout = pool_layout(&model);
        let blocks = layout.blocks_in(kv_bytes, kv_dtype);
        Self {
            model,
            pool: KvPool::new(layout, blocks, kv_dtype),
            seqs: Slab::default(),
        }
    }

    /// Most positions one sequence can hold.
    pub fn max_positions(&self) -> usize {
        self.pool.blocks().capacity() * self.pool.blocks().layout().block_size
    }

    /// Bytes of the pool's blocks, keys and values of every layer.
    pub fn kv_bytes(&self) -> usize {
        let blocks = self.pool.blocks();
        blocks.capacity() * blocks.layout().block_bytes(self.pool.store().dtype())
    }

    /// Blocks in use and in all.
    pub fn usage(&self) -> KvUsage {
        KvUsage {
            used_blocks: self.pool.blocks().used(),
            total_blocks: self.pool.blocks().capacity(),
            block_size: self.pool.blocks().layout().block_size,
        }
    }

    /// A new sequence starting with `prompt`, reusing the cached blocks of its prefix.
    pub fn start(&mut self, prompt: &[u32], scope: u64) -> SeqId {
        let table = self.pool.start(prompt, scope);
        self.seqs.insert(table)
    }

    /// Positions of `id` computed, and how many of them came from the prefix cache.
    pub fn positions(&self, id: SeqId) -> Result<(usize, usize)> {
        let t = self.seqs.get(id)?;
        Ok((t.len(), t.cached()))
    }

    /// Blocks that `n` more positions of `id` would take beyond what it holds.
    pub fn blocks_needed(&self, id: SeqId, n: usize) -> Result<usize> {
        let t = self.seqs.get(id)?;
        Ok(self
            .pool
            .blocks()
            .blocks_for(t.len() + n)
            .saturating_sub(t.blocks().len()))
    }

    /// Blocks that can be given out now.
    pub fn available(&self) -> usize {
        self.pool.blocks().available()
    }

    /// Makes room for `n` more positions of `id`; false when the pool is short.
    pub fn reserve(&mut self, id: SeqId, n: usize) -> Result<bool> {
        let t = self.seqs.get_mut(id)?;
        Ok(self.pool.reserve(t, n))
    }

    /// Forgets the positions of `id` from `len` on.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let t = self.seqs.get_mut(id)?;
        self.pool.truncate(t, len);
        Ok(())
    }

    /// Gives the blocks of `id` back to the pool; `tokens` are the sequence's, for the
    /// prefix cache.
    pub fn release(&mut self, id: SeqId, tokens: &[u32]) -> Result<()> {
        let t = self.seqs.remove(id)?;
        self.pool.release(t, tokens);
        Ok(())
    }

    /// One forward pass over every work item's tokens together.
    pub fn forward(&mut self, work: &[Work]) -> Result<Vec<Vec<f32>>> {
        let mut chunks = Vec::with_capacity(work.len());
        for w in work {
            let table = self.seqs.get(w.seq)?;
            let start = table.len();
            let tokens = w
                .tokens
                .get(start..start + w.n)
                .ok_or_else(|| Error::Internal("work past the sequence's tokens".into()))?;
            chunks.push(BatchChunk {
                table,
                tokens,
                logits: w.logits,
            });
        }
        let logits = self.model.forward(&mut self.pool, &chunks)?;
        drop(chunks);
        for w in work {
            let table = self.seqs.get_mut(w.seq)?;
            self.pool.commit(table, w.tokens, w.n);
        }
        Ok(logits)
    }
}

/// The pool shape of `model`'s keys and values.
fn pool_layout(model: &CpuModel) -> KvLayout {
    let c = &model.config;
    KvLayout {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        block_size: DEFAULT_BLOCK_SIZE,
    }
}

/// Bytes of a pool holding `positions` positions of `model` in `kv_dtype` (one block more,
/// for a partial block).
pub(crate) fn pool_bytes_for(model: &CpuModel, positions: usize, kv_dtype: KvDType) -> usize {
    let layout = pool_layout(model);
    (positions.div_ceil(layout.block_size) + 1) * layout.block_bytes(kv_dtype)
}
