//! Pieces shared by the subcommands: loading, requests, Ctrl-C, output.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use llama32::constraint::Constraint;
use llama32::engine::Speculation;
use llama32::{Engine, GenerateRequest, Generation, LoadOptions, SamplingParams};
use serde_json::json;

use crate::args::{ModelArgs, SamplingArgs};

/// `e` naming the flag `name` when it is a bad parameter (a format parsed for another flag).
pub fn renamed(e: llama32::Error, name: &'static str) -> llama32::Error {
    match e {
        llama32::Error::InvalidParameter { reason, .. } => llama32::Error::InvalidParameter { name, reason },
        other => other,
    }
}

/// Warns of speculation settings that `--spec KIND` does not use.
pub fn warn_about_spec_flags(kind: &str, n: bool, k: bool) {
    match kind {
        "none" if n || k => eprintln!("warning: --spec-n and --spec-k have no effect without --spec"),
        "draft" if n => eprintln!("warning: --spec-n has no effect with --spec draft"),
        _ => {}
    }
}

/// A draft model is read only for `--spec draft` (loading it otherwise would cost time and
/// memory for nothing), and its format only with it.
pub fn check_draft_flags(spec: &str, a: &ModelArgs) -> llama32::Result<()> {
    if a.draft_model.is_some() && spec != "draft" {
        return Err(llama32::Error::InvalidParameter {
            name: "draft-model",
            reason: "a draft model is used only with --spec draft".into(),
        });
    }
    if a.draft_dtype.is_some() && a.draft_model.is_none() {
        return Err(llama32::Error::InvalidParameter {
            name: "draft-dtype",
            reason: "--draft-dtype needs --draft-model".into(),
        });
    }
    Ok(())
}

/// Loads the model named by the model arguments.
pub fn load_engine(a: &ModelArgs, parallel: Option<usize>) -> anyhow::Result<Engine> {
    let options = LoadOptions {
        device: a.device.parse()?,
        dtype: a.dtype.as_deref().map(str::parse).transpose()?,
        parallel,
        kv_memory: a.kv_memory.map(|mib| mib.saturating_mul(1 << 20)),
        prefill_budget: None,
        kv_dtype: a.kv_dtype.as_deref().map(str::parse).transpose()?,
        backend: Default::default(),
        draft_model: match &a.draft_model {
            Some(p) => Some(crate::hub_cmd::resolve_model_path(p)?),
            None => None,
        },
        draft_dtype: a.draft_dtype.as_deref().map(str::parse).transpose()?,
    };
    let engine = with_spinner(&format!("loading {}", a.model.display()), || {
        Engine::load(&a.model, &options)
    })?;
    if let Some(note) = engine.conversion_note() {
        eprintln!("[{note}]");
    }
    if !engine.is_batched() {
        // The candle backend keeps each sequence's cache in the compute dtype, grown as needed.
        let given = [
            ("--kv-dtype", a.kv_dtype.is_some()),
            ("--kv-memory", a.kv_memory.is_some()),
        ];
        for (flag, _) in given.iter().filter(|(_, set)| *set) {
            eprintln!("warning: {flag} is ignored here: it sets the CPU backend's KV pool, and this model runs on the candle backend");
        }
    }
    Ok(engine)
}

/// A file named by a flag could not be read: a usage error (exit 2) naming the flag.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {path}: {source}")]
pub struct FlagFileError {
    /// The flag as typed (`--messages`).
    pub flag: &'static str,
    /// The path given.
    pub path: std::path::PathBuf,
    /// Why it could not be read.
    pub source: std::io::Error,
}

/// Reads the text file `path` given by `flag`.
pub fn read_flag_file(flag: &'static str, path: &std::path::Path) -> Result<String, FlagFileError> {
    std::fs::read_to_string(path).map_err(|source| FlagFileError {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `work` under a spinner line (`⠋ loading MODEL 3s`) on stderr when it is a terminal;
/// nothing is drawn otherwise (logs and pipes stay clean).
pub fn with_spinner<T>(message: &str, work: impl FnOnce() -> T) -> T {
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let out = work();
    bar.finish_and_clear();
    out
}

/// Says so when `--spec` was asked of a backend that does not speculate (the candle one:
/// GPUs, and packed formats on CPUs without AVX2), where requests decode one token per pass.
pub fn warn_if_no_speculation(engine: &Engine, asked: bool) {
    if asked && !engine.is_batched() {
        eprintln!("warning: --spec is ignored here: speculation runs on the CPU backend (f32, bf16, f16, q8_0, q4k, q4k_m), not on this model's candle backend");
    }
}

/// `--spec` as a library value.
pub fn speculation(kind: &str, n: usize, k: usize) -> llama32::Result<Option<Speculation>> {
    match kind {
        "none" => Ok(None),
        "ngram" if n == 0 => Err(llama32::Error::InvalidParameter {
            name: "spec-n",
            reason: "--spec-n must be at least 1".into(),
        }),
        "ngram" if (1..=32).contains(&k) => Ok(Some(Speculation::Ngram { n, k })),
        "draft" if (1..=32).contains(&k) => Ok(Some(Speculation::Draft { k })),
        "ngram" | "draft" => Err(llama32::Error::InvalidParameter {
            name: "spec-k",
            reason: "--spec-k must be from 1 to 32".into(),
        }),
        other => Err(llama32::Error::InvalidParameter {
            name: "spec",
            reason: format!("`{other}` is not ngram, draft or none"),
        }),
    }
}

/// The grammar flags as a constraint (files read and checked here, naming the flag).
fn constraint(a: &SamplingArgs) -> llama32::Result<Option<Constraint>> {
    let read = |flag: &'static str, path: &std::path::Path| {
        std::fs::read_to_string(path).map_err(|e| llama32::Error::InvalidParameter {
            name: flag,
            reason: format!("{}: {e}", path.display()),
        })
    };
    if let Some(path) = &a.json_schema {
        let schema =
            serde_json::from_str(&read("json-schema", path)?).map_err(|e| llama32::Error::InvalidParameter {
                name: "json-schema",
                reason: format!("{} is not JSON: {e}", path.display()),
            })?;
        return Ok(Some(Constraint::JsonSchema(schema)));
    }
    if let Some(path) = &a.grammar {
        return Ok(Some(Constraint::Lark(read("grammar", path)?)));
    }
    if let Some(rx) = &a.regex {
        return Ok(Some(Constraint::Regex(rx.clone())));
    }
    Ok(a.json_object.then_some(Constraint::JsonObject))
}

/// Checks the request's grammar before the model loads, so that a bad `--json-schema`,
/// `--grammar` or `--regex` fails at once, naming the flag.
pub fn check_constraint(a: &SamplingArgs, request: &GenerateRequest) -> anyhow::Result<()> {
    let Some(constraint) = &request.constraint else {
        return Ok(());
    };
    let flag = match () {
        _ if a.json_schema.is_some() => "json-schema",
        _ if a.grammar.is_some() => "grammar",
        _ if a.regex.is_some() => "regex",
        _ => "json-object",
    };
    match llama32::constraint::check(constraint) {
        Ok(_) => Ok(()),
        Err(llama32::Error::InvalidParameter { reason, .. }) => {
            Err(llama32::Error::InvalidParameter { name: flag, reason }.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Builds a request from the flags; unset sampling flags take the model's
/// generation_config.json defaults (applied by the library).
pub fn request(a: &SamplingArgs, ctx_size: Option<usize>) -> llama32::Result<GenerateRequest> {
    let mut logit_bias = BTreeMap::new();
    for item in &a.logit_bias {
        let parsed = item
            .split_once('=')
            .and_then(|(id, b)| Some((id.trim().parse().ok()?, b.trim().parse().ok()?)));
        let (id, bias): (u32, f32) = parsed
            .filter(|(_, b): &(u32, f32)| (-100.0..=100.0).contains(b))
            .ok_or_else(|| llama32::Error::InvalidParameter {
                name: "logit-bias",
                reason: format!("`{item}` is not ID=BIAS with BIAS from -100 to 100 (e.g. 128009=-100)"),
            })?;
        logit_bias.insert(id, bias);
    }
    let request = GenerateRequest {
        max_tokens: a.max_tokens,
        sampling: SamplingParams {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            min_p: a.min_p,
            repetition_penalty: a.repetition_penalty,
            frequency_penalty: a.frequency_penalty,
            presence_penalty: a.presence_penalty,
            seed: a.seed.and_then(|s| s.0),
            logit_bias,
        },
        stop: a.stop.clone(),
        ctx_size,
        logprobs: a.logprobs,
        prompt_logprobs: None,
        cache_scope: 0,
        constraint: constraint(a)?,
        speculation: speculation(&a.spec, a.spec_n.unwrap_or(3), a.spec_k.unwrap_or(6))?,
    };
    // Range errors in explicit values are reported before the model loads; ids against the
    // vocabulary and the model's own defaults are checked again once it has.
    request.sampling.resolve(&Default::default(), usize::MAX)?;
    if request.max_tokens == 0 {
        return Err(llama32::Error::InvalidParameter {
            name: "max-tokens",
            reason: "must be at least 1".into(),
        });
    }
    llama32::StopMatcher::new(request.stop.clone())?;
    Ok(request)
}

/// A Ctrl-C flag: the first Ctrl-C stops the current generation instead of the process.
#[derive(Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Installs the handler (failing to install it is not fatal: Ctrl-C then just exits).
    pub fn install() -> Self {
        let flag = Arc::new(AtomicBool::new(false));
        let handler_flag = flag.clone();
        let _ = ctrlc::set_handler(move || handler_flag.store(true, Ordering::SeqCst));
        Self(flag)
    }

    /// True once Ctrl-C was pressed since the last [`Interrupt::clear`].
    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Forgets an earlier Ctrl-C.
    pub fn clear(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// Streams text to stdout, remembering the first write error (a closed pipe stops generation).
pub struct Streamer {
    out: io::Stdout,
    /// The first error writing to stdout.
    pub error: Option<io::Error>,
}

impl Streamer {
    /// A streamer on stdout.
    pub fn new() -> Self {
        Self {
            out: io::stdout(),
            error: None,
        }
    }

    /// Writes and flushes `piece`; false once writing failed.
    pub fn write(&mut self, piece: &str) -> bool {
        let mut out = self.out.lock();
        if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
            self.error.get_or_insert(e);
        }
        self.error.is_none()
    }

    /// Fails with the first write error, if any.
    pub fn check(&mut self) -> io::Result<()> {
        self.error.take().map_or(Ok(()), Err)
    }
}

/// A token's log-probability with its text (and its alternatives'), for `--json`.
fn logprob_json(engine: &Engine, t: &llama32::TokenLogprob) -> serde_json::Value {
    let text = |id: u32| engine.tokenizer().decode(&[id], false).unwrap_or_default();
    json!({
        "id": t.id,
        "token": text(t.id),
        "logprob": t.logprob,
        "top": t.top.iter().map(|&(id, lp)| json!({"id": id, "token": text(id), "logprob": lp})).collect::<Vec<_>>(),
    })
}

/// The `--json` object of one generation.
pub fn generation_json(engine: &Engine, out: &Generation) -> serde_json::Value {
    let load_ms = engine.load_time().as_secs_f64() * 1e3;
    let logprobs: Vec<_> = out.logprobs.iter().map(|t| logprob_json(engine, t)).collect();
    json!({
        "text": out.text,
        "token_ids": out.token_ids,
        "prompt_tokens": out.prompt_tokens,
        "cached_tokens": out.cached_tokens,
        "completion_tokens": out.completion_tokens,
        "finish_reason": out.finish_reason,
        "stop_sequence": out.stop_sequence,
        "speculation": out.speculation,
        "logprobs": (!logprobs.is_empty()).then_some(logprobs),
        "seed": out.seed,
        "timings": {
            "load_ms": load_ms,
            "ttft_ms": out.timings.ttft_ms,
            "prefill_tokens_per_s": out.timings.prefill_tokens_per_s,
            "decode_tokens_per_s": out.timings.decode_tokens_per_s,
        },
    })
}

/// A finish reason as `--json` writes it.
fn finish_name(reason: llama32::FinishReason) -> &'static str {
    match reason {
        llama32::FinishReason::Stop => "stop",
        llama32::FinishReason::Length => "length",
        llama32::FinishReason::Cancelled => "cancelled",
    }
}

/// Warnings for flags that change nothing in this run, and for a constrained answer cut
/// short (the JSON is then incomplete).
pub fn warn_about_flags(a: &SamplingArgs, json: bool) {
    warn_about_spec_flags(&a.spec, a.spec_n.is_some(), a.spec_k.is_some());
    if a.logprobs.is_some() && !json {
        eprintln!("warning: --logprobs has no effect without --json");
    }
}

/// Warns when a grammar-constrained answer ended at --max-tokens (it is not complete).
pub fn warn_if_cut(a: &SamplingArgs, out: &Generation) {
    let constrained = a.json_object || a.json_schema.is_some() || a.grammar.is_some() || a.regex.is_some();
    if constrained && out.finish_reason == llama32::FinishReason::Length {
        eprintln!(
            "warning: the answer reached --max-tokens {} before its grammar was complete (raise --max-tokens)",
            a.max_tokens
        );
    }
}

/// The human stats line (stderr).
pub fn stats_line(engine: &Engine, out: &Generation) -> String {
    let t = &out.timings;
    let line = format!(
        "[{} {} | prompt tokens: {} ({} cached) | generated: {} ({}) | load: {:.0} ms | ttft: {:.0} ms | prefill: {:.1} tok/s | decode: {:.1} tok/s | seed: {}]",
        engine.device(),
        engine.dtype(),
        out.prompt_tokens,
        out.cached_tokens,
        out.completion_tokens,
        finish_name(out.finish_reason),
        engine.load_time().as_secs_f64() * 1e3,
        t.ttft_ms,
        t.prefill_tokens_per_s,
        t.decode_tokens_per_s,
        out.seed,
    );
    match out.speculation {
        Some(s) if s.drafted > 0 => format!(
            "{} [speculation: {} of {} proposed tokens accepted ({:.0}%) in {} passes]",
            line,
            s.accepted,
            s.drafted,
            100.0 * s.accepted as f64 / s.drafted as f64,
            s.passes
        ),
        _ => line,
    }
}
