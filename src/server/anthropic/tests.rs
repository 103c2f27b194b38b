use super::request::MessagesRequest;
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
