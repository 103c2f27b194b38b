//! `cargo bench --bench chat`: time to first token per turn of a 10-turn chat, with the
//! conversation's KV cache reused (only new tokens prefilled) and, for comparison, with the
//! whole history prefilled from scratch each turn.
//!
//! Model: `LLAMA32_BENCH_MODEL` or the synthetic Llama-3.2-1B checkpoint of the `generate`
//! bench (run that first, it writes it), in `LLAMA32_BENCH_DTYPE` (default q8_0). Answers
//! are capped at `LLAMA32_BENCH_ANSWER` tokens. The engine caches prefixes across requests,
//! so each from-scratch figure comes from a freshly loaded engine.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use llama32::{ComputeDType, Conversation, Engine, GenerateRequest, LoadOptions, SamplingParams};

fn main() -> anyhow::Result<()> {
    let dir = std::env::var("LLAMA32_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama32-bench/llama-3.2-1b-synthetic"));
    let answer = std::env::var("LLAMA32_BENCH_ANSWER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let dtype: ComputeDType = std::env::var("LLAMA32_BENCH_DTYPE")
        .unwrap_or_else(|_| "q8_0".into())
        .parse()?;
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    let engine = Engine::load(&dir, &opts)?;
    let request = GenerateRequest {
        max_tokens: answer,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let date = Some("26 Jul 2024".to_string());
    let mut chat = Conversation::new(&engine, Some(8192), None, date.clone())?;
    chat.set_system(Some("You are a helpful assistant who answers briefly.".into()));
    println!("model: {} ({dtype})  answer cap: {answer} tokens", dir.display());
    println!("| turn | prompt tokens | cached | ttft reused ms | ttft from scratch ms |");
    println!("|---|---|---|---|---|");
    for turn in 1..=10 {
        let question = format!("Question number {turn}: tell me one more fact about the history of computing.");
        let t = chat.send(&question, &request, |_| ControlFlow::Continue(()))?;
        // The same prompt with an empty cache.
        let scratch = Engine::load(&dir, &opts)?;
        let mut fresh = Conversation::new(&scratch, Some(8192), None, date.clone())?;
        for m in &chat.messages()[..chat.messages().len() - 1] {
            fresh.push(m.clone());
        }
        let one = GenerateRequest {
            max_tokens: 1,
            ..request.clone()
        };
        let f = fresh.reply(&one, |_| ControlFlow::Continue(()))?;
        let g = &t.generation;
        println!(
            "| {turn} | {} | {} | {:.0} | {:.0} |",
            g.prompt_tokens, g.cached_tokens, g.timings.ttft_ms, f.generation.timings.ttft_ms
        );
    }
    Ok(())
}
