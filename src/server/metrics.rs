//! The server's Prometheus registry (`GET /metrics`): its own recorder, not the process
//! global one, so two servers in one process count separately and the library installs
//! nothing. Routers read other engines' names; [`MetricsCompat`] adds those beside ours.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::engine::Load;

/// Latency buckets in seconds (time to first token, inter-token latency, request time).
const SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];

/// Our own names' `# HELP` lines.
const HELP: [(&str, &str); 22] = [
    (
        "llama32_requests_in_flight",
        "Generation requests admitted and not finished",
    ),
    (
        "llama32_draining",
        "1 while the server drains (not ready, refusing new work)",
    ),
    ("llama32_sequences_running", "Sequences holding KV memory in the engine"),
    (
        "llama32_sequences_waiting",
        "Sequences queued for admission to the engine",
    ),
    ("llama32_kv_blocks_used", "KV pool blocks held by sequences"),
    ("llama32_kv_blocks_free", "KV pool blocks not held by sequences"),
    ("llama32_kv_blocks_total", "KV pool blocks"),
    ("llama32_kv_block_size", "Token positions per KV pool block"),
    (
        "llama32_kv_cache_usage",
        "Fraction of the KV pool's blocks held by sequences (0 to 1)",
    ),
    ("llama32_forward_passes_total", "Forward passes run"),
    (
        "llama32_preemptions_total",
        "Sequences preempted for KV memory (computed again later)",
    ),
    ("llama32_prompt_tokens_total", "Prompt tokens of finished requests"),
    (
        "llama32_generation_tokens_total",
        "Generated tokens of finished requests",
    ),
    (
        "llama32_prefix_cache_query_tokens_total",
        "Prompt tokens looked up in the prefix cache",
    ),
    (
        "llama32_prefix_cache_hit_tokens_total",
        "Prompt tokens found in the prefix cache",
    ),
    (
        "llama32_time_to_first_token_seconds",
        "Time from a request to its first generated token",
    ),
    (
        "llama32_inter_token_latency_seconds",
        "Time between two generated tokens of a sequence",
    ),
    ("llama32_request_duration_seconds", "Time to answer a request, by route"),
    ("llama32_requests_total", "Requests answered, by route and status"),
    (
        "llama32_streams_stalled_total",
        "Streams cancelled because the client stopped reading",
    ),
    ("llama32_spec_draft_tokens_total", "Tokens proposed by speculation"),
    ("llama32_spec_accepted_tokens_total", "Speculated tokens accepted"),
];

fn describe() {
    for (name, help) in HELP {
        match name {
            n if n.ends_with("_seconds") => describe_histogram!(n, help),
            n if n.ends_with("_total") => describe_counter!(n, help),
            n => describe_gauge!(n, help),
        }
    }
}

/// Another engine's metric names, carried beside ours for routers that read them (the
/// Gateway API Inference Extension's endpoint picker reads vLLM's or SGLang's by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MetricsCompat {
    /// Only our own `llama32_*` names.
    #[default]
    None,
    /// Also vLLM's `vllm:*` names (queue, running, KV-cache use, cache config, tokens,
    /// prefix cache, preemptions, latencies), labelled `model_name`.
    Vllm,
    /// Also SGLang's `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage`.
    Sglang,
}

/// The server's counters, gauges and histograms.
pub(super) struct Metrics {
    recorder: PrometheusRecorder,
    compat: MetricsCompat,
    /// The `model_name` label of the compatible names.
    model: String,
}

impl Metrics {
    pub(super) fn new(compat: MetricsCompat, model: &str) -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        with_local_recorder(&recorder, describe);
        let metrics = Self {
            recorder,
            compat,
            model: model.to_string(),
        };
        // Every counter from the start, at zero, so that rates and routers see it at once.
        metrics.tokens(0, 0, 0);
        metrics
    }

    fn vllm(&self) -> Option<[(&'static str, String); 1]> {
        (self.compat == MetricsCompat::Vllm).then(|| [("model_name", self.model.clone())])
    }

    fn record(&self, f: impl FnOnce()) {
        with_local_recorder(&self.recorder, f);
    }

    /// One finished request.
    pub(super) fn request(&self, route: &'static str, status: u16, seconds: f64) {
        self.record(|| {
            counter!("llama32_requests_total", "route" => route, "status" => status.to_string()).increment(1);
            histogram!("llama32_request_duration_seconds", "route" => route).record(seconds);
        });
    }

    /// Tokens of one finished generation request.
    pub(super) fn tokens(&self, prompt: usize, completion: usize, cached: usize) {
        self.record(|| {
            counter!("llama32_prompt_tokens_total").increment(prompt as u64);
            counter!("llama32_generation_tokens_total").increment(completion as u64);
            counter!("llama32_prefix_cache_hit_tokens_total").increment(cached as u64);
            counter!("llama32_prefix_cache_query_tokens_total").increment(prompt as u64);
            if let Some(labels) = self.vllm() {
                counter!("vllm:prompt_tokens_total", &labels).increment(prompt as u64);
                counter!("vllm:generation_tokens_total", &labels).increment(completion as u64);
                counter!("vllm:prefix_cache_queries_total", &labels).increment(prompt as u64);
                counter!("vllm:prefix_cache_hits_total", &labels).increment(cached as u64);
            }
        });
    }

    /// Speculation of one finished sequence.
    pub(super) fn speculation(&self, drafted: usize, accepted: usize) {
        self.record(|| {
            counter!("llama32_spec_draft_tokens_total").increment(drafted as u64);
            counter!("llama32_spec_accepted_tokens_total").increment(accepted as u64);
        });
    }

    /// A stream the client stopped reading, cancelled after the send timeout.
    pub(super) fn stalled_stream(&self) {
        self.record(|| counter!("llama32_streams_stalled_total").increment(1));
    }

    /// Time from the request to its first generated token.
    pub(super) fn time_to_first_token(&self, seconds: f64) {
        self.record(|| {
            histogram!("llama32_time_to_first_token_seconds").record(seconds);
            if let Some(labels) = self.vllm() {
                histogram!("vllm:time_to_first_token_seconds", &labels).record(seconds);
            }
        });
    }

    /// Time between two generated tokens of one sequence.
    pub(super) fn inter_token(&self, seconds: f64) {
        self.record(|| {
            histogram!("llama32_inter_token_latency_seconds").record(seconds);
            if let Some(labels) = self.vllm() {
                histogram!("vllm:inter_token_latency_seconds", &labels).record(seconds);
            }
        });
    }

    /// Folds recorded histogram samples into their buckets (bounds memory between scrapes).
    pub(super) fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The text exposition, with the engine's load as gauges.
    pub(super) fn render(&self, load: Option<Load>, in_flight: usize, draining: bool) -> String {
        self.record(|| {
            gauge!("llama32_requests_in_flight").set(in_flight as f64);
            gauge!("llama32_draining").set(f64::from(u8::from(draining)));
            // Before the model is loaded too: a router reads a missing gauge as "saturated".
            self.load_gauges(&load.unwrap_or_default());
        });
        self.recorder.handle().render()
    }

    fn load_gauges(&self, load: &Load) {
        let kv = load.kv;
        let usage = match kv.total_blocks {
            0 => 0.0,
            total => kv.used_blocks as f64 / total as f64,
        };
        gauge!("llama32_sequences_running").set(load.running as f64);
        gauge!("llama32_sequences_waiting").set(load.waiting as f64);
        gauge!("llama32_kv_blocks_used").set(kv.used_blocks as f64);
        gauge!("llama32_kv_blocks_free").set(kv.total_blocks.saturating_sub(kv.used_blocks) as f64);
        gauge!("llama32_kv_blocks_total").set(kv.total_blocks as f64);
        gauge!("llama32_kv_block_size").set(kv.block_size as f64);
        gauge!("llama32_kv_cache_usage").set(usage);
        counter!("llama32_forward_passes_total").absolute(load.steps);
        counter!("llama32_preemptions_total").absolute(load.preemptions);
        match self.compat {
            MetricsCompat::None => {}
            MetricsCompat::Vllm => {
                let labels = [("model_name", self.model.clone())];
                gauge!("vllm:num_requests_running", &labels).set(load.running as f64);
                gauge!("vllm:num_requests_waiting", &labels).set(load.waiting as f64);
                gauge!("vllm:kv_cache_usage_perc", &labels).set(usage);
                gauge!("vllm:gpu_cache_usage_perc", &labels).set(usage);
                counter!("vllm:num_preemptions_total", &labels).absolute(load.preemptions);
                // Known once the pool exists (one series, never a stale one of zeros).
                if kv.total_blocks > 0 {
                    let config = [
                        ("block_size", kv.block_size.to_string()),
                        ("num_gpu_blocks", kv.total_blocks.to_string()),
                    ];
                    gauge!("vllm:cache_config_info", &config).set(1.0);
                }
            }
            MetricsCompat::Sglang => {
                let labels = [("model_name", self.model.clone())];
                gauge!("sglang:num_running_reqs", &labels).set(load.running as f64);
                gauge!("sglang:num_queue_reqs", &labels).set(load.waiting as f64);
                gauge!("sglang:token_usage", &labels).set(usage);
            }
        }
    }
}
