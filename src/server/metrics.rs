//! The server's Prometheus registry (`GET /metrics`): its own recorder, not the process
//! global one, so two servers in one process count separately and the library installs
//! nothing.

use metrics::{counter, gauge, histogram, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::engine::Load;

/// Latency buckets in seconds (time to first token, inter-token latency, request time).
const SECONDS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
];

/// The server's counters, gauges and histograms.
pub(super) struct Metrics {
    recorder: PrometheusRecorder,
}

impl Metrics {
    pub(super) fn new() -> Self {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        Self {
            recorder: builder.build_recorder(),
        }
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
        self.record(|| histogram!("llama32_time_to_first_token_seconds").record(seconds));
    }

    /// Time between two generated tokens of one sequence.
    pub(super) fn inter_token(&self, seconds: f64) {
        self.record(|| histogram!("llama32_inter_token_latency_seconds").record(seconds));
    }

    /// Folds recorded histogram samples into their buckets (bounds memory between scrapes).
    pub(super) fn upkeep(&self) {
        self.recorder.handle().run_upkeep();
    }

    /// The text exposition, with the engine's load as gauges.
    pub(super) fn render(&self, load: Option<Load>, in_flight: usize) -> String {
        self.record(|| {
            gauge!("llama32_requests_in_flight").set(in_flight as f64);
            if let Some(load) = load {
                gauge!("llama32_sequences_running").set(load.running as f64);
                gauge!("llama32_sequences_waiting").set(load.waiting as f64);
                gauge!("llama32_kv_blocks_used").set(load.kv.used_blocks as f64);
                let free = load.kv.total_blocks.saturating_sub(load.kv.used_blocks);
                gauge!("llama32_kv_blocks_free").set(free as f64);
                counter!("llama32_forward_passes_total").absolute(load.steps);
            }
        });
        self.recorder.handle().render()
    }
}
