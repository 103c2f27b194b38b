//! The decode loop: prefill the prompt, then sample and feed back one token at a time.

use std::ops::ControlFlow;
use std::time::Instant;

use crate::engine::{Engine, FinishReason, GenerateRequest, Generation, Timings};
use crate::error::Result;
use crate::sampler::Sampler;

fn per_second(n: usize, secs: f64) -> f64 {
    if n == 0 || secs <= 0.0 {
        0.0
    } else {
        n as f64 / secs
    }
}

pub(crate) fn run(
    engine: &Engine,
    prompt: &[u32],
    request: &GenerateRequest,
    ctx: usize,
    mut sampler: Sampler,
    start: Instant,
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    let model = engine.model();
    let mut cache = model.new_cache(ctx);
    let prefill_start = Instant::now();
    let mut logits = model.forward(prompt, &mut cache, request.prefill_chunk)?;
    let prefill_secs = prefill_start.elapsed().as_secs_f64();
    let mut stream = engine.tokenizer().stream(true);
    let mut generated = Vec::new();
    let mut text = String::new();
    let mut first_token_at = None;
    let finish_reason = loop {
        let row: Vec<f32> = logits.to_vec1()?;
        let token = sampler.sample(&row, generated.len())?;
        first_token_at.get_or_insert_with(Instant::now);
        if engine.eos_ids().contains(&token) {
            break FinishReason::Stop;
        }
        generated.push(token);
        let piece = stream.push(token)?;
        text.push_str(&piece);
        if on_text(&piece).is_break() {
            break FinishReason::Cancelled;
        }
        if generated.len() >= request.max_tokens || cache.len() >= ctx {
            break FinishReason::Length;
        }
        logits = model.forward(&[token], &mut cache, 1)?;
    };
    let rest = stream.finish()?;
    if !rest.is_empty() {
        text.push_str(&rest);
        let _ = on_text(&rest);
    }
    let first = first_token_at.unwrap_or_else(Instant::now);
    let decode_secs = first.elapsed().as_secs_f64();
    Ok(Generation {
        text,
        prompt_tokens: prompt.len(),
        completion_tokens: generated.len(),
        finish_reason,
        seed: sampler.seed(),
        timings: Timings {
            ttft_ms: (first - start).as_secs_f64() * 1e3,
            prefill_tokens_per_s: per_second(prompt.len(), prefill_secs),
            decode_tokens_per_s: per_second(generated.len().saturating_sub(1), decode_secs),
        },
        token_ids: generated,
    })
}
