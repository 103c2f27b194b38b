//! Reading a request body into an API's wire type with serde: a body that is not a JSON
//! object is a 400 `invalid_json`; a field of the wrong JSON type is a 400 naming the JSON
//! path of the field (`messages[0].content`), as `param` and in the message. Also the field
//! types both APIs share: numbers (integers may be written `5.0`) and stop strings, and the
//! sampling and length fields of every generation request ([`generation_body!`]).

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::error::ApiError;

/// Parses `body` as a `T`: it must be one JSON object.
pub(super) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // A UTF-8 byte order mark before the JSON is allowed (RFC 8259 8.1 lets a parser skip it).
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let not_json = |e: serde_json::Error| ApiError::bad_json(format!("The request body is not valid JSON: {e}"));
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(match serde_json::from_slice::<IgnoredAny>(body) {
            Ok(_) => ApiError::bad_json("The request body must be a JSON object"),
            Err(e) => not_json(e),
        });
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.is_data() {
            true => field_error(&path, &inner),
            false => not_json(inner),
        }
    })?;
    de.end().map_err(not_json)?;
    Ok(value)
}

/// The 400 for a field at `path` that serde refused.
fn field_error(path: &str, e: &serde_json::Error) -> ApiError {
    let text = e.to_string();
    let text = text
        .strip_suffix(&format!(" at line {} column {}", e.line(), e.column()))
        .unwrap_or(&text);
    // The path of an unknown field ends with its name.
    if text.starts_with("unknown field `") {
        return ApiError::invalid(path, format!("Unrecognized request argument supplied: {path}"));
    }
    let expected = match text.strip_prefix("invalid type: ") {
        Some(rest) => rest.split_once(", expected ").map(|(_, x)| x),
        None => text.strip_prefix("expected "),
    };
    let message = match expected {
        Some(x) => format!("Invalid type for `{path}`: expected {}", plain_words(x)),
        None => format!("Invalid `{path}`: {text}"),
    };
    let error = ApiError::invalid(path, message);
    match path {
        "." => ApiError { param: None, ..error },
        _ => error,
    }
}

/// serde's names of JSON types in the words of the API docs.
fn plain_words(expected: &str) -> &str {
    match expected {
        "a sequence" => "an array",
        "a map" => "an object",
        x if x.starts_with("struct ") => "an object",
        x => x,
    }
}

/// A JSON number, read as `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Num(pub(super) f32);

impl<'de> Deserialize<'de> for Num {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Num;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Num, E> {
                Ok(Num(v as f32))
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON integer; a number with no fraction (`5.0`) counts as one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Int(pub(super) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                // Past i64 counts as the largest (never as a negative number).
                Ok(Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Int, E> {
                whole(v)
                    .map(Int)
                    .ok_or_else(|| E::invalid_type(Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

/// A number with no fraction (`5.0`) as the integer it is (within +-9e15, exact in f64).
fn whole(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() < 9e15).then_some(v as i64)
}

/// A `seed`: any JSON integer from -2^63 to 2^64 - 1, kept whole (a negative one as its
/// two's complement), or a number with no fraction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Seed(pub(super) u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Seed, E> {
                Ok(Seed(v as u64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Seed, E> {
                Ok(Seed(v))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Seed, E> {
                whole(v)
                    .map(|v| Seed(v as u64))
                    .ok_or_else(|| E::invalid_type(Unexpected::Float(v), &self))
            }
        }
        d.deserialize_any(V)
    }
}

impl Int {
    /// The value as a count of at least `min`; 400 naming `name` below.
    pub(super) fn count(self, name: &str, min: i64) -> Result<usize, ApiError> {
        match self.0 {
            v if v < min => Err(ApiError::invalid(name, format!("`{name}` must be >= {min}, got {v}"))),
            v => Ok(usize::try_from(v).unwrap_or(usize::MAX)),
        }
    }
}

/// Stop strings: one string or an array of strings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged, expecting = "expected a string or an array of strings")]
pub(super) enum Stop {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl From<Stop> for Vec<String> {
    fn from(stop: Stop) -> Self {
        match stop {
            Stop::One(s) => vec![s],
            Stop::Many(list) => list,
        }
    }
}

/// `stream_options` (only with `stream: true`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StreamOptions {
    /// A last chunk with `usage`.
    pub(super) include_usage: Option<bool>,
    /// OpenAI's padding of stream events against length side channels: not added here, so
    /// only `false` is accepted.
    pub(super) include_obfuscation: Option<bool>,
}

/// The sampling, length and streaming fields every generation request has (OpenAI's names;
/// the Messages API reads them too), as they came.
#[derive(Debug, Clone, Default)]
pub(super) struct SamplingFields {
    pub(super) model: Option<String>,
    pub(super) logit_bias: Option<Map<String, Json>>,
    pub(super) temperature: Option<Num>,
    pub(super) top_p: Option<Num>,
    pub(super) top_k: Option<Int>,
    pub(super) min_p: Option<Num>,
    pub(super) repetition_penalty: Option<Num>,
    pub(super) frequency_penalty: Option<Num>,
    pub(super) presence_penalty: Option<Num>,
    pub(super) seed: Option<Seed>,
    pub(super) max_tokens: Option<Int>,
    pub(super) stop: Option<Stop>,
    pub(super) n: Option<Int>,
    pub(super) stream: Option<bool>,
    pub(super) stream_options: Option<StreamOptions>,
    pub(super) cache_salt: Option<String>,
}

/// Declares a request body struct with its own fields followed by those of
/// [`SamplingFields`] (serde's `flatten` would lose the JSON path of a bad field), and
/// `sampling_fields` to take the latter out.
macro_rules! generation_body {
    ($(#[$attr:meta])* $vis:vis struct $name:ident { $($(#[$fattr:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$attr])*
        #[derive(Debug, Clone, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        $vis struct $name {
            $($(#[$fattr])* $field: $ty,)*
            model: Option<String>,
            logit_bias: Option<serde_json::Map<String, serde_json::Value>>,
            temperature: Option<$crate::server::body::Num>,
            top_p: Option<$crate::server::body::Num>,
            top_k: Option<$crate::server::body::Int>,
            min_p: Option<$crate::server::body::Num>,
            repetition_penalty: Option<$crate::server::body::Num>,
            frequency_penalty: Option<$crate::server::body::Num>,
            presence_penalty: Option<$crate::server::body::Num>,
            seed: Option<$crate::server::body::Seed>,
            max_tokens: Option<$crate::server::body::Int>,
            stop: Option<$crate::server::body::Stop>,
            n: Option<$crate::server::body::Int>,
            stream: Option<bool>,
            stream_options: Option<$crate::server::body::StreamOptions>,
            cache_salt: Option<String>,
        }

        impl $name {
            /// The sampling, length and streaming fields, taken out.
            fn sampling_fields(&mut self) -> $crate::server::body::SamplingFields {
                $crate::server::body::SamplingFields {
                    model: self.model.take(),
                    logit_bias: self.logit_bias.take(),
                    temperature: self.temperature.take(),
                    top_p: self.top_p.take(),
                    top_k: self.top_k.take(),
                    min_p: self.min_p.take(),
                    repetition_penalty: self.repetition_penalty.take(),
                    frequency_penalty: self.frequency_penalty.take(),
                    presence_penalty: self.presence_penalty.take(),
                    seed: self.seed.take(),
                    max_tokens: self.max_tokens.take(),
                    stop: self.stop.take(),
                    n: self.n.take(),
                    stream: self.stream.take(),
                    stream_options: self.stream_options.take(),
                    cache_salt: self.cache_salt.take(),
                }
            }
        }
    };
}
pub(super) use generation_body;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Body {
        #[allow(dead_code)]
        n: Option<Int>,
        items: Option<Vec<Item>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        #[allow(dead_code)]
        n: Option<Int>,
        #[allow(dead_code)]
        items: Option<Vec<StrictItem>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StrictItem {
        #[allow(dead_code)]
        content: String,
    }

    #[derive(Debug, Deserialize)]
    struct Item {
        #[allow(dead_code)]
        content: String,
    }

    #[test]
    fn errors_name_the_json_path() {
        let e = parse::<Body>(br#"{"items": [{"content": "a"}, {"content": 5}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("items[1].content"));
        assert_eq!(e.message, "Invalid type for `items[1].content`: expected a string");
        let e = parse::<Body>(br#"{"n": 1.5}"#).unwrap_err();
        assert_eq!(e.message, "Invalid type for `n`: expected an integer");
        let e = parse::<Body>(br#"{"items": {}}"#).unwrap_err();
        assert_eq!(e.message, "Invalid type for `items`: expected an array");
        let e = parse::<Body>(br#"{"items": [{}]}"#).unwrap_err();
        assert_eq!(e.message, "Invalid `items[0]`: missing field `content`");
        assert_eq!(parse::<Body>(b"[1]").unwrap_err().code, Some("invalid_json"));
        assert_eq!(parse::<Body>(b"{nope").unwrap_err().code, Some("invalid_json"));
        assert_eq!(parse::<Body>(b"{} x").unwrap_err().code, Some("invalid_json"));
        let ok = parse::<Body>(br#" {"n": 2.0, "items": null, "other": [1]}"#).unwrap();
        assert!(ok.items.is_none());
        let e = parse::<Strict>(br#"{"n": 1, "items": [{"content": "a", "extra": 1}]}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("items[0].extra"));
        assert_eq!(e.message, "Unrecognized request argument supplied: items[0].extra");
    }
}
