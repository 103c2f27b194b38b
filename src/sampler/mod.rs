//! Logits -> next token. The sampler never touches the model; it sees one f32 logits row
//! and the token history, and owns its seeded RNG.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Sampling parameters, named as in OpenAI-compatible APIs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 means greedy (argmax, ties to the lowest id).
    pub temperature: f32,
    /// Seed of the request's RNG; `None` draws a fresh one.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }

    /// Checks every parameter's range, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(Error::InvalidParameter {
                name: "temperature",
                reason: format!("{} is not a finite number >= 0", self.temperature),
            });
        }
        Ok(())
    }
}

/// Picks tokens from logits rows according to [`SamplingParams`].
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    seed: u64,
}

impl Sampler {
    /// Validates `params` and seeds the RNG (from `params.seed`, else `fallback_seed`).
    pub fn new(params: SamplingParams, fallback_seed: u64) -> Result<Self> {
        params.validate()?;
        let seed = params.seed.unwrap_or(fallback_seed);
        Ok(Self {
            params,
            rng: StdRng::seed_from_u64(seed),
            seed,
        })
    }

    /// The seed in use (report it so a run can be replayed).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Chooses the next token from `logits`; `step` names the generation step in errors.
    pub fn sample(&mut self, logits: &[f32], step: usize) -> Result<u32> {
        if logits.iter().any(|l| !l.is_finite()) {
            return Err(Error::NonFiniteLogits { step });
        }
        if self.params.temperature == 0.0 {
            return Ok(argmax(logits));
        }
        let t = self.params.temperature;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| (((l - max) / t) as f64).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut r = self.rng.random::<f64>() * total;
        for (i, w) in weights.iter().enumerate() {
            if r < *w {
                return Ok(i as u32);
            }
            r -= w;
        }
        Ok(argmax(logits))
    }
}

/// Index of the largest value; ties go to the lowest index.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_lowest_max() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0).unwrap();
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 3.0], 0).unwrap(), 1);
    }

    #[test]
    fn nan_logits_are_an_error_not_token_zero() {
        let mut s = Sampler::new(SamplingParams::greedy(), 0).unwrap();
        assert!(matches!(
            s.sample(&[f32::NAN, 1.0], 3),
            Err(Error::NonFiniteLogits { step: 3 })
        ));
    }

    #[test]
    fn rejects_bad_temperature() {
        for t in [f32::NAN, -0.5, f32::INFINITY] {
            let p = SamplingParams {
                temperature: t,
                ..Default::default()
            };
            assert!(matches!(
                Sampler::new(p, 0),
                Err(Error::InvalidParameter {
                    name: "temperature",
                    ..
                })
            ));
        }
    }
}
