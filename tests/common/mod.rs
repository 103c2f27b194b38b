//! Shared helpers for the integration tests: fixture paths and expectations.
#![allow(dead_code)]

pub mod http;
pub mod server;

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The three tiny checkpoints built by `scripts/make_fixtures.py`.
pub const FIXTURES: [&str; 3] = ["tied-bf16-llama3", "untied-f16-sharded", "tied-f32-mha"];

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures_dir().join(name)
}

#[derive(Debug, Deserialize)]
pub struct PromptCase {
    pub name: String,
    pub text: String,
    pub prompt_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub greedy_text: String,
}

#[derive(Debug, Deserialize)]
pub struct Expected {
    pub prompts: Vec<PromptCase>,
}

pub fn expected(name: &str) -> Expected {
    let text = std::fs::read_to_string(fixture(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// HF's f32 logits row at the last prompt position.
pub fn expected_logits(name: &str, prompt: &str) -> Vec<f32> {
    let path = fixture(name).join("expected.safetensors");
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    tensors[&format!("logits.{prompt}")].to_vec1().unwrap()
}

/// max |a - b| / max |b|.
pub fn rel_max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

/// Copies a fixture checkpoint into a fresh temporary directory (to break it in a test).
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The logits of every next token after each of `ids` (one row per token), through a
/// session on `engine`: the forward pass requests use.
#[allow(dead_code)]
pub fn all_logits(engine: &llama32::Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut session = engine.session(ids.len().max(1), None).unwrap();
    session.run(ids, ids.len()).unwrap()
}

/// The logits after the last of `ids`.
#[allow(dead_code)]
pub fn last_logits(engine: &llama32::Engine, ids: &[u32]) -> Vec<f32> {
    let mut session = engine.session(ids.len().max(1), None).unwrap();
    session.run(ids, 1).unwrap().pop().unwrap()
}
