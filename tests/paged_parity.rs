//! The batched forward pass over the paged KV pool, in exact f32, against transformers and
//! against the candle path; and a prefix-cache hit against a cold prefill.

mod common;

use common::*;
use llama32::kv::{BlockPool, KvDType, KvLayout};
use llama32::model::batch::BatchChunk;
use llama32::{ComputeDType, Engine, LoadOptions};

fn pool_for(engine: &Engine) -> BlockPool {
    let c = engine.config();
    let layout = KvLayout {
        layers: c.num_hidden_layers,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        block_size: 16,
    };
    BlockPool::new(layout, 128, KvDType::F32)
}

/// Runs `ids` after what `table` holds, in chunks of `chunk`; returns the last logits.
fn run(
    engine: &Engine,
    pool: &mut BlockPool,
    table: &mut llama32::kv::BlockTable,
    ids: &[u32],
    chunk: usize,
) -> Vec<f32> {
    let mut last = Vec::new();
    while table.len() < ids.len() {
        let n = chunk.min(ids.len() - table.len());
        assert!(pool.reserve(table, n));
        let start = table.len();
        let c = BatchChunk {
            table,
            tokens: &ids[start..start + n],
            logits: usize::from(start + n == ids.len()),
        };
        let mut out = engine.model().forward_batch(pool, &[c]).unwrap();
        pool.commit(table, ids, n);
        if let Some(l) = out.pop() {
            last = l;
        }
    }
    last
}

#[test]
fn paged_f32_logits_match_transformers_and_a_cached_prefix_changes_nothing() {
    let opts = LoadOptions {
        dtype: Some(ComputeDType::F32),
        ..Default::default()
    };
    for name in FIXTURES {
        let engine = Engine::load(&fixture(name), &opts).unwrap();
        assert!(engine.model().runs_batched());
        for case in expected(name).prompts {
            let ids = case.prompt_ids.clone();
            let mut pool = pool_for(&engine);
            let mut table = pool.start(&ids);
            let cold = run(&engine, &mut pool, &mut table, &ids, 100);
            let diff = rel_max_diff(&cold, &expected_logits(name, &case.name));
            println!("{name}/{}: paged f32 vs HF {diff:.2e}", case.name);
            assert!(diff < 1e-4, "{name}/{}: {diff:e}", case.name);
            pool.release(table, &ids);
            // The same prompt again: all but its last token come from the cache.
            let mut warm_table = pool.start(&ids);
            assert_eq!(warm_table.cached(), ids.len() - 1);
            let warm = run(&engine, &mut pool, &mut warm_table, &ids, 7);
            let d = rel_max_diff(&warm, &cold);
            assert!(d < 1e-5, "{name}/{}: cached vs cold {d:e}", case.name);
            pool.release(warm_table, &ids);
        }
    }
}
