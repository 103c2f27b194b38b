//! The `llama32` command-line tool: thin glue over the library. It owns the process:
//! arguments, Ctrl-C, output and exit codes.

mod args;
mod bench_cmd;
mod chat_cmd;
mod common;
mod hub_cmd;
mod serve_cmd;
mod template_check;
mod text_file;

use std::io::{self, IsTerminal, Write};
use std::ops::ControlFlow;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use llama32::FinishReason;
use serde_json::json;

use args::{Cli, Command, GenerateArgs, TokenizeArgs};
use common::{generation_json, load_engine, request, stats_line, Interrupt, Streamer};

/// Exit code for bad parameters (like clap's usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    // The child process of the chat-template check (not a command for users).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let [_, sub, model] = args.as_slice() {
        if sub == template_check::SUBCOMMAND {
            return template_check::run_child(std::path::Path::new(model));
        }
    }
    let cli = Cli::parse();
    if let Some(threads) = cli.threads {
        if let Err(code) = start_threads(threads) {
            return code;
        }
    }
    let result = match cli.command {
        Command::Generate(mut a) => hub_cmd::resolve_in_place(&mut a.model.model).and_then(|()| generate(a)),
        Command::Chat(mut a) => hub_cmd::resolve_in_place(&mut a.model.model).and_then(|()| chat_cmd::run(a)),
        Command::Tokenize(mut a) => hub_cmd::resolve_in_place(&mut a.model).and_then(|()| tokenize(a)),
        Command::Bench(mut a) => hub_cmd::resolve_in_place(&mut a.model)
            .and_then(|()| match a.draft_model.as_mut() {
                Some(d) => hub_cmd::resolve_in_place(d),
                None => Ok(()),
            })
            .and_then(|()| bench_cmd::run(a)),
        Command::Serve(mut a) => {
            name_served_model(&mut a);
            hub_cmd::resolve_in_place(&mut a.model.model).and_then(|()| serve_cmd::run(a))
        }
        Command::Download(a) => hub_cmd::download(a),
        Command::List(a) => hub_cmd::list(a),
        Command::Synthetic(a) => synthetic(a),
        Command::Perplexity(mut a) => hub_cmd::resolve_in_place(&mut a.model.model).and_then(|()| perplexity(a)),
    };
    match result {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            let usage = e.downcast_ref::<llama32::Error>().is_some_and(|e| e.is_usage())
                || e.downcast_ref::<llama32::hub::HubError>().is_some_and(|e| e.is_usage())
                || e.downcast_ref::<common::FlagFileError>().is_some();
            ExitCode::from(if usage { EXIT_USAGE } else { 1 })
        }
    }
}

/// Sizes the global thread pool (`--threads`, from 1 to 4x the CPUs) before any other
/// starts; the exit code to return where the count is refused or the pool cannot start.
fn start_threads(threads: usize) -> Result<(), ExitCode> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let limit = (cpus * 4).max(4);
    if threads == 0 || threads > limit {
        eprintln!("error: invalid parameter `threads`: must be from 1 to {limit} (4x the {cpus} CPUs)");
        return Err(ExitCode::from(EXIT_USAGE));
    }
    // Before any thread pool starts: candle sizes its kernels by RAYON_NUM_THREADS.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    if let Err(e) = rayon::ThreadPoolBuilder::new().num_threads(threads).build_global() {
        eprintln!("error: could not start {threads} threads: {e}");
        return Err(ExitCode::FAILURE);
    }
    Ok(())
}

/// Without `--served-model-name`: a local folder or file is served under its own name (not
/// the path, which clients would have to spell; the path as typed stays an alias), an
/// alias or hub id as typed.
fn name_served_model(a: &mut args::ServeArgs) {
    if !a.served_model_name.is_empty() {
        return;
    }
    let typed = a.model.model.display().to_string();
    let typed = typed.trim_end_matches('/').to_string();
    let local = a.model.model.exists().then(|| a.model.model.file_name()).flatten();
    match local.and_then(|n| n.to_str()).filter(|n| *n != typed) {
        Some(name) => {
            a.served_model_name.push(name.to_string());
            a.model_aliases.push(typed);
        }
        None => a.served_model_name.push(typed),
    }
}

/// The error and its causes, each said once: a cause whose text the message before it
/// already ends with (the library's errors name their source) is not repeated.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let flagged = cause.downcast_ref::<llama32::Error>().and_then(flag_text);
        let part = flagged.unwrap_or_else(|| cause.to_string());
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// A library parameter error said with the flag as typed (`--logprobs`, not
/// `top_logprobs`), when the name is one of the command line's flags.
fn flag_text(e: &llama32::Error) -> Option<String> {
    let llama32::Error::InvalidParameter { name, reason } = e else {
        return None;
    };
    let flag = match *name {
        "top_logprobs" => "logprobs".to_string(),
        other => other.replace('_', "-"),
    };
    let command = <Cli as clap::CommandFactory>::command();
    let known = command
        .get_subcommands()
        .flat_map(|c| c.get_arguments())
        .any(|a| a.get_long() == Some(flag.as_str()));
    known.then(|| format!("invalid value for --{flag}: {reason}"))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

fn generate(a: GenerateArgs) -> anyhow::Result<ExitCode> {
    let request = request(&a.sampling, a.model.ctx_size)?;
    common::check_constraint(&a.sampling, &request)?;
    common::warn_about_flags(&a.sampling, a.json);
    common::check_draft_flags(&a.sampling.spec, &a.model)?;
    let engine = load_engine(&a.model, None)?;
    common::warn_if_no_speculation(&engine, request.speculation.is_some());
    let interrupt = Interrupt::install();
    let mut stream = Streamer::new();
    let out = engine.generate(&a.prompt, &request, |piece| {
        if interrupt.is_set() || (!a.json && !stream.write(piece)) {
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    stream.check().context("writing to stdout")?;
    common::warn_if_cut(&a.sampling, &out);
    let mut stdout = io::stdout().lock();
    if a.json {
        writeln!(stdout, "{}", generation_json(&engine, &out))?;
    } else {
        writeln!(stdout)?;
        eprintln!("{}", stats_line(&engine, &out));
    }
    Ok(match out.finish_reason {
        FinishReason::Cancelled => ExitCode::from(EXIT_INTERRUPTED),
        _ => ExitCode::SUCCESS,
    })
}

fn perplexity(a: args::PerplexityArgs) -> anyhow::Result<ExitCode> {
    // The windows are --ctx long, and no draft model takes part in scoring.
    if a.model.ctx_size.is_some() {
        return Err(llama32::Error::InvalidParameter {
            name: "ctx-size",
            reason: "perplexity windows are --ctx tokens long".into(),
        }
        .into());
    }
    common::check_draft_flags("none", &a.model)?;
    // Before the model loads: a missing file fails at once.
    std::fs::File::open(&a.file).map_err(|source| common::FlagFileError {
        flag: "--file",
        path: a.file.clone(),
        source,
    })?;
    let engine = load_engine(&a.model, Some(1))?;
    let base = kl_base(&a, &engine)?;
    // Windows start with BOS when the tokenizer adds one (SmolLM2's does not).
    let bos = engine
        .config()
        .bos_token_id
        .filter(|b| engine.tokenize("a").is_ok_and(|t| t.first() == Some(b)));
    let wanted = a.chunks.saturating_mul(a.ctx);
    let tokens = text_file::read_tokens(&engine, &a.file, wanted)?;
    let terminal = io::stderr().is_terminal();
    let progress = |done: usize, windows: usize| {
        if terminal {
            eprint!("\r[window {done} of {windows}]");
            if done == windows {
                eprintln!();
            }
        }
    };
    let report =
        llama32::perplexity::perplexity_reporting(&engine, (&tokens, bos), (a.ctx, a.chunks), base.as_ref(), progress)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {} ({} KV): perplexity {:.4} +/- {:.4} over {} tokens ({} windows of {})",
        engine.device(),
        engine.dtype(),
        report.kv_dtype,
        report.perplexity,
        report.perplexity_stderr,
        report.tokens,
        report.windows,
        a.ctx
    );
    if let (Some(bp), Some(kl), Some(top1), Some(b)) =
        (report.base_perplexity, report.mean_kl, report.top1_agreement, &base)
    {
        println!(
            "against {}: base perplexity {bp:.4}, mean KL {kl:.6} nats, top-1 agreement {:.2}%",
            b.dtype(),
            top1 * 100.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The base model of `--kl-base` / `--kl-base-model`, loaded and checked against `engine`.
fn kl_base(a: &args::PerplexityArgs, engine: &llama32::Engine) -> anyhow::Result<Option<llama32::Engine>> {
    Ok(match (&a.kl_base, &a.kl_base_model) {
        (None, None) => None,
        (dtype, path) => {
            if let Some(d) = dtype {
                d.parse::<llama32::ComputeDType>()
                    .map_err(|e| common::renamed(e, "kl-base"))?;
            }
            let mut model = args::ModelArgs {
                dtype: Some(dtype.clone().unwrap_or_else(|| "f32".into())),
                // The base is the reference: its format's own KV default (f32 for f32).
                kv_dtype: None,
                ..a.model.clone()
            };
            if let Some(p) = path {
                model.model = hub_cmd::resolve_model_path(p)?;
            }
            let base = load_engine(&model, Some(1))?;
            if base.config().vocab_size != engine.config().vocab_size {
                anyhow::bail!(
                    "--kl-base-model has another vocabulary ({} vs {} tokens)",
                    base.config().vocab_size,
                    engine.config().vocab_size
                );
            }
            Some(base)
        }
    })
}

fn synthetic(a: args::SyntheticArgs) -> anyhow::Result<ExitCode> {
    use llama32::synthetic::{write_checkpoint, SyntheticShape, CHECKPOINT_FILES};
    let shape = match a.shape.to_ascii_lowercase().as_str() {
        "1b" => SyntheticShape::Llama32_1B,
        "3b" => SyntheticShape::Llama32_3B,
        other => {
            return Err(llama32::Error::InvalidParameter {
                name: "shape",
                reason: format!("`{other}` is not 1b or 3b"),
            }
            .into())
        }
    };
    let entries: Vec<String> = match std::fs::read_dir(&a.out) {
        Ok(dir) => dir
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    let refuse = |reason: String| anyhow::Error::from(llama32::Error::InvalidParameter { name: "out", reason });
    if !entries.is_empty() && !a.force {
        return Err(refuse(format!(
            "{} is not empty (it may hold a model): choose another --out, or pass --force to overwrite it",
            a.out.display()
        )));
    }
    // --force replaces a checkpoint's own files; anything else there (shards, an index, a
    // generation config) would mix with the new model, so it is left alone and refused.
    let mut others = entries
        .iter()
        .filter(|e| !CHECKPOINT_FILES.contains(&e.as_str()))
        .peekable();
    if others.peek().is_some() {
        let others: Vec<&str> = others.map(String::as_str).collect();
        return Err(refuse(format!(
            "{} holds files a synthetic checkpoint does not replace ({}): choose an empty --out",
            a.out.display(),
            others.join(", ")
        )));
    }
    let tokenizer = a.tokenizer.unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-f32-mha/tokenizer.json")
    });
    write_checkpoint(&a.out, shape, &tokenizer, 0x5eed)?;
    eprintln!("wrote {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}

fn tokenize(a: TokenizeArgs) -> anyhow::Result<ExitCode> {
    let (tokenizer, template) = llama32::checkpoint::open_text(&a.model)?;
    let ids = match &a.prompt {
        Some(prompt) => tokenizer.encode(prompt, true)?,
        None => chat_cmd::conversation_ids(&a.model, template, &tokenizer, &a.conversation)?,
    };
    let mut stdout = io::stdout().lock();
    if a.json {
        writeln!(stdout, "{}", json!({ "ids": ids, "count": ids.len() }))?;
    } else {
        let text: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(stdout, "{}", text.join(" "))?;
    }
    Ok(ExitCode::SUCCESS)
}
