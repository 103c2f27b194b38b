//! Fetching one file: its metadata from a HEAD on `/resolve/` (`X-Repo-Commit`,
//! `X-Linked-Etag`/`ETag`, `X-Linked-Size`/`Content-Length`), then its blob by GET into
//! `blobs/<etag>.incomplete`, resuming with `Range`, under a per-blob lock, and checked
//! (size, and sha256 for LFS files) before it is renamed to `blobs/<etag>`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::cache::RepoCache;
use super::config::{HubConfig, Notice};
use super::error::{io_err, HubError, Result};
use super::http::{body_failure, protocol, Failure, Http, Target};
use super::names::{check_hash, is_sha256};

/// Bytes read from the network per chunk.
const CHUNK: usize = 256 * 1024;

/// What the hub says about one file at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileMeta {
    /// The commit the revision resolved to.
    pub commit: String,
    /// The blob name: the git sha1 of a regular file, the sha256 of an LFS file.
    pub etag: String,
    /// The size in bytes.
    pub size: u64,
}

/// HEADs the file (with retries) and reads its metadata.
pub(crate) fn metadata(http: &Http<'_>, t: &Target<'_>) -> Result<FileMeta> {
    let url = http.resolve_url(t);
    http.with_retries(|| {
        let response = http.send("HEAD", &url, None, t)?;
        parse_meta(&response, &url).map_err(Failure::Fatal)
    })
}

fn parse_meta(r: &ureq::Response, url: &str) -> Result<FileMeta> {
    let missing = |name: &str| protocol(url, format!("no `{name}` header"));
    let commit = r
        .header("X-Repo-Commit")
        .ok_or_else(|| missing("X-Repo-Commit"))?
        .trim()
        .to_string();
    check_hash(&commit, "commit hash sent by the server is not a plain hash")?;
    let etag = r
        .header("X-Linked-Etag")
        .or_else(|| r.header("ETag"))
        .ok_or_else(|| missing("ETag"))?;
    let etag = normalize_etag(etag);
    check_hash(&etag, "etag sent by the server is not a plain hash")?;
    let size = r
        .header("X-Linked-Size")
        .or_else(|| r.header("Content-Length"))
        .ok_or_else(|| missing("Content-Length"))?;
    let size = size
        .trim()
        .parse()
        .map_err(|_| protocol(url, format!("bad size `{size}`")))?;
    Ok(FileMeta { commit, etag, size })
}

/// `W/"abc"` -> `abc`.
fn normalize_etag(etag: &str) -> String {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').to_string()
}

/// Makes sure `blobs/<etag>` holds the verified file, downloading it if needed. Safe
/// against other threads and processes (and `huggingface_hub`) doing the same.
pub(crate) fn fetch_blob(
    http: &Http<'_>,
    config: &HubConfig,
    cache: &RepoCache,
    meta: &FileMeta,
    t: &Target<'_>,
) -> Result<()> {
    let blob = cache.blob(&meta.etag)?;
    if blob_complete(&blob, meta.size) {
        return Ok(());
    }
    let _lock = cache.lock_blob(&meta.etag, || {
        config.progress.notice(&Notice::WaitingForLock {
            file: t.file.to_string(),
        })
    })?;
    if blob_complete(&blob, meta.size) {
        return Ok(());
    }
    let part = cache.incomplete(&meta.etag)?;
    if let Some(dir) = part.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let url = http.resolve_url(&Target {
        revision: &meta.commit,
        ..*t
    });
    let result = download_verified(http, config, &part, meta, &url, t);
    config.progress.finish(t.file, result.is_ok());
    if let Err(e) = result {
        if matches!(e, HubError::Integrity { .. }) {
            let _ = fs::remove_file(&part);
        }
        return Err(e);
    }
    fs::rename(&part, &blob).map_err(io_err(&blob))
}

fn blob_complete(blob: &Path, size: u64) -> bool {
    fs::metadata(blob).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Downloads into `part` (resuming what is there) and verifies it. Resumed data that fails
/// verification is thrown away and the file downloaded once more from the start.
fn download_verified(
    http: &Http<'_>,
    config: &HubConfig,
    part: &Path,
    meta: &FileMeta,
    url: &str,
    t: &Target<'_>,
) -> Result<()> {
    let mut p = Partial::open(part, is_sha256(&meta.etag))?;
    let resumed = p.written > 0;
    if resumed {
        config.progress.notice(&Notice::Resuming {
            file: t.file.to_string(),
            offset: p.written,
        });
    }
    let result = transfer(http, config, &mut p, meta, url, t).and_then(|()| p.verify(meta, t.file));
    match result {
        Err(HubError::Integrity { .. }) if resumed => {
            let reason = "the resumed partial download does not verify".to_string();
            config.progress.notice(&Notice::Restarting {
                file: t.file.to_string(),
                reason,
            });
            p.reset()?;
            transfer(http, config, &mut p, meta, url, t)?;
            p.verify(meta, t.file)
        }
        other => other,
    }
}

/// GETs the rest of the file into `p`, with retries; each retry resumes where the last
/// one stopped.
fn transfer(
    http: &Http<'_>,
    config: &HubConfig,
    p: &mut Partial,
    meta: &FileMeta,
    url: &str,
    t: &Target<'_>,
) -> Result<()> {
    http.with_retries(|| {
        if p.written > meta.size {
            p.reset()?;
        }
        if p.written == meta.size {
            return Ok(());
        }
        let response = http.send("GET", url, Some(p.written), t)?;
        accept_range(&response, p, url)?;
        config.progress.update(t.file, p.written, meta.size);
        receive(response.into_reader(), p, config, meta, url, t.file)
    })
}

/// Checks that the answer continues at `p.written` (206), or restarts `p` when the server
/// sends the whole file (200).
fn accept_range(response: &ureq::Response, p: &mut Partial, url: &str) -> std::result::Result<(), Failure> {
    match response.status() {
        206 if content_range_start(response) == Some(p.written) => Ok(()),
        206 => {
            p.reset()?;
            let error = protocol(url, "Content-Range does not match the requested range".into());
            Err(Failure::Retry { error, after: None })
        }
        200 if p.written > 0 => Ok(p.reset()?),
        200 => Ok(()),
        s => Err(Failure::Fatal(protocol(
            url,
            format!("unexpected HTTP status {s} for a download"),
        ))),
    }
}

/// Copies the body into `p`. A read error or a short body is retryable (the data so far
/// is kept); a write error (disk full...) is not.
fn receive(
    mut body: impl Read,
    p: &mut Partial,
    config: &HubConfig,
    meta: &FileMeta,
    url: &str,
    file: &str,
) -> std::result::Result<(), Failure> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body_failure(&e, url, config.read_timeout)),
        };
        p.write(&buf[..n])?;
        config.progress.update(file, p.written, meta.size);
    }
    if p.written < meta.size {
        let message = format!("connection closed after {} of {} bytes", p.written, meta.size);
        let error = HubError::Network {
            url: url.to_string(),
            message,
        };
        return Err(Failure::Retry { error, after: None });
    }
    Ok(())
}

/// `Content-Range: bytes START-END/TOTAL` -> START.
fn content_range_start(r: &ureq::Response) -> Option<u64> {
    let value = r.header("Content-Range")?.trim();
    let range = value.strip_prefix("bytes")?.trim_start();
    range.split('-').next()?.trim().parse().ok()
}

/// A partial download on disk, with the sha256 of what it holds so far.
struct Partial {
    file: File,
    path: PathBuf,
    written: u64,
    hasher: Option<Sha256>,
}

impl Partial {
    /// Opens (or creates) `path`; when hashing, hashes what an earlier run left there.
    fn open(path: &Path, hash: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        let mut p = Self {
            file,
            path: path.to_path_buf(),
            written: 0,
            hasher: hash.then(Sha256::new),
        };
        if let Some(hasher) = &mut p.hasher {
            let mut reader = (&p.file).take(len);
            let copied = io::copy(&mut reader, &mut HashWriter(hasher)).map_err(io_err(path))?;
            if copied != len {
                return Err(HubError::Io {
                    path: path.to_path_buf(),
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
        }
        p.written = len;
        p.file.seek(SeekFrom::Start(len)).map_err(io_err(path))?;
        Ok(p)
    }

    /// Empties the file (the server sent the whole file, or resumed data was bad).
    fn reset(&mut self) -> Result<()> {
        self.file.set_len(0).map_err(io_err(&self.path))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io_err(&self.path))?;
        self.written = 0;
        if self.hasher.is_some() {
            self.hasher = Some(Sha256::new());
        }
        Ok(())
    }

    /// Appends `buf` (a write error such as a full disk is permanent, not retried).
    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.file.write_all(buf).map_err(io_err(&self.path))?;
        if let Some(h) = &mut self.hasher {
            h.update(buf);
        }
        self.written += buf.len() as u64;
        Ok(())
    }

    /// Checks size and sha256 against `meta` and flushes the file to disk.
    fn verify(&mut self, meta: &FileMeta, file: &str) -> Result<()> {
        let integrity = |expected: String, got: String| HubError::Integrity {
            file: file.to_string(),
            expected,
            got,
        };
        if self.written != meta.size {
            return Err(integrity(
                format!("{} bytes", meta.size),
                format!("{} bytes", self.written),
            ));
        }
        if let Some(h) = self.hasher.take() {
            let got = format!("{:x}", h.finalize());
            self.hasher = Some(Sha256::new());
            if !got.eq_ignore_ascii_case(&meta.etag) {
                return Err(integrity(format!("sha256 {}", meta.etag), format!("sha256 {got}")));
            }
        }
        self.file.sync_all().map_err(io_err(&self.path))
    }
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_are_normalised() {
        assert_eq!(normalize_etag("W/\"abc\""), "abc");
        assert_eq!(normalize_etag(" \"abc\" "), "abc");
        assert_eq!(normalize_etag("abc"), "abc");
    }

    #[test]
    fn a_resumed_partial_hashes_its_prefix_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.incomplete");
        let data = b"hello world".to_vec();
        let etag = format!("{:x}", Sha256::digest(&data));
        fs::write(&path, &data[..5]).unwrap();
        let mut p = Partial::open(&path, true).unwrap();
        assert_eq!(p.written, 5);
        p.write(&data[5..]).unwrap();
        let meta = FileMeta {
            commit: "c".into(),
            etag,
            size: data.len() as u64,
        };
        p.verify(&meta, "x").unwrap();
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_wrong_size_or_hash_is_an_integrity_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("y.incomplete");
        let mut p = Partial::open(&path, true).unwrap();
        p.write(b"abc").unwrap();
        let meta = FileMeta {
            commit: "c".into(),
            etag: "0".repeat(64),
            size: 3,
        };
        assert!(matches!(p.verify(&meta, "y"), Err(HubError::Integrity { .. })));
        let meta = FileMeta { size: 4, ..meta };
        assert!(matches!(p.verify(&meta, "y"), Err(HubError::Integrity { .. })));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_names_the_path() {
        let mut p = Partial::open(Path::new("/dev/full"), true).unwrap();
        match p.write(&[0u8; 4096]) {
            Err(HubError::Io { path, source }) => {
                assert_eq!(path, Path::new("/dev/full"));
                assert_eq!(source.raw_os_error(), Some(28), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }
}
