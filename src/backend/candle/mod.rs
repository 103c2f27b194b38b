//! The candle backend: CUDA, Metal, 16-bit CPU and candle's quantized CPU kernels (where our
//! packed kernels do not run), and the exact f32 reference the parity tests hold to
//! transformers. Each sequence has its own [`KvCache`] and runs in turn; a finished
//! sequence's cache is kept for a later prompt that starts with the same tokens (a chat's
//! next turn), as llama.cpp's slots do.

pub(crate) mod attention;
mod kv_cache;
mod linear;
mod mlp;
pub(crate) mod model;
mod norm;
mod rope;

use std::sync::Arc;

use super::{SeqId, Slab, Work};
use crate::error::Result;
use kv_cache::KvCache;
use model::CandleModel;

/// Finished sequences' caches kept for prefix reuse.
const IDLE_CACHES: usize = 4;

/// One sequence's cache and the tokens in it.
struct Seq {
    cache: KvCache,
    tokens: Vec<u32>,
    /// Positions reused from an idle cache when it started.
    cached: usize,
    /// Its cache scope: an idle cache is reused only within one.
    scope: u64,
}

/// The candle model and its sequences' caches.
pub(crate) struct CandleBackend {
    model: Arc<CandleModel>,
    prefill_chunk: usize,
    seqs: Slab<Seq>,
    idle: Vec<Seq>,
}

impl CandleBackend {
    /// A backend running `model`, prompts in passes of at most `prefill_chunk` tokens.
    pub fn new(model: Arc<CandleModel>, prefill_chunk: usize) -> Self {
        Self {
            model,
            prefill_chunk: prefill_chunk.max(1),
            seqs: Slab::default(),
            idle: Vec::new(),
        }
    }

    /// A new sequence starting with `prompt` in a context of `ctx` positions, reusing the
    /// idle cache that shares the longest prefix with it.
    pub fn start(&mut self, prompt: &[u32], ctx: usize, scope: u64) -> SeqId {
        let common = |t: &[u32]| t.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let best = (0..self.idle.len())
            .filter(|&i| self.idle[i].cache.max_len() == ctx && self.idle[i].scope == scope)
            .max_by_key(|&i| common(&self.idle[i].tokens));
        let mut seq = match best {
            Some(i) => self.idle.remove(i),
            None => Seq {
                cache: self.model.new_cache(ctx),
                tokens: Vec::new(),
                cached: 0,
                scope,
            },
        };
        let keep = common(&seq.tokens).min(prompt.len().saturating_sub(1));
        seq.cache.truncate(keep);
        seq.tokens.truncate(keep);
        seq.cached = keep;
        self.seqs.insert(seq)
    }

    /// Positions of `id` computed, and how many of them came from a cache.
    pub fn positions(&self, id: SeqId) -> Result<(usize, usize)> {
        let s = self.seqs.get(id)?;
        Ok((s.cache.len(), s.cached))
    }

    /// Forgets the positions of `id` from `len` on.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let s = self.seqs.get_mut(id)?;
        s.cache.truncate(len);
        s.tokens.truncate(len);
        Ok(())
    }

    /// Ends `id`, keeping its cache for reuse.
    pub fn release(&mut self, id: SeqId) -> Result<()> {
        let seq = self.seqs.remove(id)?;
        self.idle.push(seq);
        if self.idle.len() > IDLE_CACHES {
            self.idle.remove(0);
        }
        Ok(())
    }

    /// Runs every work item in turn, prompts in passes of at most the prefill chunk;
    /// returns the logits rows asked for, in order.
    pub fn forward(&mut self, work: &[Work]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::new();
        for w in work {
            let seq = self.seqs.get_mut(w.seq)?;
            let start = seq.cache.len();
            let ids = &w.tokens[start..start + w.n];
            let first_wanted = w.n - w.logits.min(w.n);
            let mut at = 0;
            for piece in ids.chunks(self.prefill_chunk) {
                let wanted = (at + piece.len()).saturating_sub(first_wanted.max(at));
                out.extend(self.model.forward(piece, &mut seq.cache, wanted)?);
                seq.tokens.extend_from_slice(piece);
                at += piece.len();
            }
        }
        Ok(out)
    }
}
