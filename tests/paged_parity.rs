//! The CPU backend's forward pass in exact f32 against transformers and against the candle
//! reference, through the sessions every caller uses. (The prefix cache and one-token vs
//! batched steps are tested where the pool is visible: `src/backend/tests.rs`.)

mod common;

use common::*;
use llama32::{BackendKind, ComputeDType, Engine, LoadOptions};

fn f32_on(backend: BackendKind) -> LoadOptions {
    LoadOptions {
        dtype: Some(ComputeDType::F32),
        backend,
        ..Default::default()
    }
}

#[test]
fn cpu_f32_logits_match_transformers_and_the_candle_reference() {
    for name in FIXTURES {
        let cpu = Engine::load(&fixture(name), &f32_on(BackendKind::Auto)).unwrap();
        let reference = Engine::load(&fixture(name), &f32_on(BackendKind::Candle)).unwrap();
        assert!(cpu.is_batched() && !reference.is_batched());
        for case in expected(name).prompts {
            let got = last_logits(&cpu, &case.prompt_ids);
            let diff = rel_max_diff(&got, &expected_logits(name, &case.name));
            println!("{name}/{}: CPU f32 vs HF {diff:.2e}", case.name);
            assert!(diff < 1e-4, "{name}/{}: {diff:e}", case.name);
            let d = rel_max_diff(&got, &last_logits(&reference, &case.prompt_ids));
            assert!(d < 1e-5, "{name}/{}: CPU vs candle {d:e}", case.name);
        }
    }
}
