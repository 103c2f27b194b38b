//! Llama's shape: the tensors a checkpoint must hold, their names, shapes and roles, and
//! the rotary frequencies. No compute happens here: each backend
//! ([`crate::backend::cpu`], `backend::candle`) loads these tensors into its own
//! form and runs its own forward pass.

pub mod rope;

use crate::config::LlamaConfig;
use crate::device::LayerRole;
use crate::error::Result;
use crate::weights::Weights;
use rope::Rope;

/// The name of the token embedding table.
pub(crate) const EMBED: &str = "model.embed_tokens.weight";
/// The name of the final norm's weight.
pub(crate) const FINAL_NORM: &str = "model.norm.weight";
/// The name of the untied output projection.
pub(crate) const LM_HEAD: &str = "lm_head.weight";

/// One linear layer of a decoder layer: its tensor name, shape `[rows, cols]` and role.
pub(crate) struct Proj {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub role: LayerRole,
}

/// The tensors of decoder layer `l`.
pub(crate) struct LayerTensors {
    pub input_norm: String,
    pub post_attn_norm: String,
    pub q: Proj,
    pub k: Proj,
    pub v: Proj,
    pub o: Proj,
    pub gate: Proj,
    pub up: Proj,
    pub down: Proj,
}

impl LayerTensors {
    /// The names, shapes and roles of layer `l` of `cfg`.
    pub fn of(cfg: &LlamaConfig, l: usize) -> Self {
        let (h, i, n) = (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers);
        let p = format!("model.layers.{l}");
        let proj = |name: &str, rows, cols, role| Proj {
            name: format!("{p}.{name}.weight"),
            rows,
            cols,
            role,
        };
        Self {
            input_norm: format!("{p}.input_layernorm.weight"),
            post_attn_norm: format!("{p}.post_attention_layernorm.weight"),
            q: proj("self_attn.q_proj", cfg.q_dim(), h, LayerRole::Other),
            k: proj("self_attn.k_proj", cfg.kv_dim(), h, LayerRole::Other),
            v: proj("self_attn.v_proj", cfg.kv_dim(), h, LayerRole::Value(l, n)),
            o: proj("self_attn.o_proj", h, cfg.q_dim(), LayerRole::Other),
            gate: proj("mlp.gate_proj", i, h, LayerRole::Other),
            up: proj("mlp.up_proj", i, h, LayerRole::Other),
            down: proj("mlp.down_proj", h, i, LayerRole::Down(l, n)),
        }
    }

    /// The seven projections in a fixed order (q, k, v, o, gate, up, down).
    pub fn projections(&self) -> [&Proj; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
}

/// The output projection: `lm_head.weight`, or the embedding table when tied.
pub(crate) fn output_proj(cfg: &LlamaConfig) -> Proj {
    Proj {
        name: if cfg.tie_word_embeddings { EMBED } else { LM_HEAD }.to_string(),
        rows: cfg.vocab_size,
        cols: cfg.hidden_size,
        role: LayerRole::Output,
    }
}

/// The tensor names and shapes of a Llama checkpoint, declared before loading.
pub fn expected_tensors(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mut t = vec![(EMBED.to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        let lt = LayerTensors::of(cfg, l);
        let [q, k, v, o, gate, up, down] = lt.projections();
        t.push((lt.input_norm.clone(), vec![h]));
        for p in [q, k, v, o] {
            t.push((p.name.clone(), vec![p.rows, p.cols]));
        }
        t.push((lt.post_attn_norm.clone(), vec![h]));
        for p in [gate, up, down] {
            t.push((p.name.clone(), vec![p.rows, p.cols]));
        }
    }
    t.push((FINAL_NORM.to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        t.push((LM_HEAD.to_string(), vec![cfg.vocab_size, h]));
    }
    t
}

/// Checks that `weights` hold every tensor of `cfg` with its shape, before anything loads.
pub(crate) fn check_tensors(cfg: &LlamaConfig, weights: &Weights) -> Result<()> {
    for (name, shape) in expected_tensors(cfg) {
        weights.check(&name, &shape)?;
    }
    Ok(())
}

/// Reads `name` (shape `shape`) as f32 values, dequantizing stored blocks.
pub(crate) fn read_f32(weights: &Weights, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let raw = weights.raw(name, shape)?;
    let mut out = vec![0f32; shape.iter().product()];
    raw.read_f32(0, &mut out)
        .map_err(|reason| bad_tensor(weights, name, reason))?;
    Ok(out)
}

/// The error for a tensor of `weights` whose contents are refused.
pub(crate) fn bad_tensor(weights: &Weights, name: &str, reason: String) -> crate::Error {
    crate::Error::BadTensor {
        path: weights.dir().to_path_buf(),
        name: name.to_string(),
        reason,
    }
}

/// The rotary frequencies: from the config, divided by a GGUF file's `rope_freqs` factors
/// when it has them (llama.cpp stores Llama 3's frequency scaling that way).
pub(crate) fn rope_of(cfg: &LlamaConfig, weights: &Weights) -> Result<Rope> {
    const NAME: &str = "rope_freqs.weight";
    if !weights.contains(NAME) {
        return Ok(Rope::new(cfg));
    }
    let factors = read_f32(weights, NAME, &[cfg.head_dim / 2])?;
    Rope::with_freq_factors(cfg, &factors).map_err(|reason| bad_tensor(weights, NAME, reason))
}
