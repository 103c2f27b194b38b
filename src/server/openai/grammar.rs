//! The request fields that ask for a grammar, as OpenAI, vLLM and llama-server name them:
//! `response_format` (`json_object`, with llama-server's optional `schema`, or
//! `json_schema`), vLLM's `guided_json` / `guided_regex` / `guided_choice` /
//! `guided_grammar` and `structured_outputs`, llama-server's `json_schema` and `grammar`
//! (GBNF). Each becomes one [`Constraint`]; asking for two at once is a 400.

use serde::Deserialize;
use serde_json::Value as Json;

use crate::constraint::{gbnf_to_lark, Constraint};
use crate::server::error::ApiError;

/// OpenAI's `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(crate) enum ResponseFormat {
    /// Free text.
    Text,
    /// Any JSON object, or one valid against `schema` (llama-server's extension).
    JsonObject { schema: Option<Json> },
    /// A JSON document valid against `json_schema.schema` (or llama-server's `schema`).
    JsonSchema {
        json_schema: Option<JsonSchemaSpec>,
        schema: Option<Json>,
    },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonSchemaSpec {
    #[allow(dead_code)]
    name: Option<String>,
    #[allow(dead_code)]
    description: Option<String>,
    schema: Option<Json>,
    /// Honoured always: the answer is constrained to the schema.
    #[allow(dead_code)]
    strict: Option<bool>,
}

/// vLLM's `structured_outputs`: one of its fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StructuredOutputs {
    json: Option<Json>,
    regex: Option<String>,
    choice: Option<Vec<String>>,
    grammar: Option<String>,
    json_object: Option<bool>,
}

/// Every grammar field of a request, as it came.
#[derive(Debug, Clone, Default)]
pub(crate) struct GrammarFields {
    pub(crate) response_format: Option<ResponseFormat>,
    pub(crate) guided_json: Option<Json>,
    pub(crate) guided_regex: Option<String>,
    pub(crate) guided_choice: Option<Vec<String>>,
    pub(crate) guided_grammar: Option<String>,
    pub(crate) structured_outputs: Option<StructuredOutputs>,
    pub(crate) json_schema: Option<Json>,
    pub(crate) grammar: Option<String>,
}

/// Takes the grammar fields out of a request struct that has all of them.
macro_rules! take_grammar_fields {
    ($body:expr) => {
        $crate::server::openai::grammar::GrammarFields {
            response_format: $body.response_format.take(),
            guided_json: $body.guided_json.take(),
            guided_regex: $body.guided_regex.take(),
            guided_choice: $body.guided_choice.take(),
            guided_grammar: $body.guided_grammar.take(),
            structured_outputs: $body.structured_outputs.take(),
            json_schema: $body.json_schema.take(),
            grammar: $body.grammar.take(),
        }
    };
}
pub(crate) use take_grammar_fields;

/// A grammar constraint and the request parameter it came from (errors name it).
pub(crate) type Asked = (Constraint, &'static str);

/// A JSON Schema given as an object, a boolean, or (vLLM) a string holding one.
pub(crate) fn schema(param: &'static str, value: Json) -> Result<Constraint, ApiError> {
    let value = match value {
        Json::String(s) => serde_json::from_str(&s)
            .map_err(|e| ApiError::invalid(param, format!("`{param}` is not a JSON Schema: {e}")))?,
        other => other,
    };
    match value {
        v @ (Json::Object(_) | Json::Bool(_)) => Ok(Constraint::JsonSchema(v)),
        _ => Err(ApiError::invalid(
            param,
            format!("`{param}` must be a JSON Schema object"),
        )),
    }
}

/// A regular expression matching exactly one of `choices`.
fn choice_regex(param: &'static str, choices: &[String]) -> Result<Constraint, ApiError> {
    if choices.is_empty() {
        return Err(ApiError::invalid(param, format!("`{param}` must not be empty")));
    }
    let escaped: Vec<String> = choices.iter().map(|c| escape_regex(c)).collect();
    Ok(Constraint::Regex(format!("({})", escaped.join("|"))))
}

/// `text` with every regular-expression metacharacter escaped.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A llama-server GBNF grammar, read into llguidance's Lark dialect.
fn gbnf(param: &'static str, text: &str) -> Result<Constraint, ApiError> {
    gbnf_to_lark(text)
        .map(Constraint::Lark)
        .map_err(|e| ApiError::invalid(param, format!("`{param}` is not a GBNF grammar llama32 can read: {e}")))
}

impl ResponseFormat {
    fn constraint(self) -> Result<Option<Constraint>, ApiError> {
        const P: &str = "response_format";
        Ok(match self {
            ResponseFormat::Text => None,
            ResponseFormat::JsonObject { schema: None } => Some(Constraint::JsonObject),
            ResponseFormat::JsonObject { schema: Some(s) } => Some(schema(P, s)?),
            ResponseFormat::JsonSchema {
                json_schema,
                schema: top,
            } => match json_schema.and_then(|j| j.schema).or(top) {
                Some(s) => Some(schema(P, s)?),
                None => {
                    return Err(ApiError::invalid(
                        P,
                        "`response_format.json_schema.schema` must be a JSON Schema object",
                    ))
                }
            },
        })
    }
}

impl StructuredOutputs {
    fn constraint(self) -> Result<Option<Constraint>, ApiError> {
        const P: &str = "structured_outputs";
        let mut asked = Vec::new();
        if let Some(j) = self.json {
            asked.push(schema(P, j)?);
        }
        if let Some(rx) = self.regex {
            asked.push(Constraint::Regex(rx));
        }
        if let Some(choices) = self.choice {
            asked.push(choice_regex(P, &choices)?);
        }
        if let Some(g) = self.grammar {
            asked.push(Constraint::Lark(g));
        }
        if self.json_object == Some(true) {
            asked.push(Constraint::JsonObject);
        }
        match asked.len() {
            0 | 1 => Ok(asked.pop()),
            _ => Err(ApiError::invalid(
                P,
                "`structured_outputs` takes one of json, regex, choice, grammar, json_object",
            )),
        }
    }
}

impl GrammarFields {
    /// The one constraint asked for, if any, with the parameter it came from.
    pub(crate) fn constraint(self) -> Result<Option<Asked>, ApiError> {
        let mut asked: Vec<(Option<Constraint>, &'static str)> = Vec::new();
        if let Some(f) = self.response_format {
            asked.push((f.constraint()?, "response_format"));
        }
        if let Some(s) = self.guided_json {
            asked.push((Some(schema("guided_json", s)?), "guided_json"));
        }
        if let Some(rx) = self.guided_regex {
            asked.push((Some(Constraint::Regex(rx)), "guided_regex"));
        }
        if let Some(c) = self.guided_choice {
            asked.push((Some(choice_regex("guided_choice", &c)?), "guided_choice"));
        }
        if let Some(g) = self.guided_grammar {
            asked.push((Some(Constraint::Lark(g)), "guided_grammar"));
        }
        if let Some(s) = self.structured_outputs {
            asked.push((s.constraint()?, "structured_outputs"));
        }
        if let Some(s) = self.json_schema {
            asked.push((Some(schema("json_schema", s)?), "json_schema"));
        }
        if let Some(g) = self.grammar {
            asked.push((Some(gbnf("grammar", &g)?), "grammar"));
        }
        let mut asked = asked.into_iter().filter_map(|(c, p)| c.map(|c| (c, p)));
        let first = asked.next();
        if let (Some((_, a)), Some((_, b))) = (&first, asked.next()) {
            return Err(ApiError::invalid(
                b.to_string(),
                format!("`{a}` and `{b}` both ask for a grammar: give one"),
            ));
        }
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_are_escaped_alternatives() {
        let c = choice_regex("guided_choice", &["a.b".into(), "(x)".into()]).unwrap();
        assert_eq!(c, Constraint::Regex(r"(a\.b|\(x\))".into()));
        assert!(choice_regex("guided_choice", &[]).is_err());
    }

    #[test]
    fn two_grammars_are_refused() {
        let fields = GrammarFields {
            guided_regex: Some("a+".into()),
            json_schema: Some(serde_json::json!({"type": "object"})),
            ..GrammarFields::default()
        };
        let e = fields.constraint().unwrap_err();
        assert_eq!(e.param.as_deref(), Some("json_schema"));
    }
}
