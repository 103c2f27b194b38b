//! Where forward passes run, chosen once at load.
//!
//! - [`cpu`]: our packed kernels (q8_0, q4k, q4k_m) and dense f32 / bf16 / f16 weights
//!   (f32 activations) on CPU slices; every
//!   sequence's keys and values live in one paged pool with a prefix cache, and one call
//!   runs all sequences' rows together.
//! - `candle`: candle ops (CUDA, Metal, candle's quantized kernels where
//!   ours do not run, and the f32 reference the parity tests hold to transformers); each
//!   sequence has its own cache and runs in turn.
//!
//! A sequence's keys and values live inside the backend that started it, named by a
//! `SeqId`: a sequence cannot be handed to a backend of the other kind.

pub(crate) mod candle;
pub mod cpu;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

use std::sync::Arc;

use candle_core::Device;

use crate::config::LlamaConfig;
use crate::device::ComputeDType;
use crate::error::{Error, Result};
use crate::kv::KvDType;
use crate::weights::Weights;
use candle::model::CandleModel;
use cpu::model::CpuModel;

/// A sequence started on a [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SeqId(usize);

/// Items named by [`SeqId`]s: a vector of slots and a free list.
pub(crate) struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, item: T) -> SeqId {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(item);
                SeqId(i)
            }
            None => {
                self.slots.push(Some(item));
                SeqId(self.slots.len() - 1)
            }
        }
    }

    fn get(&self, id: SeqId) -> Result<&T> {
        self.slots.get(id.0).and_then(Option::as_ref).ok_or_else(|| unknown(id))
    }

    fn get_mut(&mut self, id: SeqId) -> Result<&mut T> {
        self.slots
            .get_mut(id.0)
            .and_then(Option::as_mut)
            .ok_or_else(|| unknown(id))
    }

    fn remove(&mut self, id: SeqId) -> Result<T> {
        let item = self
            .slots
            .get_mut(id.0)
            .and_then(Option::take)
            .ok_or_else(|| unknown(id))?;
        self.free.push(id.0);
        Ok(item)
    }
}

fn unknown(id: SeqId) -> Error {
    Error::Internal(format!("sequence {} is not running on this backend", id.0))
}

/// Work for one sequence in a step: run `tokens[computed..computed + n]`.
pub(crate) struct Work<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// All of the sequence's tokens from position 0.
    pub tokens: &'a [u32],
    /// How many of its pending tokens to run.
    pub n: usize,
    /// How many of the last of them want their logits.
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

/// Which backend runs a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BackendKind {
    /// The CPU backend where it can run the format (f32, bf16, f16, or the packed formats on
    /// x86 with AVX2 or AVX-512), candle otherwise.
    #[default]
    Auto,
    /// candle ops, always (the f32 reference on CPU).
    Candle,
}

/// A loaded model in the form of the backend that runs it.
#[derive(Debug, Clone)]
pub(crate) enum Model {
    /// For the CPU backend.
    Cpu(Arc<CpuModel>),
    /// For the candle backend.
    Candle(Arc<CandleModel>),
}

impl Model {
    /// Loads `weights` (already checked against `cfg`) in `format` on `device`, for the
    /// backend `kind` picks.
    pub fn load(
        cfg: &LlamaConfig,
        weights: &Weights,
        format: ComputeDType,
        device: &Device,
        kind: BackendKind,
    ) -> Result<Self> {
        let packed_here = format.quant().is_some() && cpu::quant::Isa::detect() != cpu::quant::Isa::Portable;
        let dense = matches!(format, ComputeDType::F32 | ComputeDType::Bf16 | ComputeDType::F16);
        let on_cpu = device.is_cpu() && kind == BackendKind::Auto && (dense || packed_here);
        Ok(match on_cpu {
            true => Self::Cpu(Arc::new(CpuModel::load(cfg, weights, format)?)),
            false => Self::Candle(Arc::new(CandleModel::load(cfg, weights, format, device)?)),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        match self {
            Self::Cpu(m) => &m.config,
            Self::Candle(m) => m.config(),
        }
    }

    /// True for the batched CPU backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu(_))
    }

    /// A backend running this model: a pool of `kv_bytes` storing `kv_dtype` on the CPU
    /// backend; candle prompts in passes of `prefill_chunk` tokens.
    pub fn backend(&self, kv_bytes: usize, kv_dtype: KvDType, prefill_chunk: usize) -> Backend {
        match self {
            Self::Cpu(m) => Backend::Cpu(cpu::CpuBackend::new(m.clone(), kv_bytes, kv_dtype)),
            Self::Candle(m) => Backend::Candle(candle::CandleBackend::new(m.clone(), prefill_chunk)),
        }
    }

    /// A backend for one sequence of at most `positions` positions (a draft model's, a
    /// perplexity run's).
    pub fn backend_for(&self, positions: usize, kv_dtype: KvDType, prefill_chunk: usize) -> Backend {
        let bytes = match self {
            Self::Cpu(m) => cpu::pool_bytes_for(m, positions, kv_dtype),
            Self::Candle(_) => 0,
        };
        self.backend(bytes, kv_dtype, prefill_chunk)
    }
}

/// The forward-pass engine of a loaded model and the keys and values of its sequences.
// One per engine (or session): the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Backend {
    /// Packed or f32 CPU kernels over a paged KV pool.
    Cpu(cpu::CpuBackend),
    /// candle ops, one sequence at a time.
    Candle(candle::CandleBackend),
}

impl Backend {
    /// True for the batched CPU backend.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Self::Cpu(_))
    }

    /// Most positions one sequence can hold (`None`: no pool limit).
    pub fn max_positions(&self) -> Option<usize> {
        match self {
            Self::Cpu(b) => Some(b.max_positions()),
            Self::Candle(_) => None,
        }
    }

    /// Bytes of the paged pool, as allocated (`None`: no pool).
    pub fn kv_bytes(&self) -> Option<usize> {
        match self {
            Self::Cpu(b) => Some(b.kv_bytes()),
            Self::Candle(_) => None,
        }
    }

    /// KV memory in use.
    pub fn usage(&self) -> KvUsage {
        match self {
            Self::Cpu(b) => b.usage(),
            Self::Candle(_) => KvUsage::default(),
        }
    }

    /// A new sequence starting with `prompt` in a context of `ctx` positions, reusing what
    /// is cached of its prefix within cache scope `scope` (0: the shared scope).
    pub fn start(&mut self, prompt: &[u32], ctx: usize, scope: u64) -> SeqId {
        match self {
            Self::Cpu(b) => b.start(prompt, scope),
            Self::Candle(b) => b.start(prompt, ctx, scope),
        }
    }

    /// Positions of `id` computed, and how many of them came from a cache when it started
    /// (none for a sequence not running here).
    pub fn positions(&self, id: SeqId) -> (usize, usize) {
        let got = match self {
            Self::Cpu(b) => b.positions(id),
            Self::Candle(b) => b.positions(id),
        };
        got.unwrap_or((0, 0))
    }

    /// Blocks that `n` more positions of `id` would take beyond what it holds.
    pub fn blocks_needed(&self, id: SeqId, n: usize) -> usize {
        match self {
            Self::Cpu(b) => b.blocks_needed(id, n).unwrap_or(0),
            Self::Candle(_) => 0,
        }
    }

    /// Blocks that can be given out now (`usize::MAX` without a pool).
    pub fn available(&self) -> usize {
        match self {
            Self::Cpu(b) => b.available(),
            Self::Candle(_) => usize::MAX,
        }
    }

    /// Makes room for `n` more positions of `id`; false when the pool is short (or `id` is
    /// not running here).
    pub fn reserve(&mut self, id: SeqId, n: usize) -> bool {
        match self {
            Self::Cpu(b) => b.reserve(id, n).unwrap_or(false),
            Self::Candle(_) => true,
        }
    }

    /// Forgets the positions of `id` from `len` on (speculated tokens that were not
    /// accepted).
    pub fn truncate(&mut self, id: SeqId, len: usize) {
        // A sequence not running here holds nothing to forget.
        let _ = match self {
            Self::Cpu(b) => b.truncate(id, len),
            Self::Candle(b) => b.truncate(id, len),
        };
    }

    /// Ends `id`: its blocks go back to the pool (or its cache to the idle ones); `tokens`
    /// are the sequence's.
    pub fn release(&mut self, id: SeqId, tokens: &[u32]) {
        // A sequence not running here holds nothing to free.
        let _ = match self {
            Self::Cpu(b) => b.release(id, tokens),
            Self::Candle(b) => b.release(id),
        };
    }

    /// Runs one step: every work item's tokens; returns the logits rows of those that asked,
    /// in order. Room must have been reserved.
    pub fn forward(&mut self, work: &[Work]) -> Result<Vec<Vec<f32>>> {
        match self {
            Self::Cpu(b) => b.forward(work),
            Self::Candle(b) => b.forward(work),
        }
    }
}

/// The vocabulary check every backend makes before a forward pass.
pub(crate) fn check_vocab(tokens: &[u32], vocab: usize) -> Result<()> {
    match tokens.iter().find(|&&t| t as usize >= vocab) {
        Some(&bad) => Err(Error::InvalidParameter {
            name: "prompt",
            reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
        }),
        None => Ok(()),
    }
}

/// One sequence on a backend of its own, driven directly: the caller appends tokens and
/// reads their logits, through the same forward pass the scheduler's requests use (for
/// perplexity, prompt scoring and draft models). Made by
/// [`Engine::session`](crate::Engine::session).
pub struct Session {
    backend: Backend,
    seq: SeqId,
    tokens: Vec<u32>,
    ctx: usize,
    chunk: usize,
}

impl Session {
    /// A session of at most `ctx` positions on a new backend of `model`, prompts in passes
    /// of at most `chunk` tokens.
    pub(crate) fn new(model: &Model, ctx: usize, kv_dtype: KvDType, chunk: usize) -> Self {
        let mut backend = model.backend_for(ctx, kv_dtype, chunk);
        let seq = backend.start(&[], ctx, 0);
        Self {
            backend,
            seq,
            tokens: Vec::new(),
            ctx,
            chunk: chunk.max(1),
        }
    }

    /// Positions computed so far.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Positions left in the session's context.
    pub fn room(&self) -> usize {
        self.ctx - self.tokens.len()
    }

    /// The tokens computed so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Runs `tokens` after those computed, in passes of at most the session's chunk, and
    /// returns the f32 logits of the last `logits` of them, one row each.
    pub fn run(&mut self, tokens: &[u32], logits: usize) -> Result<Vec<Vec<f32>>> {
        if self.tokens.len() + tokens.len() > self.ctx {
            return Err(Error::InvalidParameter {
                name: "ctx-size",
                reason: format!(
                    "{} positions do not fit the session's {}",
                    self.tokens.len() + tokens.len(),
                    self.ctx
                ),
            });
        }
        let first_wanted = tokens.len() - logits.min(tokens.len());
        let mut out = Vec::new();
        for (i, piece) in tokens.chunks(self.chunk).enumerate() {
            let at = i * self.chunk;
            let wanted = (at + piece.len()).saturating_sub(first_wanted.max(at));
            if !self.backend.reserve(self.seq, piece.len()) {
                return Err(Error::Internal("a session's pool is too small for its context".into()));
            }
            self.tokens.extend_from_slice(piece);
            let work = Work {
                seq: self.seq,
                tokens: &self.tokens,
                n: piece.len(),
                logits: wanted,
            };
            let rows = self.backend.forward(&[work]);
            if rows.is_err() {
                self.tokens.truncate(self.tokens.len() - piece.len());
            }
            out.extend(rows?);
        }
        Ok(out)
    }

    /// Forgets the positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.backend.truncate(self.seq, len);
        self.tokens.truncate(len);
    }
}
