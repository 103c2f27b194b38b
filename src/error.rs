//! The crate's error type: one enum a caller can match on.

use std::path::PathBuf;

/// Everything that can go wrong in `llama32`.
///
/// Variants carry the file, field, tensor or parameter at fault so that the message alone
/// tells a user what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read (missing, permissions, I/O failure).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file at fault.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },

    /// A required file of a checkpoint is missing.
    #[error("{}: missing ({what})", path.display())]
    MissingFile {
        /// The path that was looked for.
        path: PathBuf,
        /// What the file is for.
        what: &'static str,
    },

    /// A JSON file is not valid JSON or does not have the expected shape.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file at fault.
        path: PathBuf,
        /// The parse error (with line and column).
        source: serde_json::Error,
    },

    /// `config.json` parsed but holds a value the model cannot run with.
    #[error("{}: field `{field}`: {reason}", path.display())]
    InvalidConfig {
        /// The config file.
        path: PathBuf,
        /// The offending field.
        field: String,
        /// Why the value is refused.
        reason: String,
    },

    /// A safetensors file is malformed (truncated, corrupt header, bad offsets...).
    #[error("{}: invalid safetensors file: {reason}", path.display())]
    Safetensors {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A GGUF file is malformed or holds something this engine does not run.
    #[error("{}: GGUF: {reason}", path.display())]
    Gguf {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The sharded checkpoint index is malformed or unsafe.
    #[error("{}: {reason}", path.display())]
    ShardIndex {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor the model needs is absent from the checkpoint.
    #[error("tensor `{name}` is missing from the checkpoint in {}", dir.display())]
    MissingTensor {
        /// The tensor name, as in Hugging Face checkpoints.
        name: String,
        /// The checkpoint directory.
        dir: PathBuf,
    },

    /// A tensor exists but has the wrong shape or an unsupported dtype.
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    BadTensor {
        /// The safetensors file holding it.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Expected vs found.
        reason: String,
    },

    /// The tokenizer could not be loaded or failed on an input.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template is missing, or failed to render (e.g. it raised an exception).
    #[error("chat template: {0}")]
    Template(String),

    /// The prompt does not fit the context window with room for one generated token.
    #[error("the prompt has {tokens} tokens but the context window is {limit} tokens (room for at least one generated token is needed)")]
    PromptTooLong {
        /// Prompt length in tokens.
        tokens: usize,
        /// Context window in tokens.
        limit: usize,
    },

    /// A user-supplied parameter is out of its allowed range.
    #[error("invalid parameter `{name}`: {reason}")]
    InvalidParameter {
        /// The parameter, named as on the command line / API.
        name: &'static str,
        /// The allowed range or reason.
        reason: String,
    },

    /// The requested device or dtype is not available in this build or on this machine.
    #[error("unsupported: {0}")]
    Unsupported(String),

    /// The model produced NaN or infinite logits.
    #[error("the model produced non-finite logits (NaN or infinity) at generation step {step}")]
    NonFiniteLogits {
        /// The 0-based generation step (0 = the token after the prompt).
        step: usize,
    },

    /// NaN or infinite activations inside the model (corrupt or overflowing weights).
    #[error("the model produced non-finite values (NaN or infinity) in layer {layer}")]
    NonFiniteActivations {
        /// The layer (the number of layers for the final norm).
        layer: usize,
    },

    /// A broken internal contract between the engine's parts: a bug, reported instead of a
    /// panic.
    #[error("internal error: {0}")]
    Internal(String),

    /// The engine's scheduler is gone (it stopped after an internal error).
    #[error("the engine has stopped")]
    EngineStopped,

    /// A grammar constraint failed while generating (the grammar admits nothing more, or
    /// the matcher hit a limit).
    #[error("constraint: {0}")]
    Constraint(String),

    /// An error from the tensor library.
    #[error("tensor backend: {0}")]
    Candle(#[from] candle_core::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// True when the error is the caller's bad parameter (a CLI maps it to exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            Error::InvalidParameter { .. } | Error::Unsupported(_) | Error::PromptTooLong { .. }
        )
    }
}

pub(crate) fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, source }
}
