//! Embedding llama32 in your own program: load a checkpoint, stream a greedy
//! continuation through a callback, then read the stats.
//!
//! ```text
//! cargo run --release --example embed -- path/to/checkpoint "Once upon a time"
//! ```

use std::io::Write;
use std::ops::ControlFlow;

use llama32::{Engine, GenerateRequest, LoadOptions, SamplingParams};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: embed CHECKPOINT_DIR [PROMPT]"))?;
    let prompt = args.next().unwrap_or_else(|| "Once upon a time".to_string());

    // 1. Load: config.json, tokenizer.json and the safetensors weights, on the CPU in f32.
    let engine = Engine::load(dir.as_ref(), &LoadOptions::default())?;

    // 2. Generate: the callback sees each piece of text as soon as it is complete UTF-8;
    //    return ControlFlow::Break(()) from it to stop early.
    let request = GenerateRequest {
        max_tokens: 48,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let mut stdout = std::io::stdout();
    let out = engine.generate(&prompt, &request, |piece| {
        print!("{piece}");
        let _ = stdout.flush();
        ControlFlow::Continue(())
    })?;

    // 3. Stats: token counts, why it stopped, and speed.
    println!();
    eprintln!(
        "{} prompt + {} generated tokens ({:?}); load {:.0} ms, first token {:.0} ms, prefill {:.1} tok/s, decode {:.1} tok/s",
        out.prompt_tokens,
        out.completion_tokens,
        out.finish_reason,
        engine.load_time().as_secs_f64() * 1e3,
        out.timings.ttft_ms,
        out.timings.prefill_tokens_per_s,
        out.timings.decode_tokens_per_s,
    );
    Ok(())
}
