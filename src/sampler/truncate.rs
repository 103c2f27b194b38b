//! Stage 7 of the chain: top-k and top-p (nucleus) truncation.
//!
//! Both keep a prefix of the tokens in rank order: higher logit first, equal logits by
//! lower id (the order greedy decoding uses). Neither sorts the vocabulary: top-k scans
//! the row once with a size-k heap (or partial selection for large k); top-p over a
//! candidate list first drops tokens that provably lie outside the nucleus, then runs a
//! mass-guided quickselect (over a whole row, `super::nucleus` buckets the mass first).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Above this `k`, top-k uses `select_nth_unstable_by` instead of a heap.
const HEAP_MAX_K: usize = 4096;
/// Ranges at most this long are sorted outright by the nucleus search.
const SORT_BELOW: usize = 32;
/// Relative slack on the nucleus mass, so that a prefix whose exact mass is `top_p` (say
/// 0.4 of 0.4, 0.3, 0.2, 0.1) counts as reaching it despite f32 rounding of the inputs.
const MASS_TOLERANCE: f64 = 1e-6;

/// A token still in the running: id, (penalised) logit, unnormalised weight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Cand {
    pub(crate) id: u32,
    pub(crate) logit: f32,
    pub(crate) w: f32,
}

/// Rank order of candidates: better first (higher logit, then lower id).
pub(crate) fn by_rank(a: &Cand, b: &Cand) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// A heap entry ordered so that `greater` means better ranked. Logits are never NaN.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranked {
    logit: f32,
    id: u32,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.logit
            .partial_cmp(&other.logit)
            .unwrap_or(Ordering::Equal)
            .then(other.id.cmp(&self.id))
    }
}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ranked {}

/// Stage 7a, top-k: fills `out` with the `k` best-ranked allowed (finite) tokens of `row`,
/// unordered, weights unset. No-op: `k = 0` (the caller then skips this stage) or `k` at
/// least the number of allowed tokens (all of them are returned).
pub(crate) fn top_k(row: &[f32], k: usize, heap: &mut BinaryHeap<Reverse<Ranked>>, out: &mut Vec<Cand>) {
    out.clear();
    let cand = |(i, &logit): (usize, &f32)| Cand {
        id: i as u32,
        logit,
        w: 0.0,
    };
    if k > HEAP_MAX_K {
        out.extend(row.iter().enumerate().filter(|(_, &l)| l > f32::NEG_INFINITY).map(cand));
        if k < out.len() {
            out.select_nth_unstable_by(k - 1, by_rank);
            out.truncate(k);
        }
        return;
    }
    heap.clear();
    // Once the heap is full, `floor` is the logit of its worst entry: a later token (higher
    // id) must beat it strictly. Until then it is -inf, which still skips banned tokens.
    // Comparisons with the floor run 16 lanes at a time; only the hits are offered.
    let mut floor = f32::NEG_INFINITY;
    let mut start = 0;
    for chunk in row.chunks(16) {
        let mut mask = 0u32;
        for (j, &l) in chunk.iter().enumerate() {
            mask |= ((l > floor) as u32) << j;
        }
        while mask != 0 {
            let i = start + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if row[i] > floor {
                floor = offer(
                    heap,
                    k,
                    Ranked {
                        logit: row[i],
                        id: i as u32,
                    },
                );
            }
        }
        start += chunk.len();
    }
    out.extend(heap.drain().map(|Reverse(r)| Cand {
        id: r.id,
        logit: r.logit,
        w: 0.0,
    }));
}

/// Adds `entry` to the size-`k` heap, evicting the worst entry when full (the caller made
/// sure `entry` beats it); returns the new floor (-inf until the heap is full).
fn offer(heap: &mut BinaryHeap<Reverse<Ranked>>, k: usize, entry: Ranked) -> f32 {
    if heap.len() < k {
        heap.push(Reverse(entry));
    } else if let Some(mut worst) = heap.peek_mut() {
        *worst = Reverse(entry);
    }
    match heap.peek() {
        Some(worst) if heap.len() == k => worst.0.logit,
        _ => f32::NEG_INFINITY,
    }
}

/// Total weight of `cands`, in f64.
pub(crate) fn mass(cands: &[Cand]) -> f64 {
    cands.iter().map(|c| c.w as f64).sum()
}

/// Stage 7b, top-p: keeps the smallest rank-ordered prefix of `cands` (any order on
/// input) whose weight reaches `p` times their total; always at least one token.
/// No-op: `p = 1` (the caller skips this stage). Leaves `cands` unordered.
pub(crate) fn top_p(cands: &mut Vec<Cand>, p: f32) {
    let target = nucleus_target(p, mass(cands));
    keep_nucleus(cands, target);
}

/// The mass a nucleus of `p` must reach out of `total`, less a relative
/// [`MASS_TOLERANCE`].
pub(crate) fn nucleus_target(p: f32, total: f64) -> f64 {
    p as f64 * total * (1.0 - MASS_TOLERANCE)
}

/// Keeps the smallest rank prefix of `cands` whose mass reaches `target` (at least one
/// token). `cands` must contain that prefix: everything ranked above a kept candidate.
pub(crate) fn keep_nucleus(cands: &mut Vec<Cand>, target: f64) {
    drop_outside_nucleus(cands, target);
    let n = nucleus_len(cands, target);
    cands.truncate(n.max(1));
}

/// Removes candidates that cannot be in the nucleus, cheaply, without ordering them.
///
/// With `n` candidates of total mass `m >= target`, all those lighter than
/// `(m - target) / n` together weigh less than `m - target`, so the rest still reaches
/// `target`; the rest is a rank prefix (weights grow with logits), hence it contains the
/// nucleus. Repeats while it removes at least a quarter of the candidates.
fn drop_outside_nucleus(cands: &mut Vec<Cand>, target: f64) {
    while cands.len() > SORT_BELOW {
        let n = cands.len();
        let slack = mass(cands) - target;
        if slack <= 0.0 {
            return;
        }
        // Shaded down so that f32 rounding cannot push the cut above the bound.
        let cut = (slack / n as f64 * (1.0 - 1e-6)) as f32;
        cands.retain(|c| c.w >= cut);
        if cands.len() * 4 > n * 3 {
            return;
        }
    }
}

/// Length of the smallest rank prefix of `cands` whose mass reaches `target`: a
/// quickselect that halves the undecided range and keeps the mass of the decided prefix.
/// On return `cands[..len]` holds that prefix (unordered). Linear time on average.
fn nucleus_len(cands: &mut [Cand], target: f64) -> usize {
    // Invariant: cands[..lo] are the lo best (mass `above` < target), the answer lies in
    // (lo, hi], and cands[lo..hi] rank above cands[hi..].
    let (mut lo, mut hi, mut above) = (0, cands.len(), 0.0f64);
    while hi - lo > SORT_BELOW {
        let mid = lo + (hi - lo) / 2;
        cands[lo..hi].select_nth_unstable_by(mid - lo, by_rank);
        let m = mass(&cands[lo..=mid]);
        if above + m >= target {
            hi = mid + 1;
        } else {
            above += m;
            lo = mid + 1;
        }
    }
    cands[lo..hi].sort_unstable_by(by_rank);
    for (i, c) in cands[lo..hi].iter().enumerate() {
        above += c.w as f64;
        if above >= target {
            return lo + i + 1;
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(ws: &[f32]) -> Vec<Cand> {
        // Logits decrease with the weights' order so that the rank order is by weight.
        ws.iter()
            .enumerate()
            .map(|(i, &w)| Cand {
                id: i as u32,
                logit: w.ln(),
                w,
            })
            .collect()
    }

    fn ids(c: &[Cand]) -> Vec<u32> {
        let mut v: Vec<u32> = c.iter().map(|c| c.id).collect();
        v.sort();
        v
    }

    #[test]
    fn top_k_keeps_the_best_with_ties_to_lower_ids() {
        let row = [1.0, 5.0, 3.0, 5.0, f32::NEG_INFINITY, 3.0, 4.0];
        let mut heap = BinaryHeap::new();
        let mut out = Vec::new();
        top_k(&row, 1, &mut heap, &mut out);
        assert_eq!(ids(&out), [1]);
        top_k(&row, 3, &mut heap, &mut out);
        assert_eq!(ids(&out), [1, 3, 6]);
        top_k(&row, 4, &mut heap, &mut out);
        assert_eq!(ids(&out), [1, 2, 3, 6]);
        // k beyond the allowed tokens keeps all of them, never the banned one.
        top_k(&row, 50, &mut heap, &mut out);
        assert_eq!(ids(&out), [0, 1, 2, 3, 5, 6]);
    }

    #[test]
    fn top_k_heap_and_selection_agree() {
        let row: Vec<f32> = (0..20_000).map(|i| ((i * 7919) % 1000) as f32 / 10.0).collect();
        let (mut heap, mut a, mut b) = (BinaryHeap::new(), Vec::new(), Vec::new());
        top_k(&row, HEAP_MAX_K, &mut heap, &mut a);
        top_k(&row, HEAP_MAX_K + 1, &mut heap, &mut b);
        let mut a = ids(&a);
        a.push(ids(&b).into_iter().find(|i| a.binary_search(i).is_err()).unwrap());
        a.sort();
        assert_eq!(a, ids(&b));
    }

    #[test]
    fn top_p_keeps_the_smallest_prefix_reaching_p() {
        // Probabilities 0.4, 0.3, 0.2, 0.1.
        let base = cands(&[0.4, 0.3, 0.2, 0.1]);
        let keep = |p: f32| {
            let mut c = base.clone();
            top_p(&mut c, p);
            ids(&c)
        };
        assert_eq!(keep(0.3), [0]);
        assert_eq!(keep(0.4), [0]);
        assert_eq!(keep(0.5), [0, 1]);
        assert_eq!(keep(0.85), [0, 1, 2]);
        assert_eq!(keep(0.95), [0, 1, 2, 3]);
        assert_eq!(keep(1e-9), [0]);
    }

    #[test]
    fn top_p_on_a_large_flat_set_matches_a_sort() {
        let ws: Vec<f32> = (0..5000).map(|i| 1.0 + ((i * 104_729) % 997) as f32 / 997.0).collect();
        let mut c = cands(&ws);
        top_p(&mut c, 0.6);
        let mut sorted = cands(&ws);
        sorted.sort_by(by_rank);
        let target = 0.6 * mass(&sorted);
        let mut acc = 0.0;
        let n = sorted.iter().position(|c| {
            acc += c.w as f64;
            acc >= target
        });
        assert_eq!(ids(&c), ids(&sorted[..n.unwrap() + 1]));
    }

    #[test]
    fn equal_logits_break_ties_by_id() {
        let mut c: Vec<Cand> = (0..100)
            .rev()
            .map(|i| Cand {
                id: i,
                logit: 0.0,
                w: 1.0,
            })
            .collect();
        top_p(&mut c, 0.1);
        assert_eq!(ids(&c), (0..10).collect::<Vec<_>>());
    }
}
