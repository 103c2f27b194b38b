//! `llama32 serve`: binds, loads the model (the server answers `loading` meanwhile), then
//! serves the OpenAI-compatible API until SIGTERM or Ctrl-C, which drain it gracefully.
//! The request log goes to stderr through `tracing` (no prompt text, no keys).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use llama32::server::{MetricsCompat, Server, ServerConfig};

use crate::args::{LogFormat, MetricsCompatArg, ServeArgs};
use crate::common::load_engine;

fn init_log(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Runs `llama32 serve` until the process is asked to stop.
pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    init_log(a.log_format);
    let config = server_config(&a)?;
    crate::common::check_draft_flags(&a.spec, &a.model)?;
    crate::common::warn_about_spec_flags(&a.spec, false, a.spec_k.is_some());
    let host = if a.host.contains(':') && !a.host.starts_with('[') {
        format!("[{}]", a.host)
    } else {
        a.host.clone()
    };
    let server = Server::bind(format!("{host}:{}", a.port), config.clone()).map_err(|e| match e {
        llama32::Error::Io { source, .. } => anyhow::anyhow!(
            "could not listen on {host}:{} ({source}): is another server using the port? choose another with --port",
            a.port
        ),
        other => other.into(),
    })?;
    let addr = server.local_addr()?;
    let handle = server.handle();
    let stopper = handle.clone();
    let (seen, loaded) = (AtomicUsize::new(0), Arc::new(AtomicBool::new(false)));
    let ready = loaded.clone();
    ctrlc::set_handler(move || {
        if !ready.load(Ordering::SeqCst) {
            // Nothing is served while the model loads: stop now, not after the load.
            eprintln!("shut down while loading");
            std::process::exit(i32::from(crate::EXIT_INTERRUPTED));
        }
        // The first signal drains (also after POST /admin/drain); the second ends answers.
        match seen.fetch_add(1, Ordering::SeqCst) {
            0 => stopper.shutdown(),
            _ => stopper.abort(),
        }
    })?;
    eprintln!("listening on http://{addr}");
    eprintln!(
        "loading {} (the server answers `loading` until it is ready)",
        a.model.model.display()
    );
    let serving = std::thread::Builder::new()
        .name("llama32-server".into())
        .spawn(move || server.run())?;
    crate::template_check::check(&a.model.model)?;
    let engine = Arc::new(load_engine(&a.model, a.parallel)?);
    crate::common::warn_if_no_speculation(&engine, config.speculation.is_some());
    handle.ready(engine.clone())?;
    loaded.store(true, Ordering::SeqCst);
    if !handle.is_draining() {
        announce(&engine, &config);
        eprintln!("ready on http://{addr}");
    }
    match serving.join() {
        Ok(result) => result?,
        Err(_) => anyhow::bail!("the server thread panicked"),
    }
    eprintln!("shut down");
    Ok(ExitCode::SUCCESS)
}

/// File descriptors kept free of connections (the model files, logs, the runtime).
const FD_HEADROOM: u64 = 64;

/// `asked` connections, or fewer when the file-descriptor limit cannot hold them: the soft
/// limit is raised to the hard one first, then connections keep headroom below it (so that
/// `accept` never fails for want of descriptors before the connection limit is reached).
fn connection_limit(asked: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let room = usize::try_from(limit.saturating_sub(FD_HEADROOM))
        .unwrap_or(usize::MAX)
        .max(1);
    if room < asked {
        eprintln!(
            "warning: the open-file limit is {limit}: serving at most {room} connections (--max-connections {asked}); \
             raise it with `ulimit -n`"
        );
    }
    asked.min(room)
}

/// The server's configuration from the flags (and `LLAMA32_API_KEY`).
fn server_config(a: &ServeArgs) -> anyhow::Result<ServerConfig> {
    let mut api_keys: Vec<String> = a.api_key.iter().filter(|k| !k.is_empty()).cloned().collect();
    if let Some(path) = &a.api_key_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--api-key-file {}: {e}", path.display()))?;
        api_keys.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
        if api_keys.is_empty() {
            anyhow::bail!("--api-key-file {}: no key in the file", path.display());
        }
    }
    if api_keys.is_empty() {
        api_keys.extend(std::env::var("LLAMA32_API_KEY").ok().filter(|k| !k.is_empty()));
    }
    let max_connections = connection_limit(a.max_connections);
    Ok(ServerConfig {
        model_ids: a.served_model_name.clone(),
        model_aliases: a.model_aliases.clone(),
        api_keys,
        metrics_public: a.metrics_public,
        queue: a.queue,
        ctx_size: a.model.ctx_size,
        max_body_bytes: a.max_body,
        request_timeout: Duration::from_secs(a.request_timeout),
        max_connections,
        max_connections_per_ip: a.max_connections_per_ip.unwrap_or(max_connections * 3 / 4),
        max_answer_entries: a.max_answer_entries,
        send_timeout: Duration::from_secs(a.send_timeout),
        cors_origins: a.cors.clone(),
        allowed_hosts: a.allowed_host.clone(),
        drain_timeout: Duration::from_secs(a.drain_timeout),
        metrics_compat: match a.metrics_compat {
            MetricsCompatArg::None => MetricsCompat::None,
            MetricsCompatArg::Vllm => MetricsCompat::Vllm,
            MetricsCompatArg::Sglang => MetricsCompat::Sglang,
        },
        playground: !a.no_playground,
        special_tokens_in_content: a.special_tokens_in_content,
        speculation: crate::common::speculation(&a.spec, 3, a.spec_k.unwrap_or(6))?,
        ..ServerConfig::default()
    })
}

/// Warns of a missing chat template, warms the grammar compiler, prints the summary line.
fn announce(engine: &Arc<llama32::Engine>, config: &ServerConfig) {
    if engine.chat_template().is_none() {
        eprintln!(
            "warning: {} has no chat template: /v1/chat/completions and /v1/messages will answer 400; /v1/completions works",
            engine.dir().display()
        );
    }
    // The grammar compiler takes about a second to build: not on the first JSON-mode request.
    let warm = engine.clone();
    let _ = std::thread::Builder::new()
        .name("llama32-grammars".into())
        .spawn(move || warm.prepare_constraints());
    eprintln!(
        "[{} {} | model `{}` | {} parallel ({}), queue {} | load: {:.0} ms]",
        engine.device(),
        engine.dtype(),
        config.model_ids.join("`, `"),
        engine.parallel(),
        if engine.is_batched() {
            "batched"
        } else {
            "one at a time"
        },
        config.queue,
        engine.load_time().as_secs_f64() * 1e3
    );
    if let Some(line) = kv_line(engine, config) {
        eprintln!("{line}");
    }
}

/// `[context N tokens | KV pool P positions, M MiB in DTYPE]` for the paged pool (`None`
/// on the candle backend, which keeps its cache per sequence).
fn kv_line(engine: &llama32::Engine, config: &ServerConfig) -> Option<String> {
    let (positions, bytes) = (engine.kv_positions()?, engine.kv_pool_bytes()?);
    let ctx = engine.context_window(config.ctx_size).ok()?;
    Some(format!(
        "[context {ctx} tokens | KV pool {positions} positions, {} MiB in {}]",
        bytes >> 20,
        engine.kv_dtype()
    ))
}
