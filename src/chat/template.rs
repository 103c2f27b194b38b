//! Rendering a model's Jinja `chat_template` (from `tokenizer_config.json`) the way HF
//! transformers does: Jinja with `trim_blocks` and `lstrip_blocks`, `raise_exception`,
//! `strftime_now`, and a `tojson` that prints exactly like Python's `json.dumps`.

use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

use crate::chat::{Message, Tool};
use crate::config::read_json;
use crate::error::{Error, Result};

/// A chat template plus the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

/// Options of one rendering.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Append the header that starts the assistant's answer.
    pub add_generation_prompt: bool,
    /// The date the template prints (`date_string`, e.g. "26 Jul 2024"); `None` lets the
    /// template call `strftime_now` (today in the
    /// system's local time zone, as transformers does).
    pub date: Option<String>,
    /// Encode special-token strings inside message content as plain text (what a server
    /// wants: a user cannot forge a turn). `false` is HF's behaviour: they become the
    /// special tokens. Applies when tokenizing ([`crate::chat::encode_conversation`]).
    pub content_as_text: bool,
}

#[derive(Serialize)]
struct Context<'a> {
    messages: &'a [Message],
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a [Tool]>,
    add_generation_prompt: bool,
    bos_token: &'a str,
    eos_token: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    date_string: Option<&'a str>,
}

fn token_text(v: Option<&serde_json::Value>) -> String {
    match v {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_string(),
        _ => String::new(),
    }
}

impl ChatTemplate {
    /// Reads `chat_template`, `bos_token` and `eos_token` from a `tokenizer_config.json`.
    /// Returns `Ok(None)` when the file has no chat template (a base model).
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<Self>> {
        let cfg: serde_json::Value = read_json(path)?;
        let source = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // A list of named templates: take "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(str::to_string)
                .ok_or_else(|| Error::Template(format!("{}: no template named `default`", path.display())))?,
            _ => return Ok(None),
        };
        Ok(Some(Self::new(
            source,
            token_text(cfg.get("bos_token")),
            token_text(cfg.get("eos_token")),
        )))
    }

    /// The chat template of a checkpoint directory, wherever transformers puts it:
    /// `chat_template.jinja`, then `chat_template.json` (`{"chat_template": ...}`), then
    /// `tokenizer_config.json`'s `chat_template` (a string, or named templates: `default`).
    /// `bos_token` / `eos_token` come from `tokenizer_config.json`. `Ok(None)`: no template.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = match config_path.exists() {
            true => read_json(&config_path)?,
            false => serde_json::Value::Null,
        };
        let (bos, eos) = (token_text(config.get("bos_token")), token_text(config.get("eos_token")));
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let source = std::fs::read_to_string(&jinja).map_err(crate::error::io_err(&jinja))?;
            return Ok(Some(Self::new(source, bos, eos)));
        }
        let json_path = dir.join("chat_template.json");
        if json_path.exists() {
            let json: serde_json::Value = read_json(&json_path)?;
            return match Self::source_of(&json_path, json.get("chat_template"))? {
                Some(source) => Ok(Some(Self::new(source, bos, eos))),
                None => Err(Error::Template(format!(
                    "{}: no `chat_template` string",
                    json_path.display()
                ))),
            };
        }
        Ok(Self::source_of(&config_path, config.get("chat_template"))?.map(|s| Self::new(s, bos, eos)))
    }

    /// A `chat_template` value: a string, or a list of named templates (take `default`).
    fn source_of(path: &Path, value: Option<&serde_json::Value>) -> Result<Option<String>> {
        match value {
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str())
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| Error::Template(format!("{}: no template named `default`", path.display()))),
            _ => Ok(None),
        }
    }

    /// A template from its Jinja source.
    pub fn new(source: String, bos_token: String, eos_token: String) -> Self {
        Self {
            source,
            bos_token,
            eos_token,
        }
    }

    /// Renders a conversation to prompt text (special tokens as text, BOS included when
    /// the template writes it).
    pub fn render(&self, messages: &[Message], tools: Option<&[Tool]>, options: &RenderOptions) -> Result<String> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(template_error)?;
        env.set_syntax(syntax);
        // A template that loops without end (or a huge loop) is an error, not a hang.
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        let template = env.template_from_str(&self.source).map_err(template_error)?;
        let ctx = Context {
            messages,
            tools,
            add_generation_prompt: options.add_generation_prompt,
            bos_token: &self.bos_token,
            eos_token: &self.eos_token,
            date_string: options.date.as_deref(),
        };
        template.render(Value::from(Serde(&ctx))).map_err(template_error)
    }
}

/// Instructions one rendering may run (a long conversation takes a few thousand per message).
const TEMPLATE_FUEL: u64 = 50_000_000;

fn template_error(e: minijinja::Error) -> Error {
    let mut msg = match e.kind() {
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_string(),
        _ => e.to_string(),
    };
    if let Some(line) = e.line() {
        msg.push_str(&format!(" (chat template line {line})"));
    }
    Error::Template(msg)
}

fn raise_exception(msg: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(format)` as transformers defines it: the current local time (the
/// system's time zone, as `datetime.now()` gives it) formatted by C's `strftime` rules.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    let now = jiff::Zoned::now();
    jiff::fmt::strtime::format(&format, &now)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("strftime_now({format:?}): {e}")))
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent)`.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json =
        serde_json::to_value(value).map_err(|e| minijinja::Error::new(ErrorKind::BadSerialization, e.to_string()))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

/// Python `json.dumps` layout: `", "` / `": "` separators without indent; newline +
/// indent, `","` and `": "` with it; non-ASCII kept as is.
pub(crate) fn python_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let items: Vec<(Option<&String>, &J)> = match v {
        J::Array(a) if !a.is_empty() => a.iter().map(|x| (None, x)).collect(),
        J::Object(o) if !o.is_empty() => o.iter().map(|(k, x)| (Some(k), x)).collect(),
        other => {
            out.push_str(&other.to_string());
            return;
        }
    };
    let (open, close) = if v.is_array() { ('[', ']') } else { ('{', '}') };
    out.push(open);
    for (i, (key, item)) in items.iter().enumerate() {
        match indent {
            Some(n) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.push_str(&" ".repeat(n * (level + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        if let Some(k) = key {
            out.push_str(&J::String((*k).clone()).to_string());
            out.push_str(": ");
        }
        python_json(item, indent, level + 1, out);
    }
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * level));
    }
    out.push(close);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_like_python() {
        let v = serde_json::json!({"b": [1, 2.5, "é\n"], "a": {}, "c": [], "d": null, "e": {"x": true}});
        let mut flat = String::new();
        python_json(&v, None, 0, &mut flat);
        assert_eq!(
            flat,
            r#"{"b": [1, 2.5, "é\n"], "a": {}, "c": [], "d": null, "e": {"x": true}}"#
        );
        let mut pretty = String::new();
        python_json(
            &serde_json::json!({"a": [1, {"b": 2}], "c": {}}),
            Some(4),
            0,
            &mut pretty,
        );
        assert_eq!(
            pretty,
            "{\n    \"a\": [\n        1,\n        {\n            \"b\": 2\n        }\n    ],\n    \"c\": {}\n}"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error_with_its_message() {
        let t = ChatTemplate::new("{{ raise_exception('no way') }}".into(), String::new(), String::new());
        let e = t.render(&[], None, &RenderOptions::default()).unwrap_err();
        assert!(e.to_string().contains("no way"), "{e}");
    }
}
