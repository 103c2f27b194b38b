//! Models by name: the `models.toml` registry and a Hugging Face hub downloader that shares
//! the standard Hugging Face cache with Python's `huggingface_hub`, works offline, resumes
//! interrupted downloads and never leaves an unverified file in a snapshot.
//!
//! ```no_run
//! use llama32::hub::{self, HubConfig, Registry};
//!
//! # fn main() -> llama32::hub::Result<()> {
//! let registry = Registry::builtin()?;
//! let config = HubConfig::new("/home/me/.cache/huggingface/hub");
//! // An alias, a repo id (`owner/name[@revision]`) or a local directory:
//! let dir = hub::resolve("llama-3.2-1b-instruct", &registry, &config)?;
//! # let _ = dir;
//! # Ok(())
//! # }
//! ```
//!
//! The library reads no environment variable: the caller fills a [`HubConfig`] (the
//! `llama32` binary does it from `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN`, `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE`). Progress and notices go to the [`Progress`] in the config.

mod cache;
mod config;
mod download;
mod error;
mod http;
mod names;
mod registry;
mod snapshot;

use std::path::PathBuf;

pub use config::{HubConfig, NoProgress, Notice, Progress, RetryPolicy, DEFAULT_ENDPOINT};
pub use error::{HubError, Result};
pub use registry::{ModelEntry, ModelSpec, Registry, RepoRef, BUILTIN_MODELS_TOML};

use cache::RepoCache;
use snapshot::{cached, Optional, Wanted};

/// Whether to ask the hub when the cache already holds a complete snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Use a complete cached snapshot without any network request (fast start).
    CacheFirst,
    /// Ask the hub for the revision's current commit and fetch what changed.
    Refresh,
}

/// Turns a `--model` value into a local checkpoint directory: a directory is returned
/// unchanged; an alias or repo id is served from the cache when complete, else downloaded.
pub fn resolve(spec: &str, registry: &Registry, config: &HubConfig) -> Result<PathBuf> {
    resolve_with(spec, registry, config, Freshness::CacheFirst)
}

/// Like [`resolve`], but always checks the hub for the revision's latest commit (unless
/// offline), fetching what is new.
pub fn download(spec: &str, registry: &Registry, config: &HubConfig) -> Result<PathBuf> {
    resolve_with(spec, registry, config, Freshness::Refresh)
}

/// [`resolve`] or [`download`], as `freshness` says.
pub fn resolve_with(spec: &str, registry: &Registry, config: &HubConfig, freshness: Freshness) -> Result<PathBuf> {
    match registry.interpret(spec)? {
        ModelSpec::Local(dir) => Ok(dir),
        ModelSpec::Registered(e) => fetch(&e.repo, e.files.as_deref(), config, freshness, spec),
        ModelSpec::Repo(r) => fetch(&r, None, config, freshness, spec),
    }
}

/// Gets `files` of `repo` (the standard checkpoint files when `None`, plus the shards of a
/// `model.safetensors.index.json`) into the cache and returns the snapshot directory.
pub fn fetch_repo(
    repo: &RepoRef,
    files: Option<&[String]>,
    config: &HubConfig,
    freshness: Freshness,
) -> Result<PathBuf> {
    fetch(repo, files, config, freshness, &repo.to_string())
}

fn fetch(
    repo: &RepoRef,
    files: Option<&[String]>,
    config: &HubConfig,
    freshness: Freshness,
    label: &str,
) -> Result<PathBuf> {
    let repo = &RepoRef::parse(&repo.to_string())?;
    if let Some(files) = files {
        files.iter().try_for_each(|f| names::check_filename(f))?;
    }
    let cache = RepoCache::new(&config.cache_dir, &repo.repo);
    let wanted = Wanted { repo, files };
    if config.offline {
        return cached(&cache, wanted, Optional::Lenient)?.map_err(|missing| HubError::Offline {
            repo: repo.to_string(),
            missing,
            hint: format!("fetch it while online first (`llama32 download {label}`), or unset HF_HUB_OFFLINE"),
        });
    }
    if freshness == Freshness::CacheFirst {
        if let Ok(dir) = cached(&cache, wanted, Optional::Strict)? {
            return Ok(dir);
        }
    }
    match snapshot::fetch(config, &cache, wanted) {
        Err(e @ (HubError::Network { .. } | HubError::Timeout { .. })) => {
            match cached(&cache, wanted, Optional::Lenient)? {
                Ok(dir) => {
                    config.progress.notice(&Notice::UsingCache { reason: e.to_string() });
                    Ok(dir)
                }
                Err(_) => Err(e),
            }
        }
        other => other,
    }
}

/// What the cache holds for one model.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStatus {
    /// The snapshot directory, when every needed file is there.
    pub snapshot: Option<PathBuf>,
    /// What is missing otherwise (files, or the revision itself).
    pub missing: Vec<String>,
    /// Bytes on disk for this repo (all its cached blobs, partial downloads included).
    pub disk_usage: u64,
}

impl CacheStatus {
    /// True when the model can be used offline.
    pub fn is_complete(&self) -> bool {
        self.snapshot.is_some()
    }
}

/// How much of `entry` the cache holds; touches no network.
pub fn cache_status(entry: &ModelEntry, config: &HubConfig) -> Result<CacheStatus> {
    let repo = &RepoRef::parse(&entry.repo.to_string())?;
    let cache = RepoCache::new(&config.cache_dir, &repo.repo);
    let wanted = Wanted {
        repo,
        files: entry.files.as_deref(),
    };
    let (snapshot, missing) = match cached(&cache, wanted, Optional::Lenient)? {
        Ok(dir) => (Some(dir), Vec::new()),
        Err(missing) => (None, missing),
    };
    Ok(CacheStatus {
        snapshot,
        missing,
        disk_usage: cache.disk_usage(),
    })
}
