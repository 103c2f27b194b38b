//! The sampler draws from the distribution its parameters define.
//!
//! A straightforward reference, written independently of the library (f64 softmax, full
//! sort, filters applied literally as documented), gives each token's probability; the
//! empirical frequencies of `DRAWS` seeded draws must match it in total variation.

use std::collections::{BTreeMap, BTreeSet};

use llama32::config::GenerationConfig;
use llama32::sampler::{Sampler, SamplingParams};
use llama32::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Draws per parameter set.
const DRAWS: usize = 20_000;

/// Bound on the total variation distance between empirical and reference distributions.
/// With k tokens and N draws the expected TV of pure sampling noise is at most
/// 0.5 * sqrt(2k / (pi N)): 0.009 for k = 10 and N = 20000, with a standard deviation
/// of a few thousandths. 0.02 is more than twice the expectation, while any real error
/// (a missed filter, a wrong temperature or penalty) moves whole tokens' mass and shows
/// up as TV > 0.05. The seeds are fixed, so the test is deterministic, not flaky.
const MAX_TV: f64 = 0.02;

const LOGITS: [f32; 10] = [1.2, 0.3, 2.5, -0.7, 1.9, 0.0, 3.1, -1.5, 0.8, 2.2];

fn resolve(p: &SamplingParams, vocab: usize) -> llama32::Result<llama32::sampler::ResolvedSampling> {
    p.resolve(&GenerationConfig::default(), vocab)
}

fn sampler(p: &SamplingParams, vocab: usize, seed: u64) -> Sampler {
    Sampler::new(resolve(p, vocab).unwrap(), seed)
}

/// The reference: each token's probability under `p`, computed the slow, obvious way.
fn reference(logits: &[f32], p: &SamplingParams, prompt: &[u32], generated: &[u32]) -> Vec<f64> {
    let mut l: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
    for (&id, &b) in &p.logit_bias {
        let b = (b as f64).clamp(-100.0, 100.0);
        l[id as usize] = if b <= -100.0 {
            f64::NEG_INFINITY
        } else {
            l[id as usize] + b
        };
    }
    let r = p.repetition_penalty.unwrap_or(1.0) as f64;
    let seen: BTreeSet<u32> = prompt.iter().chain(generated).copied().collect();
    for &id in &seen {
        let x = &mut l[id as usize];
        *x = if *x > 0.0 { *x / r } else { *x * r };
    }
    let mut counts = BTreeMap::new();
    for &id in generated {
        *counts.entry(id).or_insert(0.0) += 1.0;
    }
    let (f, pr) = (
        p.frequency_penalty.unwrap_or(0.0) as f64,
        p.presence_penalty.unwrap_or(0.0) as f64,
    );
    for (&id, &c) in &counts {
        l[id as usize] -= c * f + pr;
    }
    let t = p.temperature.unwrap_or(1.0) as f64;
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut prob: Vec<f64> = l.iter().map(|&x| ((x - max) / t).exp()).collect();
    normalise(&mut prob);
    let min_p = p.min_p.unwrap_or(0.0) as f64;
    let top = prob.iter().cloned().fold(0.0, f64::max);
    for q in prob.iter_mut() {
        if min_p > 0.0 && *q > 0.0 {
            assert!(
                (*q / top - min_p).abs() > 1e-3,
                "test logits too close to the min_p cut"
            );
        }
        if *q < min_p * top {
            *q = 0.0;
        }
    }
    // Rank: probability descending, ties to the lower id.
    let mut order: Vec<usize> = (0..prob.len()).collect();
    order.sort_by(|&a, &b| prob[b].total_cmp(&prob[a]).then(a.cmp(&b)));
    let k = p.top_k.unwrap_or(0) as usize;
    if k > 0 {
        for &i in &order[k.min(order.len())..] {
            prob[i] = 0.0;
        }
    }
    normalise(&mut prob);
    let top_p = p.top_p.unwrap_or(1.0) as f64;
    if top_p < 1.0 {
        let mut cum = 0.0;
        for &i in &order {
            if cum >= top_p {
                prob[i] = 0.0;
            } else {
                cum += prob[i];
                assert!((cum - top_p).abs() > 1e-3, "test logits too close to the top_p cut");
            }
        }
    }
    normalise(&mut prob);
    prob
}

fn normalise(p: &mut [f64]) {
    let z: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= z);
}

/// Empirical frequencies of `DRAWS` draws.
fn empirical(s: &mut Sampler, logits: &[f32], prompt: &[u32], generated: &[u32]) -> Vec<f64> {
    let mut counts = vec![0usize; logits.len()];
    for _ in 0..DRAWS {
        counts[s.sample(logits, prompt, generated).unwrap() as usize] += 1;
    }
    counts.iter().map(|&c| c as f64 / DRAWS as f64).collect()
}

fn total_variation(a: &[f64], b: &[f64]) -> f64 {
    0.5 * a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>()
}

fn assert_matches_reference(name: &str, p: SamplingParams, prompt: &[u32], generated: &[u32]) {
    let want = reference(&LOGITS, &p, prompt, generated);
    let got = empirical(&mut sampler(&p, LOGITS.len(), 1234), &LOGITS, prompt, generated);
    let tv = total_variation(&want, &got);
    assert!(tv < MAX_TV, "{name}: TV {tv:.4}\n want {want:.4?}\n got  {got:.4?}");
    for (i, (&w, &g)) in want.iter().zip(&got).enumerate() {
        assert!(w > 0.0 || g == 0.0, "{name}: token {i} is filtered out but was drawn");
    }
}

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature: Some(temperature),
        ..Default::default()
    }
}

#[test]
fn temperature_alone() {
    assert_matches_reference("temperature 0.7", params(0.7), &[], &[]);
    assert_matches_reference("temperature 1.6", params(1.6), &[], &[]);
}

#[test]
fn top_k() {
    assert_matches_reference(
        "top_k 3",
        SamplingParams {
            top_k: Some(3),
            ..params(1.0)
        },
        &[],
        &[],
    );
}

#[test]
fn top_p() {
    assert_matches_reference(
        "top_p 0.8",
        SamplingParams {
            top_p: Some(0.8),
            ..params(1.0)
        },
        &[],
        &[],
    );
    assert_matches_reference(
        "top_p 0.5 at t 2",
        SamplingParams {
            top_p: Some(0.5),
            ..params(2.0)
        },
        &[],
        &[],
    );
}

#[test]
fn min_p() {
    assert_matches_reference(
        "min_p 0.2",
        SamplingParams {
            min_p: Some(0.2),
            ..params(1.0)
        },
        &[],
        &[],
    );
}

#[test]
fn penalties_and_bias() {
    let p = SamplingParams {
        repetition_penalty: Some(1.3),
        frequency_penalty: Some(0.4),
        presence_penalty: Some(0.3),
        logit_bias: [(2, 1.5), (6, -100.0), (9, -0.8), (7, 1.5)].into(),
        ..params(0.9)
    };
    assert_matches_reference("penalties + bias", p, &[0, 2, 2, 5], &[2, 4, 4, 9]);
}

#[test]
fn everything_combined() {
    let p = SamplingParams {
        top_k: Some(6),
        top_p: Some(0.9),
        min_p: Some(0.05),
        repetition_penalty: Some(1.2),
        frequency_penalty: Some(0.5),
        presence_penalty: Some(-0.2),
        logit_bias: [(3, 2.0), (6, -100.0)].into(),
        ..params(1.3)
    };
    assert_matches_reference("combined", p, &[1, 3], &[4, 4, 8]);
}

/// Random rows of `n` logits drawn from a few integer levels, so that ties are common.
fn random_rows(seed: u64, rows: usize, n: usize) -> Vec<Vec<f32>> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..rows)
        .map(|_| (0..n).map(|_| rng.random_range(0..40) as f32 / 4.0 - 5.0).collect())
        .collect()
}

/// Argmax with ties to the lowest id, written out.
fn first_max(row: &[f32]) -> u32 {
    let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    row.iter().position(|&x| x == max).unwrap() as u32
}

#[test]
fn top_k_1_and_temperature_0_are_greedy() {
    let n = 5000;
    let mut greedy = sampler(&SamplingParams::greedy(), n, 1);
    let mut top1 = sampler(
        &SamplingParams {
            top_k: Some(1),
            ..params(1.5)
        },
        n,
        2,
    );
    let mut top1_p = sampler(
        &SamplingParams {
            top_k: Some(1),
            top_p: Some(0.3),
            ..params(0.7)
        },
        n,
        3,
    );
    for row in random_rows(9, 200, n) {
        let want = first_max(&row);
        assert_eq!(greedy.sample(&row, &[], &[]).unwrap(), want);
        assert_eq!(top1.sample(&row, &[], &[]).unwrap(), want);
        assert_eq!(top1_p.sample(&row, &[], &[]).unwrap(), want);
    }
}

#[test]
fn no_op_filters_change_nothing() {
    let n = 3000;
    let plain = params(0.8);
    let noop = SamplingParams {
        top_p: Some(1.0),
        top_k: Some(0),
        min_p: Some(0.0),
        ..plain.clone()
    };
    let huge_k = SamplingParams {
        top_k: Some(n as i64),
        ..plain.clone()
    };
    let mut a = sampler(&plain, n, 77);
    let mut b = sampler(&noop, n, 77);
    let mut c = sampler(&huge_k, n, 77);
    for row in random_rows(10, 300, n) {
        let t = a.sample(&row, &[], &[]).unwrap();
        assert_eq!(t, b.sample(&row, &[], &[]).unwrap());
        assert_eq!(t, c.sample(&row, &[], &[]).unwrap());
    }
}

#[test]
fn a_banned_token_is_never_drawn() {
    // Token 6 is by far the most likely at temperature 3; banned, it must never appear.
    let p = SamplingParams {
        logit_bias: [(6, -100.0)].into(),
        ..params(3.0)
    };
    let mut s = sampler(&p, LOGITS.len(), 5);
    for _ in 0..DRAWS {
        assert_ne!(s.sample(&LOGITS, &[], &[]).unwrap(), 6);
    }
    let mut g = sampler(
        &SamplingParams {
            logit_bias: [(6, -100.0)].into(),
            ..SamplingParams::greedy()
        },
        10,
        5,
    );
    assert_eq!(g.sample(&LOGITS, &[], &[]).unwrap(), 2);
}

#[test]
fn seeds_replay_and_differ() {
    let n = 2000;
    let rows = random_rows(11, 200, n);
    let run = |p: &SamplingParams, seed| {
        let mut s = sampler(p, n, seed);
        rows.iter().map(|r| s.sample(r, &[], &[]).unwrap()).collect::<Vec<_>>()
    };
    let p = SamplingParams {
        top_p: Some(0.95),
        ..params(1.0)
    };
    assert_eq!(run(&p, 42), run(&p, 42));
    assert_ne!(run(&p, 42), run(&p, 43));
    // The request's seed overrides the fallback seed.
    let seeded = SamplingParams {
        seed: Some(42),
        ..p.clone()
    };
    assert_eq!(run(&seeded, 999), run(&p, 42));
    assert_eq!(sampler(&seeded, n, 999).seed(), 42);
}

#[test]
fn non_finite_logits_name_the_step() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut row = LOGITS;
        row[3] = bad;
        for p in [
            SamplingParams::greedy(),
            params(1.0),
            SamplingParams {
                top_k: Some(2),
                ..params(1.0)
            },
        ] {
            let err = sampler(&p, 10, 0).sample(&row, &[1, 2], &[5, 5, 5, 5]).unwrap_err();
            assert!(matches!(err, Error::NonFiniteLogits { step: 4 }), "{err}");
            assert!(err.to_string().contains("step 4"), "{err}");
        }
    }
}

/// Default parameters with one change.
fn with(change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    change(&mut p);
    p
}

#[test]
fn every_validation_error_names_its_parameter() {
    let cases = [
        ("temperature", with(|p| p.temperature = Some(-1.0))),
        ("top_p", with(|p| p.top_p = Some(0.0))),
        ("top_k", with(|p| p.top_k = Some(-3))),
        ("min_p", with(|p| p.min_p = Some(1.1))),
        ("repetition_penalty", with(|p| p.repetition_penalty = Some(0.0))),
        ("frequency_penalty", with(|p| p.frequency_penalty = Some(3.0))),
        ("presence_penalty", with(|p| p.presence_penalty = Some(-3.0))),
        ("logit_bias", with(|p| p.logit_bias = [(10, 1.0)].into())),
        ("logit_bias", with(|p| p.logit_bias = [(0, f32::INFINITY)].into())),
    ];
    for (name, p) in cases {
        let err = resolve(&p, 10).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: n, .. } if n == name),
            "{p:?}: {err}"
        );
        assert!(err.to_string().contains(name) && err.is_usage(), "{err}");
    }
    let stop = llama32::sampler::StopMatcher::new(vec![String::new()]).unwrap_err();
    assert!(matches!(stop, Error::InvalidParameter { name: "stop", .. }));
}
