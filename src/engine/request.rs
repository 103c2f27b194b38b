//! What callers give the engine and get back: the request, its events, its result, and
//! the handle that receives them.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::speculate::{SpecStats, Speculation};
use crate::constraint::Constraint;
use crate::error::{Error, Result};
use crate::sampler::SamplingParams;
use crate::sampler::TokenLogprob;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Most tokens to generate (>= 1; 0 only with `prompt_logprobs`: score the prompt).
    pub max_tokens: usize,
    /// How to pick tokens (unset fields take the model's generation_config.json defaults).
    pub sampling: SamplingParams,
    /// Stop strings: generation ends when the text contains one, which is left out of it.
    pub stop: Vec<String>,
    /// Context window in tokens (prompt + output) of this request; `None` uses the
    /// engine's.
    pub ctx_size: Option<usize>,
    /// Report each generated token's log-probability with this many most likely
    /// alternatives (0 to 20); `None`: no log-probabilities.
    pub logprobs: Option<usize>,
    /// Report each prompt token's log-probability (after the first) with this many most
    /// likely alternatives; the prompt is then computed in full, not taken from the cache.
    pub prompt_logprobs: Option<usize>,
    /// Prefix-cache scope: a request reuses cached prompt blocks only from requests of the
    /// same scope (0, the default, is shared by all), so that one tenant cannot learn what
    /// another sent from its cache hits.
    pub cache_scope: u64,
    /// A grammar the answer must follow (JSON Schema, any JSON object, regex, Lark).
    pub constraint: Option<Constraint>,
    /// Speculative decoding (the paged CPU backend; the output is unchanged).
    pub speculation: Option<Speculation>,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ctx_size: None,
            logprobs: None,
            prompt_logprobs: None,
            cache_scope: 0,
            constraint: None,
            speculation: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced, or a stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller cancelled (callback, [`Handle::cancel`], or a dropped handle).
    Cancelled,
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// From the start of the request to the first generated token (queueing, prefill, sampling).
    pub ttft_ms: f64,
    /// Prompt tokens computed per second, from admission to the first token.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first one (0 when fewer than two).
    pub decode_tokens_per_s: f64,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The generated text (special tokens left out).
    pub text: String,
    /// The generated ids (the terminating EOS is not included).
    pub token_ids: Vec<u32>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// How many of the prompt tokens came from the KV cache (not computed again).
    pub cached_tokens: usize,
    /// Number of generated tokens (`token_ids.len()`).
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// Per generated token (in `token_ids` order), when the request asked for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logprobs: Vec<TokenLogprob>,
    /// Per prompt token after the first, when the request asked for them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub prompt_logprobs: Vec<TokenLogprob>,
    /// What speculation proposed and kept, when the request speculated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speculation: Option<SpecStats>,
    /// The stop string that ended it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_sequence: Option<String>,
    /// The sampler's seed, to replay the run.
    pub seed: u64,
    /// Speed figures.
    pub timings: Timings,
}

/// What a running request reports, in order: tokens and text, then one `Done` or `Error`.
#[derive(Debug)]
pub enum Event {
    /// A generated token and the new text it completes (empty while text is held back:
    /// part of a character, or what may be the start of a stop string).
    Token {
        /// The token id.
        id: u32,
        /// Text to append.
        text: String,
        /// Its log-probability, when the request asked for them.
        logprob: Option<TokenLogprob>,
    },
    /// Held-back text released when generation ends.
    Text(String),
    /// The end, with the whole result.
    Done(Generation),
    /// The request failed.
    Error(Error),
}

/// How often [`Handle::wait`] asks its callback whether to go on while no text comes.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// A submitted request: receives its [`Event`]s, blocking ([`Handle::recv`], iteration) or
/// awaited ([`Handle::recv_async`], on any async runtime). Dropping it cancels the request,
/// which stops at the engine's next step and frees its memory.
pub struct Handle {
    events: flume::Receiver<Event>,
    cancel: Arc<AtomicBool>,
}

impl Handle {
    pub(crate) fn new(events: flume::Receiver<Event>, cancel: Arc<AtomicBool>) -> Self {
        Self { events, cancel }
    }

    /// Asks the engine to stop this request; a `Done` with [`FinishReason::Cancelled`]
    /// follows.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// The next event, waiting for it; `None` once the request has ended.
    pub fn recv(&self) -> Option<Event> {
        self.events.recv().ok()
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` when the request has ended,
    /// `Err(())` when nothing came in time.
    #[allow(clippy::result_unit_err)]
    pub fn recv_timeout(&self, timeout: Duration) -> std::result::Result<Option<Event>, ()> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(flume::RecvTimeoutError::Disconnected) => Ok(None),
            Err(flume::RecvTimeoutError::Timeout) => Err(()),
        }
    }

    /// The next event, awaited without blocking a thread; `None` once the request has
    /// ended. Dropping the future before it completes loses no event.
    pub async fn recv_async(&self) -> Option<Event> {
        self.events.recv_async().await.ok()
    }

    /// Waits for the end, handing each new piece of text to `on_text` (pieces concatenate
    /// to `Generation::text`); `ControlFlow::Break` cancels, and the partial result is
    /// still returned. While no text comes (a long prompt is read, the request waits for
    /// room) `on_text` is also called with an empty piece every 100 ms, so that it
    /// can cancel then too.
    pub fn wait(self, mut on_text: impl FnMut(&str) -> ControlFlow<()>) -> Result<Generation> {
        let mut cancelled = false;
        loop {
            let text = match self.events.recv_timeout(WAIT_POLL) {
                Ok(Event::Token { text, .. } | Event::Text(text)) if !text.is_empty() => text,
                Ok(Event::Token { .. } | Event::Text(_)) => continue,
                Ok(Event::Done(generation)) => return Ok(generation),
                Ok(Event::Error(e)) => return Err(e),
                Err(flume::RecvTimeoutError::Timeout) => String::new(),
                Err(flume::RecvTimeoutError::Disconnected) => return Err(Error::EngineStopped),
            };
            if !cancelled && on_text(&text).is_break() {
                cancelled = true;
                self.cancel();
            }
        }
    }
}

impl Iterator for Handle {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        self.recv()
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.cancel();
    }
}
