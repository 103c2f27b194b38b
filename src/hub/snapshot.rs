//! Which files make a checkpoint, and getting all of them into one snapshot directory:
//! from the cache alone (offline, or when it is already complete), or from the hub.
//!
//! Without an explicit file list (a bare repo id) a checkpoint is `config.json` and
//! `tokenizer.json`, optionally `generation_config.json` and `tokenizer_config.json`, and
//! either the shards named by `model.safetensors.index.json` or `model.safetensors`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use super::cache::RepoCache;
use super::config::HubConfig;
use super::download::{fetch_blob, metadata};
use super::error::{io_err, HubError, Result};
use super::http::{Http, Target};
use super::names::check_filename;
use super::registry::RepoRef;

/// The shard index of a sharded checkpoint.
pub(crate) const INDEX: &str = "model.safetensors.index.json";
/// The weights of a single-file checkpoint.
const SINGLE: &str = "model.safetensors";
const STANDARD_REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const STANDARD_OPTIONAL: [&str; 2] = ["generation_config.json", "tokenizer_config.json"];

/// One repo at one revision and the files wanted from it (`None`: the standard set).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted<'a> {
    pub repo: &'a RepoRef,
    pub files: Option<&'a [String]>,
}

/// How strictly [`cached`] judges optional files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Optional {
    /// An optional file must be present or known to be absent (to skip the hub safely).
    Strict,
    /// Optional files do not matter (offline: use what there is).
    Lenient,
}

/// What the cache holds for `w`: the snapshot directory when complete, else what is missing.
pub(crate) fn cached(
    cache: &RepoCache,
    w: Wanted<'_>,
    optional: Optional,
) -> Result<std::result::Result<PathBuf, Vec<String>>> {
    let revision = w.repo.revision_or_main();
    let Some(commit) = cache.known_commit(revision)? else {
        return Ok(Err(vec![format!("revision `{revision}` (nothing of it is cached)")]));
    };
    let has = |f: &str| -> Result<bool> { Ok(cache.snapshot_file(&commit, f)?.is_file()) };
    let mut missing = Vec::new();
    let need = |f: &str, missing: &mut Vec<String>| -> Result<()> {
        if !has(f)? {
            missing.push(f.to_string());
        }
        Ok(())
    };
    let index_listed = match w.files {
        Some(list) => {
            for f in list {
                need(f, &mut missing)?;
            }
            list.iter().any(|f| f == INDEX)
        }
        None => {
            for f in STANDARD_REQUIRED {
                need(f, &mut missing)?;
            }
            for f in STANDARD_OPTIONAL {
                if optional == Optional::Strict && !has(f)? && !cache.is_marked_missing(&commit, f) {
                    missing.push(f.to_string());
                }
            }
            if !has(INDEX)? {
                need(SINGLE, &mut missing)?;
            }
            true
        }
    };
    if index_listed && has(INDEX)? {
        for shard in shards(&cache.snapshot_file(&commit, INDEX)?)? {
            need(&shard, &mut missing)?;
        }
    }
    Ok(if missing.is_empty() {
        Ok(cache.snapshot_dir(&commit)?)
    } else {
        Err(missing)
    })
}

/// Downloads what `w` needs from the hub into the cache and returns the snapshot directory.
/// The revision is resolved to a commit by the first request; every later file is asked
/// for at that commit, so the snapshot is consistent even if the branch moves meanwhile.
pub(crate) fn fetch(config: &HubConfig, cache: &RepoCache, w: Wanted<'_>) -> Result<PathBuf> {
    let http = Http::new(config);
    let mut f = Fetcher {
        http: &http,
        config,
        cache,
        repo: &w.repo.repo,
        revision: w.repo.revision_or_main(),
        commit: None,
    };
    let mut done = BTreeSet::new();
    let index_fetched = match w.files {
        Some(list) => {
            for file in list {
                f.get(file)?;
                done.insert(file.clone());
            }
            list.iter().any(|x| x == INDEX)
        }
        None => f.standard(w.repo)?,
    };
    let commit = f.commit.clone().ok_or_else(|| HubError::InvalidSpec {
        spec: w.repo.to_string(),
        reason: "no file to fetch".into(),
    })?;
    if index_fetched {
        for shard in shards(&cache.snapshot_file(&commit, INDEX)?)? {
            if !done.contains(&shard) {
                f.get(&shard)?;
            }
        }
    }
    cache.write_ref(w.repo.revision_or_main(), &commit)?;
    cache.snapshot_dir(&commit)
}

struct Fetcher<'a> {
    http: &'a Http<'a>,
    config: &'a HubConfig,
    cache: &'a RepoCache,
    repo: &'a str,
    revision: &'a str,
    commit: Option<String>,
}

impl Fetcher<'_> {
    /// Fetches the standard checkpoint files; true when it is sharded. A repo without
    /// `config.json` that holds GGUF files says so, listing them.
    fn standard(&mut self, repo: &RepoRef) -> Result<bool> {
        if let Err(e) = self.get(STANDARD_REQUIRED[0]) {
            let files = match e {
                HubError::EntryNotFound { .. } => gguf_files(self.http, repo),
                _ => Vec::new(),
            };
            return Err(match files.is_empty() {
                true => e,
                false => HubError::GgufOnly {
                    repo: repo.repo.clone(),
                    files,
                },
            });
        }
        for file in &STANDARD_REQUIRED[1..] {
            self.get(file)?;
        }
        for file in STANDARD_OPTIONAL {
            self.get_optional(file)?;
        }
        let sharded = self.get_optional(INDEX)?;
        if !sharded {
            self.get(SINGLE)?;
        }
        Ok(sharded)
    }

    /// Fetches `file` into the snapshot (a HEAD, then a GET unless the blob is cached).
    fn get(&mut self, file: &str) -> Result<()> {
        check_filename(file)?;
        let revision = self.commit.clone().unwrap_or_else(|| self.revision.to_string());
        let t = Target {
            repo: self.repo,
            revision: &revision,
            file,
        };
        let meta = metadata(self.http, &t)?;
        if self.commit.as_ref().is_some_and(|c| c != &meta.commit) {
            let url = self.http.resolve_url(&t);
            return Err(super::http::protocol(
                &url,
                format!("the hub answered for commit {} instead of {revision}", meta.commit),
            ));
        }
        fetch_blob(self.http, self.config, self.cache, &meta, &t)?;
        self.cache.link(&meta.commit, file, &meta.etag)?;
        self.commit = Some(meta.commit);
        Ok(())
    }

    /// Like [`Fetcher::get`], but a file the repo does not have is recorded as absent
    /// (`.no_exist/`) and `false` returned.
    fn get_optional(&mut self, file: &str) -> Result<bool> {
        match self.get(file) {
            Ok(()) => Ok(true),
            Err(HubError::EntryNotFound { .. }) => {
                if let Some(commit) = &self.commit {
                    self.cache.mark_missing(commit, file)?;
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// Most bytes of a repo's file listing read.
const MAX_LISTING_BYTES: u64 = 8 << 20;

/// The `.gguf` files of `repo` at its revision, from the hub's model API
/// (`/api/models/{repo}/revision/{revision}`); empty when the listing cannot be had.
fn gguf_files(http: &Http<'_>, repo: &RepoRef) -> Vec<String> {
    let revision = repo.revision_or_main();
    let url = format!(
        "{}/api/models/{}/revision/{}",
        http.base_url(),
        repo.repo,
        super::names::url_encode(revision, false)
    );
    let t = Target {
        repo: &repo.repo,
        revision,
        file: "",
    };
    let Ok(response) = http.send("GET", &url, None, &t) else {
        return Vec::new();
    };
    let mut text = String::new();
    if std::io::Read::read_to_string(
        &mut std::io::Read::take(response.into_reader(), MAX_LISTING_BYTES),
        &mut text,
    )
    .is_err()
    {
        return Vec::new();
    }
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let siblings = json.get("siblings").and_then(|s| s.as_array());
    let names = siblings
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("rfilename")?.as_str());
    names
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf") && check_filename(n).is_ok())
        .map(str::to_string)
        .collect()
}

/// The shard files named by a `model.safetensors.index.json`, checked to be safe names.
pub(crate) fn shards(index: &Path) -> Result<Vec<String>> {
    let bad = |message: String| HubError::BadIndex {
        path: index.to_path_buf(),
        message,
    };
    let text = fs::read_to_string(index).map_err(io_err(index))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("weight_map[{tensor:?}] is not a string")))?;
        check_filename(file)?;
        names.insert(file.to_string());
    }
    Ok(names.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_are_collected_and_hostile_ones_refused() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX);
        fs::write(
            &index,
            r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-1.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(shards(&index).unwrap(), ["m-1.safetensors", "m-2.safetensors"]);
        for hostile in ["../../evil", "/etc/passwd"] {
            fs::write(&index, format!(r#"{{"weight_map": {{"a": "{hostile}"}}}}"#)).unwrap();
            assert!(matches!(shards(&index), Err(HubError::HostileName { .. })), "{hostile}");
        }
        fs::write(&index, "{}").unwrap();
        assert!(matches!(shards(&index), Err(HubError::BadIndex { .. })));
    }
}
