//! `cargo bench --bench generate`: llama-bench-style speed figures (see `llama32::bench`).
//!
//! Model: `LLAMA32_BENCH_MODEL` (a checkpoint directory) or, by default, a synthetic
//! checkpoint with the exact Llama-3.2-1B shape (`LLAMA32_BENCH_3B=1` for 3B) written once
//! under `target/llama32-bench/`. For each dtype (`LLAMA32_BENCH_DTYPES`, default
//! `q8_0,q4k,f32`): load time, prefill of 512 tokens (pp512), decode of 128 tokens (tg128),
//! time to first token of a 64-token chat prompt and peak memory, as medians ± half-range
//! over `LLAMA32_BENCH_REPS` (default 3); then the batched figures (`LLAMA32_BENCH_BATCHED`,
//! default 1,2,4,8 sequences of 64 + 32 tokens). Prints tables and writes
//! `target/llama32-bench/results.json`.

use std::path::{Path, PathBuf};

use llama32::bench::{peak_rss_mib, reset_peak_rss, table_header, BenchConfig};
use llama32::synthetic::{write_checkpoint, SyntheticShape};
use llama32::{ComputeDType, DeviceKind};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn model_dir(root: &Path) -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("LLAMA32_BENCH_MODEL") {
        return Ok(PathBuf::from(dir));
    }
    let (shape, name) = match std::env::var("LLAMA32_BENCH_3B").as_deref() {
        Ok("1") => (SyntheticShape::Llama32_3B, "llama-3.2-3b-synthetic"),
        _ => (SyntheticShape::Llama32_1B, "llama-3.2-1b-synthetic"),
    };
    let dir = root.join(name);
    if !dir.join("model.safetensors").exists() || !dir.join("tokenizer_config.json").exists() {
        eprintln!("writing synthetic checkpoint {} ...", dir.display());
        let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-f32-mha/tokenizer.json");
        write_checkpoint(&dir, shape, &tokenizer, 0x5eed)?;
    }
    Ok(dir)
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama32-bench");
    std::fs::create_dir_all(&root)?;
    let dir = model_dir(&root)?;
    let config = BenchConfig {
        pp: env_usize("LLAMA32_BENCH_PP", 512),
        tg: env_usize("LLAMA32_BENCH_TG", 128),
        chat_tokens: 64,
        reps: env_usize("LLAMA32_BENCH_REPS", 3),
        kv_dtype: None,
    };
    let dtypes = std::env::var("LLAMA32_BENCH_DTYPES").unwrap_or_else(|_| "q8_0,q4k,f32".into());
    println!(
        "model: {}  threads: {}  reps: {}",
        dir.display(),
        std::thread::available_parallelism()?,
        config.reps
    );
    println!("{}", table_header(&config));
    let mut results = Vec::new();
    for dtype in dtypes.split(',') {
        let dtype: ComputeDType = dtype.trim().parse()?;
        reset_peak_rss();
        let r = llama32::bench::run(&dir, DeviceKind::Cpu, dtype, &config)?;
        let peak = peak_rss_mib();
        println!("{}", r.table_row(peak));
        results.push(serde_json::json!({"result": r, "peak_rss_mib": peak}));
    }
    // Batched, like llama-batched-bench: 64-token prompts, 32 tokens each, on the first
    // quantized dtype (`LLAMA32_BENCH_BATCHED=` empty skips it).
    let sizes: Vec<usize> = std::env::var("LLAMA32_BENCH_BATCHED")
        .unwrap_or_else(|_| "1,2,4,8".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let mut batched = Vec::new();
    let quantized = dtypes
        .split(',')
        .find_map(|d| d.trim().parse::<ComputeDType>().ok().filter(|d| d.quant().is_some()));
    if let (Some(dtype), Some(&max)) = (quantized, sizes.iter().max()) {
        let options = llama32::LoadOptions {
            dtype: Some(dtype),
            parallel: Some(max),
            ..Default::default()
        };
        let engine = llama32::Engine::load(&dir, &options)?;
        println!("{}", llama32::bench::BatchedRow::header());
        for row in llama32::bench::batched(&engine, 64, 32, &sizes)? {
            println!("{}", row.row(&dtype.to_string()));
            batched.push(serde_json::json!({"dtype": dtype.to_string(), "row": row}));
        }
    }
    let out = root.join("results.json");
    let json = serde_json::json!({"model": dir, "config": config, "results": results, "batched": batched});
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
