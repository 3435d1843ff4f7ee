//! A model's weights in the layouts the layer graphs declare, by canonical
//! name, whatever file they came from.
//!
//! Canonical names follow GGUF's: `token_embd.weight` `[vocab, hidden]`,
//! `blk.{l}.attn_q.weight` … in `[in, out]` layout (so a projection is
//! `x · W`), `output_norm.weight`, `output.weight` `[hidden, vocab]`. The
//! loaders (GGUF, safetensors) convert into this; the engine only reads it.

use crate::config::LlamaConfig;
use crate::layer_graph::layer_weight_shapes;
use std::collections::HashMap;
use thiserror::Error;

/// `[rows, cols]` row-major → `[cols, rows]` row-major: a file's `[out, in]`
/// projection rows into the graphs' `[in, out]`, and back.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).enumerate().take(rows) {
        for (c, &x) in row.iter().enumerate() {
            out[c * rows + r] = x;
        }
    }
    out
}

/// A weight is missing or has the wrong size for the configuration.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WeightsError {
    #[error("the model has no tensor `{0}`")]
    Missing(String),
    #[error("tensor `{name}` has {got} elements; the configuration needs {want} ({shape:?})")]
    Size { name: String, got: usize, want: usize, shape: Vec<usize> },
}

/// Weights by canonical name (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct ModelWeights {
    tensors: HashMap<String, Vec<f32>>,
}

impl ModelWeights {
    pub fn new() -> ModelWeights {
        ModelWeights::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, data: Vec<f32>) {
        self.tensors.insert(name.into(), data);
    }

    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(Vec::as_slice)
    }

    /// Layer `layer`'s weight `name` (`attn_q.weight`, …).
    pub fn layer(&self, layer: usize, name: &str) -> Option<&[f32]> {
        self.get(&format!("blk.{layer}.{name}"))
    }

    /// Number of parameters (the tied LM head counted once).
    pub fn num_params(&self, cfg: &LlamaConfig) -> usize {
        let all: usize = self.tensors.values().map(Vec::len).sum();
        if cfg.tie_word_embeddings {
            all - self.tensors.get("output.weight").map_or(0, Vec::len)
        } else {
            all
        }
    }

    /// Checks every tensor the graphs read is present with the right size.
    pub fn check(&self, cfg: &LlamaConfig) -> Result<(), WeightsError> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let mut want: Vec<(String, Vec<usize>)> = vec![
            ("token_embd.weight".into(), vec![v, h]),
            ("output_norm.weight".into(), vec![h]),
            ("output.weight".into(), vec![h, v]),
        ];
        for l in 0..cfg.num_layers {
            for (name, shape) in layer_weight_shapes(cfg) {
                want.push((format!("blk.{l}.{name}"), shape));
            }
        }
        for (name, shape) in want {
            let t = self.tensors.get(&name).ok_or_else(|| WeightsError::Missing(name.clone()))?;
            let n: usize = shape.iter().product();
            if t.len() != n {
                return Err(WeightsError::Size { name, got: t.len(), want: n, shape });
            }
        }
        Ok(())
    }
}
