//! How the hub client behaves: endpoint, cache directory, token, offline mode, timeouts,
//! retries, and where progress goes. Built by the caller (the CLI builds it from the
//! `HF_*` environment variables); the library itself reads no environment.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The public Hugging Face hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Everything the hub client needs to know.
#[derive(Clone)]
pub struct HubConfig {
    /// Base URL of the hub, without a trailing slash (`HF_ENDPOINT`).
    pub endpoint: String,
    /// The Hugging Face cache root that holds `models--owner--name/` folders (`HF_HUB_CACHE`).
    pub cache_dir: PathBuf,
    /// Access token sent as `Authorization: Bearer` (`HF_TOKEN` or the token file).
    pub token: Option<String>,
    /// Use the cache only and open no connection (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Longest wait to establish a connection.
    pub connect_timeout: Duration,
    /// Longest wait for any data on an open connection (a stalled transfer fails after this).
    pub read_timeout: Duration,
    /// A download that brings fewer than `min_bytes_per_window` bytes in this long is
    /// abandoned (and retried): a server trickling bytes cannot hang it.
    pub stall_window: Duration,
    /// See `stall_window`.
    pub min_bytes_per_window: u64,
    /// Retries of 5xx, 429 and network failures.
    pub retry: RetryPolicy,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Receives download progress and notices (retries, waits); [`NoProgress`] by default.
    pub progress: Arc<dyn Progress>,
}

impl HubConfig {
    /// A configuration for the public hub with the given cache root, no token, online, and
    /// default timeouts (10 s connect, 30 s read) and retries.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            endpoint: DEFAULT_ENDPOINT.to_string(),
            cache_dir: cache_dir.into(),
            token: None,
            offline: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            stall_window: Duration::from_secs(60),
            min_bytes_per_window: 64 << 10,
            retry: RetryPolicy::default(),
            user_agent: format!("llama32/{}", env!("CARGO_PKG_VERSION")),
            progress: Arc::new(NoProgress),
        }
    }

    /// The endpoint without trailing slashes.
    pub(crate) fn base_url(&self) -> &str {
        self.endpoint.trim_end_matches('/')
    }
}

impl fmt::Debug for HubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubConfig")
            .field("endpoint", &self.endpoint)
            .field("cache_dir", &self.cache_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("offline", &self.offline)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("retry", &self.retry)
            .field("user_agent", &self.user_agent)
            .finish_non_exhaustive()
    }
}

/// Exponential backoff for transient failures (HTTP 5xx and 429, network errors, stalls).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Total tries per request, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the second try; doubled before each further try.
    pub initial_backoff: Duration,
    /// Upper bound of any wait, a server's `Retry-After` included.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before try number `attempt + 1` (`attempt` >= 1 tries made so far),
    /// honouring the server's `Retry-After` when it sent one; capped at `max_backoff`.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1 << attempt.saturating_sub(1).min(16));
        retry_after.unwrap_or(exp).min(self.max_backoff)
    }
}

/// Something worth telling the user that is not an error.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Notice {
    /// A request failed transiently and will be tried again after `wait`.
    Retrying {
        /// What failed.
        reason: String,
        /// The try that failed (1-based).
        attempt: u32,
        /// Tries allowed in all.
        max_attempts: u32,
        /// The wait before the next try.
        wait: Duration,
    },
    /// Another process (or thread) is downloading the same file; waiting for it.
    WaitingForLock {
        /// The file in the repo.
        file: String,
    },
    /// A partial download from an earlier run is resumed at `offset` bytes.
    Resuming {
        /// The file in the repo.
        file: String,
        /// Bytes already on disk.
        offset: u64,
    },
    /// The resumed data did not verify; the file is downloaded again from the start.
    Restarting {
        /// The file in the repo.
        file: String,
        /// Why.
        reason: String,
    },
    /// The hub could not be reached, but the cache holds a complete snapshot; it is used.
    UsingCache {
        /// Why the hub was not used.
        reason: String,
    },
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Retrying {
                reason,
                attempt,
                max_attempts,
                wait,
            } => write!(
                f,
                "{reason}; retrying in {:.1} s (try {} of {max_attempts})",
                wait.as_secs_f64(),
                attempt + 1
            ),
            Notice::WaitingForLock { file } => {
                write!(f, "{file}: another download of this file is running, waiting for it")
            }
            Notice::Resuming { file, offset } => write!(f, "{file}: resuming at byte {offset}"),
            Notice::Restarting { file, reason } => write!(f, "{file}: {reason}; downloading again"),
            Notice::UsingCache { reason } => write!(f, "{reason}; using the cached snapshot"),
        }
    }
}

/// Receives download progress. Called from the downloading thread; implementations must be
/// cheap (a progress bar, a log line). All methods default to doing nothing.
pub trait Progress: Send + Sync {
    /// `done` of `total` bytes of `file` are on disk (called at start, resume, and per chunk).
    fn update(&self, file: &str, done: u64, total: u64) {
        let _ = (file, done, total);
    }
    /// The download of `file` ended, successfully or not.
    fn finish(&self, file: &str, ok: bool) {
        let _ = (file, ok);
    }
    /// Something the user may want to know (retries, waits, resumes).
    fn notice(&self, notice: &Notice) {
        let _ = notice;
    }
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped_and_honours_retry_after() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        assert_eq!(p.backoff(1, None), Duration::from_millis(100));
        assert_eq!(p.backoff(2, None), Duration::from_millis(200));
        assert_eq!(p.backoff(3, None), Duration::from_millis(350));
        assert_eq!(
            p.backoff(1, Some(Duration::from_millis(300))),
            Duration::from_millis(300)
        );
        assert_eq!(p.backoff(1, Some(Duration::from_secs(100))), Duration::from_millis(350));
        assert_eq!(p.backoff(u32::MAX, None), Duration::from_millis(350));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let mut c = HubConfig::new("/tmp/x");
        c.token = Some("hf_secret".into());
        assert!(!format!("{c:?}").contains("hf_secret"));
    }
}
