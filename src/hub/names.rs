//! Names that become paths or URLs: repo ids, revisions, file names, etags and commit
//! hashes. Everything that comes from a user, a server or an index file passes through
//! here before it touches the file system, so that nothing can escape the cache directory.

use super::error::{HubError, Result};

/// Longest accepted owner or repo name (the hub's own limit).
const MAX_REPO_PART: usize = 96;
/// Longest accepted revision, file name or hash.
const MAX_NAME: usize = 1024;

fn hostile(name: &str, reason: &'static str) -> HubError {
    HubError::HostileName {
        name: name.to_string(),
        reason,
    }
}

/// Checks one half of `owner/name`: ASCII letters, digits, `-`, `_`, `.`; no `--` or `..`
/// (they would make cache folder names ambiguous); not starting or ending with `-` or `.`.
pub(crate) fn check_repo_part(part: &str) -> std::result::Result<(), String> {
    if part.is_empty() || part.len() > MAX_REPO_PART {
        return Err(format!("`{part}` must have 1 to {MAX_REPO_PART} characters"));
    }
    if !part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "`{part}` may only hold ASCII letters, digits, `-`, `_` and `.`"
        ));
    }
    if part.contains("--") || part.contains("..") {
        return Err(format!("`{part}` must not contain `--` or `..`"));
    }
    let edge = |c: char| matches!(c, '-' | '.');
    if part.starts_with(edge) || part.ends_with(edge) {
        return Err(format!("`{part}` must not start or end with `-` or `.`"));
    }
    Ok(())
}

/// Checks a revision (branch, tag or commit): it becomes `refs/<revision>` in the cache, so
/// it must be a relative path of plain components (`refs/pr/1` is fine, `../x` is not).
pub(crate) fn check_revision(revision: &str) -> Result<()> {
    check_relative_path(revision)
}

/// Checks a file name from models.toml, a shard index or a server: a relative path of
/// plain components, no `..`, no absolute path, no backslash, no control characters.
pub(crate) fn check_filename(name: &str) -> Result<()> {
    check_relative_path(name)
}

fn check_relative_path(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(hostile(name, "empty or too long"));
    }
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return Err(hostile(name, "holds a control character or a backslash"));
    }
    if name.starts_with('/') || name.contains(':') {
        return Err(hostile(name, "is an absolute path"));
    }
    for component in name.split('/') {
        match component {
            "" => return Err(hostile(name, "has an empty path component")),
            "." | ".." => return Err(hostile(name, "has a `.` or `..` path component")),
            _ => {}
        }
    }
    Ok(())
}

/// Checks an etag or commit hash before it becomes a file name in `blobs/` or `snapshots/`:
/// ASCII letters, digits, `-` and `_` only.
pub(crate) fn check_hash(value: &str, what: &'static str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(hostile(value, what))
    }
}

/// True for a full 40-hex-digit git commit hash.
pub(crate) fn is_commit_hash(value: &str) -> bool {
    value.len() == 40 && value.chars().all(|c| c.is_ascii_hexdigit())
}

/// True for a 64-hex-digit sha256 (the etag of an LFS file).
pub(crate) fn is_sha256(value: &str) -> bool {
    value.len() == 64 && value.chars().all(|c| c.is_ascii_hexdigit())
}

/// Percent-encodes a path for a URL, keeping `/` when `keep_slash`.
pub(crate) fn url_encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if plain || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_file_names_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\b",
            "C:x",
            "",
            "a\0b",
            "a/",
        ] {
            assert!(check_filename(bad).is_err(), "{bad:?} accepted");
        }
        for good in [
            "model.safetensors",
            "original/params.json",
            "model-00001-of-00002.safetensors",
        ] {
            check_filename(good).unwrap();
        }
    }

    #[test]
    fn repo_parts_follow_the_hub_rules() {
        for good in ["meta-llama", "Llama-3.2-1B", "a", "x_y.z"] {
            check_repo_part(good).unwrap();
        }
        for bad in ["", "a b", "a--b", "a..b", "-a", "a.", "ü", &"x".repeat(97)] {
            assert!(check_repo_part(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hashes_must_be_plain() {
        check_hash("0123abcd", "etag").unwrap();
        for bad in ["", "../x", "a/b", "a.b", "a b"] {
            assert!(check_hash(bad, "etag").is_err(), "{bad:?} accepted");
        }
        assert!(is_commit_hash(&"a".repeat(40)) && !is_commit_hash("main"));
        assert!(is_sha256(&"0".repeat(64)) && !is_sha256(&"0".repeat(40)));
    }

    #[test]
    fn url_encoding_keeps_unreserved_characters() {
        assert_eq!(url_encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(url_encode("a b/c.json", true), "a%20b/c.json");
    }
}
