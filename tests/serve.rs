//! `llama32 serve` driven over real sockets: the OpenAI shapes, errors and statuses, and
//! the faults a public server meets (malformed JSON, huge bodies, slow and vanishing clients).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::server::{start, Server};

struct Response {
    status: u16,
    head: String,
    body: String,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The `data:` events of a server-sent event stream.
    fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for line in self.body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            out.push(if line == "[DONE]" {
                json!("[DONE]")
            } else {
                serde_json::from_str(line).unwrap()
            });
        }
        out
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(pos) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let len = usize::from_str_radix(std::str::from_utf8(&raw[..pos]).unwrap().trim(), 16).unwrap();
        if len == 0 {
            return out;
        }
        out.extend_from_slice(&raw[pos + 2..pos + 2 + len]);
        raw = &raw[pos + 2 + len + 2..];
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
fn send(addr: &str, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> Response {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("no response head") + 4;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status = head[9..12].parse().unwrap();
    let body = match head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        true => dechunk(&raw[end..]),
        false => raw[end..].to_vec(),
    };
    Response {
        status,
        head,
        body: String::from_utf8(body).unwrap(),
    }
}

fn post(server: &Server, path: &str, body: &Value) -> Response {
    send(&server.addr, "POST", path, &[], body.to_string().as_bytes())
}

fn chat_body(extra: Value) -> Value {
    let mut body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 8, "temperature": 0});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn stream_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[test]
fn chat_plain_and_streamed_agree_with_usage() {
    let server = start(&[]);
    let r = post(&server, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), prompt_tokens + 8);
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();

    let r = post(
        &server,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    assert_eq!(r.status, 200);
    assert!(r.head.to_ascii_lowercase().contains("content-type: text/event-stream"));
    let events = r.events();
    assert_eq!(events.last().unwrap(), "[DONE]");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    let finish = &events[events.len() - 3]["choices"][0];
    assert_eq!(
        (finish["finish_reason"].as_str(), &finish["delta"]),
        (Some("length"), &json!({}))
    );
    let usage = &events[events.len() - 2];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 8);
    assert_eq!(usage["usage"]["prompt_tokens"].as_u64(), Some(prompt_tokens));
    assert_eq!(stream_text(&events), text);

    // Models and health.
    let v = send(&server.addr, "GET", "/v1/models", &[], b"").json();
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(send(&server.addr, "GET", "/health", &[], b"").status, 200);
    // The log has one line per request, without the prompt text.
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("POST /v1/chat/completions 200"), "{log}");
    assert!(!log.contains("Hello!"), "{log}");
}

#[test]
fn seeds_make_answers_reproducible_and_n_uses_seed_plus_i() {
    let server = start(&[]);
    let body = |seed: u64, n: usize| chat_body(json!({"temperature": 1.0, "seed": seed, "n": n}));
    let texts = |v: Value| -> Vec<String> {
        v["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["message"]["content"].as_str().unwrap().to_string())
            .collect()
    };
    let a = texts(post(&server, "/v1/chat/completions", &body(11, 1)).json());
    let b = texts(post(&server, "/v1/chat/completions", &body(11, 1)).json());
    let c = texts(post(&server, "/v1/chat/completions", &body(12, 1)).json());
    assert_eq!(a, b);
    let both = post(&server, "/v1/chat/completions", &body(11, 2)).json();
    assert_eq!(both["usage"]["completion_tokens"], 16);
    assert_eq!(texts(both), vec![a[0].clone(), c[0].clone()]);
}

#[test]
fn completions_take_text_or_token_prompts() {
    let server = start(&[]);
    let v = post(
        &server,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 5, "temperature": 0}),
    )
    .json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    // The same prompt as ids (BOS + "Once upon a time").
    let ids = json!([128000, 12805, 5304, 264, 892]);
    let v = post(
        &server,
        "/v1/completions",
        &json!({"prompt": ids, "max_tokens": 5, "temperature": 0}),
    )
    .json();
    assert_eq!(v["choices"][0]["text"].as_str().unwrap(), text);
    let r = post(
        &server,
        "/v1/completions",
        &json!({"prompt": "Once upon a time", "max_tokens": 5, "temperature": 0, "stream": true}),
    );
    let streamed: String = r
        .events()
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(streamed, text);
}

#[test]
fn bad_requests_are_openai_errors_with_the_right_status() {
    let server = start(&["--max-body", "4096", "--ctx-size", "64"]);
    let check = |r: Response, status: u16, param: Option<&str>| {
        assert_eq!(r.status, status, "{}", r.body);
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{v}");
        v
    };
    let chat = "/v1/chat/completions";
    check(send(&server.addr, "POST", chat, &[], b"{not json"), 400, None);
    check(send(&server.addr, "POST", chat, &[], b"[]"), 400, None);
    check(post(&server, chat, &json!({"messages": "hi"})), 400, Some("messages"));
    check(
        post(&server, chat, &chat_body(json!({"temperature": "hot"}))),
        400,
        Some("temperature"),
    );
    check(post(&server, chat, &chat_body(json!({"top_p": 2}))), 400, Some("top_p"));
    check(
        post(&server, chat, &chat_body(json!({"max_tokens": -1}))),
        400,
        Some("max_tokens"),
    );
    check(
        post(&server, chat, &chat_body(json!({"logit_bias": {"999999999": 1}}))),
        400,
        Some("logit_bias"),
    );
    check(
        post(&server, chat, &chat_body(json!({"stop": [1, 2]}))),
        400,
        Some("stop"),
    );
    let v = check(
        post(&server, chat, &chat_body(json!({"model": "gpt-4"}))),
        404,
        Some("model"),
    );
    assert_eq!(v["error"]["code"], "model_not_found");
    check(send(&server.addr, "GET", "/v1/nothing", &[], b""), 404, None);
    // Over the 64-token context window.
    let long = "word ".repeat(200);
    let v = check(
        post(
            &server,
            chat,
            &chat_body(json!({"messages": [{"role": "user", "content": long}]})),
        ),
        400,
        Some("messages"),
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // A body over --max-body: 413, answered even though the client sends it all.
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat(100_000));
    check(
        send(&server.addr, "POST", "/v1/completions", &[], huge.as_bytes()),
        413,
        None,
    );
    // A body announced as huge is refused before it is read.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).status, 413);
    // Still serving.
    assert_eq!(post(&server, chat, &chat_body(json!({"max_tokens": 2}))).status, 200);
}

#[test]
fn api_key_is_required_when_set() {
    let server = start(&["--api-key", "sekrit"]);
    let body = chat_body(json!({"max_tokens": 1})).to_string();
    let chat = "/v1/chat/completions";
    let r = send(&server.addr, "POST", chat, &[], body.as_bytes());
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["code"], "invalid_api_key");
    assert_eq!(
        send(
            &server.addr,
            "POST",
            chat,
            &["Authorization: Bearer nope"],
            body.as_bytes()
        )
        .status,
        401
    );
    assert_eq!(
        send(
            &server.addr,
            "POST",
            chat,
            &["Authorization: Bearer sekrit"],
            body.as_bytes()
        )
        .status,
        200
    );
    assert_eq!(send(&server.addr, "GET", "/health", &[], b"").status, 200);
    assert!(!server.log.lock().unwrap().join("\n").contains("sekrit"));
}

/// Opens a streaming request that would run for minutes and reads its first event.
fn open_long_stream(server: &Server) -> TcpStream {
    let body = chat_body(json!({"max_tokens": 100000, "stream": true, "temperature": 1.0})).to_string();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("\"content\":\"\"") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        got.extend_from_slice(&buf[..n]);
    }
    s
}

fn health(server: &Server) -> Value {
    send(&server.addr, "GET", "/health", &[], b"").json()
}

fn wait_idle(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while health(server)["running"] != 0 {
        assert!(Instant::now() < deadline, "the slot was not freed: {}", health(server));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn full_queue_is_503_and_a_vanished_client_frees_its_slot() {
    let server = start(&["--parallel", "1", "--queue", "0"]);
    let stream = open_long_stream(&server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&server)["running"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the stream was not admitted: {}",
            health(&server)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = post(&server, "/v1/chat/completions", &chat_body(json!({"max_tokens": 1})));
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.head.to_ascii_lowercase().contains("retry-after: "), "{}", r.head);
    assert_eq!(r.json()["error"]["type"], "server_error");
    // The client disconnects abruptly mid-stream: generation stops, the slot is free.
    drop(stream);
    wait_idle(&server);
    let r = post(&server, "/v1/chat/completions", &chat_body(json!({"max_tokens": 2})));
    assert_eq!(r.status, 200, "{}", r.body);
    let log = server.log.lock().unwrap().join("\n");
    assert!(log.contains("POST /v1/chat/completions 499"), "{log}");
    assert!(log.contains("POST /v1/chat/completions 503"), "{log}");
}

#[test]
fn queued_and_non_streaming_clients_that_leave_are_dropped() {
    let server = start(&["--parallel", "1", "--queue", "4"]);
    let running = open_long_stream(&server);
    // A non-streaming request queued behind it, whose client leaves.
    let body = chat_body(json!({"max_tokens": 100000, "temperature": 1.0})).to_string();
    let mut queued = TcpStream::connect(&server.addr).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    queued.write_all(format!("{head}{body}").as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while health(&server)["waiting"] != 1 {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(queued);
    while health(&server)["waiting"] != 0 {
        assert!(Instant::now() < deadline, "the queued request stayed in the queue");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(running);
    wait_idle(&server);
    // A long non-streaming generation whose client leaves stops too.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.write_all(format!("{head}{body}").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(health(&server)["running"], 1);
    drop(s);
    wait_idle(&server);
}

#[test]
fn slow_and_broken_clients_do_not_hold_the_server() {
    let server = start(&["--request-timeout", "1"]);
    // Slowloris: a head that never ends gets 408 after the timeout, while others are served.
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    let started = Instant::now();
    assert_eq!(health(&server)["status"], "ok");
    let mut raw = Vec::new();
    for _ in 0..5 {
        if slow.write_all(b"a").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = slow.read_to_end(&mut raw);
    // hyper closes a connection whose head does not arrive in time (no answer).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(raw.is_empty() || parse_response(&raw).status == 408);
    // A body shorter than its Content-Length: same.
    let mut short = TcpStream::connect(&server.addr).unwrap();
    short.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    short
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    let mut raw = Vec::new();
    let _ = short.read_to_end(&mut raw);
    assert_eq!(parse_response(&raw).status, 408);
    // Garbage, a half request then a close, and binary junk.
    for junk in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /health HT",
        b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(junk).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
    }
    // Keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(
        post(&server, "/v1/chat/completions", &chat_body(json!({"max_tokens": 2}))).status,
        200
    );
    assert!(!server.log.lock().unwrap().join("\n").contains("panicked"));
}

#[test]
fn expect_100_continue_is_answered() {
    let server = start(&[]);
    let body = chat_body(json!({"max_tokens": 2})).to_string();
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 25];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    assert_eq!(parse_response(&raw).status, 200);
}
