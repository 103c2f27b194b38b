//! A sequence being generated: its KV cache and the tokens in it, and the decode loop.
//!
//! A [`Session`] keeps its cache between calls: when the next prompt starts with tokens
//! already cached (a chat's history), only the new tokens are prefilled.

use std::ops::ControlFlow;
use std::time::Instant;

use candle_core::Tensor;

use crate::engine::{Engine, FinishReason, GenerateRequest, Generation, Timings};
use crate::error::{Error, Result};
use crate::model::kv_cache::KvCache;
use crate::sampler::{Sampler, StopMatcher};

/// One sequence's KV cache and the tokens it holds.
pub struct Session<'e> {
    engine: &'e Engine,
    cache: KvCache,
    tokens: Vec<u32>,
}

fn per_second(n: usize, secs: f64) -> f64 {
    if n == 0 || secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

impl<'e> Session<'e> {
    /// An empty session with a context window of `ctx_size` tokens (the model's maximum
    /// when `None`). Cache memory is allocated as it is used.
    pub fn new(engine: &'e Engine, ctx_size: Option<usize>) -> Result<Self> {
        let ctx = engine.context_window(ctx_size)?;
        Ok(Self {
            engine,
            cache: engine.model().new_cache(ctx),
            tokens: Vec::new(),
        })
    }

    /// The tokens whose keys and values are cached.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The context window in tokens.
    pub fn context_window(&self) -> usize {
        self.cache.max_len()
    }

    /// Forgets everything cached.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
    }

    /// Runs `ids` through the model after what is cached; returns the last logits.
    fn feed(&mut self, ids: &[u32], chunk: usize) -> Result<Tensor> {
        let logits = self.engine.model().forward(ids, &mut self.cache, chunk)?;
        self.tokens.extend_from_slice(ids);
        Ok(logits)
    }

    /// Keeps the longest cached prefix of `prompt` (at most all but its last token, whose
    /// logits are needed) and returns its length.
    fn reuse_prefix(&mut self, prompt: &[u32]) -> usize {
        let common = self.tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count();
        let keep = common.min(prompt.len().saturating_sub(1));
        self.cache.truncate(keep);
        self.tokens.truncate(keep);
        keep
    }

    /// Generates a continuation of `prompt` (token ids, e.g. a whole rendered chat),
    /// reusing the cached prefix it shares with this session's tokens. See
    /// [`Engine::generate`] for `on_text`; `start` is when the request began.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        request: &GenerateRequest,
        start: Instant,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        if request.max_tokens == 0 {
            return Err(Error::InvalidParameter {
                name: "max-tokens",
                reason: "must be at least 1".into(),
            });
        }
        if prompt.is_empty() {
            return Err(Error::InvalidParameter {
                name: "prompt",
                reason: "is empty".into(),
            });
        }
        let ctx = self.context_window();
        if prompt.len() > ctx {
            return Err(Error::PromptTooLong {
                tokens: prompt.len(),
                limit: ctx,
            });
        }
        let vocab = self.engine.config().vocab_size;
        let resolved = request.sampling.resolve(self.engine.generation_config(), vocab)?;
        let sampler = Sampler::new(resolved, rand::random::<u64>());
        let stop = StopMatcher::new(request.stop.clone())?;
        let cached = self.reuse_prefix(prompt);
        let prefill_start = Instant::now();
        let logits = self.feed(&prompt[cached..], request.prefill_chunk)?;
        let prefill_secs = prefill_start.elapsed().as_secs_f64();
        let mut out = self.decode(logits, request, (sampler, stop), (prompt, start), on_text)?;
        out.prompt_tokens = prompt.len();
        out.cached_tokens = cached;
        out.timings.prefill_tokens_per_s = per_second(prompt.len() - cached, prefill_secs);
        Ok(out)
    }

    /// The decode loop from the prompt's logits; `start` is when the request began.
    /// Text passes through the stop-string matcher before it reaches `on_text`, so no
    /// streamed text is ever cut later.
    fn decode(
        &mut self,
        mut logits: Tensor,
        request: &GenerateRequest,
        (mut sampler, mut stop): (Sampler, StopMatcher),
        (prompt, start): (&[u32], Instant),
        mut on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let engine = self.engine;
        let mut stream = engine.tokenizer().stream(true);
        let (mut generated, mut text) = (Vec::new(), String::new());
        let mut first_token_at = None;
        let finish_reason = loop {
            let row: Vec<f32> = logits.to_vec1()?;
            let token = sampler.sample(&row, prompt, &generated)?;
            first_token_at.get_or_insert_with(Instant::now);
            if engine.eos_ids().contains(&token) {
                break FinishReason::Stop;
            }
            generated.push(token);
            let step = stop.push(&stream.push(token)?);
            text.push_str(&step.text);
            if on_text(&step.text).is_break() {
                break FinishReason::Cancelled;
            }
            if step.stopped {
                break FinishReason::Stop;
            }
            if generated.len() >= request.max_tokens || self.tokens.len() >= self.context_window() {
                break FinishReason::Length;
            }
            logits = self.feed(&[token], 1)?;
        };
        if !stop.stopped() {
            let step = stop.push(&stream.finish()?);
            let rest = if step.stopped {
                step.text
            } else {
                step.text + &stop.finish()
            };
            if !rest.is_empty() {
                text.push_str(&rest);
                let _ = on_text(&rest);
            }
        }
        let first = first_token_at.unwrap_or_else(Instant::now);
        Ok(Generation {
            text,
            prompt_tokens: 0,
            cached_tokens: 0,
            completion_tokens: generated.len(),
            finish_reason,
            seed: sampler.seed(),
            timings: Timings {
                ttft_ms: (first - start).as_secs_f64() * 1e3,
                prefill_tokens_per_s: 0.0,
                decode_tokens_per_s: per_second(generated.len().saturating_sub(1), first.elapsed().as_secs_f64()),
            },
            token_ids: generated,
        })
    }
}
