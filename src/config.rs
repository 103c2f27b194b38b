//! `config.json` and `generation_config.json` -> validated, typed configuration.
//!
//! Parsing and validation happen once here; the model code trusts what it gets.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{io_err, Error, Result};

/// `rope_scaling` of type `llama3` (the Llama 3.1 / 3.2 long-context frequency remap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3RopeScaling {
    /// Global scale for low frequencies (32 for Llama 3.2).
    pub factor: f32,
    /// Wavelengths above `original / low_freq_factor` are fully scaled.
    pub low_freq_factor: f32,
    /// Wavelengths below `original / high_freq_factor` are left alone.
    pub high_freq_factor: f32,
    /// The context length the model was pre-trained with (8192 for Llama 3.2).
    pub original_max_position_embeddings: usize,
}

/// A validated Llama model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Number of query heads.
    pub num_attention_heads: usize,
    /// Number of key/value heads (grouped-query attention); divides `num_attention_heads`.
    pub num_key_value_heads: usize,
    /// Per-head width; from the config when present, else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// `None` for plain RoPE, `Some` for `rope_type: llama3`.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-text token, when the config names one.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence ids named by `config.json`.
    pub eos_token_ids: Vec<u32>,
}

/// Sampling defaults and stop ids from `generation_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct GenerationConfig {
    /// Default temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Default nucleus mass.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Default top-k.
    #[serde(default)]
    pub top_k: Option<i64>,
    /// Whether the model's authors intended sampling (false means greedy).
    #[serde(default)]
    pub do_sample: Option<bool>,
    /// Default repetition penalty.
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    /// End-of-sequence ids (one id or a list in the file).
    #[serde(default, rename = "eos_token_id", deserialize_with = "one_or_many")]
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    /// transformers >= 5 writes `rope_theta` and the scaling into one `rope_parameters` object.
    rope_parameters: Option<serde_json::Value>,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    bos_token_id: Option<u32>,
    #[serde(default, rename = "eos_token_id", deserialize_with = "one_or_many")]
    eos_token_ids: Vec<u32>,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_max_pos() -> usize {
    2048
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(id)) => vec![id],
        Some(OneOrMany::Many(ids)) => ids,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// The largest value a config count may have (far above every Llama-architecture model).
fn size_limit(field: &str) -> usize {
    match field {
        "num_hidden_layers" | "num_attention_heads" | "num_key_value_heads" | "head_dim" => 1024,
        "hidden_size" => 1 << 16,
        "intermediate_size" => 1 << 18,
        "vocab_size" => 1 << 22,
        "max_position_embeddings" => 1 << 24,
        _ => usize::MAX,
    }
}

impl LlamaConfig {
    /// Reads and validates a `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let raw: RawConfig = read_json(path)?;
        Validator { path }.validate(raw)
    }

    /// Parses and validates `config.json` text; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Validator { path }.validate(raw)
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json`; a missing file gives the empty default.
    pub fn from_file_or_default(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        read_json(path)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidConfig {
            path: PathBuf::from(self.path),
            field: field.to_string(),
            reason: reason.into(),
        }
    }

    /// A required count in `1..=limit(field)`: sizes are checked before anything is
    /// allocated from them, so a hostile config.json is an error, never an abort.
    fn positive(&self, field: &str, v: Option<usize>) -> Result<usize> {
        let limit = size_limit(field);
        match v {
            None => Err(self.err(field, "is required")),
            Some(0) => Err(self.err(field, "must be greater than zero")),
            Some(v) if v > limit => Err(self.err(field, format!("{v} is larger than any supported model ({limit})"))),
            Some(v) => Ok(v),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<LlamaConfig> {
        self.check_kind(&raw)?;
        // Beyond these, the file is broken or hostile (Llama 3.2 3B: 28 layers, 3072 wide).
        let hidden_size = self.positive("hidden_size", raw.hidden_size)?;
        let (heads, kv_heads, head_dim) = self.heads(&raw, hidden_size)?;
        self.computable("rms_norm_eps", raw.rms_norm_eps)?;
        let (rope_theta, rope_scaling) = self.rope(&raw)?;
        self.computable("rope_theta", rope_theta)?;
        self.check_positions(&raw)?;
        let vocab_size = self.positive("vocab_size", raw.vocab_size)?;
        if let Some(id) = raw.bos_token_id.filter(|&id| id as usize >= vocab_size) {
            return Err(self.err("bos_token_id", format!("{id} is outside the vocabulary ({vocab_size})")));
        }
        Ok(LlamaConfig {
            hidden_size,
            intermediate_size: self.positive("intermediate_size", raw.intermediate_size)?,
            num_hidden_layers: self.positive("num_hidden_layers", raw.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta: rope_theta as f32,
            rope_scaling,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: raw.eos_token_ids,
        })
    }

    /// `v` must be a positive number that stays finite and positive in f32, the type it is
    /// computed in (`1e308` loads as infinity and `1e-50` as zero otherwise).
    fn computable(&self, name: &str, v: f64) -> Result<f64> {
        let single = v as f32;
        match v.is_finite() && v > 0.0 && single.is_finite() && single > 0.0 {
            true => Ok(v),
            false => Err(self.err(name, format!("{v} must be a positive number within f32's range"))),
        }
    }

    /// Only the Llama architecture runs here (Llama 3.x, its fine-tunes, SmolLM...), with
    /// SiLU and no biases.
    fn check_kind(&self, raw: &RawConfig) -> Result<()> {
        if let Some(kind) = raw.model_type.as_deref().filter(|k| *k != "llama") {
            return Err(self.err("model_type", format!("`{kind}` is not supported (only `llama`)")));
        }
        if let Some(arch) = raw.architectures.iter().find(|a| *a != "LlamaForCausalLM") {
            return Err(self.err(
                "architectures",
                format!("`{arch}` is not supported (only LlamaForCausalLM)"),
            ));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(self.err("hidden_act", format!("`{act}` is not supported (only silu)")));
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err(self.err("attention_bias", "biases are not supported by Llama 3.2"));
        }
        Ok(())
    }

    /// Attention heads, key/value heads and the head width, each consistent with the others.
    fn heads(&self, raw: &RawConfig, hidden_size: usize) -> Result<(usize, usize, usize)> {
        let heads = self.positive("num_attention_heads", raw.num_attention_heads)?;
        let kv_heads = self.positive("num_key_value_heads", Some(raw.num_key_value_heads.unwrap_or(heads)))?;
        if !heads.is_multiple_of(kv_heads) {
            return Err(self.err(
                "num_key_value_heads",
                format!("{kv_heads} does not divide num_attention_heads = {heads}"),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(d) => self.positive("head_dim", Some(d))?,
            None if !hidden_size.is_multiple_of(heads) => {
                return Err(self.err(
                    "num_attention_heads",
                    format!("{heads} does not divide hidden_size = {hidden_size} and no head_dim is given"),
                ))
            }
            None => hidden_size / heads,
        };
        if !head_dim.is_multiple_of(2) {
            return Err(self.err("head_dim", format!("{head_dim} must be even for RoPE")));
        }
        Ok((heads, kv_heads, head_dim))
    }

    /// `max_position_embeddings` within 1..=the size limit.
    fn check_positions(&self, raw: &RawConfig) -> Result<()> {
        if raw.max_position_embeddings == 0 {
            return Err(self.err("max_position_embeddings", "must be greater than zero"));
        }
        let limit = size_limit("max_position_embeddings");
        if raw.max_position_embeddings > limit {
            return Err(self.err(
                "max_position_embeddings",
                format!(
                    "{} is larger than any supported model ({limit})",
                    raw.max_position_embeddings
                ),
            ));
        }
        Ok(())
    }

    /// `rope_theta` and the scaling, from the classic fields or from `rope_parameters`.
    fn rope(&self, raw: &RawConfig) -> Result<(f64, Option<Llama3RopeScaling>)> {
        let params = raw.rope_parameters.as_ref().filter(|p| p.is_object());
        let theta = raw
            .rope_theta
            .or_else(|| params.and_then(|p| p.get("rope_theta")).and_then(|t| t.as_f64()))
            .unwrap_or(10000.0);
        let scaling = match (&raw.rope_scaling, params) {
            (Some(s), _) if !s.is_null() => self.rope_scaling(Some(s))?,
            (_, Some(p)) => self.rope_scaling(Some(p))?,
            _ => None,
        };
        Ok((theta, scaling))
    }

    fn rope_scaling(&self, v: Option<&serde_json::Value>) -> Result<Option<Llama3RopeScaling>> {
        let Some(obj) = v.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let field = "rope_scaling";
        let obj = obj
            .as_object()
            .ok_or_else(|| self.err(field, "must be an object or null"))?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(|t| t.as_str())
            .ok_or_else(|| self.err("rope_scaling.rope_type", "is required"))?;
        match kind {
            "default" => return Ok(None),
            "llama3" => {}
            other => {
                return Err(self.err(
                    "rope_scaling.rope_type",
                    format!("unknown type `{other}` (supported: llama3, default)"),
                ))
            }
        }
        let num = |name: &str| -> Result<f64> {
            let full = format!("rope_scaling.{name}");
            let v = obj
                .get(name)
                .and_then(|v| v.as_f64())
                .ok_or_else(|| self.err(&full, "is required"))?;
            self.computable(&full, v)
        };
        let scaling = Llama3RopeScaling {
            factor: num("factor")? as f32,
            low_freq_factor: num("low_freq_factor")? as f32,
            high_freq_factor: num("high_freq_factor")? as f32,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        };
        if scaling.high_freq_factor <= scaling.low_freq_factor {
            return Err(self.err("rope_scaling.high_freq_factor", "must be greater than low_freq_factor"));
        }
        Ok(Some(scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(overrides: serde_json::Value) -> Result<LlamaConfig> {
        let mut v = serde_json::json!({"hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "vocab_size": 100, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "eos_token_id": [1, 2]});
        for (k, val) in overrides.as_object().unwrap() {
            v[k] = val.clone();
        }
        LlamaConfig::from_json_str(&v.to_string(), Path::new("config.json"))
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidConfig { field, .. } => field,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn defaults_head_dim_and_parses_eos_list() {
        let c = parse(serde_json::json!({})).unwrap();
        assert_eq!(c.head_dim, 8);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
        assert!(c.rope_scaling.is_none());
    }

    #[test]
    fn explicit_head_dim_wins() {
        assert_eq!(parse(serde_json::json!({"head_dim": 16})).unwrap().head_dim, 16);
    }

    #[test]
    fn llama3_rope_scaling() {
        let c = parse(serde_json::json!({"rope_scaling": {"factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}))
        .unwrap();
        assert_eq!(c.rope_scaling.unwrap().original_max_position_embeddings, 8192);
    }

    #[test]
    fn reads_transformers_v5_rope_parameters() {
        let c = parse(
            serde_json::json!({"rope_theta": null, "rope_parameters": {"rope_theta": 500000.0,
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}),
        )
        .unwrap();
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.rope_scaling.unwrap().factor, 32.0);
        let plain = parse(serde_json::json!({"rope_theta": null,
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}))
        .unwrap();
        assert_eq!((plain.rope_theta, plain.rope_scaling), (10000.0, None));
    }

    #[test]
    fn rejects_bad_values_naming_the_field() {
        use serde_json::json;
        let cases = [
            (json!({"num_attention_heads": 0}), "num_attention_heads"),
            (json!({"num_key_value_heads": 3}), "num_key_value_heads"),
            (json!({"head_dim": 7}), "head_dim"),
            (json!({"rms_norm_eps": -1.0}), "rms_norm_eps"),
            (json!({"rms_norm_eps": 1e308}), "rms_norm_eps"),
            (json!({"rms_norm_eps": 1e-50}), "rms_norm_eps"),
            (json!({"rope_theta": 1e39}), "rope_theta"),
            (json!({"vocab_size": 0}), "vocab_size"),
            (
                json!({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}),
                "rope_scaling.rope_type",
            ),
            (json!({"rope_scaling": {"rope_type": "llama3"}}), "rope_scaling.factor"),
        ];
        for (extra, field) in cases {
            let msg = format!("{extra}");
            assert_eq!(field_of(parse(extra).unwrap_err()), field, "{msg}");
        }
    }
}
