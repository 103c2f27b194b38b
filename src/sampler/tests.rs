//! Resolution, validation and whole-chain tests; each stage's own tests sit in its file.

use std::collections::BTreeSet;

use super::*;
use crate::config::GenerationConfig;

fn resolve(p: SamplingParams) -> Result<ResolvedSampling> {
    p.resolve(&GenerationConfig::default(), 8)
}

fn sampler(p: SamplingParams) -> Sampler {
    Sampler::new(resolve(p).unwrap(), 7)
}

/// The set of tokens drawn in `n` steps.
fn support(s: &mut Sampler, logits: &[f32], generated: &[u32], n: usize) -> BTreeSet<u32> {
    (0..n).map(|_| s.sample(logits, &[], generated).unwrap()).collect()
}

const ROW: [f32; 8] = [2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 3.0];

#[test]
fn openai_defaults_without_a_generation_config() {
    let r = resolve(SamplingParams::default()).unwrap();
    assert_eq!((r.temperature(), r.top_p(), r.top_k(), r.min_p()), (1.0, 1.0, 0, 0.0));
    assert_eq!(
        (r.repetition_penalty(), r.frequency_penalty(), r.presence_penalty()),
        (1.0, 0.0, 0.0)
    );
    assert_eq!((r.seed(), r.vocab_size(), r.logit_bias().len()), (None, 8, 0));
    assert!(!r.is_greedy());
    assert!(resolve(SamplingParams::greedy()).unwrap().is_greedy());
}

#[test]
fn model_defaults_fill_gaps_and_explicit_values_win() {
    let gc = GenerationConfig {
        temperature: Some(0.6),
        top_p: Some(0.9),
        top_k: Some(50),
        repetition_penalty: Some(1.1),
        do_sample: Some(true),
        ..Default::default()
    };
    let r = SamplingParams::default().resolve(&gc, 8).unwrap();
    assert_eq!(
        (r.temperature(), r.top_p(), r.top_k(), r.repetition_penalty()),
        (0.6, 0.9, 50, 1.1)
    );
    let explicit = SamplingParams {
        temperature: Some(1.3),
        top_k: Some(0),
        ..Default::default()
    };
    let r = explicit.resolve(&gc, 8).unwrap();
    assert_eq!((r.temperature(), r.top_p(), r.top_k()), (1.3, 0.9, 0));
    let greedy_model = GenerationConfig {
        do_sample: Some(false),
        ..gc
    };
    assert!(SamplingParams::default().resolve(&greedy_model, 8).unwrap().is_greedy());
    let r = SamplingParams {
        temperature: Some(0.8),
        ..Default::default()
    }
    .resolve(&greedy_model, 8)
    .unwrap();
    assert_eq!(r.temperature(), 0.8);
}

/// Default parameters with one change.
fn with(change: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    change(&mut p);
    p
}

#[test]
fn every_out_of_range_value_names_its_parameter() {
    let nan = f32::NAN;
    let cases = [
        ("temperature", with(|p| p.temperature = Some(-0.1))),
        ("temperature", with(|p| p.temperature = Some(nan))),
        ("temperature", with(|p| p.temperature = Some(f32::INFINITY))),
        ("top_p", with(|p| p.top_p = Some(0.0))),
        ("top_p", with(|p| p.top_p = Some(1.01))),
        ("top_p", with(|p| p.top_p = Some(nan))),
        ("top_k", with(|p| p.top_k = Some(-1))),
        ("min_p", with(|p| p.min_p = Some(-0.01))),
        ("min_p", with(|p| p.min_p = Some(1.5))),
        ("min_p", with(|p| p.min_p = Some(nan))),
        ("repetition_penalty", with(|p| p.repetition_penalty = Some(0.0))),
        ("repetition_penalty", with(|p| p.repetition_penalty = Some(-1.0))),
        (
            "repetition_penalty",
            with(|p| p.repetition_penalty = Some(f32::INFINITY)),
        ),
        ("frequency_penalty", with(|p| p.frequency_penalty = Some(2.5))),
        ("frequency_penalty", with(|p| p.frequency_penalty = Some(nan))),
        ("presence_penalty", with(|p| p.presence_penalty = Some(-2.01))),
        ("logit_bias", with(|p| p.logit_bias = [(8, 1.0)].into())),
        ("logit_bias", with(|p| p.logit_bias = [(1, nan)].into())),
        (
            "logit_bias",
            with(|p| p.logit_bias = (0..8).map(|i| (i, -100.0)).collect()),
        ),
    ];
    for (name, p) in cases {
        match resolve(p.clone()) {
            Err(Error::InvalidParameter { name: got, reason }) => {
                assert_eq!(got, name, "{p:?}: {reason}");
                assert!(reason.contains("must"), "{reason}");
            }
            other => panic!("{p:?} gave {other:?}"),
        }
    }
}

#[test]
fn bad_model_defaults_say_where_they_come_from() {
    let gc = GenerationConfig {
        top_p: Some(1.5),
        ..Default::default()
    };
    let err = SamplingParams::default().resolve(&gc, 8).unwrap_err();
    assert!(
        err.to_string().contains("top_p") && err.to_string().contains("generation_config.json"),
        "{err}"
    );
    // An explicit, valid value overrides the bad default.
    assert!(SamplingParams {
        top_p: Some(0.5),
        ..Default::default()
    }
    .resolve(&gc, 8)
    .is_ok());
}

#[test]
fn edge_values_are_accepted() {
    let p = SamplingParams {
        temperature: Some(0.0),
        top_p: Some(1.0),
        top_k: Some(i64::MAX),
        min_p: Some(1.0),
        repetition_penalty: Some(1e-3),
        frequency_penalty: Some(-2.0),
        presence_penalty: Some(2.0),
        logit_bias: [(0, -1e6), (7, 1e6)].into(),
        ..Default::default()
    };
    let r = resolve(p).unwrap();
    assert_eq!(r.logit_bias().values().copied().collect::<Vec<_>>(), [-100.0, 100.0]);
}

#[test]
fn greedy_takes_the_lowest_id_among_ties_and_skips_banned_tokens() {
    let mut s = sampler(SamplingParams::greedy());
    let row = [0.0, 3.0, 1.0, 3.0, 0.0, 0.0, 0.0, 0.0];
    assert_eq!(s.sample(&row, &[], &[]).unwrap(), 1);
    let mut s = sampler(SamplingParams {
        logit_bias: [(1, -100.0)].into(),
        ..SamplingParams::greedy()
    });
    assert_eq!(s.sample(&row, &[], &[]).unwrap(), 3);
    // A positive bias changes the winner too.
    let mut s = sampler(SamplingParams {
        logit_bias: [(2, 2.5)].into(),
        ..SamplingParams::greedy()
    });
    assert_eq!(s.sample(&row, &[], &[]).unwrap(), 2);
}

#[test]
fn greedy_sees_the_penalties() {
    // Token 7 (3.0) repeated twice with frequency 0.4 and presence 0.3 drops to 1.9 < 2.0.
    let p = SamplingParams {
        frequency_penalty: Some(0.4),
        presence_penalty: Some(0.3),
        ..SamplingParams::greedy()
    };
    let mut s = sampler(p);
    assert_eq!(s.sample(&ROW, &[7], &[]).unwrap(), 7);
    assert_eq!(s.sample(&ROW, &[], &[7, 7]).unwrap(), 0);
    // Repetition 2 over the prompt: 3.0 -> 1.5, so token 0 (2.0) wins.
    let mut s = sampler(SamplingParams {
        repetition_penalty: Some(2.0),
        ..SamplingParams::greedy()
    });
    assert_eq!(s.sample(&ROW, &[7], &[]).unwrap(), 0);
}

#[test]
fn non_finite_logits_are_an_error_naming_the_step() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        for p in [SamplingParams::greedy(), SamplingParams::default()] {
            let mut s = sampler(p);
            let mut row = ROW;
            row[4] = bad;
            let err = s.sample(&row, &[1], &[3, 3, 3]).unwrap_err();
            assert!(matches!(err, Error::NonFiniteLogits { step: 3 }), "{err}");
        }
    }
}

#[test]
fn a_row_of_the_wrong_length_is_refused() {
    let err = sampler(SamplingParams::default())
        .sample(&ROW[..7], &[], &[])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "logits", .. }), "{err}");
}

#[test]
fn filters_bound_the_support() {
    let base = SamplingParams {
        temperature: Some(5.0),
        ..Default::default()
    };
    let all: BTreeSet<u32> = (0..8).collect();
    assert_eq!(support(&mut sampler(base.clone()), &ROW, &[], 4000), all);
    let top_k = SamplingParams {
        top_k: Some(3),
        ..base.clone()
    };
    assert_eq!(support(&mut sampler(top_k), &ROW, &[], 2000), [0, 1, 7].into());
    // At temperature 5, p / p_max = exp((l - 3) / 5) >= 0.7 iff l >= 3 + 5 ln 0.7 = 1.22.
    let min_p = SamplingParams {
        min_p: Some(0.7),
        ..base.clone()
    };
    assert_eq!(support(&mut sampler(min_p), &ROW, &[], 2000), [0, 1, 7].into());
    // Temperature 1: probabilities of 7, 0, 1 are 0.52, 0.19, 0.12 (cumulative 0.72, 0.83).
    let top_p = SamplingParams {
        temperature: Some(1.0),
        top_p: Some(0.75),
        ..base.clone()
    };
    assert_eq!(support(&mut sampler(top_p), &ROW, &[], 2000), [0, 1, 7].into());
    let tiny_p = SamplingParams {
        top_p: Some(1e-6),
        ..base.clone()
    };
    assert_eq!(support(&mut sampler(tiny_p), &ROW, &[], 200), [7].into());
    let banned = SamplingParams {
        logit_bias: [(7, -100.0), (0, -100.0)].into(),
        top_k: Some(2),
        ..base
    };
    assert_eq!(support(&mut sampler(banned), &ROW, &[], 2000), [1, 2].into());
}

#[test]
fn the_seed_is_the_requests_else_the_fallback() {
    let with_seed = SamplingParams {
        seed: Some(42),
        ..Default::default()
    };
    assert_eq!(Sampler::new(resolve(with_seed).unwrap(), 7).seed(), 42);
    let s = Sampler::new(resolve(SamplingParams::default()).unwrap(), 7);
    assert_eq!((s.seed(), s.settings().top_k()), (7, 0));
}

#[test]
fn params_round_trip_through_json() {
    let p: SamplingParams = serde_json::from_str(r#"{"temperature": 0.5, "logit_bias": {"3": -100}}"#).unwrap();
    assert_eq!(p.temperature, Some(0.5));
    assert_eq!(p.logit_bias.get(&3), Some(&-100.0));
    assert_eq!(
        serde_json::to_string(&p).unwrap(),
        r#"{"temperature":0.5,"logit_bias":{"3":-100.0}}"#
    );
    assert_eq!(serde_json::to_string(&SamplingParams::default()).unwrap(), "{}");
}
