//! Perplexity of a text, in the spirit of llama.cpp's `llama-perplexity`: the tokens are cut
//! into windows of `ctx` (each starting with BOS), and the second half of each window is
//! scored (every scored token sees at least `ctx / 2` tokens of context). With a base model
//! (the same checkpoint in another format, usually f32), also the mean KL divergence of
//! this model's next-token distribution from the base's and how often their top tokens
//! agree: how faithful a quantized format is.
//!
//! Every window runs through an [`Engine::session`]: the forward pass and KV format that
//! requests use (the CPU backend's paged pool, f16 keys and values unless the engine was
//! loaded with another `kv_dtype`), so the figures are those of what is served.

use serde::Serialize;

use crate::backend::Session;
use crate::engine::Engine;
use crate::error::{Error, Result};

/// What [`perplexity`] measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// How keys and values were stored (`f16`, `f32`).
    pub kv_dtype: String,
    /// Tokens scored.
    pub tokens: usize,
    /// Windows run.
    pub windows: usize,
    /// exp(mean negative log-likelihood).
    pub perplexity: f64,
    /// Standard error of the perplexity (from the NLL's standard error).
    pub perplexity_stderr: f64,
    /// With a base model: its perplexity on the same tokens.
    pub base_perplexity: Option<f64>,
    /// With a base model: mean KL(base || this) in nats per token.
    pub mean_kl: Option<f64>,
    /// With a base model: share of scored positions where both put the same token first.
    pub top1_agreement: Option<f64>,
}

/// log-softmax of one row, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f64]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f64::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

/// Sums over the scored positions.
#[derive(Default)]
struct Sums {
    n: usize,
    nll: f64,
    nll_sq: f64,
    base_nll: f64,
    kl: f64,
    agree: usize,
}

impl Sums {
    /// Runs one window `ids` in `session` (and `base`'s), emptied first, and adds the
    /// positions from `first` on (each scored by the token after it).
    fn window(&mut self, session: &mut Session, base: Option<&mut Session>, ids: &[u32], first: usize) -> Result<()> {
        let ctx = ids.len();
        session.truncate(0);
        let logits = session.run(ids, ctx)?;
        let base_logits = match base {
            Some(b) => {
                b.truncate(0);
                Some(b.run(ids, ctx)?)
            }
            None => None,
        };
        for i in first..ctx - 1 {
            let next = ids[i + 1] as usize;
            let lp = log_softmax(&logits[i]);
            let nll = -lp[next];
            self.n += 1;
            self.nll += nll;
            self.nll_sq += nll * nll;
            if let Some(bl) = &base_logits {
                let bp = log_softmax(&bl[i]);
                self.base_nll -= bp[next];
                self.kl += bp.iter().zip(&lp).map(|(&b, &q)| b.exp() * (b - q)).sum::<f64>();
                self.agree += usize::from(argmax(&bp) == argmax(&lp));
            }
        }
        Ok(())
    }
}

/// The perplexity of `engine`'s model on `tokens` (BOS not included) in windows of `ctx` tokens, at
/// most `max_windows`, each starting with `bos` when the model's tokenizer adds one (as
/// llama-perplexity does); `base` adds KL divergence and top-1 agreement.
pub fn perplexity(
    engine: &Engine,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_windows: usize,
    base: Option<&Engine>,
) -> Result<Report> {
    perplexity_reporting(engine, (tokens, bos), (ctx, max_windows), base, |_, _| {})
}

/// [`perplexity`], calling `progress(done, windows)` after each window.
pub fn perplexity_reporting(
    engine: &Engine,
    (tokens, bos): (&[u32], Option<u32>),
    (ctx, max_windows): (usize, usize),
    base: Option<&Engine>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Report> {
    if ctx < 4 {
        return Err(Error::InvalidParameter {
            name: "ctx",
            reason: "must be at least 4".into(),
        });
    }
    let vocab = engine.config().vocab_size;
    if base.is_some_and(|b| b.config().vocab_size != vocab) {
        return Err(Error::InvalidParameter {
            name: "kl-base",
            reason: "the base model has another vocabulary".into(),
        });
    }
    let per_window = ctx - usize::from(bos.is_some());
    let windows = (tokens.len() / per_window).min(max_windows);
    if windows == 0 {
        return Err(Error::InvalidParameter {
            name: "file",
            reason: format!("the text has {} tokens; one window needs {per_window}", tokens.len()),
        });
    }
    let first = ctx / 2;
    let mut s = Sums::default();
    // One session each, emptied per window (one KV pool, not one per window).
    let mut session = engine.session(ctx, None)?;
    let mut base_session = base.map(|b| b.session(ctx, None)).transpose()?;
    for w in 0..windows {
        let mut ids: Vec<u32> = bos.into_iter().collect();
        ids.extend_from_slice(&tokens[w * per_window..(w + 1) * per_window]);
        s.window(&mut session, base_session.as_mut(), &ids, first)?;
        progress(w + 1, windows);
    }
    let n = s.n as f64;
    let mean = s.nll / n;
    let var = (s.nll_sq / n - mean * mean).max(0.0);
    let stderr = (var / (n - 1.0).max(1.0)).sqrt();
    let ppl = mean.exp();
    Ok(Report {
        kv_dtype: engine.kv_dtype().to_string(),
        tokens: s.n,
        windows,
        perplexity: ppl,
        perplexity_stderr: ppl * stderr,
        base_perplexity: base.map(|_| (s.base_nll / n).exp()),
        mean_kl: base.map(|_| s.kl / n),
        top1_agreement: base.map(|_| s.agree as f64 / n),
    })
}
