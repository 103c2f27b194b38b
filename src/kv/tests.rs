use super::*;

fn pool(blocks: usize) -> BlockPool {
    let layout = KvLayout {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
        block_size: 4,
    };
    BlockPool::new(layout, blocks)
}

/// Runs `tokens` into a new sequence as if computed; returns its table.
fn run(p: &mut BlockPool, tokens: &[u32]) -> BlockTable {
    let (mut t, _) = p.start(tokens, 0);
    let n = tokens.len() - t.len();
    assert!(p.reserve(&mut t, n));
    p.commit(&mut t, tokens, n);
    t
}

#[test]
fn grows_by_blocks_and_releases_everything() {
    let mut p = pool(8);
    let (mut t, _) = p.start(&[1, 2, 3], 0);
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
    let (tb, _) = p.start(&b, 0);
    assert_eq!(tb.cached(), 8);
    assert_eq!(&tb.blocks()[..2], &ta.blocks()[..2]);
    // A prompt of exactly 8 cached tokens shares the first block and copies 3 positions of
    // the second: the last token must be computed for its logits.
    let (tc, _) = p.start(&a[..8], 0);
    assert_eq!(tc.cached(), 7);
    assert_ne!(tc.blocks()[1], ta.blocks()[1], "a partly used block is a copy");
    // Different first block: nothing shared.
    let (td, _) = p.start(&[7, 1, 2, 3, 4, 5, 6, 7, 8], 0);
    assert_eq!(td.cached(), 0);
    // Another cache scope (another tenant): nothing shared, not even the partial block.
    let (te, copy) = p.start(&b, 7);
    assert_eq!((te.cached(), copy.is_none()), (0, true));
    for t in [ta, tb, tc, td, te] {
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
    let (tb, _) = p.start(&a, 0);
    assert_eq!(tb.cached(), 8);
    p.release(tb, &[]);
    // Fill the pool with something else: the cached blocks are evicted to make room.
    let other: Vec<u32> = (100..116).collect();
    let to = run(&mut p, &other);
    assert_eq!(p.used(), 4);
    assert_eq!(p.start(&a, 0).0.cached(), 0);
    p.release(to, &[]);
}

#[test]
fn reserve_refuses_without_taking_anything() {
    let mut p = pool(2);
    let (mut t, _) = p.start(&[1], 0);
    assert!(!p.reserve(&mut t, 9));
    assert_eq!(p.used(), 0);
    assert!(p.reserve(&mut t, 8));
    assert!(!p.reserve(&mut t, 9));
    p.release(t, &[]);
}

#[test]
fn a_continued_partial_block_asks_for_a_copy() {
    let mut p = pool(8);
    let a: Vec<u32> = (0..6).collect(); // one full block, then 2 positions
    let ta = run(&mut p, &a);
    let partial = ta.blocks()[1];
    p.release(ta, &a);
    let b: Vec<u32> = (0..6).chain([50, 51]).collect();
    let (tb, copy) = p.start(&b, 0);
    let copy = copy.expect("a copy of the partial block");
    assert_eq!((copy.from, copy.positions), (partial, 2));
    assert_eq!(tb.blocks()[1], copy.to);
    p.release(tb, &b);
}
