//! The server's HTTP edge tried as an attacker and as a browser would, over raw sockets:
//! request smuggling vectors, missing Host, HTTP/1.0 streams, idle-connection lock-out,
//! CORS, `/metrics`, model ids with `/`, the `developer` role, and graceful shutdown.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::http::{body_of, get, post, raw, status_line};
use common::server::start;

const BODY: &str = r#"{"prompt":"x","max_tokens":1}"#;

#[test]
fn malformed_framing_is_400_and_close() {
    let server = start(&[]);
    let len = BODY.len();
    let cases = [
        format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: {len}\r\n\r\n{BODY}"),
        format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Foo: bar\r\n Content-Length: 2\r\nContent-Length: {len}\r\n\r\n{BODY}"),
        format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length : {len}\r\n\r\n{BODY}"),
        format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: {len}\r\n\r\n{BODY}"),
        format!("POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: +{len}\r\n\r\n{BODY}"),
        "GET /health HTTP/1.9\r\nHost: localhost\r\n\r\n".to_string(),
        "GET /health HTTP/1.1 extra\r\nHost: localhost\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\n\r\n".to_string(),
        "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string(),
    ];
    for case in &cases {
        // A second request follows on the same connection: it must not be served.
        let bytes = format!("{case}GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let response = raw(&server.addr, bytes.as_bytes());
        assert!(
            status_line(&response).starts_with("HTTP/1.1 400"),
            "{case:?} -> {response}"
        );
        assert!(!response.contains("200 OK"), "{case:?} -> {response}");
    }
    // Transfer-Encoding and Content-Length together: served by the chunks, then closed.
    let chunked = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{len:x}\r\n{BODY}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: localhost\r\n\r\n"
    );
    let response = raw(&server.addr, chunked.as_bytes());
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 1, "{response}");
    assert!(response.contains("text_completion"), "{response}");
    // HTTP/1.0 without Host is fine.
    let response = raw(&server.addr, b"GET /health HTTP/1.0\r\n\r\n");
    assert!(status_line(&response).starts_with("HTTP/1.0 200"), "{response}");
}

#[test]
fn http_1_0_streams_are_not_chunked() {
    let server = start(&[]);
    let body = r#"{"prompt":"x","max_tokens":3,"stream":true}"#;
    let request = format!(
        "POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = raw(&server.addr, request.as_bytes());
    assert!(status_line(&response).starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("transfer-encoding"),
        "{response}"
    );
    let body = body_of(&response);
    assert!(body.starts_with("data: {"), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[test]
fn idle_connections_cannot_lock_clients_out() {
    for max in ["1024", "64"] {
        let server = start(&["--max-connections", max]);
        let idle: Vec<TcpStream> = (0..300).map(|_| TcpStream::connect(&server.addr).unwrap()).collect();
        let started = Instant::now();
        let response = get(&server.addr, "/health", "");
        assert!(status_line(&response).contains("200"), "max {max}: {response}");
        let response = post(&server.addr, "/v1/completions", &serde_json::from_str(BODY).unwrap());
        assert!(status_line(&response).contains("200"), "max {max}: {response}");
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(idle);
    }
}

#[test]
fn cors_preflight_and_headers() {
    let server = start(&["--cors", "http://app.example", "--api-key", "k"]);
    let preflight = raw(
        &server.addr,
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: http://app.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nConnection: close\r\n\r\n",
    );
    let lower = preflight.to_ascii_lowercase();
    assert!(status_line(&preflight).contains("200"), "{preflight}");
    assert!(
        lower.contains("access-control-allow-origin: http://app.example"),
        "{preflight}"
    );
    assert!(
        lower.contains("access-control-allow-methods:") && lower.contains("post"),
        "{preflight}"
    );
    let response = get(
        &server.addr,
        "/v1/models",
        "Origin: http://app.example\r\nAuthorization: Bearer k\r\n",
    );
    assert!(status_line(&response).contains("200"), "{response}");
    assert!(response
        .to_ascii_lowercase()
        .contains("access-control-allow-origin: http://app.example"));
    // Another origin gets no CORS grant.
    let response = get(&server.addr, "/health", "Origin: http://evil.example\r\n");
    assert!(
        !response.to_ascii_lowercase().contains("access-control-allow-origin"),
        "{response}"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_move_as_requests_run() {
    let server = start(&["--served-model-name", "owner/tiny"]);
    let before = body_of(&get(&server.addr, "/metrics", "")).to_string();
    let chat = json!({"model": "owner/tiny", "max_tokens": 3, "messages": [
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]});
    let response = post(&server.addr, "/v1/chat/completions", &chat);
    assert!(status_line(&response).contains("200"), "{response}");
    let after = body_of(&get(&server.addr, "/metrics", "")).to_string();
    assert!(
        metric(&after, "llama32_generation_tokens_total") >= metric(&before, "llama32_generation_tokens_total") + 3.0
    );
    assert!(metric(&after, "llama32_prompt_tokens_total") > 0.0);
    assert!(
        after.contains(r#"llama32_requests_total{route="chat_completions",status="200"} 1"#),
        "{after}"
    );
    assert!(after.contains("llama32_time_to_first_token_seconds_bucket"), "{after}");
    assert!(after.contains("llama32_inter_token_latency_seconds_count"), "{after}");
    assert!(after.contains("llama32_sequences_running"), "{after}");
    // Both served names, the one with a slash percent-encoded as the SDKs send it.
    for path in ["/v1/models/owner%2Ftiny", "/v1/models/owner/tiny", "/v1/models/tiny"] {
        let response = get(&server.addr, path, "");
        assert!(status_line(&response).contains("200"), "{path}: {response}");
    }
    let models: Value = serde_json::from_str(body_of(&get(&server.addr, "/v1/models", ""))).unwrap();
    assert_eq!(models["data"].as_array().unwrap().len(), 2);
}

#[cfg(unix)]
#[test]
fn sigterm_ends_streams_with_a_final_event_and_exits_0() {
    let mut server = start(&["--shutdown-grace", "1"]);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000,
        "temperature": 1.0, "stream": true})
    .to_string();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let mut first = [0u8; 512];
    assert!(s.read(&mut first).unwrap() > 0);
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("server_shutting_down"), "{rest}");
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the server did not exit");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn browsers_cannot_rebind_or_post_across_sites() {
    let server = start(&["--allowed-host", "llama.lan"]);
    let ask = |head: &str| {
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\n{head}Connection: close\r\nContent-Length: {}\r\n\r\n{BODY}",
            BODY.len()
        );
        status_line(&raw(&server.addr, request.as_bytes())).to_string()
    };
    let json = "Content-Type: application/json\r\n";
    assert!(ask(&format!("Host: localhost:1\r\n{json}")).contains("200"));
    assert!(ask(&format!("Host: llama.lan\r\n{json}")).contains("200"));
    // A DNS-rebinding page reaches a loopback server under its own name.
    assert!(ask(&format!("Host: evil.example\r\n{json}")).contains("403"));
    let get = raw(
        &server.addr,
        b"GET /v1/models HTTP/1.1\r\nHost: evil.example:80\r\nConnection: close\r\n\r\n",
    );
    assert!(status_line(&get).contains("403"), "{get}");
    // A cross-site form or fetch: another Origin, or a body that is not declared JSON.
    assert!(ask(&format!("Host: localhost\r\nOrigin: http://evil.example\r\n{json}")).contains("403"));
    let same = format!("Host: {0}\r\nOrigin: http://{0}\r\n{json}", server.addr);
    assert!(ask(&same).contains("200"));
    assert!(ask("Host: localhost\r\nContent-Type: text/plain\r\n").contains("415"));
    assert!(ask("Host: localhost\r\n").contains("415"));
}
