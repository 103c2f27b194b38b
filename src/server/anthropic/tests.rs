use super::request::MessagesRequest;
use crate::constraint::Constraint;
use crate::server::body::parse;
use crate::server::params::ToolChoice;

fn params(body: &str) -> Result<crate::server::params::ChatParams, crate::server::error::ApiError> {
    parse::<MessagesRequest>(body.as_bytes())?.into_params(true)
}

#[test]
fn turns_tools_and_results_become_messages() {
    let p = params(
        r#"{"max_tokens": 4, "system": [{"type": "text", "text": "Be brief."}], "stop_sequences": ["x"],
        "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}], "tool_choice": {"type": "any"},
        "messages": [{"role": "user", "content": "Weather?"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "20C"}]}]}"#,
    )
    .unwrap();
    let roles: Vec<&str> = p.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool"]);
    assert_eq!(p.messages[0].content, "Be brief.");
    assert_eq!(p.messages[2].tool_calls[0].function.name, "get_weather");
    assert_eq!(p.messages[3].tool_call_id.as_deref(), Some("toolu_1"));
    assert_eq!(p.tools.unwrap()[0]["function"]["name"], "get_weather");
    assert_eq!(p.tool_choice, ToolChoice::Required);
    assert_eq!(p.common.stop, vec!["x".to_string()]);
}

#[test]
fn bad_bodies_are_400s_naming_the_field() {
    let e = params(r#"{"messages": [{"role": "user", "content": "hi"}]}"#).unwrap_err();
    assert_eq!(
        (e.param.as_deref(), e.message.as_str()),
        (Some("max_tokens"), "max_tokens: Field required")
    );
    let e = params(r#"{"max_tokens": 1, "messages": [{"role": "user", "content": 5}]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    let e = params(r#"{"max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages"));
    let e = params(r#"{"max_tokens": 1, "system": 3, "messages": [{"role": "user", "content": "x"}]}"#).unwrap_err();
    assert_eq!(
        e.message,
        "Invalid type for `system`: expected a string or an array of text blocks"
    );
    let e = params(r#"{"max_tokens": "many", "messages": [{"role": "user", "content": "x"}]}"#).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("max_tokens"));
}

#[test]
fn nested_fields_are_read_or_refused() {
    // A failed tool's result is shown as an error; an empty one is a result.
    let p = params(
        r#"{"max_tokens": 4, "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "Go"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "boom", "is_error": true},
            {"type": "text", "text": "and?", "cache_control": {"type": "ephemeral"}}]}]}"#,
    )
    .unwrap();
    assert_eq!(p.messages[2].content, "Error: boom");
    let turns = r#""messages": [{"role": "user", "content": "Go"},
          {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]}]"#;
    let p = params(&format!(r#"{{"max_tokens": 4, {turns}}}"#)).unwrap();
    assert_eq!(p.messages[2].content, "");
    // An unknown key in a block, a server tool: refused by name; an error names the
    // request's turn, not the converted list's.
    let e = params(
        r#"{"max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "bogus": 1}]}]}"#,
    )
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("messages[0].content"), "{e:?}");
    let e = params(r#"{"max_tokens": 4, "tools": [{"type": "web_search_20250305", "name": "web_search"}], "messages": [{"role": "user", "content": "hi"}]}"#)
        .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("tools[0].type"), "{e:?}");
    let e = params(
        r#"{"max_tokens": 4, "system": "Be brief.", "messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}, {"role": "user", "content": " "}]}"#,
    )
    .unwrap_err();
    assert!(e.message.contains("messages[2]"), "{e:?}");
}

#[test]
fn output_config_thinking_and_unknown_fields() {
    let base = r#""max_tokens": 4, "messages": [{"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
          {"type": "redacted_thinking", "data": "x"}, {"type": "text", "text": "Hello."}]},
        {"role": "user", "content": "More."}]"#;
    let p = params(&format!(
        r#"{{{base}, "output_config": {{"format": {{"type": "json_schema", "schema": {{"type": "object"}}}}}},
        "thinking": {{"type": "disabled"}}, "metadata": {{"user_id": "u"}}}}"#
    ))
    .unwrap();
    assert_eq!(p.messages.len(), 3);
    assert_eq!(p.messages[1].content, "Hello.");
    let (constraint, param) = p.constraint.unwrap();
    assert_eq!(
        constraint,
        Constraint::JsonSchema(serde_json::json!({"type": "object"}))
    );
    assert_eq!(param, "output_config");
    let e = params(&format!(
        r#"{{{base}, "thinking": {{"type": "enabled", "budget_tokens": 1024}}}}"#
    ))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("thinking"));
    let e = params(&format!(
        r#"{{{base}, "output_config": {{"format": {{"type": "xml"}}}}}}"#
    ))
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("output_config.format.type"));
    let e = params(&format!(r#"{{{base}, "container": "c"}}"#)).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("container"));
}

#[test]
fn usage_counts_cached_tokens_once() {
    let u = super::response::usage(100, 5, 60);
    assert_eq!(
        (u["input_tokens"].as_u64(), u["cache_read_input_tokens"].as_u64()),
        (Some(40), Some(60))
    );
}
