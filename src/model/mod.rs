//! The Llama 3.2 transformer (HF `LlamaForCausalLM`), written for inference with a KV cache.
//!
//! The model only computes logits; it never samples.

#[macro_use]
mod isa;

pub mod attention;
pub mod batch;
pub mod decode;
pub mod gemv;
pub mod host;
pub mod kv_cache;
pub mod linear;
pub mod mlp;
pub mod norm;
pub mod paged;
#[cfg(target_arch = "x86_64")]
mod paged_f16;
pub mod quant;
pub mod rope;
pub mod spare;
#[cfg(test)]
mod testutil;

use candle_core::{DType, Device, Tensor};

use crate::config::LlamaConfig;
use crate::device::{ComputeDType, LayerRole};
use crate::error::Result;
use crate::weights::{Kind, RawTensor, Weights};
use attention::{Attention, Step};
use candle_core::quantized::GgmlDType;
use kv_cache::KvCache;
use linear::Linear;
use mlp::Mlp;
use norm::RmsNorm;
use quant::{Isa, PackedFormat, PackedWeight};
use rope::Rope;

/// Default number of prompt tokens run through the model in one forward pass.
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    mlp: Mlp,
}

/// A loaded Llama model: weights on a device in one compute dtype.
#[derive(Debug, Clone)]
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
}

/// The tensor names and shapes of a Llama checkpoint, declared before loading.
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let mut t = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), vec![h]));
        t.push((format!("{p}.self_attn.q_proj.weight"), vec![cfg.q_dim(), h]));
        t.push((format!("{p}.self_attn.k_proj.weight"), vec![cfg.kv_dim(), h]));
        t.push((format!("{p}.self_attn.v_proj.weight"), vec![cfg.kv_dim(), h]));
        t.push((format!("{p}.self_attn.o_proj.weight"), vec![h, cfg.q_dim()]));
        t.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
        t.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        t.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
    }
    t.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        t.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    t
}

impl Llama {
    /// Loads every tensor of `cfg` from `weights` in `format` on `device`: converted to the
    /// compute dtype, or for Q8_0 / Q4_K with every linear layer (the output projection
    /// included) quantized in place and f32 activations. All names and shapes are checked
    /// before any tensor is converted.
    pub fn load(cfg: &LlamaConfig, weights: &Weights, format: ComputeDType, device: &Device) -> Result<Self> {
        for (name, shape) in expected_tensors(cfg) {
            weights.check(&name, &shape)?;
        }
        let dtype = format.to_candle();
        let get = |name: &str, shape: &[usize]| weights.get(name, shape, dtype, device);
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let linear = |name: &str, rows: usize, cols: usize, role: LayerRole| match format.quant_for(role) {
            // On an x86 CPU, pack straight from the stored bytes, 16 rows at a time (no f32
            // copy of the matrix); elsewhere candle's quantized kernels (NEON, GPU) serve.
            Some(q) if device.is_cpu() && Isa::detect() != Isa::Portable => {
                let raw = weights.raw(name, &[rows, cols])?;
                let packed =
                    pack_raw(&raw, rows, cols, PackedFormat::from(q)).map_err(|reason| crate::Error::BadTensor {
                        path: weights.dir().to_path_buf(),
                        name: name.to_string(),
                        reason,
                    })?;
                match packed {
                    Some(p) => Ok(Linear::Packed(std::sync::Arc::new(p))),
                    None => get(name, &[rows, cols]).map(Linear::new),
                }
            }
            Some(q) => Linear::quantize(get(name, &[rows, cols])?, q),
            None => get(name, &[rows, cols]).map(Linear::new),
        };
        let norm = |name: &str| get(name, &[h]).map(|w| RmsNorm::new(w, cfg.rms_norm_eps));
        let embed_name = "model.embed_tokens.weight";
        // With quantized layers the embedding table is only read row by row: keep it in
        // its 16-bit storage dtype (half the memory of f32, rows are exact).
        let embed_dtype = match (format.quant(), weights.storage_dtype()) {
            (Some(_), Some(d @ (DType::BF16 | DType::F16))) => d,
            _ => dtype,
        };
        let embed = weights.get(embed_name, &[cfg.vocab_size, h], embed_dtype, device)?;
        let n = cfg.num_hidden_layers;
        let mut layers = Vec::with_capacity(n);
        for l in 0..n {
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                input_norm: norm(&format!("{p}.input_layernorm.weight"))?,
                attn: Attention {
                    q: linear(
                        &format!("{p}.self_attn.q_proj.weight"),
                        cfg.q_dim(),
                        h,
                        LayerRole::Other,
                    )?,
                    k: linear(
                        &format!("{p}.self_attn.k_proj.weight"),
                        cfg.kv_dim(),
                        h,
                        LayerRole::Other,
                    )?,
                    v: linear(
                        &format!("{p}.self_attn.v_proj.weight"),
                        cfg.kv_dim(),
                        h,
                        LayerRole::Value(l, n),
                    )?,
                    o: linear(
                        &format!("{p}.self_attn.o_proj.weight"),
                        h,
                        cfg.q_dim(),
                        LayerRole::Other,
                    )?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                },
                post_attn_norm: norm(&format!("{p}.post_attention_layernorm.weight"))?,
                mlp: Mlp {
                    gate: linear(&format!("{p}.mlp.gate_proj.weight"), i, h, LayerRole::Other)?,
                    up: linear(&format!("{p}.mlp.up_proj.weight"), i, h, LayerRole::Other)?,
                    down: linear(&format!("{p}.mlp.down_proj.weight"), h, i, LayerRole::Down(l, n))?,
                },
            });
        }
        let lm_head = if !cfg.tie_word_embeddings {
            linear("lm_head.weight", cfg.vocab_size, h, LayerRole::Output)?
        } else if format.quant().is_some() {
            linear(embed_name, cfg.vocab_size, h, LayerRole::Output)?
        } else {
            Linear::new(embed.clone())
        };
        Ok(Self {
            config: cfg.clone(),
            embed,
            layers,
            norm: norm("model.norm.weight")?,
            lm_head,
            rope: rope_of(cfg, weights)?,
            dtype,
            device: device.clone(),
        })
    }
}

/// The rotary frequencies: from the config, divided by a GGUF file's `rope_freqs` factors
/// when it has them (llama.cpp stores Llama 3's frequency scaling that way).
fn rope_of(cfg: &LlamaConfig, weights: &Weights) -> Result<Rope> {
    const NAME: &str = "rope_freqs.weight";
    if !weights.contains(NAME) {
        return Ok(Rope::new(cfg));
    }
    let factors: Vec<f32> = weights
        .get(NAME, &[cfg.head_dim / 2], DType::F32, &Device::Cpu)?
        .to_vec1()?;
    Rope::with_freq_factors(cfg, &factors).map_err(|reason| crate::Error::BadTensor {
        path: weights.dir().to_path_buf(),
        name: NAME.into(),
        reason,
    })
}

/// Packs a stored matrix into `format`: llama.cpp Q8_0 blocks into Q8_0 and Q4_K blocks
/// into q4k as they are (when the rows are whole 256-wide blocks), anything else through f32
/// rows. Refuses NaN or infinite weights (quantizing would
/// hide them as plausible numbers).
fn pack_raw(
    raw: &RawTensor<'_>,
    rows: usize,
    cols: usize,
    format: PackedFormat,
) -> std::result::Result<Option<PackedWeight>, String> {
    let failure = std::sync::Mutex::new(None::<String>);
    let fail = |e: String| {
        let mut slot = failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(e);
    };
    let packed = if format == PackedFormat::Q8_0 && raw.kind() == Kind::Ggml(GgmlDType::Q8_0) {
        PackedWeight::pack_q8_0_blocks(rows, cols, |first, dst| {
            raw.block_rows(GgmlDType::Q8_0, first, dst);
            let finite = dst
                .chunks_exact(34)
                .all(|b| half::f16::from_le_bytes([b[0], b[1]]).is_finite());
            if !finite {
                fail("holds NaN or infinite scales".into());
            }
        })
    } else if format == PackedFormat::Q4K && raw.kind() == Kind::Ggml(GgmlDType::Q4K) && cols.is_multiple_of(256) {
        PackedWeight::pack_q4k_blocks(rows, cols, |first, dst| {
            raw.block_rows(GgmlDType::Q4K, first, dst);
            let finite = dst.chunks_exact(144).all(|b| {
                half::f16::from_le_bytes([b[0], b[1]]).is_finite() && half::f16::from_le_bytes([b[2], b[3]]).is_finite()
            });
            if !finite {
                fail("holds NaN or infinite scales".into());
            }
        })
    } else {
        PackedWeight::pack_with(rows, cols, format, |first, dst| match raw.read_f32(first * cols, dst) {
            Err(e) => fail(e),
            Ok(()) if !dst.iter().all(|v| v.is_finite()) => fail("holds NaN or infinite values".into()),
            Ok(()) => {}
        })
    };
    match failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(packed),
    }
}

impl Llama {
    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// An empty KV cache for this model holding at most `max_len` positions.
    pub fn new_cache(&self, max_len: usize) -> KvCache {
        let c = &self.config;
        KvCache::new(
            c.num_hidden_layers,
            c.num_key_value_heads,
            c.head_dim,
            max_len,
            self.dtype,
            &self.device,
        )
    }

    /// Runs `tokens` at positions `cache.len()..` in chunks of at most `chunk` tokens,
    /// appending them to `cache`, and returns the f32 logits `[vocab]` of the last token.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, chunk: usize) -> Result<Tensor> {
        self.check_tokens(tokens, cache)?;
        let vocab = self.config.vocab_size;
        if let ([token], true) = (tokens, self.steps_on_slices()) {
            let logits = self.step_on_slices(*token, cache)?;
            return Ok(Tensor::from_vec(logits, vocab, &self.device)?);
        }
        let mut last = None;
        for piece in tokens.chunks(chunk.max(1)) {
            last = Some(match self.device.is_cpu() {
                // On a pool worker, like the decode step: its parallel ops start cheaply.
                true => rayon::scope(|_| self.forward_chunk(piece, cache))?,
                false => self.forward_chunk(piece, cache)?,
            });
        }
        let hidden = last.ok_or_else(|| crate::Error::InvalidParameter {
            name: "prompt",
            reason: "at least one token is needed".into(),
        })?;
        let hidden = self.norm.forward(&hidden)?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(logits.squeeze(0)?.to_dtype(DType::F32)?)
    }

    /// Checks that `tokens` fit `cache` and are inside the vocabulary.
    fn check_tokens(&self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        cache.check_room(tokens.len())?;
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&bad) => Err(crate::Error::InvalidParameter {
                name: "prompt",
                reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
            }),
            None => Ok(()),
        }
    }

    /// Like [`Llama::forward`], but the f32 logits of every token, `tokens.len()` rows of
    /// `vocab_size` one after another (for perplexity).
    pub fn forward_all(&self, tokens: &[u32], cache: &mut KvCache, chunk: usize) -> Result<Vec<f32>> {
        self.check_tokens(tokens, cache)?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(tokens.len() * vocab);
        for piece in tokens.chunks(chunk.max(1)) {
            let hidden = match self.device.is_cpu() {
                true => rayon::scope(|_| self.forward_hidden(piece, cache))?,
                false => self.forward_hidden(piece, cache)?,
            };
            let logits = self.lm_head.forward(&self.norm.forward(&hidden)?)?;
            out.extend(logits.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// One forward pass over `tokens`; returns the hidden state `[1, hidden]` of the last one.
    fn forward_chunk(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let n = tokens.len();
        Ok(self.forward_hidden(tokens, cache)?.narrow(0, n - 1, 1)?)
    }

    /// One forward pass over `tokens`; returns the hidden states `[n, hidden]`.
    fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let (n, past) = (tokens.len(), cache.len());
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?;
        let (cos, sin) = self.rope.tables(past, n, self.dtype, &self.device)?;
        let mask = match n {
            1 => None,
            _ => Some(attention::causal_mask(n, past, self.dtype, &self.device)?),
        };
        let step = Step {
            cos: &cos,
            sin: &sin,
            mask: mask.as_ref(),
        };
        for (l, layer) in self.layers.iter().enumerate() {
            let h = layer.attn.forward(&layer.input_norm.forward(&x)?, l, cache, &step)?;
            x = (x + h)?;
            let h = layer.mlp.forward(&layer.post_attn_norm.forward(&x)?)?;
            x = (x + h)?;
        }
        cache.advance(n);
        Ok(x)
    }
}

#[cfg(test)]
mod gguf_tests {
    use super::*;
    use candle_core::quantized::QTensor;

    fn stored(dtype: GgmlDType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
        let w: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3)
            .collect();
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, dtype).unwrap();
        let values = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        (q.data().unwrap().to_vec(), values)
    }

    #[test]
    fn q8_0_blocks_are_packed_as_stored_in_hf_row_order() {
        let (rows, cols, head) = (48, 64, 16);
        let (bytes, values) = stored(GgmlDType::Q8_0, rows, cols);
        for rope in [None, Some(head)] {
            let raw = RawTensor::ggml(&bytes, GgmlDType::Q8_0, cols, rope);
            let packed = pack_raw(&raw, rows, cols, PackedFormat::Q8_0).unwrap().unwrap();
            for r in 0..rows {
                let src = rope.map_or(r, |h| crate::gguf::rope_row(r, h));
                assert_eq!(packed.row(r), values[src * cols..(src + 1) * cols], "row {r} {rope:?}");
            }
        }
    }

    #[test]
    fn other_block_types_are_read_as_their_dequantized_values() {
        let (rows, cols) = (20, 256);
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q4K,
            GgmlDType::Q6K,
        ] {
            let (bytes, values) = stored(dtype, rows, cols);
            let raw = RawTensor::ggml(&bytes, dtype, cols, None);
            let mut out = vec![0f32; 3 * cols - 5];
            raw.read_f32(cols + 5, &mut out).unwrap();
            assert_eq!(out, values[cols + 5..4 * cols], "{dtype:?}");
        }
    }
}
