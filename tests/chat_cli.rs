//! `llama32 chat` driven through its real stdin/stdout, and chat-level KV cache reuse.

mod common;

use std::io::Write;
use std::ops::ControlFlow;
use std::process::{Command, Output, Stdio};

use common::*;
use llama32::{ComputeDType, Conversation, Engine, GenerateRequest, LoadOptions, Message, SamplingParams};
use serde_json::Value;

const MODEL: &str = "tied-bf16-llama3";
const DATE: &str = "26 Jul 2024";

fn chat(args: &[&str], stdin: &str) -> Output {
    let dir = fixture(MODEL);
    let mut child = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args([
            "chat",
            "--model",
            dir.to_str().unwrap(),
            "--date",
            DATE,
            "--temperature",
            "0",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn one_shot_answers_and_exits() {
    let out = chat(&["-p", "Hello!", "--max-tokens", "6", "--json"], "");
    assert!(out.status.success());
    let v = &json_lines(&out)[0];
    assert_eq!(v["completion_tokens"], 6);
    // The rendered prompt: the golden single_user conversation is 37 tokens (incl. the header).
    assert_eq!(
        v["prompt_tokens"],
        tokenize_messages(r#"[{"role": "user", "content": "Hello!"}]"#).len()
    );
}

fn tokenize_messages(json: &str) -> Vec<u32> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), json).unwrap();
    let dir = fixture(MODEL);
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args([
            "tokenize",
            "--model",
            dir.to_str().unwrap(),
            "--date",
            DATE,
            "--json",
            "--messages",
        ])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["ids"].clone()).unwrap()
}

#[test]
fn tokenize_messages_matches_hf_apply_chat_template() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("chat_cases.json")).unwrap()).unwrap();
    let case = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "multi_turn_with_system")
        .unwrap();
    let ids = tokenize_messages(&serde_json::json!({"messages": case["messages"]}).to_string());
    let expected: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
    assert_eq!(ids, expected);
}

#[test]
fn interactive_session_reuses_the_cache_and_handles_commands() {
    let out = chat(
        &["--max-tokens", "5", "--json"],
        "First question\n\n/stats\nSecond question\n/reset\nThird\n/system Be brief.\nFourth\n",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let answers = json_lines(&out);
    assert_eq!(answers.len(), 4);
    assert_eq!(answers[0]["cached_tokens"], 0);
    // Turn 2 prefills only what is new: at least the whole first prompt is cached, and the
    // first answer too as far as its text re-tokenizes to the same ids (random-weight
    // output need not round-trip).
    let first_prompt = answers[0]["prompt_tokens"].as_u64().unwrap();
    let cached = answers[1]["cached_tokens"].as_u64().unwrap();
    assert!(
        (first_prompt..=first_prompt + 4).contains(&cached),
        "{cached} vs {first_prompt}"
    );
    // After /reset the conversation starts over (the cached system header is still reused).
    let third = tokenize_messages(r#"[{"role": "user", "content": "Third"}]"#);
    assert_eq!(answers[2]["prompt_tokens"], third.len());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[conversation reset]") && stderr.contains("[system message set]"),
        "{stderr}"
    );
    assert!(stderr.contains("2 messages"), "/stats: {stderr}");
}

#[test]
fn a_full_context_window_drops_the_oldest_turns_but_keeps_the_system_message() {
    let input = "one two three four five\nsix seven eight nine ten\neleven twelve\nthirteen\n";
    let out = chat(
        &["--max-tokens", "8", "--ctx-size", "110", "--system", "Sys", "--json"],
        input,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dropped the"), "{stderr}");
    let answers = json_lines(&out);
    assert_eq!(answers.len(), 4);
    assert!(answers.iter().any(|a| a["dropped_messages"].as_u64().unwrap() > 0));
    for a in &answers {
        assert!(a["prompt_tokens"].as_u64().unwrap() + 8 <= 110 + 8);
    }
}

#[test]
fn bad_conversations_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let tools_ok = write(
        "tools.json",
        r#"[{"type": "function", "function": {"name": "f", "parameters": {}}}]"#,
    );
    let cases = [
        (
            vec![
                "--messages".to_string(),
                write("role.json", r#"[{"role": "wizard", "content": "hi"}]"#),
            ],
            "unknown role",
        ),
        (
            vec![
                "--messages".to_string(),
                write("empty.json", r#"[{"role": "user", "content": ""}]"#),
            ],
            "content is empty",
        ),
        (
            vec!["--tools".to_string(), write("bad.json", "{ nope")],
            "not valid JSON",
        ),
    ];
    for (args, needle) in cases {
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.extend(["--max-tokens", "2"]);
        let out = chat(&all, "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // A template that raises (tools need a first user message) is an error, not a panic.
    let model = fixture(MODEL);
    let out = Command::new(env!("CARGO_BIN_EXE_llama32"))
        .args([
            "tokenize",
            "--model",
            model.to_str().unwrap(),
            "--tools",
            &tools_ok,
            "--messages",
        ])
        .arg(write("sys.json", r#"[{"role": "system", "content": "x"}]"#))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("Cannot put tools in the first user message"),
        "{stderr}"
    );
}

#[test]
fn a_second_turn_equals_prefilling_the_whole_history() {
    let opts = LoadOptions {
        dtype: Some(ComputeDType::F32),
        ..Default::default()
    };
    let engine = Engine::load(&fixture(MODEL), &opts).unwrap();
    let request = GenerateRequest {
        max_tokens: 10,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let mut chat = Conversation::new(&engine, Some(512), None, Some(DATE.into())).unwrap();
    chat.send("Hi", &request, |_| ControlFlow::Continue(())).unwrap();
    let second = chat.send("And then?", &request, |_| ControlFlow::Continue(())).unwrap();
    assert!(second.generation.cached_tokens > 30);
    // The engine caches prefixes across requests: the cold run needs an engine of its own.
    let cold_engine = Engine::load(&fixture(MODEL), &opts).unwrap();
    let mut fresh = Conversation::new(&cold_engine, Some(512), None, Some(DATE.into())).unwrap();
    for m in &chat.messages()[..3] {
        fresh.push(m.clone());
    }
    assert_eq!(fresh.messages()[2], Message::text("user", "And then?"));
    let again = fresh.reply(&request, |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(again.generation.cached_tokens, 0);
    assert_eq!(again.generation.token_ids, second.generation.token_ids);
}

/// The interactive chat on a pseudo-terminal (util-linux `script`); `None` when `script` is
/// not installed.
fn terminal_chat() -> Option<std::process::Child> {
    let bin = env!("CARGO_BIN_EXE_llama32");
    let model = fixture(MODEL);
    let cmd = format!(
        // `exec`: a shell left waiting (dash, the usual /bin/sh) would take the Ctrl-C itself
        // and exit 130 after our program ended normally.
        "exec {bin} chat --model {} --date '{DATE}' --temperature 0 --max-tokens 100000 --ctx-size 100000",
        model.display()
    );
    Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()
}

/// Waits (at most 120 s) until `screen` satisfies `ready`.
fn wait_for(screen: &std::sync::Mutex<String>, ready: impl Fn(&str) -> bool) {
    let start = std::time::Instant::now();
    while !ready(&screen.lock().unwrap()) {
        assert!(start.elapsed().as_secs() < 120, "timed out; screen: {:?}", {
            let s = screen.lock().unwrap();
            s.chars()
                .rev()
                .take(600)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn on_a_terminal_it_prompts_and_ctrl_c_stops_only_the_answer() {
    use std::io::Read;
    use std::sync::{Arc, Mutex};
    let Some(mut child) = terminal_chat() else {
        eprintln!("`script` is not installed: skipping the pseudo-terminal test");
        return;
    };
    let screen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = screen.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    wait_for(&screen, |s| s.contains(">>> "));
    stdin.write_all(b"Tell me a very long story\n").unwrap();
    stdin.flush().unwrap();
    // Once the answer is streaming, Ctrl-C (0x03) stops it; the session goes on.
    wait_for(&screen, |s| {
        s.rsplit(">>> ").next().is_some_and(|answer| answer.len() > 300)
    });
    stdin.write_all(b"\x03").unwrap();
    stdin.flush().unwrap();
    wait_for(&screen, |s| {
        s.contains("[interrupted]") && s.matches(">>> ").count() >= 2
    });
    stdin.write_all(b"/stats\n").unwrap();
    stdin.flush().unwrap();
    wait_for(&screen, |s| s.contains("messages,"));
    stdin.write_all(b"/exit\n").unwrap();
    stdin.flush().unwrap();
    // Keep stdin open until the program has exited: `script` may end the session on EOF.
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed().as_secs() > 120 {
            let _ = child.kill();
            panic!("no exit after /exit; screen: {}", screen.lock().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    drop(stdin);
    reader.join().unwrap();
    let screen = screen.lock().unwrap();
    assert!(status.success(), "{status}: {screen}");
    assert!(screen.contains("commands: /reset"), "{screen}");
    assert!(screen.contains("messages,"), "/stats after the interruption: {screen}");
}
