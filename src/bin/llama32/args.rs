//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run Meta's Llama 3.2 locally.
#[derive(Debug, Parser)]
#[command(name = "llama32", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Continue a raw prompt, streaming the text to stdout (stats go to stderr).
    Generate(GenerateArgs),
    /// Print the token ids of a prompt.
    Tokenize(TokenizeArgs),
}

/// Where the model is and how to run it.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Checkpoint directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// cpu, cuda[:N] or metal[:N] (GPUs need the `cuda` / `metal` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Compute dtype: f32, f16 or bf16 (default: f32 on CPU, the checkpoint's on GPU).
    #[arg(long)]
    pub dtype: Option<String>,
}

/// `llama32 generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The raw prompt (tokenized with one BOS, no chat template).
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: generation_config.json's, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// RNG seed, for reproducible sampling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Context window in tokens (default: the model's max_position_embeddings).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// Prompt tokens per prefill forward pass.
    #[arg(long, default_value_t = llama32::model::DEFAULT_PREFILL_CHUNK, hide = true)]
    pub prefill_chunk: usize,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `llama32 tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Checkpoint directory (only tokenizer.json is read).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// The text to tokenize.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// Print a JSON object `{"ids": [...], "count": N}`.
    #[arg(long)]
    pub json: bool,
}
