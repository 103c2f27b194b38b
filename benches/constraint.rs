//! `cargo bench --bench constraint`: what a grammar costs.
//!
//! 1. Mask time per token with the real 128k-token Llama 3.2 tokenizer on a JSON Schema
//!    with nested objects, arrays and enums: a seeded walk through the grammar (each step
//!    computes the mask, then takes a random allowed token), median and p95 over the steps.
//! 2. Decode speed constrained vs unconstrained on the synthetic Llama-3.2-1B (q8_0) that
//!    `cargo bench --bench generate` writes (skipped when it is absent), interleaved, same
//!    token count (greedy; the constrained answer must be long, so its schema has a long
//!    free string).

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use llama32::constraint::{Constraint, Grammars};
use llama32::{ComputeDType, Engine, GenerateRequest, LoadOptions, SamplingParams, Tokenizer};
use rand::{Rng, SeedableRng};
use serde_json::json;

fn schema() -> serde_json::Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 40},
        "kind": {"enum": ["city", "town", "village"]},
        "location": {"type": "object", "properties": {
            "lat": {"type": "number"}, "lon": {"type": "number"},
            "country": {"enum": ["FR", "IT", "NO", "DE", "ES"]}},
            "required": ["lat", "lon", "country"], "additionalProperties": false},
        "tags": {"type": "array", "items": {"enum": ["warm", "cold", "wet", "dry"]}, "maxItems": 4},
        "population": {"type": "integer", "minimum": 0}},
        "required": ["name", "kind", "location", "tags", "population"], "additionalProperties": false})
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn mask_cost(root: &Path) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::from_file(&root.join("tests/fixtures/tied-f32-mha/tokenizer.json"))?;
    let eos: Arc<[u32]> = Arc::from(vec![128001u32, 128008, 128009]);
    let built = Instant::now();
    let grammars = Grammars::new(&tokenizer, 128256, eos.clone())?;
    println!(
        "token trie for 128256 ids: {:.0} ms (once per engine)",
        built.elapsed().as_secs_f64() * 1e3
    );
    let mut times = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for walk in 0..20 {
        let compiled = Instant::now();
        let mut state = grammars.compile(&Constraint::JsonSchema(schema()))?;
        if walk == 0 {
            println!("schema compile: {:.2} ms", compiled.elapsed().as_secs_f64() * 1e3);
        }
        for step in 0..200 {
            let t = Instant::now();
            state.compute(step)?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
            let allowed: Vec<u32> = (0..128256u32).filter(|&id| state.allows(id)).collect();
            let pick = allowed[rng.random_range(0..allowed.len())];
            if eos.contains(&pick) {
                break;
            }
            state.consume(pick, step)?;
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "mask per token over {} steps: median {:.0} us, p95 {:.0} us, max {:.0} us (one core)",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        times[times.len() - 1]
    );
    Ok(())
}

fn decode_cost(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("target/llama32-bench/llama-3.2-1b-synthetic");
    if !dir.join("model.safetensors").exists() {
        println!(
            "(no synthetic 1B at {}: run `cargo bench --bench generate` first)",
            dir.display()
        );
        return Ok(());
    }
    let options = LoadOptions {
        dtype: Some(ComputeDType::Q8_0),
        ..Default::default()
    };
    let engine = Engine::load(&dir, &options)?;
    let long = json!({"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]});
    let n = 64;
    let run = |constraint: Option<Constraint>| -> anyhow::Result<f64> {
        let request = GenerateRequest {
            max_tokens: n,
            sampling: SamplingParams::greedy(),
            constraint,
            ..Default::default()
        };
        let out = engine.generate("Describe the city of Paris in detail:", &request, |_| {
            ControlFlow::Continue(())
        })?;
        anyhow::ensure!(
            out.completion_tokens == n,
            "stopped after {} tokens",
            out.completion_tokens
        );
        Ok(out.timings.decode_tokens_per_s)
    };
    run(Some(Constraint::JsonSchema(long.clone())))?; // builds the token trie once
    let (mut free, mut constrained) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        free.push(run(None)?);
        constrained.push(run(Some(Constraint::JsonSchema(long.clone())))?);
    }
    free.sort_by(f64::total_cmp);
    constrained.sort_by(f64::total_cmp);
    let (f, c) = (free[2], constrained[2]);
    println!(
        "decode {n} tokens, synthetic 1B q8_0, median of 5 interleaved: unconstrained {f:.1} tok/s, constrained {c:.1} tok/s ({:+.1}%)",
        (c / f - 1.0) * 100.0
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    mask_cost(root)?;
    decode_cost(root)
}
