//! The hub side of the CLI: `llama32 download`, `llama32 list`, and `--model` values that
//! name a model (an alias from models.toml or a hub repo id) rather than a directory.
//!
//! This is the only place that reads the Hugging Face environment variables: `HF_HUB_CACHE`,
//! `HF_HOME`, `HF_TOKEN`, `HF_TOKEN_PATH`, `HF_ENDPOINT`, `HF_HUB_OFFLINE` (plus
//! `LLAMA32_MODELS` for a user models.toml); the library gets a `HubConfig`.

use std::collections::HashMap;
use std::env;
use std::ffi::OsString;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use llama32::hub::{self, CacheStatus, HubConfig, ModelEntry, Notice, Progress, Registry};
use serde_json::json;

/// `llama32 download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// An alias from models.toml (see `llama32 list`) or a hub repo id `owner/name[@revision]`.
    pub model: String,
}

/// `llama32 list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Downloads (or refreshes) a model into the Hugging Face cache and prints its directory.
pub fn download(a: DownloadArgs) -> anyhow::Result<ExitCode> {
    let registry = load_registry()?;
    let config = hub_config_from_env()?;
    let dir = hub::download(&a.model, &registry, &config)?;
    writeln!(io::stdout(), "{}", dir.display())?;
    Ok(ExitCode::SUCCESS)
}

/// Lists the known models, whether each is cached, and its size on disk.
pub fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let registry = load_registry()?;
    let config = hub_config_from_env()?;
    let mut rows = Vec::new();
    for entry in registry.entries() {
        let status = hub::cache_status(entry, &config)?;
        rows.push((entry, status));
    }
    let mut out = io::stdout().lock();
    if a.json {
        writeln!(out, "{}", list_json(&rows))?;
    } else {
        write_table(&mut out, &rows)?;
        writeln!(out, "\ncache: {}", config.cache_dir.display())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn list_json(rows: &[(&ModelEntry, CacheStatus)]) -> serde_json::Value {
    let items = rows.iter().map(|(e, s)| {
        json!({
            "name": e.alias, "repo": e.repo.repo, "revision": e.repo.revision,
            "cached": s.is_complete(), "size_bytes": s.disk_usage, "path": s.snapshot,
            "context_length": e.context_length, "description": e.description,
        })
    });
    serde_json::Value::Array(items.collect())
}

fn write_table(out: &mut impl Write, rows: &[(&ModelEntry, CacheStatus)]) -> io::Result<()> {
    let width = |f: &dyn Fn(&ModelEntry) -> usize| rows.iter().map(|(e, _)| f(e)).max().unwrap_or(0).max(4);
    let name_w = width(&|e| e.alias.len());
    let repo_w = width(&|e| e.repo.to_string().len());
    writeln!(
        out,
        "{:name_w$}  {:repo_w$}  {:7}  {:>9}  DESCRIPTION",
        "NAME", "REPO", "CACHED", "SIZE"
    )?;
    for (e, s) in rows {
        let cached = match (s.is_complete(), s.disk_usage) {
            (true, _) => "yes",
            (false, 0) => "no",
            (false, _) => "partial",
        };
        let size = if s.disk_usage == 0 {
            "-".to_string()
        } else {
            human_size(s.disk_usage)
        };
        let repo = e.repo.to_string();
        writeln!(
            out,
            "{:name_w$}  {repo:repo_w$}  {cached:7}  {size:>9}  {}",
            e.alias, e.description
        )?;
    }
    Ok(())
}

/// Turns a `--model` value into a checkpoint: a directory or (GGUF) file as is, else an alias
/// or repo id, downloaded on first use (with a progress bar on a terminal).
pub fn resolve_model_arg(spec: &str) -> anyhow::Result<PathBuf> {
    if Path::new(spec).is_dir() || Path::new(spec).is_file() {
        return Ok(PathBuf::from(spec));
    }
    if looks_local(spec) {
        anyhow::bail!("{spec}: no such local file or folder (a hub model is named owner/name or by its alias)");
    }
    let registry = load_registry()?;
    let config = hub_config_from_env()?;
    Ok(hub::resolve(spec, &registry, &config)?)
}

/// True when `spec` can only mean a local path: it starts like one (`./`, `../`, `/`, `~`),
/// has more than one `/` (hub ids have one), names a model file, or its first part is an
/// existing local folder.
fn looks_local(spec: &str) -> bool {
    let name = spec.split(':').next().unwrap_or(spec);
    let first = name.split('/').next().unwrap_or_default();
    ["./", "../", "/", "~"].iter().any(|p| spec.starts_with(p))
        || name.matches('/').count() > 1
        || (!spec.contains(':') && (spec.ends_with(".gguf") || spec.ends_with(".safetensors")))
        || (name.contains('/') && !first.is_empty() && Path::new(first).is_dir())
}

/// Replaces a `--model` value by the checkpoint directory it designates.
pub fn resolve_in_place(model: &mut PathBuf) -> anyhow::Result<()> {
    *model = resolve_model_path(model)?;
    Ok(())
}

/// [`resolve_model_arg`] for a `--model` parsed as a path (non-UTF-8 paths must be directories).
pub fn resolve_model_path(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_dir() || path.is_file() {
        return Ok(path.to_path_buf());
    }
    let spec = path
        .to_str()
        .ok_or_else(|| anyhow!("{}: no such directory", path.display()))?;
    resolve_model_arg(spec)
}

/// The built-in models.toml extended by `$LLAMA32_MODELS` (which must exist when set) or
/// else `~/.config/llama32/models.toml` when it exists.
fn load_registry() -> anyhow::Result<Registry> {
    let user = match env::var_os("LLAMA32_MODELS").filter(|v| !v.is_empty()) {
        Some(path) => Some(PathBuf::from(path)),
        None => config_home()
            .map(|d| d.join("llama32/models.toml"))
            .filter(|p| p.is_file()),
    };
    Registry::load(user.as_deref()).map_err(anyhow::Error::from)
}

/// The hub configuration from the environment, as `huggingface_hub` reads it.
pub fn hub_config_from_env() -> anyhow::Result<HubConfig> {
    let hf_home = match var("HF_HOME") {
        Some(h) => PathBuf::from(h),
        None => cache_home()
            .context("cannot locate the Hugging Face cache: set HF_HUB_CACHE or HF_HOME")?
            .join("huggingface"),
    };
    let cache_dir = var("HF_HUB_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home.join("hub"));
    let mut config = HubConfig::new(cache_dir);
    if let Some(endpoint) = var("HF_ENDPOINT") {
        config.endpoint = endpoint.to_string_lossy().trim_end_matches('/').to_string();
    }
    config.token = token(&hf_home)?;
    config.offline = var("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v.to_string_lossy()));
    config.progress = Arc::new(Bars::new(io::stderr().is_terminal()));
    Ok(config)
}

/// `HF_TOKEN`, else the token file (`HF_TOKEN_PATH`, default `$HF_HOME/token`).
fn token(hf_home: &Path) -> anyhow::Result<Option<String>> {
    if let Some(t) = var("HF_TOKEN") {
        let t = t.to_string_lossy().trim().to_string();
        return Ok((!t.is_empty()).then_some(t));
    }
    let path = var("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home.join("token"));
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading the Hugging Face token file {}", path.display())),
    }
}

fn truthy(v: &str) -> bool {
    matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
}

fn var(name: &str) -> Option<OsString> {
    env::var_os(name).filter(|v| !v.is_empty())
}

fn home() -> Option<PathBuf> {
    var("HOME").or_else(|| var("USERPROFILE")).map(PathBuf::from)
}

fn cache_home() -> Option<PathBuf> {
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cache")))
}

fn config_home() -> Option<PathBuf> {
    var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// File name, bar, bytes done / total, rate, time left.
const BAR_TEMPLATE: &str = "{msg:32!} [{bar:30}] {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta}";

/// One progress bar per file on a terminal (bytes, rate, ETA); nothing otherwise.
/// Notices (retries, waits, resumes) go to stderr either way.
struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Bars {
    fn new(terminal: bool) -> Self {
        Self {
            multi: terminal.then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template(BAR_TEMPLATE)
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
    }
}

impl Progress for Bars {
    fn update(&self, file: &str, done: u64, total: u64) {
        let (Some(multi), Ok(mut bars)) = (&self.multi, self.bars.lock()) else {
            return;
        };
        let bar = bars.entry(file.to_string()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(total));
            bar.set_style(Self::style());
            bar.set_message(file.to_string());
            bar
        });
        bar.set_length(total);
        bar.set_position(done);
    }

    fn finish(&self, file: &str, ok: bool) {
        let Ok(mut bars) = self.bars.lock() else {
            return;
        };
        if let Some(bar) = bars.remove(file) {
            if ok {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }

    fn notice(&self, notice: &Notice) {
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(format!("note: {notice}"));
            }
            None => eprintln!("note: {notice}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(2_471_000_000), "2.5 GB");
        assert_eq!(human_size(300_000), "300.0 kB");
    }

    #[test]
    fn progress_bars_take_updates_for_several_files() {
        assert!(ProgressStyle::with_template(BAR_TEMPLATE).is_ok());
        let bars = Bars::new(true);
        bars.update("a", 0, 10);
        bars.update("b", 5, 10);
        bars.update("a", 10, 10);
        bars.finish("a", true);
        bars.finish("b", false);
        bars.notice(&Notice::WaitingForLock { file: "a".into() });
        assert!(bars.bars.lock().unwrap().is_empty());
    }

    #[test]
    fn offline_values_follow_huggingface_hub() {
        for v in ["1", "ON", "yes", "True"] {
            assert!(truthy(v), "{v}");
        }
        for v in ["0", "", "off", "no"] {
            assert!(!truthy(v), "{v}");
        }
    }
}
