use super::*;

fn pool(blocks: usize) -> KvPool {
    let layout = KvLayout {
        layers: 2,
        kv_heads: 2,
        head_dim: 4,
        block_size: 4,
    };
    KvPool::new(layout, blocks, KvDType::F32)
}

/// Runs `tokens` into a new sequence as if computed; returns its table.
fn run(p: &mut KvPool, tokens: &[u32]) -> BlockTable {
    let mut t = p.start(tokens, 0);
    let n = tokens.len() - t.len();
    assert!(p.reserve(&mut t, n));
    p.commit(&mut t, tokens, n);
    t
}

#[test]
fn writes_land_in_the_sequence_s_blocks() {
    let mut p = pool(4);
    let mut t = p.start(&[1, 2, 3, 4, 5], 0);
    assert!(p.reserve(&mut t, 5));
    let k: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let v: Vec<f32> = (0..8).map(|i| -(i as f32)).collect();
    p.write(1, &t, 4, &k, &v);
    let (block, slot) = p.blocks().locate(&t, 4);
    assert_eq!(slot, 0);
    let mut scratch = vec![0f32; 64];
    let keys = p
        .store()
        .head_block((1, Part::Keys), block, 1, slot + 1, &mut scratch)
        .to_vec();
    let padded = p.store().layout().padded();
    let key: Vec<f32> = (0..4).map(|i| keys[i * padded + slot]).collect();
    assert_eq!(key, &k[4..8]);
    let values = p
        .store()
        .head_block((1, Part::Values), block, 1, slot + 1, &mut scratch);
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
    let tb = p.start(&b, 0);
    assert_eq!(tb.cached(), 6);
    let (block, slot) = p.blocks().locate(&tb, 5);
    let mut scratch = vec![0f32; 64];
    let keys = p.store().head_block((0, Part::Keys), block, 0, slot + 1, &mut scratch);
    let padded = p.store().layout().padded();
    let key: Vec<f32> = (0..4).map(|i| keys[i * padded + slot]).collect();
    assert_eq!(key, &k[..4], "position 5 copied");
    p.release(tb, &b);
    // A prompt diverging inside the partial block copies only what it shares.
    let c: Vec<u32> = vec![0, 1, 2, 3, 4, 77, 78];
    let tc = p.start(&c, 0);
    assert_eq!(tc.cached(), 5);
    p.release(tc, &c);
    assert_eq!(p.blocks().used(), 0);
}

#[test]
fn an_f16_pool_stores_half_precision() {
    let layout = KvLayout {
        layers: 1,
        kv_heads: 1,
        head_dim: 4,
        block_size: 4,
    };
    let mut p = KvPool::new(layout, 2, KvDType::F16);
    let mut t = p.start(&[1], 0);
    assert!(p.reserve(&mut t, 1));
    let k = [1.0f32, 0.1, -2.5, 65504.0];
    p.write(0, &t, 0, &k, &k);
    let mut scratch = vec![0f32; 64];
    let got = p
        .store()
        .head_block((0, Part::Values), t.blocks()[0], 0, 1, &mut scratch);
    for (g, w) in got.iter().zip(k) {
        assert_eq!(*g, half::f16::from_f32(w).to_f32());
    }
    assert_eq!(layout.block_bytes(KvDType::F16) * 2, layout.block_bytes(KvDType::F32));
    p.release(t, &[1]);
}

/// A head's key and value at one position as read back from a pool, and as written.
struct ReadBack<'a> {
    pos: usize,
    got_k: &'a [f32],
    want_k: &'a [f32],
    got_v: &'a [f32],
    want_v: &'a [f32],
}

/// Writes a 37-position prompt (2 heads of `head_dim`, one value of each row 40 where the
/// rest lie within 4.5) into a new `dtype` pool of blocks of 16 and calls `check` on every
/// position and head read back; then again after the prefix cache hands the same positions
/// (the partial last block copied) to a longer prompt.
fn read_back_every_position(head_dim: usize, dtype: KvDType, check: impl Fn(ReadBack)) {
    let layout = KvLayout {
        layers: 1,
        kv_heads: 2,
        head_dim,
        block_size: 16,
    };
    let mut p = KvPool::new(layout, 8, dtype);
    assert_eq!(p.store().dtype(), dtype);
    let prompt: Vec<u32> = (0..37).collect();
    let mut t = p.start(&prompt, 0);
    assert!(p.reserve(&mut t, prompt.len()));
    let row = |pos: usize| -> Vec<f32> {
        (0..2 * head_dim)
            .map(|i| ((pos * 31 + i * 7) % 23) as f32 * 0.37 - 4.0 + if i == 5 { 40.0 } else { 0.0 })
            .collect()
    };
    for pos in 0..prompt.len() {
        p.write(0, &t, pos, &row(pos), &row(pos + 1000));
    }
    p.commit(&mut t, &prompt, prompt.len());
    let read = |p: &KvPool, t: &BlockTable, upto: usize| {
        let mut scratch = vec![0f32; 8192];
        let padded = layout.padded();
        for pos in 0..upto {
            let (block, slot) = p.blocks().locate(t, pos);
            let (k, v) = (row(pos), row(pos + 1000));
            for h in 0..2 {
                let keys = p
                    .store()
                    .head_block((0, Part::Keys), block, h, slot + 1, &mut scratch)
                    .to_vec();
                let got_k: Vec<f32> = (0..head_dim).map(|i| keys[i * padded + slot]).collect();
                let values = p
                    .store()
                    .head_block((0, Part::Values), block, h, slot + 1, &mut scratch);
                check(ReadBack {
                    pos,
                    got_k: &got_k,
                    want_k: &k[h * head_dim..(h + 1) * head_dim],
                    got_v: &values[slot * head_dim..(slot + 1) * head_dim],
                    want_v: &v[h * head_dim..(h + 1) * head_dim],
                });
            }
        }
    };
    read(&p, &t, prompt.len());
    p.release(t, &prompt);
    // The same prompt and more: the cached positions, the partial block copied.
    let longer: Vec<u32> = (0..40).collect();
    let t = p.start(&longer, 0);
    assert_eq!(t.cached(), 37);
    read(&p, &t, 37);
    p.release(t, &longer);
}

/// Asserts every value of `got` within half a step of `want`'s (the largest magnitude of
/// its group of `group` / 127).
fn within_half_a_step(got: &[f32], want: &[f32], group: usize, at: &str) {
    for (gs, ws) in got.chunks(group).zip(want.chunks(group)) {
        let step = ws.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        for (g, w) in gs.iter().zip(ws) {
            assert!((g - w).abs() <= 0.5 * step * 1.01 + 1e-6, "{at}: {g} vs {w}");
        }
    }
}

/// The 1B's layout, whose memory the quantized pools are held to.
const ONE_B: KvLayout = KvLayout {
    layers: 16,
    kv_heads: 8,
    head_dim: 64,
    block_size: 16,
};

/// q8_0: every value within half a step of its group's scale (largest magnitude / 127) of
/// what was written, keys and values, across block edges and prefix-cache copies; the
/// memory is a little over half of f16's.
#[test]
fn a_q8_0_pool_keeps_values_within_half_a_step() {
    for head_dim in [16, 64, 96] {
        let group = crate::kv::q8_group(head_dim).unwrap();
        read_back_every_position(head_dim, KvDType::Q8_0, |r| {
            let at = format!("d {head_dim} pos {}", r.pos);
            within_half_a_step(r.got_k, r.want_k, group, &at);
            within_half_a_step(r.got_v, r.want_v, group, &at);
        });
    }
    let (q8, f16) = (ONE_B.block_bytes(KvDType::Q8_0), ONE_B.block_bytes(KvDType::F16));
    assert!(q8 * 100 <= f16 * 54, "{q8} vs {f16}");
}

/// The budget's arithmetic ([`KvLayout::block_bytes`], which sizes the pool from
/// `--kv-memory`) is what the pool allocates, for every storage type and for heads narrower
/// than a q8_0 group of 32 or with none at all (stored as f16).
#[test]
fn the_layout_counts_the_bytes_the_pool_allocates() {
    for head_dim in [4, 8, 16, 24, 32, 64, 128] {
        for dtype in [KvDType::F16, KvDType::F32, KvDType::Q8_0, KvDType::Q8Q4] {
            let layout = KvLayout {
                layers: 3,
                kv_heads: 2,
                head_dim,
                block_size: 16,
            };
            let pool = KvPool::new(layout, 5, dtype);
            assert_eq!(
                pool.store().bytes(),
                5 * layout.block_bytes(dtype),
                "head_dim {head_dim} {dtype}"
            );
        }
    }
}

/// What llama.cpp's q4_0 rule (the value of largest magnitude at -8 steps) loses on each
/// group of `x` rotated, squared: the pool's choice of scale must lose no more.
fn q4_0_losses(x: &[f32], group: usize) -> Vec<f32> {
    let mut r = x.to_vec();
    q4::rotate(&mut r);
    r.chunks(group)
        .map(|g| {
            let max = g.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            let d = half::f16::from_f32(max / -8.0).to_f32();
            let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
            g.iter()
                .map(|v| (v - (((v * inv).round() + 8.0).clamp(0.0, 15.0) - 8.0) * d).powi(2))
                .sum()
        })
        .collect()
}

/// A pool of 8-bit keys and 4-bit values gives back keys within half a step and each head's
/// values rotated, quantized to 4 bits per group (losing no more than llama.cpp's q4_0
/// would) and rotated back, wherever they lie (across blocks, after the prefix cache copies
/// a partial block), within a bound of the originals; it takes 41% of f16's memory.
#[test]
fn a_q8_0_q4_0_pool_gives_back_rotated_4_bit_values() {
    for head_dim in [8, 32, 64, 128] {
        let group = crate::kv::q8_group(head_dim).unwrap();
        read_back_every_position(head_dim, KvDType::Q8Q4, |r| {
            let at = format!("d {head_dim} pos {}", r.pos);
            within_half_a_step(r.got_k, r.want_k, group, &at);
            // In the rotated coordinates, each group loses no more than llama.cpp's rule
            // would.
            let (mut got_r, mut want_r) = (r.got_v.to_vec(), r.want_v.to_vec());
            q4::rotate(&mut got_r);
            q4::rotate(&mut want_r);
            let losses = q4_0_losses(r.want_v, group);
            for ((gs, ws), bound) in got_r.chunks(group).zip(want_r.chunks(group)).zip(losses) {
                let loss: f32 = gs.iter().zip(ws).map(|(g, w)| (g - w).powi(2)).sum();
                assert!(loss <= bound * 1.001 + 1e-6, "{at}: {loss} vs {bound}");
            }
            let norm = r.want_v.iter().map(|w| w * w).sum::<f32>().sqrt();
            let err = r
                .got_v
                .iter()
                .zip(r.want_v)
                .map(|(g, w)| (g - w).powi(2))
                .sum::<f32>()
                .sqrt();
            assert!(err <= 0.2 * norm, "{at}: error {err} of {norm}");
        });
    }
    let (q4, f16) = (ONE_B.block_bytes(KvDType::Q8Q4), ONE_B.block_bytes(KvDType::F16));
    assert!(q4 * 100 <= f16 * 42, "{q4} vs {f16}");
    // Heads the rotation cannot take are kept in f16.
    let odd = KvLayout { head_dim: 24, ..ONE_B };
    assert_eq!(KvPool::new(odd, 2, KvDType::Q8Q4).store().dtype(), KvDType::F16);
}

#[test]
fn the_rotation_is_its_own_inverse_and_keeps_lengths() {
    for n in [8, 64, 128] {
        let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        let mut y = x.clone();
        q4::rotate(&mut y);
        let (nx, ny) = (
            x.iter().map(|v| v * v).sum::<f32>(),
            y.iter().map(|v| v * v).sum::<f32>(),
        );
        assert!((nx - ny).abs() <= 1e-4 * nx);
        q4::rotate(&mut y);
        x.iter().zip(&y).for_each(|(a, b)| assert!((a - b).abs() < 1e-4));
    }
}
