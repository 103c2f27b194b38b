//! The loop that owns the backend. Each step it takes new requests, drops cancelled ones,
//! admits waiting sequences (first come, first served) while the running set and the KV
//! pool allow, then runs one forward pass holding the next token of every decoding
//! sequence and chunks of waiting prompts up to the step's prefill budget, samples, sends
//! events, and frees what finished.
//!
//! When decoding sequences need more KV blocks than are free, the most recently admitted
//! one is preempted: its blocks are released and it waits at the head of the queue to be
//! computed again (its full blocks usually come straight back from the prefix cache).

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use super::draft::{Ask, DraftRunner};
use super::request::FinishReason;
use super::sequence::{Next, Sequence};
use crate::backend::{Backend, KvUsage, Work};
use crate::error::{Error, Result};

/// Prompt tokens per step of a sequence whose prompt is scored: each asks for a row of
/// logits (vocabulary-sized), so the chunk bounds that memory.
const SCORED_CHUNK: usize = 64;

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy)]
struct Share {
    /// Its index in `running`.
    index: usize,
    /// Tokens it runs.
    n: usize,
    /// Rows of logits it wants (the last `rows` of its tokens).
    rows: usize,
    /// Of those, the leading rows that score its prompt rather than pick a token.
    scored: usize,
}

/// How the scheduler shares the machine.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Sequences computed together at most.
    pub max_running: usize,
    /// Prompt tokens computed per step, shared by the waiting prompts in order.
    pub prefill_budget: usize,
}

/// What the scheduler is doing, for callers and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Sequences admitted (holding KV memory).
    pub running: usize,
    /// Sequences waiting for admission.
    pub waiting: usize,
    /// KV pool use.
    pub kv: KvUsage,
    /// Forward passes run so far.
    pub steps: u64,
    /// Sequences preempted so far (their KV memory given back, their tokens to be
    /// computed again).
    pub preemptions: u64,
}

pub(crate) struct Scheduler {
    backend: Backend,
    /// The draft model, proposing for every draft-speculating sequence in one pass a round.
    drafter: Option<DraftRunner>,
    config: SchedulerConfig,
    inbox: Receiver<Sequence>,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    load: Arc<Mutex<Load>>,
    steps: u64,
    preemptions: u64,
}

impl Scheduler {
    pub(crate) fn new(
        backend: Backend,
        drafter: Option<DraftRunner>,
        config: SchedulerConfig,
        inbox: Receiver<Sequence>,
        load: Arc<Mutex<Load>>,
    ) -> Self {
        Self {
            backend,
            drafter,
            config,
            inbox,
            waiting: VecDeque::new(),
            running: Vec::new(),
            load,
            steps: 0,
            preemptions: 0,
        }
    }

    /// Serves until every sender is gone and no work is left.
    pub(crate) fn run(mut self) {
        loop {
            if self.waiting.is_empty() && self.running.is_empty() {
                self.publish();
                match self.inbox.recv() {
                    Ok(seq) => self.waiting.push_back(seq),
                    Err(_) => return,
                }
            }
            while let Ok(seq) = self.inbox.try_recv() {
                self.waiting.push_back(seq);
            }
            self.drop_cancelled();
            self.admit();
            self.step();
            self.publish();
        }
    }

    fn publish(&self) {
        let mut load = self.load.lock().unwrap_or_else(|e| e.into_inner());
        *load = Load {
            running: self.running.len(),
            waiting: self.waiting.len(),
            kv: self.backend.usage(),
            steps: self.steps,
            preemptions: self.preemptions,
        };
    }

    fn drop_cancelled(&mut self) {
        let (gone, kept): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(Sequence::cancelled);
        self.waiting = kept.into();
        let (gone_running, kept): (Vec<_>, Vec<_>) = self.running.drain(..).partition(Sequence::cancelled);
        self.running = kept;
        for seq in gone.into_iter().chain(gone_running) {
            self.end(seq, FinishReason::Cancelled);
        }
    }

    /// Admits waiting sequences in order while there is room for their whole prompt. A
    /// prompt whose first block another sequence is still computing waits for it, so that
    /// it is shared (the `n` choices of one request, a common system prompt).
    fn admit(&mut self) {
        while self.running.len() < self.config.max_running.max(1) {
            let Some(seq) = self.waiting.front() else { break };
            if self.backend.is_cpu() && self.shares_a_prefill(seq) {
                break;
            }
            // A scored prompt is computed in full: cached positions have no logits.
            let cacheable = match seq.scores_prompt() {
                true => &seq.tokens[..0],
                false => &seq.tokens[..],
            };
            let kv = self.backend.start(cacheable, seq.ctx, seq.cache_scope);
            let computed = self.backend.positions(kv).0;
            let need = self.backend.blocks_needed(kv, seq.tokens.len() - computed);
            if need > self.backend.available() && !self.running.is_empty() {
                self.backend.release(kv, &seq.tokens);
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else { break };
            seq.admit(kv, self.backend.positions(kv));
            self.running.push(seq);
        }
    }

    fn shares_a_prefill(&self, seq: &Sequence) -> bool {
        let bs = self.backend.usage().block_size.max(1);
        let Some(first) = seq.tokens.get(..bs) else {
            return false;
        };
        seq.tokens.len() > bs
            && self
                .running
                .iter()
                .any(|r| r.pending() > 1 && r.cache_scope == seq.cache_scope && r.tokens.get(..bs) == Some(first))
    }

    /// Makes room for every decoding sequence's next position, preempting the most
    /// recently admitted sequences while the pool is short.
    fn make_room_for_decodes(&mut self) {
        loop {
            let need: usize = self
                .running
                .iter()
                .filter(|s| s.pending() == 1)
                .filter_map(|s| s.kv.map(|kv| self.backend.blocks_needed(kv, 1)))
                .sum();
            if need <= self.backend.available() || self.running.is_empty() {
                return;
            }
            let Some(victim) = self.running.pop() else { return };
            if self.running.is_empty() {
                // Alone and still out of room: the pool is its context limit.
                return self.end(victim, FinishReason::Length);
            }
            self.preempt(victim);
        }
    }

    /// Frees `seq`'s KV memory and puts it first in line, to be computed again.
    fn preempt(&mut self, mut seq: Sequence) {
        self.preemptions += 1;
        if let Some(kv) = seq.kv.take() {
            self.backend.release(kv, &seq.tokens);
        }
        seq.computed = 0;
        self.waiting.push_front(seq);
    }

    /// Runs the draft model for every decoding sequence that speculates with it: its
    /// proposals wait in each sequence for [`Sequence::draft`]. A failure stops those
    /// sequences' speculation (plain decoding goes on).
    fn draft_all(&mut self) {
        let Some(drafter) = self.drafter.as_mut() else { return };
        let mut asks: Vec<Ask> = self.running.iter_mut().filter_map(Sequence::draft_ask).collect();
        if asks.is_empty() || drafter.propose(&mut asks).is_ok() {
            return;
        }
        drop(asks);
        // Only the sequences that asked (draft-model speculators); n-gram ones go on.
        for seq in &mut self.running {
            if seq.pending() == 1 {
                if let Some(spec) = seq.speculator_mut().filter(|s| s.is_draft()) {
                    spec.stop();
                }
            }
        }
    }

    /// Frees `seq`'s draft-model keys and values.
    fn release_draft(&mut self, seq: &mut Sequence) {
        let state = seq.speculator_mut().and_then(|s| s.draft_state());
        if let (Some(drafter), Some(state)) = (self.drafter.as_mut(), state) {
            drafter.release(state);
        }
    }

    /// One forward pass over the running sequences, then sampling.
    fn step(&mut self) {
        self.make_room_for_decodes();
        self.draft_all();
        let plan = self.plan();
        if plan.is_empty() {
            if !self.running.is_empty() {
                // Nothing could run (the pool is held by sequences waiting for more):
                // give the newest back to the queue so that the others can go on.
                self.make_room_by_preempting();
            }
            return;
        }
        let work: Vec<Work> = plan
            .iter()
            .filter_map(|share| {
                let seq = self.running.get(share.index)?;
                Some(Work {
                    seq: seq.kv?,
                    tokens: &seq.tokens,
                    n: share.n,
                    logits: share.rows,
                })
            })
            .collect();
        let result = self.backend.forward(&work);
        drop(work);
        self.steps += 1;
        match result {
            Ok(logits) => {
                for share in &plan {
                    if let Some(seq) = self.running.get_mut(share.index) {
                        seq.computed += share.n;
                    }
                }
                self.sample(&plan, logits)
            }
            Err(e) => self.fail_all(&plan, e),
        }
    }

    /// What this step runs, with room reserved: every decoding sequence (its next token
    /// and any proposal to verify) and prompt chunks up to the prefill budget.
    fn plan(&mut self) -> Vec<Share> {
        let mut plan = Vec::new();
        let mut budget = self.config.prefill_budget.max(1);
        // Prompts share the step's budget evenly (what one leaves goes to the next), so a
        // long prompt does not hold back the first token of a short one.
        let mut prompts = self.running.iter().filter(|s| s.pending() > 1).count();
        for (i, seq) in self.running.iter_mut().enumerate() {
            let pending = seq.pending();
            // A decoding sequence may add proposed tokens to verify in the same pass.
            let drafted = if pending == 1 { seq.draft() } else { 0 };
            let share = budget.div_ceil(prompts.max(1));
            prompts = prompts.saturating_sub(usize::from(pending > 1));
            let n = match pending {
                0 => continue,
                1 => 1 + drafted,
                _ if seq.scores_prompt() => pending.min(share).min(SCORED_CHUNK),
                _ => pending.min(share),
            };
            let Some(kv) = seq.kv.filter(|_| n > 0) else { continue };
            if !self.backend.reserve(kv, n) {
                seq.take_draft();
                continue;
            }
            if pending > 1 {
                budget -= n;
            }
            let last = n == pending + drafted;
            let scored = match seq.scores_prompt() && seq.computed < seq.prompt_len {
                true => n - usize::from(last),
                false => 0,
            };
            let rows = match drafted {
                0 => usize::from(last) + scored,
                d => 1 + d,
            };
            plan.push(Share {
                index: i,
                n,
                rows,
                scored,
            });
        }
        plan
    }

    fn make_room_by_preempting(&mut self) {
        if self.running.len() > 1 {
            if let Some(victim) = self.running.pop() {
                self.preempt(victim);
            }
        }
    }

    fn sample(&mut self, plan: &[Share], logits: Vec<Vec<f32>>) {
        let mut rows = logits.into_iter();
        let mut finished = Vec::new();
        for share in plan {
            let i = share.index;
            if share.rows == 0 {
                continue;
            }
            let mut mine: Vec<Vec<f32>> = rows.by_ref().take(share.rows).collect();
            if mine.len() < share.rows {
                break;
            }
            if let Some(seq) = self.running.get_mut(i).filter(|_| share.scored > 0) {
                let first = seq.computed.saturating_sub(share.n);
                seq.score_prompt(first, &mine[..share.scored]);
                mine.drain(..share.scored);
            }
            if mine.is_empty() {
                continue;
            }
            match self.verify(i, mine) {
                Ok(Next::Continue) => {}
                Ok(Next::Finish(reason)) => finished.push((i, Ok(reason))),
                Err(e) => finished.push((i, Err(e))),
            }
        }
        // Remove from the back so that indices stay valid.
        finished.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, outcome) in finished {
            let seq = self.running.remove(i);
            match outcome {
                Ok(reason) => self.end(seq, reason),
                Err(e) => self.end_with_error(seq, e),
            }
        }
    }

    /// Samples from the rows of sequence `i`: one row normally; with proposed tokens, row
    /// j is scored after proposal j-1, and the sequence keeps proposals while its own
    /// sampler picks exactly them (so the output is what plain decoding gives), plus the
    /// token it picked where they differ (or after the last). Keys and values of proposals
    /// it did not keep are dropped.
    fn verify(&mut self, i: usize, rows: Vec<Vec<f32>>) -> Result<Next> {
        let seq = &mut self.running[i];
        let draft = seq.take_draft();
        let base = seq.tokens.len();
        let mut accepted = 0;
        let mut next = Next::Continue;
        for (j, row) in rows.iter().enumerate() {
            next = seq.push(row)?;
            let kept = j < draft.len() && seq.tokens.last() == Some(&draft[j]);
            if !matches!(next, Next::Continue) || !kept {
                break;
            }
            accepted += 1;
        }
        if !draft.is_empty() {
            if let Some(kv) = seq.kv {
                self.backend.truncate(kv, base + accepted);
                seq.computed = seq.computed.min(base + accepted);
            }
            seq.record_speculation(draft.len(), accepted);
        }
        Ok(next)
    }

    fn fail_all(&mut self, plan: &[Share], error: Error) {
        let mut failed: Vec<usize> = plan.iter().map(|p| p.index).collect();
        failed.sort_unstable_by(|a, b| b.cmp(a));
        let message = error.to_string();
        let mut first = Some(error);
        for i in failed {
            let seq = self.running.remove(i);
            let e = first.take().unwrap_or_else(|| Error::Internal(message.clone()));
            self.end_with_error(seq, e);
        }
    }

    /// Frees `seq`'s memory and publishes the load before the client hears it has ended,
    /// so that a caller reading [`Load`] after its request finished sees the memory free.
    fn end(&mut self, mut seq: Sequence, reason: FinishReason) {
        self.release_draft(&mut seq);
        if let Some(kv) = seq.kv.take() {
            self.backend.release(kv, &seq.tokens);
            self.publish();
        }
        seq.finish(reason);
    }

    fn end_with_error(&mut self, mut seq: Sequence, error: Error) {
        self.release_draft(&mut seq);
        if let Some(kv) = seq.kv.take() {
            self.backend.release(kv, &seq.tokens);
            self.publish();
        }
        seq.fail(error);
    }
}
