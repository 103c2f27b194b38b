//! The `llama32` binary end to end on the fixture checkpoints.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_llama32")).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn generate_json(model: &str, prompt: &str, extra: &[&str]) -> Value {
    let mut args = vec!["generate", "--model", model, "--prompt", prompt, "--json"];
    args.extend(extra);
    serde_json::from_slice(&run(&args).stdout).unwrap()
}

#[test]
fn generate_json_has_the_documented_fields_and_greedy_tokens() {
    let name = "untied-f16-sharded";
    let case = &expected(name).prompts[0];
    let dir = fixture(name);
    let v = generate_json(
        dir.to_str().unwrap(),
        &case.text,
        &["--max-tokens", "24", "--temperature", "0", "--dtype", "f32"],
    );
    let ids: Vec<u32> = serde_json::from_value(v["token_ids"].clone()).unwrap();
    assert_eq!(ids, case.greedy_ids);
    assert_eq!(v["prompt_tokens"], case.prompt_ids.len());
    assert_eq!(v["completion_tokens"], 24);
    assert_eq!(v["finish_reason"], "length");
    assert!(v["text"].is_string());
    for key in ["load_ms", "ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
    }
}

#[test]
fn streamed_text_matches_json_text_and_stats_go_to_stderr() {
    let dir = fixture("tied-f32-mha");
    let model = dir.to_str().unwrap();
    let args = ["--max-tokens", "16", "--temperature", "0"];
    let json = generate_json(model, "Once upon a time", &args);
    let mut plain = vec!["generate", "--model", model, "--prompt", "Once upon a time"];
    plain.extend(args);
    let out = run(&plain);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.strip_suffix('\n').unwrap(), json["text"].as_str().unwrap());
    let stderr = String::from_utf8(out.stderr).unwrap();
    for needle in ["prompt tokens: ", "load: ", "ttft: ", "prefill: ", "decode: "] {
        assert!(stderr.contains(needle), "{needle} missing from {stderr}");
    }
    // The load spinner draws only on a terminal: a piped stderr stays clean for logs.
    assert!(!stderr.contains("loading") && !stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn seeded_sampling_repeats() {
    let dir = fixture("tied-bf16-llama3");
    let model = dir.to_str().unwrap();
    let args = ["--max-tokens", "12", "--temperature", "0.8", "--seed", "42"];
    let a = generate_json(model, "Hello", &args);
    let b = generate_json(model, "Hello", &args);
    assert_eq!(a["token_ids"], b["token_ids"]);
    assert_eq!(a["seed"], 42);
}

#[derive(serde::Deserialize)]
struct TokenCase {
    text: String,
    ids: Vec<u32>,
}

#[test]
fn tokenize_matches_hf_tokenizer() {
    let cases: Vec<TokenCase> =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("tokenizer_cases.json")).unwrap()).unwrap();
    let dir = fixture("tied-f32-mha");
    for case in cases {
        let out = run(&[
            "tokenize",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            &case.text,
            "--json",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let ids: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
        assert_eq!(ids, case.ids, "{:?}", case.text);
        assert_eq!(
            ids.iter().filter(|&&i| i == 128000).count(),
            1 + case.text.matches("<|begin_of_text|>").count()
        );
    }
}

#[test]
fn closed_stdout_is_not_an_error() {
    use std::process::Stdio;
    let dir = fixture("tied-f32-mha");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args([
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "Hi",
            "--max-tokens",
            "64",
            "--temperature",
            "0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
}

#[test]
fn stop_strings_cut_the_text_also_when_streamed() {
    let dir = fixture("tied-f32-mha");
    let model = dir.to_str().unwrap();
    let base = ["--max-tokens", "24", "--temperature", "0", "--dtype", "f32"];
    let full = generate_json(model, "Once upon a time", &base);
    let text = full["text"].as_str().unwrap().to_string();
    // A stop string taken from the middle of the text, spanning several tokens.
    let chars: Vec<char> = text.chars().collect();
    let stop: String = chars[chars.len() / 3..chars.len() / 3 + 6].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let mut args = base.to_vec();
    args.extend(["--stop", &stop, "--stop", "never-appears-xyz"]);
    let stopped = generate_json(model, "Once upon a time", &args);
    assert_eq!(stopped["text"], cut);
    assert_eq!(stopped["finish_reason"], "stop");
    let mut plain = vec!["generate", "--model", model, "--prompt", "Once upon a time"];
    plain.extend(&args);
    let out = run(&plain);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{cut}\n"));
}

#[test]
fn sampling_flags_are_validated_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("bad.json");
    std::fs::write(&schema, r#"{"type": "nonsense"}"#).unwrap();
    let schema = schema.to_str().unwrap();
    for (args, name) in [
        (&["--top-p", "0"][..], "--top-p"),
        (&["--top-p", "1.5"][..], "--top-p"),
        (&["--top-k", "-1"][..], "--top-k"),
        (&["--min-p", "2"][..], "--min-p"),
        (&["--repetition-penalty", "0"][..], "--repetition-penalty"),
        (&["--frequency-penalty", "3"][..], "--frequency-penalty"),
        (&["--presence-penalty", "-2.5"][..], "--presence-penalty"),
        (&["--temperature", "nan"][..], "--temperature"),
        (&["--logit-bias", "12=abc"][..], "--logit-bias"),
        (&["--logit-bias", "999999999=-100"][..], "--logit-bias"),
        (&["--stop", ""][..], "--stop"),
        (&["--logprobs", "50", "--json"][..], "--logprobs"),
        (&["--dtype", "q9"][..], "--dtype"),
        // Grammars are compiled before the model loads, errors naming the flag.
        (&["--regex", "("][..], "--regex"),
        (&["--json-schema", schema][..], "--json-schema"),
        // A file named by a flag that is not there is a bad parameter too (exit 2).
        (&["--json-schema", "/no/such/schema.json"][..], "--json-schema"),
        (&["--grammar", "/no/such/grammar.lark"][..], "--grammar"),
    ] {
        let mut all = vec!["generate", "--model", "tests/fixtures/tied-f32-mha", "--prompt", "Hi"];
        all.extend(args);
        let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(&all)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(name), "{args:?}: {stderr}");
    }
}

#[test]
fn banned_tokens_never_appear_and_seeds_differ() {
    let dir = fixture("tied-bf16-llama3");
    let model = dir.to_str().unwrap();
    let greedy = generate_json(model, "Hello", &["--max-tokens", "8", "--temperature", "0"]);
    let first = greedy["token_ids"][0].as_u64().unwrap().to_string();
    let ban = format!("{first}=-100");
    let banned = generate_json(
        model,
        "Hello",
        &["--max-tokens", "8", "--temperature", "0", "--logit-bias", &ban],
    );
    assert_ne!(banned["token_ids"][0], greedy["token_ids"][0]);
    let a = generate_json(
        model,
        "Hello",
        &["--max-tokens", "16", "--temperature", "1.5", "--seed", "1"],
    );
    let b = generate_json(
        model,
        "Hello",
        &["--max-tokens", "16", "--temperature", "1.5", "--seed", "2"],
    );
    assert_ne!(a["token_ids"], b["token_ids"]);
    let unseeded = generate_json(model, "Hello", &["--max-tokens", "4"]);
    let seed = unseeded["seed"].as_u64().unwrap().to_string();
    let replay = generate_json(model, "Hello", &["--max-tokens", "4", "--seed", &seed]);
    assert_eq!(replay["token_ids"], unseeded["token_ids"]);
}

#[test]
fn bench_measures_speculation_and_batches() {
    let dir = fixture("tied-bf16-llama3");
    let model = dir.to_str().unwrap();
    // n-gram and draft (the model drafting for itself) speculation (the paged CPU backend
    // speculates; the candle one decodes plainly).
    for extra in [&["--spec", "ngram"][..], &["--spec", "draft", "--draft-model", model]] {
        let mut args = vec![
            "bench", "-m", model, "--dtypes", "q8_0", "-n", "12", "-r", "1", "--json",
        ];
        args.extend(extra);
        let v: Value = serde_json::from_slice(&run(&args).stdout).unwrap();
        let rows = v["speculation"].as_array().unwrap();
        assert_eq!(rows.len(), 4, "{v}");
        for r in rows {
            assert_eq!(r["row"]["identical"], true, "{r}");
            if extra[1] == "draft" {
                let (drafted, accepted) = (r["row"]["drafted"].as_u64(), r["row"]["accepted"].as_u64());
                assert!(drafted > Some(0) && accepted > Some(0) && accepted <= drafted, "{r}");
            }
        }
    }
    let args = [
        "bench",
        "-m",
        model,
        "--dtypes",
        "q8_0",
        "--batched",
        "1,3",
        "-p",
        "8",
        "-n",
        "4",
        "--json",
    ];
    let v: Value = serde_json::from_slice(&run(&args).stdout).unwrap();
    let rows = v["batched"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[1]["row"]["batch"], 3);
    assert!(rows[1]["row"]["s_tg"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn synthetic_refuses_a_folder_that_is_not_empty() {
    // A model folder, as a user might point --out at by mistake: nothing is touched.
    let dir = copy_fixture("tied-f32-mha");
    let before = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["synthetic", "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not empty") && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("model.safetensors")).unwrap(), before);
}

#[test]
fn synthetic_force_refuses_files_it_would_not_replace() {
    // A sharded checkpoint's index and shards would mix with the new model: refused, and
    // nothing is touched.
    let dir = copy_fixture("untied-f16-sharded");
    let config = std::fs::read(dir.path().join("config.json")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["synthetic", "--force", "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("does not replace") && stderr.contains("model.safetensors.index.json"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(dir.path().join("config.json")).unwrap(), config);
}

#[test]
fn seed_minus_one_means_random_and_other_negatives_are_refused() {
    let a = generate_json(
        "tests/fixtures/tied-f32-mha",
        "Hi",
        &["--seed", "-1", "--temperature", "1"],
    );
    let b = generate_json(
        "tests/fixtures/tied-f32-mha",
        "Hi",
        &["--seed", "-1", "--temperature", "1"],
    );
    assert_ne!(a["seed"], b["seed"], "a random seed each run, reported");
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "generate",
            "--model",
            "tests/fixtures/tied-f32-mha",
            "--prompt",
            "Hi",
            "--seed",
            "-5",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("-1 for a random one"), "{stderr}");
}

#[test]
fn perplexity_reads_only_what_it_scores_and_refuses_non_text() {
    let model = fixture("tied-bf16-llama3");
    let model = model.to_str().unwrap();
    let fail = |file: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
            .args(["perplexity", "--model", model, "--file", file, "--ctx", "16"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    // An endless file of NUL bytes is refused at its first byte, not read to the end.
    assert!(fail("/dev/zero").contains("not text: a NUL byte at byte 0"));
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait\n").unwrap();
    assert!(fail(latin1.to_str().unwrap()).contains("not UTF-8 text (at byte 3)"));
    // 3 MB of text, two windows asked: only the first piece is tokenized.
    let big = dir.path().join("big.txt");
    std::fs::write(&big, "the river wound slowly through the valley\n".repeat(75_000)).unwrap();
    let out = run(&[
        "perplexity",
        "--model",
        model,
        "--file",
        big.to_str().unwrap(),
        "--ctx",
        "16",
        "--chunks",
        "2",
        "--json",
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["windows"], 2);
}

#[test]
fn a_broken_file_is_named_once_with_exit_code_1() {
    let dir = copy_fixture("tied-bf16-llama3");
    std::fs::write(dir.path().join("generation_config.json"), r#"{"temperature": "hot"}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args([
            "generate",
            "--model",
            dir.path().to_str().unwrap(),
            "--prompt",
            "hi",
            "-n",
            "2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("generation_config.json: invalid type"), "{stderr}");
    assert_eq!(stderr.matches("invalid type").count(), 1, "said twice: {stderr}");
}

#[test]
fn newcomer_messages_say_what_to_do() {
    let model = fixture("tied-bf16-llama3");
    let model = model.to_str().unwrap();
    // --json logprobs carry the token text; the stats line says `length` as --json does.
    let v = generate_json(model, "Hi", &["-n", "2", "--logprobs", "1"]);
    assert!(v["logprobs"][0]["token"].is_string() && v["logprobs"][0]["top"][0]["token"].is_string());
    let out = run(&["generate", "--model", model, "-p", "Hi", "-n", "2", "--logprobs", "1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--logprobs has no effect without --json"), "{stderr}");
    assert!(stderr.contains("(length)"), "{stderr}");
    // A busy port names --port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["serve", "--model", model, "--port", &port])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--port"), "{stderr}");
}
