use serde_json::{json, Value as Json};

use super::request::{ChatRequest, CompletionRequest};
use super::response::chat_message;
use crate::chat::Callable;
use crate::constraint::Constraint;
use crate::server::body::parse;
use crate::server::error::ApiError;
use crate::server::params::{ChatParams, CompletionParams, Prompt, ToolChoice};

fn chat(body: &[u8]) -> Result<ChatParams, ApiError> {
    parse::<ChatRequest>(body)?.into_params()
}

fn completion(body: &[u8]) -> Result<CompletionParams, ApiError> {
    parse::<CompletionRequest>(body)?.into_params()
}

fn err(body: &str) -> ApiError {
    chat(body.as_bytes()).unwrap_err()
}

#[test]
fn reads_every_parameter() {
    let p = chat(
        br#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "top_p": 0.5,
        "top_k": 4, "min_p": 0.1, "repetition_penalty": 1.1, "frequency_penalty": 0.2, "presence_penalty": 0.3,
        "seed": 7, "logit_bias": {"42": -100}, "max_completion_tokens": 9, "max_tokens": 9, "stop": "x", "n": 2,
        "stream": true, "stream_options": {"include_usage": true}, "user": "ignored"}"#,
    )
    .unwrap();
    let c = &p.common;
    assert_eq!(c.sampling.temperature, Some(0.0));
    assert_eq!(c.sampling.top_k, Some(4));
    assert_eq!(c.sampling.seed, Some(7));
    // Every 64-bit seed is its own (none folds into another).
    for (seed, want) in [
        ("18446744073709551611", u64::MAX - 4),
        ("-1", u64::MAX),
        ("9223372036854775807", i64::MAX as u64),
    ] {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "hi"}}], "seed": {seed}}}"#);
        assert_eq!(
            chat(body.as_bytes()).unwrap().common.sampling.seed,
            Some(want),
            "{seed}"
        );
    }
    assert_eq!(c.sampling.logit_bias.get(&42), Some(&-100.0));
    assert_eq!((c.max_tokens, c.n, c.stream, c.include_usage), (Some(9), 2, true, true));
    assert_eq!(c.stop, vec!["x".to_string()]);
    assert!(!p.callable().any());
}

#[test]
fn wrong_types_name_the_parameter() {
    let base = r#""messages": [{"role": "user", "content": "hi"}]"#;
    for (extra, param) in [
        (r#""temperature": "hot""#, "temperature"),
        (r#""max_tokens": 0"#, "max_tokens"),
        (r#""max_tokens": 1.5"#, "max_tokens"),
        (r#""stop": 3"#, "stop"),
        (r#""n": 99"#, "n"),
        (r#""logit_bias": {"x": 1}"#, "logit_bias"),
        (r#""stream": "yes""#, "stream"),
        (r#""tool_choice": "sometimes""#, "tool_choice"),
        (r#""logprobs": "yes""#, "logprobs"),
        (r#""logprobs": true, "top_logprobs": 21"#, "top_logprobs"),
        (r#""max_tokens": 5, "max_completion_tokens": 2"#, "max_tokens"),
        (r#""stream_options": {"include_usage": true}"#, "stream_options"),
        (
            r#""stream": true, "stream_options": {"include_obfuscation": true}"#,
            "stream_options.include_obfuscation",
        ),
        (
            r#""stream": true, "stream_options": {"continuous_usage_stats": true}"#,
            "stream_options.continuous_usage_stats",
        ),
        (r#""service_tier": "flex""#, "service_tier"),
        (r#""metadata": {"a": 5}"#, "metadata.a"),
        (r#""seed": 1.5"#, "seed"),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "bogus", "function": {"name": "f"}}"#,
            "tool_choice",
        ),
        (
            r#""tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]"#,
            "tools",
        ),
        (r#""tools": [{"type": "function", "function": {"name": ""}}]"#, "tools"),
    ] {
        let e = err(&format!("{{{base}, {extra}}}"));
        assert_eq!((e.status, e.param.as_deref()), (400, Some(param)), "{extra}: {e:?}");
    }
    assert_eq!(err(r#"{"messages": "hi"}"#).param.as_deref(), Some("messages"));
    assert_eq!(
        err(r#"{"messages": [{"role": "wizard", "content": "x"}]}"#)
            .param
            .as_deref(),
        Some("messages")
    );
    let e = err(
        r#"{"messages": [{"role": "user", "content": "hi", "tool_calls": [{"function": {"name": 5, "arguments": {}}}]}]}"#,
    );
    assert_eq!(e.param.as_deref(), Some("messages[0].tool_calls[0].function.name"));
    assert_eq!(
        e.message,
        "Invalid type for `messages[0].tool_calls[0].function.name`: expected a string"
    );
    assert_eq!(
        err(r#"{"messages": [{"role": "user", "content": "hi"}], "stream_options": {"include_usage": 1}}"#)
            .param
            .as_deref(),
        Some("stream_options.include_usage")
    );
    assert_eq!(err("[1, 2]").code, Some("invalid_json"));
    assert_eq!(err("{nope").code, Some("invalid_json"));
}

#[test]
fn tool_call_answers_become_tool_calls() {
    let tools = Callable::of(&[json!({"type": "function", "function": {"name": "get_weather"}})]);
    let (m, reason) = chat_message(
        r#"{"name": "get_weather", "parameters": {"city": "Paris"}}"#,
        &tools,
        "stop",
    );
    assert_eq!(reason, "tool_calls");
    assert!(m["content"].is_null());
    let call = &m["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Json = serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(args, json!({"city": "Paris"}));
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    // No tools offered, or a function that was not offered: the answer stays text.
    for (answer, tools) in [
        (r#"{"name": "f", "parameters": {}}"#, Callable::default()),
        (r#"{"name": "delete_everything", "parameters": {}}"#, tools.clone()),
    ] {
        let (m, reason) = chat_message(answer, &tools, "stop");
        assert_eq!((m["content"].as_str(), reason), (Some(answer), "stop"));
    }
    let (_, reason) = chat_message("plain words", &tools, "length");
    assert_eq!(reason, "length");
}

#[test]
fn completion_prompts() {
    let p = completion(br#"{"prompt": ["Once"], "max_tokens": null}"#).unwrap();
    assert_eq!((p.prompt, p.common.max_tokens), (Prompt::Text("Once".into()), Some(16)));
    let p = completion(br#"{"prompt": [128000, 9906]}"#).unwrap();
    assert_eq!(p.prompt, Prompt::Tokens(vec![128000, 9906]));
    let e = completion(br#"{"prompt": ["a", "b"]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("prompt"));
    let e = completion(br#"{"prompt": {"x": 1}}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("prompt"));
}

#[test]
fn unknown_fields_are_refused_by_name() {
    let e = err(r#"{"messages": [{"role": "user", "content": "hi"}], "functions": []}"#);
    assert_eq!(
        (e.param.as_deref(), e.message.as_str()),
        (Some("functions"), "Unrecognized request argument supplied: functions")
    );
    let e = err(r#"{"messages": [{"role": "user", "content": "hi", "colour": "red"}]}"#);
    assert_eq!(e.param.as_deref(), Some("messages[0].colour"));
    let e = completion(br#"{"prompt": "x", "guided_decoding_backend": "xgrammar"}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("guided_decoding_backend"));
    // What the SDKs send that changes nothing here is accepted.
    chat(
        br#"{"messages": [{"role": "user", "content": "hi", "name": "ann"}], "user": "u", "metadata": {"a": "b"},
        "parallel_tool_calls": false, "store": false, "service_tier": "auto", "modalities": ["text"]}"#,
    )
    .unwrap();
    assert_eq!(
        err(r#"{"messages": [{"role": "user", "content": "hi"}], "store": true}"#)
            .param
            .as_deref(),
        Some("store")
    );
    let e = err(r#"{"messages": [{"role": "user", "content": "hi"}], "modalities": ["audio"]}"#);
    assert_eq!(e.param.as_deref(), Some("modalities"));
}

#[test]
fn wrong_json_types_deep_in_the_body_name_their_path() {
    let e = err(r#"{"messages": [{"role": "user", "content": 123}]}"#);
    assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    assert_eq!(
        e.message,
        "Invalid type for `messages[0].content`: expected a string or an array of content parts"
    );
    let e = err(
        r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f", "parameters": 5}}]}"#,
    );
    assert_eq!(e.param.as_deref(), Some("tools[0].function.parameters"));
    let e = err(r#"{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "retrieval"}]}"#);
    assert_eq!(e.param.as_deref(), Some("tools[0].type"));
}

fn grammar_of(extra: &str) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    let body = format!(r#"{{"messages": [{{"role": "user", "content": "x"}}], {extra}}}"#);
    chat(body.as_bytes()).map(|p| p.constraint)
}

#[test]
fn every_grammar_field_is_honoured() {
    let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
    let cases = [
        (
            r#""response_format": {"type": "json_object"}"#.to_string(),
            Constraint::JsonObject,
            "response_format",
        ),
        (
            format!(r#""response_format": {{"type": "json_object", "schema": {schema}}}"#),
            Constraint::JsonSchema(schema.clone()),
            "response_format",
        ),
        (
            format!(
                r#""response_format": {{"type": "json_schema", "json_schema": {{"name": "x", "schema": {schema}}}}}"#
            ),
            Constraint::JsonSchema(schema.clone()),
            "response_format",
        ),
        (
            format!(r#""json_schema": {schema}"#),
            Constraint::JsonSchema(schema.clone()),
            "json_schema",
        ),
        (
            format!(r#""guided_json": {schema}"#),
            Constraint::JsonSchema(schema.clone()),
            "guided_json",
        ),
        (
            r#""guided_regex": "a+""#.to_string(),
            Constraint::Regex("a+".into()),
            "guided_regex",
        ),
        (
            r#""guided_choice": ["yes", "no"]"#.to_string(),
            Constraint::Regex("(yes|no)".into()),
            "guided_choice",
        ),
        (
            r#""guided_grammar": "start: \"a\"""#.to_string(),
            Constraint::Lark("start: \"a\"".into()),
            "guided_grammar",
        ),
        (
            r#""structured_outputs": {"choice": ["a"]}"#.to_string(),
            Constraint::Regex("(a)".into()),
            "structured_outputs",
        ),
        (
            r#""grammar": "root ::= \"yes\" | \"no\"""#.to_string(),
            Constraint::Lark("start: \"yes\" | \"no\"".into()),
            "grammar",
        ),
    ];
    for (extra, constraint, param) in cases {
        assert_eq!(grammar_of(&extra).unwrap(), Some((constraint, param)), "{extra}");
    }
    assert_eq!(grammar_of(r#""response_format": {"type": "text"}"#).unwrap(), None);
    let e = grammar_of(r#""guided_regex": "a", "grammar": "root ::= \"a\"""#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("grammar"));
    let e = grammar_of(r#""grammar": "root = a""#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("grammar"));
    let e = grammar_of(r#""response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}"#)
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("response_format"));
}

#[test]
fn prompt_log_probabilities_are_asked_for() {
    let p = completion(br#"{"prompt": "x", "echo": true, "logprobs": 1, "max_tokens": 0}"#).unwrap();
    assert_eq!(
        (p.common.max_tokens, p.common.prompt_logprobs, p.common.logprobs),
        (Some(0), Some(1), Some(1))
    );
    let p = completion(br#"{"prompt": "x", "echo": true, "logprobs": 2}"#).unwrap();
    assert_eq!((p.common.max_tokens, p.common.prompt_logprobs), (Some(16), Some(2)));
    let p = completion(br#"{"prompt": "x", "logprobs": 2}"#).unwrap();
    assert_eq!(p.common.prompt_logprobs, None);
    assert!(completion(br#"{"prompt": "x", "max_tokens": 0}"#).is_err());
    let e = completion(br#"{"prompt": "x", "echo": true, "logprobs": 1, "stream": true}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("echo"));
    let p = chat(br#"{"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 0}"#).unwrap();
    assert_eq!(p.common.prompt_logprobs, Some(0));
    assert_eq!(
        err(r#"{"messages": [{"role": "user", "content": "x"}], "prompt_logprobs": 21}"#)
            .param
            .as_deref(),
        Some("prompt_logprobs")
    );
}

#[test]
fn tool_schemas_with_defs_keep_their_references() {
    let tool = json!({"type": "function", "function": {"name": "f", "parameters": {
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"$ref": "#/$defs/Kind"}}},
                  "Kind": {"enum": ["cat", "dog"]}},
        "type": "object", "properties": {"pet": {"$ref": "#/$defs/Pet"}}}}});
    let Constraint::JsonSchema(schema) = crate::server::params::tool_call_constraint(&[tool], None) else {
        panic!("a schema")
    };
    assert_eq!(
        schema["anyOf"][0]["properties"]["parameters"]["properties"]["pet"]["$ref"],
        "#/$defs/t0_Pet"
    );
    assert_eq!(
        schema["$defs"]["t0_Pet"]["properties"]["kind"]["$ref"],
        "#/$defs/t0_Kind"
    );
    assert!(schema["anyOf"][0]["properties"]["parameters"].get("$defs").is_none());
}

#[test]
fn bounded_lists_and_values() {
    let many: Vec<String> = (0..17).map(|i| format!("\"s{i}\"")).collect();
    let e = err(&format!(
        r#"{{"messages": [{{"role": "user", "content": "x"}}], "stop": [{}]}}"#,
        many.join(",")
    ));
    assert_eq!(e.param.as_deref(), Some("stop"));
    let long = "x".repeat(257);
    let e = err(&format!(
        r#"{{"messages": [{{"role": "user", "content": "x"}}], "stop": "{long}"}}"#
    ));
    assert_eq!(e.param.as_deref(), Some("stop"));
    let e = err(r#"{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"5": 101}}"#);
    assert_eq!(e.param.as_deref(), Some("logit_bias"));
    let p = chat(br#"{"messages": [{"role": "user", "content": "x"}], "max_tokens": 18446744073709551615}"#).unwrap();
    assert_eq!(p.common.max_tokens, Some(i64::MAX as usize));
    let p = chat(b"\xEF\xBB\xBF{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}]}").unwrap();
    assert_eq!(p.messages.len(), 1);
}

/// A byte mutation of `body`: flip, delete, duplicate or insert a JSON-ish byte.
fn mutate(rng: &mut impl rand::Rng, body: &[u8]) -> Vec<u8> {
    const BYTES: &[u8] = b"{}[]\",:0123456789-.eEtrufalsn \\\xff\x00";
    let mut out = body.to_vec();
    for _ in 0..rng.random_range(1..4) {
        if out.is_empty() {
            break;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..4) {
            0 => out[at] = BYTES[rng.random_range(0..BYTES.len())],
            1 => {
                out.remove(at);
            }
            2 => {
                let end = (at + rng.random_range(1..16)).min(out.len());
                let copy = out[at..end].to_vec();
                out.splice(at..at, copy);
            }
            _ => out.insert(at, BYTES[rng.random_range(0..BYTES.len())]),
        }
    }
    out
}

#[test]
fn mutated_bodies_never_panic_the_parser() {
    use rand::SeedableRng;
    let seeds: [&[u8]; 4] = [
        br#"{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{\"a\": 1}"}}]},
            {"role": "tool", "tool_call_id": "c", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}], "tool_choice": "required",
            "temperature": 0.5, "top_p": 0.9, "stop": ["x", "y"], "logit_bias": {"5": -1}, "n": 2, "seed": 3,
            "logprobs": true, "top_logprobs": 2, "max_completion_tokens": 9, "stream": true,
            "stream_options": {"include_usage": true}}"#,
        br#"{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object", "$defs": {"a": {"type": "string"}}}}},
            "guided_choice": ["a"], "grammar": "root ::= [a-z]{1,3} (\"x\" | \"y\")*"}"#,
        br#"{"prompt": [[1, 2, 3]], "echo": true, "logprobs": 1, "max_tokens": 0, "structured_outputs": {"regex": "a+"}}"#,
        br#"{"prompt": "x", "suffix": null, "best_of": 1, "guided_json": "{\"type\": \"object\"}"}"#,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(26);
    for i in 0..200_000 {
        let body = mutate(&mut rng, seeds[i % seeds.len()]);
        match i % seeds.len() {
            0 | 1 => {
                let _ = chat(&body);
            }
            _ => {
                let _ = completion(&body);
            }
        }
    }
}

#[test]
fn tool_choice_names_a_tool_that_exists() {
    let tools = r#""tools": [{"type": "function", "function": {"name": "f"}}]"#;
    for choice in [
        r#"{"type": "function", "function": {"name": "f"}}"#,
        r#"{"type": "function", "name": "f"}"#,
    ] {
        let body = format!(r#"{{"messages": [{{"role": "user", "content": "x"}}], {tools}, "tool_choice": {choice}}}"#);
        assert_eq!(
            chat(body.as_bytes()).unwrap().tool_choice,
            ToolChoice::Function("f".into())
        );
    }
    let body = format!(
        r#"{{"messages": [{{"role": "user", "content": "x"}}], {tools}, "tool_choice": {{"type": "function", "function": {{"name": "g"}}}}}}"#
    );
    let e = chat(body.as_bytes()).unwrap_err();
    assert_eq!(
        (e.param.as_deref(), e.message.as_str()),
        (Some("tool_choice"), "no tool is named `g`")
    );
}
