//! Llama 3.2's whole context: a server for 128k tokens starts with the KV memory that
//! context needs (1B's KV shape: 16 layers, 8 KV heads of 64), says so, and refuses a pool
//! one MiB short, naming what to raise.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use serde_json::json;

use common::http::{body_of, get, post, status_line};
use common::server::start_model;

/// Llama 3.2's context window.
const CONTEXT: usize = 131_072;

/// A checkpoint with the 1B's attention shape (and so its KV bytes per position: 16 layers,
/// 32 query and 8 KV heads of 64) but a hidden width of 64, so it is ~30 MB, written into
/// `dir` with the fixtures' tokenizer.
fn kv_shape_of_1b(dir: &Path) {
    for file in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(common::fixture("tied-bf16-llama3").join(file), dir.join(file)).unwrap();
    }
    let (hidden, layers, heads, kv_heads, head_dim, ffn, vocab) = (64, 16, 32, 8, 64, 64, 128_256);
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("tied-bf16-llama3").join("config.json")).unwrap(),
    )
    .unwrap();
    for (key, value) in [
        ("hidden_size", hidden),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("num_key_value_heads", kv_heads),
        ("head_dim", head_dim),
        ("intermediate_size", ffn),
        ("vocab_size", vocab),
        ("max_position_embeddings", CONTEXT),
    ] {
        config[key] = json!(value);
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let random = |shape: (usize, usize)| {
        Tensor::randn(0f32, 0.02, shape, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    let ones = || Tensor::ones(hidden, DType::BF16, &Device::Cpu).unwrap();
    let mut tensors = HashMap::from([
        ("model.embed_tokens.weight".to_string(), random((vocab, hidden))),
        ("model.norm.weight".to_string(), ones()),
    ]);
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", (heads * head_dim, hidden)),
            ("self_attn.k_proj", (kv_heads * head_dim, hidden)),
            ("self_attn.v_proj", (kv_heads * head_dim, hidden)),
            ("self_attn.o_proj", (hidden, heads * head_dim)),
            ("mlp.gate_proj", (ffn, hidden)),
            ("mlp.up_proj", (ffn, hidden)),
            ("mlp.down_proj", (hidden, ffn)),
        ] {
            tensors.insert(format!("{p}.{name}.weight"), random(shape));
        }
        tensors.insert(format!("{p}.input_layernorm.weight"), ones());
        tensors.insert(format!("{p}.post_attention_layernorm.weight"), ones());
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

/// Resident memory of process `pid` in bytes, from `/proc` (`None` off Linux).
fn resident_bytes(pid: u32) -> Option<usize> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    Some(kb.trim().trim_end_matches("kB").trim().parse::<usize>().ok()? * 1024)
}

/// With q8_0 KV the 1B's 128k positions take 2176 MiB (16 layers x 2 x 512 values x 34/32
/// bytes each); with 4-bit values 1664 MiB (16 layers x 512 x (34 + 18) / 32 bytes); with
/// f16 4096 MiB. Every pool is committed as positions are written, so the server starts
/// small, and a request runs.
#[test]
fn a_128k_context_server_starts_with_the_kv_memory_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    kv_shape_of_1b(dir.path());
    for (kv_dtype, mib) in [("q8_0", 2176), ("q8_0-q4_0", 1664), ("f16", 4096)] {
        let mib_arg = mib.to_string();
        let ctx_arg = CONTEXT.to_string();
        let args = [
            "--kv-dtype",
            kv_dtype,
            "--kv-memory",
            &mib_arg,
            "--ctx-size",
            &ctx_arg,
            "--parallel",
            "1",
        ];
        let server = start_model(dir.path(), &args);
        let models = get(&server.addr, "/v1/models", "");
        assert!(
            body_of(&models).contains(&format!("\"max_model_len\":{CONTEXT}")),
            "{models}"
        );
        let done = post(
            &server.addr,
            "/v1/completions",
            &json!({"prompt": "Hello", "max_tokens": 4}),
        );
        assert_eq!(status_line(&done), "HTTP/1.1 200 OK", "{done}");
        if let Some(rss) = resident_bytes(server.child.id()) {
            assert!(rss < (1 << 30), "{kv_dtype}: {} MiB resident", rss >> 20);
        }
        let announced = format!("[context {CONTEXT} tokens | KV pool {CONTEXT} positions, {mib} MiB in {kv_dtype}]");
        let startup = &server.startup;
        assert!(startup.contains(&announced), "{announced} not in {startup:?}");
    }
}

/// One MiB short of the pool a 128k context needs, the server does not start: the error
/// names `ctx-size` and says to raise the KV memory.
#[test]
fn a_pool_one_mib_short_of_the_context_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    kv_shape_of_1b(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args(["serve", "--model", dir.path().to_str().unwrap(), "--port", "0"])
        .args(["--kv-dtype", "q8_0", "--kv-memory", "2175", "--parallel", "1"])
        .args(["--ctx-size", &CONTEXT.to_string()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("ctx-size") && stderr.contains("raise the KV memory"),
        "{stderr}"
    );
}
