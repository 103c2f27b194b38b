//! Speculative decoding: tokens are proposed by prompt lookup (n-gram: the last few tokens
//! of a sequence are looked up earlier in its prompt and output, and the tokens that
//! followed them there are proposed) or by a small draft model of the same vocabulary (its
//! greedy continuation); one forward pass of the model then scores the proposal and the
//! sequence keeps what its own sampler would have picked anyway (see the scheduler).
//! Proposals are a deterministic function of the tokens so far, so keeping a proposed token
//! exactly when the sampler draws it is standard speculative sampling with a one-point
//! draft distribution: output is exactly that of plain decoding, for greedy and seeded
//! sampling alike; only the number of passes changes.

use serde::Serialize;

use super::draft::DraftState;
use crate::error::{Error, Result};

/// How a request speculates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speculation {
    /// Prompt lookup: match the last `n` (down to 1) tokens, propose up to `k` following.
    Ngram {
        /// Longest n-gram matched (tried first), >= 1.
        n: usize,
        /// Most tokens proposed per step, >= 1.
        k: usize,
    },
    /// The greedy continuation of the engine's draft model (loaded with
    /// `LoadOptions::draft_model`), up to `k` tokens.
    Draft {
        /// Most tokens proposed per step, >= 1.
        k: usize,
    },
}

impl Default for Speculation {
    fn default() -> Self {
        Speculation::Ngram { n: 3, k: 6 }
    }
}

/// Speculation figures of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SpecStats {
    /// Tokens proposed.
    pub drafted: usize,
    /// Proposed tokens that were kept.
    pub accepted: usize,
    /// Forward passes that verified a proposal.
    pub passes: usize,
}

/// The most recent earlier continuation of the last `n` tokens (n from `max_n` down to 1),
/// `k` tokens long; empty when nothing matches. A continuation that runs into the end of
/// the text goes on with itself (a loop `a b a b` proposes `a b a b ...`), as an LZ77 copy.
pub fn ngram_draft(tokens: &[u32], max_n: usize, k: usize) -> Vec<u32> {
    let len = tokens.len();
    for n in (1..=max_n.min(len.saturating_sub(1))).rev() {
        let pattern = &tokens[len - n..];
        // Occurrences that end before the last token, most recent first.
        let found = (0..len - n).rev().find(|&p| &tokens[p..p + n] == pattern);
        if let Some(p) = found {
            let from = p + n;
            let mut out: Vec<u32> = Vec::with_capacity(k);
            for i in from..from + k {
                let next = match tokens.get(i) {
                    Some(&t) => t,
                    None => out[i - len],
                };
                out.push(next);
            }
            return out;
        }
    }
    Vec::new()
}

/// Per-sequence speculation state: adapts the proposal length to what gets accepted, so
/// that text where guesses fail costs close to plain decoding.
#[derive(Debug)]
pub struct Speculator {
    source: Source,
    k: usize,
    /// Current proposal length (1..=k).
    width: usize,
    /// Steps to wait before proposing again after a run of failures.
    cooldown: usize,
    misses: usize,
    /// The figures so far.
    pub stats: SpecStats,
}

#[derive(Debug)]
enum Source {
    Ngram {
        n: usize,
    },
    /// Proposals come from the scheduler's draft model (see [`super::draft`]).
    Draft(DraftState),
}

impl Speculator {
    /// A speculator for `spec`; a draft model speculation needs a draft model loaded with
    /// the engine (`has_draft`).
    pub(crate) fn new(spec: Speculation, has_draft: bool) -> Result<Self> {
        let (source, k) = match spec {
            Speculation::Ngram { n, k } => (Source::Ngram { n: n.max(1) }, k),
            Speculation::Draft { k } if has_draft => (Source::Draft(DraftState::default()), k),
            Speculation::Draft { .. } => {
                return Err(Error::InvalidParameter {
                    name: "spec",
                    reason: "draft speculation needs a draft model loaded with the engine (--draft-model)".into(),
                })
            }
        };
        let k = k.max(1);
        Ok(Self {
            source,
            k,
            width: k.min(4),
            cooldown: 0,
            misses: 0,
            stats: SpecStats::default(),
        })
    }

    /// For a draft-model speculator that will propose this step, its state and how many
    /// tokens to ask of the draft model (at most `room`).
    pub(crate) fn draft_ask(&mut self, room: usize) -> Option<(&mut DraftState, usize)> {
        let width = self.width.min(room);
        match &mut self.source {
            Source::Draft(d) if self.cooldown == 0 && width > 0 => Some((d, width)),
            _ => None,
        }
    }

    /// The draft model's state, for a draft-model speculator.
    pub(crate) fn draft_state(&mut self) -> Option<&mut DraftState> {
        match &mut self.source {
            Source::Draft(d) => Some(d),
            Source::Ngram { .. } => None,
        }
    }

    /// True for a draft-model speculator.
    pub(crate) fn is_draft(&self) -> bool {
        matches!(self.source, Source::Draft(_))
    }

    /// Stops proposing for this sequence (its draft model failed; plain decoding goes on).
    pub(crate) fn stop(&mut self) {
        self.cooldown = usize::MAX;
    }

    /// Tokens to propose after `tokens`, at most `room` (a draft model's are those it made
    /// this step for these tokens).
    pub fn propose(&mut self, tokens: &[u32], room: usize) -> Vec<u32> {
        if self.cooldown > 0 {
            self.cooldown -= 1;
            return Vec::new();
        }
        let width = self.width.min(room);
        let mut draft = match &mut self.source {
            Source::Ngram { n } => ngram_draft(tokens, *n, width),
            Source::Draft(d) => d.take(tokens.len()),
        };
        draft.truncate(room);
        draft
    }

    /// Records how many of `drafted` proposed tokens were accepted.
    pub fn record(&mut self, drafted: usize, accepted: usize) {
        if drafted == 0 {
            return;
        }
        self.stats.drafted += drafted;
        self.stats.accepted += accepted;
        self.stats.passes += 1;
        if accepted == drafted {
            self.width = (self.width + 2).min(self.k);
            self.misses = 0;
        } else if accepted == 0 {
            self.width = (self.width / 2).max(1);
            self.misses += 1;
            if self.misses >= 3 {
                // Back off: the text is not repeating itself right now. A draft model
                // costs passes of its own, so it backs off exponentially (4 to 256 steps).
                self.cooldown = match self.source {
                    Source::Ngram { .. } => 4 * self.misses.min(8),
                    Source::Draft(_) => 4 << (self.misses - 3).min(6),
                };
            }
        } else {
            self.width = (accepted + 1).clamp(1, self.k);
            self.misses = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_the_most_recent_longest_match() {
        // ... 1 2 3 [4 5] ... 1 2 3 [9] ... 2 3 -> the latest "2 3" was followed by 9.
        let t = [1, 2, 3, 4, 5, 6, 1, 2, 3, 9, 7, 2, 3];
        assert_eq!(ngram_draft(&t, 3, 4), vec![9, 7, 2, 3]);
        assert_eq!(ngram_draft(&t, 3, 1), vec![9]);
        assert!(ngram_draft(&[1, 2, 3], 3, 4).is_empty());
        assert!(ngram_draft(&[], 3, 4).is_empty());
        assert_eq!(ngram_draft(&[5, 5], 3, 4), vec![5, 5, 5, 5]);
        assert_eq!(ngram_draft(&[1, 2, 1, 2], 3, 5), vec![1, 2, 1, 2, 1]);
    }

    #[test]
    fn adapts_the_width() {
        let mut s = Speculator::new(Speculation::Ngram { n: 3, k: 8 }, false).unwrap();
        s.record(4, 4);
        assert_eq!(s.width, 6);
        for _ in 0..3 {
            s.record(2, 0);
        }
        assert!(s.cooldown > 0);
        assert!(s.propose(&[1, 2, 1, 2], 10).is_empty());
        assert_eq!(s.stats.drafted, 10);
    }
}
