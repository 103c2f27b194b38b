//! `models.toml`: the models llama32 knows by name, and how a `--model` value (an alias, a
//! hub repo id `owner/name[@revision]`, or a local directory) is interpreted.
//!
//! The crate's `models.toml` is embedded in the library; a user file can override fields
//! of known entries (a pinned `revision`, say) or add new ones. Errors name the line.

use std::collections::BTreeSet;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::error::{io_err, HubError, Result};
use super::names::{check_filename, check_repo_part, check_revision};

/// The `models.toml` shipped with the crate.
pub const BUILTIN_MODELS_TOML: &str = include_str!("../../models.toml");

/// A hub repository and an optional revision (branch, tag or commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoRef {
    /// `owner/name`.
    pub repo: String,
    /// Branch, tag or commit; `None` means `main`.
    pub revision: Option<String>,
}

impl RepoRef {
    /// Parses `owner/name` or `owner/name@revision`, checking both parts.
    pub fn parse(spec: &str) -> Result<Self> {
        let invalid = |reason: String| HubError::InvalidSpec {
            spec: spec.to_string(),
            reason,
        };
        let (id, revision) = match spec.split_once('@') {
            Some((id, rev)) => (id, Some(rev)),
            None => (spec, None),
        };
        let Some((owner, name)) = id.split_once('/') else {
            return Err(invalid("a repo id is `owner/name` (optionally `@revision`)".into()));
        };
        if name.contains('/') {
            return Err(invalid("a repo id has exactly one `/` (`owner/name`)".into()));
        }
        check_repo_part(owner).map_err(|r| invalid(format!("owner {r}")))?;
        check_repo_part(name).map_err(|r| invalid(format!("repo name {r}")))?;
        if let Some(rev) = revision {
            if rev.is_empty() {
                return Err(invalid("empty revision after `@`".into()));
            }
            check_revision(rev).map_err(|e| invalid(format!("revision: {e}")))?;
        }
        Ok(Self {
            repo: id.to_string(),
            revision: revision.map(str::to_string),
        })
    }

    /// The revision to ask for: the given one, else `main`.
    pub fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl fmt::Display for RepoRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(rev) => write!(f, "{}@{rev}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// One model of the registry.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The name users type (`llama-3.2-1b-instruct`).
    pub alias: String,
    /// The hub repo and pinned revision, if any.
    pub repo: RepoRef,
    /// The files to fetch; `None` fetches the standard checkpoint files (config, tokenizer,
    /// generation config, and `model.safetensors` or the shards of its index).
    pub files: Option<Vec<String>>,
    /// The model's context length in tokens, for display.
    pub context_length: Option<u64>,
    /// One line for `llama32 list`.
    pub description: String,
}

/// What a `--model` value designates.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSpec {
    /// An existing local checkpoint directory, used as is.
    Local(PathBuf),
    /// An entry of the registry (its revision possibly overridden by `alias@revision`).
    Registered(ModelEntry),
    /// A hub repo id that is not in the registry.
    Repo(RepoRef),
}

/// The known models: the built-in `models.toml`, possibly extended by a user file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registry {
    entries: Vec<ModelEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    model: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Spanned<String>,
    repo: Option<Spanned<String>>,
    revision: Option<Spanned<String>>,
    files: Option<Spanned<Vec<Spanned<String>>>>,
    context_length: Option<Spanned<u64>>,
    description: Option<String>,
}

impl Registry {
    /// The registry of the built-in `models.toml` alone.
    pub fn builtin() -> Result<Self> {
        let mut registry = Self::default();
        registry.extend_from_toml(BUILTIN_MODELS_TOML, "built-in models.toml")?;
        Ok(registry)
    }

    /// The built-in registry extended by `user_file` when one is given.
    pub fn load(user_file: Option<&Path>) -> Result<Self> {
        let mut registry = Self::builtin()?;
        if let Some(path) = user_file {
            let text = std::fs::read_to_string(path).map_err(io_err(path))?;
            registry.extend_from_toml(&text, &path.display().to_string())?;
        }
        Ok(registry)
    }

    /// Adds the entries of a `models.toml` text: a known alias has the fields given here
    /// replaced, a new alias is added (it needs at least `repo`). `origin` names the text
    /// in errors. On error the registry is unchanged.
    pub fn extend_from_toml(&mut self, text: &str, origin: &str) -> Result<()> {
        let raw: RawFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s));
            registry_err(origin, line, e.message().trim().to_string())
        })?;
        let mut merged = self.entries.clone();
        let mut seen = BTreeSet::new();
        for entry in raw.model {
            let line = line_of(text, entry.span());
            let at = |span: Range<usize>| line_of(text, span);
            let err = |line: usize, message: String| registry_err(origin, line, message);
            let alias = entry.get_ref().name.get_ref().clone();
            let name_line = at(entry.get_ref().name.span());
            check_alias(&alias).map_err(|m| err(name_line, m))?;
            if !seen.insert(alias.to_ascii_lowercase()) {
                return Err(err(name_line, format!("model `{alias}` is defined twice")));
            }
            let index = merged.iter().position(|e| e.alias.eq_ignore_ascii_case(&alias));
            let base = index.map(|i| merged[i].clone());
            let updated = apply(base, &alias, entry.into_inner(), &at).map_err(|(l, m)| err(l.unwrap_or(line), m))?;
            match index {
                Some(i) => merged[i] = updated,
                None => merged.push(updated),
            }
        }
        self.entries = merged;
        Ok(())
    }

    /// The entry named `alias` (ASCII case-insensitive).
    pub fn get(&self, alias: &str) -> Option<&ModelEntry> {
        self.entries.iter().find(|e| e.alias.eq_ignore_ascii_case(alias))
    }

    /// All entries, in file order (built-in first).
    pub fn entries(&self) -> &[ModelEntry] {
        &self.entries
    }

    /// Interprets a `--model` value: an existing directory or file, else
    /// `owner/name[@revision]:FILE` (that one file, e.g. a GGUF), else an alias (optionally
    /// `alias@revision`), else a hub repo id `owner/name[@revision]`.
    pub fn interpret(&self, spec: &str) -> Result<ModelSpec> {
        let invalid = |reason: &str| HubError::InvalidSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        if spec.trim().is_empty() {
            return Err(invalid("empty model name"));
        }
        if Path::new(spec).is_dir() || Path::new(spec).is_file() {
            return Ok(ModelSpec::Local(PathBuf::from(spec)));
        }
        // `owner/name[@revision]:FILE`: one file of a repo (a GGUF file of a GGUF repo).
        if let Some((repo, file)) = spec.split_once(':').filter(|(r, f)| r.contains('/') && !f.is_empty()) {
            check_filename(file).map_err(|e| invalid(&format!("the file after `:`: {e}")))?;
            return Ok(ModelSpec::Registered(ModelEntry {
                alias: spec.to_string(),
                repo: RepoRef::parse(repo)?,
                files: Some(vec![file.to_string()]),
                context_length: None,
                description: String::new(),
            }));
        }
        let (name, revision) = match spec.split_once('@') {
            Some((name, rev)) => (name, Some(rev)),
            None => (spec, None),
        };
        if looks_like_path(name) {
            return Err(invalid("no such directory (a repo id is `owner/name[@revision]`)"));
        }
        if let Some(entry) = self.get(name) {
            let mut entry = entry.clone();
            if let Some(rev) = revision {
                let rev_ref = RepoRef::parse(&format!("{}@{rev}", entry.repo.repo))
                    .map_err(|_| invalid("bad revision after `@`"))?;
                entry.repo.revision = rev_ref.revision;
            }
            return Ok(ModelSpec::Registered(entry));
        }
        if name.contains('/') {
            return RepoRef::parse(spec).map(ModelSpec::Repo);
        }
        if check_alias(name).is_err() {
            return Err(invalid(
                "not a directory, an alias from models.toml, or a repo id `owner/name`",
            ));
        }
        Err(HubError::UnknownModel {
            alias: name.to_string(),
            known: self.entries.iter().map(|e| e.alias.clone()).collect(),
        })
    }
}

type FieldError = (Option<usize>, String);

/// Applies the fields of one raw table to `base` (the existing entry of that alias, if any).
fn apply(
    base: Option<ModelEntry>,
    alias: &str,
    raw: RawEntry,
    at: &dyn Fn(Range<usize>) -> usize,
) -> std::result::Result<ModelEntry, FieldError> {
    let mut entry = match base {
        Some(base) => base,
        None if raw.repo.is_some() => ModelEntry {
            alias: alias.to_string(),
            repo: RepoRef {
                repo: String::new(),
                revision: None,
            },
            files: None,
            context_length: None,
            description: String::new(),
        },
        None => return Err((None, format!("model `{alias}` needs a `repo = \"owner/name\"`"))),
    };
    if let Some(repo) = raw.repo {
        entry.repo.repo = repo_field(&repo).map_err(|m| (Some(at(repo.span())), m))?;
    }
    if let Some(rev) = raw.revision {
        check_revision(rev.get_ref()).map_err(|e| (Some(at(rev.span())), format!("revision: {e}")))?;
        entry.repo.revision = Some(rev.into_inner());
    }
    if let Some(files) = raw.files {
        entry.files = Some(files_field(files, at)?);
    }
    if let Some(n) = raw.context_length {
        if *n.get_ref() == 0 {
            return Err((Some(at(n.span())), "`context_length` must be positive".into()));
        }
        entry.context_length = Some(n.into_inner());
    }
    if let Some(d) = raw.description {
        entry.description = d;
    }
    Ok(entry)
}

fn repo_field(repo: &Spanned<String>) -> std::result::Result<String, String> {
    let parsed = RepoRef::parse(repo.get_ref()).map_err(|e| e.to_string())?;
    match parsed.revision {
        Some(_) => Err("put the revision in `revision = \"...\"`, not in `repo`".into()),
        None => Ok(parsed.repo),
    }
}

fn files_field(
    files: Spanned<Vec<Spanned<String>>>,
    at: &dyn Fn(Range<usize>) -> usize,
) -> std::result::Result<Vec<String>, FieldError> {
    if files.get_ref().is_empty() {
        return Err((Some(at(files.span())), "`files` is empty".into()));
    }
    let mut names = Vec::new();
    for f in files.into_inner() {
        check_filename(f.get_ref()).map_err(|e| (Some(at(f.span())), format!("files: {e}")))?;
        names.push(f.into_inner());
    }
    Ok(names)
}

fn check_alias(alias: &str) -> std::result::Result<(), String> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias.starts_with(|c: char| c.is_ascii_alphanumeric())
        && alias
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "alias `{alias}` must be 1-64 ASCII letters, digits, `-`, `_` or `.`"
        ))
    }
}

fn looks_like_path(s: &str) -> bool {
    s.starts_with(['.', '/', '~']) || s.contains('\\') || s.matches('/').count() > 1
}

fn line_of(text: &str, span: Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}

fn registry_err(origin: &str, line: usize, message: String) -> HubError {
    HubError::Registry {
        origin: origin.to_string(),
        line,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_and_message(text: &str) -> (usize, String) {
        match Registry::builtin().unwrap().extend_from_toml(text, "user.toml") {
            Err(HubError::Registry { line, message, .. }) => (line, message),
            other => panic!("expected a registry error, got {other:?}"),
        }
    }

    #[test]
    fn builtin_has_the_four_llama_models() {
        let r = Registry::builtin().unwrap();
        let aliases: Vec<_> = r.entries().iter().map(|e| e.alias.as_str()).collect();
        assert_eq!(
            aliases,
            [
                "llama-3.2-1b-instruct",
                "llama-3.2-1b",
                "llama-3.2-3b-instruct",
                "llama-3.2-3b"
            ]
        );
        let e = r.get("llama-3.2-1b-instruct").unwrap();
        assert_eq!(e.repo.repo, "meta-llama/Llama-3.2-1B-Instruct");
        assert_eq!(e.context_length, Some(131072));
        assert!(e.files.as_ref().unwrap().contains(&"model.safetensors".to_string()));
    }

    #[test]
    fn repo_colon_file_fetches_that_one_file() {
        let reg = Registry::builtin().unwrap();
        match reg
            .interpret("bartowski/Llama-3.2-1B-Instruct-GGUF@main:Llama-3.2-1B-Instruct-Q4_K_M.gguf")
            .unwrap()
        {
            ModelSpec::Registered(e) => {
                assert_eq!(
                    (e.repo.repo.as_str(), e.repo.revision.as_deref()),
                    ("bartowski/Llama-3.2-1B-Instruct-GGUF", Some("main"))
                );
                assert_eq!(e.files.unwrap(), ["Llama-3.2-1B-Instruct-Q4_K_M.gguf"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(reg.interpret("o/n:../x.gguf").is_err());
    }

    #[test]
    fn user_file_overrides_fields_and_adds_models() {
        let mut r = Registry::builtin().unwrap();
        let text = "[[model]]\nname = \"llama-3.2-1b\"\nrevision = \"abc\"\n\n[[model]]\nname = \"mine\"\nrepo = \"me/my-llama\"\n";
        r.extend_from_toml(text, "user.toml").unwrap();
        let e = r.get("llama-3.2-1b").unwrap();
        assert_eq!(e.repo.to_string(), "meta-llama/Llama-3.2-1B@abc");
        assert_eq!(e.description, "Llama 3.2 1B base model (bf16, 2.5 GB)");
        let mine = r.get("mine").unwrap();
        assert_eq!((mine.repo.repo.as_str(), mine.files.clone()), ("me/my-llama", None));

        assert_eq!(r.entries().last().unwrap().alias, "mine");
    }

    #[test]
    fn broken_models_toml_errors_name_the_line() {
        const A: &str = "[[model]]\nname = \"a\"\n";
        assert_eq!(line_and_message(&format!("{A}repo = \"x/y\"\nfiles = [\"a\",\n")).0, 4);
        assert_eq!(line_and_message(&format!("\n{A}repo = \"x/y\"\ncolour = 1\n")).0, 5);
        assert_eq!(line_and_message(&format!("\n\n{A}repo = \"not a repo\"\n")).0, 5);
        assert_eq!(
            line_and_message(&format!("{A}repo = \"x/y\"\nfiles = [\n \"ok\",\n \"../evil\"]\n")).0,
            6
        );
        let (line, message) = line_and_message(&format!(
            "{A}repo = \"x/y\"\n\n[[model]]\nname = \"b\"\ndescription = \"no repo\"\n"
        ));
        assert_eq!(line, 5, "{message}");
        assert!(message.contains("needs a `repo"), "{message}");
        assert_eq!(
            line_and_message(&format!("{A}repo = \"x/y\"\ncontext_length = \"long\"\n")).0,
            4
        );
        assert_eq!(
            line_and_message("[[model]]\nrepo = \"x/y\"\nname = \"bad alias\"\n").0,
            3
        );
        assert_eq!(
            line_and_message(&format!("{A}repo = \"x/y\"\n{A}repo = \"x/z\"\n")).0,
            5
        );
        assert_eq!(line_and_message("[[model]]\nrepo = \"x/y\"\n").0, 1);
        let (line, message) = line_and_message("# comment\n[models.a]\nrepo = \"x/y\"\n");
        assert!(
            line == 2 && message.contains("unknown field `models`"),
            "{line}: {message}"
        );
    }

    #[test]
    fn interpret_tells_aliases_repos_and_directories_apart() {
        let r = Registry::builtin().unwrap();
        let dir = std::env::temp_dir();
        assert_eq!(
            r.interpret(dir.to_str().unwrap()).unwrap(),
            ModelSpec::Local(dir.clone())
        );
        assert!(matches!(r.interpret("llama-3.2-3b").unwrap(), ModelSpec::Registered(e) if e.alias == "llama-3.2-3b"));
        match r.interpret("LLAMA-3.2-1B@deadbeef").unwrap() {
            ModelSpec::Registered(e) => {
                assert_eq!(e.repo.to_string(), "meta-llama/Llama-3.2-1B@deadbeef")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.interpret("owner/name@refs/pr/1").unwrap(),
            ModelSpec::Repo(RepoRef {
                repo: "owner/name".into(),
                revision: Some("refs/pr/1".into())
            })
        );
    }

    #[test]
    fn malformed_specs_are_refused_with_a_reason() {
        let r = Registry::builtin().unwrap();
        for bad in [
            "owner/",
            "/name",
            "a/b/c",
            "owner/na me",
            "owner/name@",
            "owner/name@../x",
            "a--b/c",
            "./nope",
            "",
            "x y",
        ] {
            match r.interpret(bad) {
                Err(e @ HubError::InvalidSpec { .. }) => assert!(e.is_usage()),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        match r.interpret("llama-9b") {
            Err(HubError::UnknownModel { known, .. }) => {
                assert!(known.contains(&"llama-3.2-1b".to_string()))
            }
            other => panic!("{other:?}"),
        }
    }
}
