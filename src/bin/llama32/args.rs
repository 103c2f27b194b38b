//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Run Meta's Llama 3.2 locally.
#[derive(Debug, Parser)]
#[command(name = "llama32", version, about)]
pub struct Cli {
    /// CPU threads for the tensor kernels (default: every available core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Continue a raw prompt, streaming the text to stdout (stats go to stderr).
    Generate(GenerateArgs),
    /// Chat with an Instruct model: one answer with -p, else an interactive session.
    Chat(ChatArgs),
    /// Print the token ids of a prompt or of a rendered conversation.
    Tokenize(TokenizeArgs),
    /// Measure load time, prefill (pp) and decode (tg) speed and chat TTFT, llama-bench style.
    Bench(BenchArgs),
    /// Serve OpenAI- and Anthropic-compatible HTTP APIs and the playground page.
    Serve(ServeArgs),
    /// Perplexity of a text file, and with --kl-base the KL divergence and top-1 agreement
    /// of this format against another (e.g. q8_0 against f32), like llama-perplexity.
    Perplexity(PerplexityArgs),
    /// Write a random-weight checkpoint with the exact Llama 3.2 1B or 3B shape (bf16), for
    /// benchmarks on machines without the real weights.
    Synthetic(SyntheticArgs),
    /// Download a model into the Hugging Face cache (or update it) and print its directory.
    Download(crate::hub_cmd::DownloadArgs),
    /// List the models known by name, whether each is cached, and its size on disk.
    List(crate::hub_cmd::ListArgs),
}

/// `llama32 perplexity`.
#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to score (UTF-8).
    #[arg(long)]
    pub file: PathBuf,
    /// Window length in tokens (the second half of each window is scored).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Windows at most.
    #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
    pub chunks: usize,
    /// Compare against the same model in this weight format (f32, bf16, q8_0...).
    #[arg(long)]
    pub kl_base: Option<String>,
    /// Compare against this checkpoint instead (in --kl-base's format, default f32): e.g. a
    /// GGUF file against the safetensors it was made from. Same tokenizer required.
    #[arg(long)]
    pub kl_base_model: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `llama32 synthetic`.
#[derive(Debug, Args)]
pub struct SyntheticArgs {
    /// 1b or 3b.
    #[arg(long, default_value = "1b")]
    pub shape: String,
    /// Directory to write (created).
    #[arg(long)]
    pub out: PathBuf,
    /// The tokenizer.json to copy in (default: the Llama 3.2 tokenizer of the test fixtures).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Write into --out even when it is not empty (its config.json, tokenizer files and
    /// model.safetensors are replaced).
    #[arg(long)]
    pub force: bool,
}

/// Where the model is and how to run it.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Checkpoint directory, model name from `llama32 list`, or hub repo id owner/name[@revision].
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// cpu, cuda[:N] or metal[:N] (GPUs need the `cuda` / `metal` cargo feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights: q8_0, q4k, f32, f16 or bf16 (default: q8_0 on CPU, the checkpoint's 16-bit dtype on GPU).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Context window in tokens (default: the model's max_position_embeddings, or what the KV pool holds).
    #[arg(long)]
    pub ctx_size: Option<usize>,
    /// KV cache pool in MiB, shared by all sequences (default: enough for the context window
    /// of every parallel sequence, at most 4096).
    #[arg(long)]
    pub kv_memory: Option<usize>,
    /// How the KV cache stores keys and values on CPU: f16 (half the memory), f32 (exact;
    /// the default with --dtype f32, f16 otherwise), q8_0 (8-bit with a scale per 32
    /// values, as llama.cpp's -ctk/-ctv q8_0: about half of f16 again) or q8_0-q4_0 (keys as
    /// q8_0, values 4-bit with a scale per 32 after a Hadamard rotation: 41% of f16).
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// A smaller model with the same tokenizer, for --spec draft (a checkpoint like --model).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// The draft model's weight format (default: as for --model).
    #[arg(long)]
    pub draft_dtype: Option<String>,
}

/// Sampling and stopping, with the OpenAI API's parameter names.
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature, >= 0; 0 is greedy (default: generation_config.json's, else 1).
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens up to this mass, in (0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens; 0 is off.
    #[arg(long, allow_negative_numbers = true)]
    pub top_k: Option<i64>,
    /// Drop tokens less likely than MIN_P times the most likely one, in [0, 1].
    #[arg(long, allow_negative_numbers = true)]
    pub min_p: Option<f32>,
    /// Penalise every token already in prompt or output (> 0; 1 is off).
    #[arg(long, allow_negative_numbers = true)]
    pub repetition_penalty: Option<f32>,
    /// Subtract this per occurrence in the output, in [-2, 2].
    #[arg(long, allow_negative_numbers = true)]
    pub frequency_penalty: Option<f32>,
    /// Subtract this once a token occurs in the output, in [-2, 2].
    #[arg(long, allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,
    /// RNG seed, for reproducible sampling (reported in --json when not given); -1 means
    /// a random one, as in llama.cpp.
    #[arg(long, allow_negative_numbers = true, value_parser = parse_seed)]
    pub seed: Option<Seed>,
    /// Add BIAS (-100..100) to token ID's logit; -100 bans it. Repeatable: --logit-bias 1234=-100
    #[arg(long, value_name = "ID=BIAS", allow_hyphen_values = true)]
    pub logit_bias: Vec<String>,
    /// Stop when the text contains this string (left out of the output). Repeatable.
    #[arg(long)]
    pub stop: Vec<String>,
    /// With --json: each generated token's log-probability (the model's distribution) and
    /// this many most likely alternatives (0-20).
    #[arg(long)]
    pub logprobs: Option<usize>,
    /// Speculative decoding: `ngram` proposes tokens by looking the last few up earlier in
    /// the prompt and answer (output unchanged, fewer passes when text repeats); `draft`
    /// proposes the greedy continuation of --draft-model; `none`.
    #[arg(long, default_value = "none")]
    pub spec: String,
    /// With --spec ngram: longest n-gram looked up (default 3).
    #[arg(long)]
    pub spec_n: Option<usize>,
    /// With --spec ngram or draft: most tokens proposed per step (default 6).
    #[arg(long)]
    pub spec_k: Option<usize>,
    /// Constrain the answer to JSON valid against this JSON Schema file.
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub json_schema: Option<std::path::PathBuf>,
    /// Constrain the answer to a JSON object.
    #[arg(long, group = "constraint")]
    pub json_object: bool,
    /// Constrain the answer to this Lark grammar file (llguidance's dialect).
    #[arg(long, value_name = "FILE", group = "constraint")]
    pub grammar: Option<std::path::PathBuf>,
    /// Constrain the answer to match this regular expression.
    #[arg(long, value_name = "RE", group = "constraint")]
    pub regex: Option<String>,
}

/// `llama32 generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The raw prompt (tokenized with one BOS, no chat template).
    #[arg(long, short = 'p')]
    pub prompt: String,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// The conversation-shaping options shared by `chat` and `tokenize`.
#[derive(Debug, Args, Clone)]
pub struct ConversationArgs {
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// The date the template prints as "Today Date" (default: today, e.g. "26 Jul 2024").
    #[arg(long)]
    pub date: Option<String>,
    /// Tools offered to the model: a JSON file with an array of OpenAI tool schemas.
    #[arg(long)]
    pub tools: Option<PathBuf>,
    /// A conversation in OpenAI's request shape (array of messages, or {messages, tools}).
    #[arg(long)]
    pub messages: Option<PathBuf>,
    /// Encode special-token text inside messages (`<|eot_id|>`...) as plain text instead of
    /// as the special tokens (HF's default, kept here).
    #[arg(long)]
    pub content_as_text: bool,
}

/// `llama32 chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Ask one question, print the answer and exit (default: interactive session).
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub conversation: ConversationArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Print one JSON object per answer instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

/// `llama32 tokenize`.
#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// Checkpoint directory, model name or hub repo id (only the tokenizer files are read).
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// The raw text to tokenize (one BOS is added; the conversation flags do not apply).
    #[arg(
        long,
        short = 'p',
        required_unless_present = "messages",
        conflicts_with_all = ["messages", "system", "date", "tools", "content_as_text"]
    )]
    pub prompt: Option<String>,
    #[command(flatten)]
    pub conversation: ConversationArgs,
    /// Print a JSON object `{"ids": [...], "count": N}`.
    #[arg(long)]
    pub json: bool,
}

/// `llama32 bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Model: alias, hub repo id or directory.
    #[arg(long, short = 'm')]
    pub model: PathBuf,
    /// cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weight formats to measure, comma-separated (f32, f16, bf16, q8_0, q4k).
    #[arg(long, default_value = "q8_0,q4k,f32")]
    pub dtypes: String,
    /// How the KV cache stores keys and values: f16, f32, q8_0 or q8_0-q4_0 (default: f32 for the f32
    /// format, f16 otherwise).
    #[arg(long)]
    pub kv_dtype: Option<String>,
    /// Prompt tokens for the prefill figure.
    #[arg(long, short = 'p', default_value_t = 512, value_parser = at_least_one)]
    pub pp: usize,
    /// Generated tokens for the decode figure.
    #[arg(long, short = 'n', default_value_t = 128, value_parser = at_least_one)]
    pub tg: usize,
    /// Repetitions.
    #[arg(long, short = 'r', default_value_t = 3, value_parser = at_least_one)]
    pub reps: usize,
    /// Batched mode, like llama-batched-bench: aggregate prefill and decode speed with this
    /// many sequences at once (comma-separated, e.g. 1,2,4,8), `-p` prompt and `-n` new
    /// tokens each.
    #[arg(long, conflicts_with = "spec")]
    pub batched: Option<String>,
    /// Speculation mode: greedy chats that repeat their input (rewrite, code edit,
    /// extraction) and free text, each with and without `ngram` or `draft` speculation,
    /// interleaved, `-n` tokens at most: decode speed, speedup, acceptance.
    #[arg(long, value_parser = ["ngram", "draft"])]
    pub spec: Option<String>,
    /// With --spec ngram: longest n-gram looked up.
    #[arg(long, default_value_t = 3)]
    pub spec_n: usize,
    /// With --spec: most tokens proposed per step.
    #[arg(long, default_value_t = 6)]
    pub spec_k: usize,
    /// With --spec draft: the draft model (a checkpoint like --model, same tokenizer).
    #[arg(long)]
    pub draft_model: Option<PathBuf>,
    /// With --spec draft: the draft model's weight format (default: as for --model).
    #[arg(long)]
    pub draft_dtype: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `llama32 serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0 picks a free one; the bound address is printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* and /metrics (repeatable: any of them
    /// is accepted, and each key gets its own prefix-cache scope; default: $LLAMA32_API_KEY
    /// if set, else no key).
    #[arg(long)]
    pub api_key: Vec<String>,
    /// A file of API keys, one per line (blank lines and `#` comments skipped), added to
    /// --api-key.
    #[arg(long)]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Serve /metrics without the API key.
    #[arg(long)]
    pub metrics_public: bool,
    /// A model id clients may send; /v1/models lists each (repeatable; default: the --model string).
    #[arg(long)]
    pub served_model_name: Vec<String>,
    /// Other names requests may use (not listed): the --model path of a local model.
    #[arg(skip)]
    pub model_aliases: Vec<String>,
    /// Speculative decoding for every request: `ngram` (prompt lookup), `draft` (the greedy
    /// continuation of --draft-model) or `none`.
    #[arg(long, default_value = "none")]
    pub spec: String,
    /// Most tokens proposed per step with --spec (default 6).
    #[arg(long)]
    pub spec_k: Option<usize>,
    /// Sequences computed together in each forward pass (default: 8 on CPU with packed
    /// weights, 4 otherwise).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Requests that may wait for a slot; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 1 << 20, value_parser = at_least_one)]
    pub max_body: usize,
    /// Seconds a client may take to send a request head (the connection closes beyond),
    /// then its body (408 beyond); also how long an idle kept-alive connection stays open.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout: u64,
    /// Origin allowed to call the API from a browser (repeatable; `*` for any).
    #[arg(long)]
    pub cors: Vec<String>,
    /// Another `Host` name a loopback server answers to (repeatable; by default only
    /// localhost, 127.0.0.1 and [::1], which stops DNS-rebinding pages).
    #[arg(long)]
    pub allowed_host: Vec<String>,
    /// Open connections at most (when full, the oldest idle one is closed to make room).
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Seconds a stream waits for a client that stopped reading before it is cancelled.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub send_timeout: u64,
    /// Open connections one client address may hold (default: 3/4 of --max-connections;
    /// raise it behind a gateway, whose connections all come from one address).
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// Most token entries one answer may hold, n x max_tokens x (1 + top_logprobs): a
    /// request asking for more is a 400 (bounds the memory of one answer).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_answer_entries: usize,
    /// Seconds running answers may go on once a drain starts (SIGTERM, Ctrl-C or
    /// `POST /admin/drain`); the rest then end with an error event. During the drain
    /// /health is 503 and new requests get 503 with Retry-After; a second Ctrl-C ends now.
    #[arg(long, alias = "shutdown-grace", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Also publish another engine's metric names on /metrics, for routers that read them
    /// (the Gateway API Inference Extension's endpoint picker reads vLLM's by default).
    #[arg(long, value_enum, default_value_t = MetricsCompatArg::None)]
    pub metrics_compat: MetricsCompatArg,
    /// Read special-token text inside message content (`<|eot_id|>`...) as the special
    /// tokens, as HF and vLLM do; by default it is plain text, so users cannot forge turns.
    #[arg(long)]
    pub special_tokens_in_content: bool,
    /// Do not serve the playground page at `/` (API only).
    #[arg(long)]
    pub no_playground: bool,
    /// Request log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--metrics-compat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MetricsCompatArg {
    /// Only llama32's own names.
    None,
    /// vLLM's `vllm:*` names too.
    Vllm,
    /// SGLang's `sglang:*` names too.
    Sglang,
}

/// How `serve` writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

/// `--seed`: a number, or -1 for a random one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub Option<u64>);

fn parse_seed(s: &str) -> Result<Seed, String> {
    match s.trim() {
        "-1" => Ok(Seed(None)),
        n => n.parse::<u64>().map(|v| Seed(Some(v))).map_err(|_| {
            format!(
                "`{n}` is not a seed: give a number from 0 to {}, or -1 for a random one",
                u64::MAX
            )
        }),
    }
}

/// A count of at least 1 (`0` would measure or serve nothing).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}
