//! `cargo bench --bench sampler`: cost of one sampling step over a Llama-3-sized row.
//!
//! Each case samples from the same 128256-entry row of N(0, 3^2) logits (a spread like a
//! real model's; at temperature 1 the 0.9-nucleus holds ~5000 tokens) and prints the
//! minimum, median and 95th percentile over `ITERS` steps, after a warm-up. The last case uses a
//! flatter N(0, 1) row, where the 0.9-nucleus holds ~70% of the vocabulary (worst case).
//! Arguments filter the cases by name: `cargo bench --bench sampler -- top_p`.

use std::time::Instant;

use llama32::sampler::{Sampler, SamplingParams};
use llama32::GenerationConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const VOCAB: usize = 128_256;
const ITERS: usize = 200;

/// `n` normal deviates with standard deviation `sigma` (Box-Muller).
fn normal_row(rng: &mut StdRng, n: usize, sigma: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1 = 1.0 - rng.random::<f32>();
            let u2 = rng.random::<f32>();
            sigma * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// One timed configuration.
struct Case<'a> {
    name: &'static str,
    params: SamplingParams,
    row: &'a [f32],
    prompt: &'a [u32],
    generated: &'a [u32],
}

/// Minimum, median and 95th percentile, in microseconds, of one `sample` call. (On a
/// busy machine the minimum is the steadiest figure: preemptions only add time.)
fn time_case(case: &Case) -> [f64; 3] {
    let resolved = case
        .params
        .resolve(&GenerationConfig::default(), VOCAB)
        .expect("valid parameters");
    let mut sampler = Sampler::new(resolved, 1);
    let step = |s: &mut Sampler| s.sample(case.row, case.prompt, case.generated).expect("sampling works");
    for _ in 0..10 {
        step(&mut sampler);
    }
    let mut times: Vec<f64> = (0..ITERS)
        .map(|_| {
            let t = Instant::now();
            let token = step(&mut sampler);
            let us = t.elapsed().as_secs_f64() * 1e6;
            std::hint::black_box(token);
            us
        })
        .collect();
    times.sort_by(f64::total_cmp);
    [times[0], times[ITERS / 2], times[ITERS * 95 / 100]]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0);
    let row = normal_row(&mut rng, VOCAB, 3.0);
    let flat = normal_row(&mut rng, VOCAB, 1.0);
    let history: Vec<u32> = (0..512).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let (prompt, generated) = history.split_at(256);
    let t = |v: f32| SamplingParams {
        temperature: Some(v),
        ..Default::default()
    };
    let all = SamplingParams {
        top_k: Some(40),
        top_p: Some(0.9),
        min_p: Some(0.05),
        repetition_penalty: Some(1.1),
        frequency_penalty: Some(0.5),
        presence_penalty: Some(0.5),
        logit_bias: [(13, -100.0), (42, 5.0)].into(),
        ..t(0.8)
    };
    let case = |name, params, row| Case {
        name,
        params,
        row,
        prompt: &[],
        generated: &[],
    };
    let cases = [
        case("greedy", SamplingParams::greedy(), &row),
        case("temperature 0.8", t(0.8), &row),
        case(
            "top_k 40",
            SamplingParams {
                top_k: Some(40),
                ..t(0.8)
            },
            &row,
        ),
        case(
            "top_p 0.9",
            SamplingParams {
                top_p: Some(0.9),
                ..t(1.0)
            },
            &row,
        ),
        case(
            "min_p 0.05",
            SamplingParams {
                min_p: Some(0.05),
                ..t(1.0)
            },
            &row,
        ),
        Case {
            prompt,
            generated,
            ..case("all + penalties, 512-token history", all, &row)
        },
        case(
            "top_p 0.9, flat N(0,1) row",
            SamplingParams {
                top_p: Some(0.9),
                ..t(1.0)
            },
            &flat,
        ),
    ];
    println!("one sampling step over {VOCAB} logits, {ITERS} iterations");
    println!("{:<38} {:>9} {:>11} {:>9}", "case", "min µs", "median µs", "p95 µs");
    // `cargo bench --bench sampler -- top_p` runs only the cases whose name contains
    // `top_p` (cargo itself passes `--bench`, which is skipped).
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    for c in cases
        .iter()
        .filter(|c| filters.iter().all(|f| c.name.contains(f.as_str())))
    {
        let [min, median, p95] = time_case(c);
        println!("{:<38} {min:>9.1} {median:>11.1} {p95:>9.1}", c.name);
    }
}
