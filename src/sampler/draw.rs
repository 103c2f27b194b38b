//! The last stages of the chain: pick the token (argmax for greedy, else one draw by
//! inverse CDF with a uniform number from the request's RNG).

use super::truncate::Cand;
use super::weights::{DenseWeights, BLOCK};

/// Index of the largest value; ties go to the lowest index (0 for an empty row).
pub fn argmax(logits: &[f32]) -> u32 {
    argmax_allowed(logits).map_or(0, |(i, _)| i as u32)
}

/// Stage 4 (greedy): the index and value of the largest logit, ties to the lowest index,
/// ignoring banned (-inf) entries; `None` when every entry is banned or the row is empty.
pub(crate) fn argmax_allowed(row: &[f32]) -> Option<(usize, f32)> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return None;
    }
    // `position`, 16 lanes at a time (a plain `position` does not vectorise).
    let mut start = 0;
    for chunk in row.chunks(16) {
        let mut mask = 0u32;
        for (j, &l) in chunk.iter().enumerate() {
            mask |= ((l == max) as u32) << j;
        }
        if mask != 0 {
            return Some((start + mask.trailing_zeros() as usize, max));
        }
        start += chunk.len();
    }
    None
}

/// Stage 8 over the dense weights of a whole row: the token whose cumulative weight, in id
/// order, first exceeds `u` (in [0, 1)) times the total. Zero weights are never drawn;
/// `None` only when every weight is 0.
pub(crate) fn draw_dense(d: &DenseWeights, u: f64) -> Option<usize> {
    let mut target = u * d.total();
    for (b, &m) in d.block_mass.iter().enumerate() {
        if target < m {
            let start = b * BLOCK;
            let end = (start + BLOCK).min(d.w.len());
            return draw_in(&d.w[start..end], target).map(|i| start + i);
        }
        target -= m;
    }
    // Only reached through rounding (u * total at the very top of the range).
    d.w.iter().rposition(|&w| w > 0.0)
}

/// Position in `w` where the running sum first exceeds `target`; the last positive weight
/// when rounding leaves the sum short.
fn draw_in(w: &[f32], target: f64) -> Option<usize> {
    let mut acc = 0.0f64;
    let mut last = None;
    for (i, &x) in w.iter().enumerate() {
        if x > 0.0 {
            acc += x as f64;
            last = Some(i);
            if target < acc {
                return last;
            }
        }
    }
    last
}

/// Stage 8 over a candidate list: as [`draw_dense`], walking `cands` in their stored order.
pub(crate) fn draw_candidates(cands: &[Cand], u: f64) -> Option<u32> {
    let total: f64 = cands.iter().map(|c| c.w as f64).sum();
    let mut acc = 0.0f64;
    let mut last = None;
    for c in cands.iter().filter(|c| c.w > 0.0) {
        acc += c.w as f64;
        last = Some(c.id);
        if u * total < acc {
            return last;
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_ties_and_bans() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax_allowed(&[f32::NEG_INFINITY, -5.0, -5.0]), Some((1, -5.0)));
        assert_eq!(argmax_allowed(&[f32::NEG_INFINITY; 3]), None);
        assert_eq!(argmax_allowed(&[-0.0, 0.0]), Some((0, 0.0)));
        let mut long = vec![1.0; 100];
        long[37] = 2.0;
        long[90] = 2.0;
        assert_eq!(argmax(&long), 37);
    }

    #[test]
    fn dense_draw_is_an_inverse_cdf_in_id_order() {
        let mut d = DenseWeights::default();
        // Weights 1, 0, 2, 1 (total 4): u in [0, .25) -> 0, [.25, .75) -> 2, [.75, 1) -> 3.
        d.compute(&[0.0, f32::NEG_INFINITY, 2f32.ln(), 0.0], 2f32.ln(), 1.0, 0.0);
        let pick = |u| draw_dense(&d, u);
        assert_eq!(pick(0.0), Some(0));
        assert_eq!(pick(0.2499), Some(0));
        assert_eq!(pick(0.2501), Some(2));
        assert_eq!(pick(0.7499), Some(2));
        assert_eq!(pick(0.7501), Some(3));
        assert_eq!(pick(0.999_999_999), Some(3));
    }

    #[test]
    fn dense_draw_crosses_blocks() {
        let mut row = vec![f32::NEG_INFINITY; 3 * BLOCK];
        row[5] = 0.0;
        row[2 * BLOCK + 7] = 0.0;
        let mut d = DenseWeights::default();
        d.compute(&row, 0.0, 1.0, 0.0);
        assert_eq!(draw_dense(&d, 0.49), Some(5));
        assert_eq!(draw_dense(&d, 0.51), Some(2 * BLOCK + 7));
        d.compute(&[f32::NEG_INFINITY; 4], 0.0, 1.0, 0.0);
        assert_eq!(draw_dense(&d, 0.5), None);
    }

    #[test]
    fn candidate_draw_walks_in_stored_order() {
        let c = [
            Cand {
                id: 7,
                logit: 0.0,
                w: 3.0,
            },
            Cand {
                id: 2,
                logit: 0.0,
                w: 0.0,
            },
            Cand {
                id: 4,
                logit: 0.0,
                w: 1.0,
            },
        ];
        assert_eq!(draw_candidates(&c, 0.0), Some(7));
        assert_eq!(draw_candidates(&c, 0.74), Some(7));
        assert_eq!(draw_candidates(&c, 0.76), Some(4));
        assert_eq!(draw_candidates(&[], 0.5), None);
    }
}
