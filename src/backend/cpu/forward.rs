//! The CPU backend's one forward pass: many sequences at once, on slices, with keys and
//! values in the paged [`KvPool`].
//!
//! Every row of the batch is one token of some sequence: the next token of each decoding
//! sequence and chunks of prompts alike. The matmuls take all rows together, so the weights
//! are read once per step however many sequences run; norms, RoPE and attention work row by
//! row. With packed weights nothing a row computes depends on the other rows (the packed
//! kernels and the activation quantization work per row, attention reads only the row's own
//! sequence), so a sequence gets bit-identical results alone or in any batch, at any
//! position in it, and whatever its prompt's chunking: batch invariance holds by
//! construction and is tested. (Dense f32 layers run prompts through a GEMM, whose sums
//! may be ordered differently from a single row's.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::attention::{attend_rows, AttnRow};
use super::kv_store::KvPool;
use super::linear::CpuLinear;
use super::model::{CpuModel, Layer};
use super::rows::{add_assign, rms_norm_rows, rotate, silu_mul_rows};
use super::spare::Spare;
use crate::error::{Error, Result};
use crate::kv::BlockTable;

/// Work for one sequence in a step.
pub(crate) struct BatchChunk<'a> {
    /// The sequence's blocks, reserved for `tokens` (see [`KvPool::reserve`]).
    pub table: &'a BlockTable,
    /// Tokens to run, at positions `table.len()..`.
    pub tokens: &'a [u32],
    /// How many of the last tokens want their logits (0, 1, or more to verify speculated
    /// tokens or score a prompt).
    pub logits: usize,
}

/// One token of the batch: its sequence, position, RoPE angles.
struct Row {
    chunk: usize,
    pos: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// What every layer of one step reads.
struct Step<'a> {
    pool: &'a mut KvPool,
    chunks: &'a [BatchChunk<'a>],
    rows: &'a [Row],
    spare: Spare,
}

impl CpuModel {
    /// Runs every chunk's tokens, writing their keys and values into `pool`, and returns the
    /// f32 logits of the last `logits` tokens of each chunk, one row each, in order. The
    /// caller commits the positions to the tables afterwards.
    pub fn forward(&self, pool: &mut KvPool, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>> {
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for (c, chunk) in chunks.iter().enumerate() {
            if chunk.table.len() + chunk.tokens.len() > chunk.table.blocks().len() * pool.store().layout().block_size {
                return Err(Error::Internal(
                    "a batch chunk has no room reserved in the KV pool".into(),
                ));
            }
            crate::backend::check_vocab(chunk.tokens, self.config.vocab_size)?;
            for (i, &t) in chunk.tokens.iter().enumerate() {
                let pos = chunk.table.len() + i;
                let (cos, sin) = self.rope.angles(pos);
                ids.push(t);
                rows.push(Row {
                    chunk: c,
                    pos,
                    cos,
                    sin,
                });
            }
        }
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut step = Step {
            pool,
            chunks,
            rows: &rows,
            spare: Spare::default(),
        };
        // On a pool worker: the step's parallel regions then start cheaply.
        with_workers_awake(|| self.run(&mut step, &ids))
    }

    fn run(&self, step: &mut Step, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let hidden = cfg.hidden_size;
        let mut x = Vec::with_capacity(ids.len() * hidden);
        for &t in ids {
            self.embed.push_row(t as usize, hidden, &self.lm_head, &mut x);
        }
        for (l, layer) in self.layers.iter().enumerate() {
            self.attention_block(step, l, layer, &mut x)?;
            self.mlp_block(step, l, layer, &mut x)?;
        }
        // The last rows of each chunk that wants logits.
        let mut last = Vec::new();
        let mut end = 0;
        for chunk in step.chunks {
            end += chunk.tokens.len();
            let wanted = chunk.logits.min(chunk.tokens.len());
            last.extend_from_slice(&x[(end - wanted) * hidden..end * hidden]);
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let m = last.len() / hidden;
        let h = rms_norm_rows(&last, &self.norm, cfg.rms_norm_eps as f32, Vec::new());
        check_finite(&h, cfg.num_hidden_layers)?;
        let logits = single(CpuLinear::forward_rows(&[&self.lm_head], &h, m, &mut step.spare)?)?;
        Ok(logits.chunks(cfg.vocab_size).map(<[f32]>::to_vec).collect())
    }

    /// `x += o(attention(rope(q, k), v))` of `norm(x)` for layer `l`, writing the rows'
    /// keys and values into the pool.
    fn attention_block(&self, step: &mut Step, l: usize, layer: &Layer, x: &mut [f32]) -> Result<()> {
        let cfg = &self.config;
        let (n, d, kv_dim, q_dim) = (step.rows.len(), cfg.head_dim, cfg.kv_dim(), cfg.q_dim());
        let sp = &mut step.spare;
        let h = rms_norm_rows(x, &layer.input_norm, cfg.rms_norm_eps as f32, sp.empty(x.len()));
        check_finite(&h, l)?;
        let [mut q, mut k, v] = three(CpuLinear::forward_rows(&[&layer.q, &layer.k, &layer.v], &h, n, sp)?)?;
        sp.give(h);
        for (r, row) in step.rows.iter().enumerate() {
            rotate(&mut q[r * q_dim..(r + 1) * q_dim], d, &row.cos, &row.sin);
            let kr = &mut k[r * kv_dim..(r + 1) * kv_dim];
            rotate(kr, d, &row.cos, &row.sin);
            let table = step.chunks[row.chunk].table;
            step.pool.write(l, table, row.pos, kr, &v[r * kv_dim..(r + 1) * kv_dim]);
        }
        sp.give(k);
        sp.give(v);
        let attn_rows: Vec<AttnRow> = step
            .rows
            .iter()
            .map(|row| AttnRow {
                blocks: step.chunks[row.chunk].table.blocks(),
                len: row.pos + 1,
            })
            .collect();
        let out = attend_rows(
            step.pool.store(),
            l,
            &q,
            &attn_rows,
            cfg.num_attention_heads,
            sp.empty(q.len()),
        );
        sp.give(q);
        check_finite(&out, l)?;
        let o = single(CpuLinear::forward_rows(&[&layer.o], &out, n, sp)?)?;
        add_assign(x, &o);
        sp.give(o);
        sp.give(out);
        Ok(())
    }

    /// `x += down(silu(gate(h)) * up(h))` with `h = norm(x)` for layer `l`.
    fn mlp_block(&self, step: &mut Step, l: usize, layer: &Layer, x: &mut [f32]) -> Result<()> {
        let n = step.rows.len();
        let sp = &mut step.spare;
        let h = rms_norm_rows(
            x,
            &layer.post_attn_norm,
            self.config.rms_norm_eps as f32,
            sp.empty(x.len()),
        );
        check_finite(&h, l)?;
        let [mut gate, up] = two(CpuLinear::forward_rows(&[&layer.gate, &layer.up], &h, n, sp)?)?;
        sp.give(h);
        gate.par_chunks_mut(4096)
            .zip(up.par_chunks(4096))
            .for_each(|(g, u)| silu_mul_rows(g, u));
        sp.give(up);
        check_finite(&gate, l)?;
        let down = single(CpuLinear::forward_rows(&[&layer.down], &gate, n, sp)?)?;
        add_assign(x, &down);
        sp.give(down);
        sp.give(gate);
        Ok(())
    }
}

/// Refuses NaN or infinite activations: the quantized kernels would turn them into
/// plausible-looking numbers.
fn check_finite(x: &[f32], layer: usize) -> Result<()> {
    // Whole chunks without early exit, so that the check vectorises.
    match x.chunks(256).all(|c| c.iter().fold(true, |ok, v| ok & v.is_finite())) {
        true => Ok(()),
        false => Err(Error::NonFiniteActivations { layer }),
    }
}

fn single(mut outs: Vec<Vec<f32>>) -> Result<Vec<f32>> {
    outs.pop()
        .ok_or_else(|| Error::Internal("missing matmul output".into()))
}

fn two(outs: Vec<Vec<f32>>) -> Result<[Vec<f32>; 2]> {
    outs.try_into()
        .map_err(|_| Error::Internal("gate/up projection count".into()))
}

fn three(outs: Vec<Vec<f32>>) -> Result<[Vec<f32>; 3]> {
    outs.try_into()
        .map_err(|_| Error::Internal("q/k/v projection count".into()))
}

/// How long a worker kept awake ([`keep_workers_awake`]) looks for work in vain before it
/// gives up (and sleeps as the pool's workers do).
const AWAKE_IDLE: Duration = Duration::from_micros(500);

/// Runs `f` on a worker of the pool (`rayon::scope`) with the other workers kept awake
/// until it returns ([`keep_workers_awake`]).
fn with_workers_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let done = AtomicBool::new(false);
    rayon::scope(|scope| {
        keep_workers_awake(scope, &done, rayon::current_thread_index());
        let out = f();
        done.store(true, Ordering::Release);
        out
    })
}

/// Keeps the pool's other workers looking for work until `done`, instead of going to sleep
/// between the step's parallel regions (being woken costs each region tens of microseconds
/// on a virtual machine: +7-10% batched decode of 8 sequences on 2 cores): one task per
/// other worker that runs whatever jobs appear (`rayon::yield_now`). A task that lands on
/// the step's own worker (`runner`) returns at once, so that the step never waits for it;
/// one that finds no work for [`AWAKE_IDLE`] returns too, so that a worker it holds (under
/// another step's frame, where several models share the pool) is soon free again.
fn keep_workers_awake<'s>(scope: &rayon::Scope<'s>, done: &'s AtomicBool, runner: Option<usize>) {
    for _ in 1..rayon::current_num_threads() {
        scope.spawn(move |_| {
            if rayon::current_thread_index() == runner {
                return;
            }
            let mut busy = Instant::now();
            while !done.load(Ordering::Acquire) {
                if rayon::yield_now() == Some(rayon::Yield::Executed) {
                    busy = Instant::now();
                } else if busy.elapsed() > AWAKE_IDLE {
                    return;
                } else {
                    std::hint::spin_loop();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Steps of several models sharing one pool, each keeping the other worker awake, all
    /// finish with the sums of their parallel regions (a worker held under another step's
    /// frame lets go once it finds no work).
    #[test]
    fn steps_sharing_a_pool_finish_with_workers_kept_awake() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let tx = tx.clone();
            pool.spawn(move || {
                let total = with_workers_awake(|| {
                    (0..2000)
                        .map(|_| (0..10_000u64).into_par_iter().sum::<u64>())
                        .sum::<u64>()
                });
                tx.send(total).unwrap();
            });
        }
        for _ in 0..4 {
            let total = rx.recv_timeout(Duration::from_secs(60)).expect("every step finishes");
            assert_eq!(total, 2000 * (10_000 * 9_999 / 2));
        }
    }
}
