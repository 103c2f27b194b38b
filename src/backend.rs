//! Where forward passes run, chosen once at load.
//!
//! - [`Backend::Paged`]: CPU with our packed kernels on slices; every sequence's keys and
//!   values live in one [`BlockPool`] with a prefix cache, and one call runs all sequences'
//!   rows together ([`Llama::forward_batch`]).
//! - [`Backend::Candle`]: candle ops (CUDA, Metal, and the exact f32 path on CPU, which is
//!   the reference the parity tests hold to transformers); each sequence has its own
//!   [`KvCache`] and runs in turn. A finished sequence's cache is kept for reuse by a later
//!   prompt that starts with the same tokens (a chat's next turn), as llama.cpp's slots do.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kv::{BlockPool, BlockTable, KvDType, KvLayout, DEFAULT_BLOCK_SIZE};
use crate::model::batch::BatchChunk;
use crate::model::kv_cache::KvCache;
use crate::model::Llama;

/// Finished sequences' caches kept for prefix reuse on the candle backend.
const IDLE_CACHES: usize = 4;

/// The keys and values of one sequence, in the backend's form.
pub enum SeqKv {
    /// Blocks of the shared pool.
    Paged(BlockTable),
    /// A cache of its own, and the tokens in it.
    Candle(KvCache, Vec<u32>),
}

/// Work for one sequence in a step: run `tokens[computed..computed + n]`.
pub struct Work<'a> {
    /// The sequence's keys and values.
    pub kv: &'a mut SeqKv,
    /// All of the sequence's tokens from position 0.
    pub tokens: &'a [u32],
    /// How many of its pending tokens to run.
    pub n: usize,
    /// How many of the last of them want their logits (more than 1 only on the paged
    /// backend: speculated tokens being verified).
    pub logits: usize,
}

/// Memory use of the KV cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvUsage {
    /// Blocks held by sequences (0 on the candle backend).
    pub used_blocks: usize,
    /// Blocks in the pool (0 on the candle backend).
    pub total_blocks: usize,
    /// Positions per block.
    pub block_size: usize,
}

/// The forward-pass engine of a loaded model (one per engine, so the variants' sizes do not matter).
#[allow(clippy::large_enum_variant)]
pub enum Backend {
    /// Packed CPU kernels over a paged KV pool.
    Paged {
        /// The model.
        model: Arc<Llama>,
        /// Every sequence's keys and values.
        pool: BlockPool,
    },
    /// candle ops, one sequence at a time.
    Candle {
        /// The model.
        model: Arc<Llama>,
        /// Prompt tokens per forward pass.
        prefill_chunk: usize,
        /// Caches of finished sequences, most recent last.
        idle: Vec<(KvCache, Vec<u32>)>,
    },
}

impl Backend {
    /// The paged backend when the model runs batched on slices (CPU, packed weights),
    /// with a pool of `kv_bytes` storing `kv_dtype`; the candle backend otherwise.
    pub fn new(model: Arc<Llama>, (kv_bytes, kv_dtype): (usize, KvDType), prefill_chunk: usize) -> Self {
        if !model.runs_batched() || !model.has_packed_layers() {
            return Self::Candle {
                model,
                prefill_chunk,
                idle: Vec::new(),
            };
        }
        let layout = pool_layout(&model);
        let blocks = layout.blocks_in(kv_bytes, kv_dtype);
        Self::Paged {
            model,
            pool: BlockPool::new(layout, blocks, kv_dtype),
        }
    }

    /// [`Backend::new`] with a pool that holds `positions` positions (one sequence's, as a
    /// draft model's own backend).
    pub fn for_positions(model: Arc<Llama>, positions: usize, kv_dtype: KvDType, prefill_chunk: usize) -> Self {
        let layout = pool_layout(&model);
        let blocks = positions.div_ceil(layout.block_size) + 1;
        Self::new(model, (blocks * layout.block_bytes(kv_dtype), kv_dtype), prefill_chunk)
    }

    /// True for the batched paged backend.
    pub fn is_paged(&self) -> bool {
        matches!(self, Self::Paged { .. })
    }

    /// Most positions one sequence can hold (`None`: no pool limit).
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            Self::Paged { pool, .. } => Some(pool.capacity() * pool.layout().block_size),
            Self::Candle { .. } => None,
        }
    }

    /// KV memory in use.
    pub fn usage(&self) -> KvUsage {
        match self {
            Self::Paged { pool, .. } => KvUsage {
                used_blocks: pool.used(),
                total_blocks: pool.capacity(),
                block_size: pool.layout().block_size,
            },
            Self::Candle { .. } => KvUsage::default(),
        }
    }

    /// Keys and values for a new sequence starting with `prompt`, reusing what is cached of
    /// its prefix; `ctx` is its context window.
    pub fn start(&mut self, prompt: &[u32], ctx: usize) -> SeqKv {
        match self {
            Self::Paged { pool, .. } => SeqKv::Paged(pool.start(prompt)),
            Self::Candle { model, idle, .. } => {
                let common = |t: &[u32]| t.iter().zip(prompt).take_while(|(a, b)| a == b).count();
                let best = (0..idle.len())
                    .filter(|&i| idle[i].0.max_len() == ctx)
                    .max_by_key(|&i| common(&idle[i].1));
                let (mut cache, mut tokens) = match best {
                    Some(i) => idle.remove(i),
                    None => (model.new_cache(ctx), Vec::new()),
                };
                let keep = common(&tokens).min(prompt.len().saturating_sub(1));
                cache.truncate(keep);
                tokens.truncate(keep);
                SeqKv::Candle(cache, tokens)
            }
        }
    }

    /// Positions of `kv` already computed.
    pub fn computed(kv: &SeqKv) -> usize {
        match kv {
            SeqKv::Paged(t) => t.len(),
            SeqKv::Candle(c, _) => c.len(),
        }
    }

    /// Positions of `kv` that came from a cache when it started.
    pub fn cached(kv: &SeqKv) -> usize {
        match kv {
            SeqKv::Paged(t) => t.cached(),
            SeqKv::Candle(c, _) => c.len(),
        }
    }

    /// Blocks that `n` more positions of `kv` would take beyond what it holds.
    pub fn blocks_needed(&self, kv: &SeqKv, n: usize) -> usize {
        match (self, kv) {
            (Self::Paged { pool, .. }, SeqKv::Paged(t)) => {
                pool.blocks_for(t.len() + n).saturating_sub(t.blocks().len())
            }
            _ => 0,
        }
    }

    /// Blocks that can be given out now (`usize::MAX` without a pool).
    pub fn available(&self) -> usize {
        match self {
            Self::Paged { pool, .. } => pool.available(),
            Self::Candle { .. } => usize::MAX,
        }
    }

    /// Makes room for `n` more positions of `kv`; false when the pool is short.
    pub fn reserve(&mut self, kv: &mut SeqKv, n: usize) -> bool {
        match (self, kv) {
            (Self::Paged { pool, .. }, SeqKv::Paged(t)) => pool.reserve(t, n),
            _ => true,
        }
    }

    /// Forgets the positions of `kv` from `len` on (speculated tokens that were not
    /// accepted).
    pub fn truncate(&mut self, kv: &mut SeqKv, len: usize) {
        match (self, kv) {
            (Self::Paged { pool, .. }, SeqKv::Paged(t)) => pool.truncate(t, len),
            (Self::Candle { .. }, SeqKv::Candle(cache, fed)) => {
                cache.truncate(len);
                fed.truncate(len);
            }
            _ => {}
        }
    }

    /// Gives `kv` back (to the pool, or to the idle caches); `tokens` are the sequence's.
    pub fn release(&mut self, kv: SeqKv, tokens: &[u32]) {
        match (self, kv) {
            (Self::Paged { pool, .. }, SeqKv::Paged(t)) => pool.release(t, tokens),
            (Self::Candle { idle, .. }, SeqKv::Candle(cache, tokens)) => {
                idle.push((cache, tokens));
                if idle.len() > IDLE_CACHES {
                    idle.remove(0);
                }
            }
            _ => {}
        }
    }

    /// Runs one step: every work item's tokens; returns the logits of those that asked, in
    /// order. Room must have been reserved.
    pub fn forward(&mut self, work: &mut [Work]) -> Result<Vec<Vec<f32>>> {
        match self {
            Self::Paged { model, pool } => {
                let mut chunks = Vec::with_capacity(work.len());
                for w in work.iter() {
                    let SeqKv::Paged(table) = &*w.kv else {
                        return Err(mixed());
                    };
                    let start = table.len();
                    chunks.push(BatchChunk {
                        table,
                        tokens: &w.tokens[start..start + w.n],
                        logits: w.logits,
                    });
                }
                let logits = model.forward_batch(pool, &chunks)?;
                drop(chunks);
                for w in work.iter_mut() {
                    if let SeqKv::Paged(table) = &mut *w.kv {
                        pool.commit(table, w.tokens, w.n);
                    }
                }
                Ok(logits)
            }
            Self::Candle {
                model, prefill_chunk, ..
            } => {
                let mut out = Vec::new();
                for w in work.iter_mut() {
                    let SeqKv::Candle(cache, fed) = &mut *w.kv else {
                        return Err(mixed());
                    };
                    let start = cache.len();
                    let ids = &w.tokens[start..start + w.n];
                    let logits = model.forward(ids, cache, *prefill_chunk)?;
                    fed.extend_from_slice(ids);
                    if w.logits > 0 {
                        out.push(logits.to_vec1()?);
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The pool shape of `model`'s keys and values.
fn pool_layout(model: &Llama) -> KvLayout {
    let c = model.config();
    KvLayout {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        block_size: DEFAULT_BLOCK_SIZE,
    }
}

fn mixed() -> Error {
    Error::Candle(candle_core::Error::Msg(
        "a sequence's KV cache is of another backend".into(),
    ))
}
