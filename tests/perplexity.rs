//! Perplexity, KL divergence and top-1 agreement (`llama32::perplexity`) against a slow,
//! obviously correct reference: one token at a time through a session, and the KV format
//! in effect reported and honoured.

mod common;

use common::{expected, fixture};
use llama32::KvDType;
use llama32::{ComputeDType, Engine, LoadOptions};

fn load(dtype: ComputeDType) -> Engine {
    let opts = LoadOptions {
        dtype: Some(dtype),
        ..Default::default()
    };
    Engine::load(&fixture("tied-bf16-llama3"), &opts).unwrap()
}

#[test]
fn perplexity_matches_a_token_by_token_reference() {
    let engine = load(ComputeDType::F32);
    let text = &expected("tied-bf16-llama3").prompts[1].text;
    let ids = engine.tokenize(text).unwrap();
    let (bos, body) = (ids[0], &ids[1..]);
    let ctx = 64;
    let report = llama32::perplexity::perplexity(&engine, body, Some(bos), ctx, 2, None).unwrap();
    assert_eq!(
        report.kv_dtype, "f32",
        "f32 weights keep f32 keys and values by default"
    );
    assert_eq!((report.windows, report.tokens), (2, 2 * (ctx - 1 - ctx / 2)));
    // Reference: the same windows, one token at a time.
    let vocab = engine.config().vocab_size;
    let mut nll = 0.0f64;
    for w in 0..2 {
        let mut window = vec![bos];
        window.extend_from_slice(&body[w * (ctx - 1)..(w + 1) * (ctx - 1)]);
        let mut session = engine.session(ctx, None).unwrap();
        for i in 0..ctx - 1 {
            let logits = session.run(&window[i..i + 1], 1).unwrap().pop().unwrap();
            assert_eq!(logits.len(), vocab);
            if i >= ctx / 2 {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = max + logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                nll += lse - logits[window[i + 1] as usize] as f64;
            }
        }
    }
    let reference = (nll / report.tokens as f64).exp();
    assert!(
        (report.perplexity / reference - 1.0).abs() < 1e-4,
        "{} vs {reference}",
        report.perplexity
    );

    // Against itself: no divergence. A quantized copy: a small one, and mostly the same top token.
    let same = llama32::perplexity::perplexity(&engine, body, Some(bos), ctx, 2, Some(&engine)).unwrap();
    assert!(same.mean_kl.unwrap().abs() < 1e-9 && same.top1_agreement == Some(1.0));
    let q8 = load(ComputeDType::Q8_0);
    let against = llama32::perplexity::perplexity(&q8, body, Some(bos), ctx, 2, Some(&engine)).unwrap();
    let kl = against.mean_kl.unwrap();
    assert!(kl > 0.0 && kl < 0.05, "{kl}");
    assert!((against.base_perplexity.unwrap() / report.perplexity - 1.0).abs() < 1e-9);
    // Too short a text is an error naming the file.
    assert!(llama32::perplexity::perplexity(&engine, &body[..10], Some(bos), ctx, 2, None).is_err());
}

#[test]
fn the_kv_format_is_honoured_and_each_figure_reproducible() {
    let load_kv = |kv: KvDType| {
        let opts = LoadOptions {
            dtype: Some(ComputeDType::Q8_0),
            kv_dtype: Some(kv),
            ..Default::default()
        };
        Engine::load(&fixture("tied-bf16-llama3"), &opts).unwrap()
    };
    let text = &expected("tied-bf16-llama3").prompts[1].text;
    let (f16, f32) = (load_kv(KvDType::F16), load_kv(KvDType::F32));
    let ids = f16.tokenize(text).unwrap();
    let (bos, body) = (ids[0], &ids[1..]);
    let run = |e: &Engine| llama32::perplexity::perplexity(e, body, Some(bos), 64, 2, None).unwrap();
    let (a, b) = (run(&f16), run(&f16));
    let (c, d) = (run(&f32), run(&f32));
    assert_eq!((a.kv_dtype.as_str(), c.kv_dtype.as_str()), ("f16", "f32"));
    assert_eq!(a.perplexity, b.perplexity, "f16 KV is reproducible");
    assert_eq!(c.perplexity, d.perplexity, "f32 KV is reproducible");
    assert_ne!(a.perplexity, c.perplexity, "the KV format changes the figure");
    // (A random-weight fixture: perplexities near 1e10, and f16 keys move them by a few %.)
    let within_a_tenth = |x: f64, y: f64| assert!((x / y - 1.0).abs() < 0.1, "{x} vs {y}");
    within_a_tenth(a.perplexity, c.perplexity);
    // 8-bit keys and values: reproducible, honoured, near f32's.
    let q8 = load_kv(KvDType::Q8_0);
    let (e, f) = (run(&q8), run(&q8));
    assert_eq!(e.kv_dtype, "q8_0");
    assert_eq!(e.perplexity, f.perplexity, "q8_0 KV is reproducible");
    assert_ne!(e.perplexity, c.perplexity, "q8_0 KV is not f32 KV");
    within_a_tenth(e.perplexity, c.perplexity);
    // 8-bit keys and 4-bit values: the same.
    let q4 = load_kv(KvDType::Q8Q4);
    let (g, h) = (run(&q4), run(&q4));
    assert_eq!(g.kv_dtype, "q8_0-q4_0");
    assert_eq!(g.perplexity, h.perplexity, "q8_0-q4_0 KV is reproducible");
    assert_ne!(g.perplexity, e.perplexity, "4-bit values are not 8-bit ones");
    // (Random values have no outliers for the rotation to spread: 4 bits move them more.
    // The trained model's figures are in docs/quality.md.)
    assert!(
        (g.perplexity / c.perplexity - 1.0).abs() < 0.25,
        "{} vs {}",
        g.perplexity,
        c.perplexity
    );
}
