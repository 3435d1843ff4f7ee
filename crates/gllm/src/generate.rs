//! Text generation: a prompt through prefill, then one token at a time
//! until a stop token or the token budget, with timings.

use crate::engine::{Engine, EngineError};
use crate::sampling::Sampler;
use std::time::{Duration, Instant};

/// Timings of one generation.
#[derive(Debug, Clone, Copy, Default)]
pub struct GenerationStats {
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub generated_tokens: usize,
    /// Time of the decode steps (the first generated token comes from the
    /// prompt's logits, so this covers `generated_tokens - 1` steps).
    pub decode_time: Duration,
    pub decode_steps: usize,
}

impl GenerationStats {
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt_tokens as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn decode_tokens_per_second(&self) -> f64 {
        self.decode_steps as f64 / self.decode_time.as_secs_f64().max(1e-9)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token (end of turn / end of text) was produced; it is not
    /// passed to `on_token`.
    StopToken(u32),
    /// `max_tokens` tokens were produced.
    Length,
    /// The KV cache is full.
    ContextFull,
    /// `on_token` asked to stop.
    Caller,
}

/// Runs `prompt` (after what the engine already holds) and then generates up
/// to `max_tokens`, calling `on_token` with each; `on_token` returns false
/// to stop. Every returned token but the last is in the engine's KV cache
/// afterwards (the last was sampled, not yet run); a stop token is neither
/// returned nor run.
pub fn generate(
    engine: &mut Engine,
    prompt: &[u32],
    max_tokens: usize,
    sampler: &mut Sampler,
    is_stop: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, StopReason, GenerationStats), EngineError> {
    let t0 = Instant::now();
    let logits = engine.forward(prompt, false)?;
    let prompt_time = t0.elapsed();
    let (out, reason, mut stats) = generate_from(engine, logits, max_tokens, sampler, is_stop, on_token)?;
    stats.prompt_tokens = prompt.len();
    stats.prompt_time = prompt_time;
    Ok((out, reason, stats))
}

/// [`generate`] after the prompt has run: `logits` are its last position's.
pub fn generate_from(
    engine: &mut Engine,
    mut logits: Vec<f32>,
    max_tokens: usize,
    sampler: &mut Sampler,
    is_stop: &dyn Fn(u32) -> bool,
    on_token: &mut dyn FnMut(u32) -> bool,
) -> Result<(Vec<u32>, StopReason, GenerationStats), EngineError> {
    let mut stats = GenerationStats::default();
    let mut out = Vec::new();
    if max_tokens == 0 {
        return Ok((out, StopReason::Length, stats));
    }
    let t1 = Instant::now();
    let reason = loop {
        let tok = sampler.sample(&logits);
        if is_stop(tok) {
            break StopReason::StopToken(tok);
        }
        out.push(tok);
        stats.generated_tokens += 1;
        if !on_token(tok) {
            break StopReason::Caller;
        }
        if out.len() >= max_tokens {
            break StopReason::Length;
        }
        if engine.position() >= engine.max_context() {
            break StopReason::ContextFull;
        }
        logits = engine.forward(&[tok], false)?;
        stats.decode_steps += 1;
    };
    stats.decode_time = t1.elapsed();
    Ok((out, reason, stats))
}
