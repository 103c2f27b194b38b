//! `llama32 download`, `llama32 list` and `--model ALIAS` against a fake hub on 127.0.0.1,
//! with the Hugging Face environment variables set per test (never the real ~/.cache).

mod hub_fake;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use hub_fake::*;
use serde_json::Value;

const MODELS: &str = r#"
[[model]]
name = "tiny"
repo = "test/tiny"
files = ["config.json", "model.safetensors"]
description = "a tiny fake model"

[[model]]
name = "fixture"
repo = "test/fixture"
files = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]

[[model]]
name = "gated"
repo = "meta-llama/Gated"
files = ["config.json"]
"#;

struct Env {
    hub: FakeHub,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let tiny = FakeRepo::new(
            "test/tiny",
            0x77,
            vec![
                FakeFile::new("config.json", "{}", false),
                FakeFile::new("model.safetensors", bytes(200_000, 3), true),
            ],
        );
        let fixture_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-f32-mha");
        let files = [
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ]
        .iter()
        .map(|f| FakeFile::new(f, fs::read(fixture_dir.join(f)).unwrap(), f.ends_with(".safetensors")))
        .collect();
        let fixture = FakeRepo::new("test/fixture", 0x42, files);
        let mut gated = FakeRepo::new(
            "meta-llama/Gated",
            0x33,
            vec![FakeFile::new("config.json", "{}", false)],
        );
        gated.gated = true;
        let gguf = FakeRepo::new(
            "test/tiny-GGUF",
            0x55,
            vec![
                FakeFile::new("tiny-Q8_0.gguf", bytes(100_000, 5), true),
                FakeFile::new("tiny-Q4_K_M.gguf", bytes(60_000, 6), true),
            ],
        );
        let env = Self {
            hub: FakeHub::start(vec![tiny, fixture, gated, gguf]),
            home: tempfile::tempdir().unwrap(),
        };
        fs::write(env.models_toml(), MODELS).unwrap();
        env
    }

    fn models_toml(&self) -> PathBuf {
        self.home.path().join("models.toml")
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hf-cache")
    }

    /// The binary with a clean Hugging Face environment pointing at the fake hub.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_llama32"));
        c.args(args);
        for v in [
            "HF_HOME",
            "HF_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_OFFLINE",
            "XDG_CACHE_HOME",
            "XDG_CONFIG_HOME",
        ] {
            c.env_remove(v);
        }
        c.env("HOME", self.home.path())
            .env("HF_ENDPOINT", self.hub.url())
            .env("HF_HUB_CACHE", self.cache())
            .env("LLAMA32_MODELS", self.models_toml());
        c
    }

    fn ok(&self, c: &mut Command) -> String {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fail(&self, c: &mut Command) -> Output {
        let out = c.output().unwrap();
        assert!(!out.status.success(), "{c:?} succeeded");
        out
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn list_json(env: &Env) -> Vec<Value> {
    let text = env.ok(&mut env.cmd(&["list", "--json"]));
    serde_json::from_str::<Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn entry<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter().find(|v| v["name"] == name).unwrap()
}

#[test]
fn download_then_list_shows_the_model_cached() {
    let env = Env::new();
    let before = list_json(&env);
    assert!(before.len() >= 7, "built-in models plus the user's");
    assert_eq!(
        entry(&before, "llama-3.2-1b-instruct")["repo"],
        "meta-llama/Llama-3.2-1B-Instruct"
    );
    assert_eq!(entry(&before, "tiny")["cached"], false);
    let out = env.ok(&mut env.cmd(&["download", "tiny"]));
    let dir = PathBuf::from(out.trim());
    assert!(
        dir.starts_with(env.cache().join("models--test--tiny/snapshots")),
        "{}",
        dir.display()
    );
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), bytes(200_000, 3));
    let after = list_json(&env);
    assert_eq!(entry(&after, "tiny")["cached"], true);
    assert_eq!(entry(&after, "tiny")["size_bytes"], 200_002);
    let table = env.ok(&mut env.cmd(&["list"]));
    let row = table.lines().find(|l| l.starts_with("tiny ")).unwrap();
    assert!(
        row.contains("yes") && row.contains("200.0 kB") && row.contains("a tiny fake model"),
        "{row}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("llama-3.2-3b ") && l.contains(" no ")),
        "{table}"
    );
}

#[test]
fn repo_colon_file_downloads_only_that_gguf_file() {
    let env = Env::new();
    let out = env.ok(&mut env.cmd(&["download", "test/tiny-GGUF:tiny-Q8_0.gguf"]));
    let dir = PathBuf::from(out.trim());
    assert_eq!(fs::read(dir.join("tiny-Q8_0.gguf")).unwrap(), bytes(100_000, 5));
    assert!(!dir.join("tiny-Q4_K_M.gguf").exists());
    assert_eq!(env.hub.count("GET", "Q4_K_M"), 0);
}

#[test]
fn generate_by_alias_downloads_once_then_runs_offline() {
    let env = Env::new();
    let args = [
        "generate",
        "--model",
        "fixture",
        "--prompt",
        "Hello",
        "--max-tokens",
        "3",
        "--temperature",
        "0",
        "--json",
    ];
    let first: Value = serde_json::from_str(&env.ok(&mut env.cmd(&args))).unwrap();
    let requests = env.hub.log().len();
    assert!(requests > 0);
    // Offline, the hub unreachable: the cache is enough and gives the same tokens.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut offline = env.cmd(&args);
    offline
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_ENDPOINT", format!("http://{closed}"));
    let second: Value = serde_json::from_str(&env.ok(&mut offline)).unwrap();
    assert_eq!(first["token_ids"], second["token_ids"]);
    let tokens = env.ok(&mut env.cmd(&["tokenize", "--model", "fixture", "--prompt", "Hello", "--json"]));
    assert!(tokens.contains("\"ids\""));
    assert_eq!(env.hub.log().len(), requests, "later runs need no request");
}

#[test]
fn a_gated_repo_fails_naming_hf_token_and_works_with_the_token_file() {
    let env = Env::new();
    let out = env.fail(&mut env.cmd(&["download", "gated"]));
    let msg = stderr(&out);
    assert!(
        msg.contains("HF_TOKEN") && msg.contains(&format!("{}/meta-llama/Gated", env.hub.url())),
        "{msg}"
    );
    assert_eq!(out.status.code(), Some(1));
    // HF_HOME/token, with the cache under HF_HOME/hub when HF_HUB_CACHE is unset.
    let hf_home = env.home.path().join("hf-home");
    fs::create_dir_all(&hf_home).unwrap();
    fs::write(hf_home.join("token"), format!("{GOOD_TOKEN}\n")).unwrap();
    let mut c = env.cmd(&["download", "gated"]);
    c.env_remove("HF_HUB_CACHE").env("HF_HOME", &hf_home);
    let dir = env.ok(&mut c);
    assert!(
        dir.trim()
            .starts_with(hf_home.join("hub/models--meta-llama--Gated").to_str().unwrap()),
        "{dir}"
    );
    // HF_TOKEN wins over the file.
    let mut c = env.cmd(&["download", "gated"]);
    c.env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &hf_home)
        .env("HF_TOKEN", "hf_wrong");
    assert!(stderr(&env.fail(&mut c)).contains("HTTP 403"));
}

#[test]
fn offline_and_not_cached_fails_with_a_hint() {
    let env = Env::new();
    let mut c = env.cmd(&["generate", "--model", "tiny", "--prompt", "x"]);
    c.env("HF_HUB_OFFLINE", "1");
    let msg = stderr(&env.fail(&mut c));
    assert!(
        msg.contains("offline") && msg.contains("llama32 download tiny"),
        "{msg}"
    );
    assert!(env.hub.log().is_empty());
}

#[test]
fn bad_model_names_and_a_broken_models_toml_are_reported() {
    let env = Env::new();
    let msg = stderr(&env.fail(&mut env.cmd(&["download", "no-such-model"])));
    assert!(
        msg.contains("unknown model `no-such-model`") && msg.contains("llama-3.2-1b-instruct"),
        "{msg}"
    );
    let msg = stderr(&env.fail(&mut env.cmd(&["download", "owner/bad name"])));
    assert!(msg.contains("invalid model"), "{msg}");
    // What can only be a local path fails as one, before any network.
    for local in ["./my-model", "models/llama/3b", "model.gguf", "tests/no-such-model"] {
        let msg = stderr(&env.fail(&mut env.cmd(&["generate", "--model", local, "-p", "hi"])));
        assert!(msg.contains("no such local file or folder"), "{local}: {msg}");
    }
    fs::write(
        env.models_toml(),
        "[[model]]\nname = \"x\"\nrepo = \"a/b\"\nbogus = 1\n",
    )
    .unwrap();
    let msg = stderr(&env.fail(&mut env.cmd(&["list"])));
    assert!(msg.contains(&format!("{}:4:", env.models_toml().display())), "{msg}");
    assert!(env.hub.log().is_empty());
}

#[test]
fn two_processes_downloading_at_once_agree() {
    let env = Env::new();
    let children: Vec<_> = (0..2)
        .map(|_| env.cmd(&["download", "tiny"]).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    assert!(outs.iter().all(|o| o.status.success()), "{outs:?}");
    assert_eq!(outs[0].stdout, outs[1].stdout);
    let dir = PathBuf::from(String::from_utf8_lossy(&outs[0].stdout).trim());
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), bytes(200_000, 3));
    assert_eq!(
        env.hub.count("GET", "/cdn/"),
        1,
        "the blob lock lets one process download"
    );
}

#[test]
fn a_killed_download_resumes_in_the_next_run() {
    let env = Env::new();
    env.hub
        .faults(|f| f.stall_body_once = Some(("model.safetensors".into(), 120_000)));
    let mut child = env
        .cmd(&["download", "tiny"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let blobs = env.cache().join("models--test--tiny/blobs");
    let start = Instant::now();
    let partial_len = || {
        let entries = fs::read_dir(&blobs).ok()?;
        let part = entries
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))?;
        Some(part.metadata().ok()?.len())
    };
    while partial_len() != Some(120_000) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the partial file never reached 120000 bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let dir = PathBuf::from(env.ok(&mut env.cmd(&["download", "tiny"])).trim());
    assert_eq!(fs::read(dir.join("model.safetensors")).unwrap(), bytes(200_000, 3));
    let ranges = env.hub.cdn_ranges();
    assert_eq!(ranges, [None, Some("bytes=120000-".to_string())]);
}
