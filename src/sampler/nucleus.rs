//! Stage 7b (top-p) over the weights of a whole row, in linear time.
//!
//! A histogram of mass by weight bucket (the weight's f32 exponent and top three mantissa
//! bits: buckets ~9% wide, ordered like the weights) locates the bucket where the
//! cumulative mass, from the top, reaches the target. Tokens of heavier buckets are all
//! in the nucleus; only those of that boundary bucket need ordering, by the exact
//! quickselect of [`keep_nucleus`]. Tokens provably outside the nucleus are skipped by
//! both passes, which compare 16 weights at a time and visit only the hits.

use super::truncate::{keep_nucleus, Cand};
use super::weights::DenseWeights;

/// Bucket of a weight in [0, 1]: its bits without the 20 low mantissa bits.
#[inline(always)]
fn bucket(w: f32) -> usize {
    ((w.to_bits() >> 20) as usize).min(BUCKETS - 1)
}

/// Number of buckets: one more than the bucket of 1.0, the largest weight.
const BUCKETS: usize = (0x3F80_0000 >> 20) + 1;

/// Reusable buffers of the dense top-p stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct DenseNucleus {
    /// Mass per bucket, in four interleaved partial sums: consecutive tokens add to
    /// different addresses, so one bucket's additions do not wait on each other.
    mass: Vec<[f64; 4]>,
    edge: Vec<Cand>,
}

impl DenseNucleus {
    /// Fills `out` with the smallest rank prefix of the tokens of `row` (weights `d`) whose
    /// mass reaches `target`: the top-p nucleus, unordered. Zero weights never enter it.
    pub(crate) fn select(&mut self, d: &DenseWeights, row: &[f32], target: f64, out: &mut Vec<Cand>) {
        self.mass.clear();
        self.mass.resize(BUCKETS, [0.0; 4]);
        // Tokens lighter than `(total - target) / n` are all outside the nucleus (see
        // `truncate::drop_outside_nucleus`): leaving them out of the histogram cannot
        // move the boundary above them, and usually skips most of the row.
        let n = d.w.len().max(1) as f64;
        let floor = ((d.total() - target).max(0.0) / n * (1.0 - 1e-6)) as f32;
        let mut lane = 0;
        for_each_at_least(&d.w, floor.to_bits().max(1), |i| {
            self.mass[bucket(d.w[i])][lane & 3] += d.w[i] as f64;
            lane += 1;
        });
        // The boundary bucket and the mass of all heavier ones. If rounding leaves the
        // total short of `target`, every bucket is taken (edge 0, whose zeros are skipped).
        let mut above = 0.0;
        let mut edge = 0;
        for k in (0..BUCKETS).rev() {
            let m: f64 = self.mass[k].iter().sum();
            if above + m >= target {
                edge = k;
                break;
            }
            above += m;
        }
        out.clear();
        self.edge.clear();
        // Bits at least `cut` <=> bucket at least `edge`, and weight > 0.
        let cut = ((edge as u32) << 20).max(1);
        for_each_at_least(&d.w, cut, |i| {
            let c = Cand {
                id: i as u32,
                logit: row[i],
                w: d.w[i],
            };
            if bucket(c.w) > edge {
                out.push(c);
            } else {
                self.edge.push(c);
            }
        });
        keep_nucleus(&mut self.edge, target - above);
        out.extend_from_slice(&self.edge);
    }
}

/// Calls `f(i)`, in order, for every `i` with `w[i].to_bits() >= cut` (weights are >= 0,
/// so this orders like the weights). The comparison runs on 16 lanes at a time and only
/// the hits are visited, so sparse hits cost little.
fn for_each_at_least(w: &[f32], cut: u32, mut f: impl FnMut(usize)) {
    let mut chunks = w.chunks_exact(16);
    for (c, chunk) in (&mut chunks).enumerate() {
        let mut mask = 0u32;
        for (j, &x) in chunk.iter().enumerate() {
            mask |= ((x.to_bits() >= cut) as u32) << j;
        }
        while mask != 0 {
            f(c * 16 + mask.trailing_zeros() as usize);
            mask &= mask - 1;
        }
    }
    let base = w.len() - chunks.remainder().len();
    for (j, &x) in chunks.remainder().iter().enumerate() {
        if x.to_bits() >= cut {
            f(base + j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::truncate::{by_rank, mass};

    /// The nucleus by full sort: the reference for `select`.
    fn by_sort(row: &[f32], d: &DenseWeights, target: f64) -> Vec<u32> {
        let mut all: Vec<Cand> = (0..row.len())
            .map(|i| Cand {
                id: i as u32,
                logit: row[i],
                w: d.w[i],
            })
            .collect();
        all.retain(|c| c.w > 0.0);
        all.sort_by(by_rank);
        let mut acc = 0.0;
        let n = all.iter().position(|c| {
            acc += c.w as f64;
            acc >= target
        });
        let mut ids: Vec<u32> = all[..n.map_or(all.len(), |n| n + 1)].iter().map(|c| c.id).collect();
        ids.sort();
        ids
    }

    fn check(row: &[f32], temperature: f32, p: f64) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut d = DenseWeights::default();
        d.compute(row, max, temperature, 0.0);
        let target = p * d.total();
        let mut out = Vec::new();
        DenseNucleus::default().select(&d, row, target, &mut out);
        assert!(mass(&out) >= target * (1.0 - 1e-9));
        let mut ids: Vec<u32> = out.iter().map(|c| c.id).collect();
        ids.sort();
        assert_eq!(ids, by_sort(row, &d, target), "p {p} temperature {temperature}");
    }

    #[test]
    fn matches_a_full_sort() {
        // A deterministic, irregular row with repeated values and banned tokens.
        let row: Vec<f32> = (0..5000u32)
            .map(|i| {
                if i % 97 == 0 {
                    f32::NEG_INFINITY
                } else {
                    ((i * 7919) % 1013) as f32 / 100.0
                }
            })
            .collect();
        for p in [1e-6, 0.1, 0.5, 0.9, 0.999] {
            for t in [0.3, 1.0, 4.0] {
                check(&row, t, p);
            }
        }
    }

    #[test]
    fn scan_visits_exactly_the_hits() {
        let w: Vec<f32> = (0..53).map(|i| (i % 5) as f32 / 4.0).collect();
        let mut hits = Vec::new();
        for_each_at_least(&w, 0.5f32.to_bits(), |i| hits.push(i));
        let want: Vec<usize> = (0..53).filter(|&i| w[i] >= 0.5).collect();
        assert_eq!(hits, want);
    }

    #[test]
    fn hand_computed_nucleus() {
        // Weights at temperature 1: 1, 1/2, 1/4, 1/8 (total 1.875).
        let row = [0.0, -(2f32.ln()), -(4f32.ln()), -(8f32.ln())];
        let mut d = DenseWeights::default();
        d.compute(&row, 0.0, 1.0, 0.0);
        let mut out = Vec::new();
        let mut n = DenseNucleus::default();
        for (target, want) in [(0.9, 1), (1.0, 1), (1.2, 2), (1.7, 3), (1.8, 4)] {
            n.select(&d, &row, target, &mut out);
            assert_eq!(out.len(), want, "target {target}");
        }
    }
}
