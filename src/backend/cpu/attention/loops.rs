//! The plain loops of attention: the references of the AVX2 and AVX-512 kernels (the same
//! fused multiply-adds in the same order, so the same bits), and what other CPUs run. Each is
//! inlined into its caller, so that it vectorises for the caller's target features.

/// Positions scored at once.
pub(super) const LANES: usize = 16;

/// The scores of `G` query heads (`qr: [G * d]`) against 16 positions of transposed keys
/// (`kt[i * stride..]`): one chain of fused multiply-adds over `i` in order per head and
/// position, each key vector loaded once for the `G` heads.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn group_dots_loops<const G: usize>(qr: &[f32], kt: &[f32], stride: usize, out: &mut [[f32; LANES]]) {
    let d = qr.len() / G;
    let mut acc = [[0f32; LANES]; G];
    for i in 0..d {
        let k = &kt[i * stride..i * stride + LANES];
        for g in 0..G {
            let qv = qr[g * d + i];
            for s in 0..LANES {
                acc[g][s] = qv.mul_add(k[s], acc[g][s]);
            }
        }
    }
    out[..G].copy_from_slice(&acc);
}

/// For `G` query heads, `orow: [G * d]` gains `sum_s w_g[s] * v[s]` with `w_g = scores[g *
/// len + at..][..m]`: per head and 16 dimensions one chain of fused multiply-adds over the
/// positions in order, added to the output at the end; each value vector loaded once for
/// the `G` heads.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn group_axpys_loops<const G: usize>(
    (scores, len, at): (&[f32], usize, usize),
    m: usize,
    v: &[f32],
    orow: &mut [f32],
) {
    let d = orow.len() / G;
    for c in 0..d / LANES {
        let mut acc = [[0f32; LANES]; G];
        for s in 0..m {
            let vr = &v[s * d + c * LANES..s * d + (c + 1) * LANES];
            for g in 0..G {
                let w = scores[g * len + at + s];
                for l in 0..LANES {
                    acc[g][l] = w.mul_add(vr[l], acc[g][l]);
                }
            }
        }
        for g in 0..G {
            let o = &mut orow[g * d + c * LANES..g * d + (c + 1) * LANES];
            for l in 0..LANES {
                o[l] += acc[g][l];
            }
        }
    }
    for i in d / LANES * LANES..d {
        for g in 0..G {
            for s in 0..m {
                orow[g * d + i] = scores[g * len + at + s].mul_add(v[s * d + i], orow[g * d + i]);
            }
        }
    }
}

/// `LANES` dot products at once: `q` against columns `0..LANES` of the rows
/// `kt[i * stride..]` (`i < q.len()`). Four independent accumulators (over `i mod 4`,
/// added in a fixed order at the end) keep the FMA units busy instead of waiting on one
/// chain.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn lane_dots(q: &[f32], kt: &[f32], stride: usize) -> [f32; LANES] {
    let mut acc = [[0f32; LANES]; 4];
    let quads = q.len() / 4;
    for i4 in 0..quads {
        for u in 0..4 {
            let i = 4 * i4 + u;
            let (qv, k) = (q[i], &kt[i * stride..i * stride + LANES]);
            for s in 0..LANES {
                acc[u][s] = qv.mul_add(k[s], acc[u][s]);
            }
        }
    }
    for i in 4 * quads..q.len() {
        let (qv, k) = (q[i], &kt[i * stride..i * stride + LANES]);
        for s in 0..LANES {
            acc[0][s] = qv.mul_add(k[s], acc[0][s]);
        }
    }
    let mut out = [0f32; LANES];
    for s in 0..LANES {
        out[s] = (acc[0][s] + acc[1][s]) + (acc[2][s] + acc[3][s]);
    }
    out
}

/// `o += sum_s w[s] * v[s]` for the rows `v[s * d..]` (`d = o.len()`), 16 output lanes at a
/// time with four accumulators (over `s mod 4`, added in a fixed order), so that the
/// block's positions do not wait on one another.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
pub(super) fn lane_axpys(w: &[f32], v: &[f32], o: &mut [f32]) {
    let (d, m) = (o.len(), w.len());
    let quads = m / 4;
    for c in 0..d / LANES {
        let mut acc = [[0f32; LANES]; 4];
        for s4 in 0..quads {
            for u in 0..4 {
                let s = 4 * s4 + u;
                let (wv, vr) = (w[s], &v[s * d + c * LANES..s * d + (c + 1) * LANES]);
                for l in 0..LANES {
                    acc[u][l] = wv.mul_add(vr[l], acc[u][l]);
                }
            }
        }
        for s in 4 * quads..m {
            let (wv, vr) = (w[s], &v[s * d + c * LANES..s * d + (c + 1) * LANES]);
            for l in 0..LANES {
                acc[0][l] = wv.mul_add(vr[l], acc[0][l]);
            }
        }
        let oc = &mut o[c * LANES..(c + 1) * LANES];
        for l in 0..LANES {
            oc[l] += (acc[0][l] + acc[1][l]) + (acc[2][l] + acc[3][l]);
        }
    }
    for i in d / LANES * LANES..d {
        for s in 0..m {
            o[i] = w[s].mul_add(v[s * d + i], o[i]);
        }
    }
}

/// `e^x` for `x <= 0` (0 below -87), within 2 ulp: Cephes' polynomial after reducing by
/// powers of two, written with plain arithmetic so that it vectorises.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let r = n.mul_add(-0.693_359_4, x);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    p = p.mul_add(r, 1.398_199_9e-3);
    p = p.mul_add(r, 8.333_452e-3);
    p = p.mul_add(r, 4.166_579_6e-2);
    p = p.mul_add(r, 1.666_666_5e-1);
    p = p.mul_add(r, 0.5);
    let y = (p * r).mul_add(r, r) + 1.0;
    // 2^n from `n`'s bits after the magic addition (an integer in the low mantissa bits):
    // integer arithmetic only, where `n as i32` would be a saturating scalar conversion.
    let k = (n + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits());
    y * f32::from_bits(k.wrapping_add(127) << 23)
}
