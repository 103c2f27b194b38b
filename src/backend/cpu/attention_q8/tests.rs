//! The q8_0 attention kernels against their references.

use super::*;

/// A tile of `d` dimensions and `padded` positions with awkward values (every sign,
/// the extremes, -128 included) and its scales.
fn tile(d: usize, padded: usize, group: usize) -> (Vec<i8>, Vec<u16>) {
    let q = (0..d * padded)
        .map(|i| (((i * 53 + 7) % 256) as i32 - 128) as i8)
        .collect();
    let s = (0..d / group * padded)
        .map(|i| f16::from_f32(0.002 + (i % 11) as f32 * 0.013).to_bits())
        .collect();
    (q, s)
}

/// Every scoring kernel this CPU runs, the reference first.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // the x86 kernels join it
fn score_kernels() -> Vec<Dots> {
    let mut all: Vec<Dots> = vec![dots_portable, kernel()];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
    {
        all.push(dots_avx2);
    }
    all
}

/// Every value kernel this CPU runs, the reference first.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))] // the x86 kernels join it
fn value_kernels() -> Vec<Axpys> {
    let mut all: Vec<Axpys> = vec![axpys_portable, value_kernel()];
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        all.push(axpys_avx2);
    }
    all
}

#[test]
fn quantized_queries_are_within_half_a_step() {
    let x: Vec<f32> = (0..96).map(|i| ((i * 37) % 19) as f32 - 9.3).collect();
    let qq = QuantQuery::new(&x, 32);
    for (i, v) in x.iter().enumerate() {
        let back = f32::from(qq.q[i]) * qq.scales[i / 32];
        assert!((back - v).abs() <= qq.scales[i / 32] * 0.5 + 1e-6, "{i}");
    }
    assert!(QuantQuery::new(&[0.0; 32], 32).q.iter().all(|&q| q == 0));
}

#[test]
fn the_reference_is_the_dot_product_of_the_stored_values() {
    let (d, padded, group, heads) = (64, 16, 32, 2);
    let (kq, ks) = tile(d, padded, group);
    let x: Vec<f32> = (0..heads * d).map(|i| ((i * 29) % 23) as f32 - 11.0).collect();
    let qq = QuantQuery::new(&x, group);
    let k = KeyTile {
        q: &kq,
        scales: &ks,
        padded,
        group,
    };
    let mut out = vec![[0f32; LANES]; heads];
    dots_portable(&qq, k, 0, &mut out);
    for (g, row) in out.iter().enumerate() {
        for (p, got) in row.iter().enumerate() {
            let want: f64 = (0..d)
                .map(|i| {
                    let key = f64::from(kq[(i / 4) * padded * 4 + p * 4 + i % 4])
                        * f64::from(f16::from_bits(ks[(i / group) * padded + p]).to_f32());
                    let query = f64::from(qq.q[g * d + i]) * f64::from(qq.scales[g * d / group + i / group]);
                    key * query
                })
                .sum();
            assert!((f64::from(*got) - want).abs() <= 1e-5 * want.abs().max(1.0), "{g} {p}");
        }
    }
}

#[test]
fn every_value_kernel_gives_the_reference_s_bits_and_the_sum() {
    let kernels = value_kernels();
    for (d, group, heads, m) in [
        (64, 32, 4, 16),
        (64, 32, 3, 5),
        (8, 8, 1, 1),
        (96, 32, 5, 13),
        (24, 8, 8, 16),
        (16, 8, 2, 7),
        (48, 16, 3, 16),
        (128, 32, 3, 16),
        (32, 32, 2, 9),
        (128, 32, 4, 11),
        (64, 16, 4, 16),
    ] {
        let (q, scales) = tile(d, m, group);
        let v = ValueBlock {
            q: &q[..m * d],
            scales: &scales[..m * d / group],
            group,
        };
        let (len, at) = (m + 7, 3);
        // Weights of every size, some below 2^-100 (to zero) and some just above.
        let scores: Vec<f32> = (0..heads * len)
            .map(|i| ((i * 13) % 17) as f32 / 17.0 * [1.0, 1e-29, 1e-33][i % 3])
            .collect();
        let base: Vec<f32> = (0..heads * d).map(|i| i as f32 * 0.01).collect();
        let mut want = base.clone();
        let mut scratch = vec![0f32; value_scratch(m, d, group, heads)];
        axpys_portable((&scores, len, at), m, v, &mut want, &mut scratch);
        for (i, w) in want.iter().enumerate() {
            let (g, i) = (i / d, i % d);
            let terms: Vec<f64> = (0..m)
                .map(|p| {
                    let scale = f16::from_bits(scales[p * d / group + i / group]).to_f32();
                    f64::from(scores[g * len + at + p]) * f64::from(q[p * d + i]) * f64::from(scale)
                })
                .collect();
            let exact = terms.iter().sum::<f64>() + f64::from(base[g * d + i]);
            // Each weight rounded to bf16 (8 significant bits): within 2^-8 of itself.
            let bound = terms.iter().map(|t| t.abs()).sum::<f64>() / 256.0 + 1e-5 * exact.abs().max(1.0);
            assert!(
                (f64::from(*w) - exact).abs() <= bound,
                "d {d} g {g} i {i}: {w} vs {exact} (bound {bound})"
            );
        }
        for f in &kernels {
            let mut got = base.clone();
            f((&scores, len, at), m, v, &mut got, &mut scratch);
            assert_eq!(got, want, "d {d} group {group} heads {heads} m {m}");
        }
    }
}

#[test]
fn every_kernel_gives_the_reference_s_bits() {
    let kernels = score_kernels();
    for (d, padded, group, heads) in [
        (64, 16, 32, 4),
        (64, 32, 32, 3),
        (8, 16, 8, 1),
        (96, 16, 32, 5),
        (16, 16, 16, 8),
        (128, 32, 32, 3),
        (48, 48, 16, 2),
    ] {
        let (kq, ks) = tile(d, padded, group);
        let x: Vec<f32> = (0..heads * d).map(|i| ((i * 31) % 41) as f32 * 0.37 - 7.0).collect();
        let qq = QuantQuery::new(&x, group);
        let k = KeyTile {
            q: &kq,
            scales: &ks,
            padded,
            group,
        };
        for from in (0..padded).step_by(LANES) {
            let mut want = vec![[0f32; LANES]; heads];
            dots_portable(&qq, k, from, &mut want);
            for f in &kernels {
                let mut got = vec![[0f32; LANES]; heads];
                f(&qq, k, from, &mut got);
                assert_eq!(got, want, "d {d} padded {padded} heads {heads} from {from}");
            }
        }
    }
}

#[test]
fn the_rows_kernel_gives_each_row_s_bits() {
    for (d, padded, group, heads) in [
        (64, 16, 32, 4),
        (128, 32, 32, 3),
        (64, 16, 32, 2),
        (48, 16, 16, 2),
        (64, 16, 32, 5),
    ] {
        let (kq, ks) = tile(d, padded, group);
        let k = KeyTile {
            q: &kq,
            scales: &ks,
            padded,
            group,
        };
        for rows in [1, 2, 7] {
            let qs: Vec<QuantQuery> = (0..rows)
                .map(|r| {
                    let x: Vec<f32> = (0..heads * d)
                        .map(|i| ((i * 31 + r * 7) % 41) as f32 * 0.37 - 7.0)
                        .collect();
                    QuantQuery::new(&x, group)
                })
                .collect();
            // Rows that see all, some and none of the 16 positions; scores `len` apart.
            let (len, at, scale) = (40, 9, 0.125);
            let seen: Vec<usize> = (0..rows).map(|r| [len, at + 5, at, at + 16][r % 4]).collect();
            for from in (0..padded).step_by(LANES) {
                let mut want = vec![-1f32; rows * heads * len];
                for (r, q) in qs.iter().enumerate() {
                    let mut o = vec![[0f32; LANES]; heads];
                    dots_portable(q, k, from, &mut o);
                    for (h, o) in o.iter().enumerate() {
                        let valid = seen[r].saturating_sub(at).min(LANES);
                        for (s, x) in o.iter().take(valid).enumerate() {
                            want[(r * heads + h) * len + at + s] = x * scale;
                        }
                    }
                }
                for kernel in [rows_kernel(), dots_rows_each] {
                    let mut got = vec![-1f32; rows * heads * len];
                    let out = ScoreOut {
                        scores: &mut got,
                        len,
                        at,
                        seen: &seen,
                        scale,
                    };
                    kernel(&qs, k, from, out, &mut vec![[0f32; LANES]; rows * heads]);
                    assert_eq!(got, want, "d {d} heads {heads} rows {rows} from {from}");
                }
            }
        }
    }
}

#[test]
fn weights_round_to_the_nearest_bf16() {
    for x in [
        1.0f32,
        0.1,
        0.333_333,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        6.5e-3,
        0.999_99,
        3.0e-29,
    ] {
        assert_eq!(bf16_weight(x), half::bf16::from_f32(x).to_f32(), "{x}");
    }
    assert_eq!(bf16_weight(1e-31), 0.0);
    assert_eq!(bf16_weight(0.0), 0.0);
    assert!(bf16_weight(f32::NAN).is_nan());
}

/// A chunk of several blocks converted into pairs, rows seeing each length of it: the
/// reference's bits, the reference run block by block into a sum from zero that is added
/// to the row at the end.
#[cfg(target_arch = "x86_64")]
#[test]
fn bf16_pairs_give_the_reference_s_bits() {
    if !pairs::available() {
        eprintln!("skipped: no AVX-512 BF16");
        return;
    }
    for (d, group, heads, bs, n) in [
        (64, 32, 4, 16, 1024),
        (64, 32, 3, 16, 45),
        (128, 32, 3, 16, 32),
        (64, 16, 2, 8, 5),
        (128, 64, 4, 16, 1),
        (64, 32, 1, 16, 16),
        (64, 64, 2, 16, 40),
    ] {
        let (q, scales) = tile(d, n, group);
        let (mut converted, mut alone) = (pairs::Pairs::default(), pairs::Pairs::default());
        let Some(mut chunk) = converted.start(n, (d, group), bs) else {
            panic!("d {d} group {group}: the kernel refused the chunk");
        };
        // Positions `from..from + k` of the tile as a value block.
        let block = |from: usize, k: usize| ValueBlock {
            q: &q[from * d..(from + k) * d],
            scales: &scales[from * d / group..(from + k) * d / group],
            group,
        };
        for from in (0..n).step_by(bs) {
            let k = bs.min(n - from);
            chunk.push(block(from, k), k);
        }
        for m in [1, 2, bs + 1, n / 2 + 1, n] {
            let m = m.min(n);
            let (len, at) = (n + 5, 2);
            let scores: Vec<f32> = (0..heads * len)
                .map(|i| (((i * 13) % 17) as f32 / 17.0 + 1e-3) * [1.0, 1e-29, 1e-33][i % 3])
                .collect();
            let base: Vec<f32> = (0..heads * d).map(|i| i as f32 * 0.01).collect();
            let mut sums = vec![0f32; heads * d];
            for from in (0..m).step_by(bs) {
                let k = bs.min(m - from);
                let mut scratch = vec![0f32; value_scratch(k, d, group, heads)];
                axpys_portable((&scores, len, at + from), k, block(from, k), &mut sums, &mut scratch);
            }
            let want: Vec<f32> = base.iter().zip(&sums).map(|(b, s)| b + s).collect();
            let mut got = base.clone();
            chunk.add_row((&scores, len, at), m, heads, &mut got);
            assert_eq!(got, want, "d {d} group {group} heads {heads} n {n} m {m}");
            // A lone row's chunk of the first `m` positions, converted in registers.
            if pairs::converts_fast() {
                let blocks: Vec<_> = (0..m)
                    .step_by(bs)
                    .map(|f| (block(f, bs.min(m - f)), bs.min(m - f)))
                    .collect();
                let mut lone = base.clone();
                assert!(alone.add_lone(&blocks, (d, group), (&scores, len, at), heads, &mut lone));
                assert_eq!(lone, want, "alone: d {d} group {group} heads {heads} n {n} m {m}");
            }
        }
    }
}

/// A lone row over 4-bit values unpacked in registers ([`pairs::Pairs::add_lone_nibbles`])
/// gets the bits of the same row over the values unpacked into 8-bit blocks first (every
/// nibble, 1 to 4 heads, odd counts, head widths 64 and 128).
#[test]
#[cfg(target_arch = "x86_64")]
fn nibbles_unpacked_in_registers_give_the_unpacked_blocks_bits() {
    if !pairs::converts_fast() {
        eprintln!("skipped: no AVX-512 BF16 and VBMI");
        return;
    }
    let (group, bs) = (pairs::NIBBLE_GROUP, 16);
    for (d, heads, m) in [(64, 4, 1024), (64, 3, 45), (128, 2, 33), (64, 1, 17), (128, 4, 2)] {
        let q: Vec<u8> = (0..m * d / 2).map(|i| (i * 37 + 11) as u8).collect();
        let (_, scales) = tile(d, m, group);
        // The layout: for each group of 32, byte k holds dimension k (low) and k + 16 (high).
        let bytes: Vec<i8> = (0..m * d)
            .map(|at| {
                let (g, k) = (at / group, at % group);
                let byte = q[g * group / 2 + k % (group / 2)];
                (if k < group / 2 { byte & 0x0f } else { byte >> 4 }) as i8 - 8
            })
            .collect();
        let (len, at) = (m + 3, 1);
        let scores: Vec<f32> = (0..heads * len).map(|i| ((i * 13) % 17) as f32 / 17.0 + 1e-3).collect();
        let (mut a, mut b) = (pairs::Pairs::default(), pairs::Pairs::default());
        let firsts = (0..m).step_by(bs);
        let unpacked: Vec<_> = firsts
            .clone()
            .map(|f| {
                let k = bs.min(m - f);
                let block = ValueBlock {
                    q: &bytes[f * d..(f + k) * d],
                    scales: &scales[f * d / group..(f + k) * d / group],
                    group,
                };
                (block, k)
            })
            .collect();
        let nibbles: Vec<_> = firsts
            .map(|f| {
                let k = bs.min(m - f);
                let block = pairs::NibbleBlock {
                    q: &q[f * d / 2..(f + k) * d / 2],
                    scales: &scales[f * d / group..(f + k) * d / group],
                };
                (block, k)
            })
            .collect();
        let base: Vec<f32> = (0..heads * d).map(|i| i as f32 * 0.01).collect();
        let (mut want, mut got) = (base.clone(), base);
        assert!(a.add_lone(&unpacked, (d, group), (&scores, len, at), heads, &mut want));
        assert!(b.add_lone_nibbles(&nibbles, d, (&scores, len, at), heads, &mut got));
        let same = got.iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "d {d} heads {heads} m {m}");
    }
}

/// A lone row's scores over a chunk's tiles in one call are the rows kernel's, tile by
/// tile and 16 positions at a time (a short last tile, 1 to 4 heads, groups of 16 and 32).
#[test]
fn lone_scores_are_the_rows_kernel_s() {
    for (d, group, heads, counts) in [
        (64, 32, 4, vec![16, 16, 5]),
        (128, 32, 3, vec![16, 1]),
        (64, 16, 2, vec![16]),
        (64, 32, 1, vec![7]),
    ] {
        let (kq, ks) = tile(d, 16, group);
        let k = KeyTile {
            q: &kq,
            scales: &ks,
            padded: 16,
            group,
        };
        let x: Vec<f32> = (0..heads * d).map(|i| ((i * 29 % 61) as f32 - 30.0) / 9.0).collect();
        let q = QuantQuery::new(&x, group);
        let tiles: Vec<(KeyTile, usize)> = counts.iter().map(|&n| (k, n)).collect();
        let m: usize = counts.iter().sum();
        let (len, scale) = (m + 3, 0.125);
        let mut want = vec![0f32; heads * len];
        let mut partial = vec![[0f32; LANES]; heads];
        let mut at = 0;
        for &n in &counts {
            for from in (0..n).step_by(LANES) {
                let out = ScoreOut {
                    scores: &mut want,
                    len,
                    at: at + from,
                    seen: &[at + n],
                    scale,
                };
                rows_kernel()(std::slice::from_ref(&q), k, from, out, &mut partial);
            }
            at += n;
        }
        let mut got = vec![0f32; heads * len];
        if lone_scores(&q, heads, &tiles, (&mut got, len), scale) {
            assert_eq!(got, want, "d {d} group {group} heads {heads} counts {counts:?}");
        } else {
            eprintln!("skipped: no kernel for a lone row");
        }
    }
}
