//! Rotary position embeddings (RoPE), including Llama 3's `llama3` frequency scaling.
//!
//! Frequencies and angles are always computed in f32, whatever the compute dtype
//! (bf16-rounded frequencies change greedy tokens within a few steps), and only for the
//! positions a forward pass uses.

use crate::config::{Llama3RopeScaling, LlamaConfig};

/// Per-pair inverse frequencies of one attention head.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Computes the inverse frequencies for `cfg` (plain or `llama3`-scaled).
    pub fn new(cfg: &LlamaConfig) -> Self {
        let dim = cfg.head_dim;
        let base = cfg.rope_theta;
        let plain = (0..dim).step_by(2).map(|i| 1.0f32 / base.powf(i as f32 / dim as f32));
        let inv_freq = match &cfg.rope_scaling {
            None => plain.collect(),
            Some(s) => plain.map(|f| llama3_scale(f, s)).collect(),
        };
        Self { inv_freq }
    }

    /// The plain frequencies of `cfg` divided by per-pair `factors` (a GGUF file's
    /// `rope_freqs`: `head_dim / 2` finite positive numbers).
    pub fn with_freq_factors(cfg: &LlamaConfig, factors: &[f32]) -> std::result::Result<Self, String> {
        let dim = cfg.head_dim;
        if factors.len() != dim / 2 || !factors.iter().all(|f| f.is_finite() && *f > 0.0) {
            return Err(format!("expected {} finite positive factors", dim / 2));
        }
        let base = cfg.rope_theta;
        let inv_freq = (0..dim)
            .step_by(2)
            .zip(factors)
            .map(|(i, f)| 1.0f32 / base.powf(i as f32 / dim as f32) / f)
            .collect();
        Ok(Self { inv_freq })
    }

    /// The inverse frequencies (length `head_dim / 2`).
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `(cos, sin)` of position `pos` (each `head_dim / 2` long), in f32.
    pub fn angles(&self, pos: usize) -> (Vec<f32>, Vec<f32>) {
        self.inv_freq
            .iter()
            .map(|&f| ((pos as f32 * f).cos(), (pos as f32 * f).sin()))
            .unzip()
    }
}

/// The `llama3` remap of one inverse frequency, as in HF transformers.
fn llama3_scale(inv_freq: f32, s: &Llama3RopeScaling) -> f32 {
    let old_ctx = s.original_max_position_embeddings as f32;
    let low_freq_wavelen = old_ctx / s.low_freq_factor;
    let high_freq_wavelen = old_ctx / s.high_freq_factor;
    let wavelen = 2.0 * std::f32::consts::PI / inv_freq;
    if wavelen < high_freq_wavelen {
        inv_freq
    } else if wavelen > low_freq_wavelen {
        inv_freq / s.factor
    } else {
        let smooth = (old_ctx / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * inv_freq / s.factor + smooth * inv_freq
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small config with head_dim 16 (every RoPE band) and `scaling`.
    pub(crate) fn cfg(scaling: Option<Llama3RopeScaling>) -> LlamaConfig {
        LlamaConfig {
            hidden_size: 64,
            intermediate_size: 64,
            num_hidden_layers: 1,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 16,
            vocab_size: 10,
            rms_norm_eps: 1e-5,
            rope_theta: 500000.0,
            rope_scaling: scaling,
            max_position_embeddings: 131072,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_ids: vec![],
        }
    }

    const LLAMA32: Llama3RopeScaling = Llama3RopeScaling {
        factor: 32.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
    };

    #[test]
    fn llama3_scaling_keeps_high_scales_low_and_blends_medium() {
        let plain = Rope::new(&cfg(None));
        let scaled = Rope::new(&cfg(Some(LLAMA32)));
        let two_pi = 2.0 * std::f32::consts::PI;
        let mut seen = [false; 3];
        for (&p, &s) in plain.inv_freq().iter().zip(scaled.inv_freq()) {
            let wavelen = two_pi / p;
            if wavelen < 2048.0 {
                assert_eq!(p, s);
                seen[0] = true;
            } else if wavelen > 8192.0 {
                assert!((s - p / 32.0).abs() <= 1e-12);
                seen[1] = true;
            } else {
                assert!(s < p && s > p / 32.0);
                seen[2] = true;
            }
        }
        assert_eq!(seen, [true; 3], "head_dim 16 covers all three bands");
    }
}
