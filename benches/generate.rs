//! `cargo bench --bench generate`: llama-bench-style speed figures.
//!
//! Model: `LLAMA32_BENCH_MODEL` (a checkpoint directory) or, by default, a synthetic
//! checkpoint with the exact Llama-3.2-1B shape (`LLAMA32_BENCH_3B=1` for 3B) written once
//! under `target/llama32-bench/`. Measures load time, prefill of 512 tokens (pp512),
//! decode of 128 tokens (tg128) and time to first token of a 64-token prompt, as the
//! median and range over `LLAMA32_BENCH_REPS` (default 3) repetitions. Prints a table and
//! writes `target/llama32-bench/results.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llama32::synthetic::{write_checkpoint, SyntheticShape};
use llama32::{ComputeDType, Engine, LoadOptions};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
    if !dir.join("model.safetensors").exists() {
        eprintln!("writing synthetic checkpoint {} ...", dir.display());
        let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tied-f32-mha/tokenizer.json");
        write_checkpoint(&dir, shape, &tokenizer, 0x5eed)?;
    }
    Ok(dir)
}

/// (median, min, max)
fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn prompt(n: usize, salt: u32) -> Vec<u32> {
    let mut ids = vec![128000];
    ids.extend(
        (1..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(salt) >> 8) % 120000),
    );
    ids
}

struct Figures {
    load_ms: Vec<f64>,
    pp: Vec<f64>,
    tg: Vec<f64>,
    ttft_ms: Vec<f64>,
}

fn measure(
    dir: &Path,
    dtype: ComputeDType,
    reps: usize,
    pp: usize,
    tg: usize,
) -> anyhow::Result<Figures> {
    let mut f = Figures {
        load_ms: vec![],
        pp: vec![],
        tg: vec![],
        ttft_ms: vec![],
    };
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    let mut engine = None;
    for _ in 0..reps {
        let e = Engine::load(dir, &opts)?;
        f.load_ms.push(e.load_time().as_secs_f64() * 1e3);
        engine = Some(e);
    }
    let engine = engine.ok_or_else(|| anyhow::anyhow!("no repetitions"))?;
    let model = engine.model();
    for rep in 0..reps {
        let ids = prompt(pp, rep as u32);
        let mut cache = model.new_cache(pp + tg + 1);
        let t = Instant::now();
        let logits = model.forward(&ids, &mut cache, 512)?;
        f.pp.push(pp as f64 / t.elapsed().as_secs_f64());
        let mut next = llama32::sampler::argmax(&logits.to_vec1::<f32>()?);
        let t = Instant::now();
        for _ in 0..tg {
            let logits = model.forward(&[next], &mut cache, 1)?;
            next = llama32::sampler::argmax(&logits.to_vec1::<f32>()?);
        }
        f.tg.push(tg as f64 / t.elapsed().as_secs_f64());
        let ids = prompt(64, 1000 + rep as u32);
        let mut cache = model.new_cache(65);
        let t = Instant::now();
        let logits = model.forward(&ids, &mut cache, 512)?;
        llama32::sampler::argmax(&logits.to_vec1::<f32>()?);
        f.ttft_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(f)
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/llama32-bench");
    std::fs::create_dir_all(&root)?;
    let dir = model_dir(&root)?;
    let reps = env_usize("LLAMA32_BENCH_REPS", 3).max(1);
    let (pp, tg) = (
        env_usize("LLAMA32_BENCH_PP", 512),
        env_usize("LLAMA32_BENCH_TG", 128),
    );
    println!(
        "model: {}  threads: {}  reps: {reps}",
        dir.display(),
        std::thread::available_parallelism()?
    );
    println!("| dtype | load ms | pp{pp} tok/s | tg{tg} tok/s | ttft64 ms |");
    println!("|---|---|---|---|---|");
    let mut results = Vec::new();
    for dtype in [ComputeDType::F32] {
        let f = measure(&dir, dtype, reps, pp, tg)?;
        let cell = |xs: &Vec<f64>| {
            let (m, lo, hi) = stats(xs.clone());
            format!("{m:.1} ({lo:.1}-{hi:.1})")
        };
        println!(
            "| {dtype} | {} | {} | {} | {} |",
            cell(&f.load_ms),
            cell(&f.pp),
            cell(&f.tg),
            cell(&f.ttft_ms)
        );
        results.push(serde_json::json!({
            "dtype": dtype.to_string(), "model": dir.display().to_string(), "reps": reps,
            "load_ms": f.load_ms, "pp": pp, "pp_tokens_per_s": f.pp, "tg": tg, "tg_tokens_per_s": f.tg,
            "ttft64_ms": f.ttft_ms,
        }));
    }
    let out = root.join("results.json");
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
