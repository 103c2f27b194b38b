//! The `llama32` command-line tool: thin glue over the library. It owns the process:
//! arguments, Ctrl-C, output and exit codes.

mod args;

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use llama32::{Engine, FinishReason, GenerateRequest, Generation, LoadOptions, SamplingParams, Tokenizer};
use serde_json::json;

use args::{Cli, Command, GenerateArgs, ModelArgs, TokenizeArgs};

/// Exit code for bad parameters (like clap's usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C (128 + SIGINT).
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Tokenize(a) => tokenize(a),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let usage = e.downcast_ref::<llama32::Error>().is_some_and(|e| e.is_usage());
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn load_options(a: &ModelArgs) -> llama32::Result<LoadOptions> {
    Ok(LoadOptions {
        device: a.device.parse()?,
        dtype: a.dtype.as_deref().map(str::parse).transpose()?,
    })
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let options = load_options(&a.model)?;
    let engine = Engine::load(&a.model.model, &options)?;
    let gen_cfg = engine.generation_config();
    let default_temperature = match gen_cfg.do_sample {
        Some(false) => 0.0,
        _ => gen_cfg.temperature.unwrap_or(1.0),
    };
    let request = GenerateRequest {
        max_tokens: a.max_tokens,
        sampling: SamplingParams { temperature: a.temperature.unwrap_or(default_temperature), seed: a.seed },
        ctx_size: a.ctx_size,
        prefill_chunk: a.prefill_chunk,
    };
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    // A second Ctrl-C falls through to the default behaviour only if the handler is missing;
    // failing to install it is not fatal.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));

    let mut stdout = io::stdout().lock();
    let mut write_err = None;
    let out = engine.generate(&a.prompt, &request, |piece| {
        if interrupted.load(Ordering::SeqCst) {
            return ControlFlow::Break(());
        }
        if !a.json {
            if let Err(e) = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()) {
                write_err = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    let load_ms = engine.load_time().as_secs_f64() * 1e3;
    if a.json {
        writeln!(stdout, "{}", generation_json(&out, load_ms))?;
    } else {
        writeln!(stdout)?;
        print_stats(&engine, &out, load_ms);
    }
    Ok(match out.finish_reason {
        FinishReason::Cancelled => ExitCode::from(EXIT_INTERRUPTED),
        _ => ExitCode::SUCCESS,
    })
}

fn generation_json(out: &Generation, load_ms: f64) -> serde_json::Value {
    json!({
        "text": out.text,
        "token_ids": out.token_ids,
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "finish_reason": out.finish_reason,
        "seed": out.seed,
        "timings": {
            "load_ms": load_ms,
            "ttft_ms": out.timings.ttft_ms,
            "prefill_tokens_per_s": out.timings.prefill_tokens_per_s,
            "decode_tokens_per_s": out.timings.decode_tokens_per_s,
        },
    })
}

fn print_stats(engine: &Engine, out: &Generation, load_ms: f64) {
    let t = &out.timings;
    eprintln!(
        "[{} {} | prompt tokens: {} | generated: {} ({:?}) | load: {:.0} ms | ttft: {:.0} ms | prefill: {:.1} tok/s | decode: {:.1} tok/s | seed: {}]",
        engine.device(),
        engine.dtype(),
        out.prompt_tokens,
        out.completion_tokens,
        out.finish_reason,
        load_ms,
        t.ttft_ms,
        t.prefill_tokens_per_s,
        t.decode_tokens_per_s,
        out.seed,
    );
}

fn tokenize(a: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let tokenizer = Tokenizer::from_file(&a.model.join("tokenizer.json"))?;
    let ids = tokenizer.encode(&a.prompt, true)?;
    let mut stdout = io::stdout().lock();
    if a.json {
        writeln!(stdout, "{}", json!({ "ids": ids, "count": ids.len() }))?;
    } else {
        let text: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", text.join(" "))?;
    }
    Ok(ExitCode::SUCCESS)
}
