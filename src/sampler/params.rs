//! Request parameters ([`SamplingParams`]) and their validated, defaulted form
//! ([`ResolvedSampling`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::GenerationConfig;
use crate::error::{Error, Result};

/// Largest magnitude of a logit bias; a bias of `-LOGIT_BIAS_LIMIT` (or less) bans a token.
pub const LOGIT_BIAS_LIMIT: f32 = 100.0;

/// Sampling parameters of one request, named as in OpenAI-compatible APIs.
///
/// `None` means "not given": [`SamplingParams::resolve`] fills it from the model's
/// `generation_config.json`, else from the OpenAI defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature, >= 0; 0 means greedy (argmax, ties to the lowest id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus mass in (0, 1]; 1 keeps every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Keep only the `top_k` most likely tokens; 0 keeps every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
    /// Drop tokens less likely than `min_p` times the top token, in [0, 1]; 0 keeps every token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Multiplicative penalty (> 0) on every token of prompt + output; 1 is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repetition_penalty: Option<f32>,
    /// Subtracted from a logit once per occurrence in the output, in [-2, 2]; 0 is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// Subtracted from a logit when the token occurs in the output, in [-2, 2]; 0 is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// Seed of the request's RNG; `None` lets the caller pick one (reported back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Token id -> bias added to its logit, clamped to [-100, 100]; -100 bans the token.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub logit_bias: BTreeMap<u32, f32>,
}

/// Validated sampling settings: every default filled in, every range checked.
///
/// Built only by [`SamplingParams::resolve`], so a [`crate::sampler::Sampler`] never sees
/// an out-of-range value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedSampling {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    repetition_penalty: f32,
    frequency_penalty: f32,
    presence_penalty: f32,
    seed: Option<u64>,
    logit_bias: BTreeMap<u32, f32>,
    vocab_size: usize,
}

impl SamplingParams {
    /// Greedy decoding: temperature 0, everything else left to the defaults.
    pub fn greedy() -> Self {
        Self {
            temperature: Some(0.0),
            ..Self::default()
        }
    }

    /// Fills unset values from `defaults` (the model's `generation_config.json`: temperature,
    /// top_p, top_k, repetition_penalty; `do_sample: false` makes the default temperature 0),
    /// then from the OpenAI defaults (temperature 1, top_p 1, top_k 0, min_p 0, penalties
    /// off), and validates every value; errors name the parameter and its allowed range.
    /// `vocab_size` bounds the `logit_bias` token ids.
    pub fn resolve(&self, defaults: &GenerationConfig, vocab_size: usize) -> Result<ResolvedSampling> {
        let model_temperature = match defaults.do_sample {
            Some(false) => Some(0.0),
            _ => defaults.temperature,
        };
        let temperature = pick(self.temperature, model_temperature, 1.0);
        let top_p = pick(self.top_p, defaults.top_p, 1.0);
        let top_k = pick(self.top_k, defaults.top_k, 0);
        let repetition = pick(self.repetition_penalty, defaults.repetition_penalty, 1.0);
        let min_p = pick(self.min_p, None, 0.0);
        let frequency = pick(self.frequency_penalty, None, 0.0);
        let presence = pick(self.presence_penalty, None, 0.0);

        check(
            "temperature",
            temperature,
            |t| t.is_finite() && t >= 0.0,
            "must be a finite number >= 0",
        )?;
        check("top_p", top_p, |p| p > 0.0 && p <= 1.0, "must be in (0, 1]")?;
        check("top_k", top_k, |k| k >= 0, "must be >= 0 (0 disables it)")?;
        check("min_p", min_p, |p| (0.0..=1.0).contains(&p), "must be in [0, 1]")?;
        check(
            "repetition_penalty",
            repetition,
            |r| r.is_finite() && r > 0.0,
            "must be a finite number > 0",
        )?;
        let in_range = |v: f32| (-2.0..=2.0).contains(&v);
        check("frequency_penalty", frequency, in_range, "must be in [-2, 2]")?;
        check("presence_penalty", presence, in_range, "must be in [-2, 2]")?;

        Ok(ResolvedSampling {
            temperature: temperature.value,
            top_p: top_p.value,
            top_k: usize::try_from(top_k.value).unwrap_or(usize::MAX),
            min_p: min_p.value,
            repetition_penalty: repetition.value,
            frequency_penalty: frequency.value,
            presence_penalty: presence.value,
            seed: self.seed,
            logit_bias: resolve_logit_bias(&self.logit_bias, vocab_size)?,
            vocab_size,
        })
    }
}

/// A parameter value and whether it came from the model's `generation_config.json`.
#[derive(Clone, Copy)]
struct Picked<T> {
    value: T,
    from_model: bool,
}

/// Explicit value, else the model's default, else the OpenAI default.
fn pick<T: Copy>(explicit: Option<T>, model: Option<T>, fallback: T) -> Picked<T> {
    match (explicit, model) {
        (Some(value), _) => Picked {
            value,
            from_model: false,
        },
        (None, Some(value)) => Picked {
            value,
            from_model: true,
        },
        (None, None) => Picked {
            value: fallback,
            from_model: false,
        },
    }
}

fn check<T: Copy + std::fmt::Display>(
    name: &'static str,
    picked: Picked<T>,
    ok: impl Fn(T) -> bool,
    range: &str,
) -> Result<()> {
    if ok(picked.value) {
        return Ok(());
    }
    let origin = if picked.from_model {
        " (default from generation_config.json)"
    } else {
        ""
    };
    Err(Error::InvalidParameter {
        name,
        reason: format!("{}{origin} {range}", picked.value),
    })
}

/// Checks ids and values, clamps biases to [-100, 100], and refuses to ban every token.
fn resolve_logit_bias(bias: &BTreeMap<u32, f32>, vocab_size: usize) -> Result<BTreeMap<u32, f32>> {
    let err = |reason: String| Error::InvalidParameter {
        name: "logit_bias",
        reason,
    };
    if vocab_size == 0 {
        return Err(Error::InvalidParameter {
            name: "logits",
            reason: "the vocabulary must not be empty".into(),
        });
    }
    let mut out = BTreeMap::new();
    for (&id, &b) in bias {
        if id as usize >= vocab_size {
            return Err(err(format!("token id {id} must be < the vocabulary size {vocab_size}")));
        }
        if !b.is_finite() {
            return Err(err(format!("bias {b} of token {id} must be a finite number")));
        }
        out.insert(id, b.clamp(-LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT));
    }
    let banned = out.values().filter(|&&b| b <= -LOGIT_BIAS_LIMIT).count();
    if banned == vocab_size {
        return Err(err(format!(
            "bans all {vocab_size} tokens; at least one must stay allowed"
        )));
    }
    Ok(out)
}

impl ResolvedSampling {
    /// Temperature (0 = greedy).
    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    /// Nucleus mass (1 = off).
    pub fn top_p(&self) -> f32 {
        self.top_p
    }

    /// Top-k (0 = off; may exceed the vocabulary, which is the same as off).
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// Min-p (0 = off).
    pub fn min_p(&self) -> f32 {
        self.min_p
    }

    /// Repetition penalty (1 = off).
    pub fn repetition_penalty(&self) -> f32 {
        self.repetition_penalty
    }

    /// Frequency penalty (0 = off).
    pub fn frequency_penalty(&self) -> f32 {
        self.frequency_penalty
    }

    /// Presence penalty (0 = off).
    pub fn presence_penalty(&self) -> f32 {
        self.presence_penalty
    }

    /// The request's seed, if it gave one.
    pub fn seed(&self) -> Option<u64> {
        self.seed
    }

    /// Token id -> bias, clamped to [-100, 100]; -100 bans the token.
    pub fn logit_bias(&self) -> &BTreeMap<u32, f32> {
        &self.logit_bias
    }

    /// The vocabulary size the settings were checked against (the length of a logits row).
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// True when tokens are chosen by argmax (temperature 0).
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }
}
