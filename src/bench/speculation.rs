//! Speculative decoding against plain decoding (`llama32 bench --spec`): the same greedy
//! chats with and without speculation, interleaved repetition by repetition, on prompts
//! whose answers repeat their input (rewrite a passage, fix a line of code, turn a list into
//! JSON) and on free text where nothing repeats.

use std::ops::ControlFlow;
use std::time::Instant;

use serde::Serialize;

use super::Stat;
use crate::chat::Message;
use crate::engine::{Engine, GenerateRequest, Speculation};
use crate::error::Result;
use crate::sampler::SamplingParams;
use crate::Conversation;

const PASSAGE: &str = "The lighthouse stood at the end of the rocky point for more than a hundred years. \
Every night its keeper climbed the spiral stairs, trimmed the wick, and polished the great lens until it shone. \
Ships passing in the dark water saw the beam sweep across the waves and knew they were close to the harbour.";

const CODE: &str = "def average(values):\n    total = 0\n    for value in values:\n        total += value\n    \
return total / len(value)\n\n\ndef largest(values):\n    best = values[0]\n    for value in values[1:]:\n        \
if value > best:\n            best = value\n    return best\n";

/// The measured prompts: (name, user message).
fn prompts() -> [(&'static str, String); 4] {
    [
        (
            "rewrite",
            format!("Copy this passage exactly, word for word:\n\n{PASSAGE}"),
        ),
        (
            "code-edit",
            format!(
                "There is a bug in the first function (len(value) should be len(values)). Output the whole \
                 corrected code.\n\n```python\n{CODE}```"
            ),
        ),
        (
            "extract",
            "Turn this list into a JSON array of objects with name and city: Alice Smith lives in Paris; Bob \
             Jones lives in Rome; Carol White lives in Oslo; David Brown lives in Madrid; Eve Black lives in Berlin."
                .into(),
        ),
        ("free-text", "Write a short poem about the ocean at night.".into()),
    ]
}

/// One prompt's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SpecRow {
    /// Which prompt.
    pub prompt: &'static str,
    /// Tokens generated (the same with and without speculation).
    pub tokens: usize,
    /// Decode tokens per second without speculation.
    pub plain_tokens_per_s: Stat,
    /// Decode tokens per second with it.
    pub spec_tokens_per_s: Stat,
    /// Median of the per-repetition ratios (speculative / plain).
    pub speedup: f64,
    /// Tokens proposed, over all repetitions.
    pub drafted: usize,
    /// Proposed tokens kept, over all repetitions.
    pub accepted: usize,
    /// Whether every repetition gave the same tokens with and without speculation (it
    /// must: greedy speculation is exact).
    pub identical: bool,
}

/// Greedy answers of at most `max_tokens` to each prompt, `reps` times with and without
/// `spec` (alternating), on `engine` (loaded with a draft model for [`Speculation::Draft`]).
pub fn speculation(engine: &Engine, spec: Speculation, max_tokens: usize, reps: usize) -> Result<Vec<SpecRow>> {
    let mut rows = Vec::new();
    for (name, text) in prompts() {
        let mut chat = Conversation::new(engine, None, None, Some("26 Jul 2024".into()))?;
        chat.push(Message::text("user", text));
        let ids = chat.prompt_ids()?;
        let plain = GenerateRequest {
            max_tokens,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        };
        let fast = GenerateRequest {
            speculation: Some(spec),
            ..plain.clone()
        };
        let (mut slow_s, mut fast_s, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        let (mut drafted, mut accepted, mut identical, mut tokens) = (0, 0, true, 0);
        for _ in 0..reps.max(1) {
            let a = engine.generate_from_ids(&ids, &plain, Instant::now(), |_| ControlFlow::Continue(()))?;
            let b = engine.generate_from_ids(&ids, &fast, Instant::now(), |_| ControlFlow::Continue(()))?;
            let stats = b.speculation.unwrap_or_default();
            (drafted, accepted) = (drafted + stats.drafted, accepted + stats.accepted);
            identical &= a.token_ids == b.token_ids;
            tokens = a.token_ids.len();
            let (x, y) = (a.timings.decode_tokens_per_s, b.timings.decode_tokens_per_s);
            ratios.push(if x > 0.0 { y / x } else { 0.0 });
            slow_s.push(x);
            fast_s.push(y);
        }
        rows.push(SpecRow {
            prompt: name,
            tokens,
            plain_tokens_per_s: Stat::of(slow_s),
            spec_tokens_per_s: Stat::of(fast_s),
            speedup: Stat::of(ratios).median,
            drafted,
            accepted,
            identical,
        });
    }
    Ok(rows)
}

impl SpecRow {
    /// The markdown header of the speculation table.
    pub fn header() -> &'static str {
        "| dtype | prompt | tokens | plain tok/s | spec tok/s | speedup | accepted / drafted | same output |\n\
         |---|---|---|---|---|---|---|---|"
    }

    /// One markdown row.
    pub fn row(&self, dtype: &str) -> String {
        let rate = match self.drafted {
            0 => 0.0,
            d => 100.0 * self.accepted as f64 / d as f64,
        };
        format!(
            "| {dtype} | {} | {} | {:.1} | {:.1} | {:.2}x | {} / {} ({rate:.0}%) | {} |",
            self.prompt,
            self.tokens,
            self.plain_tokens_per_s.median,
            self.spec_tokens_per_s.median,
            self.speedup,
            self.accepted,
            self.drafted,
            if self.identical { "yes" } else { "NO" }
        )
    }
}
