//! The Llama weights in the CPU backend's form: embedding rows, norm weights and rotary
//! frequencies as plain vectors, every linear layer packed (q8_0, q4k) or dense f32.

use std::sync::Arc;

use candle_core::{DType, Device};
use half::{bf16, f16};

use super::half_rows::HalfKind;
use super::linear::{pack_raw, CpuLinear};
use super::quant::PackedFormat;
use crate::config::LlamaConfig;
use crate::device::ComputeDType;
use crate::error::Result;
use crate::model::rope::Rope;
use crate::model::{self, LayerTensors, Proj};
use crate::weights::{Kind, RawTensor, Weights};

/// The token embedding table, in its storage precision where that is 16-bit (rows are
/// read one token at a time, so converting them as they are read is free).
#[derive(Debug)]
pub(crate) enum Embedding {
    /// f32 rows.
    F32(Vec<f32>),
    /// bf16 rows.
    Bf16(Vec<bf16>),
    /// f16 rows.
    F16(Vec<f16>),
    /// The rows of the tied output projection (dense f32 or 16-bit).
    Tied,
}

impl Embedding {
    /// Appends row `id` (of `width` values) as f32 to `out`; `head` is the model's output
    /// projection.
    pub fn push_row(&self, id: usize, width: usize, head: &CpuLinear, out: &mut Vec<f32>) {
        let range = id * width..(id + 1) * width;
        match (self, head) {
            (Self::F32(v), _) => out.extend_from_slice(&v[range]),
            (Self::Bf16(v), _) => out.extend(v[range].iter().map(|x| x.to_f32())),
            (Self::F16(v), _) => out.extend(v[range].iter().map(|x| x.to_f32())),
            (Self::Tied, CpuLinear::Dense { w, .. }) => out.extend_from_slice(&w[range]),
            (Self::Tied, CpuLinear::Half { w, kind, .. }) => {
                let at = out.len();
                out.resize(at + width, 0.0);
                kind.widen(&w[range], &mut out[at..]);
            }
            // Not made: `Tied` is only chosen with a dense head (see `load_embedding`).
            (Self::Tied, CpuLinear::Packed(_)) => out.resize(out.len() + width, f32::NAN),
        }
    }
}

/// One decoder layer.
#[derive(Debug)]
pub(crate) struct Layer {
    pub input_norm: Vec<f32>,
    pub q: CpuLinear,
    pub k: CpuLinear,
    pub v: CpuLinear,
    pub o: CpuLinear,
    pub post_attn_norm: Vec<f32>,
    pub gate: CpuLinear,
    pub up: CpuLinear,
    pub down: CpuLinear,
}

/// A Llama model loaded for the CPU backend.
#[derive(Debug)]
pub(crate) struct CpuModel {
    pub config: LlamaConfig,
    pub embed: Embedding,
    pub layers: Vec<Layer>,
    pub norm: Vec<f32>,
    pub lm_head: CpuLinear,
    pub rope: Rope,
}

impl CpuModel {
    /// Loads every tensor of `cfg` from `weights`: linear layers packed straight from the
    /// stored bytes for the quantized formats (16 rows at a time, no f32 copy of a matrix),
    /// dense f32 for [`ComputeDType::F32`], dense 16-bit for bf16 and f16 (kept as stored
    /// when the checkpoint has that dtype). All names and shapes are checked first.
    pub fn load(cfg: &LlamaConfig, weights: &Weights, format: ComputeDType) -> Result<Self> {
        model::check_tensors(cfg, weights)?;
        let h = cfg.hidden_size;
        let linear = |p: &Proj| load_linear(weights, p, format);
        let norm = |name: &str| model::read_f32(weights, name, &[h]);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let t = LayerTensors::of(cfg, l);
            layers.push(Layer {
                input_norm: norm(&t.input_norm)?,
                q: linear(&t.q)?,
                k: linear(&t.k)?,
                v: linear(&t.v)?,
                o: linear(&t.o)?,
                post_attn_norm: norm(&t.post_attn_norm)?,
                gate: linear(&t.gate)?,
                up: linear(&t.up)?,
                down: linear(&t.down)?,
            });
        }
        let lm_head = linear(&model::output_proj(cfg))?;
        Ok(Self {
            config: cfg.clone(),
            embed: load_embedding(cfg, weights, format, &lm_head)?,
            layers,
            norm: norm(model::FINAL_NORM)?,
            lm_head,
            rope: model::rope_of(cfg, weights)?,
        })
    }
}

/// One projection: packed in the format `format` gives its role, else dense f32.
fn load_linear(weights: &Weights, p: &Proj, format: ComputeDType) -> Result<CpuLinear> {
    if let Some(q) = format.quant_for(p.role) {
        let raw = weights.raw(&p.name, &[p.rows, p.cols])?;
        let packed = pack_raw(&raw, p.rows, p.cols, PackedFormat::from(q))
            .map_err(|reason| model::bad_tensor(weights, &p.name, reason))?;
        if let Some(packed) = packed {
            return Ok(CpuLinear::Packed(Arc::new(packed)));
        }
    }
    let kind = match format {
        ComputeDType::Bf16 => Some(HalfKind::Bf16),
        ComputeDType::F16 => Some(HalfKind::F16),
        _ => None,
    };
    let shape = [p.rows, p.cols];
    let (rows, cols) = (p.rows, p.cols);
    Ok(match kind {
        Some(kind) => {
            let raw = weights.raw(&p.name, &shape)?;
            let stored = match (raw.kind(), kind) {
                (Kind::Float(DType::BF16), HalfKind::Bf16) | (Kind::Float(DType::F16), HalfKind::F16) => raw.halves(),
                _ => None,
            };
            let w = match stored {
                Some(bits) => bits,
                None => encode_rows(&raw, kind, (rows, cols)).map_err(|e| model::bad_tensor(weights, &p.name, e))?,
            };
            CpuLinear::Half {
                w: Arc::new(w),
                kind,
                rows,
                cols,
            }
        }
        None => CpuLinear::Dense {
            w: Arc::new(model::read_f32(weights, &p.name, &shape)?),
            rows,
            cols,
        },
    })
}

/// A stored matrix in another dtype as 16-bit `kind`, a block of rows at a time (no f32
/// copy of the whole matrix).
fn encode_rows(
    raw: &RawTensor<'_>,
    kind: HalfKind,
    (rows, cols): (usize, usize),
) -> std::result::Result<Vec<u16>, String> {
    const BLOCK: usize = 256;
    let mut out = Vec::with_capacity(rows * cols);
    let mut buf = vec![0f32; BLOCK * cols];
    for first in (0..rows).step_by(BLOCK) {
        let n = BLOCK.min(rows - first) * cols;
        raw.read_f32(first * cols, &mut buf[..n])?;
        out.extend(kind.encode(&buf[..n]));
    }
    Ok(out)
}

/// The embedding table: the dense output projection's rows when tied to it (one copy);
/// else kept 16-bit when stored so (exact), or beside quantized layers when its stored
/// blocks are quantized (as the candle backend does); else f32.
fn load_embedding(cfg: &LlamaConfig, weights: &Weights, format: ComputeDType, head: &CpuLinear) -> Result<Embedding> {
    if cfg.tie_word_embeddings && matches!(head, CpuLinear::Dense { .. } | CpuLinear::Half { .. }) {
        return Ok(Embedding::Tied);
    }
    let shape = [cfg.vocab_size, cfg.hidden_size];
    let raw = weights.raw(model::EMBED, &shape)?;
    match (raw.kind(), raw.halves()) {
        (Kind::Float(DType::BF16), Some(h)) => {
            return Ok(Embedding::Bf16(h.into_iter().map(bf16::from_bits).collect()))
        }
        (Kind::Float(DType::F16), Some(h)) => return Ok(Embedding::F16(h.into_iter().map(f16::from_bits).collect())),
        _ => {}
    }
    Ok(match weights.storage_dtype().filter(|_| format.quant().is_some()) {
        Some(DType::F16 | DType::BF16) => {
            let t = weights.get(model::EMBED, &shape, DType::F16, &Device::Cpu)?;
            Embedding::F16(t.flatten_all()?.to_vec1()?)
        }
        _ => Embedding::F32(model::read_f32(weights, model::EMBED, &shape)?),
    })
}
