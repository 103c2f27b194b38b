//! Log-probabilities of generated tokens, as OpenAI's `logprobs` reports them: the model's
//! distribution (a log-softmax of the raw logits row, before any sampling transform: bias,
//! penalties, temperature, truncation), as vLLM and llama-server report by default.

use serde::Serialize;

/// Most alternatives one token may report (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One generated token's log-probability, with the most likely tokens at that step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenLogprob {
    /// The token chosen.
    pub id: u32,
    /// Its natural-log probability.
    pub logprob: f32,
    /// Its rank in the distribution: 1 + the number of tokens more likely than it.
    pub rank: usize,
    /// The `k` most likely tokens and their log-probabilities, most likely first (ties to
    /// the lower id).
    pub top: Vec<(u32, f32)>,
}

/// log(sum(exp(logits))), computed in f64 from the maximum.
fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The log-probability of `chosen` under `logits` and the `k` most likely tokens
/// (`k` is capped at [`MAX_TOP_LOGPROBS`]). `chosen` must index `logits`.
pub fn token_logprob(logits: &[f32], chosen: u32, k: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |id: usize| (logits.get(id).copied().unwrap_or(f32::NEG_INFINITY) as f64 - lse) as f32;
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k > 0 {
        // One pass keeping the k best (higher logit first, ties to the lower id).
        for (id, &l) in logits.iter().enumerate() {
            if top.len() == k && top.last().is_some_and(|&(_, worst)| l <= worst) {
                continue;
            }
            let at = top.partition_point(|&(_, x)| x >= l);
            top.insert(at, (id as u32, l));
            top.truncate(k);
        }
    }
    let chosen_logit = logits.get(chosen as usize).copied().unwrap_or(f32::NEG_INFINITY);
    TokenLogprob {
        id: chosen,
        rank: 1 + logits.iter().filter(|&&l| l > chosen_logit).count(),
        logprob: lp(chosen as usize),
        top: top.into_iter().map(|(id, _)| (id, lp(id as usize))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_plain_log_softmax() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let reference = |i: usize| ((logits[i] as f64).exp() / z).ln() as f32;
        let t = token_logprob(&logits, 4, 3);
        assert!((t.logprob - reference(4)).abs() < 1e-6);
        let ids: Vec<u32> = t.top.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, vec![1, 3, 0]);
        for (id, lp) in t.top {
            assert!((lp - reference(id as usize)).abs() < 1e-6);
        }
        let total: f64 = (0..5).map(|i| (reference(i) as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert!(token_logprob(&logits, 0, 0).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 99).top.len(), 5);
    }
}
