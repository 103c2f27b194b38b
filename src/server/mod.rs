//! `llama32 serve`: an OpenAI-compatible HTTP server (`/v1/chat/completions`,
//! `/v1/completions`, `/v1/models`, `/health`) on a small blocking HTTP/1.1 stack.
//!
//! One thread per connection (capped); generation runs under a worker slot taken from a
//! bounded FIFO queue ([`queue::Slots`]), so at most `parallel` answers are computed at
//! once and at most `queue` more wait (503 with `Retry-After` beyond). A client that goes
//! away while waiting leaves the queue; one that goes away while its answer is generated
//! stops the generation at the next token and frees its slot.
//!
//! Like the rest of the library the server prints nothing: each request is reported to
//! the [`ServerConfig::logger`] callback as a [`RequestLog`] (no prompt text, no keys).

pub mod api;
pub mod error;
mod generate;
pub mod http;
pub mod queue;
mod routes;
pub mod sse;

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::error::{Error, Result};

pub use error::ApiError;
use http::{write_error, Conn, Limits, ReadError};
use queue::Slots;

/// One finished request, for the log line.
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// The client's address.
    pub peer: Option<SocketAddr>,
    /// HTTP method.
    pub method: String,
    /// Path (no query string).
    pub path: String,
    /// Status sent (499: the client went away before the answer was complete).
    pub status: u16,
    /// Prompt tokens (0 when none were computed).
    pub prompt_tokens: usize,
    /// Generated tokens, all choices together.
    pub completion_tokens: usize,
    /// From the first byte of the request to the end of the answer.
    pub duration: Duration,
}

impl fmt::Display for RequestLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let peer = self.peer.map_or_else(|| "-".to_string(), |p| p.to_string());
        write!(
            f,
            "{peer} {} {} {} prompt_tokens={} completion_tokens={} {:.3}s",
            self.method,
            self.path,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            self.duration.as_secs_f64()
        )
    }
}

/// Receives one [`RequestLog`] per request.
pub type Logger = Arc<dyn Fn(&RequestLog) + Send + Sync>;

/// How the server behaves.
#[derive(Clone)]
pub struct ServerConfig {
    /// The model id clients use (`GET /v1/models`); requests naming another get 404.
    pub model_id: String,
    /// When set, `/v1/*` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Generations computed at once (worker slots).
    pub parallel: usize,
    /// Requests that may wait for a slot; more get 503.
    pub queue: usize,
    /// Context window per request (`None`: the model's maximum).
    pub ctx_size: Option<usize>,
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest request head in bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Open connections at most (more are answered 503 and closed).
    pub max_connections: usize,
    /// Time allowed for a whole request (head and body) once it started (408 beyond).
    pub request_timeout: Duration,
    /// How long an idle kept-alive connection stays open.
    pub idle_timeout: Duration,
    /// How long one write to a client may block before the client counts as gone.
    pub write_timeout: Duration,
    /// Request log callback.
    pub logger: Option<Logger>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            model_id: "llama32".into(),
            api_key: None,
            parallel: 1,
            queue: 16,
            ctx_size: None,
            max_body_bytes: 1 << 20,
            max_header_bytes: 16 << 10,
            max_connections: 256,
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            logger: None,
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("model_id", &self.model_id)
            .field("api_key", &self.api_key.as_ref().map(|_| "<set>"))
            .field("parallel", &self.parallel)
            .field("queue", &self.queue)
            .field("ctx_size", &self.ctx_size)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// What every connection thread shares.
struct State {
    engine: Arc<Engine>,
    config: ServerConfig,
    slots: Arc<Slots>,
    /// The context window of each request.
    ctx: usize,
    limits: Limits,
    connections: AtomicUsize,
}

/// A bound server; [`Server::run`] serves until the process ends.
pub struct Server {
    listener: TcpListener,
    state: Arc<State>,
}

// Requests are served from many threads: the engine must be shareable.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<Engine>();
};

impl Server {
    /// Binds `addr` (e.g. `127.0.0.1:8080`; port 0 picks a free one).
    pub fn bind(engine: Arc<Engine>, addr: impl ToSocketAddrs + fmt::Display, config: ServerConfig) -> Result<Self> {
        let ctx = engine.context_window(config.ctx_size)?;
        if config.parallel == 0 {
            return Err(Error::InvalidParameter {
                name: "parallel",
                reason: "must be at least 1".into(),
            });
        }
        let listener = TcpListener::bind(&addr).map_err(|source| Error::Io {
            path: addr.to_string().into(),
            source,
        })?;
        let limits = Limits {
            max_header_bytes: config.max_header_bytes,
            max_body_bytes: config.max_body_bytes,
            idle_timeout: config.idle_timeout,
            request_timeout: config.request_timeout,
        };
        let state = State {
            slots: Slots::new(config.parallel, config.queue),
            engine,
            config,
            ctx,
            limits,
            connections: AtomicUsize::new(0),
        };
        Ok(Self {
            listener,
            state: Arc::new(state),
        })
    }

    /// The address bound (with the real port when 0 was asked).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, one thread each.
    pub fn run(&self) -> std::io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(_) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            };
            let state = self.state.clone();
            if state.connections.fetch_add(1, Ordering::SeqCst) >= state.config.max_connections {
                state.connections.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                let mut stream = stream;
                let _ = write_error(&mut stream, &ApiError::overloaded(1), false);
                continue;
            }
            let spawned = std::thread::Builder::new().name("llama32-conn".into()).spawn(move || {
                let _guard = ConnectionGuard(&state.connections);
                serve_connection(&state, stream);
            });
            if spawned.is_err() {
                self.state.connections.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

struct ConnectionGuard<'a>(&'a AtomicUsize);

impl Drop for ConnectionGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a handler reports for the log line.
pub(crate) struct Outcome {
    status: u16,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// False when the connection must close (client gone, body not read...).
    keep_alive: bool,
}

impl Outcome {
    fn status(status: u16, keep_alive: bool) -> Self {
        Self {
            status,
            prompt_tokens: 0,
            completion_tokens: 0,
            keep_alive,
        }
    }
}

fn serve_connection(state: &State, stream: TcpStream) {
    let peer = stream.peer_addr().ok();
    let Ok(mut conn) = Conn::new(stream, state.config.write_timeout) else {
        return;
    };
    loop {
        let mut start = Instant::now();
        let (method, path, outcome) = match conn.read_request(&state.limits) {
            Ok(request) => {
                start = Instant::now();
                let outcome = routes::handle(state, &request, &mut conn);
                let keep = outcome.keep_alive && request.keep_alive;
                (
                    request.method,
                    request.path,
                    Outcome {
                        keep_alive: keep,
                        ..outcome
                    },
                )
            }
            Err(ReadError::Closed) => return,
            Err(ReadError::Reject(error)) => {
                let _ = write_error(conn.writer(), &error, false);
                // Read what the client still sends (a too large body) before closing, so
                // that it sees the answer instead of a connection reset.
                conn.drain(Duration::from_secs(2), 64 << 20);
                ("-".to_string(), "-".to_string(), Outcome::status(error.status, false))
            }
        };
        if let Some(log) = &state.config.logger {
            log(&RequestLog {
                peer,
                method,
                path,
                status: outcome.status,
                prompt_tokens: outcome.prompt_tokens,
                completion_tokens: outcome.completion_tokens,
                duration: start.elapsed(),
            });
        }
        if !outcome.keep_alive {
            let _ = conn.writer().shutdown(std::net::Shutdown::Both);
            return;
        }
    }
}
