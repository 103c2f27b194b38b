//! The generation engine: checkpoint directory -> loaded model + tokenizer; prompt ->
//! prefill -> decode loop -> text, streamed through a callback, with timings.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use serde::Serialize;

use crate::chat::{ChatTemplate, Message, RenderOptions, Tool};
use crate::config::{GenerationConfig, LlamaConfig};
use crate::device::{check_dtype, ComputeDType, DeviceKind};
use crate::error::{Error, Result};
use crate::model::{Llama, DEFAULT_PREFILL_CHUNK};
use crate::sampler::SamplingParams;
use crate::session::Session;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: DeviceKind,
    /// Compute dtype; `None` picks the device's default (f32 on CPU).
    pub dtype: Option<ComputeDType>,
}

/// A model ready to generate: weights, tokenizer, and stop ids.
pub struct Engine {
    dir: PathBuf,
    model: Llama,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    generation_config: GenerationConfig,
    eos_ids: Vec<u32>,
    dtype: ComputeDType,
    device: DeviceKind,
    load_time: Duration,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Most tokens to generate (>= 1).
    pub max_tokens: usize,
    /// How to pick tokens (unset fields take the model's generation_config.json defaults).
    pub sampling: SamplingParams,
    /// Stop strings: generation ends when the text contains one, which is left out of it.
    pub stop: Vec<String>,
    /// Context window in tokens (prompt + output) of [`Engine::generate`]; `None` uses the
    /// model's maximum. (A [`Session`] has its own, fixed at creation.)
    pub ctx_size: Option<usize>,
    /// Prompt tokens per forward pass during prefill.
    pub prefill_chunk: usize,
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ctx_size: None,
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token was produced, or a stop string.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller's callback asked to stop.
    Cancelled,
}

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// From the start of the call to the first generated token (tokenize + prefill + sample).
    pub ttft_ms: f64,
    /// Prompt tokens per second of the prefill forward passes.
    pub prefill_tokens_per_s: f64,
    /// Generated tokens per second after the first one (0 when fewer than two).
    pub decode_tokens_per_s: f64,
}

/// The result of one generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// The generated text (special tokens left out).
    pub text: String,
    /// The generated ids (the terminating EOS is not included).
    pub token_ids: Vec<u32>,
    /// Number of prompt tokens.
    pub prompt_tokens: usize,
    /// How many of the prompt tokens were already in the session's KV cache (not prefilled).
    pub cached_tokens: usize,
    /// Number of generated tokens (`token_ids.len()`).
    pub completion_tokens: usize,
    /// Why generation ended.
    pub finish_reason: FinishReason,
    /// The sampler's seed, to replay the run.
    pub seed: u64,
    /// Speed figures.
    pub timings: Timings,
}

impl Engine {
    /// Loads a Hugging Face style checkpoint directory: `config.json`, optional
    /// `generation_config.json`, `tokenizer.json`, and safetensors weights.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        if !dir.is_dir() {
            return Err(Error::MissingFile {
                path: dir.to_path_buf(),
                what: "model directory",
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.exists() {
            return Err(Error::MissingFile {
                path: config_path,
                what: "model configuration",
            });
        }
        let config = LlamaConfig::from_file(&config_path)?;
        let generation_config = GenerationConfig::from_file_or_default(&dir.join("generation_config.json"))?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        let tokenizer_config = dir.join("tokenizer_config.json");
        let chat_template = match tokenizer_config.exists() {
            true => ChatTemplate::from_tokenizer_config(&tokenizer_config)?,
            false => None,
        };
        let weights = Weights::open(dir)?;
        let device = options.device.open()?;
        let dtype = options
            .dtype
            .unwrap_or_else(|| options.device.default_dtype(weights.storage_dtype()));
        check_dtype(&device, options.device, dtype)?;
        let model = Llama::load(&config, &weights, dtype, &device)?;
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.extend(&generation_config.eos_token_ids);
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            tokenizer,
            chat_template,
            generation_config,
            eos_ids,
            dtype,
            device: options.device,
            load_time: start.elapsed(),
        })
    }

    /// The checkpoint directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    /// `generation_config.json` (empty when the checkpoint has none).
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The chat template from `tokenizer_config.json` (`None` for base models without one).
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation with the chat template and tokenizes it without adding a
    /// second BOS (the template writes it).
    pub fn encode_chat(
        &self,
        messages: &[Message],
        tools: Option<&[Tool]>,
        options: &RenderOptions,
    ) -> Result<Vec<u32>> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat_template in tokenizer_config.json",
                self.dir.display()
            ))
        })?;
        let text = template.render(messages, tools, options)?;
        self.tokenizer.encode(&text, false)
    }

    /// The model (for callers that drive the KV cache themselves).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// Ids that end generation (from `config.json` and `generation_config.json`).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// The compute dtype in use.
    pub fn dtype(&self) -> ComputeDType {
        self.dtype
    }

    /// The device in use.
    pub fn device(&self) -> DeviceKind {
        self.device
    }

    /// The candle device in use.
    pub fn candle_device(&self) -> &Device {
        self.model.device()
    }

    /// How long [`Engine::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Tokenizes a raw prompt like HF's `tokenizer(text)`: one BOS, special-token text recognised.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(prompt, true)
    }

    /// The context window in effect for `ctx_size` (the model's maximum when `None`).
    pub fn context_window(&self, ctx_size: Option<usize>) -> Result<usize> {
        let max = self.config().max_position_embeddings;
        match ctx_size {
            None => Ok(max),
            Some(n) if n == 0 || n > max => Err(Error::InvalidParameter {
                name: "ctx-size",
                reason: format!("{n} is outside 1..={max} (the model's max_position_embeddings)"),
            }),
            Some(n) => Ok(n),
        }
    }

    /// Generates a continuation of the raw text `prompt`. `on_text` receives each new piece
    /// of text as soon as it is complete UTF-8 (pieces concatenate to `Generation::text`);
    /// returning `ControlFlow::Break(())` stops generation with [`FinishReason::Cancelled`].
    pub fn generate(
        &self,
        prompt: &str,
        request: &GenerateRequest,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let start = Instant::now();
        let ids = self.tokenize(prompt)?;
        self.generate_from_ids(&ids, request, start, on_text)
    }

    /// Like [`Engine::generate`] for an already tokenized prompt; `start` is when the
    /// request began (for time to first token).
    pub fn generate_from_ids(
        &self,
        prompt: &[u32],
        request: &GenerateRequest,
        start: Instant,
        on_text: impl FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Generation> {
        Session::new(self, request.ctx_size)?.generate(prompt, request, start, on_text)
    }
}
