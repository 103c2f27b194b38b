use super::*;

fn pool(blocks: usize) -> BlockPool {
    let layout = KvLayout {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
        block_size: 4,
    };
    BlockPool::new(layout, blocks, KvDType::F32)
}

/// Runs `tokens` into a new sequence as if computed; returns its table.
fn run(p: &mut BlockPool, tokens: &[u32]) -> BlockTable {
    let mut t = p.start(tokens);
    let n = tokens.len() - t.len();
    assert!(p.reserve(&mut t, n));
    p.commit(&mut t, tokens, n);
    t
}

#[test]
fn grows_by_blocks_and_releases_everything() {
    let mut p = pool(8);
    let mut t = p.start(&[1, 2, 3]);
    assert_eq!((t.len(), t.cached()), (0, 0));
    assert!(p.reserve(&mut t, 3));
    assert_eq!(t.blocks().len(), 1);
    p.commit(&mut t, &[1, 2, 3], 3);
    assert!(p.reserve(&mut t, 1));
    assert_eq!(t.blocks().len(), 1, "position 3 still fits the first block");
    assert!(p.reserve(&mut t, 2));
    assert_eq!(t.blocks().len(), 2);
    assert_eq!(p.used(), 2);
    p.release(t, &[]);
    assert_eq!(p.used(), 0);
    assert_eq!(p.available(), 8);
}

#[test]
fn a_shared_prefix_is_reused_and_keeps_the_last_token_to_compute() {
    let mut p = pool(8);
    let a: Vec<u32> = (0..10).collect();
    let ta = run(&mut p, &a);
    // Same first 8 tokens (two full blocks), then different.
    let b: Vec<u32> = (0..8).chain([99, 98]).collect();
    let tb = p.start(&b);
    assert_eq!(tb.cached(), 8);
    assert_eq!(&tb.blocks()[..2], &ta.blocks()[..2]);
    // A prompt of exactly 8 cached tokens shares the first block and copies 3 positions of
    // the second: the last token must be computed for its logits.
    let tc = p.start(&a[..8]);
    assert_eq!(tc.cached(), 7);
    assert_ne!(tc.blocks()[1], ta.blocks()[1], "a partly used block is a copy");
    // Different first block: nothing shared.
    let td = p.start(&[7, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(td.cached(), 0);
    for t in [ta, tb, tc, td] {
        p.release(t, &[]);
    }
    assert_eq!(p.used(), 0);
}

#[test]
fn unused_cached_blocks_survive_until_evicted_least_recent_first() {
    let mut p = pool(4);
    let a: Vec<u32> = (0..9).collect(); // 2 full blocks + 1
    let ta = run(&mut p, &a);
    p.release(ta, &[]);
    assert_eq!(p.available(), 4);
    // Cached after release: a new identical prompt hits.
    let tb = p.start(&a);
    assert_eq!(tb.cached(), 8);
    p.release(tb, &[]);
    // Fill the pool with something else: the cached blocks are evicted to make room.
    let other: Vec<u32> = (100..116).collect();
    let to = run(&mut p, &other);
    assert_eq!(p.used(), 4);
    assert_eq!(p.start(&a).cached(), 0);
    p.release(to, &[]);
}

#[test]
fn reserve_refuses_without_taking_anything() {
    let mut p = pool(2);
    let mut t = p.start(&[1]);
    assert!(!p.reserve(&mut t, 9));
    assert_eq!(p.used(), 0);
    assert!(p.reserve(&mut t, 8));
    assert!(!p.reserve(&mut t, 9));
    p.release(t, &[]);
}

#[test]
fn writes_land_in_the_sequence_s_blocks() {
    let mut p = pool(4);
    let mut t = p.start(&[1, 2, 3, 4, 5]);
    assert!(p.reserve(&mut t, 5));
    let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    p.write(1, &t, 4, &k, &v);
    let (block, slot) = p.locate(&t, 4);
    assert_eq!(slot, 0);
    let mut scratch = vec![0f32; 64];
    let keys = p.head_block((1, Part::Keys), block, 1, slot + 1, &mut scratch).to_vec();
    let padded = p.layout().padded();
    let key: Vec<f32> = (0..4).map(|i| keys[i * padded + slot]).collect();
    assert_eq!(key, &k[4..8]);
    let values = p.head_block((1, Part::Values), block, 1, slot + 1, &mut scratch);
    assert_eq!(&values[slot * 4..slot * 4 + 4], &v[4..8]);
    p.release(t, &[]);
}

#[test]
fn a_partly_filled_last_block_is_copied_for_a_prompt_that_continues_it() {
    let mut p = pool(8);
    let a: Vec<u32> = (0..6).collect(); // one full block, then 2 positions
    let ta = run(&mut p, &a);
    let k: Vec<f32> = (0..8).map(|i| i as f32 + 0.5).collect();
    p.write(0, &ta, 5, &k, &k);
    p.release(ta, &a);
    // The next turn: the same 6 tokens and more.
    let b: Vec<u32> = (0..6).chain([50, 51]).collect();
    let tb = p.start(&b);
    assert_eq!(tb.cached(), 6);
    let (block, slot) = p.locate(&tb, 5);
    let mut scratch = vec![0f32; 64];
    let keys = p.head_block((0, Part::Keys), block, 0, slot + 1, &mut scratch);
    let padded = p.layout().padded();
    let key: Vec<f32> = (0..4).map(|i| keys[i * padded + slot]).collect();
    assert_eq!(key, &k[..4], "position 5 copied");
    p.release(tb, &b);
    // A prompt diverging inside the partial block copies only what it shares.
    let c: Vec<u32> = vec![0, 1, 2, 3, 4, 77, 78];
    let tc = p.start(&c);
    assert_eq!(tc.cached(), 5);
    p.release(tc, &c);
    assert_eq!(p.used(), 0);
}

#[test]
fn an_f16_pool_stores_half_precision() {
    let layout = KvLayout {
        layers: 1,
        kv_heads: 1,
        head_dim: 4,
        block_size: 4,
    };
    let mut p = BlockPool::new(layout, 2, KvDType::F16);
    let mut t = p.start(&[1]);
    assert!(p.reserve(&mut t, 1));
    let k = [1.0f32, 0.1, -2.5, 65504.0];
    p.write(0, &t, 0, &k, &k);
    let mut scratch = vec![0f32; 64];
    let got = p.head_block((0, Part::Values), t.blocks()[0], 0, 1, &mut scratch);
    for (g, w) in got.iter().zip(k) {
        assert_eq!(*g, half::f16::from_f32(w).to_f32());
    }
    assert_eq!(layout.block_bytes(KvDType::F16) * 2, layout.block_bytes(KvDType::F32));
    p.release(t, &[1]);
}
