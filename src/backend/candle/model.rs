//! The Llama transformer as candle ops (CUDA, Metal, and the exact f32 reference on CPU),
//! one sequence at a time over its own [`KvCache`].

use candle_core::{DType, Device, Tensor};

use super::attention::{causal_mask, Attention, Step};
use super::kv_cache::KvCache;
use super::linear::Linear;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope;
use crate::config::LlamaConfig;
use crate::device::ComputeDType;
use crate::error::Result;
use crate::model::rope::Rope;
use crate::model::{self, LayerTensors, Proj};
use crate::weights::Weights;

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    mlp: Mlp,
}

/// A Llama model's weights as candle tensors on one device, in one compute dtype.
#[derive(Debug, Clone)]
pub(crate) struct CandleModel {
    config: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Linear,
    rope: Rope,
    dtype: DType,
    device: Device,
}

impl CandleModel {
    /// Loads every tensor of `cfg` from `weights` in `format` on `device`: converted to the
    /// compute dtype, or for quantized formats with every linear layer (the output
    /// projection included) in candle's quantized tensors and f32 activations. All names and
    /// shapes are checked before any tensor is converted.
    pub fn load(cfg: &LlamaConfig, weights: &Weights, format: ComputeDType, device: &Device) -> Result<Self> {
        model::check_tensors(cfg, weights)?;
        let dtype = format.to_candle();
        let get = |name: &str, shape: &[usize]| weights.get(name, shape, dtype, device);
        let linear = |p: &Proj| -> Result<Linear> {
            let w = get(&p.name, &[p.rows, p.cols])?;
            match format.quant_for(p.role) {
                Some(q) => Linear::quantize(w, q),
                None => Ok(Linear::Dense(w)),
            }
        };
        let norm = |name: &str| get(name, &[cfg.hidden_size]).map(|w| RmsNorm::new(w, cfg.rms_norm_eps));
        // With quantized layers the embedding table is only read row by row: keep it in
        // its 16-bit storage dtype (half the memory of f32, rows are exact).
        let embed_dtype = match (format.quant(), weights.storage_dtype()) {
            (Some(_), Some(d @ (DType::BF16 | DType::F16))) => d,
            _ => dtype,
        };
        let embed = weights.get(model::EMBED, &[cfg.vocab_size, cfg.hidden_size], embed_dtype, device)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let t = LayerTensors::of(cfg, l);
            layers.push(Layer {
                input_norm: norm(&t.input_norm)?,
                attn: Attention {
                    q: linear(&t.q)?,
                    k: linear(&t.k)?,
                    v: linear(&t.v)?,
                    o: linear(&t.o)?,
                    heads: cfg.num_attention_heads,
                    kv_heads: cfg.num_key_value_heads,
                    head_dim: cfg.head_dim,
                },
                post_attn_norm: norm(&t.post_attn_norm)?,
                mlp: Mlp {
                    gate: linear(&t.gate)?,
                    up: linear(&t.up)?,
                    down: linear(&t.down)?,
                },
            });
        }
        let lm_head = match (cfg.tie_word_embeddings, format.quant()) {
            (true, None) => Linear::Dense(embed.clone()),
            _ => linear(&model::output_proj(cfg))?,
        };
        Ok(Self {
            config: cfg.clone(),
            embed,
            layers,
            norm: norm(model::FINAL_NORM)?,
            lm_head,
            rope: model::rope_of(cfg, weights)?,
            dtype,
            device: device.clone(),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
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

    /// The forward pass: runs `tokens` at positions `cache.len()..` in one pass, appending
    /// them to `cache`, and returns the f32 logits of the last `logits` tokens, one row each.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, logits: usize) -> Result<Vec<Vec<f32>>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        cache.check_room(tokens.len())?;
        let hidden = match self.device.is_cpu() {
            // On a pool worker: candle's parallel CPU ops then start cheaply.
            true => rayon::scope(|_| self.forward_hidden(tokens, cache))?,
            false => self.forward_hidden(tokens, cache)?,
        };
        let wanted = logits.min(tokens.len());
        if wanted == 0 {
            return Ok(Vec::new());
        }
        let last = hidden.narrow(0, tokens.len() - wanted, wanted)?;
        let out = self.lm_head.forward(&self.norm.forward(&last)?)?;
        Ok(out.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// One forward pass over `tokens`; returns the hidden states `[n, hidden]`.
    fn forward_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let (n, past) = (tokens.len(), cache.len());
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(self.dtype)?;
        let (cos, sin) = rope::tables(&self.rope, past, n, self.dtype, &self.device)?;
        let mask = match n {
            1 => None,
            _ => Some(causal_mask(n, past, self.dtype, &self.device)?),
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
