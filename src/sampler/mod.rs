//! Logits -> next token, OpenAI / vLLM style. The sampler never touches the model: it sees
//! one f32 logits row (the last position) and the token history, and owns its seeded RNG.
//!
//! # Parameters and defaults
//!
//! A request's [`SamplingParams`] are resolved once, against the model's
//! `generation_config.json`, into a [`ResolvedSampling`] ([`SamplingParams::resolve`]):
//! an explicit value always wins; else the model's default (temperature, top_p, top_k,
//! repetition_penalty; `do_sample: false` makes the default temperature 0); else the
//! OpenAI default: temperature 1, top_p 1, top_k 0, min_p 0, repetition_penalty 1,
//! frequency_penalty 0, presence_penalty 0. Ranges, checked there (errors name the
//! parameter): temperature finite and >= 0; top_p in (0, 1]; top_k >= 0 (values above the
//! vocabulary size mean "all"); min_p in [0, 1]; repetition_penalty finite and > 0;
//! frequency and presence penalties in [-2, 2]; logit_bias ids below the vocabulary size
//! with finite biases (clamped to [-100, 100]), not banning every token.
//!
//! # The chain
//!
//! Like llama.cpp's sampler chain, each stage is a small function whose no-op value is
//! documented where it is declared; they run in this order on a copy of the row:
//!
//! 0. **Check**: a NaN or infinite logit is [`Error::NonFiniteLogits`] (step =
//!    `generated.len()`), never a silently chosen token.
//! 1. **logit_bias**: adds each bias; a bias of -100 bans the token (its logit becomes
//!    -inf): it can never be drawn, even greedily.
//! 2. **repetition_penalty** `r`, once per *distinct* token of prompt + generated: a logit
//!    `l > 0` becomes `l / r`, else `l * r`.
//! 3. **frequency_penalty** `f` and **presence_penalty** `p`, over *generated* tokens
//!    only: `l -= count * f + (count > 0) * p`.
//! 4. **temperature 0**: greedy, the argmax (ties to the lowest id); stops here.
//! 5. **temperature** `t`: `w = exp((l - max) / t)`, the softmax numerators (top = 1).
//! 6. **min_p**: drops tokens with `p < min_p * p_max` (i.e. `w < min_p`).
//! 7. **top_k** (0 = off) keeps the k best tokens (higher logit first, ties to the lower
//!    id); then **top_p** keeps, over the renormalised remainder, the smallest set in that
//!    order whose probability mass reaches `top_p` (always at least one token).
//! 8. **draw**: one uniform f64 from the request's RNG (`StdRng` seeded with the
//!    request's seed, else the caller's fallback seed) picks a token by inverse CDF.
//!    Every non-greedy step consumes exactly one number, so a seed replays a run.
//!
//! Stages 6 and 7 always keep the top token; the only way to have no candidate left is
//! to ban every token with logit_bias, reported as `InvalidParameter { name: "logit_bias" }`.
//!
//! # Cost
//!
//! One step over a 128256-entry row is a few linear, vectorised passes (check and copy,
//! max, weights) and no sort: penalties touch only the history's tokens, top-k scans the
//! row with a size-k heap, top-p buckets the mass and quickselects only the boundary
//! bucket, and all buffers are reused across steps. `cargo bench --bench sampler` times it.
//!
//! [`StopMatcher`] (stop strings over the streamed text) lives here too.

mod draw;
mod logprobs;
mod nucleus;
mod params;
mod penalty;
mod stop;
mod truncate;
mod weights;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};

pub use draw::argmax;
pub use logprobs::{token_logprob, TokenLogprob, MAX_TOP_LOGPROBS};
pub use params::{ResolvedSampling, SamplingParams, LOGIT_BIAS_LIMIT};
pub use stop::{StopMatcher, StopStep};

use nucleus::DenseNucleus;
use penalty::{LogitBias, Penalties};
use truncate::{Cand, Ranked};
use weights::DenseWeights;

/// Picks tokens from logits rows according to a [`ResolvedSampling`]; one per request.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: ResolvedSampling,
    seed: u64,
    rng: StdRng,
    bias: LogitBias,
    penalties: Penalties,
    /// The row being edited (stages 1-3), reused across steps.
    row: Vec<f32>,
    dense: DenseWeights,
    nucleus: DenseNucleus,
    cands: Vec<Cand>,
    heap: BinaryHeap<Reverse<Ranked>>,
}

impl Sampler {
    /// A sampler for `cfg`, its RNG seeded with `cfg.seed()`, else `fallback_seed`.
    pub fn new(cfg: ResolvedSampling, fallback_seed: u64) -> Self {
        let seed = cfg.seed().unwrap_or(fallback_seed);
        Self {
            bias: LogitBias::new(&cfg),
            penalties: Penalties::new(&cfg),
            cfg,
            seed,
            rng: StdRng::seed_from_u64(seed),
            row: Vec::new(),
            dense: DenseWeights::default(),
            nucleus: DenseNucleus::default(),
            cands: Vec::new(),
            heap: BinaryHeap::new(),
        }
    }

    /// The seed in use (report it so that a run can be replayed).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The settings this sampler applies.
    pub fn settings(&self) -> &ResolvedSampling {
        &self.cfg
    }

    /// Chooses the next token from `logits` (one row of `vocab_size` entries) given the
    /// prompt and the tokens generated so far; `generated.len()` is the step named in
    /// errors. Runs the chain described in the [module docs](crate::sampler).
    pub fn sample(&mut self, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Result<u32> {
        self.sample_allowed(logits, prompt, generated, None)
    }

    /// Like [`Sampler::sample`], after a mask stage (between checking and logit_bias):
    /// tokens for which `allowed` is false get -inf and can never be drawn (a grammar's
    /// constraint). Every token masked out is an error.
    pub fn sample_allowed(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        generated: &[u32],
        allowed: Option<&dyn Fn(u32) -> bool>,
    ) -> Result<u32> {
        let step = generated.len();
        self.load_row(logits, step)?;
        if let Some(allowed) = allowed {
            for (id, l) in self.row.iter_mut().enumerate() {
                if !allowed(id as u32) {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        self.bias.apply(&mut self.row);
        self.penalties.apply(&mut self.row, prompt, generated);
        let (best, max) = draw::argmax_allowed(&self.row).ok_or_else(|| all_banned(step))?;
        if self.cfg.is_greedy() {
            return Ok(best as u32);
        }
        let u = self.rng.random::<f64>();
        let k = self.cfg.top_k();
        let picked = if k > 0 && k < self.row.len() {
            self.sample_top_k(max, u)
        } else {
            self.sample_dense(max, u)
        };
        picked.ok_or_else(|| all_banned(step))
    }

    /// Stage 0: checks the row's length and values and copies it into `self.row`.
    fn load_row(&mut self, logits: &[f32], step: usize) -> Result<()> {
        if logits.len() != self.cfg.vocab_size() {
            return Err(Error::InvalidParameter {
                name: "logits",
                reason: format!(
                    "the row has {} entries but the sampler was resolved for a vocabulary of {}",
                    logits.len(),
                    self.cfg.vocab_size()
                ),
            });
        }
        let non_finite = logits.iter().fold(false, |bad, l| bad | !l.is_finite());
        if non_finite {
            return Err(Error::NonFiniteLogits { step });
        }
        self.row.clear();
        self.row.extend_from_slice(logits);
        Ok(())
    }

    /// Stages 5-8 when top-k is active: only the k best tokens are ever weighed.
    fn sample_top_k(&mut self, max: f32, u: f64) -> Option<u32> {
        truncate::top_k(&self.row, self.cfg.top_k(), &mut self.heap, &mut self.cands);
        weights::weigh_candidates(&mut self.cands, max, self.cfg.temperature(), self.cfg.min_p());
        if self.cfg.top_p() < 1.0 {
            truncate::top_p(&mut self.cands, self.cfg.top_p());
        }
        draw::draw_candidates(&self.cands, u)
    }

    /// Stages 5-8 without top-k: weights for the whole row, then either a draw straight
    /// from the row or top-p into a candidate list and a draw from that.
    fn sample_dense(&mut self, max: f32, u: f64) -> Option<u32> {
        self.dense
            .compute(&self.row, max, self.cfg.temperature(), self.cfg.min_p());
        let p = self.cfg.top_p();
        if p >= 1.0 {
            return draw::draw_dense(&self.dense, u).map(|i| i as u32);
        }
        let target = truncate::nucleus_target(p, self.dense.total());
        self.nucleus.select(&self.dense, &self.row, target, &mut self.cands);
        draw::draw_candidates(&self.cands, u)
    }
}

fn all_banned(step: usize) -> Error {
    Error::InvalidParameter {
        name: "logit_bias",
        reason: format!("every token is banned at generation step {step}; no candidate is left to sample"),
    }
}

#[cfg(test)]
mod tests;
