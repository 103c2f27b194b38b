//! The CPU backend's pool at work: a prefix-cache hit changes nothing, and a one-token step
//! and a batched step of several sequences run the same forward pass to the same bits.

use super::*;
use crate::checkpoint::Checkpoint;
use crate::kv::KvDType;

fn model(dtype: ComputeDType) -> Model {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-bf16-llama3");
    let ckpt = Checkpoint::open(&dir).unwrap();
    Model::load(&ckpt.config, &ckpt.weights, dtype, &Device::Cpu, BackendKind::Auto).unwrap()
}

fn prompt(len: usize, salt: u32) -> Vec<u32> {
    (0..len as u32)
        .map(|i| (i * 7919 + salt * 104729) % 120_000 + 100)
        .collect()
}

/// Runs all of `tokens` for `seq` in pieces of `chunk`; the last logits.
fn run(b: &mut Backend, seq: SeqId, tokens: &[u32], chunk: usize) -> Vec<f32> {
    let mut last = Vec::new();
    loop {
        let done = b.positions(seq).0;
        if done == tokens.len() {
            return last;
        }
        let n = chunk.min(tokens.len() - done);
        assert!(b.reserve(seq, n));
        let want = usize::from(done + n == tokens.len());
        let work = Work {
            seq,
            tokens,
            n,
            logits: want,
        };
        if let Some(row) = b.forward(&[work]).unwrap().pop() {
            last = row;
        }
    }
}

#[test]
fn a_cached_prefix_gives_the_bits_of_a_cold_prefill() {
    let m = model(ComputeDType::F32);
    assert!(m.is_cpu());
    let mut b = m.backend(64 << 20, KvDType::F32, 512);
    let ids = prompt(40, 1);
    let seq = b.start(&ids, 128, 0);
    let cold = run(&mut b, seq, &ids, 100);
    b.release(seq, &ids);
    let warm_seq = b.start(&ids, 128, 0);
    assert_eq!(b.positions(warm_seq), (ids.len() - 1, ids.len() - 1));
    let warm = run(&mut b, warm_seq, &ids, 7);
    // Dense f32 prompts run through a GEMM whose sums depend on the chunk: equal to rounding.
    let scale = cold.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = warm.iter().zip(&cold).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
    assert!(d < 1e-5, "cached vs cold {d}");
}

#[test]
fn one_token_steps_and_batched_steps_are_the_same_forward() {
    for kv in [KvDType::F16, KvDType::Q8_0, KvDType::Q8Q4] {
        same_forward_alone_and_batched(kv);
    }
}

fn same_forward_alone_and_batched(kv: KvDType) {
    let m = model(ComputeDType::Q8_0);
    let Model::Cpu(_) = &m else {
        return; // no packed kernels on this CPU: the candle backend runs q8_0
    };
    let (a, c) = (prompt(21, 2), prompt(13, 3));
    // Alone: `a` then one decode token; `c` likewise.
    let mut alone = m.backend(64 << 20, kv, 512);
    let mut solo = Vec::new();
    for p in [&a, &c] {
        let mut toks = p.to_vec();
        let s = alone.start(&toks, 128, 0);
        run(&mut alone, s, &toks, 512);
        toks.push(42);
        solo.push(run(&mut alone, s, &toks, 1));
    }
    // Together: `a`'s decode token in the same step as `c`'s whole prompt, then `c`'s.
    let mut together = m.backend(64 << 20, kv, 512);
    let (mut ta, mut tc) = (a.to_vec(), c.to_vec());
    let (sa, sc) = (together.start(&ta, 128, 0), together.start(&tc, 128, 0));
    run(&mut together, sa, &ta, 512);
    ta.push(42);
    assert!(together.reserve(sa, 1) && together.reserve(sc, tc.len()));
    let step = [
        Work {
            seq: sa,
            tokens: &ta,
            n: 1,
            logits: 1,
        },
        Work {
            seq: sc,
            tokens: &tc,
            n: tc.len(),
            logits: 0,
        },
    ];
    let rows = together.forward(&step).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0], solo[0], "{kv}: a decode token in a batch with a prompt");
    tc.push(42);
    assert_eq!(run(&mut together, sc, &tc, 1), solo[1], "{kv}: after a batched prefill");
}
