//! Stages 1-3 of the chain: edits of the raw logits row that touch only a few tokens.

use super::params::{ResolvedSampling, LOGIT_BIAS_LIMIT};

/// Stage 1: per-token logit bias. No-op: an empty `logit_bias` map.
///
/// A bias of -100 (after clamping to [-100, 100]) sets the logit to -infinity: the token
/// is removed and can never be drawn, not even by greedy decoding.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogitBias {
    entries: Vec<(usize, f32)>,
}

impl LogitBias {
    pub(crate) fn new(cfg: &ResolvedSampling) -> Self {
        Self {
            entries: cfg.logit_bias().iter().map(|(&id, &b)| (id as usize, b)).collect(),
        }
    }

    /// Applies the biases to `row`; ids are known to be < `row.len()` (checked by the caller).
    pub(crate) fn apply(&self, row: &mut [f32]) {
        for &(id, bias) in &self.entries {
            row[id] = if bias <= -LOGIT_BIAS_LIMIT {
                f32::NEG_INFINITY
            } else {
                row[id] + bias
            };
        }
    }
}

/// Stages 2 and 3: repetition, frequency and presence penalties.
///
/// No-op: `repetition_penalty = 1`, `frequency_penalty = 0` and `presence_penalty = 0`;
/// then the history is not even scanned.
///
/// * repetition `r` (stage 2), over every distinct token of prompt + generated:
///   a logit `l > 0` becomes `l / r`, else `l * r`;
/// * frequency `f` and presence `p` (stage 3), over generated tokens only:
///   `l -= count * f + (count > 0) * p`.
///
/// Token ids outside the row are ignored. The cost is proportional to the history length,
/// not to the vocabulary: the count tables are indexed by token id but only the entries of
/// tokens in the history are read or written (an epoch stamp replaces clearing them).
#[derive(Debug, Clone, Default)]
pub(crate) struct Penalties {
    repetition: f32,
    frequency: f32,
    presence: f32,
    history: History,
}

impl Penalties {
    pub(crate) fn new(cfg: &ResolvedSampling) -> Self {
        Self {
            repetition: cfg.repetition_penalty(),
            frequency: cfg.frequency_penalty(),
            presence: cfg.presence_penalty(),
            history: History::default(),
        }
    }

    fn is_noop(&self) -> bool {
        self.repetition == 1.0 && self.frequency == 0.0 && self.presence == 0.0
    }

    /// Applies stage 2 then stage 3 to `row`.
    pub(crate) fn apply(&mut self, row: &mut [f32], prompt: &[u32], generated: &[u32]) {
        if self.is_noop() {
            return;
        }
        // Only the repetition penalty looks at the prompt.
        let prompt = if self.repetition == 1.0 { &[][..] } else { prompt };
        self.history.collect(row.len(), prompt, generated);
        let h = &self.history;
        if self.repetition != 1.0 {
            for &id in &h.distinct {
                let l = &mut row[id as usize];
                *l = repetition_penalty(*l, self.repetition);
            }
        }
        if self.frequency != 0.0 || self.presence != 0.0 {
            for &id in &h.distinct {
                let count = h.count[id as usize];
                if count > 0 {
                    let l = &mut row[id as usize];
                    *l -= count as f32 * self.frequency + self.presence;
                }
            }
        }
    }
}

/// One logit under repetition penalty `r`; stays finite when the input is finite.
pub(crate) fn repetition_penalty(l: f32, r: f32) -> f32 {
    if l == f32::NEG_INFINITY {
        return l;
    }
    let out = if l > 0.0 { l / r } else { l * r };
    out.clamp(f32::MIN, f32::MAX)
}

/// Distinct tokens of the history and their counts in the generated part.
#[derive(Debug, Clone, Default)]
struct History {
    /// `stamp[id] == epoch` marks `id` as seen in the current step.
    stamp: Vec<u32>,
    /// Occurrences of `id` among the generated tokens (valid when stamped).
    count: Vec<u32>,
    /// The distinct ids seen, in first-seen order.
    distinct: Vec<u32>,
    epoch: u32,
}

impl History {
    fn collect(&mut self, vocab: usize, prompt: &[u32], generated: &[u32]) {
        if self.stamp.len() != vocab {
            self.stamp = vec![0; vocab];
            self.count = vec![0; vocab];
            self.epoch = 0;
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        self.distinct.clear();
        for &id in prompt {
            self.visit(id, 0);
        }
        for &id in generated {
            self.visit(id, 1);
        }
    }

    fn visit(&mut self, id: u32, add: u32) {
        let i = id as usize;
        if i >= self.stamp.len() {
            return;
        }
        if self.stamp[i] != self.epoch {
            self.stamp[i] = self.epoch;
            self.count[i] = 0;
            self.distinct.push(id);
        }
        self.count[i] += add;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GenerationConfig;
    use crate::sampler::SamplingParams;

    fn cfg(p: SamplingParams) -> ResolvedSampling {
        p.resolve(&GenerationConfig::default(), 6).unwrap()
    }

    #[test]
    fn bias_adds_and_bans() {
        let p = SamplingParams {
            logit_bias: [(1, 2.5), (3, -100.0), (4, -250.0)].into(),
            ..Default::default()
        };
        let mut row = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        LogitBias::new(&cfg(p)).apply(&mut row);
        assert_eq!(row, [1.0, 3.5, 1.0, f32::NEG_INFINITY, f32::NEG_INFINITY, 1.0]);
    }

    #[test]
    fn bias_is_clamped() {
        let p = SamplingParams {
            logit_bias: [(0, 500.0), (1, -99.0)].into(),
            ..Default::default()
        };
        let mut row = [0.0; 6];
        LogitBias::new(&cfg(p)).apply(&mut row);
        assert_eq!(&row[..2], &[100.0, -99.0]);
    }

    #[test]
    fn repetition_divides_positive_and_multiplies_negative() {
        let p = SamplingParams {
            repetition_penalty: Some(2.0),
            ..Default::default()
        };
        let mut row = [4.0, -4.0, 4.0, -1.0, 0.0, 3.0];
        // Prompt has 0 twice, generated has 1 and 4; ids 2, 3, 5 are untouched.
        Penalties::new(&cfg(p)).apply(&mut row, &[0, 0], &[1, 4, 4]);
        assert_eq!(row, [2.0, -8.0, 4.0, -1.0, 0.0, 3.0]);
    }

    #[test]
    fn frequency_and_presence_count_generated_only() {
        let p = SamplingParams {
            frequency_penalty: Some(0.5),
            presence_penalty: Some(1.0),
            ..Default::default()
        };
        let mut row = [0.0; 6];
        Penalties::new(&cfg(p)).apply(&mut row, &[5, 5, 2], &[2, 2, 2, 3, 7]);
        // id 2: 3 * 0.5 + 1 = 2.5; id 3: 0.5 + 1 = 1.5; id 5 only in the prompt; 7 is out of range.
        assert_eq!(row, [0.0, 0.0, -2.5, -1.5, 0.0, 0.0]);
    }

    #[test]
    fn all_penalties_compose_in_order() {
        let p = SamplingParams {
            repetition_penalty: Some(2.0),
            frequency_penalty: Some(1.0),
            presence_penalty: Some(0.5),
            ..Default::default()
        };
        let mut row = [3.0, 3.0, 3.0, 0.0, 0.0, 0.0];
        let mut pen = Penalties::new(&cfg(p));
        pen.apply(&mut row, &[0], &[1, 1]);
        // id 0 (prompt): 3 / 2; id 1: 3 / 2 - 2 * 1 - 0.5.
        assert_eq!(&row[..3], &[1.5, -1.0, 3.0]);
        // The state is per call: a second step starts from a fresh history.
        let mut row = [3.0; 6];
        pen.apply(&mut row, &[], &[2]);
        assert_eq!(row, [3.0, 3.0, 0.0, 3.0, 3.0, 3.0]);
    }

    #[test]
    fn repetition_keeps_banned_tokens_banned() {
        assert_eq!(repetition_penalty(f32::NEG_INFINITY, 0.5), f32::NEG_INFINITY);
        assert_eq!(repetition_penalty(f32::MAX, 0.5), f32::MAX);
        assert_eq!(repetition_penalty(-f32::MAX, 2.0), f32::MIN);
    }
}
