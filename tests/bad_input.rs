//! Broken checkpoints and bad requests: each gives a clear error naming the file, field,
//! tensor or limit, a non-zero exit code from the CLI, and never a panic.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{Device, Tensor};
use common::*;
use llama32::{Engine, Error, LoadOptions};

const SMALL: &str = "tied-bf16-llama3";

fn load(dir: &Path) -> Error {
    match Engine::load(dir, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

/// Runs `llama32 generate` on `dir`; returns (exit code, stderr).
fn cli(dir: &Path, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["generate", "--model"])
        .arg(dir)
        .args(["--prompt", "Hello there", "--max-tokens", "2", "--temperature", "0"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    (out.status.code().unwrap_or(-1), stderr)
}

fn assert_cli_fails(dir: &Path, needle: &str) {
    let (code, stderr) = cli(dir, &[]);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains(needle), "`{needle}` not in: {stderr}");
}

fn rewrite_weights(dir: &Path, edit: impl FnOnce(&mut HashMap<String, Tensor>)) {
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn missing_files_are_named() {
    for (file, what) in [
        ("config.json", "config.json"),
        ("tokenizer.json", "tokenizer.json"),
        ("model.safetensors", "model.safetensors"),
    ] {
        let dir = copy_fixture(SMALL);
        std::fs::remove_file(dir.path().join(file)).unwrap();
        assert!(matches!(load(dir.path()), Error::MissingFile { .. }), "{file}");
        assert_cli_fails(dir.path(), what);
    }
    assert_cli_fails(Path::new("/nonexistent/model"), "/nonexistent/model");
}

#[test]
fn truncated_safetensors_is_refused() {
    let dir = copy_fixture(SMALL);
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(matches!(load(dir.path()), Error::Safetensors { .. }));
    assert_cli_fails(dir.path(), "truncated");
}

#[test]
fn corrupt_safetensors_headers_are_refused() {
    let corruptions: [fn(&mut Vec<u8>); 3] = [
        |b| b[8..24].copy_from_slice(b"garbage!garbage!"),
        |b| b[..8].copy_from_slice(&u64::MAX.to_le_bytes()),
        |b| b.truncate(5),
    ];
    for corrupt in corruptions {
        let dir = copy_fixture(SMALL);
        let path = dir.path().join("model.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        corrupt(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(load(dir.path()), Error::Safetensors { .. }));
        assert_cli_fails(dir.path(), "model.safetensors");
    }
}

#[test]
fn wrong_shape_or_missing_tensor_is_named() {
    let dir = copy_fixture(SMALL);
    let q = "model.layers.1.self_attn.q_proj.weight";
    rewrite_weights(dir.path(), |t| {
        t.insert(
            q.into(),
            Tensor::zeros((3, 32), candle_core::DType::BF16, &Device::Cpu).unwrap(),
        );
    });
    assert!(matches!(load(dir.path()), Error::BadTensor { ref name, .. } if name == q));
    assert_cli_fails(dir.path(), q);

    let dir = copy_fixture(SMALL);
    rewrite_weights(dir.path(), |t| {
        t.remove("model.norm.weight");
    });
    assert!(matches!(load(dir.path()), Error::MissingTensor { ref name, .. } if name == "model.norm.weight"));
    assert_cli_fails(dir.path(), "model.norm.weight");

    let dir = copy_fixture(SMALL);
    rewrite_weights(dir.path(), |t| {
        let w = t["model.norm.weight"].to_dtype(candle_core::DType::U8).unwrap();
        t.insert("model.norm.weight".into(), w);
    });
    assert_cli_fails(dir.path(), "not supported");
}

#[test]
fn untied_config_needs_lm_head() {
    let dir = copy_fixture(SMALL);
    edit_config(dir.path(), |c| c["tie_word_embeddings"] = false.into());
    assert!(matches!(load(dir.path()), Error::MissingTensor { ref name, .. } if name == "lm_head.weight"));
}

#[test]
fn bad_config_values_name_the_field() {
    let cases: [(&str, serde_json::Value, &str); 4] = [
        ("num_attention_heads", 0.into(), "num_attention_heads"),
        ("num_key_value_heads", 3.into(), "num_key_value_heads"),
        (
            "rope_scaling",
            serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            "rope_scaling.rope_type",
        ),
        ("rms_norm_eps", (-1.0).into(), "rms_norm_eps"),
    ];
    for (field, value, named) in cases {
        let dir = copy_fixture(SMALL);
        edit_config(dir.path(), |c| c[field] = value);
        assert!(
            matches!(load(dir.path()), Error::InvalidConfig { field, .. } if field == named),
            "{named}"
        );
        assert_cli_fails(dir.path(), named);
    }
    let dir = copy_fixture(SMALL);
    std::fs::write(dir.path().join("config.json"), "{ not json").unwrap();
    assert!(matches!(load(dir.path()), Error::Json { .. }));
    assert_cli_fails(dir.path(), "config.json");
}

#[test]
fn shard_index_pointing_outside_the_directory_is_refused() {
    let dir = copy_fixture("untied-f16-sharded");
    let path = dir.path().join("model.safetensors.index.json");
    let mut index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    index["weight_map"]["model.norm.weight"] = "../../etc/passwd".into();
    std::fs::write(&path, index.to_string()).unwrap();
    assert!(matches!(load(dir.path()), Error::ShardIndex { .. }));
    assert_cli_fails(dir.path(), "../../etc/passwd");

    index["weight_map"]["model.norm.weight"] = "/etc/passwd".into();
    std::fs::write(&path, index.to_string()).unwrap();
    assert!(matches!(load(dir.path()), Error::ShardIndex { .. }));
}

#[test]
fn prompt_longer_than_the_context_window() {
    let (code, stderr) = cli(&fixture(SMALL), &["--ctx-size", "2"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("context window is 2 tokens"), "{stderr}");
}

#[test]
fn bad_parameters_exit_with_2() {
    for (args, needle) in [
        (&["--dtype", "f8"][..], "dtype"),
        (&["--device", "tpu"][..], "device"),
        (&["--temperature", "-1"][..], "temperature"),
        (&["--max-tokens", "0"][..], "max-tokens"),
        (&["--ctx-size", "0"][..], "ctx-size"),
        (&["--draft-model", "tests/fixtures/tied-f32-mha"][..], "draft-model"),
        (&["--draft-dtype", "q8_0"][..], "draft-dtype"),
        (&["--spec", "ngram", "--spec-n", "0"][..], "spec-n"),
        (&["--logit-bias", "5=1000"][..], "logit-bias"),
    ] {
        let (code, stderr) = cli(&fixture(SMALL), args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}

/// `name` with its first value set to `v`.
fn poison(tensors: &mut HashMap<String, Tensor>, name: &str, v: f32) {
    let t = &tensors[name];
    let dtype = t.dtype();
    let mut data: Vec<f32> = t
        .flatten_all()
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .to_vec1()
        .unwrap();
    data[0] = v;
    let shape = t.shape().clone();
    let new = Tensor::from_vec(data, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    tensors.insert(name.to_string(), new);
}

#[test]
fn nan_weights_are_named_on_the_packed_path_and_nan_activations_are_an_error() {
    // A NaN in a quantized layer: refused at load, naming the tensor (q8_0 would turn it
    // into a plausible number).
    let dir = copy_fixture(SMALL);
    rewrite_weights(dir.path(), |t| {
        poison(t, "model.layers.1.mlp.down_proj.weight", f32::NAN)
    });
    let err = load(dir.path());
    assert!(err.to_string().contains("model.layers.1.mlp.down_proj.weight"), "{err}");
    assert_cli_fails(dir.path(), "NaN or infinite");
    // An infinite norm weight: the activations become non-finite, reported as an error
    // (exit 1) instead of text.
    let dir = copy_fixture(SMALL);
    rewrite_weights(dir.path(), |t| {
        poison(t, "model.layers.0.input_layernorm.weight", f32::INFINITY)
    });
    for dtype in ["q8_0", "q4k", "f32"] {
        let (code, stderr) = cli(dir.path(), &["--dtype", dtype]);
        assert_eq!(code, 1, "{dtype}: {stderr}");
        assert!(stderr.contains("non-finite"), "{dtype}: {stderr}");
    }
}

#[test]
fn hostile_sizes_in_config_are_refused_before_allocating() {
    for (field, value) in [
        ("num_hidden_layers", 1_000_000_000u64),
        ("hidden_size", 1 << 40),
        ("vocab_size", 1 << 40),
        ("max_position_embeddings", 1 << 40),
        ("num_attention_heads", 1 << 20),
    ] {
        let dir = copy_fixture(SMALL);
        edit_config(dir.path(), |v| v[field] = serde_json::json!(value));
        match load(dir.path()) {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other}"),
        }
        assert_cli_fails(dir.path(), field);
    }
}

#[test]
fn eos_ids_outside_the_vocabulary_are_named() {
    let dir = copy_fixture(SMALL);
    std::fs::write(
        dir.path().join("generation_config.json"),
        r#"{"eos_token_id": [128009, 99999999]}"#,
    )
    .unwrap();
    match load(dir.path()) {
        Error::InvalidConfig { field, .. } => assert_eq!(field, "eos_token_id"),
        other => panic!("{other}"),
    }
}

#[test]
fn a_template_that_never_ends_is_an_error() {
    use llama32::chat::{ChatTemplate, Message, RenderOptions};
    let template = ChatTemplate::new(
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}".into(),
        String::new(),
        String::new(),
    );
    let started = std::time::Instant::now();
    let err = template
        .render(&[Message::text("user", "hi")], None, &RenderOptions::default())
        .unwrap_err();
    assert!(matches!(err, Error::Template(_)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn too_many_threads_are_refused() {
    let (code, stderr) = cli(&fixture(SMALL), &["--threads", "10000"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("`threads`: must be from 1 to"), "{stderr}");
}

#[test]
fn other_architectures_are_refused_by_name() {
    for (field, value) in [
        ("model_type", serde_json::json!("mistral")),
        ("architectures", serde_json::json!(["Qwen2ForCausalLM"])),
    ] {
        let dir = copy_fixture(SMALL);
        edit_config(dir.path(), |v| v[field] = value.clone());
        match load(dir.path()) {
            Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
            other => panic!("{field}: {other}"),
        }
    }
}

#[test]
fn a_prompt_that_fills_the_context_is_too_long_for_every_caller() {
    let engine = llama32::Engine::load(&common::fixture(SMALL), &llama32::LoadOptions::default()).unwrap();
    let ids: Vec<u32> = (0..16).map(|i| 100 + i).collect();
    let request = |ctx| llama32::GenerateRequest {
        max_tokens: 4,
        ctx_size: Some(ctx),
        ..Default::default()
    };
    let full = engine.submit(ids.clone(), &request(16), std::time::Instant::now());
    assert!(matches!(
        full,
        Err(llama32::Error::PromptTooLong { tokens: 16, limit: 16 })
    ));
    let room = engine.submit(ids, &request(17), std::time::Instant::now()).unwrap();
    let out = room.wait(|_| std::ops::ControlFlow::Continue(())).unwrap();
    assert_eq!(out.token_ids.len(), 1, "one position left: one token");
}
