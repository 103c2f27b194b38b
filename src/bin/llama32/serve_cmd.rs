//! `llama32 serve`: loads the model once and serves the OpenAI-compatible API. The
//! request log goes to stderr, one line per request (no prompt text, no keys).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use llama32::server::{Server, ServerConfig};

use crate::args::ServeArgs;
use crate::common::load_engine;

/// Runs `llama32 serve` until the process is stopped.
pub fn run(a: ServeArgs) -> anyhow::Result<ExitCode> {
    let api_key = a
        .api_key
        .clone()
        .or_else(|| std::env::var("LLAMA32_API_KEY").ok())
        .filter(|k| !k.is_empty());
    let engine = Arc::new(load_engine(&a.model, a.parallel)?);
    let config = ServerConfig {
        model_id: a.served_model_name.clone().unwrap_or_else(|| "llama32".into()),
        api_key,
        parallel: engine.parallel(),
        queue: a.queue,
        ctx_size: a.model.ctx_size,
        max_body_bytes: a.max_body,
        request_timeout: Duration::from_secs(a.request_timeout.max(1)),
        logger: Some(Arc::new(|log| eprintln!("{log}"))),
        ..ServerConfig::default()
    };
    let host = if a.host.contains(':') && !a.host.starts_with('[') {
        format!("[{}]", a.host)
    } else {
        a.host.clone()
    };
    let server = Server::bind(engine.clone(), format!("{host}:{}", a.port), config.clone())?;
    let addr = server.local_addr()?;
    eprintln!(
        "[{} {} | model `{}` | {} parallel ({}), queue {} | load: {:.0} ms]",
        engine.device(),
        engine.dtype(),
        config.model_id,
        config.parallel,
        if engine.is_batched() {
            "batched"
        } else {
            "one at a time"
        },
        config.queue,
        engine.load_time().as_secs_f64() * 1e3
    );
    eprintln!("listening on http://{addr}");
    server.run()?;
    Ok(ExitCode::SUCCESS)
}
