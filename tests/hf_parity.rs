//! Our f32 forward pass against HF transformers' `LlamaForCausalLM` on the fixture
//! checkpoints: last-position logits to 1e-4 (relative to the largest |logit|) and
//! identical greedy continuations.

mod common;

use std::ops::ControlFlow;

use common::*;
use llama32::{ComputeDType, Engine, FinishReason, GenerateRequest, LoadOptions, SamplingParams};

fn load(name: &str) -> Engine {
    let opts = LoadOptions {
        dtype: Some(ComputeDType::F32),
        ..Default::default()
    };
    Engine::load(&fixture(name), &opts).unwrap()
}

#[test]
fn logits_and_greedy_tokens_match_transformers() {
    for name in FIXTURES {
        let engine = load(name);
        for case in expected(name).prompts {
            let ids = engine.tokenize(&case.text).unwrap();
            assert_eq!(ids, case.prompt_ids, "{name}/{}: prompt ids", case.name);

            let logits = last_logits(&engine, &ids);
            let diff = rel_max_diff(&logits, &expected_logits(name, &case.name));
            println!(
                "{name}/{}: {} prompt tokens, max |logit diff| / max |logit| = {diff:.2e}",
                case.name,
                ids.len()
            );
            assert!(diff < 1e-4, "{name}/{}: logits differ by {diff:e}", case.name);

            let request = GenerateRequest {
                max_tokens: case.greedy_ids.len(),
                sampling: SamplingParams::greedy(),
                ..Default::default()
            };
            let out = engine
                .generate(&case.text, &request, |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(out.token_ids, case.greedy_ids, "{name}/{}: greedy tokens", case.name);
            assert_eq!(out.finish_reason, FinishReason::Length);
            assert_eq!(out.prompt_tokens, case.prompt_ids.len());
        }
    }
}

#[test]
fn streamed_pieces_concatenate_to_the_text() {
    let engine = load("tied-f32-mha");
    let case = &expected("tied-f32-mha").prompts[0];
    let request = GenerateRequest {
        max_tokens: 24,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let mut streamed = String::new();
    let out = engine
        .generate(&case.text, &request, |p| {
            streamed.push_str(p);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, engine.tokenizer().decode(&out.token_ids, true).unwrap());
}

#[test]
fn sixteen_bit_compute_stays_close_to_f32() {
    let name = "tied-bf16-llama3";
    let case = &expected(name).prompts[0];
    let reference = expected_logits(name, &case.name);
    for (dtype, tol) in [(ComputeDType::F16, 1e-2), (ComputeDType::Bf16, 5e-2)] {
        let opts = LoadOptions {
            dtype: Some(dtype),
            ..Default::default()
        };
        let engine = Engine::load(&fixture(name), &opts).unwrap();
        let logits = last_logits(&engine, &case.prompt_ids);
        let diff = rel_max_diff(&logits, &reference);
        println!("{name}/{dtype}: max |logit diff| / max |logit| = {diff:.2e}");
        assert!(diff < tol, "{dtype}: {diff:e}");
    }
}

#[test]
fn logprobs_are_the_log_softmax_of_transformers_logits() {
    let name = FIXTURES[0];
    let engine = load(name);
    for case in expected(name).prompts {
        let hf = expected_logits(name, &case.name);
        let max = hf.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let lse = max + hf.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        let reference = |id: u32| (hf[id as usize] as f64 - lse) as f32;
        let request = GenerateRequest {
            max_tokens: 1,
            sampling: SamplingParams::greedy(),
            logprobs: Some(5),
            ..Default::default()
        };
        let out = engine
            .generate(&case.text, &request, |_| ControlFlow::Continue(()))
            .unwrap();
        let first = &out.logprobs[0];
        assert_eq!(first.id, case.greedy_ids[0]);
        assert!(
            (first.logprob - reference(first.id)).abs() < 1e-4,
            "{} vs {}",
            first.logprob,
            reference(first.id)
        );
        // Greedy: the most likely alternative is the token chosen.
        assert_eq!(first.top[0].0, first.id);
        assert_eq!(first.top.len(), 5);
        for &(id, lp) in &first.top {
            assert!(lp <= 0.0 && (lp - reference(id)).abs() < 1e-4);
        }
        let too_many = GenerateRequest {
            logprobs: Some(21),
            ..request
        };
        assert!(engine
            .generate(&case.text, &too_many, |_| ControlFlow::Continue(()))
            .is_err());
    }
}
