//! The passive state of one sequence: its tokens, KV cache, sampler, stop matcher and text
//! decoder, and where its events go. The scheduler moves it; it never runs the model.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::draft::Ask;
use super::request::{Event, FinishReason, Generation, Timings};
use super::speculate::Speculator;
use crate::backend::SeqId;
use crate::constraint::ConstraintState;
use crate::error::Result;
use crate::sampler::{token_logprob, Sampler, StopMatcher, TokenLogprob};
use crate::tokenizer::TextStream;

/// One request in the scheduler.
pub struct Sequence {
    /// Prompt then generated tokens; the last one may not be computed yet.
    pub tokens: Vec<u32>,
    /// Tokens of the prompt.
    pub prompt_len: usize,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Context window: positions this sequence may hold.
    pub ctx: usize,
    /// Keys and values, while admitted.
    pub kv: Option<SeqId>,
    /// Positions of `tokens` whose keys and values the backend holds.
    pub computed: usize,
    /// Its prefix-cache scope: it shares cached blocks only with sequences of the same.
    pub cache_scope: u64,
    sampler: Sampler,
    stop: StopMatcher,
    stream: TextStream,
    text: String,
    eos: Arc<[u32]>,
    events: flume::Sender<Event>,
    cancel: Arc<AtomicBool>,
    /// When the request began.
    pub start: Instant,
    admitted: Option<Instant>,
    first_token: Option<Instant>,
    cached: usize,
    /// Alternatives per token when log-probabilities are wanted.
    logprobs: Option<usize>,
    logprob_list: Vec<TokenLogprob>,
    /// Alternatives per prompt token when the prompt's log-probabilities are wanted.
    prompt_logprobs: Option<usize>,
    prompt_logprob_list: Vec<TokenLogprob>,
    constraint: Option<ConstraintState>,
    speculator: Option<Speculator>,
    /// Proposed tokens appended to `tokens` for the current step.
    drafted: usize,
}

/// What became of a sequence after a token.
pub enum Next {
    /// It goes on.
    Continue,
    /// It ended for this reason.
    Finish(FinishReason),
}

/// The parts of a sequence fixed at submission.
pub struct Parts {
    /// The prompt.
    pub prompt: Vec<u32>,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Context window.
    pub ctx: usize,
    /// The seeded sampler.
    pub sampler: Sampler,
    /// Stop strings.
    pub stop: StopMatcher,
    /// The text decoder.
    pub stream: TextStream,
    /// Ids that end generation.
    pub eos: Arc<[u32]>,
    /// When the request began.
    pub start: Instant,
    /// Alternatives per token when log-probabilities are wanted.
    pub logprobs: Option<usize>,
    /// Alternatives per prompt token when the prompt's log-probabilities are wanted.
    pub prompt_logprobs: Option<usize>,
    /// Its prefix-cache scope.
    pub cache_scope: u64,
    /// The compiled grammar, when the answer is constrained.
    pub constraint: Option<ConstraintState>,
    /// Speculative decoding, when asked for (ready to run: a draft model's state included).
    pub speculation: Option<Speculator>,
}

impl Sequence {
    /// A waiting sequence sending its events to `events`.
    pub fn new(p: Parts, events: flume::Sender<Event>, cancel: Arc<AtomicBool>) -> Self {
        Self {
            prompt_len: p.prompt.len(),
            tokens: p.prompt,
            max_tokens: p.max_tokens,
            ctx: p.ctx,
            kv: None,
            computed: 0,
            cache_scope: p.cache_scope,
            sampler: p.sampler,
            stop: p.stop,
            stream: p.stream,
            text: String::new(),
            eos: p.eos,
            events,
            cancel,
            start: p.start,
            admitted: None,
            first_token: None,
            cached: 0,
            logprobs: p.logprobs,
            logprob_list: Vec::new(),
            prompt_logprobs: p.prompt_logprobs,
            prompt_logprob_list: Vec::new(),
            constraint: p.constraint,
            speculator: p.speculation,
            drafted: 0,
        }
    }

    /// True once the caller cancelled or dropped its handle.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Tokens not yet computed.
    pub fn pending(&self) -> usize {
        self.tokens.len().saturating_sub(self.computed)
    }

    /// Generated tokens so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Takes its keys and values (the first admission also fixes the cached count).
    /// `(computed, cached)` are the positions its backend holds already, and how many of
    /// them came from a cache.
    pub fn admit(&mut self, kv: SeqId, (computed, cached): (usize, usize)) {
        if self.admitted.is_none() {
            self.admitted = Some(Instant::now());
            self.cached = cached.min(self.prompt_len);
        }
        self.kv = Some(kv);
        self.computed = computed;
    }

    /// Appends proposed tokens for this step (after the pending one) and returns how many;
    /// none without speculation or when nothing matches.
    pub fn draft(&mut self) -> usize {
        let room = self.draft_room();
        let Some(spec) = self.speculator.as_mut() else {
            return 0;
        };
        if room == 0 {
            return 0;
        }
        let draft = spec.propose(&self.tokens, room);
        self.drafted = draft.len();
        self.tokens.extend(draft);
        self.drafted
    }

    /// What this sequence asks of the draft model this step: it is decoding (one token
    /// pending) with a draft-model speculator that will propose.
    pub(crate) fn draft_ask(&mut self) -> Option<Ask<'_>> {
        if self.pending() != 1 {
            return None;
        }
        let room = self.draft_room();
        let (state, width) = self.speculator.as_mut()?.draft_ask(room)?;
        Some(Ask {
            state,
            tokens: &self.tokens,
            width,
            ctx: self.ctx,
        })
    }

    /// The speculator, if any.
    pub(crate) fn speculator_mut(&mut self) -> Option<&mut Speculator> {
        self.speculator.as_mut()
    }

    /// Tokens that may still be proposed: what is left of `max_tokens` and the context.
    fn draft_room(&self) -> usize {
        let left = self.max_tokens.saturating_sub(self.tokens.len() - self.prompt_len + 1);
        left.min(self.ctx.saturating_sub(self.tokens.len()))
    }

    /// Takes this step's proposed tokens back out of `tokens`.
    pub fn take_draft(&mut self) -> Vec<u32> {
        let at = self.tokens.len() - self.drafted;
        self.drafted = 0;
        self.tokens.split_off(at)
    }

    /// Records a verification: `drafted` proposed, `accepted` kept.
    pub fn record_speculation(&mut self, drafted: usize, accepted: usize) {
        if let Some(spec) = self.speculator.as_mut() {
            spec.record(drafted, accepted);
        }
    }

    /// True when the prompt's log-probabilities are wanted (so it is computed in full).
    pub fn scores_prompt(&self) -> bool {
        self.prompt_logprobs.is_some()
    }

    /// Scores prompt tokens from the logits `rows` of positions `first..`: row `j` gives
    /// the log-probability of the token at `first + j + 1`. Positions scored already (a
    /// preempted sequence computes its prompt again) are skipped.
    pub fn score_prompt(&mut self, first: usize, rows: &[Vec<f32>]) {
        let Some(k) = self.prompt_logprobs else { return };
        for (j, row) in rows.iter().enumerate() {
            let target = first + j + 1;
            if target >= self.prompt_len || target != self.prompt_logprob_list.len() + 1 {
                continue;
            }
            if let Some(&id) = self.tokens.get(target) {
                self.prompt_logprob_list.push(token_logprob(row, id, k));
            }
        }
    }

    /// Samples the next token from `logits` and reports it (with `max_tokens` 0: ends).
    pub fn push(&mut self, logits: &[f32]) -> Result<Next> {
        if self.max_tokens == 0 {
            return Ok(Next::Finish(FinishReason::Length));
        }
        let (prompt, generated) = self.tokens.split_at(self.prompt_len);
        let step = generated.len();
        let token = match &mut self.constraint {
            Some(c) => {
                c.compute(step)?;
                let allowed = |t: u32| c.allows(t);
                self.sampler.sample_allowed(logits, prompt, generated, Some(&allowed))?
            }
            None => self.sampler.sample(logits, prompt, generated)?,
        };
        if let (Some(c), false) = (&mut self.constraint, self.eos.contains(&token)) {
            c.consume(token, step)?;
        }
        self.first_token.get_or_insert_with(Instant::now);
        if self.eos.contains(&token) {
            return Ok(Next::Finish(FinishReason::Stop));
        }
        self.tokens.push(token);
        let step = self.stop.push(&self.stream.push(token)?);
        self.text.push_str(&step.text);
        let logprob = self.logprobs.map(|k| token_logprob(logits, token, k));
        if let Some(lp) = &logprob {
            self.logprob_list.push(lp.clone());
        }
        if self
            .events
            .send(Event::Token {
                id: token,
                text: step.text,
                logprob,
            })
            .is_err()
        {
            self.cancel.store(true, Ordering::Relaxed);
            return Ok(Next::Finish(FinishReason::Cancelled));
        }
        if step.stopped {
            return Ok(Next::Finish(FinishReason::Stop));
        }
        if self.generated() >= self.max_tokens || self.tokens.len() >= self.ctx {
            return Ok(Next::Finish(FinishReason::Length));
        }
        Ok(Next::Continue)
    }

    /// Sends the held-back text and the result.
    pub fn finish(mut self, reason: FinishReason) {
        let rest = match self.flush() {
            Ok(rest) => rest,
            Err(e) => return self.fail(e),
        };
        if !rest.is_empty() {
            self.text.push_str(&rest);
            let _ = self.events.send(Event::Text(rest));
        }
        let now = Instant::now();
        let first = self.first_token.unwrap_or(now);
        let admitted = self.admitted.unwrap_or(self.start);
        let per_second = |n: usize, secs: f64| if n == 0 || secs <= 0.0 { 0.0 } else { n as f64 / secs };
        let generated = self.tokens[self.prompt_len..].to_vec();
        let generation = Generation {
            text: std::mem::take(&mut self.text),
            prompt_tokens: self.prompt_len,
            cached_tokens: self.cached,
            completion_tokens: generated.len(),
            token_ids: generated,
            finish_reason: reason,
            stop_sequence: self.stop.matched().map(str::to_string),
            logprobs: std::mem::take(&mut self.logprob_list),
            prompt_logprobs: std::mem::take(&mut self.prompt_logprob_list),
            speculation: self.speculator.as_ref().map(|s| s.stats),
            seed: self.sampler.seed(),
            timings: Timings {
                ttft_ms: (first - self.start).as_secs_f64() * 1e3,
                prefill_tokens_per_s: per_second(self.prompt_len - self.cached, (first - admitted).as_secs_f64()),
                decode_tokens_per_s: per_second(self.generated().saturating_sub(1), (now - first).as_secs_f64()),
            },
        };
        let _ = self.events.send(Event::Done(generation));
    }

    fn flush(&mut self) -> Result<String> {
        if self.stop.stopped() {
            return Ok(String::new());
        }
        let step = self.stop.push(&self.stream.finish()?);
        Ok(match step.stopped {
            true => step.text,
            false => step.text + &self.stop.finish(),
        })
    }

    /// Reports `error` as the end.
    pub fn fail(self, error: crate::Error) {
        let _ = self.events.send(Event::Error(error));
    }
}
