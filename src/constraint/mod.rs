//! Constrained decoding: a grammar decides, at every step, which tokens may come next
//! (`llguidance`: JSON Schema, any JSON object, regular expressions, Lark grammars). The
//! sampler then only draws among those; end-of-sequence is allowed only where the grammar
//! may end. A grammar is compiled once per request (errors name the constraint) and its
//! matcher lives with the sequence.

mod gbnf;

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

pub use gbnf::gbnf_to_lark;

/// What the generated text must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// Any JSON object (OpenAI's `json_object` mode).
    JsonObject,
    /// A JSON document valid against this JSON Schema.
    JsonSchema(Json),
    /// Text matching this regular expression (whole answer).
    Regex(String),
    /// Text derived from this Lark grammar (llguidance's dialect).
    Lark(String),
}

/// JSON is generated compact (`, ` and `: ` between items, no other whitespace) unless the
/// schema says otherwise in llguidance's `x-guidance` options: free whitespace lets a model
/// pad forever instead of closing the document.
fn compact(mut schema: Json) -> Json {
    if let Json::Object(map) = &mut schema {
        map.entry("x-guidance")
            .or_insert_with(|| json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}));
    }
    schema
}

/// Closes every object schema that does not say whether other keys are allowed
/// (`additionalProperties` missing counts as `false`), as llama.cpp's schema converter and
/// OpenAI's strict mode do: pydantic, zod and tool schemas omit it, and an open object lets
/// a model add keys until it runs out of tokens. Subschemas are visited by keyword.
fn close_objects(schema: &mut Json) {
    let Json::Object(map) = schema else { return };
    let is_object = map.get("type").is_some_and(|t| t == "object") || map.contains_key("properties");
    if is_object && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".into(), Json::Bool(false));
    }
    for (key, value) in map.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Json::Object(subs) = value {
                    subs.values_mut().for_each(close_objects);
                }
            }
            "items" | "prefixItems" | "anyOf" | "oneOf" | "allOf" => match value {
                Json::Array(subs) => subs.iter_mut().for_each(close_objects),
                other => close_objects(other),
            },
            "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "additionalItems" => close_objects(value),
            _ => {}
        }
    }
}

impl Constraint {
    /// The size of its source text (a schema as compact JSON).
    fn source_bytes(&self) -> usize {
        match self {
            Constraint::JsonObject => 0,
            Constraint::JsonSchema(schema) => serde_json::to_string(schema).map_or(usize::MAX, |s| s.len()),
            Constraint::Regex(text) | Constraint::Lark(text) => text.len(),
        }
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Constraint::JsonSchema(schema) => {
                let mut schema = schema.clone();
                close_objects(&mut schema);
                TopLevelGrammar::from_json_schema(compact(schema))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }
}

/// Compiles constraints for one model's vocabulary (built once per engine, on first use).
pub struct Grammars {
    factory: ParserFactory,
    eos: Arc<[u32]>,
}

/// Most bytes of a grammar, regular expression or JSON Schema (a request's input: the
/// work and memory of compiling it grow with it).
pub const MAX_CONSTRAINT_BYTES: usize = 128 << 10;

/// The stack of the thread that compiles a grammar: llguidance recurses along rule chains
/// and `$ref` chains, which a request controls (bounded by [`MAX_CONSTRAINT_BYTES`]).
const COMPILE_STACK_BYTES: usize = 512 << 20;

fn invalid(reason: impl std::fmt::Display) -> Error {
    Error::InvalidParameter {
        name: "constraint",
        reason: reason.to_string(),
    }
}

/// Checks `constraint` alone, without a model: compiled against a vocabulary of the 256
/// bytes (quick), so that a bad schema, grammar or regex is found before a model loads.
/// Grammars naming a model's special tokens are checked only by [`Grammars::compile`].
pub fn check(constraint: &Constraint) -> Result<()> {
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut eos = vec![TokTrie::SPECIAL_TOKEN_MARKER];
    eos.extend_from_slice(b"<[256]>");
    words.push(eos);
    let info = TokRxInfo::new(257, 256);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(&[256]);
    let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
    let mut factory = ParserFactory::new_simple(&env).map_err(invalid)?;
    factory.quiet();
    factory.limits_mut().verbose_errors = false;
    let grammars = Grammars {
        factory,
        eos: Arc::from(vec![256u32]),
    };
    grammars.compile(constraint).map(|_| ())
}

impl Grammars {
    /// The token trie of `tokenizer` over `vocab_size` ids (ids it does not know are
    /// never allowed) with `eos` as the end-of-sequence ids.
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize, eos: Arc<[u32]>) -> Result<Self> {
        let Some(&first_eos) = eos.first() else {
            return Err(invalid("the model has no end-of-sequence id"));
        };
        let words: Vec<Vec<u8>> = (0..vocab_size as u32)
            .map(|id| {
                let bytes = tokenizer.token_bytes(id);
                match (tokenizer.is_special(id), bytes.is_empty()) {
                    // llguidance's convention: special tokens start with 0xFF.
                    (true, _) | (_, true) => {
                        let mut w = vec![TokTrie::SPECIAL_TOKEN_MARKER];
                        w.extend_from_slice(format!("<[{id}]>").as_bytes());
                        w
                    }
                    _ => bytes,
                }
            })
            .collect();
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&eos);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let mut factory = ParserFactory::new_simple(&env).map_err(invalid)?;
        factory.quiet();
        // Errors name the problem, not the parser's state or the whole grammar.
        factory.limits_mut().verbose_errors = false;
        Ok(Self { factory, eos })
    }

    /// A fresh matcher for `constraint`; a bad grammar or schema is an error naming it, as
    /// is one over [`MAX_CONSTRAINT_BYTES`]. Compiles on a thread of its own with a large
    /// stack, so that a deep grammar is an error or a matcher, never a stack overflow.
    pub fn compile(&self, constraint: &Constraint) -> Result<ConstraintState> {
        let size = constraint.source_bytes();
        if size > MAX_CONSTRAINT_BYTES {
            return Err(invalid(format!(
                "the grammar is {size} bytes, over the limit of {MAX_CONSTRAINT_BYTES}"
            )));
        }
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("llama32-grammar".into())
                .stack_size(COMPILE_STACK_BYTES)
                .spawn_scoped(scope, || self.build(constraint))
                .map_err(|e| Error::Internal(format!("could not start the grammar compiler: {e}")))?;
            worker
                .join()
                .unwrap_or_else(|_| Err(invalid("the grammar compiler failed on this grammar")))
        })
    }

    fn build(&self, constraint: &Constraint) -> Result<ConstraintState> {
        let parser = self.factory.create_parser(constraint.grammar()).map_err(invalid)?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(invalid(e));
        }
        Ok(ConstraintState {
            matcher,
            eos: self.eos.clone(),
            mask: None,
        })
    }
}

/// One sequence's position in its grammar.
pub struct ConstraintState {
    matcher: Matcher,
    eos: Arc<[u32]>,
    mask: Option<SimpleVob>,
}

impl std::fmt::Debug for ConstraintState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConstraintState").finish_non_exhaustive()
    }
}

impl ConstraintState {
    fn failed(&self, step: usize, e: impl std::fmt::Display) -> Error {
        Error::Constraint(format!("at generation step {step}: {e}"))
    }

    /// Computes the tokens allowed next (at step `step`, for errors).
    pub fn compute(&mut self, step: usize) -> Result<()> {
        let mask = self.matcher.compute_mask_or_eos().map_err(|e| self.failed(step, e))?;
        self.mask = Some(mask);
        Ok(())
    }

    /// True when `token` may come next (after [`ConstraintState::compute`]); every
    /// end-of-sequence id counts as the grammar's end.
    pub fn allows(&self, token: u32) -> bool {
        let Some(mask) = &self.mask else {
            return false;
        };
        match self.eos.contains(&token) {
            true => self.eos.iter().any(|&e| mask.is_allowed(e)),
            false => mask.is_allowed(token),
        }
    }

    /// Advances the grammar past `token` (not called for end-of-sequence).
    pub fn consume(&mut self, token: u32, step: usize) -> Result<()> {
        self.mask = None;
        self.matcher.consume_token(token).map_err(|e| self.failed(step, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_grammars_are_refused_with_the_reason() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-bf16-llama3");
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        let eos: Arc<[u32]> = Arc::from(vec![128009u32]);
        let grammars = Grammars::new(&tokenizer, 128256, eos).unwrap();
        let bad = Constraint::JsonSchema(json!({"type": "nonsense"}));
        let err = grammars.compile(&bad).unwrap_err();
        assert!(
            matches!(err, Error::InvalidParameter { name: "constraint", .. }),
            "{err}"
        );
        assert!(grammars.compile(&Constraint::Lark("start: (".into())).is_err());
        // A regex: only digits, then end.
        let mut state = grammars.compile(&Constraint::Regex("[0-9]{2}".into())).unwrap();
        state.compute(0).unwrap();
        let seven = tokenizer.encode("7", false).unwrap()[0];
        let letter = tokenizer.encode("a", false).unwrap()[0];
        assert!(state.allows(seven) && !state.allows(letter) && !state.allows(128009));
        state.consume(seven, 0).unwrap();
        state.compute(1).unwrap();
        state.consume(seven, 1).unwrap();
        state.compute(2).unwrap();
        assert!(state.allows(128009) && !state.allows(seven));
    }

    fn fixture_grammars() -> Grammars {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tied-bf16-llama3");
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
        Grammars::new(&tokenizer, 128256, Arc::from(vec![128009u32])).unwrap()
    }

    #[test]
    fn deep_grammars_compile_or_fail_without_overflowing_the_stack() {
        let grammars = fixture_grammars();
        // 800 chained Lark rules and a 700-deep `$ref` chain (both crashed a server).
        let mut lark = String::from("start: r0\n");
        for i in 0..800 {
            lark.push_str(&format!("r{i}: \"a\" r{}\n", i + 1));
        }
        lark.push_str("r800: \"b\"\n");
        let _ = grammars.compile(&Constraint::Lark(lark));
        let mut defs = serde_json::Map::new();
        for i in 0..700 {
            defs.insert(
                format!("d{i}"),
                json!({"type": "array", "items": {"$ref": format!("#/$defs/d{}", i + 1)}}),
            );
        }
        defs.insert("d700".into(), json!({"type": "integer"}));
        let chain = json!({"$defs": defs, "$ref": "#/$defs/d0"});
        let _ = grammars.compile(&Constraint::JsonSchema(chain));
        let big = Constraint::Regex("a".repeat(MAX_CONSTRAINT_BYTES + 1));
        let e = grammars.compile(&big).unwrap_err().to_string();
        assert!(e.contains("over the limit"), "{e}");
    }

    #[test]
    fn objects_without_additional_properties_are_closed_at_every_depth() {
        let mut schema = json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
                "properties": {"type": "string"},
                "open": {"type": "object", "additionalProperties": true},
                "list": {"type": "array", "items": {"$ref": "#/$defs/Item"}}
            },
            "$defs": {"Item": {"properties": {"y": {"type": "string"}}}},
            "anyOf": [{"type": "object"}]
        });
        close_objects(&mut schema);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["properties"]["a"]["additionalProperties"], false);
        assert_eq!(schema["properties"]["open"]["additionalProperties"], true);
        assert_eq!(schema["$defs"]["Item"]["additionalProperties"], false);
        assert_eq!(schema["anyOf"][0]["additionalProperties"], false);
        assert!(schema["properties"]["properties"].get("additionalProperties").is_none());
        assert!(
            schema["properties"].get("additionalProperties").is_none(),
            "a properties map is not a schema"
        );
    }
}
