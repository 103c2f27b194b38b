//! Fetching one file: its metadata from a HEAD on `/resolve/` (`X-Repo-Commit`,
//! `X-Linked-Etag`/`ETag`, `X-Linked-Size`/`Content-Length`), then its blob by GET into
//! `blobs/<etag>.incomplete`, resuming with `Range`, under a per-blob lock, and checked
//! (size, and sha256 for LFS files) before it is renamed to `blobs/<etag>`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha1::Sha1;
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
        let response = http.send("HEAD", &url, None, t).map_err(Failure::timeout_is_fatal)?;
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
    check_space(part.parent().unwrap_or(&part), meta, t.file)?;
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

/// Free space margin kept on top of what a download needs.
const SPACE_MARGIN: u64 = 16 << 20;

/// Refuses a download the disk cannot hold (what an earlier run left counts as done).
fn check_space(dir: &Path, meta: &FileMeta, file: &str) -> Result<()> {
    let Ok(available) = fs4::available_space(dir) else {
        return Ok(());
    };
    let have = fs::metadata(dir.join(format!("{}.incomplete", meta.etag))).map_or(0, |m| m.len());
    let needed = meta.size.saturating_sub(have) + SPACE_MARGIN;
    match needed > available {
        true => Err(HubError::DiskFull {
            path: dir.to_path_buf(),
            file: file.to_string(),
            needed,
            available,
        }),
        false => Ok(()),
    }
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
    let check = match (is_sha256(&meta.etag), meta.etag.len() == 40) {
        (true, _) => Check::Sha256,
        (false, true) => Check::GitSha1(meta.size),
        (false, false) => Check::Size,
    };
    let mut p = Partial::open(part, check)?;
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
    let (mut window_start, mut window_bytes) = (Instant::now(), 0u64);
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(body_failure(&e, url, config.read_timeout)),
        };
        // Never more than announced (a body without Content-Length could go on forever).
        if p.written + n as u64 > meta.size {
            let message = format!("the server sent more than the {} bytes it announced", meta.size);
            return Err(Failure::Fatal(protocol(url, message)));
        }
        p.write(&buf[..n])?;
        config.progress.update(file, p.written, meta.size);
        window_bytes += n as u64;
        if window_start.elapsed() >= config.stall_window {
            if window_bytes < config.min_bytes_per_window && p.written < meta.size {
                let message = format!(
                    "too slow: {window_bytes} bytes in {:.1} s (at least {} needed)",
                    window_start.elapsed().as_secs_f64(),
                    config.min_bytes_per_window
                );
                let error = HubError::Network {
                    url: url.to_string(),
                    message,
                };
                return Err(Failure::Retry { error, after: None });
            }
            (window_start, window_bytes) = (Instant::now(), 0);
        }
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

/// How a download is checked beyond its size.
#[derive(Clone, Copy)]
enum Check {
    /// The ETag is the sha256 (LFS files).
    Sha256,
    /// The ETag is git's blob hash: sha1 of `blob <size>\0` and the bytes (small files).
    GitSha1(u64),
    /// Size only (an ETag of another form).
    Size,
}

/// A running hash of the bytes written.
enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    fn new(check: Check) -> Option<Self> {
        match check {
            Check::Sha256 => Some(Hasher::Sha256(Sha256::new())),
            Check::GitSha1(size) => {
                let mut h = Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Some(Hasher::GitSha1(h))
            }
            Check::Size => None,
        }
    }

    fn update(&mut self, buf: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(buf),
            Hasher::GitSha1(h) => h.update(buf),
        }
    }

    /// (kind, hex digest).
    fn finish(self) -> (&'static str, String) {
        match self {
            Hasher::Sha256(h) => ("sha256", format!("{:x}", h.finalize())),
            Hasher::GitSha1(h) => ("git sha1", format!("{:x}", h.finalize())),
        }
    }
}

/// A partial download on disk, with the hash of what it holds so far.
struct Partial {
    file: File,
    path: PathBuf,
    written: u64,
    check: Check,
    hasher: Option<Hasher>,
}

impl Partial {
    /// Opens (or creates) `path`; when hashing, hashes what an earlier run left there.
    fn open(path: &Path, check: Check) -> Result<Self> {
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
            check,
            hasher: Hasher::new(check),
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
        self.hasher = Hasher::new(self.check);
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
            let (kind, got) = h.finish();
            self.hasher = Hasher::new(self.check);
            if !got.eq_ignore_ascii_case(&meta.etag) {
                return Err(integrity(format!("{kind} {}", meta.etag), format!("{kind} {got}")));
            }
        }
        self.file.sync_all().map_err(io_err(&self.path))
    }
}

struct HashWriter<'a>(&'a mut Hasher);

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
        let mut p = Partial::open(&path, Check::Sha256).unwrap();
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
        let mut p = Partial::open(&path, Check::Sha256).unwrap();
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

    #[test]
    fn a_download_the_disk_cannot_hold_is_refused_before_it_starts() {
        let dir = tempfile::tempdir().unwrap();
        let meta = FileMeta {
            commit: "c".into(),
            etag: "0".repeat(64),
            size: 1 << 60,
        };
        match check_space(dir.path(), &meta, "model.safetensors") {
            Err(e @ HubError::DiskFull { .. }) => assert!(e.to_string().contains("model.safetensors needs"), "{e}"),
            other => panic!("{other:?}"),
        }
        let small = FileMeta { size: 10, ..meta };
        check_space(dir.path(), &small, "config.json").unwrap();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_write_error_names_the_path() {
        let mut p = Partial::open(Path::new("/dev/full"), Check::Sha256).unwrap();
        match p.write(&[0u8; 4096]) {
            Err(HubError::Io { path, source }) => {
                assert_eq!(path, Path::new("/dev/full"));
                assert_eq!(source.raw_os_error(), Some(28), "{source}");
            }
            other => panic!("{other:?}"),
        }
    }
}
