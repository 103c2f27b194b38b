//! `llama32 serve`: an OpenAI- and Anthropic-compatible HTTP server
//! (`/v1/chat/completions`, `/v1/completions`, `/v1/messages`, `/v1/models`, `/health`,
//! `/metrics`, the playground at `/`) on hyper and axum.
//!
//! The model stays on the engine's scheduler thread; the async edge parses and validates
//! each request once, submits it, and forwards the engine's events to the client. A client
//! that goes away drops its request, which cancels its sequences at the next step.
//! At most `parallel + queue` generation requests are in flight (503 with `Retry-After`
//! beyond); the engine runs them first come, first served.
//!
//! Like the rest of the library the server prints nothing: it reports each request as a
//! `tracing` event (target `llama32::request`; never prompt text or keys) and counts it in
//! its own Prometheus registry (`GET /metrics`), holding no global state.

mod anthropic;
mod body;
pub mod error;
mod events;
mod generate;
mod guard;
mod handlers;
mod listener;
mod messages;
mod metrics;
mod openai;
mod params;
mod plan;
mod playground;
mod report;
mod responses;
mod routes;
mod sse;
mod stream;
mod tokens;

use std::fmt;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use crate::engine::Engine;
use crate::error::{Error, Result};

pub use error::ApiError;
pub use metrics::MetricsCompat;

/// How the server behaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// The model ids clients may use; the first is the one answers name. `/v1/models` lists
    /// them all; requests naming another get 404.
    pub model_ids: Vec<String>,
    /// Other model names requests may use, not listed by `/v1/models`.
    pub model_aliases: Vec<String>,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>` (or `x-api-key: <key>`).
    pub api_keys: Vec<String>,
    /// Serve `/metrics` without the API key.
    pub metrics_public: bool,
    /// Requests that may wait beyond the engine's parallel sequences; more get 503.
    pub queue: usize,
    /// Context window per request (`None`: the model's maximum).
    pub ctx_size: Option<usize>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Time a client has to send a request head (the connection closes beyond), and then
    /// its body (408 beyond).
    pub request_timeout: Duration,
    /// How long an idle kept-alive connection stays open.
    pub idle_timeout: Duration,
    /// Open connections at most. When full, the oldest idle connection is closed to make
    /// room; when none is idle, the new one is answered 503.
    pub max_connections: usize,
    /// Open connections one client address may hold (so that one client cannot take
    /// every slot; raise it behind a gateway, whose connections share one address).
    pub max_connections_per_ip: usize,
    /// Origins allowed to call the API from a browser (`*` for any); empty: no CORS headers,
    /// and cross-origin POSTs are refused.
    pub cors_origins: Vec<String>,
    /// `Host` names a loopback server answers besides `localhost`, `127.0.0.1` and `[::1]`.
    pub allowed_hosts: Vec<String>,
    /// How long running answers may go on once a drain is asked (SIGTERM,
    /// `POST /admin/drain`); the rest then end with an error event.
    pub drain_timeout: Duration,
    /// Other engines' metric names `/metrics` also carries, for routers that read them.
    pub metrics_compat: MetricsCompat,
    /// Interval of `:` comments on an event stream that has nothing to send (long prefills).
    pub keep_alive_interval: Duration,
    /// Serve the playground page at `/`.
    pub playground: bool,
    /// Speculative decoding for every request (output unchanged).
    pub speculation: Option<crate::engine::Speculation>,
    /// Read special-token text inside message content as the special tokens (HF's and
    /// vLLM's behaviour); by default it is plain text, so a user cannot forge a turn.
    pub special_tokens_in_content: bool,
    /// How long a stream may wait for a client that stopped reading (its buffer full)
    /// before it is cancelled and its slot freed.
    pub send_timeout: Duration,
    /// Most token entries one answer may hold: `n x max_tokens x (1 + top_logprobs)`
    /// (a request over it is a 400), which bounds the memory of building the answer.
    pub max_answer_entries: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_ids: vec!["llama32".into()],
            model_aliases: Vec::new(),
            api_keys: Vec::new(),
            metrics_public: false,
            queue: 16,
            ctx_size: None,
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_ip: 768,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            drain_timeout: Duration::from_secs(30),
            metrics_compat: MetricsCompat::None,
            keep_alive_interval: Duration::from_secs(10),
            playground: true,
            speculation: None,
            special_tokens_in_content: false,
            max_answer_entries: 1 << 20,
            send_timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("model_ids", &self.model_ids)
            .field("api_keys", &self.api_keys.len())
            .field("queue", &self.queue)
            .field("ctx_size", &self.ctx_size)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field("cors_origins", &self.cors_origins)
            .finish_non_exhaustive()
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    /// Accepting and answering.
    Serving,
    /// Drain asked (SIGTERM, `POST /admin/drain`): not ready, new generation requests get
    /// 503, running answers go on; connections are still accepted.
    Draining,
    /// Nothing runs any more (or the drain timeout passed): connections close.
    Closing,
    /// The drain timeout is over: running answers end now with an error event.
    Aborting,
}

/// The loaded model the server answers with.
struct Ready {
    engine: Arc<Engine>,
    /// The context window of each request.
    ctx: usize,
    /// Generation requests in flight at most.
    capacity: usize,
    /// See [`ServerConfig::special_tokens_in_content`].
    special_tokens_in_content: bool,
    /// See [`ServerConfig::speculation`].
    speculation: Option<crate::engine::Speculation>,
    /// See [`ServerConfig::max_answer_entries`].
    answer_limit: usize,
    /// The chat template writes `tools` into the prompt (else they go into the system
    /// message: [`crate::chat::inline_tools`]).
    template_tools: bool,
}

impl ServerConfig {
    /// True when requests may name the model `id`.
    fn serves(&self, id: &str) -> bool {
        self.model_ids.iter().chain(&self.model_aliases).any(|m| m == id)
    }

    /// The model an answer names: the one `asked` for when it is a served id, else the
    /// first (for an alias, or when the request named none).
    fn answer_model<'a>(&'a self, asked: Option<&'a str>) -> &'a str {
        match asked {
            Some(m) if self.model_ids.iter().any(|id| id == m) => m,
            _ => &self.model_ids[0],
        }
    }
}

/// Requests rendered and tokenized at once (generation and token counting alike): each may
/// hold ~100 times its body (up to `--max-body` bytes) while it is planned, and two cores
/// gain nothing from more.
const PLANNING_AT_ONCE: usize = 4;

/// What every connection shares.
struct State {
    config: ServerConfig,
    ready: OnceLock<Ready>,
    /// Generation requests in flight.
    in_flight: AtomicUsize,
    metrics: metrics::Metrics,
    /// Stored Responses API answers.
    responses: responses::ResponseStore,
    /// Requests being planned (more wait, each holding only its body).
    planning: Arc<tokio::sync::Semaphore>,
    /// Bound to a loopback address: only local `Host` names are answered.
    loopback: bool,
    /// Where the server is in its life; the handle, signals and `POST /admin/drain` move it.
    phase: watch::Sender<Phase>,
}

impl State {
    /// Moves the server's life on to `to` (never back).
    fn advance(&self, to: Phase) {
        let changed = self.phase.send_if_modified(|p| {
            let changed = *p < to;
            if changed {
                *p = to;
            }
            changed
        });
        if changed {
            let running = self.in_flight.load(std::sync::atomic::Ordering::SeqCst);
            match to {
                Phase::Serving => {}
                Phase::Draining => tracing::info!(
                    running,
                    drain_timeout_s = self.config.drain_timeout.as_secs(),
                    "draining: not ready, new requests get 503; running requests may finish"
                ),
                Phase::Closing => tracing::info!("drained: closing connections"),
                Phase::Aborting => tracing::info!(running, "ending the running requests now"),
            }
        }
    }

    fn draining(&self) -> bool {
        *self.phase.borrow() != Phase::Serving
    }
}

/// Controls a server from any thread: marks it ready, asks it to shut down.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<State>,
}

impl ServerHandle {
    /// Serves `engine` from now on (`/health` says `ok`); before, generation requests and
    /// `/health` get 503 `loading`. Fails when the context size does not fit the engine or
    /// when an engine was already given.
    pub fn ready(&self, engine: Arc<Engine>) -> Result<()> {
        let ctx = engine.context_window(self.state.config.ctx_size)?;
        let capacity = engine.parallel() + self.state.config.queue;
        let template_tools = engine.template_renders_tools();
        self.state
            .ready
            .set(Ready {
                engine,
                ctx,
                capacity,
                special_tokens_in_content: self.state.config.special_tokens_in_content,
                speculation: self.state.config.speculation,
                answer_limit: self.state.config.max_answer_entries,
                template_tools,
            })
            .map_err(|_| Error::InvalidParameter {
                name: "engine",
                reason: "the server already has an engine".into(),
            })
    }

    /// Starts the drain: `/health` turns 503 at once, new generation requests get 503
    /// with `Retry-After`, running answers may finish within the drain timeout, then
    /// [`Server::run`] returns (at once when nothing runs). Safe to call from a signal
    /// handler thread, many times.
    pub fn shutdown(&self) {
        self.state.advance(Phase::Draining);
    }

    /// Ends the running answers now (each with a final error event), then
    /// [`Server::run`] returns: what a second Ctrl-C asks.
    pub fn abort(&self) {
        self.state.advance(Phase::Aborting);
    }

    /// True once a drain was asked.
    pub fn is_draining(&self) -> bool {
        self.state.draining()
    }
}

/// A bound server; [`Server::run`] serves until [`ServerHandle::shutdown`].
pub struct Server {
    listener: TcpListener,
    handle: ServerHandle,
}

// Requests are served from many tasks: the engine must be shareable.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
};

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one). The server answers
    /// `loading` until [`ServerHandle::ready`] gives it an engine.
    pub fn bind(addr: impl ToSocketAddrs + fmt::Display, config: ServerConfig) -> Result<Self> {
        if config.model_ids.is_empty() || config.model_ids.iter().any(|m| m.is_empty()) {
            return Err(Error::InvalidParameter {
                name: "served-model-name",
                reason: "needs at least one non-empty model id".into(),
            });
        }
        if config.max_connections == 0 {
            return Err(Error::InvalidParameter {
                name: "max-connections",
                reason: "must be at least 1".into(),
            });
        }
        let listener = TcpListener::bind(&addr).map_err(|source| Error::Io {
            path: addr.to_string().into(),
            source,
        })?;
        let (phase, _) = watch::channel(Phase::Serving);
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let state = State {
            loopback,
            metrics: metrics::Metrics::new(config.metrics_compat, &config.model_ids[0]),
            responses: responses::ResponseStore::default(),
            planning: Arc::new(tokio::sync::Semaphore::new(PLANNING_AT_ONCE)),
            config,
            ready: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            phase,
        };
        let handle = ServerHandle { state: Arc::new(state) };
        Ok(Self { listener, handle })
    }

    /// The address bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle to mark the server ready and to shut it down.
    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// Serves on its own tokio runtime until shutdown is asked and the running answers
    /// have finished (or were ended after the grace period).
    pub fn run(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("llama32-http")
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                path: "tokio runtime".into(),
                source,
            })?;
        let io = |source| Error::Io {
            path: "listener".into(),
            source,
        };
        self.listener.set_nonblocking(true).map_err(io)?;
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(self.listener).map_err(io)?;
            listener::serve(listener, self.handle).await;
            Ok(())
        })
    }
}
