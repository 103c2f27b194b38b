//! Stages 5-6 of the chain: temperature and min-p turn logits into unnormalised weights
//! `w = exp((logit - max) / temperature)`, so the top token weighs exactly 1 and
//! `w = p / p_max` for every token.

use super::truncate::Cand;

/// Tokens per block of the dense weight row; each block's mass is kept for the draw.
pub(crate) const BLOCK: usize = 1024;

/// `exp(x)` for `x <= 0` (including `-inf`), written so that loops over it vectorise.
///
/// Cephes-style range reduction `x = n ln 2 + r` and a degree-6 polynomial: within 2 ulp of
/// the true value; `exp(0)` is exactly 1. Results below `exp(-87)` (~1.6e-38, where f32
/// turns subnormal) are flushed to 0, which also maps `-inf` (banned tokens) to 0.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let xc = x.max(-87.0);
    let t = xc * std::f32::consts::LOG2_E + MAGIC;
    let n_int = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < -87.0 {
        0.0
    } else {
        y * scale
    }
}

/// Temperature and min-p for one logit: its weight, or 0 when below the min-p cut.
/// `inv_t` is `1 / temperature`, kept finite (see [`inverse`]).
#[inline(always)]
fn weight(logit: f32, max: f32, inv_t: f32, min_p: f32) -> f32 {
    let w = exp_nonpositive((logit - max) * inv_t);
    if w < min_p {
        0.0
    } else {
        w
    }
}

/// `1 / temperature`, capped at `f32::MAX` so that a tiny temperature still gives the top
/// token `0 * inv_t = 0` (weight 1) rather than NaN.
fn inverse(temperature: f32) -> f32 {
    (1.0 / temperature).min(f32::MAX)
}

/// Sum of `w` in f64, through eight f32 lanes so that the loop vectorises.
fn lane_sum(w: &[f32]) -> f64 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for j in 0..8 {
            lanes[j] += c[j];
        }
    }
    lanes.iter().chain(chunks.remainder()).map(|&x| x as f64).sum()
}

/// Stages 5 (temperature) and 6 (min-p) over a whole logits row.
///
/// No-ops: temperature 1 leaves the logits as they are (the weights are just their
/// softmax numerators); `min_p = 0` drops nothing (`w < 0` never holds). Min-p keeps the
/// tokens with `p >= min_p * p_max`, i.e. `w >= min_p`; dropped tokens get weight 0.
#[derive(Debug, Clone, Default)]
pub(crate) struct DenseWeights {
    /// Weight of every token of the row (0 = removed).
    pub(crate) w: Vec<f32>,
    /// Mass of each [`BLOCK`] of `w` (eight f32 partial sums per block, added in f64).
    pub(crate) block_mass: Vec<f64>,
}

impl DenseWeights {
    /// Fills the weights of `row`, whose largest allowed logit is `max`.
    pub(crate) fn compute(&mut self, row: &[f32], max: f32, temperature: f32, min_p: f32) {
        let inv_t = inverse(temperature);
        self.w.resize(row.len(), 0.0);
        self.block_mass.clear();
        let (w, mass) = (&mut self.w, &mut self.block_mass);
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                return unsafe { fill_avx512(w, mass, row, max, inv_t, min_p) };
            }
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2, checked just above.
                return unsafe { fill_avx2(w, mass, row, max, inv_t, min_p) };
            }
        }
        fill(w, mass, row, max, inv_t, min_p);
    }

    /// Total mass of the row.
    pub(crate) fn total(&self) -> f64 {
        self.block_mass.iter().sum()
    }
}

/// The loop of [`DenseWeights::compute`]. Compiled once per instruction set below; the
/// same operations in the same order (no fused multiply-add), so every version gives
/// bit-identical weights and a seed replays identically on every x86-64 CPU.
#[inline(always)]
fn fill(w: &mut [f32], block_mass: &mut Vec<f64>, row: &[f32], max: f32, inv_t: f32, min_p: f32) {
    for (out, inp) in w.chunks_mut(BLOCK).zip(row.chunks(BLOCK)) {
        for (o, &l) in out.iter_mut().zip(inp) {
            *o = weight(l, max, inv_t, min_p);
        }
        block_mass.push(lane_sum(out));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fill_avx512(w: &mut [f32], block_mass: &mut Vec<f64>, row: &[f32], max: f32, inv_t: f32, min_p: f32) {
    fill(w, block_mass, row, max, inv_t, min_p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_avx2(w: &mut [f32], block_mass: &mut Vec<f64>, row: &[f32], max: f32, inv_t: f32, min_p: f32) {
    fill(w, block_mass, row, max, inv_t, min_p)
}

/// Stages 5 and 6 over a candidate list (after top-k): sets each weight and removes the
/// candidates below the min-p cut (no-op values as for [`DenseWeights`]).
pub(crate) fn weigh_candidates(cands: &mut Vec<Cand>, max: f32, temperature: f32, min_p: f32) {
    let inv_t = inverse(temperature);
    for c in cands.iter_mut() {
        c.w = weight(c.logit, max, inv_t, min_p);
    }
    cands.retain(|c| c.w > 0.0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_matches_libm() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            worst = worst.max(((got - want) / want).abs());
            x -= 0.000_37;
        }
        assert!(worst < 3.0 * f32::EPSILON as f64, "worst relative error {worst}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(-88.0), 0.0);
        assert_eq!(exp_nonpositive(f32::MIN), 0.0);
    }

    #[test]
    fn a_tiny_temperature_is_greedy_not_nan() {
        let mut d = DenseWeights::default();
        d.compute(&[1.0, 2.0, 2.0 - 1e-6, 2.0], 2.0, 1e-45, 0.0);
        assert_eq!(d.w, [0.0, 1.0, 0.0, 1.0]);
    }

    #[test]
    fn temperature_and_min_p_on_a_row() {
        let ln = |x: f32| x.ln();
        // Logits chosen so that the weights are 1, 1/2, 1/4, 1/8 at temperature 2.
        let row = [0.0, 2.0 * ln(0.5), 2.0 * ln(0.25), 2.0 * ln(0.125), f32::NEG_INFINITY];
        let mut d = DenseWeights::default();
        d.compute(&row, 0.0, 2.0, 0.0);
        let want = [1.0, 0.5, 0.25, 0.125, 0.0];
        for (g, w) in d.w.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{:?}", d.w);
        }
        assert!((d.total() - 1.875).abs() < 1e-6);
        // min_p 0.2 keeps p >= 0.2 * p_max: weights 1, 1/2 and 1/4.
        d.compute(&row, 0.0, 2.0, 0.2);
        assert_eq!(d.w[3], 0.0);
        assert!(d.w[2] > 0.0);
        assert!((d.total() - 1.75).abs() < 1e-6);
    }

    #[test]
    fn block_masses_cover_a_long_row() {
        let row: Vec<f32> = (0..2500).map(|i| -((i % 7) as f32)).collect();
        let mut d = DenseWeights::default();
        d.compute(&row, 0.0, 1.0, 0.0);
        assert_eq!(d.block_mass.len(), 3);
        let direct: f64 = row.iter().map(|&l| (l as f64).exp()).sum();
        assert!((d.total() / direct - 1.0).abs() < 1e-5, "{} vs {direct}", d.total());
    }

    #[test]
    fn candidates_get_weights_and_min_p() {
        let mut c = vec![
            Cand {
                id: 4,
                logit: 1.0,
                w: 0.0,
            },
            Cand {
                id: 9,
                logit: 1.0 + 3.0f32.ln(),
                w: 0.0,
            },
            Cand {
                id: 2,
                logit: f32::NEG_INFINITY,
                w: 0.0,
            },
        ];
        weigh_candidates(&mut c, 1.0 + 3.0f32.ln(), 1.0, 0.3);
        // Weights 1/3 and 1 survive min_p 0.3; the banned token goes.
        assert_eq!(c.len(), 2);
        assert!((c[0].w - 1.0 / 3.0).abs() < 1e-6 && (c[1].w - 1.0).abs() < 1e-6);
        weigh_candidates(&mut c, 1.0 + 3.0f32.ln(), 1.0, 0.5);
        assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), [9]);
    }
}
