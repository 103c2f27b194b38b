//! One forward pass over many sequences at once, on CPU slices, with keys and values in the
//! paged [`BlockPool`].
//!
//! Every row of the batch is one token of some sequence: the next token of each decoding
//! sequence and chunks of prompts alike. The matmuls take all rows together, so the weights
//! are read once per step however many sequences run; norms, RoPE and attention work row by
//! row. Nothing a row computes depends on the other rows (the packed kernels and the
//! activation quantization work per row, attention reads only the row's own sequence), so a
//! sequence gets bit-identical results alone or in any batch, at any position in it, and
//! whatever its prompt's chunking: batch invariance holds by construction and is tested.

use candle_core::{DType, Tensor};
use rayon::prelude::*;

use super::decode::{add_assign, rotate, single};
use super::linear::Linear;
use super::paged::{attend_rows, AttnRow};
use super::spare::Spare;
use super::Llama;
use crate::error::{Error, Result};
use crate::kv::{BlockPool, BlockTable};

/// Work for one sequence in a batched step.
pub struct BatchChunk<'a> {
    /// The sequence's blocks, reserved for `tokens` (see [`BlockPool::reserve`]).
    pub table: &'a BlockTable,
    /// Tokens to run, at positions `table.len()..`.
    pub tokens: &'a [u32],
    /// How many of the last tokens want their logits (0, 1, or more to verify speculated
    /// tokens).
    pub logits: usize,
}

/// One token of the batch: its sequence, position, RoPE angles.
struct Row {
    chunk: usize,
    pos: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Llama {
    /// True when the model can run batched steps on slices: CPU, f32 activations, and every
    /// linear layer packed or dense f32.
    pub fn runs_batched(&self) -> bool {
        self.steps_on_slices()
    }

    /// True when any linear layer uses our packed CPU formats (a quantized dtype on x86).
    pub fn has_packed_layers(&self) -> bool {
        self.lm_head.is_packed()
            || self
                .layers
                .iter()
                .any(|l| l.attn.q.is_packed() || l.mlp.down.is_packed())
    }

    /// Runs every chunk's tokens, writing their keys and values into `pool`, and returns the
    /// f32 logits of the last `logits` tokens of each chunk, one row each, in order. The
    /// caller commits the positions to the tables afterwards.
    pub fn forward_batch(&self, pool: &mut BlockPool, chunks: &[BatchChunk]) -> Result<Vec<Vec<f32>>> {
        let vocab = self.config.vocab_size;
        let mut ids = Vec::new();
        let mut rows = Vec::new();
        for (c, chunk) in chunks.iter().enumerate() {
            if chunk.table.len() + chunk.tokens.len() > chunk.table.blocks().len() * pool.layout().block_size {
                return Err(internal("a batch chunk has no room reserved in the KV pool"));
            }
            for (i, &t) in chunk.tokens.iter().enumerate() {
                if t as usize >= vocab {
                    return Err(Error::InvalidParameter {
                        name: "prompt",
                        reason: format!("token id {t} is outside the vocabulary of {vocab}"),
                    });
                }
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
        rayon::scope(|_| self.batch_in_pool(pool, chunks, &ids, &rows))
    }

    fn batch_in_pool(
        &self,
        pool: &mut BlockPool,
        chunks: &[BatchChunk],
        ids: &[u32],
        rows: &[Row],
    ) -> Result<Vec<Vec<f32>>> {
        let cfg = &self.config;
        let (n, hidden) = (rows.len(), cfg.hidden_size);
        let ids_t = Tensor::new(ids, &candle_core::Device::Cpu)?;
        let mut x: Vec<f32> = self
            .embed
            .index_select(&ids_t, 0)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1()?;
        let (d, kv_dim) = (cfg.head_dim, cfg.kv_dim());
        // Every layer's buffers go back here for the next layer (see `Spare`).
        let sp = &mut Spare::default();
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.input_norm.forward_rows(&x, hidden, sp.empty(x.len()))?;
            check_finite(&h, l)?;
            let a = &layer.attn;
            let [mut q, mut k, v] = three(Linear::forward_rows(&[&a.q, &a.k, &a.v], &h, n, sp)?)?;
            sp.give(h);
            for (r, row) in rows.iter().enumerate() {
                rotate(&mut q[r * cfg.q_dim()..(r + 1) * cfg.q_dim()], d, &row.cos, &row.sin);
                let kr = &mut k[r * kv_dim..(r + 1) * kv_dim];
                rotate(kr, d, &row.cos, &row.sin);
                pool.write(
                    l,
                    chunks[row.chunk].table,
                    row.pos,
                    kr,
                    &v[r * kv_dim..(r + 1) * kv_dim],
                );
            }
            sp.give(k);
            sp.give(v);
            let attn_rows: Vec<AttnRow> = rows
                .iter()
                .map(|row| AttnRow {
                    blocks: chunks[row.chunk].table.blocks(),
                    len: row.pos + 1,
                })
                .collect();
            let out = attend_rows(pool, l, &q, &attn_rows, a.heads, sp.empty(q.len()));
            sp.give(q);
            check_finite(&out, l)?;
            let o = single(Linear::forward_rows(&[&a.o], &out, n, sp)?)?;
            add_assign(&mut x, &o);
            sp.give(o);
            sp.give(out);
            let h = layer.post_attn_norm.forward_rows(&x, hidden, sp.empty(x.len()))?;
            check_finite(&h, l)?;
            let [mut gate, up] = two(Linear::forward_rows(&[&layer.mlp.gate, &layer.mlp.up], &h, n, sp)?)?;
            sp.give(h);
            gate.par_chunks_mut(4096)
                .zip(up.par_chunks(4096))
                .for_each(|(g, u)| super::mlp::silu_mul_rows(g, u));
            sp.give(up);
            check_finite(&gate, l)?;
            let down = single(Linear::forward_rows(&[&layer.mlp.down], &gate, n, sp)?)?;
            add_assign(&mut x, &down);
            sp.give(down);
            sp.give(gate);
        }
        // The last rows of each chunk that wants logits.
        let mut last = Vec::new();
        let mut end = 0;
        for chunk in chunks {
            end += chunk.tokens.len();
            let wanted = chunk.logits.min(chunk.tokens.len());
            last.extend_from_slice(&x[(end - wanted) * hidden..end * hidden]);
        }
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let m = last.len() / hidden;
        let h = self.norm.forward_rows(&last, hidden, Vec::new())?;
        check_finite(&h, cfg.num_hidden_layers)?;
        let logits = single(Linear::forward_rows(&[&self.lm_head], &h, m, sp)?)?;
        Ok(logits.chunks(cfg.vocab_size).map(<[f32]>::to_vec).collect())
    }
}

fn internal(msg: &str) -> Error {
    Error::Candle(candle_core::Error::Msg(msg.into()))
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

fn two(outs: Vec<Vec<f32>>) -> Result<[Vec<f32>; 2]> {
    outs.try_into().map_err(|_| internal("gate/up projection count"))
}

fn three(outs: Vec<Vec<f32>>) -> Result<[Vec<f32>; 3]> {
    outs.try_into().map_err(|_| internal("q/k/v projection count"))
}
