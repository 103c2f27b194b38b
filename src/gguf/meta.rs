//! What a GGUF file's metadata says about the model: the Llama configuration, the
//! tokenizer (rebuilt as a `tokenizer.json` for the `tokenizers` crate), the chat template
//! and the stop tokens.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::{json, Map};

use super::GgufFile;
use crate::config::LlamaConfig;
use crate::error::{Error, Result};

/// Typed access to one file's metadata.
pub struct GgufMeta<'a> {
    path: &'a Path,
    kv: &'a HashMap<String, Value>,
    file: &'a GgufFile,
}

/// Texts llama.cpp also treats as end-of-generation when they are control tokens.
const END_TEXTS: [&str; 7] = [
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end_of_text|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|end|>",
    "<end_of_turn>",
];

/// Llama 3's pre-tokenizer split (the `tokenizer.json` of Llama 3.x).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A GGUF token type (`tokenizer.ggml.token_type`): control tokens are special.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

pub(super) fn get_usize(kv: &HashMap<String, Value>, key: &str) -> std::result::Result<Option<usize>, String> {
    let v = match kv.get(key) {
        None => return Ok(None),
        Some(v) => v,
    };
    let n: Option<i128> = match v {
        Value::U8(x) => Some(i128::from(*x)),
        Value::I8(x) => Some(i128::from(*x)),
        Value::U16(x) => Some(i128::from(*x)),
        Value::I16(x) => Some(i128::from(*x)),
        Value::U32(x) => Some(i128::from(*x)),
        Value::I32(x) => Some(i128::from(*x)),
        Value::U64(x) => Some(i128::from(*x)),
        Value::I64(x) => Some(i128::from(*x)),
        _ => None,
    };
    n.and_then(|n| usize::try_from(n).ok())
        .map(Some)
        .ok_or_else(|| format!("`{key}` is not a non-negative integer"))
}

pub(super) fn get_str<'a>(kv: &'a HashMap<String, Value>, key: &str) -> Option<&'a str> {
    match kv.get(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

impl<'a> GgufMeta<'a> {
    pub(super) fn new(path: &'a Path, kv: &'a HashMap<String, Value>, file: &'a GgufFile) -> Self {
        Self { path, kv, file }
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        get_usize(self.kv, key).map_err(|e| self.bad(e))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(f64::from(*x))),
            Some(Value::F64(x)) => Ok(Some(*x)),
            Some(_) => Err(self.bad(format!("`{key}` is not a number"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        match self.kv.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(self.bad(format!("`{key}` holds a non-string"))),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.bad(format!("`{key}` is not an array"))),
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.kv.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&'a str> {
        get_str(self.kv, "general.architecture")
    }

    /// The model configuration, validated exactly as a `config.json` is.
    pub fn config(&self) -> Result<LlamaConfig> {
        let arch = self.architecture().unwrap_or("(none)");
        if arch != "llama" {
            return Err(self.bad(format!(
                "general.architecture is `{arch}`; only the Llama architecture (`llama`) is supported"
            )));
        }
        if let Some(kind) = get_str(self.kv, "llama.rope.scaling.type").filter(|k| *k != "none") {
            return Err(self.bad(format!("llama.rope.scaling.type `{kind}` is not supported")));
        }
        let need = |key: &str| -> Result<usize> {
            self.usize(&format!("llama.{key}"))?
                .ok_or_else(|| self.bad(format!("metadata `llama.{key}` is missing")))
        };
        let hidden = need("embedding_length")?;
        let heads = need("attention.head_count")?;
        let embed_rows = self
            .file
            .tensor("model.embed_tokens.weight")
            .and_then(|t| t.dims.first().copied());
        let vocab = match self.usize("llama.vocab_size")? {
            Some(v) => Some(v),
            None => embed_rows,
        };
        let head_dim = match self.usize("llama.attention.key_length")? {
            Some(d) => Some(d),
            None => self.usize("llama.rope.dimension_count")?,
        };
        let mut cfg = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hidden,
            "intermediate_size": need("feed_forward_length")?,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.usize("llama.attention.head_count_kv")?.unwrap_or(heads),
            "vocab_size": vocab,
            "rms_norm_eps": self.float("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            "rope_theta": self.float("llama.rope.freq_base")?.unwrap_or(10_000.0),
            "max_position_embeddings": need("context_length")?,
            "tie_word_embeddings": self.file.tensor("lm_head.weight").is_none(),
            "bos_token_id": self.usize("tokenizer.ggml.bos_token_id")?,
            "eos_token_id": self.eos_ids()?,
        });
        if let (Some(d), Some(obj)) = (head_dim, cfg.as_object_mut()) {
            obj.insert("head_dim".into(), json!(d));
        }
        LlamaConfig::from_json_str(&cfg.to_string(), self.path)
    }

    /// End-of-generation ids: `eos_token_id`, `eot_token_id`, `eom_token_id`, and the
    /// control tokens llama.cpp also stops at (`<|eot_id|>`, `<|im_end|>`...).
    pub fn eos_ids(&self) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
            if let Some(id) = self.usize(&format!("tokenizer.ggml.{key}"))? {
                ids.push(u32::try_from(id).map_err(|_| self.bad(format!("tokenizer.ggml.{key} is too large")))?);
            }
        }
        if let (Some(tokens), Some(types)) = (self.strings("tokenizer.ggml.tokens")?, self.token_types()?) {
            for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
                if *ty == CONTROL && END_TEXTS.contains(tok) {
                    ids.push(id as u32);
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    fn token_types(&self) -> Result<Option<Vec<i64>>> {
        match self.kv.get("tokenizer.ggml.token_type") {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => Ok(i64::from(*x)),
                    Value::U32(x) => Ok(i64::from(*x)),
                    Value::I8(x) => Ok(i64::from(*x)),
                    Value::U8(x) => Ok(i64::from(*x)),
                    _ => Err(self.bad("`tokenizer.ggml.token_type` holds a non-integer")),
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(_) => Err(self.bad("`tokenizer.ggml.token_type` is not an array")),
        }
    }

    /// `tokenizer.chat_template`.
    pub fn chat_template(&self) -> Option<&'a str> {
        get_str(self.kv, "tokenizer.chat_template")
    }

    /// The text of token `id` (for the template's `bos_token` / `eos_token`).
    /// Reads the one entry of `tokenizer.ggml.tokens` it needs (the list holds ~128k).
    pub fn token_text(&self, key: &str) -> Result<String> {
        let Some(id) = self.usize(key)? else {
            return Ok(String::new());
        };
        match self.kv.get("tokenizer.ggml.tokens") {
            Some(Value::Array(items)) => match items.get(id) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(_) => Err(self.bad("`tokenizer.ggml.tokens` holds a non-string")),
                None => Ok(String::new()),
            },
            Some(_) => Err(self.bad("`tokenizer.ggml.tokens` is not an array")),
            None => Ok(String::new()),
        }
    }

    /// A `tokenizer.json` for the `tokenizers` crate rebuilt from the byte-level BPE
    /// vocabulary (`tokenizer.ggml.model` `gpt2`), its merges, token types and the
    /// pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
    pub fn tokenizer_json(&self) -> Result<String> {
        let model = get_str(self.kv, "tokenizer.ggml.model").unwrap_or("(none)");
        if model != "gpt2" {
            return Err(self.bad(format!(
                "tokenizer.ggml.model `{model}` is not byte-level BPE (`gpt2`): put the model's tokenizer.json beside the file"
            )));
        }
        let tokens = self
            .strings("tokenizer.ggml.tokens")?
            .ok_or_else(|| self.bad("metadata `tokenizer.ggml.tokens` is missing"))?;
        let types = self.token_types()?.unwrap_or_default();
        let merges = self.strings("tokenizer.ggml.merges")?.unwrap_or_default();
        let mut vocab = Map::new();
        let mut added = Vec::new();
        for (id, tok) in tokens.iter().enumerate() {
            if vocab.insert(tok.to_string(), json!(id)).is_some() {
                return Err(self.bad(format!("token `{tok}` appears twice in tokenizer.ggml.tokens")));
            }
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == CONTROL || ty == USER_DEFINED {
                added.push(json!({
                    "id": id, "content": tok, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == CONTROL,
                }));
            }
        }
        let pre = self.pre_tokenizer()?;
        let bos = self.usize("tokenizer.ggml.bos_token_id")?;
        let add_bos = self.bool("tokenizer.ggml.add_bos_token").unwrap_or(false);
        let post = match (add_bos, bos.and_then(|b| tokens.get(b).map(|t| (b, t)))) {
            (true, Some((id, text))) => json!({
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": text, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": text, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {*text: {"id": text, "ids": [id], "tokens": [text]}},
            }),
            _ => serde_json::Value::Null,
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": post,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        });
        Ok(tokenizer.to_string())
    }

    /// The pre-tokenizer of `tokenizer.ggml.pre` (the splits llama.cpp applies for it).
    fn pre_tokenizer(&self) -> Result<serde_json::Value> {
        let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
        let pre = get_str(self.kv, "tokenizer.ggml.pre").unwrap_or("default");
        Ok(match pre {
            "llama-bpe" | "llama3" | "llama-v3" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false},
                byte_level(false),
            ]}),
            "smollm" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            "default" | "gpt2" | "gpt-2" => byte_level(true),
            other => {
                return Err(self.bad(format!(
                    "tokenizer.ggml.pre `{other}` is not supported (llama-bpe, smollm, gpt2): put the model's tokenizer.json beside the file"
                )))
            }
        })
    }
}
