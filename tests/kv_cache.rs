//! The KV cache path against full prefills: one token at a time, chunked prefill, and
//! rolling back to a prefix all give the logits of a single prefill.

mod common;

use common::*;
use llama32::{BackendKind, ComputeDType, Engine, LoadOptions};

/// The last logits of `ids` run in pieces of `chunk` through one session.
fn logits(engine: &Engine, ids: &[u32], chunk: usize) -> Vec<f32> {
    let mut session = engine.session(4096, None).unwrap();
    let mut last = Vec::new();
    for piece in ids.chunks(chunk) {
        last = session.run(piece, 1).unwrap().pop().unwrap();
    }
    last
}

fn f32_on(backend: BackendKind) -> LoadOptions {
    LoadOptions {
        dtype: Some(ComputeDType::F32),
        backend,
        ..Default::default()
    }
}

#[test]
fn decoding_one_token_at_a_time_equals_one_prefill() {
    for backend in [BackendKind::Auto, BackendKind::Candle] {
        for name in FIXTURES {
            let engine = Engine::load(&fixture(name), &f32_on(backend)).unwrap();
            let case = &expected(name).prompts[0];
            let ids: Vec<u32> = case.prompt_ids.iter().chain(&case.greedy_ids).copied().collect();
            let full = logits(&engine, &ids, 4096);
            let one_by_one = logits(&engine, &ids, 1);
            let chunked = logits(&engine, &ids, 7);
            let d1 = rel_max_diff(&one_by_one, &full);
            let d2 = rel_max_diff(&chunked, &full);
            println!(
                "{backend:?} {name}: {} tokens, one-by-one {d1:.2e}, chunks of 7 {d2:.2e}",
                ids.len()
            );
            assert!(d1 < 1e-5 && d2 < 1e-5, "{backend:?} {name}: {d1:e} {d2:e}");
        }
    }
}

#[test]
fn rolling_back_to_a_prefix_reuses_the_cache() {
    for backend in [BackendKind::Auto, BackendKind::Candle] {
        let engine = Engine::load(&fixture("tied-bf16-llama3"), &f32_on(backend)).unwrap();
        let ids = expected("tied-bf16-llama3").prompts[0].prompt_ids.clone();
        let mut session = engine.session(4096, None).unwrap();
        session.run(&ids, 1).unwrap();
        // Go back to 5 tokens, then continue with a different suffix.
        session.truncate(5);
        let other = [ids[..5].to_vec(), vec![1000, 2000, 3000]].concat();
        let reused = session.run(&other[5..], 1).unwrap().pop().unwrap();
        let fresh = logits(&engine, &other, 512);
        assert!(rel_max_diff(&reused, &fresh) < 1e-5, "{backend:?}");
        assert_eq!(session.len(), 8);
    }
}

#[test]
fn a_next_turn_prefills_only_what_is_new() {
    use llama32::{GenerateRequest, SamplingParams};
    use std::ops::ControlFlow;
    // The candle backend keeps finished caches whole for the next turn; the CPU backend's
    // prefix cache keeps whole blocks (see tests/scheduler.rs).
    let opts = f32_on(BackendKind::Candle);
    let engine = Engine::load(&fixture("tied-f32-mha"), &opts).unwrap();
    let request = GenerateRequest {
        max_tokens: 8,
        sampling: SamplingParams::greedy(),
        ctx_size: Some(256),
        ..Default::default()
    };
    let first_prompt = expected("tied-f32-mha").prompts[0].prompt_ids.clone();
    let now = std::time::Instant::now();
    let run = |e: &Engine, p: &[u32]| {
        e.generate_from_ids(p, &request, now, |_| ControlFlow::Continue(()))
            .unwrap()
    };
    let first = run(&engine, &first_prompt);
    assert_eq!(first.cached_tokens, 0);
    // The next "turn": everything so far plus a few new tokens.
    let second_prompt = [first_prompt.clone(), first.token_ids.clone(), vec![128009, 128006, 882]].concat();
    let second = run(&engine, &second_prompt);
    assert_eq!(second.cached_tokens, first_prompt.len() + first.token_ids.len() - 1);
    let fresh = run(&Engine::load(&fixture("tied-f32-mha"), &opts).unwrap(), &second_prompt);
    assert_eq!(fresh.cached_tokens, 0);
    assert_eq!(second.token_ids, fresh.token_ids);
    // A prompt entirely in the cache still gets its last token's logits recomputed.
    let third = run(&engine, &second_prompt);
    assert_eq!(third.cached_tokens, second_prompt.len() - 1);
    assert_eq!(third.token_ids, fresh.token_ids);
}
