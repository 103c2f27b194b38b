//! Running as one replica of many: the drain a gateway's rolling restart relies on
//! (SIGTERM or `POST /admin/drain`: not ready, new work refused with 503 and Retry-After,
//! running streams finish, exit 0) and the `/metrics` gauges routers read, checked against
//! the engine's own load.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use llama32::engine::Load;
use llama32::server::{MetricsCompat, Server, ServerConfig};
use llama32::{ComputeDType, Engine, LoadOptions};
use serde_json::json;

use common::http::{body_of, get, post, raw, status_line};
use common::server::{start, Server as Child};

/// A streamed chat answer of `tokens` tokens on a fresh connection (with `headers`, each
/// ending in CRLF); returns the reader
/// once the first event has arrived.
fn open_stream(addr: &str, tokens: usize, headers: &str) -> BufReader<TcpStream> {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": tokens,
        "temperature": 1.0, "seed": 1, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    while !line.starts_with("data: ") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "the stream closed before its first event"
        );
    }
    reader
}

/// Reads a stream to its `[DONE]`: the finish reasons seen, and whether an error came.
fn finish(mut reader: BufReader<TcpStream>) -> (Vec<String>, bool) {
    let (mut reasons, mut error) = (Vec::new(), false);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.starts_with("data: [DONE]") {
            return (reasons, error);
        }
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(data.trim()).unwrap();
        error |= event.get("error").is_some();
        if let Some(reason) = event["choices"][0]["finish_reason"].as_str() {
            reasons.push(reason.to_string());
        }
    }
}

fn exit_within(server: &mut Child, limit: Duration) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < limit, "the server did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(server: &Child) {
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

#[cfg(unix)]
#[test]
fn sigterm_drains_finishes_streams_refuses_new_work_and_exits_0() {
    let mut server = start(&["--drain-timeout", "60"]);
    let stream = open_stream(&server.addr, 300, "");
    sigterm(&server);
    // Readiness turns at once; liveness does not.
    let started = Instant::now();
    let health = loop {
        let health = get(&server.addr, "/health", "");
        if status_line(&health).contains("503") || started.elapsed() > Duration::from_secs(5) {
            break health;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status_line(&health).contains("503"), "{health}");
    assert!(body_of(&health).contains("draining"), "{health}");
    let livez = get(&server.addr, "/livez", "");
    assert!(status_line(&livez).contains("200"), "{livez}");
    // New work is refused, telling the client (or gateway) to go elsewhere.
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    let refused = post(&server.addr, "/v1/chat/completions", &chat).to_ascii_lowercase();
    assert!(status_line(&refused).contains("503"), "{refused}");
    assert!(refused.contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("connection: close"), "{refused}");
    let metrics = body_of(&get(&server.addr, "/metrics", "")).to_string();
    assert!(metrics.contains("llama32_draining 1"), "{metrics}");
    // The running stream ends as it would have.
    let (reasons, error) = finish(stream);
    assert_eq!(reasons, ["length"]);
    assert!(!error);
    assert!(exit_within(&mut server, Duration::from_secs(20)).success());
}

#[cfg(unix)]
#[test]
fn an_idle_server_exits_at_once_on_sigterm() {
    let mut server = start(&["--drain-timeout", "60"]);
    sigterm(&server);
    assert!(exit_within(&mut server, Duration::from_secs(5)).success());
}

#[test]
fn admin_drain_needs_the_key_then_drains() {
    let mut server = start(&["--api-key", "k1", "--drain-timeout", "60"]);
    let ask = |auth: &str| {
        let request = format!(
            "POST /admin/drain HTTP/1.1\r\nHost: localhost\r\n{auth}Content-Type: application/json\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        );
        raw(&server.addr, request.as_bytes())
    };
    let refused = ask("Authorization: Bearer wrong\r\n");
    assert!(status_line(&refused).contains("401"), "{refused}");
    assert!(status_line(&get(&server.addr, "/health", "")).contains("200"));
    let stream = open_stream(&server.addr, 200, "Authorization: Bearer k1\r\n");
    let accepted = ask("Authorization: Bearer k1\r\n");
    assert!(status_line(&accepted).contains("202"), "{accepted}");
    let health = get(&server.addr, "/health", "");
    assert!(status_line(&health).contains("503"), "{health}");
    // The orchestrator's SIGTERM after a drain by hand is the first signal, not the second:
    // the running answer still finishes.
    #[cfg(unix)]
    sigterm(&server);
    assert_eq!(finish(stream).0, ["length"]);
    assert!(exit_within(&mut server, Duration::from_secs(20)).success());
}

/// The value of the sample `name` (exact name and labels, up to the space).
fn sample(text: &str, name: &str) -> f64 {
    let found = text
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<f64>().ok());
    found.unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// An in-process server (so that the test can read the engine's own load), with vLLM's
/// names on: 4 streams on 2 slots, so that 2 run and 2 wait.
#[test]
fn metrics_match_the_engine_load_under_load() {
    let options = LoadOptions {
        dtype: Some(ComputeDType::F32),
        parallel: Some(2),
        ..LoadOptions::default()
    };
    let engine = Arc::new(Engine::load(&common::fixture("tied-bf16-llama3"), &options).unwrap());
    let config = ServerConfig {
        model_ids: vec!["tiny".into()],
        metrics_compat: MetricsCompat::Vllm,
        ..ServerConfig::default()
    };
    let server = Server::bind("127.0.0.1:0", config).unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let handle = server.handle();
    handle.ready(engine.clone()).unwrap();
    let serving = std::thread::spawn(move || server.run());
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 400,
                    "temperature": 1.0, "stream": true});
                post(&addr, "/v1/chat/completions", &body)
            })
        })
        .collect();
    let started = Instant::now();
    let busy = |l: &Load| l.running == 2 && l.waiting == 2 && l.kv.used_blocks > 0;
    while !busy(&engine.load_stats()) {
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", engine.load_stats());
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = engine.load_stats();
    let text = body_of(&get(&addr, "/metrics", "")).to_string();
    let after = engine.load_stats();
    for (ours, vllm, value) in [
        ("llama32_sequences_running", "vllm:num_requests_running", before.running),
        ("llama32_sequences_waiting", "vllm:num_requests_waiting", before.waiting),
    ] {
        assert!(busy(&after), "the load moved while the metrics were read: {after:?}");
        assert_eq!(sample(&text, ours), value as f64, "{ours}");
        assert_eq!(labelled_in(&text, vllm), value as f64, "{vllm}");
    }
    let used = sample(&text, "llama32_kv_blocks_used");
    assert!((before.kv.used_blocks as f64..=after.kv.used_blocks as f64).contains(&used));
    let total = before.kv.total_blocks as f64;
    assert_eq!(sample(&text, "llama32_kv_blocks_total"), total);
    assert_eq!(sample(&text, "llama32_kv_block_size"), before.kv.block_size as f64);
    assert_eq!(sample(&text, "llama32_kv_cache_usage"), used / total);
    assert_eq!(labelled_in(&text, "vllm:kv_cache_usage_perc"), used / total);
    let info = format!(
        "vllm:cache_config_info{{block_size=\"{}\",num_gpu_blocks=\"{}\"}}",
        before.kv.block_size, before.kv.total_blocks
    );
    assert_eq!(sample(&text, &info), 1.0);
    assert_eq!(sample(&text, "llama32_requests_in_flight"), 4.0);
    for stream in streams {
        let answer = stream.join().unwrap();
        assert!(answer.contains("\"finish_reason\":\"length\""), "{answer}");
    }
    let text = body_of(&get(&addr, "/metrics", "")).to_string();
    assert_eq!(sample(&text, "llama32_generation_tokens_total"), 1600.0);
    assert_eq!(labelled_in(&text, "vllm:generation_tokens_total"), 1600.0);
    assert_eq!(
        sample(&text, "llama32_prefix_cache_query_tokens_total"),
        sample(&text, "llama32_prompt_tokens_total")
    );
    assert_eq!(
        sample(&text, "llama32_preemptions_total"),
        engine.load_stats().preemptions as f64
    );
    assert_eq!(sample(&text, "llama32_sequences_running"), 0.0);
    handle.shutdown();
    serving.join().unwrap().unwrap();
}

fn labelled_in(text: &str, name: &str) -> f64 {
    sample(text, &format!("{name}{{model_name=\"tiny\"}}"))
}
