//! The hub downloader against a fake hub on 127.0.0.1: the Hugging Face cache layout,
//! offline use, resume, integrity checks, retries, timeouts, hostile names, concurrency.

mod hub_fake;

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use hub_fake::*;
use llama32::hub::{self, HubConfig, HubError, Notice, Progress, Registry, RetryPolicy};

const LFS_SIZE: usize = 300_000;
const MODEL: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";

const MODELS: &str = r#"
[[model]]
name = "tiny"
repo = "test/tiny"
files = ["config.json", "tokenizer.json", "generation_config.json", "model.safetensors"]
description = "a tiny fake model"

[[model]]
name = "tiny-missing-file"
repo = "test/tiny"
files = ["config.json", "missing.json"]
"#;

fn small_files() -> Vec<FakeFile> {
    vec![
        FakeFile::new("config.json", r#"{"model_type": "llama"}"#, false),
        FakeFile::new("tokenizer.json", r#"{"version": "1.0"}"#, false),
    ]
}

fn tiny() -> FakeRepo {
    let mut files = small_files();
    files.push(FakeFile::new(
        "generation_config.json",
        r#"{"temperature": 0.6}"#,
        false,
    ));
    files.push(FakeFile::new(MODEL, bytes(LFS_SIZE, 1), true));
    let mut repo = FakeRepo::new("test/tiny", 0xc0, files);
    repo.refs.push(("v1".into(), repo.commit.clone()));
    repo
}

fn with_index(id: &str, seed: u8, shards: &[&str]) -> FakeRepo {
    let map: Vec<String> = shards
        .iter()
        .enumerate()
        .map(|(i, s)| format!("\"t{i}\": \"{s}\""))
        .collect();
    let mut files = small_files();
    files.push(FakeFile::new(
        INDEX,
        format!("{{\"weight_map\": {{{}}}}}", map.join(", ")),
        false,
    ));
    for (i, s) in shards.iter().enumerate() {
        files.push(FakeFile::new(s, bytes(50_000, 10 + i as u64), true));
    }
    FakeRepo::new(id, seed, files)
}

fn sharded() -> FakeRepo {
    with_index(
        "test/sharded",
        0x5a,
        &["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
    )
}

struct Env {
    hub: FakeHub,
    cache: tempfile::TempDir,
    registry: Registry,
    progress: Arc<Recorder>,
}

impl Env {
    fn new(repos: Vec<FakeRepo>) -> Self {
        let mut registry = Registry::builtin().unwrap();
        registry.extend_from_toml(MODELS, "test models.toml").unwrap();
        Self {
            hub: FakeHub::start(repos),
            cache: tempfile::tempdir().unwrap(),
            registry,
            progress: Default::default(),
        }
    }

    fn config(&self) -> HubConfig {
        let mut c = HubConfig::new(self.cache.path().join("hub"));
        c.endpoint = self.hub.url();
        c.connect_timeout = Duration::from_secs(2);
        // Generous: tests share 2 cores with builds; the stall tests shorten it.
        c.read_timeout = Duration::from_secs(5);
        c.retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(2),
        };
        c.progress = self.progress.clone();
        c
    }

    fn resolve(&self, spec: &str) -> Result<PathBuf, HubError> {
        hub::resolve(spec, &self.registry, &self.config())
    }

    fn repo_dir(&self, id: &str) -> PathBuf {
        self.cache
            .path()
            .join("hub")
            .join(format!("models--{}", id.replace('/', "--")))
    }

    /// Every file under `snapshots/` of `id`, with `name` in it, must be a verified blob.
    fn snapshot_names(&self, id: &str) -> Vec<String> {
        let snaps = self.repo_dir(id).join("snapshots");
        tree(&snaps)
            .iter()
            .filter(|p| p.components().count() > 1)
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }
}

#[derive(Default)]
struct Recorder {
    notices: Mutex<Vec<Notice>>,
    updates: Mutex<Vec<(String, u64, u64)>>,
    finished: Mutex<Vec<(String, bool)>>,
}

impl Progress for Recorder {
    fn update(&self, file: &str, done: u64, total: u64) {
        self.updates.lock().unwrap().push((file.into(), done, total));
    }
    fn finish(&self, file: &str, ok: bool) {
        self.finished.lock().unwrap().push((file.into(), ok));
    }
    fn notice(&self, notice: &Notice) {
        self.notices.lock().unwrap().push(notice.clone());
    }
}

impl Recorder {
    fn count(&self, pred: impl Fn(&Notice) -> bool) -> usize {
        self.notices.lock().unwrap().iter().filter(|n| pred(n)).count()
    }
}

/// Asserts that `dir` is the complete, verified snapshot of `repo` in the HF layout.
fn assert_snapshot(env: &Env, repo: &FakeRepo, dir: &Path, names: &[&str]) {
    let root = env.repo_dir(&repo.id);
    assert_eq!(dir, root.join("snapshots").join(&repo.commit));
    for name in names {
        let f = repo.file(name);
        let link = dir.join(name);
        assert_eq!(
            fs::read_link(&link).unwrap(),
            Path::new("../../blobs").join(f.etag()),
            "{name}"
        );
        assert_eq!(fs::read(&link).unwrap(), f.data, "{name}");
    }
    let leftovers: Vec<_> = tree(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".incomplete"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn lfs_part(env: &Env, repo: &FakeRepo) -> PathBuf {
    let blobs = env.repo_dir(&repo.id).join("blobs");
    fs::create_dir_all(&blobs).unwrap();
    blobs.join(format!("{}.incomplete", repo.file(MODEL).sha256()))
}

const ALL: [&str; 4] = ["config.json", "tokenizer.json", "generation_config.json", MODEL];

#[test]
fn downloads_into_the_hugging_face_cache_layout() {
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    let dir = env.resolve("tiny").unwrap();
    assert_snapshot(&env, &repo, &dir, &ALL);
    let root = env.repo_dir("test/tiny");
    assert_eq!(fs::read_to_string(root.join("refs/main")).unwrap(), repo.commit);
    let mut blobs: Vec<String> = fs::read_dir(root.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    blobs.sort();
    let mut etags: Vec<String> = repo.files.iter().map(|f| f.etag()).collect();
    etags.sort();
    assert_eq!(blobs, etags, "blobs are named by etag (sha256 for the LFS file)");
    let lock = env
        .cache
        .path()
        .join("hub/.locks/models--test--tiny")
        .join(format!("{}.lock", repo.file(MODEL).sha256()));
    assert!(lock.is_file());
    // HEAD stops at the LFS redirect (X-Linked-* headers), GET follows it to the CDN.
    assert_eq!((env.hub.count("HEAD", "/cdn/"), env.hub.count("GET", "/cdn/")), (0, 1));
    let updates = env.progress.updates.lock().unwrap();
    assert!(updates.contains(&(MODEL.into(), LFS_SIZE as u64, LFS_SIZE as u64)));
    assert!(env.progress.finished.lock().unwrap().contains(&(MODEL.into(), true)));
}

#[test]
fn a_complete_cache_starts_without_any_request_and_download_refreshes() {
    let env = Env::new(vec![tiny()]);
    let dir = env.resolve("tiny").unwrap();
    let (requests, gets) = (env.hub.log().len(), env.hub.count("GET", ""));
    assert_eq!(env.resolve("tiny").unwrap(), dir);
    assert_eq!(env.hub.log().len(), requests, "a cached model needs no request");
    // `download` asks the hub again (HEADs) but fetches no blob it already has.
    assert_eq!(hub::download("tiny", &env.registry, &env.config()).unwrap(), dir);
    assert_eq!(env.hub.count("HEAD", "/resolve/"), 8);
    assert_eq!(env.hub.count("GET", ""), gets);
}

#[test]
fn a_repo_id_fetches_the_shards_named_by_its_index_and_records_absent_files() {
    let env = Env::new(vec![sharded()]);
    let repo = sharded();
    let dir = env.resolve("test/sharded").unwrap();
    let names = [
        "config.json",
        "tokenizer.json",
        INDEX,
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    assert_snapshot(&env, &repo, &dir, &names);
    assert!(!dir.join("generation_config.json").exists());
    let no_exist = env.repo_dir("test/sharded").join(".no_exist").join(&repo.commit);
    assert!(no_exist.join("generation_config.json").is_file() && no_exist.join("tokenizer_config.json").is_file());
    assert_eq!(
        env.hub
            .log()
            .iter()
            .filter(|l| l.path.ends_with("/model.safetensors"))
            .count(),
        0
    );
    let requests = env.hub.log().len();
    assert_eq!(env.resolve("test/sharded").unwrap(), dir);
    assert_eq!(
        env.hub.log().len(),
        requests,
        "absent optional files are known, no request needed"
    );
}

#[test]
fn a_revision_is_resolved_to_a_commit_and_recorded_in_refs() {
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    let dir = env.resolve("test/tiny@v1").unwrap();
    assert_snapshot(&env, &repo, &dir, &["config.json", "tokenizer.json", MODEL]);
    let root = env.repo_dir("test/tiny");
    assert_eq!(fs::read_to_string(root.join("refs/v1")).unwrap(), repo.commit);
    // Every file after the first is asked for at the commit, not at the moving branch.
    assert!(env.hub.log().iter().skip(1).all(|l| !l.path.contains("/resolve/v1/")));
    assert_eq!(env.resolve(&format!("test/tiny@{}", repo.commit)).unwrap(), dir);
    assert!(!root.join("refs").join(&repo.commit).exists());
}

#[test]
fn a_renamed_repo_is_followed_through_its_relative_redirect() {
    let env = Env::new(vec![tiny()]);
    env.hub
        .faults(|f| f.renamed.push(("test/old-name".into(), "test/tiny".into())));
    let dir = env.resolve("test/old-name").unwrap();
    let mut repo = tiny();
    repo.id = "test/old-name".into();
    assert_snapshot(&env, &repo, &dir, &["config.json", "tokenizer.json", MODEL]);
}

#[test]
fn a_cache_laid_out_by_python_is_used_offline_without_a_socket() {
    let env = Env::new(vec![]);
    let repo = tiny();
    let root = env.repo_dir("test/tiny");
    let snap = root.join("snapshots").join(&repo.commit);
    fs::create_dir_all(root.join("blobs")).unwrap();
    fs::create_dir_all(root.join("refs")).unwrap();
    fs::create_dir_all(&snap).unwrap();
    for f in &repo.files {
        fs::write(root.join("blobs").join(f.etag()), &f.data).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/{}", f.etag()), snap.join(&f.name)).unwrap();
    }
    fs::write(root.join("refs/main"), &repo.commit).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut config = env.config();
    config.endpoint = format!("http://{}", listener.local_addr().unwrap());
    config.offline = true;
    assert_eq!(hub::resolve("tiny", &env.registry, &config).unwrap(), snap);
    assert_eq!(hub::resolve("test/tiny", &env.registry, &config).unwrap(), snap);
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn offline_and_not_cached_says_what_is_missing_and_opens_no_socket() {
    let env = Env::new(vec![tiny()]);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut offline = env.config();
    offline.endpoint = format!("http://{}", listener.local_addr().unwrap());
    offline.offline = true;
    match hub::resolve("tiny", &env.registry, &offline) {
        Err(e @ HubError::Offline { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("revision `main`") && msg.contains("llama32 download tiny"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Partly cached: the message lists exactly the missing file.
    let dir = env.resolve("tiny").unwrap();
    fs::remove_file(dir.join(MODEL)).unwrap();
    match hub::resolve("tiny", &env.registry, &offline) {
        Err(HubError::Offline { missing, .. }) => assert_eq!(missing, [MODEL]),
        other => panic!("{other:?}"),
    }
    assert_eq!(listener.accept().unwrap_err().kind(), ErrorKind::WouldBlock);
}

#[test]
fn a_gated_repo_names_the_licence_page_and_hf_token() {
    let mut gated = tiny();
    gated.id = "meta-llama/Gated".into();
    gated.gated = true;
    let env = Env::new(vec![gated.clone()]);
    for (token, status) in [(None, 401), (Some("hf_wrong"), 403)] {
        let mut config = env.config();
        config.token = token.map(str::to_string);
        match hub::resolve("meta-llama/Gated", &env.registry, &config) {
            Err(e @ HubError::AuthRequired { .. }) => {
                let msg = e.to_string();
                let page = format!("{}/meta-llama/Gated", env.hub.url());
                assert!(
                    msg.contains(&page) && msg.contains("HF_TOKEN") && msg.contains(&format!("HTTP {status}")),
                    "{msg}"
                );
                // A token that was sent is said to be refused, not asked for.
                assert_eq!(msg.contains("was refused"), token.is_some(), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(env.snapshot_names("meta-llama/Gated").is_empty());
    let mut config = env.config();
    config.token = Some(GOOD_TOKEN.into());
    // The LFS redirect goes to another origin: the token must not follow it there.
    env.hub.faults(|f| f.cdn_host = Some("localhost".into()));
    let dir = hub::resolve("meta-llama/Gated", &env.registry, &config).unwrap();
    let cdn: Vec<_> = env
        .hub
        .log()
        .into_iter()
        .filter(|l| l.path.starts_with("/cdn/"))
        .collect();
    assert!(cdn.len() == 1 && cdn[0].auth.is_none(), "{cdn:?}");
    assert_snapshot(&env, &gated, &dir, &["config.json", MODEL]);
    let bearer = format!("Bearer {GOOD_TOKEN}");
    let last = env
        .hub
        .log()
        .into_iter()
        .rfind(|l| l.path.contains("/resolve/"))
        .unwrap();
    assert_eq!(last.auth.as_deref(), Some(bearer.as_str()));
}

#[test]
fn unknown_repo_revision_and_file_are_reported_as_such() {
    let env = Env::new(vec![tiny()]);
    match env.resolve("test/nope") {
        Err(e @ HubError::RepoNotFound { .. }) => {
            assert!(e.to_string().contains("HF_TOKEN"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    match env.resolve("test/tiny@nope") {
        Err(HubError::RevisionNotFound { repo, revision }) => {
            assert_eq!((repo.as_str(), revision.as_str()), ("test/tiny", "nope"))
        }
        other => panic!("{other:?}"),
    }
    match env.resolve("tiny-missing-file") {
        Err(HubError::EntryNotFound { file, .. }) => assert_eq!(file, "missing.json"),
        other => panic!("{other:?}"),
    }
    assert!(env.snapshot_names("test/nope").is_empty());
    assert!(!env
        .snapshot_names("test/tiny")
        .iter()
        .any(|n| n.contains("missing.json")));
}

#[test]
fn malformed_names_and_a_broken_models_toml_are_clear_errors() {
    let env = Env::new(vec![]);
    for bad in [
        "owner/",
        "a/b/c",
        "owner/na me",
        "test/tiny@",
        "test/tiny@../../x",
        "./no/such/dir",
    ] {
        assert!(matches!(env.resolve(bad), Err(HubError::InvalidSpec { .. })), "{bad}");
    }
    match env.resolve("llama-9b") {
        Err(e @ HubError::UnknownModel { .. }) => {
            assert!(e.to_string().contains("llama-3.2-1b-instruct"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let user = env.cache.path().join("models.toml");
    fs::write(&user, "[[model]]\nname = \"x\"\nrepo = \"a/b\"\nfiles = [\"ok\", 3]\n").unwrap();
    match Registry::load(Some(&user)) {
        Err(e @ HubError::Registry { line: 4, .. }) => {
            assert!(e.to_string().starts_with(&format!("{}:4:", user.display())), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(env.hub.log().is_empty());
}

#[test]
fn server_errors_are_retried_with_backoff() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.statuses.extend([(500, None), (503, None)]));
    let dir = env.resolve("tiny").unwrap();
    assert_snapshot(&env, &tiny(), &dir, &ALL);
    assert_eq!(env.progress.count(|n| matches!(n, Notice::Retrying { .. })), 2);
    // A server that keeps failing: the error after max_attempts tries carries the status.
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.statuses.extend([(502, None); 5]));
    match env.resolve("tiny") {
        Err(HubError::Http { status: 502, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(env.hub.log().len(), 3);
    assert!(env.snapshot_names("test/tiny").is_empty());
}

#[test]
fn status_429_honours_retry_after() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.statuses.push_back((429, Some(1))));
    let start = Instant::now();
    env.resolve("tiny").unwrap();
    assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
    let waits: Vec<Duration> = env
        .progress
        .notices
        .lock()
        .unwrap()
        .iter()
        .filter_map(|n| match n {
            Notice::Retrying { wait, .. } => Some(*wait),
            _ => None,
        })
        .collect();
    assert_eq!(waits, [Duration::from_secs(1)]);
}

#[test]
fn a_stalled_connection_times_out() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.stall = true);
    let mut config = env.config();
    config.read_timeout = Duration::from_millis(300);
    let start = Instant::now();
    match hub::resolve("tiny", &env.registry, &config) {
        Err(e @ HubError::Timeout { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("no data for 0.3 s"), "{msg}");
            assert!(!msg.contains("partial download"), "nothing was downloaded: {msg}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    // A hub that sends nothing is not asked again: one read timeout is the whole wait.
    assert_eq!(env.hub.log().len(), 1);
    assert!(env.snapshot_names("test/tiny").is_empty());
}

#[test]
fn a_transfer_that_stalls_midway_resumes_with_a_range_request() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.stall_body_once = Some((MODEL.into(), 100_000)));
    let mut config = env.config();
    config.read_timeout = Duration::from_secs(1);
    let dir = hub::resolve("tiny", &env.registry, &config).unwrap();
    assert_snapshot(&env, &tiny(), &dir, &ALL);
    let ranges = env.hub.cdn_ranges();
    assert_eq!(ranges, [None, Some("bytes=100000-".to_string())]);
}

#[test]
fn a_truncated_body_is_resumed_and_verified() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.truncate_once = Some((MODEL.into(), 123_456)));
    let dir = env.resolve("tiny").unwrap();
    assert_snapshot(&env, &tiny(), &dir, &ALL);
    let ranges = env.hub.cdn_ranges();
    assert_eq!(ranges, [None, Some("bytes=123456-".to_string())]);
}

#[test]
fn an_interrupted_download_resumes_from_the_incomplete_file() {
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    fs::write(lfs_part(&env, &repo), &repo.file(MODEL).data[..200_000]).unwrap();
    let dir = env.resolve("tiny").unwrap();
    assert_snapshot(&env, &repo, &dir, &ALL);
    let ranges = env.hub.cdn_ranges();
    assert_eq!(ranges, [Some("bytes=200000-".to_string())]);
    assert_eq!(
        env.progress
            .count(|n| matches!(n, Notice::Resuming { offset: 200_000, .. })),
        1
    );
}

#[test]
fn a_bad_partial_file_is_discarded_and_downloaded_again() {
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    fs::write(lfs_part(&env, &repo), bytes(100_000, 99)).unwrap();
    let dir = env.resolve("tiny").unwrap();
    assert_snapshot(&env, &repo, &dir, &ALL);
    assert_eq!(env.progress.count(|n| matches!(n, Notice::Restarting { .. })), 1);
    assert_eq!(env.hub.count("GET", "/cdn/"), 2);
}

#[test]
fn a_corrupted_byte_is_detected_and_the_file_deleted() {
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    env.hub.faults(|f| f.corrupt = Some(MODEL.into()));
    match env.resolve("tiny") {
        Err(e @ HubError::Integrity { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(MODEL) && msg.contains(&repo.file(MODEL).sha256()) && msg.contains("deleted"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    let sha = repo.file(MODEL).sha256();
    let blobs = env.repo_dir("test/tiny").join("blobs");
    assert!(!blobs.join(&sha).exists() && !lfs_part(&env, &repo).exists());
    assert!(!env.snapshot_names("test/tiny").iter().any(|n| n.ends_with(MODEL)));
    // Once the server is fixed the download succeeds.
    env.hub.faults(|f| f.corrupt = None);
    assert_snapshot(&env, &repo, &env.resolve("tiny").unwrap(), &ALL);
}

#[test]
fn hostile_names_from_the_server_or_an_index_are_refused() {
    let evil = [
        "../../evil.safetensors",
        "/tmp/llama32-evil.safetensors",
        "a/../../../evil.safetensors",
    ];
    let repos: Vec<FakeRepo> = evil
        .iter()
        .enumerate()
        .map(|(i, e)| with_index(&format!("test/hostile{i}"), 0x10 + i as u8, &[e]))
        .collect();
    let env = Env::new(repos);
    for (i, e) in evil.iter().enumerate() {
        match env.resolve(&format!("test/hostile{i}")) {
            Err(HubError::HostileName { name, .. }) => assert_eq!(name, *e),
            other => panic!("{other:?}"),
        }
    }
    assert!(!tree(env.cache.path())
        .iter()
        .any(|p| p.to_string_lossy().contains("evil")));
    assert!(!Path::new("/tmp/llama32-evil.safetensors").exists());
    // An etag that would escape blobs/.
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.etag_override = Some("../../../x".into()));
    assert!(matches!(env.resolve("tiny"), Err(HubError::HostileName { .. })));
    assert!(env.snapshot_names("test/tiny").is_empty());
}

#[cfg(target_os = "linux")]
#[test]
fn a_write_error_mid_download_leaves_nothing_in_snapshots() {
    // A full disk, for real: the partial file is a symlink to /dev/full (ENOSPC on write).
    let env = Env::new(vec![tiny()]);
    let repo = tiny();
    let part = lfs_part(&env, &repo);
    std::os::unix::fs::symlink("/dev/full", &part).unwrap();
    match env.resolve("tiny") {
        Err(HubError::Io { path, source }) => {
            assert_eq!(path, part);
            assert_eq!(source.raw_os_error(), Some(28), "{source}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!env.snapshot_names("test/tiny").iter().any(|n| n.ends_with(MODEL)));
    assert!(!env
        .repo_dir("test/tiny")
        .join("blobs")
        .join(repo.file(MODEL).sha256())
        .exists());
    assert_eq!(env.hub.count("GET", "/cdn/"), 1, "a write error is not retried");
}

#[test]
fn concurrent_downloads_of_the_same_repo_agree() {
    let env = Env::new(vec![tiny()]);
    let barrier = Arc::new(Barrier::new(4));
    let dirs: Vec<PathBuf> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (config, registry, barrier) = (env.config(), env.registry.clone(), barrier.clone());
                s.spawn(move || {
                    barrier.wait();
                    hub::resolve("tiny", &registry, &config).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(dirs.windows(2).all(|w| w[0] == w[1]));
    assert_snapshot(&env, &tiny(), &dirs[0], &ALL);
    assert_eq!(
        env.hub.count("GET", "/cdn/"),
        1,
        "the blob lock lets one thread download, the others reuse"
    );
}

#[test]
fn a_local_directory_passes_through_and_an_unreachable_hub_falls_back_to_a_complete_cache() {
    let env = Env::new(vec![tiny()]);
    let local = env.cache.path().join("my-checkpoint");
    fs::create_dir(&local).unwrap();
    assert_eq!(env.resolve(local.to_str().unwrap()).unwrap(), local);
    assert!(env.hub.log().is_empty());
    let dir = env.resolve("tiny").unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut config = env.config();
    config.endpoint = format!("http://{closed}");
    assert_eq!(hub::download("tiny", &env.registry, &config).unwrap(), dir);
    assert_eq!(env.progress.count(|n| matches!(n, Notice::UsingCache { .. })), 1);
}

#[test]
fn cache_status_reports_completeness_and_size() {
    let env = Env::new(vec![tiny()]);
    let entry = env.registry.get("tiny").unwrap().clone();
    let before = hub::cache_status(&entry, &env.config()).unwrap();
    assert!(!before.is_complete() && before.disk_usage == 0);
    let dir = env.resolve("tiny").unwrap();
    let after = hub::cache_status(&entry, &env.config()).unwrap();
    assert_eq!(after.snapshot, Some(dir));
    assert_eq!(
        after.disk_usage,
        tiny().files.iter().map(|f| f.data.len() as u64).sum::<u64>()
    );
}

#[test]
fn a_body_longer_than_announced_is_cut_off() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.endless = Some(MODEL.into()));
    let start = Instant::now();
    let err = env.resolve("tiny").unwrap_err();
    assert!(err.to_string().contains("more than the"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
    assert!(env.snapshot_names("test/tiny").iter().all(|n| n != MODEL));
}

#[test]
fn a_trickling_server_is_abandoned() {
    let env = Env::new(vec![tiny()]);
    env.hub.faults(|f| f.trickle = Some(MODEL.into()));
    let mut config = env.config();
    config.stall_window = Duration::from_millis(400);
    config.min_bytes_per_window = 1000;
    let start = Instant::now();
    let err = hub::resolve("tiny", &env.registry, &config).unwrap_err();
    assert!(err.to_string().contains("too slow"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(30), "{:?}", start.elapsed());
}

#[test]
fn every_file_is_checked_against_the_etag_it_claims() {
    // A hub that gives every file the same ETag cannot make one file's bytes stand for another's.
    let env = Env::new(vec![tiny()]);
    let etag = tiny().file("config.json").etag();
    env.hub.faults(|f| f.etag_override = Some(etag));
    match env.resolve("tiny") {
        Err(HubError::Integrity { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_gguf_repo_without_a_file_lists_its_gguf_files() {
    let repo = FakeRepo::new(
        "owner/Tiny-GGUF",
        7,
        vec![
            FakeFile::new("README.md", "hi", false),
            FakeFile::new("tiny-Q4_K_M.gguf", bytes(64, 1), true),
            FakeFile::new("tiny-Q8_0.gguf", bytes(64, 2), true),
        ],
    );
    let env = Env::new(vec![repo]);
    match hub::resolve("owner/Tiny-GGUF", &env.registry, &env.config()) {
        Err(e @ HubError::GgufOnly { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("owner/Tiny-GGUF:tiny-Q4_K_M.gguf"), "{msg}");
            assert!(msg.contains("tiny-Q8_0.gguf"), "{msg}");
            assert!(!msg.contains("README"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // A repo with neither config.json nor GGUF files keeps the plain answer.
    let env = Env::new(vec![FakeRepo::new(
        "owner/Empty",
        8,
        vec![FakeFile::new("README.md", "hi", false)],
    )]);
    match hub::resolve("owner/Empty", &env.registry, &env.config()) {
        Err(HubError::EntryNotFound { file, .. }) => assert_eq!(file, "config.json"),
        other => panic!("{other:?}"),
    }
}
