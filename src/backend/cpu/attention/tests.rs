use super::super::kv_store::KvPool;
use super::*;
use crate::backend::candle::attention::{causal_mask, grouped_attention_slow};
use crate::kv::{BlockTable, KvDType, KvLayout};
use candle_core::{DType, Device, Tensor};

/// Writes `len` random positions into a fresh sequence of `pool`; returns the table and
/// the keys and values as `[kv_heads, len, d]` tensors.
fn fill(pool: &mut KvPool, len: usize) -> (BlockTable, Tensor, Tensor) {
    let l = pool.store().layout();
    let mut t = pool.start(&[], 0);
    assert!(pool.reserve(&mut t, len));
    let k = Tensor::randn(0f32, 1.0, (len, l.kv_heads * l.head_dim), &Device::Cpu).unwrap();
    let v = Tensor::randn(0f32, 1.0, (len, l.kv_heads * l.head_dim), &Device::Cpu).unwrap();
    let (kr, vr): (Vec<Vec<f32>>, Vec<Vec<f32>>) = (k.to_vec2().unwrap(), v.to_vec2().unwrap());
    for p in 0..len {
        pool.write(0, &t, p, &kr[p], &vr[p]);
    }
    let heads_first = |x: Tensor| {
        x.reshape((len, l.kv_heads, l.head_dim))
            .unwrap()
            .transpose(0, 1)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    pool.commit(&mut t, &[], 0);
    (t, heads_first(k), heads_first(v))
}

/// A one-layer pool of `dtype` with `len` random positions of one sequence written, and `n`
/// random query rows (`heads` heads of `d`), the last `n` positions' causal rows.
fn filled(
    (heads, kv_heads, d): (usize, usize, usize),
    (len, n): (usize, usize),
    dtype: KvDType,
) -> (KvPool, BlockTable, Vec<f32>) {
    let layout = KvLayout {
        layers: 1,
        kv_heads,
        head_dim: d,
        block_size: 16,
    };
    let mut pool = KvPool::new(layout, len.div_ceil(16) + 1, dtype);
    let (table, _, _) = fill(&mut pool, len);
    let q = Tensor::randn(0f32, 1.0, (n * heads * d,), &Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap();
    (pool, table, q)
}

/// The causal rows of the last `n` of `len` positions of `table`'s sequence.
fn causal_rows(table: &BlockTable, len: usize, n: usize) -> Vec<AttnRow<'_>> {
    (0..n)
        .map(|i| AttnRow {
            blocks: table.blocks(),
            len: len - n + i + 1,
        })
        .collect()
}

/// Straightforward attention (candle's, in f32) of `n` query rows (`[n, heads, d]`) over
/// keys and values `[kv_heads, len, d]`, the rows the last `n` positions' causal ones:
/// `[n, heads, d]`, flat.
fn reference_attention(q: Vec<f32>, (n, heads, d): (usize, usize, usize), (k, v): (&Tensor, &Tensor)) -> Vec<f32> {
    let len = k.dim(1).unwrap();
    let qh = Tensor::from_vec(q, (n, heads, d), &Device::Cpu)
        .unwrap()
        .transpose(0, 1)
        .unwrap()
        .contiguous()
        .unwrap();
    let mask = causal_mask(n, len - n, DType::F32, &Device::Cpu).unwrap();
    let want = grouped_attention_slow(&qh, k, v, (n > 1).then_some(&mask)).unwrap();
    want.transpose(0, 1).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// The largest difference between `a` and `b`, element by element.
fn max_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn exp_neg_is_within_two_ulp_of_exp() {
    let mut x = 0f32;
    while x > -87.0 {
        let (got, want) = (exp_neg(x), x.exp());
        assert!((got - want).abs() <= 2.5 * f32::EPSILON * want, "{x}: {got} vs {want}");
        x -= 0.013;
    }
    assert_eq!(exp_neg(-1000.0), exp_neg(-87.0));
}

#[test]
fn paged_attention_matches_the_straightforward_one() {
    let cases: [(usize, usize, usize, usize); 11] = [
        (4, 2, 1, 1),
        (4, 2, 37, 5),
        (6, 3, 16, 16),
        (2, 2, 50, 3),
        (8, 1, 33, 33),
        (12, 3, 40, 9),
        (6, 2, 21, 4),
        // Past one chunk of the online softmax (1024 positions): rows whose maximum rises in a
        // later chunk, rows that end inside a chunk and on its edge.
        (4, 2, 2100, 60),
        (8, 2, 1040, 17),
        (2, 2, 1100, 3),
        // A lone row (a decoding step) over three chunks.
        (8, 2, 2100, 1),
    ];
    for (((heads, kv_heads, len, n), (dtype, tol)), d) in cases
        .into_iter()
        .flat_map(|c| {
            [
                (c, (KvDType::F32, 1e-5f32)),
                (c, (KvDType::F16, 1e-2)),
                (c, (KvDType::Q8_0, 6e-2)),
                (c, (KvDType::Q8Q4, 0.45)),
            ]
        })
        .flat_map(|c| [(c, 8), (c, 64)])
    {
        let layout = KvLayout {
            layers: 1,
            kv_heads,
            head_dim: d,
            block_size: 16,
        };
        let mut pool = KvPool::new(layout, len.div_ceil(16) + 1, dtype);
        let (table, k, v) = fill(&mut pool, len);
        // The last `n` positions as queries, causal.
        let q: Vec<f32> = Tensor::randn(0f32, 1.0, (n * heads * d,), &Device::Cpu)
            .unwrap()
            .to_vec1()
            .unwrap();
        let got = attend_rows(pool.store(), 0, &q, &causal_rows(&table, len, n), heads, Vec::new());
        let err = max_error(&got, &reference_attention(q, (n, heads, d), (&k, &v)));
        assert!(
            err < tol,
            "{dtype:?} heads {heads} kv {kv_heads} len {len} n {n} d {d}: {err}"
        );
    }
}

/// The AVX-512 kernels that read an f16 pool in place give the same bits as converting
/// each block first (the portable loops), on every group size they take.
#[test]
#[cfg(target_arch = "x86_64")]
fn f16_in_place_equals_converted_blocks() {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        eprintln!("no AVX-512F: in-place f16 kernels not covered on this machine");
        return;
    }
    let cases: Vec<_> = [
        (4, 1, 1, 1),
        (8, 2, 37, 5),
        (6, 2, 16, 16),
        (2, 2, 50, 3),
        (12, 4, 70, 8),
        (8, 2, 1100, 1),
    ]
    .into_iter()
    .flat_map(|(heads, kv_heads, len, n)| [16, 64].map(|d| (heads, kv_heads, len, n, d)))
    .collect();
    for_each_tile(KvDType::F16, &cases, |t, case| {
        // SAFETY: AVX-512F checked above.
        let fast = unsafe { tile_avx512(t) };
        assert!(same_bits(&fast, &tile_body(t, Kernels::default())), "{case}");
    });
}

/// Each KV head's tile of the causal rows of every case `(heads, kv_heads, len, n, d)`, on a
/// fresh pool of `dtype`, handed to `check` with words naming it.
#[cfg(target_arch = "x86_64")]
fn for_each_tile(dtype: KvDType, cases: &[(usize, usize, usize, usize, usize)], mut check: impl FnMut(&Tile, &str)) {
    for &(heads, kv_heads, len, n, d) in cases {
        let (pool, table, q) = filled((heads, kv_heads, d), (len, n), dtype);
        let rows = causal_rows(&table, len, n);
        for kv in 0..kv_heads {
            let t = Tile {
                pool: pool.store(),
                layer: 0,
                kv,
                rows: &rows,
                q: &q,
                heads,
            };
            check(
                &t,
                &format!("{dtype:?} heads {heads} kv {kv_heads} len {len} n {n} d {d}"),
            );
        }
    }
}

/// Each row gets the same bits in a tile of many rows (runs of rows scored and added
/// together; a q8_0 pool's values converted once per block) as alone (a q8_0 pool's values
/// converted in registers), for every storage and group size: what keeps results
/// independent of how a prompt is chunked.
#[test]
fn rows_are_the_same_alone_and_in_a_tile() {
    for dtype in [KvDType::F32, KvDType::F16, KvDType::Q8_0, KvDType::Q8Q4] {
        for (heads, kv_heads, len, n, d) in [
            (8, 2, 37, 8, 64),
            (6, 2, 40, 5, 64),
            (4, 2, 21, 3, 32),
            (8, 1, 33, 4, 64),
            (4, 2, 19, 6, 8),
            (3, 3, 50, 16, 16),
            (10, 2, 70, 16, 16),
            (8, 2, 2100, 60, 64),
        ] {
            let (pool, table, q) = filled((heads, kv_heads, d), (len, n), dtype);
            let rows = causal_rows(&table, len, n);
            let together = attend_rows(pool.store(), 0, &q, &rows, heads, Vec::new());
            let width = heads * d;
            for (i, row) in rows.iter().enumerate() {
                let q = &q[i * width..(i + 1) * width];
                let alone = attend_rows(pool.store(), 0, q, std::slice::from_ref(row), heads, Vec::new());
                let same = alone
                    .iter()
                    .zip(&together[i * width..(i + 1) * width])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{dtype:?} heads {heads} kv {kv_heads} len {len} row {i} d {d}");
            }
        }
    }
}

/// A tile through the AVX2 kernels (and the AVX-512 ones where the CPU has them) gives the
/// generic loops' bits for every storage and group size (runs of rows, the diagonal block's
/// partial rows, block edges).
#[test]
#[cfg(target_arch = "x86_64")]
fn avx2_tiles_equal_the_generic_loops() {
    let Some(cpu) = avx2_fma("tile") else { return };
    let cases = [
        (32, 8, 70, 16, 64),
        (24, 8, 45, 13, 64),
        (4, 2, 33, 16, 16),
        (5, 1, 20, 7, 32),
        (32, 8, 70, 1, 64),
        (24, 8, 50, 1, 128),
        (24, 8, 50, 9, 128),
        (6, 2, 17, 1, 16),
        // Past one chunk of positions (1024): runs of rows and lone rows, groups of 4, 3 and
        // 5 (row by row in the loops).
        (8, 2, 1100, 5, 64),
        (8, 2, 1100, 1, 64),
        (6, 2, 1100, 1, 64),
        (5, 1, 1100, 7, 32),
    ];
    for dtype in [KvDType::F32, KvDType::F16, KvDType::Q8_0, KvDType::Q8Q4] {
        for_each_tile(dtype, &cases, |t, case| {
            let slow = tile_body(t, Kernels::default());
            // SAFETY: AVX2 and FMA checked above.
            let fast = unsafe { tile_avx2(t, cpu) };
            assert!(same_bits(&fast, &slow), "{case}");
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F checked just above.
                let wide = unsafe { tile_avx512(t) };
                assert!(same_bits(&wide, &slow), "AVX-512 {case}");
            }
        });
    }
}

/// The generic value loops for a group of 2 to 4 heads.
#[cfg(target_arch = "x86_64")]
fn generic_axpys(group: usize, scores: (&[f32], usize, usize), m: usize, v: &[f32], orow: &mut [f32]) {
    match group {
        2 => group_axpys_loops::<2>(scores, m, v, orow),
        3 => group_axpys_loops::<3>(scores, m, v, orow),
        _ => group_axpys_loops::<4>(scores, m, v, orow),
    }
}

/// `n` values in [-1.5, 1.6) that repeat every 97 (`k` sets the pattern).
#[cfg(target_arch = "x86_64")]
fn wave(n: usize, k: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * k + 3) % 97) as f32 / 31.0 - 1.5).collect()
}

/// [`wave`] rounded to f16: the values as f32 and as f16 bits.
#[cfg(target_arch = "x86_64")]
fn halves(n: usize, k: usize) -> (Vec<f32>, Vec<u16>) {
    let h: Vec<half::f16> = wave(n, k).into_iter().map(half::f16::from_f32).collect();
    (
        h.iter().map(|x| x.to_f32()).collect(),
        h.iter().map(|x| x.to_bits()).collect(),
    )
}

/// This CPU's proof of AVX2 and FMA, or `None` with a line saying what goes uncovered.
#[cfg(target_arch = "x86_64")]
fn avx2_fma(what: &str) -> Option<Avx2Fma> {
    let cpu = Avx2Fma::detect();
    if cpu.is_none() {
        eprintln!("no AVX2 and FMA: the AVX2 {what} kernel is not covered on this machine");
    }
    cpu
}

/// A batched scoring kernel: query vectors against 16 positions; `false` where it refuses
/// the shape.
#[cfg(target_arch = "x86_64")]
type BatchDots = Box<dyn Fn(&[&[f32]], (Block, usize), &mut [[f32; LANES]]) -> bool>;

/// A batched value kernel; `false` where it refuses the shape.
#[cfg(target_arch = "x86_64")]
type BatchAxpys = Box<dyn Fn(&[&[f32]], (Block, usize), (&mut [f32], &[usize])) -> bool>;

/// The batched kernels this CPU runs: AVX2, and AVX-512 where present (which takes head
/// widths that are multiples of 32 only in its value kernel).
#[cfg(target_arch = "x86_64")]
fn batched_kernels(what: &str) -> Vec<(&'static str, BatchDots, BatchAxpys)> {
    let mut all: Vec<(&'static str, BatchDots, BatchAxpys)> = Vec::new();
    if let Some(cpu) = avx2_fma(what) {
        all.push((
            "AVX2",
            Box::new(move |q, k, o| super::super::attention_avx2::dots(cpu, q, k, o)),
            Box::new(move |w, v, o| super::super::attention_avx2::axpys(cpu, w, v, o)),
        ));
    }
    if let Some(cpu) = Avx512::detect() {
        all.push((
            "AVX-512",
            Box::new(move |q, k, o| super::super::attention_avx512::dots(cpu, q, k, o)),
            Box::new(move |w, v, o| super::super::attention_avx512::axpys(cpu, w, v, o)),
        ));
    }
    all
}

/// The batched value kernels (AVX2, and AVX-512 where present) give the generic loops' bits
/// for a group's heads (2 to 4) and for runs of several rows' heads (more than one call's
/// six), at awkward block lengths, into outputs in any order.
#[test]
#[cfg(target_arch = "x86_64")]
fn batched_value_kernels_equal_the_generic_loops() {
    for (name, _, axpys) in batched_kernels("value") {
        value_kernel_equals_the_generic_loops(name, &axpys);
    }
}

/// [`batched_value_kernels_equal_the_generic_loops`] for one kernel.
#[cfg(target_arch = "x86_64")]
fn value_kernel_equals_the_generic_loops(name: &str, axpys: &BatchAxpys) {
    for vectors in [1, 2, 3, 4, 5, 6, 7, 13] {
        for (m, d) in [(1, 16), (7, 64), (16, 64), (13, 128), (16, 32), (5, 48)] {
            let stride = 16;
            let w = wave(vectors * stride, 7);
            let ws: Vec<&[f32]> = (0..vectors).map(|n| &w[n * stride..][..m]).collect();
            let at: Vec<usize> = (0..vectors).map(|n| (vectors - 1 - n) * d).collect();
            let (v, bits) = halves(m * d, 13);
            let mut slow = wave(vectors * d, 5);
            let base = slow.clone();
            if (2..=4).contains(&vectors) {
                // One row's heads: the group loops, outputs in head order.
                let mut group = slow.clone();
                let at: Vec<usize> = (0..vectors).map(|n| n * d).collect();
                generic_axpys(vectors, (&w, stride, 0), m, &v, &mut group);
                let mut heads = slow.clone();
                if axpys(&ws, (Block::F32(&v), d), (&mut heads, &at)) {
                    assert!(same_bits(&group, &heads), "{name} heads {vectors} m {m} d {d}");
                }
            }
            for (wn, &o) in ws.iter().zip(&at) {
                group_axpys_loops::<1>((wn, m, 0), m, &v, &mut slow[o..o + d]);
            }
            for block in [Block::F32(&v), Block::F16(&bits)] {
                let mut fast = base.clone();
                let took = axpys(&ws, (block, d), (&mut fast, &at));
                assert!(
                    took || (name == "AVX-512" && d % 32 != 0),
                    "{name} {block:?} vectors {vectors} m {m} d {d}: the kernel refused the shape"
                );
                assert!(!took || same_bits(&slow, &fast), "{name} vectors {vectors} m {m} d {d}");
            }
        }
    }
}

/// The batched scoring kernels (AVX2, and AVX-512 where present) give the generic loops'
/// bits for a group's heads (2 to 4) and for
/// runs of several rows' heads.
#[test]
#[cfg(target_arch = "x86_64")]
fn batched_scoring_kernels_equal_the_generic_loops() {
    for (name, dots, _) in batched_kernels("scoring") {
        scoring_kernel_equals_the_generic_loops(name, &dots);
    }
}

/// [`batched_scoring_kernels_equal_the_generic_loops`] for one kernel.
#[cfg(target_arch = "x86_64")]
fn scoring_kernel_equals_the_generic_loops(name: &str, dots: &BatchDots) {
    for vectors in [1, 2, 3, 4, 5, 6, 7, 12, 13, 25] {
        for (d, stride) in [(1, 16), (8, 16), (64, 32), (128, 16)] {
            let (qr, (kt, bits)) = (wave(vectors * d, 7), halves((d - 1) * stride + LANES, 13));
            let qs: Vec<&[f32]> = qr.chunks(d).collect();
            let mut slow = vec![[0f32; LANES]; vectors];
            match vectors {
                2 => group_dots_loops::<2>(&qr, &kt, stride, &mut slow),
                3 => group_dots_loops::<3>(&qr, &kt, stride, &mut slow),
                4 => group_dots_loops::<4>(&qr, &kt, stride, &mut slow),
                _ => {
                    for (q, o) in qs.iter().zip(slow.iter_mut()) {
                        group_dots_loops::<1>(q, &kt, stride, std::slice::from_mut(o));
                    }
                }
            }
            for block in [Block::F32(&kt), Block::F16(&bits)] {
                let mut fast = vec![[1f32; LANES]; vectors];
                let took = dots(&qs, (block, stride), &mut fast);
                assert!(
                    took,
                    "{name} vectors {vectors} d {d} stride {stride}: the kernel refused the shape"
                );
                assert!(
                    same_bits(slow.as_flattened(), fast.as_flattened()),
                    "{name} {block:?} vectors {vectors} d {d} stride {stride}"
                );
            }
        }
    }
}

/// Whether `a` and `b` hold the same floats, bit for bit.
#[cfg(target_arch = "x86_64")]
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Times a 512-row prompt chunk at depth 4096 (and 16384 for the 1B) and one row there (a
/// decoding step), with the 1B's 32 query heads and the 3B's 24 over 8 KV heads of 64, and
/// prints cycles per (head, position) pair at 3 GHz:
/// `cargo test --release --lib attention_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_timing() {
    for (dtype, heads, len) in [
        (KvDType::Q8_0, 32, 4096),
        (KvDType::F16, 32, 4096),
        (KvDType::Q8_0, 24, 4096),
        (KvDType::F16, 24, 4096),
        (KvDType::Q8_0, 32, 16384),
        (KvDType::F16, 32, 16384),
        (KvDType::Q8Q4, 32, 4096),
        (KvDType::Q8Q4, 32, 16384),
    ] {
        let n = 512;
        let layout = KvLayout {
            layers: 1,
            kv_heads: 8,
            head_dim: 64,
            block_size: 16,
        };
        let mut pool = KvPool::new(layout, len / 16 + 1, dtype);
        let (table, _, _) = fill(&mut pool, len);
        let q: Vec<f32> = (0..n * heads * 64)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
            .collect();
        // The chunk's rows, then the last row alone (a decoding step at that depth).
        for n in [n, 1] {
            let rows = causal_rows(&table, len, n);
            let q = &q[..n * heads * 64];
            let pairs: usize = rows.iter().map(|r| r.len).sum::<usize>() * heads;
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = std::time::Instant::now();
                for _ in 0..512 / n {
                    std::hint::black_box(attend_rows(pool.store(), 0, q, &rows, heads, Vec::new()));
                }
                best = best.min(t.elapsed().as_secs_f64() / (512 / n) as f64);
            }
            eprintln!(
                "{dtype:?} {heads} heads, {n} rows at {len}: {:.2} ms, {:.2} cycles/pair",
                best * 1e3,
                cycles_per_pair(best, pairs as f64)
            );
        }
    }
}

/// One decoding row at depth through all 16 layers of a 1B-shaped pool, whose keys and
/// values (570 MB at 32k with q8_0) do not fit the caches: what a decoding step's attention
/// reads from memory; last, one layer at 4096 positions (4.4 MB with q8_0, 8.7 MB with the
/// 3B's heads) on one thread, again and again from the caches: the attention's arithmetic
/// alone.
/// `cargo test --release --lib decode_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_timing() {
    for (dtype, len) in [
        (KvDType::Q8_0, 16384),
        (KvDType::Q8Q4, 16384),
        (KvDType::Q8_0, 32768),
        (KvDType::Q8Q4, 32768),
        (KvDType::F16, 32768),
    ] {
        let (ms, cycles) = one_row_timing(dtype, (32, 64), len, 16, 5);
        eprintln!("{dtype:?} one row at {len}, 16 layers: {ms:.2} ms, {cycles:.2} cycles/pair");
    }
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build();
    let one = one.unwrap_or_else(|e| panic!("a one-thread pool: {e}"));
    for (shape, name) in [((32, 64), "1B"), ((24, 128), "3B")] {
        let (ms, cycles) = one.install(|| one_row_timing(KvDType::Q8_0, shape, 4096, 1, 400));
        eprintln!("Q8_0 one {name} row at 4096, 1 layer, 1 thread, cached: {ms:.3} ms, {cycles:.2} cycles/pair");
    }
}

/// The best of `reps` times (ms) of one row's attention at depth `len` through `layers`
/// layers of a pool of `dtype` with 8 KV heads and the query `heads` of `head_dim` (the 1B's
/// 32 of 64, the 3B's 24 of 128), and its cycles per pair.
fn one_row_timing(
    dtype: KvDType,
    (heads, head_dim): (usize, usize),
    len: usize,
    layers: usize,
    reps: usize,
) -> (f64, f64) {
    let layout = KvLayout {
        layers,
        kv_heads: 8,
        head_dim,
        block_size: 16,
    };
    let mut pool = KvPool::new(layout, len / 16 + 1, dtype);
    let mut t = pool.start(&[], 0);
    assert!(pool.reserve(&mut t, len));
    let row: Vec<f32> = (0..8 * head_dim)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    for layer in 0..layers {
        for p in 0..len {
            pool.write(layer, &t, p, &row, &row);
        }
    }
    pool.commit(&mut t, &[], 0);
    let q: Vec<f32> = (0..heads * head_dim)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 40.0)
        .collect();
    let rows = causal_rows(&t, len, 1);
    let mut best = f64::MAX;
    for _ in 0..reps {
        let start = std::time::Instant::now();
        for layer in 0..layers {
            std::hint::black_box(attend_rows(pool.store(), layer, &q, &rows, heads, Vec::new()));
        }
        best = best.min(start.elapsed().as_secs_f64());
    }
    (best * 1e3, cycles_per_pair(best, (len * heads * layers) as f64))
}

/// Cycles per (query head, position) pair of the timing tests: `seconds` on every core of the
/// pool, taken at 3 GHz.
fn cycles_per_pair(seconds: f64, pairs: f64) -> f64 {
    seconds * 3e9 * rayon::current_num_threads() as f64 / pairs
}

/// Keys and values `[kv_heads, len, d]` as `pool` gives them back (dequantized, 4-bit
/// values rotated back), read block by block.
fn read_back(pool: &KvPool, table: &BlockTable, len: usize) -> (Tensor, Tensor) {
    let l = pool.store().layout();
    let (mut k, mut v) = (Vec::new(), Vec::new());
    let mut scratch = vec![0f32; l.head_dim * l.padded().max(l.block_size)];
    for h in 0..l.kv_heads {
        for pos in 0..len {
            let (block, slot) = pool.blocks().locate(table, pos);
            let keys = pool
                .store()
                .head_block((0, Part::Keys), block, h, slot + 1, &mut scratch);
            k.extend((0..l.head_dim).map(|i| keys[i * l.padded() + slot]));
            let values = pool
                .store()
                .head_block((0, Part::Values), block, h, slot + 1, &mut scratch);
            v.extend_from_slice(&values[slot * l.head_dim..(slot + 1) * l.head_dim]);
        }
    }
    let shape = (l.kv_heads, len, l.head_dim);
    (
        Tensor::from_vec(k, shape, &Device::Cpu).unwrap(),
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap(),
    )
}

/// Over 8-bit keys and 4-bit values, the integer kernels (values unpacked a chunk at a time,
/// the outputs rotated back) give the straightforward attention over the keys and values
/// the pool gives back, within what the query's 8 bits and the bf16 weights move: tiles,
/// lone rows, past one chunk, every head width the rotation takes.
#[test]
fn four_bit_values_read_in_place_equal_the_values_given_back() {
    for (heads, kv_heads, len, n, d) in [
        (8, 2, 37, 8, 64),
        (8, 2, 37, 1, 64),
        (4, 2, 21, 3, 32),
        (6, 2, 50, 1, 128),
        (3, 3, 40, 5, 16),
        (8, 2, 2100, 60, 64),
        (8, 2, 2100, 1, 64),
        (6, 2, 1100, 1, 64),
    ] {
        let (pool, table, q) = filled((heads, kv_heads, d), (len, n), KvDType::Q8Q4);
        assert_eq!(pool.store().dtype(), KvDType::Q8Q4);
        let rows = causal_rows(&table, len, n);
        let got = attend_rows(pool.store(), 0, &q, &rows, heads, Vec::new());
        let (k, v) = read_back(&pool, &table, len);
        let err = max_error(&got, &reference_attention(q, (n, heads, d), (&k, &v)));
        assert!(err < 2e-2, "heads {heads} kv {kv_heads} len {len} n {n} d {d}: {err}");
    }
}
