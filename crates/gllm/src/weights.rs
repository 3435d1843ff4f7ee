//! A model's weights in the layouts the layer graphs declare, by canonical
//! name, whatever file they came from.
//!
//! Canonical names follow GGUF's: `token_embd.weight` `[vocab, hidden]`,
//! `blk.{l}.attn_q.weight` … in `[in, out]` layout (so a projection is
//! `x · W`), `output_norm.weight`, `output.weight` `[hidden, vocab]`. The
//! loaders (GGUF, safetensors) convert into this; the engine only reads it.

use crate::config::LlamaConfig;
use crate::layer_graph::layer_weight_shapes;
use gllm_kernels::codegen::layer::WeightData;
use gllm_kernels::quant::{QuantFormat, QuantMatrix};
use std::collections::HashMap;
use std::sync::Arc;
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

/// A weight kept in its stored block format: `rows` rows of `cols`
/// elements as the file stores them — for a projection, one row per output
/// feature (the transpose of the graphs' `[in, out]`); for the embedding,
/// one row per token. The bytes are shared when a tied head reuses them.
#[derive(Debug, Clone)]
pub struct QuantTensor {
    pub format: QuantFormat,
    pub rows: usize,
    pub cols: usize,
    pub bytes: Arc<Vec<u8>>,
    /// The graphs declare the transpose (`[cols, rows]`): true for
    /// projections and the LM head, false for the embedding.
    pub transposed: bool,
}

impl QuantTensor {
    /// A checked view for the kernels.
    pub fn matrix(&self) -> QuantMatrix<'_> {
        QuantMatrix::new(self.format, self.rows, self.cols, &self.bytes)
            .expect("checked when the tensor was made")
    }

    /// Dequantised, in the graphs' layout.
    pub fn to_f32(&self) -> Vec<f32> {
        let out = self.matrix().dequantize();
        if self.transposed {
            transpose(&out, self.rows, self.cols)
        } else {
            out
        }
    }
}

/// One weight: f32 in the graphs' layout, or quantised as stored.
#[derive(Debug, Clone)]
pub enum Tensor {
    F32(Vec<f32>),
    Quant(QuantTensor),
}

impl Tensor {
    fn len(&self) -> usize {
        match self {
            Tensor::F32(v) => v.len(),
            Tensor::Quant(q) => q.rows * q.cols,
        }
    }
}

/// Weights by canonical name (see the module docs).
#[derive(Debug, Default, Clone)]
pub struct ModelWeights {
    tensors: HashMap<String, Tensor>,
}

impl ModelWeights {
    pub fn new() -> ModelWeights {
        ModelWeights::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, data: Vec<f32>) {
        self.tensors.insert(name.into(), Tensor::F32(data));
    }

    /// Adds a weight kept quantised (see [`QuantTensor`] for its layout).
    pub fn insert_quant(&mut self, name: impl Into<String>, q: QuantTensor) {
        self.tensors.insert(name.into(), Tensor::Quant(q));
    }

    /// An f32 weight (`None` if missing or kept quantised).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        match self.tensors.get(name)? {
            Tensor::F32(v) => Some(v),
            Tensor::Quant(_) => None,
        }
    }

    pub fn tensor(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name)
    }

    /// A weight as the compiler takes it, f32 or quantised.
    pub fn data(&self, name: &str) -> Option<WeightData<'_>> {
        Some(match self.tensors.get(name)? {
            Tensor::F32(v) => WeightData::F32(v),
            Tensor::Quant(q) => WeightData::Quant(q.matrix()),
        })
    }

    /// Layer `layer`'s weight `name` (`attn_q.weight`, …), f32 only.
    pub fn layer(&self, layer: usize, name: &str) -> Option<&[f32]> {
        self.get(&format!("blk.{layer}.{name}"))
    }

    /// Layer `layer`'s weight `name`, f32 or quantised.
    pub fn layer_data(&self, layer: usize, name: &str) -> Option<WeightData<'_>> {
        self.data(&format!("blk.{layer}.{name}"))
    }

    /// Every weight as f32 in the graphs' layout (for the scalar reference
    /// path, which reads f32 only).
    pub fn to_f32(&self) -> ModelWeights {
        let tensors = self
            .tensors
            .iter()
            .map(|(name, t)| {
                let t = match t {
                    Tensor::F32(v) => Tensor::F32(v.clone()),
                    Tensor::Quant(q) => Tensor::F32(q.to_f32()),
                };
                (name.clone(), t)
            })
            .collect();
        ModelWeights { tensors }
    }

    /// Whether any weight is kept quantised.
    pub fn is_quantised(&self) -> bool {
        self.tensors.values().any(|t| matches!(t, Tensor::Quant(_)))
    }

    /// The formats of the weights kept quantised, sorted.
    pub fn quant_formats(&self) -> Vec<QuantFormat> {
        let mut v: Vec<QuantFormat> = self
            .tensors
            .values()
            .filter_map(|t| match t {
                Tensor::Quant(q) => Some(q.format),
                Tensor::F32(_) => None,
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Row `token` of `token_embd.weight` (`hidden` values) appended to
    /// `out`, dequantised if the embedding is kept quantised.
    pub fn push_embedding(&self, token: usize, hidden: usize, out: &mut Vec<f32>) {
        match self.tensors.get("token_embd.weight") {
            Some(Tensor::F32(e)) => out.extend_from_slice(&e[token * hidden..(token + 1) * hidden]),
            Some(Tensor::Quant(q)) => {
                let start = out.len();
                out.resize(start + hidden, 0.0);
                q.matrix().dequantize_row(token, &mut out[start..]);
            }
            None => panic!("token_embd.weight is checked at construction"),
        }
    }

    /// Bytes the weights occupy as held.
    pub fn size_bytes(&self) -> usize {
        // A tied head shares its embedding's bytes: count them once.
        let mut shared: Vec<*const Vec<u8>> = Vec::new();
        self.tensors
            .values()
            .map(|t| match t {
                Tensor::F32(v) => v.len() * 4,
                Tensor::Quant(q) if shared.contains(&Arc::as_ptr(&q.bytes)) => 0,
                Tensor::Quant(q) => {
                    shared.push(Arc::as_ptr(&q.bytes));
                    q.bytes.len()
                }
            })
            .sum()
    }

    /// Bytes a decode step reads: every weight as held, except that only
    /// one row of the token embedding is read — unless the LM head is tied
    /// to it, when all of it is read as the head. What bounds decode speed
    /// (`gllm bench` divides it by the time per token).
    pub fn bytes_read_per_token(&self) -> usize {
        let embd = self.tensors.get("token_embd.weight");
        let head = self.tensors.get("output.weight");
        let tied = match (embd, head) {
            (Some(Tensor::Quant(e)), Some(Tensor::Quant(h))) => Arc::ptr_eq(&e.bytes, &h.bytes),
            _ => false,
        };
        let embd_bytes = match embd {
            _ if tied => 0,
            Some(Tensor::F32(v)) => v.len() * 4,
            Some(Tensor::Quant(q)) => q.bytes.len(),
            None => 0,
        };
        self.size_bytes() - embd_bytes
    }

    /// Number of parameters (the tied LM head counted once).
    pub fn num_params(&self, cfg: &LlamaConfig) -> usize {
        let all: usize = self.tensors.values().map(Tensor::len).sum();
        if cfg.tie_word_embeddings {
            all - self.tensors.get("output.weight").map_or(0, Tensor::len)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn q8(rows: usize, cols: usize, bytes: Arc<Vec<u8>>, transposed: bool) -> QuantTensor {
        QuantTensor { format: QuantFormat::Q8_0, rows, cols, bytes, transposed }
    }

    #[test]
    fn a_decode_step_reads_every_weight_but_the_untied_embedding() {
        // 64 tokens × 32 hidden in Q8_0: 64 blocks of 34 bytes.
        let embd = Arc::new(vec![0u8; 64 * 34]);
        let mut w = ModelWeights::new();
        w.insert("norm", vec![1.0; 32]);
        w.insert_quant("token_embd.weight", q8(64, 32, embd.clone(), false));
        // Tied: the head is the embedding's bytes, read whole as the head.
        w.insert_quant("output.weight", q8(64, 32, embd, true));
        assert_eq!(w.size_bytes(), 64 * 34 + 32 * 4);
        assert_eq!(w.bytes_read_per_token(), 64 * 34 + 32 * 4);
        // Untied: the head's own bytes; of the embedding one row is read.
        w.insert_quant("output.weight", q8(64, 32, Arc::new(vec![0u8; 64 * 34]), true));
        assert_eq!(w.size_bytes(), 2 * 64 * 34 + 32 * 4);
        assert_eq!(w.bytes_read_per_token(), 64 * 34 + 32 * 4);
        // f32 weights: the embedding is a separate f32 table.
        let f = w.to_f32();
        assert_eq!(f.bytes_read_per_token(), f.size_bytes() - 64 * 32 * 4);
    }
}
