//! HTTP for the hub: one blocking agent with connect and read timeouts, the hub's
//! redirect rules, its error headers (`X-Error-Code`, `X-Error-Message`), and retries with
//! exponential backoff on 5xx, 429 (honouring `Retry-After`), network errors and stalls.

use std::io::{self, Read};
use std::thread;
use std::time::Duration;

use url::Url;

use super::config::{HubConfig, Notice};
use super::error::{HubError, Result};

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 10;

/// A failed try: worth retrying or not.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Transient (5xx, 429, network, stall): try again after the backoff or `after`.
    Retry {
        /// The error to report if no try is left.
        error: HubError,
        /// The server's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
    /// Permanent: report at once.
    Fatal(HubError),
}

impl Failure {
    /// A timeout made final: a hub that accepts a request and then says nothing for the
    /// read timeout is down, and retrying would only multiply the wait.
    pub(crate) fn timeout_is_fatal(self) -> Self {
        match self {
            Failure::Retry {
                error: e @ HubError::Timeout { .. },
                ..
            } => Failure::Fatal(e),
            other => other,
        }
    }
}

impl From<HubError> for Failure {
    fn from(e: HubError) -> Self {
        Failure::Fatal(e)
    }
}

/// What a request is about, to build precise errors.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    /// `owner/name`.
    pub repo: &'a str,
    /// The revision in the URL.
    pub revision: &'a str,
    /// The file in the repo.
    pub file: &'a str,
}

/// A blocking HTTP client configured from a [`HubConfig`].
pub(crate) struct Http<'a> {
    agent: ureq::Agent,
    config: &'a HubConfig,
}

impl<'a> Http<'a> {
    /// An agent with the configured timeouts; redirects are followed by hand.
    pub(crate) fn new(config: &'a HubConfig) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(config.connect_timeout)
            .timeout_read(config.read_timeout)
            .timeout_write(config.read_timeout)
            .redirects(0)
            .user_agent(&config.user_agent)
            .build();
        Self { agent, config }
    }

    /// The hub's address, without a trailing `/`.
    pub(crate) fn base_url(&self) -> &str {
        self.config.base_url()
    }

    /// `{endpoint}/{repo}/resolve/{revision}/{file}`.
    pub(crate) fn resolve_url(&self, t: &Target<'_>) -> String {
        format!(
            "{}/{}/resolve/{}/{}",
            self.config.base_url(),
            t.repo,
            super::names::url_encode(t.revision, false),
            super::names::url_encode(t.file, true)
        )
    }

    /// Sends `method` to `url`. GET follows every redirect (the token is dropped when the
    /// host changes); HEAD follows only relative ones, like `huggingface_hub`, so that the
    /// hub's `X-Linked-*` headers of an LFS redirect are seen. `range_from` asks for the
    /// bytes from that offset on.
    pub(crate) fn send(
        &self,
        method: &str,
        url: &str,
        range_from: Option<u64>,
        t: &Target<'_>,
    ) -> std::result::Result<ureq::Response, Failure> {
        let origin = Url::parse(url)
            .map_err(|e| protocol(url, format!("bad URL: {e}")))?
            .origin();
        let mut current = url.to_string();
        for _ in 0..MAX_REDIRECTS {
            let parsed = Url::parse(&current).map_err(|e| protocol(&current, format!("bad URL: {e}")))?;
            let mut request = self.agent.request(method, &current).set("Accept-Encoding", "identity");
            if let (Some(token), true) = (&self.config.token, parsed.origin() == origin) {
                request = request.set("Authorization", &format!("Bearer {token}"));
            }
            if let Some(offset) = range_from.filter(|&o| o > 0) {
                request = request.set("Range", &format!("bytes={offset}-"));
            }
            let response = match request.call() {
                Ok(r) => r,
                Err(ureq::Error::Status(status, r)) => return Err(self.status_failure(status, r, &current, t)),
                Err(ureq::Error::Transport(e)) => return Err(self.transport_failure(&e, &current)),
            };
            let location = response.header("Location").map(str::to_string);
            let Some(location) = location.filter(|_| (300..400).contains(&response.status())) else {
                return Ok(response);
            };
            let relative = !location.contains("://") && !location.starts_with("//");
            if method == "HEAD" && !relative {
                return Ok(response);
            }
            current = parsed
                .join(&location)
                .map_err(|e| protocol(&current, format!("bad redirect `{location}`: {e}")))?
                .into();
        }
        Err(protocol(url, "too many redirects".into()).into())
    }

    /// Runs `op` until it succeeds, fails permanently, or the retry policy is spent.
    pub(crate) fn with_retries<T>(&self, mut op: impl FnMut() -> std::result::Result<T, Failure>) -> Result<T> {
        let policy = &self.config.retry;
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { error, after }) => {
                    if attempt >= policy.max_attempts.max(1) {
                        return Err(error);
                    }
                    let wait = policy.backoff(attempt, after);
                    self.config.progress.notice(&Notice::Retrying {
                        reason: error.to_string(),
                        attempt,
                        max_attempts: policy.max_attempts,
                        wait,
                    });
                    thread::sleep(wait);
                    attempt += 1;
                }
            }
        }
    }

    fn status_failure(&self, status: u16, response: ureq::Response, url: &str, t: &Target<'_>) -> Failure {
        let header = |name: &str| response.header(name).map(str::to_string);
        let code = header("X-Error-Code");
        let retry_after = header("Retry-After")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let message = header("X-Error-Message").or_else(|| body_message(response));
        let (repo, revision, file) = (t.repo.to_string(), t.revision.to_string(), t.file.to_string());
        let not_found_code = matches!(
            code.as_deref(),
            Some("RepoNotFound" | "RevisionNotFound" | "EntryNotFound")
        );
        let error = match (status, code.as_deref()) {
            (_, Some("GatedRepo")) | (401 | 403, _) if !not_found_code => HubError::AuthRequired {
                token_sent: self.config.token.is_some(),
                licence_url: format!("{}/{}", self.config.base_url(), t.repo),
                repo,
                status,
                message,
            },
            (_, Some("RepoNotFound")) => HubError::RepoNotFound { repo },
            (_, Some("RevisionNotFound")) => HubError::RevisionNotFound { repo, revision },
            (_, Some("EntryNotFound")) | (404, _) => HubError::EntryNotFound { repo, revision, file },
            _ => HubError::Http {
                status,
                url: url.to_string(),
                message,
            },
        };
        match (status, &error) {
            (429 | 500..=599, HubError::Http { .. }) => Failure::Retry {
                error,
                after: retry_after,
            },
            _ => Failure::Fatal(error),
        }
    }

    fn transport_failure(&self, e: &ureq::Transport, url: &str) -> Failure {
        if is_timeout(e) {
            let error = HubError::Timeout {
                url: url.to_string(),
                after: self.config.read_timeout,
                partial: false,
            };
            return Failure::Retry { error, after: None };
        }
        let text = e.to_string();
        let message = text.strip_prefix(&format!("{url}: ")).unwrap_or(&text).to_string();
        let error = HubError::Network {
            url: url.to_string(),
            message,
        };
        match e.kind() {
            // No name resolution usually means no network: retrying only delays the error.
            ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme | ureq::ErrorKind::Dns => {
                Failure::Fatal(error)
            }
            _ => Failure::Retry { error, after: None },
        }
    }
}

/// Maps an error while reading a response body to a retryable failure.
pub(crate) fn body_failure(e: &io::Error, url: &str, read_timeout: Duration) -> Failure {
    let error = if is_timeout_io(e) {
        HubError::Timeout {
            url: url.to_string(),
            after: read_timeout,
            partial: true,
        }
    } else {
        HubError::Network {
            url: url.to_string(),
            message: format!("transfer interrupted: {e}"),
        }
    };
    Failure::Retry { error, after: None }
}

pub(crate) fn protocol(url: &str, message: String) -> HubError {
    HubError::Protocol {
        url: url.to_string(),
        message,
    }
}

fn is_timeout(e: &ureq::Transport) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<io::Error>().is_some_and(is_timeout_io) {
            return true;
        }
        source = s.source();
    }
    false
}

fn is_timeout_io(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock)
}

/// The `error` field of a JSON error body, or its first line of text (at most 4 KiB read).
fn body_message(response: ureq::Response) -> Option<String> {
    let mut body = String::new();
    response.into_reader().take(4096).read_to_string(&mut body).ok()?;
    let json = serde_json::from_str::<serde_json::Value>(&body).ok();
    let text = match json.as_ref().and_then(|v| v.get("error")).and_then(|v| v.as_str()) {
        Some(e) => e.to_string(),
        None => body.lines().next().unwrap_or("").trim().chars().take(200).collect(),
    };
    (!text.is_empty()).then_some(text)
}
