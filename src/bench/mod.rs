//! llama-bench-style measurements: load time, prompt processing (pp), token generation
//! (tg) and the time to first token of a short chat prompt, repeated, as medians and ranges.

mod speculation;

pub use speculation::{speculation, SpecRow};

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::chat::Message;
use crate::device::{ComputeDType, DeviceKind};
use crate::engine::{Engine, GenerateRequest, LoadOptions};
use crate::error::Result;
use crate::sampler::SamplingParams;
use crate::Conversation;

/// What to measure.
#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    /// Prompt tokens for the prefill figure (llama-bench's `-p`, 512).
    pub pp: usize,
    /// Generated tokens for the decode figure (llama-bench's `-n`, 128).
    pub tg: usize,
    /// Approximate prompt tokens of the chat used for time to first token (64).
    pub chat_tokens: usize,
    /// Repetitions of every measurement (at least 1).
    pub reps: usize,
    /// How the KV cache stores keys and values (`None`: the engine's default).
    #[serde(serialize_with = "kv_name")]
    pub kv_dtype: Option<crate::KvDType>,
}

fn kv_name<S: serde::Serializer>(kv: &Option<crate::KvDType>, s: S) -> std::result::Result<S::Ok, S::Error> {
    match kv {
        Some(kv) => s.serialize_str(&kv.to_string()),
        None => s.serialize_none(),
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            pp: 512,
            tg: 128,
            chat_tokens: 64,
            kv_dtype: None,
            reps: 3,
        }
    }
}

/// Median and range of one figure.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Stat {
    /// Median over the repetitions.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl Stat {
    /// Summarises samples (empty gives zeros).
    pub fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        match (xs.first(), xs.last()) {
            (Some(&min), Some(&max)) => Self {
                median: xs[xs.len() / 2],
                min,
                max,
            },
            _ => Self {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            },
        }
    }
}

/// The figures for one dtype.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    /// Weight format.
    pub dtype: String,
    /// Milliseconds to load and convert the checkpoint.
    pub load_ms: Stat,
    /// Prefill tokens per second over `pp` tokens.
    pub pp_tokens_per_s: Stat,
    /// Decode tokens per second over `tg` tokens.
    pub tg_tokens_per_s: Stat,
    /// Time to first token of a chat prompt of about `chat_tokens` tokens, in ms.
    pub ttft_ms: Stat,
    /// Exact chat prompt length used for `ttft_ms`.
    pub chat_prompt_tokens: usize,
}

/// Words the bench prompts are made of (any vocabulary tokenizes them).
const WORDS: [&str; 32] = [
    "river", "stone", "light", "quiet", "market", "orange", "engine", "garden", "window", "silver", "winter", "paper",
    "forest", "signal", "yellow", "bridge", "coffee", "planet", "number", "simple", "castle", "pocket", "rabbit",
    "thunder", "violet", "harbor", "pencil", "meadow", "lantern", "copper", "saddle", "glacier",
];

/// A deterministic prompt of exactly `n` tokens (BOS first when the tokenizer adds one),
/// tokenized by the model's own tokenizer from pseudo-random words: any vocabulary works,
/// and different salts differ from the first word on (nothing shared through the prefix
/// cache).
fn prompt(engine: &Engine, n: usize, salt: u32) -> Result<Vec<u32>> {
    let mut state = salt.wrapping_add(1).wrapping_mul(0x85eb_ca6b) | 1;
    let mut text = String::new();
    loop {
        for _ in 0..n.max(1) {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            text.push_str(WORDS[(state >> 8) as usize % WORDS.len()]);
            text.push(' ');
        }
        let mut ids = engine.tokenize(&text)?;
        if ids.len() >= n {
            ids.truncate(n.max(1));
            return Ok(ids);
        }
    }
}

/// Loads `dir` in `dtype` `config.reps` times, then measures pp, tg and chat TTFT.
pub fn run(dir: &Path, device: DeviceKind, dtype: ComputeDType, config: &BenchConfig) -> Result<BenchResult> {
    let reps = config.reps.max(1);
    let opts = LoadOptions {
        device,
        dtype: Some(dtype),
        kv_dtype: config.kv_dtype,
        ..Default::default()
    };
    let mut load_ms = Vec::new();
    let mut engine = Engine::load(dir, &opts)?;
    load_ms.push(engine.load_time().as_secs_f64() * 1e3);
    for _ in 1..reps {
        drop(engine);
        engine = Engine::load(dir, &opts)?;
        load_ms.push(engine.load_time().as_secs_f64() * 1e3);
    }
    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    let mut chat_prompt_tokens = 0;
    for rep in 0..reps {
        let (p, t) = pp_tg(&engine, config, rep as u32)?;
        pp.push(p);
        tg.push(t);
        let (ms, n) = chat_ttft(&engine, config.chat_tokens, rep)?;
        ttft.push(ms);
        chat_prompt_tokens = n;
    }
    Ok(BenchResult {
        dtype: dtype.to_string(),
        load_ms: Stat::of(load_ms),
        pp_tokens_per_s: Stat::of(pp),
        tg_tokens_per_s: Stat::of(tg),
        ttft_ms: Stat::of(ttft),
        chat_prompt_tokens,
    })
}

fn pp_tg(engine: &Engine, config: &BenchConfig, salt: u32) -> Result<(f64, f64)> {
    // Prefill: a fresh prompt (the salt keeps it out of the prefix cache), one token out.
    let ids = prompt(engine, config.pp, salt)?;
    let g = engine.generate_from_ids(&ids, &no_eos_greedy(engine, 1), Instant::now(), |_| {
        ControlFlow::Continue(())
    })?;
    let pp = g.timings.prefill_tokens_per_s;
    // Decode like llama-bench's tg: from an almost empty context, `tg` tokens.
    let one = prompt(engine, 1, salt + 1000)?;
    let g = engine.generate_from_ids(&one, &no_eos_greedy(engine, config.tg + 1), Instant::now(), |_| {
        ControlFlow::Continue(())
    })?;
    Ok((pp, g.timings.decode_tokens_per_s))
}

/// Greedy decoding of exactly `max_tokens` tokens (end-of-sequence ids banned).
fn no_eos_greedy(engine: &Engine, max_tokens: usize) -> GenerateRequest {
    let mut sampling = SamplingParams::greedy();
    sampling.logit_bias = engine.eos_ids().iter().map(|&id| (id, -100.0)).collect();
    GenerateRequest {
        max_tokens,
        sampling,
        ..Default::default()
    }
}

/// Time to the first token of a one-question chat whose prompt is about `tokens` long;
/// `salt` makes the question differ between repetitions (nothing but the template's header
/// comes from the prefix cache).
fn chat_ttft(engine: &Engine, tokens: usize, salt: usize) -> Result<(f64, usize)> {
    let request = GenerateRequest {
        max_tokens: 1,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let mut words = format!("{salt}. Explain briefly");
    let mut chat = Conversation::new(engine, Some(tokens * 2 + 64), None, Some("26 Jul 2024".into()))?;
    chat.push(Message::text("user", words.clone()));
    while chat.prompt_ids()?.len() < tokens {
        words.push_str(" why the sky is blue");
        chat.reset();
        chat.push(Message::text("user", words.clone()));
    }
    let turn = chat.reply(&request, |_| ControlFlow::Continue(()))?;
    Ok((turn.generation.timings.ttft_ms, turn.generation.prompt_tokens))
}

/// Peak resident memory of this process in MiB since the last [`reset_peak_rss`]
/// (Linux `VmHWM`; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak-memory counter (Linux); does nothing elsewhere.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The markdown header of the results table.
pub fn table_header(config: &BenchConfig) -> String {
    format!(
        "| dtype | load ms | pp{} tok/s | tg{} tok/s | chat TTFT ms | peak MiB |\n|---|---|---|---|---|---|",
        config.pp, config.tg
    )
}

impl BenchResult {
    /// One markdown table row: medians ± half the range.
    pub fn table_row(&self, peak_mib: Option<f64>) -> String {
        let cell = |s: &Stat| format!("{:.1} ± {:.1}", s.median, (s.max - s.min) / 2.0);
        format!(
            "| {} | {} | {} | {} | {} ({} tok) | {} |",
            self.dtype,
            cell(&self.load_ms),
            cell(&self.pp_tokens_per_s),
            cell(&self.tg_tokens_per_s),
            cell(&self.ttft_ms),
            self.chat_prompt_tokens,
            peak_mib.map_or("-".into(), |p| format!("{p:.0}")),
        )
    }
}

/// One row of the batched measurement (as `llama-batched-bench` reports it).
#[derive(Debug, Clone, Serialize)]
pub struct BatchedRow {
    /// Sequences run together.
    pub batch: usize,
    /// Prompt tokens per sequence.
    pub pp: usize,
    /// Generated tokens per sequence.
    pub tg: usize,
    /// Seconds until every sequence had its first token.
    pub t_pp: f64,
    /// Prompt tokens per second over all sequences (`batch * pp / t_pp`).
    pub s_pp: f64,
    /// Seconds from then to the end.
    pub t_tg: f64,
    /// Generated tokens per second over all sequences after the prompts.
    pub s_tg: f64,
}

/// Aggregate prefill and decode speed with `batch` sequences at once for each size in
/// `batches`: distinct `pp`-token prompts submitted together, `tg` tokens each (EOS banned).
pub fn batched(engine: &Engine, pp: usize, tg: usize, batches: &[usize]) -> Result<Vec<BatchedRow>> {
    let mut rows = Vec::new();
    for (round, &batch) in batches.iter().enumerate() {
        let start = Instant::now();
        let handles: Vec<_> = (0..batch)
            .map(|i| {
                let ids = prompt(engine, pp, 10_000 + (round * 100 + i) as u32)?;
                engine.submit(ids, &no_eos_greedy(engine, tg), start)
            })
            .collect::<Result<_>>()?;
        let gens: Vec<_> = handles
            .into_iter()
            .map(|h| h.wait(|_| ControlFlow::Continue(())))
            .collect::<Result<_>>()?;
        let total = start.elapsed().as_secs_f64();
        let t_pp = gens.iter().map(|g| g.timings.ttft_ms).fold(0.0, f64::max) / 1e3;
        let generated: usize = gens.iter().map(|g| g.completion_tokens.saturating_sub(1)).sum();
        let t_tg = (total - t_pp).max(1e-9);
        rows.push(BatchedRow {
            batch,
            pp,
            tg,
            t_pp,
            s_pp: (batch * pp) as f64 / t_pp.max(1e-9),
            t_tg,
            s_tg: generated as f64 / t_tg,
        });
    }
    Ok(rows)
}

impl BatchedRow {
    /// The markdown header of the batched table.
    pub fn header() -> &'static str {
        "| dtype | B | PP | TG | T_PP s | S_PP t/s | T_TG s | S_TG t/s |\n|---|---|---|---|---|---|---|---|"
    }

    /// One markdown row.
    pub fn row(&self, dtype: &str) -> String {
        format!(
            "| {dtype} | {} | {} | {} | {:.2} | {:.1} | {:.2} | {:.1} |",
            self.batch, self.pp, self.tg, self.t_pp, self.s_pp, self.t_tg, self.s_tg
        )
    }
}
