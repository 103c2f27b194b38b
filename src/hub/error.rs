//! The hub's error type: every way resolving or downloading a model can fail, with the
//! repo, file, URL or path at fault and, where the user can act, what to do.

use std::path::PathBuf;
use std::time::Duration;

fn auth_advice(token_sent: bool, licence_url: &str) -> String {
    match token_sent {
        true => format!(
            "your access token (HF_TOKEN or the token file) was refused: check that it is valid \
             and that its account accepted the licence at {licence_url}"
        ),
        false => format!(
            "accept its licence at {licence_url} with your Hugging Face account, then set HF_TOKEN \
             (or the token file) to an access token of that account"
        ),
    }
}

/// Everything that can go wrong in [`crate::hub`].
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repo is gated or private and the request was not authorised (HTTP 401/403).
    #[error(
        "{repo} is gated or private (HTTP {status}): {}{}",
        auth_advice(*token_sent, licence_url),
        server_message(message)
    )]
    AuthRequired {
        /// A token was sent with the request (and refused).
        token_sent: bool,
        /// The repo id, `owner/name`.
        repo: String,
        /// The repo's page, where the licence is accepted.
        licence_url: String,
        /// The HTTP status (401 or 403).
        status: u16,
        /// The server's own explanation, if it sent one.
        message: Option<String>,
    },

    /// The hub has no such repo (or it is private and no valid token was sent).
    #[error("repository {repo} not found on the hub (check the name; if it is private or gated, set HF_TOKEN)")]
    RepoNotFound {
        /// The repo id, `owner/name`.
        repo: String,
    },

    /// The repo exists but has no such branch, tag or commit.
    #[error("revision `{revision}` not found in {repo}")]
    RevisionNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
    },

    /// The repo and revision exist but the file does not.
    #[error("file `{file}` not found in {repo} at revision `{revision}`")]
    EntryNotFound {
        /// The repo id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The file (relative path in the repo).
        file: String,
    },

    /// Offline mode, and the cache does not hold what is needed.
    #[error("offline and {repo} is not fully cached (missing: {}); {hint}", missing.join(", "))]
    Offline {
        /// The repo id (with `@revision` when one was given).
        repo: String,
        /// The files (or the revision) that are missing from the cache.
        missing: Vec<String>,
        /// How to fetch them.
        hint: String,
    },

    /// A downloaded file does not match the hub's metadata; it was deleted.
    #[error("{file}: downloaded data does not match the hub's metadata (expected {expected}, got {got}); the bad file was deleted, run again to re-download")]
    Integrity {
        /// The file in the repo.
        file: String,
        /// The expected size or sha256.
        expected: String,
        /// What the download produced.
        got: String,
    },

    /// A file name, revision, etag or commit from the server, an index or models.toml that
    /// would escape the cache directory or is otherwise unsafe as a path.
    #[error("refusing unsafe name `{name}`: {reason}")]
    HostileName {
        /// The name as received.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// `models.toml` (built in or the user's) is malformed.
    #[error("{origin}:{line}: {message}")]
    Registry {
        /// The file (or "built-in models.toml").
        origin: String,
        /// 1-based line of the fault.
        line: usize,
        /// What is wrong.
        message: String,
    },

    /// A `--model` value that is neither a directory, an alias nor a valid repo id.
    #[error("invalid model `{spec}`: {reason}")]
    InvalidSpec {
        /// The value as given.
        spec: String,
        /// Why it is refused and what is accepted.
        reason: String,
    },

    /// An alias that `models.toml` does not define.
    #[error("unknown model `{alias}`: not a directory, not a repo id (owner/name) and not in models.toml (known: {})", known.join(", "))]
    UnknownModel {
        /// The alias as given.
        alias: String,
        /// The aliases that exist.
        known: Vec<String>,
    },

    /// `model.safetensors.index.json` could not be read.
    #[error("{}: bad shard index: {message}", path.display())]
    BadIndex {
        /// The index file in the cache.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },

    /// The server answered with an HTTP error (after retries, for 5xx and 429).
    #[error("HTTP {status} from {url}{}", server_message(message))]
    Http {
        /// The HTTP status.
        status: u16,
        /// The URL requested.
        url: String,
        /// The server's explanation, if any.
        message: Option<String>,
    },

    /// The server could not be reached (DNS, refused, reset...), after retries.
    #[error("cannot reach {url}: {message} (set HF_HUB_OFFLINE=1 to use the cache only)")]
    Network {
        /// The URL requested.
        url: String,
        /// The transport error.
        message: String,
    },

    /// The connection stalled longer than the configured timeout, after retries.
    #[error(
        "{url}: no data for {:.1} s, giving up{}",
        after.as_secs_f64(),
        if *partial { " (the partial download is kept and resumes next time)" } else { " (is the hub reachable? HF_ENDPOINT sets another one)" }
    )]
    Timeout {
        /// The URL requested.
        url: String,
        /// The timeout that expired.
        after: Duration,
        /// Part of the file was downloaded (and is kept for the next try).
        partial: bool,
    },

    /// A repo without `config.json` that holds GGUF files: the user has to pick one.
    #[error(
        "{repo} has no config.json: it holds GGUF files, so choose one with `--model {repo}:FILE`, \
         e.g. `{repo}:{}`. Its GGUF files: {}",
        files.first().map_or("", String::as_str),
        files.join(", ")
    )]
    GgufOnly {
        /// The repo id.
        repo: String,
        /// Its `.gguf` files.
        files: Vec<String>,
    },

    /// The server's answer lacks something the hub protocol requires.
    #[error("{url}: unexpected answer from the hub: {message}")]
    Protocol {
        /// The URL requested.
        url: String,
        /// What was missing or wrong.
        message: String,
    },

    /// A file or directory of the cache could not be read or written (disk full included).
    #[error("{}: {source}", path.display())]
    Io {
        /// The path at fault.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Not enough free disk space for a download (checked before it starts).
    #[error(
        "{}: {file} needs {} MiB more but only {} MiB are free",
        path.display(),
        needed.div_ceil(1 << 20),
        available >> 20
    )]
    DiskFull {
        /// The cache directory.
        path: PathBuf,
        /// The file being downloaded.
        file: String,
        /// Bytes still to download (with a small margin).
        needed: u64,
        /// Bytes free.
        available: u64,
    },
}

/// `Result` with [`HubError`].
pub type Result<T> = std::result::Result<T, HubError>;

impl HubError {
    /// True when the error is the caller's bad `--model` value (a CLI maps it to exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, HubError::InvalidSpec { .. } | HubError::UnknownModel { .. })
    }
}

fn server_message(message: &Option<String>) -> String {
    match message {
        Some(m) if !m.is_empty() => format!(" (server says: {m})"),
        _ => String::new(),
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HubError {
    let path = path.into();
    move |source| HubError::Io { path, source }
}
