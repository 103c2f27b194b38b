//! The Hugging Face cache layout, shared with Python's `huggingface_hub`:
//!
//! ```text
//! <cache>/models--owner--name/blobs/<etag>                 file contents, named by etag
//!                                                          (sha256 for LFS files)
//! <cache>/models--owner--name/blobs/<etag>.incomplete      a partial download (resumable)
//! <cache>/models--owner--name/snapshots/<commit>/<file>    relative symlink -> ../../blobs/<etag>
//! <cache>/models--owner--name/refs/<revision>              the commit hash of a branch or tag
//! <cache>/models--owner--name/.no_exist/<commit>/<file>    marks a file the repo does not have
//! <cache>/.locks/models--owner--name/<etag>.lock           held while a blob is written
//! ```
//!
//! A file appears in `snapshots/` only after its blob is complete and verified, and the
//! link is made atomically (temporary name, then rename), so a reader never sees a partial
//! or unverified file there.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::error::{io_err, HubError, Result};
use super::names::{check_filename, check_hash, check_revision};

/// The cache folder of one model repo.
#[derive(Debug, Clone)]
pub(crate) struct RepoCache {
    root: PathBuf,
    locks: PathBuf,
}

/// A held lock on one blob; released on drop.
#[derive(Debug)]
pub(crate) struct BlobLock {
    _file: File,
}

impl RepoCache {
    /// The folder of `repo` (`owner/name`, already validated) under `cache_dir`.
    pub(crate) fn new(cache_dir: &Path, repo: &str) -> Self {
        let folder = format!("models--{}", repo.replace('/', "--"));
        Self {
            root: cache_dir.join(&folder),
            locks: cache_dir.join(".locks").join(folder),
        }
    }

    /// `models--owner--name/`.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// The snapshot directory of a commit.
    pub(crate) fn snapshot_dir(&self, commit: &str) -> Result<PathBuf> {
        check_hash(commit, "not a commit hash")?;
        Ok(self.root.join("snapshots").join(commit))
    }

    /// The path of `file` in the snapshot of `commit`.
    pub(crate) fn snapshot_file(&self, commit: &str, file: &str) -> Result<PathBuf> {
        check_filename(file)?;
        Ok(self.snapshot_dir(commit)?.join(file))
    }

    /// The complete blob named `etag`.
    pub(crate) fn blob(&self, etag: &str) -> Result<PathBuf> {
        check_hash(etag, "not a valid etag")?;
        Ok(self.root.join("blobs").join(etag))
    }

    /// The partial download of the blob named `etag`.
    pub(crate) fn incomplete(&self, etag: &str) -> Result<PathBuf> {
        Ok(self.blob(etag)?.with_extension("incomplete"))
    }

    /// The commit a branch or tag points to, as recorded in `refs/`; `None` when unknown.
    pub(crate) fn read_ref(&self, revision: &str) -> Result<Option<String>> {
        check_revision(revision)?;
        let path = self.root.join("refs").join(revision);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let commit = text.trim();
                Ok((!commit.is_empty() && check_hash(commit, "").is_ok()).then(|| commit.to_string()))
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
            Err(e) => Err(HubError::Io { path, source: e }),
        }
    }

    /// Records that `revision` points to `commit` (nothing to do when they are equal).
    pub(crate) fn write_ref(&self, revision: &str, commit: &str) -> Result<()> {
        check_revision(revision)?;
        check_hash(commit, "not a commit hash")?;
        if revision == commit || self.read_ref(revision)?.as_deref() == Some(commit) {
            return Ok(());
        }
        let path = self.root.join("refs").join(revision);
        create_parent(&path)?;
        let tmp = temp_name(&path);
        fs::write(&tmp, commit).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// The commit of `revision` known to the cache: the revision itself when it is a commit
    /// with a snapshot, else what `refs/` says.
    pub(crate) fn known_commit(&self, revision: &str) -> Result<Option<String>> {
        if super::names::is_commit_hash(revision) && self.root.join("snapshots").join(revision).is_dir() {
            return Ok(Some(revision.to_string()));
        }
        self.read_ref(revision)
    }

    /// Takes the lock of blob `etag`, waiting for another holder; `on_wait` is called once
    /// if the lock is busy.
    pub(crate) fn lock_blob(&self, etag: &str, on_wait: impl FnOnce()) -> Result<BlobLock> {
        check_hash(etag, "not a valid etag")?;
        let path = self.locks.join(format!("{etag}.lock"));
        create_parent(&path)?;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(io_err(&path))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(HubError::Io { path, source: e }),
        }
        Ok(BlobLock { _file: file })
    }

    /// Makes `snapshots/<commit>/<file>` point to `blobs/<etag>` (a relative symlink, like
    /// `huggingface_hub`; a copy where symlinks are unavailable). Atomic: the old entry, if
    /// any, is replaced by a rename.
    pub(crate) fn link(&self, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let dest = self.snapshot_file(commit, file)?;
        let blob = self.blob(etag)?;
        create_parent(&dest)?;
        let tmp = temp_name(&dest);
        let _ = fs::remove_file(&tmp);
        make_link(&blob, &tmp, file, etag).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        Ok(dest)
    }

    /// Records that `file` does not exist at `commit` (so offline runs know not to look).
    pub(crate) fn mark_missing(&self, commit: &str, file: &str) -> Result<()> {
        check_hash(commit, "not a commit hash")?;
        check_filename(file)?;
        let path = self.root.join(".no_exist").join(commit).join(file);
        create_parent(&path)?;
        File::create(&path).map(drop).map_err(io_err(&path))
    }

    /// True when `file` is recorded as absent at `commit`.
    pub(crate) fn is_marked_missing(&self, commit: &str, file: &str) -> bool {
        self.root.join(".no_exist").join(commit).join(file).is_file()
    }

    /// Bytes used by this repo's blobs (partial downloads included).
    pub(crate) fn disk_usage(&self) -> u64 {
        let Ok(dir) = fs::read_dir(self.root().join("blobs")) else {
            return 0;
        };
        dir.filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum()
    }
}

#[cfg(unix)]
fn make_link(_blob: &Path, at: &Path, file: &str, etag: &str) -> io::Result<()> {
    // snapshots/<commit>/<dirs...>/<name> -> ../../<dirs as ..>/blobs/<etag>
    let depth = 2 + file.matches('/').count();
    let target = format!("{}blobs/{etag}", "../".repeat(depth));
    std::os::unix::fs::symlink(target, at)
}

#[cfg(not(unix))]
fn make_link(blob: &Path, at: &Path, _file: &str, _etag: &str) -> io::Result<()> {
    fs::copy(blob, at).map(drop)
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent).map_err(io_err(parent)),
        None => Ok(()),
    }
}

/// A sibling of `path` unique to this process and thread, for write-then-rename.
fn temp_name(path: &Path) -> PathBuf {
    let thread = format!("{:?}", std::thread::current().id());
    let thread: String = thread.chars().filter(char::is_ascii_digit).collect();
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}-{thread}.tmp", std::process::id()));
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "meta-llama/Llama-3.2-1B");
        assert_eq!(cache.root(), dir.path().join("models--meta-llama--Llama-3.2-1B"));
        let commit = "a".repeat(40);
        fs::create_dir_all(cache.root().join("blobs")).unwrap();
        fs::write(cache.blob("e1").unwrap(), "x").unwrap();
        let linked = cache.link(&commit, "sub/f.json", "e1").unwrap();
        assert_eq!(fs::read_to_string(&linked).unwrap(), "x");
        #[cfg(unix)]
        assert_eq!(fs::read_link(&linked).unwrap(), Path::new("../../../blobs/e1"));
        cache.write_ref("main", &commit).unwrap();
        assert_eq!(fs::read_to_string(cache.root().join("refs/main")).unwrap(), commit);
        assert_eq!(cache.known_commit("main").unwrap(), Some(commit.clone()));
        assert_eq!(cache.known_commit(&commit).unwrap(), Some(commit.clone()));
        assert_eq!(cache.known_commit("other").unwrap(), None);
        assert_eq!(
            cache.incomplete("e1").unwrap(),
            cache.root().join("blobs/e1.incomplete")
        );
        assert!(cache.blob("../x").is_err() && cache.snapshot_file(&commit, "../x").is_err());
        assert!(cache.read_ref("../../x").is_err());
    }

    #[test]
    fn a_second_lock_on_the_same_blob_waits() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "a/b");
        let held = cache.lock_blob("e1", || panic!("first lock must not wait")).unwrap();
        let cache2 = cache.clone();
        let waited = std::thread::spawn(move || {
            let mut waited = false;
            let _lock = cache2.lock_blob("e1", || waited = true).unwrap();
            waited
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(held);
        assert!(waited.join().unwrap());
    }
}
