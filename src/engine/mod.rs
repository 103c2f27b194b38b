//! The generation engine: a checkpoint directory -> a loaded model, tokenizer and
//! backend (`crate::backend`), served by one scheduler thread that runs every request's tokens together.
//!
//! [`Engine::submit`] validates a request once and hands it to the scheduler; the returned
//! [`Handle`] receives its [`Event`]s. [`Engine::generate`] is the synchronous wrapper.

mod draft;
pub mod request;
mod scheduler;
mod sequence;
pub mod speculate;
mod start;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::Device;

use crate::backend::{BackendKind, Model, Session};
use crate::chat::{encode_conversation, ChatTemplate, Message, RenderOptions, Tool};
use crate::checkpoint::Checkpoint;
use crate::config::{GenerationConfig, LlamaConfig};
use crate::constraint::Grammars;
use crate::device::{check_dtype, ComputeDType, DeviceKind};
use crate::error::{Error, Result};
use crate::kv::KvDType;

use crate::sampler::{Sampler, StopMatcher, MAX_TOP_LOGPROBS};
use crate::tokenizer::Tokenizer;
pub use request::{Event, FinishReason, GenerateRequest, Generation, Handle, Timings};
pub use scheduler::{Load, SchedulerConfig};
use sequence::{Parts, Sequence};
use speculate::Speculator;
pub use speculate::{SpecStats, Speculation};
use start::{load_draft, start_scheduler, stop_ids};

/// Prompt tokens computed per step when no budget is given (and per pass on the candle
/// backend).
pub const DEFAULT_PREFILL_CHUNK: usize = 512;

/// KV memory of the paged backend when none is given: enough for `parallel` sequences of
/// the whole context window, at most this much.
pub const DEFAULT_KV_MEMORY: usize = 4 << 30;

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: DeviceKind,
    /// Compute dtype; `None` picks the device's default (q8_0 on CPU).
    pub dtype: Option<ComputeDType>,
    /// Sequences computed together at most (`None`: 8 on the paged CPU backend, 4 otherwise).
    pub parallel: Option<usize>,
    /// Bytes of the paged KV pool (`None`: [`DEFAULT_KV_MEMORY`] at most).
    pub kv_memory: Option<usize>,
    /// How the paged KV pool stores keys and values (`None`: f32 for the f32 format,
    /// which is exact, f16 otherwise).
    pub kv_dtype: Option<KvDType>,
    /// Which backend runs the model (the CPU backend wherever it can, by default).
    pub backend: BackendKind,
    /// Prompt tokens computed per step, shared by waiting prompts (`None`: 512). Smaller
    /// keeps running streams smoother while long prompts arrive.
    pub prefill_budget: Option<usize>,
    /// A smaller model with the same vocabulary for draft speculation
    /// ([`Speculation::Draft`]), loaded on the same device (its own default format when
    /// `draft_dtype` is `None`).
    pub draft_model: Option<PathBuf>,
    /// The draft model's compute format.
    pub draft_dtype: Option<ComputeDType>,
}

/// A model ready to generate: weights, tokenizer, stop ids, and the scheduler serving it.
/// Share it between threads (`Arc<Engine>`): requests from all of them run together.
pub struct Engine {
    dir: PathBuf,
    model: Model,
    kv_dtype: KvDType,
    candle_device: Device,
    tokenizer: Tokenizer,
    chat_template: Option<ChatTemplate>,
    generation_config: GenerationConfig,
    eos_ids: Arc<[u32]>,
    dtype: ComputeDType,
    device: DeviceKind,
    load_time: Duration,
    inbox: Sender<Sequence>,
    load: Arc<Mutex<Load>>,
    max_positions: Option<usize>,
    /// Bytes of the paged KV pool (`None` on the candle backend).
    kv_pool_bytes: Option<usize>,
    paged: bool,
    parallel: usize,
    /// The grammar compiler, built on the first constrained request.
    grammars: Mutex<Option<Arc<Grammars>>>,
    /// What loading did to stored GGUF weights.
    conversion: Option<String>,
    /// A draft model for [`Speculation::Draft`] runs in the scheduler.
    has_draft: bool,
}

impl Engine {
    /// Loads a checkpoint: a Hugging Face style directory (`config.json`, optional
    /// `generation_config.json`, `tokenizer.json`, safetensors weights) or a GGUF file
    /// (see [`Checkpoint`]).
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let ckpt = Checkpoint::open(dir)?;
        let device = options.device.open()?;
        let dtype = options.dtype.unwrap_or_else(|| ckpt.default_dtype(options.device));
        check_dtype(&device, options.device, dtype)?;
        let conversion = ckpt.conversion_note(dtype);
        let Checkpoint {
            config,
            generation_config,
            tokenizer,
            chat_template,
            weights,
            ..
        } = ckpt;
        let model = Model::load(&config, &weights, dtype, &device, options.backend)?;
        let kv_dtype = options.kv_dtype.unwrap_or(match dtype {
            ComputeDType::F32 => KvDType::F32,
            _ => KvDType::F16,
        });
        drop(weights);
        let draft = match &options.draft_model {
            Some(path) => Some(load_draft(path, options, &device, config.vocab_size)?),
            None => None,
        };
        let eos_ids = stop_ids(dir, &config, &generation_config)?;
        let has_draft = draft.is_some();
        let started = start_scheduler(&model, draft, options, kv_dtype)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            model,
            kv_dtype,
            candle_device: device,
            tokenizer,
            chat_template,
            generation_config,
            eos_ids,
            dtype,
            device: options.device,
            load_time: start.elapsed(),
            inbox: started.inbox,
            load: started.load,
            max_positions: started.max_positions,
            kv_pool_bytes: started.kv_pool_bytes,
            paged: started.paged,
            parallel: started.parallel,
            grammars: Mutex::new(None),
            conversion,
            has_draft,
        })
    }

    /// Builds the grammar compiler now (about a second for a 128k vocabulary) instead of on
    /// the first constrained request; a server calls it in the background after loading.
    pub fn prepare_constraints(&self) -> Result<()> {
        self.grammars().map(drop)
    }

    /// The grammar compiler for this model's vocabulary (built once).
    fn grammars(&self) -> Result<Arc<Grammars>> {
        let mut slot = self.grammars.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(g) = slot.as_ref() {
            return Ok(g.clone());
        }
        let built = Arc::new(Grammars::new(
            &self.tokenizer,
            self.config().vocab_size,
            self.eos_ids.clone(),
        )?);
        *slot = Some(built.clone());
        Ok(built)
    }

    /// The checkpoint directory (or GGUF file).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// For a GGUF checkpoint, which stored types were kept and which were converted to
    /// the compute format (for the stats line); `None` for safetensors.
    pub fn conversion_note(&self) -> Option<&str> {
        self.conversion.as_deref()
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

    /// True when the chat template writes `tools` into the prompt (probed: the
    /// same conversation with and without a tool).
    pub fn template_renders_tools(&self) -> bool {
        let messages = [crate::chat::Message::text("user", "x")];
        let tool = serde_json::json!({"type": "function", "function": {"name": "llama32_probe",
            "description": "probe", "parameters": {"type": "object", "properties": {}}}});
        let options = crate::chat::RenderOptions {
            add_generation_prompt: true,
            date: None,
            content_as_text: true,
        };
        let with = self.encode_chat(&messages, Some(std::slice::from_ref(&tool)), &options);
        match (with, self.encode_chat(&messages, None, &options)) {
            (Ok(with), Ok(without)) => with != without,
            // No template (a base model): chat requests fail anyway.
            _ => true,
        }
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
                "{} has no chat template (chat_template.jinja, chat_template.json or tokenizer_config.json): a base model? use `generate` or /v1/completions",
                self.dir.display()
            ))
        })?;
        encode_conversation(template, &self.tokenizer, messages, tools, options)
    }

    /// One sequence of at most `ctx` positions on a backend of its own, driven directly
    /// (scoring text, perplexity): the forward pass requests use, keys and values in
    /// `kv_dtype` (`None`: the engine's).
    pub fn session(&self, ctx: usize, kv_dtype: Option<KvDType>) -> Result<Session> {
        let max = self.config().max_position_embeddings;
        if ctx == 0 || ctx > max {
            return Err(Error::InvalidParameter {
                name: "ctx-size",
                reason: format!("{ctx} is outside 1..={max} (the model's max_position_embeddings)"),
            });
        }
        Ok(Session::new(
            &self.model,
            ctx,
            kv_dtype.unwrap_or(self.kv_dtype),
            DEFAULT_PREFILL_CHUNK,
        ))
    }

    /// Positions the paged KV pool holds, all sequences together (`None` on the candle
    /// backend, which keeps a cache per sequence).
    pub fn kv_positions(&self) -> Option<usize> {
        self.max_positions
    }

    /// Bytes the paged KV pool holds when every position is written, as allocated (`None`
    /// on the candle backend). Pages are committed only as positions are written.
    pub fn kv_pool_bytes(&self) -> Option<usize> {
        self.kv_pool_bytes
    }

    /// How keys and values are stored on the CPU backend.
    pub fn kv_dtype(&self) -> KvDType {
        self.kv_dtype
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
        &self.candle_device
    }

    /// How long [`Engine::load`] took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// True when requests run batched on the paged CPU backend (f32, bf16, f16 and packed
    /// weights); false on the candle backend (GPUs, `BackendKind::Candle`).
    pub fn is_batched(&self) -> bool {
        self.paged
    }

    /// Sequences computed together at most.
    pub fn parallel(&self) -> usize {
        self.parallel
    }

    /// What the scheduler is doing now.
    pub fn load_stats(&self) -> Load {
        *self.load.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tokenizes a raw prompt like HF's `tokenizer(text)`: one BOS, special-token text recognised.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode(prompt, true)
    }

    /// The context window in effect for `ctx_size`: when `None`, the model's maximum or
    /// what the KV pool holds, whichever is smaller.
    pub fn context_window(&self, ctx_size: Option<usize>) -> Result<usize> {
        let max = self.config().max_position_embeddings;
        let pool = self.max_positions.unwrap_or(usize::MAX);
        match ctx_size {
            None => Ok(max.min(pool)),
            Some(n) if n == 0 || n > max => Err(Error::InvalidParameter {
                name: "ctx-size",
                reason: format!("{n} is outside 1..={max} (the model's max_position_embeddings)"),
            }),
            Some(n) if n > pool => Err(Error::InvalidParameter {
                name: "ctx-size",
                reason: format!("{n} positions do not fit the KV pool ({pool} positions): raise the KV memory"),
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
        self.submit(prompt.to_vec(), request, start)?.wait(on_text)
    }

    /// Validates `request` for `prompt` and queues it; its events arrive on the returned
    /// handle while other requests run alongside. `start` is when the request began.
    pub fn submit(&self, prompt: Vec<u32>, request: &GenerateRequest, start: Instant) -> Result<Handle> {
        let parts = self.parts(prompt, request, start)?;
        let (tx, rx) = flume::unbounded();
        let cancel = Arc::new(AtomicBool::new(false));
        let seq = Sequence::new(parts, tx, cancel.clone());
        self.inbox.send(seq).map_err(|_| Error::EngineStopped)?;
        Ok(Handle::new(rx, cancel))
    }

    /// The request's token budget and the prompt itself checked: `max_tokens` at least 1
    /// (0 only when scoring the prompt), a prompt that is not empty, leaves room in the
    /// context window for one generated token, and holds only ids of the vocabulary.
    /// Returns the context window.
    fn check_prompt(&self, prompt: &[u32], request: &GenerateRequest) -> Result<usize> {
        if request.max_tokens == 0 && request.prompt_logprobs.is_none() {
            return Err(Error::InvalidParameter {
                name: "max-tokens",
                reason: "must be at least 1 (0 only when scoring the prompt)".into(),
            });
        }
        if prompt.is_empty() {
            return Err(Error::InvalidParameter {
                name: "prompt",
                reason: "is empty".into(),
            });
        }
        let ctx = self.context_window(request.ctx_size)?;
        // One rule for every caller (the server checks the same before planning): a prompt
        // must leave room for at least one generated token.
        if prompt.len() >= ctx {
            return Err(Error::PromptTooLong {
                tokens: prompt.len(),
                limit: ctx,
            });
        }
        let vocab = self.config().vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidParameter {
                name: "prompt",
                reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        Ok(ctx)
    }

    /// Checks everything about a request that can be checked before it runs.
    fn parts(&self, prompt: Vec<u32>, request: &GenerateRequest, start: Instant) -> Result<Parts> {
        let ctx = self.check_prompt(&prompt, request)?;
        let vocab = self.config().vocab_size;
        let resolved = request.sampling.resolve(&self.generation_config, vocab)?;
        if request
            .logprobs
            .max(request.prompt_logprobs)
            .is_some_and(|k| k > MAX_TOP_LOGPROBS)
        {
            return Err(Error::InvalidParameter {
                name: "top_logprobs",
                reason: format!("must be at most {MAX_TOP_LOGPROBS}"),
            });
        }
        Ok(Parts {
            prompt,
            max_tokens: request.max_tokens,
            ctx,
            sampler: Sampler::new(resolved, rand::random::<u64>()),
            stop: StopMatcher::new(request.stop.clone())?,
            stream: self.tokenizer.stream(true),
            eos: self.eos_ids.clone(),
            start,
            logprobs: request.logprobs,
            prompt_logprobs: request.prompt_logprobs,
            cache_scope: request.cache_scope,
            speculation: match request.speculation.filter(|_| self.paged) {
                Some(spec) => Some(Speculator::new(spec, self.has_draft)?),
                None => None,
            },
            constraint: match &request.constraint {
                Some(c) => Some(self.grammars()?.compile(c)?),
                None => None,
            },
        })
    }
}
