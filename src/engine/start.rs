//! What loading makes around a model: the ids that stop generation, the backend sized to
//! the KV budget, the draft model, and the scheduler thread that owns them.

use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};

use candle_core::Device;

use super::sequence::Sequence;
use super::{draft, scheduler, Load, LoadOptions, SchedulerConfig, DEFAULT_KV_MEMORY, DEFAULT_PREFILL_CHUNK};
use crate::backend::{Backend, Model};
use crate::checkpoint::Checkpoint;
use crate::config::{GenerationConfig, LlamaConfig};
use crate::device::check_dtype;
use crate::error::{Error, Result};
use crate::kv::KvDType;

/// The ids that end generation: `config.json`'s and `generation_config.json`'s, each
/// inside the vocabulary.
pub(super) fn stop_ids(dir: &Path, config: &LlamaConfig, generation: &GenerationConfig) -> Result<Arc<[u32]>> {
    let mut eos_ids = config.eos_token_ids.clone();
    eos_ids.extend(&generation.eos_token_ids);
    eos_ids.sort_unstable();
    eos_ids.dedup();
    if let Some(&bad) = eos_ids.iter().find(|&&id| id as usize >= config.vocab_size) {
        return Err(Error::InvalidConfig {
            path: dir.join("generation_config.json"),
            field: "eos_token_id".into(),
            reason: format!("{bad} is outside the vocabulary ({})", config.vocab_size),
        });
    }
    Ok(eos_ids.into())
}

/// A running scheduler thread and what the engine keeps of it.
pub(super) struct Started {
    pub(super) inbox: Sender<Sequence>,
    pub(super) load: Arc<Mutex<Load>>,
    pub(super) max_positions: Option<usize>,
    pub(super) kv_pool_bytes: Option<usize>,
    pub(super) paged: bool,
    pub(super) parallel: usize,
}

/// Makes the backend (and the draft model's) for `model` and starts the scheduler thread
/// that owns them.
pub(super) fn start_scheduler(
    model: &Model,
    draft: Option<Model>,
    options: &LoadOptions,
    kv_dtype: KvDType,
) -> Result<Started> {
    let (backend, parallel) = make_backend(model, options, kv_dtype)?;
    let (paged, max_positions, kv_pool_bytes) = (backend.is_cpu(), backend.max_positions(), backend.kv_bytes());
    let (inbox, rx) = mpsc::channel();
    let load = Arc::new(Mutex::new(Load::default()));
    let drafter = draft.map(|m| {
        let bytes = draft_pool_bytes(m.config(), parallel);
        draft::DraftRunner::new(m.backend(bytes, KvDType::F16, DEFAULT_PREFILL_CHUNK))
    });
    let config = SchedulerConfig {
        max_running: parallel,
        prefill_budget: options.prefill_budget.unwrap_or(DEFAULT_PREFILL_CHUNK).max(1),
    };
    let sched = scheduler::Scheduler::new(backend, drafter, config, rx, load.clone());
    std::thread::Builder::new()
        .name("llama32-scheduler".into())
        .spawn(move || sched.run())
        .map_err(|e| Error::Unsupported(format!("cannot start the scheduler thread: {e}")))?;
    Ok(Started {
        inbox,
        load,
        max_positions,
        kv_pool_bytes,
        paged,
        parallel,
    })
}

/// The draft model at `path`, which must share the target's vocabulary.
pub(super) fn load_draft(path: &Path, options: &LoadOptions, device: &Device, vocab: usize) -> Result<Model> {
    let ckpt = Checkpoint::open(path)?;
    if ckpt.config.vocab_size != vocab {
        return Err(Error::InvalidParameter {
            name: "draft-model",
            reason: format!(
                "{} has a vocabulary of {} tokens, the model {vocab}: a draft model must share the tokenizer",
                path.display(),
                ckpt.config.vocab_size
            ),
        });
    }
    let dtype = options
        .draft_dtype
        .unwrap_or_else(|| ckpt.default_dtype(options.device));
    check_dtype(device, options.device, dtype)?;
    Model::load(&ckpt.config, &ckpt.weights, dtype, device, options.backend)
}

/// The draft model's pool: every parallel sequence's whole context in f16, at most
/// [`DEFAULT_KV_MEMORY`] (its pages are committed only as positions are written).
fn draft_pool_bytes(c: &LlamaConfig, parallel: usize) -> usize {
    c.max_position_embeddings
        .saturating_mul(parallel)
        .saturating_mul(bytes_per_position(c, KvDType::F16))
        .min(DEFAULT_KV_MEMORY)
}

/// Bytes one position's keys and values take in every layer, stored as `dtype`.
fn bytes_per_position(c: &LlamaConfig, dtype: KvDType) -> usize {
    c.num_hidden_layers * dtype.bytes((c.kv_dim(), c.kv_dim()), c.head_dim)
}

/// The backend for `model` and the number of sequences it runs together.
fn make_backend(model: &Model, options: &LoadOptions, kv_dtype: KvDType) -> Result<(Backend, usize)> {
    if options.parallel == Some(0) {
        return Err(Error::InvalidParameter {
            name: "parallel",
            reason: "must be at least 1".into(),
        });
    }
    let c = model.config();
    if kv_dtype.stored(c.head_dim) != kv_dtype {
        let needs = match kv_dtype {
            KvDType::Q8Q4 => "a power of two of at least 8",
            _ => "a multiple of 8",
        };
        return Err(Error::InvalidParameter {
            name: "kv-dtype",
            reason: format!(
                "{kv_dtype} needs a head width that is {needs} (this model's is {})",
                c.head_dim
            ),
        });
    }
    let per_position = bytes_per_position(c, kv_dtype);
    let batched = model.is_cpu();
    let parallel = options.parallel.unwrap_or(if batched { 8 } else { 4 });
    let wanted = c
        .max_position_embeddings
        .saturating_mul(parallel)
        .saturating_mul(per_position);
    let kv_bytes = options.kv_memory.unwrap_or(wanted.min(DEFAULT_KV_MEMORY));
    if kv_bytes < per_position * crate::kv::DEFAULT_BLOCK_SIZE {
        return Err(Error::InvalidParameter {
            name: "kv-memory",
            reason: format!(
                "{kv_bytes} bytes hold less than one block of {} positions ({per_position} bytes each)",
                crate::kv::DEFAULT_BLOCK_SIZE
            ),
        });
    }
    // On the CPU the pool lives in the machine's memory (a GPU's is checked by its driver).
    let asked = options.kv_memory.is_some();
    if let Some(total) = machine_memory().filter(|&total| asked && batched && kv_bytes > total) {
        return Err(Error::InvalidParameter {
            name: "kv-memory",
            reason: format!(
                "{} MiB is more than this machine's {} MiB of memory",
                kv_bytes >> 20,
                total >> 20
            ),
        });
    }
    Ok((model.backend(kv_bytes, kv_dtype, DEFAULT_PREFILL_CHUNK), parallel))
}

/// The machine's physical memory in bytes (Linux's `/proc/meminfo`; `None` elsewhere).
fn machine_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
