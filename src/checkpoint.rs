//! A checkpoint as users have it: a Hugging Face directory (`config.json`, tokenizer,
//! chat template, safetensors) or a GGUF file (or a directory holding exactly one).
//!
//! Everything is read and validated here, once, into typed parts the engine trusts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;

use crate::chat::ChatTemplate;
use crate::config::{GenerationConfig, LlamaConfig};
use crate::device::{ComputeDType, DeviceKind};
use crate::error::{io_err, Error, Result};
use crate::gguf::{is_gguf, GgufFile};
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// What the weights are stored as.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    /// Safetensors (bf16, f16 or f32).
    Safetensors,
    /// A GGUF file; its matrices' types with their counts, most used first.
    Gguf(Vec<(GgmlDType, usize)>),
}

/// The parts of a checkpoint, validated.
pub struct Checkpoint {
    /// The directory or GGUF file it was read from.
    pub path: PathBuf,
    /// The model configuration.
    pub config: LlamaConfig,
    /// Sampling defaults and stop ids.
    pub generation_config: GenerationConfig,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template (`None` for base models without one).
    pub chat_template: Option<ChatTemplate>,
    /// The tensors.
    pub weights: Weights,
    /// How the weights are stored.
    pub format: Format,
}

/// The GGUF file `path` designates: the file itself, or the single `*.gguf` inside a
/// directory that has no `config.json`. `None` for a Hugging Face directory.
pub fn gguf_path(path: &Path) -> Result<Option<PathBuf>> {
    if path.is_file() {
        return match is_gguf(path) {
            true => Ok(Some(path.to_path_buf())),
            false => Err(Error::Gguf {
                path: path.to_path_buf(),
                reason: "not a GGUF file (a checkpoint is a directory or a .gguf file)".into(),
            }),
        };
    }
    if !path.is_dir() || path.join("config.json").exists() {
        return Ok(None);
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io_err(path))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("gguf")))
        .collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(Error::Gguf {
            path: path.to_path_buf(),
            reason: format!(
                "holds {} GGUF files ({}): name the one to load",
                found.len(),
                found
                    .iter()
                    .filter_map(|p| p.file_name()?.to_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

impl Checkpoint {
    /// Reads and validates the checkpoint at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        match gguf_path(path)? {
            Some(file) => Self::open_gguf(&file),
            None => Self::open_dir(path),
        }
    }

    fn open_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "model directory or GGUF file",
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::MissingFile {
                path: config_path,
                what: "model configuration (or a .gguf file)",
            });
        }
        Ok(Self {
            path: dir.to_path_buf(),
            config: LlamaConfig::from_file(&config_path)?,
            generation_config: GenerationConfig::from_file_or_default(&dir.join("generation_config.json"))?,
            tokenizer: Tokenizer::from_file(&dir.join("tokenizer.json"))?,
            chat_template: ChatTemplate::from_dir(dir)?,
            weights: Weights::open(dir)?,
            format: Format::Safetensors,
        })
    }

    fn open_gguf(file: &Path) -> Result<Self> {
        let gguf = Arc::new(GgufFile::open(file)?);
        let meta = gguf.meta();
        let config = meta.config()?;
        let (tokenizer, chat_template) = gguf_text(file, &gguf)?;
        let generation_config = GenerationConfig {
            eos_token_ids: meta.eos_ids()?,
            ..Default::default()
        };
        let format = Format::Gguf(gguf.matrix_types());
        Ok(Self {
            path: file.to_path_buf(),
            config,
            generation_config,
            tokenizer,
            chat_template,
            weights: Weights::from_gguf(gguf.clone()),
            format,
        })
    }

    /// The compute format used when none is asked for: the device's default, except that
    /// on a CPU a GGUF file with weights below 8 bits runs as `q4k_m`.
    pub fn default_dtype(&self, device: DeviceKind) -> ComputeDType {
        let below_8_bits = match &self.format {
            Format::Gguf(types) => types
                .iter()
                .any(|(t, _)| !matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 | GgmlDType::Q8_0)),
            Format::Safetensors => false,
        };
        match device {
            DeviceKind::Cpu if below_8_bits => ComputeDType::Q4KM,
            _ => device.default_dtype(self.weights.storage_dtype()),
        }
    }

    /// What loading in `dtype` does to stored GGUF weights, for the stats line: `None` for
    /// safetensors.
    pub fn conversion_note(&self, dtype: ComputeDType) -> Option<String> {
        let Format::Gguf(types) = &self.format else {
            return None;
        };
        let listed: Vec<String> = types.iter().map(|(t, n)| format!("{n} {t:?}")).collect();
        let exact = |t: &GgmlDType| match dtype {
            ComputeDType::Q8_0 => matches!(t, GgmlDType::Q8_0),
            ComputeDType::F32 => matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16),
            ComputeDType::F16 => matches!(t, GgmlDType::F16),
            ComputeDType::Bf16 => matches!(t, GgmlDType::BF16),
            _ => false,
        };
        // Q4_K blocks go into q4k as stored where a layer packs to q4k and its rows are whole
        // 256-wide blocks; elsewhere (Q8_0 layers of q4k_m, other widths) they are converted.
        let partly = |t: &GgmlDType| matches!(dtype, ComputeDType::Q4K | ComputeDType::Q4KM) && *t == GgmlDType::Q4K;
        let (same, changed): (Vec<_>, Vec<_>) = types.iter().map(|(t, _)| *t).filter(|t| !partly(t)).partition(exact);
        let name = |v: &[GgmlDType]| v.iter().map(|t| format!("{t:?}")).collect::<Vec<_>>().join(", ");
        let mut note = format!("GGUF matrices: {}", listed.join(", "));
        if !same.is_empty() {
            note.push_str(&format!("; {} kept as stored", name(&same)));
        }
        if types.iter().any(|(t, _)| partly(t)) {
            note.push_str("; Q4K kept as stored in 4-bit layers of whole 256-wide blocks");
        }
        if !changed.is_empty() {
            note.push_str(&format!("; {} dequantized and converted to {dtype}", name(&changed)));
        }
        Some(note)
    }
}

/// The tokenizer and chat template of a GGUF file: a `tokenizer.json` (and template
/// files) beside it win, else its metadata.
fn gguf_text(file: &Path, gguf: &GgufFile) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    let meta = gguf.meta();
    let dir = file.parent().unwrap_or(Path::new("."));
    let beside = dir.join("tokenizer.json");
    let tokenizer = match beside.exists() {
        true => Tokenizer::from_file(&beside)?,
        false => Tokenizer::from_json_str(&meta.tokenizer_json()?, file)?,
    };
    let template = match ChatTemplate::from_dir(dir)? {
        Some(t) => Some(t),
        None => match meta.chat_template() {
            Some(source) => Some(ChatTemplate::new(
                source.to_string(),
                meta.token_text("tokenizer.ggml.bos_token_id")?,
                meta.token_text("tokenizer.ggml.eos_token_id")?,
            )),
            None => None,
        },
    };
    Ok((tokenizer, template))
}

/// The tokenizer and chat template of the checkpoint at `path` without its weights (for
/// `tokenize` and prompt rendering).
pub fn open_text(path: &Path) -> Result<(Tokenizer, Option<ChatTemplate>)> {
    match gguf_path(path)? {
        Some(file) => gguf_text(&file, &GgufFile::open(&file)?),
        None => Ok((
            Tokenizer::from_file(&path.join("tokenizer.json"))?,
            ChatTemplate::from_dir(path)?,
        )),
    }
}
