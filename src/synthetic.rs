//! Synthetic checkpoints: the exact Llama 3.2 1B / 3B shapes with random weights.
//!
//! A random checkpoint costs the same to run as the real one, so benchmarks and speed
//! comparisons need no download. The text it produces is meaningless.

use std::io::{BufWriter, Write};
use std::path::Path;

use serde_json::json;

use crate::error::{io_err, Result};
use crate::model::expected_tensors;
use crate::tokenizer::Tokenizer;
use crate::LlamaConfig;

/// Which published shape to imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyntheticShape {
    /// Llama-3.2-1B: 16 layers, hidden 2048, 32 heads / 8 KV heads, head_dim 64.
    Llama32_1B,
    /// Llama-3.2-3B: 28 layers, hidden 3072, 24 heads / 8 KV heads, head_dim 128.
    Llama32_3B,
}

impl SyntheticShape {
    /// The `config.json` of the real model.
    pub fn config_json(self) -> serde_json::Value {
        let (hidden, layers, heads, head_dim) = match self {
            Self::Llama32_1B => (2048, 16, 32, 64),
            Self::Llama32_3B => (3072, 28, 24, 128),
        };
        json!({
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": 8192, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": 8, "head_dim": head_dim,
            "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
            "rope_theta": 500000.0, "tie_word_embeddings": true, "hidden_act": "silu",
            "rope_scaling": {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_type": "llama3"},
            "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
            "torch_dtype": "bfloat16",
        })
    }
}

/// The files [`write_checkpoint`] writes into its folder.
pub const CHECKPOINT_FILES: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "model.safetensors",
];

/// Writes a bf16 checkpoint of `shape` with random weights into `dir`, with the given
/// `tokenizer.json` (and the `tokenizer_config.json` beside it, for the chat template, when
/// there is one). Weights are small uniform noise (norms are 1), so activations stay finite.
/// The tokenizer files are read (and the tokenizer checked) before anything is written, so
/// they may lie in `dir` itself.
pub fn write_checkpoint(dir: &Path, shape: SyntheticShape, tokenizer_json: &Path, seed: u64) -> Result<()> {
    let tokenizer = std::fs::read(tokenizer_json).map_err(io_err(tokenizer_json))?;
    Tokenizer::from_file(tokenizer_json)?;
    let template_path = tokenizer_json.with_file_name("tokenizer_config.json");
    let template = match template_path.exists() {
        true => Some(std::fs::read(&template_path).map_err(io_err(&template_path))?),
        false => None,
    };
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let config = shape.config_json();
    let config_path = dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).unwrap_or_default();
    std::fs::write(&config_path, text).map_err(io_err(&config_path))?;
    let cfg = LlamaConfig::from_file(&config_path)?;
    let dst = dir.join("tokenizer.json");
    std::fs::write(&dst, tokenizer).map_err(io_err(&dst))?;
    let dst = dir.join("tokenizer_config.json");
    match template {
        Some(template) => std::fs::write(&dst, template).map_err(io_err(&dst))?,
        // A template left from an earlier checkpoint would not be this tokenizer's.
        None if dst.exists() => std::fs::remove_file(&dst).map_err(io_err(&dst))?,
        None => {}
    }
    write_safetensors(&dir.join("model.safetensors"), &expected_tensors(&cfg), seed)
}

fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)], seed: u64) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let bytes = shape.iter().product::<usize>() * 2;
        header.insert(
            name.clone(),
            json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = serde_json::Value::Object(header).to_string().into_bytes();
    header.resize(header.len().div_ceil(8) * 8, b' ');
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rng = seed | 1;
    let write = |out: &mut BufWriter<std::fs::File>, bytes: &[u8]| out.write_all(bytes).map_err(io_err(path));
    write(&mut out, &(header.len() as u64).to_le_bytes())?;
    write(&mut out, &header)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let is_norm = name.ends_with("norm.weight");
        let scale = if is_norm {
            0.0
        } else {
            1.0 / (shape[shape.len() - 1] as f32).sqrt()
        };
        for i in 0..n {
            let v = if is_norm { 1.0 } else { scale * uniform(&mut rng) };
            buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes());
            if buf.len() >= 1 << 20 || i + 1 == n {
                write(&mut out, &buf)?;
                buf.clear();
            }
        }
    }
    out.flush().map_err(io_err(path))
}

/// xorshift64 -> uniform in [-1.7, 1.7) (unit variance).
fn uniform(state: &mut u64) -> f32 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    ((*state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.46
}
