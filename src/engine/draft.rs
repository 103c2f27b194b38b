//! Draft-model proposals for every speculating sequence together: the draft model runs on a
//! backend of its own (the scheduler's), each sequence holding a [`SeqId`] in it, and each
//! round of proposing is one forward pass with a row per sequence (its catch-up on the
//! tokens it has not seen, then one token at a time), as the target model's steps are.

use crate::backend::{Backend, SeqId, Work};
use crate::error::Result;

/// One sequence's draft-model state.
#[derive(Debug, Default)]
pub(crate) struct DraftState {
    /// Its sequence on the draft backend, once started.
    seq: Option<SeqId>,
    /// The tokens whose keys and values the draft backend holds for it.
    fed: Vec<u32>,
    /// This step's proposal, and the length of the tokens it follows.
    ready: Option<(usize, Vec<u32>)>,
}

impl DraftState {
    /// The proposal made this step for a sequence of `len` tokens (none when there is none
    /// or it was made for other tokens).
    pub fn take(&mut self, len: usize) -> Vec<u32> {
        match self.ready.take() {
            Some((at, draft)) if at == len => draft,
            _ => Vec::new(),
        }
    }
}

/// What one sequence asks of a drafting step.
pub(crate) struct Ask<'a> {
    /// Its state.
    pub state: &'a mut DraftState,
    /// All its tokens so far.
    pub tokens: &'a [u32],
    /// Tokens to propose at most.
    pub width: usize,
    /// Its context window.
    pub ctx: usize,
}

/// The draft model's backend, shared by every speculating sequence.
pub(crate) struct DraftRunner {
    backend: Backend,
}

impl DraftRunner {
    /// Proposes with the model `backend` runs.
    pub fn new(backend: Backend) -> Self {
        Self { backend }
    }

    /// Greedy continuations for every ask, in rounds of one forward pass each; the results
    /// wait in each state for [`DraftState::take`]. On an error every asking sequence's
    /// draft state is dropped.
    pub fn propose(&mut self, asks: &mut [Ask]) -> Result<()> {
        let mut next: Vec<Vec<u32>> = asks.iter_mut().map(|a| self.catch_up(a)).collect();
        loop {
            let mut live = Vec::new();
            for (i, a) in asks.iter_mut().enumerate() {
                let (Some(id), Some((_, out))) = (a.state.seq, a.state.ready.as_ref()) else {
                    continue;
                };
                let fits = a.state.fed.len() + next[i].len() <= a.ctx;
                if out.len() < a.width && !next[i].is_empty() && fits && self.backend.reserve(id, next[i].len()) {
                    a.state.fed.extend_from_slice(&next[i]);
                    live.push(i);
                }
            }
            if live.is_empty() {
                return Ok(());
            }
            let work: Vec<Work> = live
                .iter()
                .filter_map(|&i| {
                    Some(Work {
                        seq: asks[i].state.seq?,
                        tokens: &asks[i].state.fed,
                        n: next[i].len(),
                        logits: 1,
                    })
                })
                .collect();
            let rows = match self.backend.forward(&work) {
                Ok(rows) => rows,
                Err(e) => {
                    asks.iter_mut().for_each(|a| self.release(a.state));
                    return Err(e);
                }
            };
            for (&i, row) in live.iter().zip(&rows) {
                let best = argmax(row);
                if let Some((_, out)) = asks[i].state.ready.as_mut() {
                    out.push(best);
                }
                next[i] = vec![best];
            }
        }
    }

    /// Starts or rolls back `a`'s draft sequence to the longest prefix it shares with
    /// `a.tokens` (proposals that were not kept leave it), keeping at least the last token
    /// to run; returns the tokens to run first.
    fn catch_up(&mut self, a: &mut Ask) -> Vec<u32> {
        let id = *a.state.seq.get_or_insert_with(|| self.backend.start(&[], a.ctx, 0));
        let fed = &mut a.state.fed;
        let common = fed.iter().zip(a.tokens).take_while(|(x, y)| x == y).count();
        let keep = common.min(a.tokens.len().saturating_sub(1));
        self.backend.truncate(id, keep);
        fed.truncate(keep);
        a.state.ready = Some((a.tokens.len(), Vec::new()));
        a.tokens[keep..].to_vec()
    }

    /// Ends a sequence's draft state, freeing its keys and values.
    pub fn release(&mut self, state: &mut DraftState) {
        if let Some(id) = state.seq.take() {
            self.backend.release(id, &[]);
        }
        state.fed.clear();
        state.ready = None;
    }
}

fn argmax(row: &[f32]) -> u32 {
    row.iter()
        .enumerate()
        .fold(0, |b, (i, x)| if *x > row[b] { i } else { b }) as u32
}
