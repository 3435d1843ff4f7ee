//! Perplexity over a text, computed the way llama.cpp's `llama-perplexity`
//! does so that the two numbers can be compared: the text is tokenised once
//! and cut into chunks of `ctx` tokens; each chunk runs from an empty cache,
//! and only the second half of each chunk is scored (every scored token has
//! at least `ctx/2` tokens of context). Perplexity is exp of the mean
//! negative log-likelihood over all scored tokens.
//!
//! [`Scoring::Prompt`] runs each chunk as one prompt (prompt processing:
//! GEMMs), as llama.cpp does; [`Scoring::Decode`] feeds it one token at a
//! time through the decode path generation uses (GEMVs, the KV cache), which
//! is where quantised weights meet int8 activations (docs/quantised.md).

use crate::engine::{Engine, EngineError};

/// The running result after each chunk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PerplexityProgress {
    pub chunk: usize,
    pub chunks: usize,
    /// Perplexity over the chunks so far.
    pub perplexity: f64,
    pub scored_tokens: usize,
}

/// How each chunk is run through the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scoring {
    /// The whole chunk as one prompt (what llama-perplexity does; fast).
    #[default]
    Prompt,
    /// One token per step, as generation runs (slower; measures the decode
    /// kernels' accuracy).
    Decode,
}

/// Negative log-likelihood of `next` under `logits`, in f64.
pub fn nll(logits: &[f32], next: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    (sum.ln() + max) - logits[next as usize] as f64
}

/// Perplexity of `tokens` in chunks of `ctx` (at most `max_chunks` of them);
/// `bos`, when the model wants one, replaces each chunk's first token (as
/// llama.cpp does). Calls `progress` after every chunk.
pub fn perplexity(
    engine: &mut Engine,
    tokens: &[u32],
    ctx: usize,
    bos: Option<u32>,
    max_chunks: Option<usize>,
    scoring: Scoring,
    progress: &mut dyn FnMut(PerplexityProgress),
) -> Result<PerplexityProgress, EngineError> {
    let ctx = ctx.max(2);
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    let vocab = engine.config().vocab_size;
    let first = ctx / 2;
    let (mut total, mut count) = (0.0f64, 0usize);
    let mut last = PerplexityProgress { chunk: 0, chunks, perplexity: f64::NAN, scored_tokens: 0 };
    for c in 0..chunks {
        let mut chunk = tokens[c * ctx..(c + 1) * ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        engine.reset();
        match scoring {
            Scoring::Prompt => {
                let logits = engine.forward(&chunk, true)?;
                for i in first..ctx - 1 {
                    total += nll(&logits[i * vocab..(i + 1) * vocab], chunk[i + 1]);
                    count += 1;
                }
            }
            Scoring::Decode => {
                for i in 0..ctx - 1 {
                    let logits = engine.forward(&chunk[i..i + 1], false)?;
                    if i >= first {
                        total += nll(&logits, chunk[i + 1]);
                        count += 1;
                    }
                }
            }
        }
        last = PerplexityProgress {
            chunk: c + 1,
            chunks,
            perplexity: (total / count as f64).exp(),
            scored_tokens: count,
        };
        progress(last);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_the_negative_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        for (i, v) in [1.0f64, 2.0, 3.0].iter().enumerate() {
            assert!((nll(&logits, i as u32) - (z.ln() - v)).abs() < 1e-12);
        }
    }
}
