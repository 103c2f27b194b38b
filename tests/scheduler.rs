//! The scheduler and the paged KV pool, end to end on the tiny fixtures with packed (q8_0)
//! weights: batch invariance, prefix cache, sharing, cancellation, pool exhaustion.

mod common;

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use common::{expected, fixture};
use llama32::{ComputeDType, Engine, Event, GenerateRequest, Generation, LoadOptions, SamplingParams};

const MODEL: &str = "tied-bf16-llama3";

fn engine(opts: LoadOptions) -> Engine {
    let e = Engine::load(&fixture(MODEL), &opts).unwrap();
    assert!(e.is_batched(), "q8_0 on CPU runs on the paged backend");
    e
}

fn q8() -> LoadOptions {
    LoadOptions {
        dtype: Some(ComputeDType::Q8_0),
        ..Default::default()
    }
}

/// Seeded sampling (not greedy: the sampler's draws must line up too).
fn sampled(seed: u64, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        max_tokens,
        sampling: SamplingParams {
            temperature: Some(0.9),
            seed: Some(seed),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Eight different prompts: the fixture's two, and pieces of the long one.
fn prompts() -> Vec<Vec<u32>> {
    let e = expected(MODEL);
    let (short, long) = (e.prompts[0].prompt_ids.clone(), e.prompts[1].prompt_ids.clone());
    let mut out = vec![short.clone(), long.clone()];
    for (i, n) in [3usize, 17, 40, 100, 333, 600].into_iter().enumerate() {
        let mut p = long[..n].to_vec();
        p.push(1000 + i as u32);
        out.push(p);
    }
    out
}

/// `request` on `prompt` without and with `spec`: (plain, speculative).
fn plain_and_speculative(
    engine: &Engine,
    prompt: &str,
    request: &GenerateRequest,
    spec: Option<llama32::engine::Speculation>,
) -> (Generation, Generation) {
    let plain = engine.generate(prompt, request, |_| ControlFlow::Continue(())).unwrap();
    let fast = GenerateRequest {
        speculation: spec,
        ..request.clone()
    };
    let fast = engine.generate(prompt, &fast, |_| ControlFlow::Continue(())).unwrap();
    (plain, fast)
}

/// Waits (bounded) until every KV block is back in the pool.
fn wait_pool_empty(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.load_stats().kv.used_blocks != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.load_stats().kv.used_blocks, 0);
}

fn wait_idle(engine: &Engine) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while engine.load_stats().running + engine.load_stats().waiting > 0 {
        assert!(Instant::now() < deadline, "the scheduler did not go idle");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_seeded_request_gives_the_same_tokens_alone_or_among_seven_others() {
    let prompts = prompts();
    let alone: Vec<Generation> = {
        let engine = engine(q8());
        prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                engine
                    .generate_from_ids(p, &sampled(i as u64, 24), Instant::now(), |_| ControlFlow::Continue(()))
                    .unwrap()
            })
            .collect()
    };
    // All together, submitted in reverse order so that positions in the batch change, on a
    // fresh engine (nothing cached) with a small prefill budget (prompts are chunked
    // differently and interleaved with decoding).
    let engine = engine(LoadOptions {
        prefill_budget: Some(37),
        ..q8()
    });
    let handles: Vec<_> = (0..prompts.len())
        .rev()
        .map(|i| {
            (
                i,
                engine
                    .submit(prompts[i].clone(), &sampled(i as u64, 24), Instant::now())
                    .unwrap(),
            )
        })
        .collect();
    for (i, h) in handles {
        let together = h.wait(|_| ControlFlow::Continue(())).unwrap();
        assert_eq!(together.token_ids, alone[i].token_ids, "prompt {i}");
        assert_eq!(together.text, alone[i].text, "prompt {i}");
    }
    wait_idle(&engine);
    assert_eq!(engine.load_stats().kv.used_blocks, 0);
}

#[test]
fn a_short_prompt_is_not_held_behind_a_long_one() {
    // Prompts share each step's prefill budget: a short prompt submitted after a long one
    // has its answer while the long one is still being read.
    let engine = engine(LoadOptions {
        prefill_budget: Some(8),
        ..q8()
    });
    let prompts = prompts();
    let (short, long) = (&prompts[0], &prompts[1]);
    assert!(long.len() > 100 && short.len() < 16);
    let long = engine.submit(long.clone(), &sampled(1, 1), Instant::now()).unwrap();
    let short = engine.submit(short.clone(), &sampled(2, 1), Instant::now()).unwrap();
    short.wait(|_| ControlFlow::Continue(())).unwrap();
    assert!(
        long.recv_timeout(Duration::ZERO).is_err(),
        "the long prompt answered first"
    );
    long.wait(|_| ControlFlow::Continue(())).unwrap();
}

#[test]
fn the_prefix_cache_is_used_and_changes_nothing() {
    let engine = engine(q8());
    let long = expected(MODEL).prompts[1].prompt_ids.clone();
    let cold = engine
        .generate_from_ids(&long, &sampled(7, 16), Instant::now(), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(cold.cached_tokens, 0);
    let warm = engine
        .generate_from_ids(&long, &sampled(7, 16), Instant::now(), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(
        warm.cached_tokens,
        long.len() - 1,
        "all but the last prompt token cached"
    );
    assert_eq!(warm.token_ids, cold.token_ids);
    // A chat's next turn: the history and the answer, then more.
    let next = [long.clone(), cold.token_ids.clone(), vec![128009, 128006, 882]].concat();
    let turn = engine
        .generate_from_ids(&next, &sampled(8, 8), Instant::now(), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(turn.cached_tokens, long.len() + cold.token_ids.len() - 1);
    let fresh = Engine::load(&fixture(MODEL), &q8())
        .unwrap()
        .generate_from_ids(&next, &sampled(8, 8), Instant::now(), |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(fresh.cached_tokens, 0);
    assert_eq!(turn.token_ids, fresh.token_ids);
}

#[test]
fn choices_of_one_prompt_share_its_blocks() {
    let engine = engine(q8());
    let long = expected(MODEL).prompts[1].prompt_ids.clone();
    let handles: Vec<_> = (0..3)
        .map(|i| engine.submit(long.clone(), &sampled(i, 4), Instant::now()).unwrap())
        .collect();
    let cached: Vec<usize> = handles
        .into_iter()
        .map(|h| h.wait(|_| ControlFlow::Continue(())).unwrap().cached_tokens)
        .collect();
    assert_eq!(cached[0], 0);
    assert!(
        cached[1..].iter().all(|&c| c >= long.len() / 16 * 16 - 16),
        "{cached:?}"
    );
}

#[test]
fn cancelling_mid_prefill_or_mid_decode_frees_the_memory() {
    let engine = engine(LoadOptions {
        prefill_budget: Some(8),
        ..q8()
    });
    let long = expected(MODEL).prompts[1].prompt_ids.clone();
    // Mid-prefill: 805 tokens at 8 per step take ~100 steps.
    let h = engine.submit(long.clone(), &sampled(1, 50), Instant::now()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while engine.load_stats().kv.used_blocks < 4 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(1));
    }
    let h2 = engine
        .submit(long[..40].to_vec(), &sampled(2, 10_000), Instant::now())
        .unwrap();
    assert!(engine.load_stats().kv.used_blocks > 0);
    drop(h);
    // Mid-decode: the second request streams, then its handle is cancelled.
    let mut tokens = 0;
    while let Some(event) = h2.recv() {
        if let Event::Token { .. } = event {
            tokens += 1;
            if tokens == 5 {
                h2.cancel();
            }
        }
        if let Event::Done(g) = event {
            assert_eq!(g.finish_reason, llama32::FinishReason::Cancelled);
            break;
        }
    }
    wait_idle(&engine);
    assert_eq!(engine.load_stats().kv.used_blocks, 0);
}

#[test]
fn a_small_pool_preempts_and_recomputes_without_changing_any_answer() {
    let prompts: Vec<Vec<u32>> = prompts().into_iter().take(6).filter(|p| p.len() < 200).collect();
    let roomy = engine(q8());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            roomy
                .generate_from_ids(p, &sampled(i as u64, 40), Instant::now(), |_| ControlFlow::Continue(()))
                .unwrap()
                .token_ids
        })
        .collect();
    // 16 blocks of 16 positions (f16) for 5 sequences of up to ~150 positions each.
    let block_bytes = 2 * 2 * 32 * 2 * 16;
    let tight = engine(LoadOptions {
        kv_memory: Some(16 * block_bytes),
        ..q8()
    });
    assert_eq!(tight.context_window(None).unwrap(), 256);
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| tight.submit(p.clone(), &sampled(i as u64, 40), Instant::now()).unwrap())
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let g = h.wait(|_| ControlFlow::Continue(())).unwrap();
        assert_eq!(g.token_ids, alone[i], "prompt {i}");
    }
    wait_idle(&tight);
    assert_eq!(tight.load_stats().kv.used_blocks, 0);
    // A prompt longer than the whole pool is refused up front, naming the limit.
    let long = expected(MODEL).prompts[1].prompt_ids.clone();
    let err = tight.submit(long, &sampled(0, 4), Instant::now()).err().unwrap();
    assert!(err.to_string().contains("256"), "{err}");
}

#[test]
fn speculation_changes_passes_not_output() {
    use llama32::engine::Speculation;
    let engine = engine(q8());
    // A prompt that repeats itself, and greedy decoding of a random model (which loops):
    // proposals from the context get accepted.
    let prompt = "one two three four five six seven eight nine ten ".repeat(6);
    let spec = Some(Speculation::Ngram { n: 3, k: 6 });
    for request in [
        GenerateRequest {
            max_tokens: 80,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        },
        sampled(11, 80),
        GenerateRequest {
            stop: vec!["seven".into()],
            ..sampled(5, 80)
        },
    ] {
        let plain = engine
            .generate(&prompt, &request, |_| ControlFlow::Continue(()))
            .unwrap();
        let fast = GenerateRequest {
            speculation: spec,
            ..request.clone()
        };
        let mut streamed = String::new();
        let out = engine
            .generate(&prompt, &fast, |piece| {
                streamed.push_str(piece);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.token_ids, plain.token_ids);
        assert_eq!(out.text, plain.text);
        assert_eq!(streamed, out.text);
        assert_eq!(out.finish_reason, plain.finish_reason);
        let stats = out.speculation.unwrap();
        assert!(stats.accepted <= stats.drafted);
        println!("{stats:?}");
    }
    // A random model does not repeat itself; a logit_bias that leaves it two tokens makes
    // it loop: proposals get accepted (all or in part, so rolled-back keys and values are
    // exercised), and the output still equals plain decoding.
    for bias in [
        vec![(1000u32, 100.0f32)],
        vec![(1000, 100.0), (2000, 100.0)],
        vec![(1000, 100.0), (2000, 100.0), (3000, 100.0)],
    ] {
        let mut sampling = SamplingParams::greedy();
        sampling.logit_bias = bias.into_iter().collect();
        let request = GenerateRequest {
            max_tokens: 120,
            sampling,
            ..Default::default()
        };
        let (plain, fast) = plain_and_speculative(&engine, &prompt, &request, spec);
        assert_eq!(fast.token_ids, plain.token_ids);
        let stats = fast.speculation.unwrap();
        println!("{stats:?}");
        assert!(stats.accepted > 20 && stats.passes < 100, "{stats:?}");
    }
    // Several speculating sequences in one batch, and the pool is whole afterwards.
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let ids = engine.tokenize(&prompt).unwrap();
            engine
                .submit(
                    ids,
                    &GenerateRequest {
                        speculation: spec,
                        ..sampled(i, 60)
                    },
                    Instant::now(),
                )
                .unwrap()
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let g = h.wait(|_| ControlFlow::Continue(())).unwrap();
        let alone = engine
            .generate(&prompt, &sampled(i as u64, 60), |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(g.token_ids, alone.token_ids);
    }
    assert_eq!(engine.load_stats().kv.used_blocks, 0);
}

#[test]
fn draft_model_speculation_changes_passes_not_output() {
    use llama32::engine::Speculation;
    let spec = Some(Speculation::Draft { k: 4 });
    // Without a draft model the request is refused, naming the flag.
    let plain_engine = engine(q8());
    let refused = plain_engine
        .generate(
            "Hi",
            &GenerateRequest {
                speculation: spec,
                ..sampled(1, 4)
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--draft-model"), "{refused}");
    // The model drafting for itself (accepted nearly always) and an unrelated model of the
    // same vocabulary (rejected nearly always): output equals plain decoding either way,
    // across sampling, stop strings and max_tokens that cut inside an accepted run.
    let prompt = "one two three four five six seven eight nine ten ".repeat(3);
    for (draft, accepted_most) in [(MODEL, true), ("tied-f32-mha", false)] {
        let engine = engine(LoadOptions {
            draft_model: Some(fixture(draft)),
            ..q8()
        });
        for request in [
            GenerateRequest {
                max_tokens: 40,
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
            GenerateRequest {
                max_tokens: 7,
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
            sampled(11, 40),
            GenerateRequest {
                stop: vec!["e".into()],
                ..sampled(5, 40)
            },
        ] {
            let (plain, fast) = plain_and_speculative(&engine, &prompt, &request, spec);
            assert_eq!(fast.token_ids, plain.token_ids, "{draft}");
            assert_eq!((fast.text, fast.finish_reason), (plain.text, plain.finish_reason));
            let stats = fast.speculation.unwrap();
            println!("{draft}: {stats:?}");
            if accepted_most && request.sampling.temperature == Some(0.0) && request.max_tokens == 40 {
                assert!(
                    stats.accepted * 10 >= stats.drafted * 8 && stats.passes < 20,
                    "{stats:?}"
                );
            }
        }
        // A cancelled speculating stream leaves the pool whole.
        let ids = engine.tokenize(&prompt).unwrap();
        let mut handle = engine
            .submit(
                ids,
                &GenerateRequest {
                    speculation: spec,
                    ..sampled(3, 200)
                },
                Instant::now(),
            )
            .unwrap();
        let mut seen = 0;
        for event in handle.by_ref() {
            if matches!(event, Event::Token { .. }) {
                seen += 1;
                if seen == 5 {
                    break;
                }
            }
        }
        drop(handle);
        wait_pool_empty(&engine);
    }
}

#[test]
fn concurrent_draft_speculation_drafts_together_and_changes_no_answer() {
    use llama32::engine::Speculation;
    let engine = engine(LoadOptions {
        draft_model: Some(fixture(MODEL)),
        ..q8()
    });
    let prompts = [
        "one two three four five six seven eight nine ten ".repeat(3),
        "alpha beta gamma delta ".repeat(4),
        "red green blue ".repeat(5),
        "the cat sat on the mat and ".repeat(2),
    ];
    let requests: Vec<GenerateRequest> = (0..prompts.len())
        .map(|i| match i % 2 {
            0 => GenerateRequest {
                max_tokens: 24,
                sampling: SamplingParams::greedy(),
                ..Default::default()
            },
            _ => sampled(20 + i as u64, 24),
        })
        .collect();
    let plain: Vec<Generation> = prompts
        .iter()
        .zip(&requests)
        .map(|(p, r)| engine.generate(p, r, |_| ControlFlow::Continue(())).unwrap())
        .collect();
    // All four at once: their drafts run in the same draft passes.
    let handles: Vec<_> = prompts
        .iter()
        .zip(&requests)
        .map(|(p, r)| {
            let fast = GenerateRequest {
                speculation: Some(Speculation::Draft { k: 4 }),
                ..r.clone()
            };
            engine
                .submit(engine.tokenize(p).unwrap(), &fast, Instant::now())
                .unwrap()
        })
        .collect();
    for (handle, plain) in handles.into_iter().zip(&plain) {
        let fast = handle.wait(|_| ControlFlow::Continue(())).unwrap();
        assert_eq!(fast.token_ids, plain.token_ids);
        let stats = fast.speculation.unwrap();
        assert!(stats.drafted > 0 && stats.accepted > 0, "{stats:?}");
    }
    wait_pool_empty(&engine);
}
