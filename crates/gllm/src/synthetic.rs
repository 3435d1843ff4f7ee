//! Deterministic stand-in data for a decoder graph: random weights and
//! activations with a correct causal mask, for smoke runs and tests before
//! real weights are loaded.
//!
//! Norm weights are near 1 and the other weights small, so activations stay
//! of order 1 through a layer and differences between implementations show up
//! as numbers, not as overflow.

use crate::config::LlamaConfig;
use crate::layer_graph::layer_weight_shapes;
use crate::weights::ModelWeights;
use gllm_kernels::graph::CompilerGraph;
use std::collections::HashMap;

/// Uniform values in [-1, 1) from a xorshift generator (never seeded with 0):
/// deterministic stand-in data for tests and the built-in model.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed | 1;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A whole model's weights for `cfg` (canonical names and layouts), the
/// same for the same `seed`: norm weights near 1, projections scaled by
/// 1/√fan-in so activations stay of order 1 through every layer, embeddings
/// of order 1 (the LM head is the tied embedding when `cfg` says so).
pub fn model_weights(cfg: &LlamaConfig, seed: u64) -> ModelWeights {
    let mut next = uniform(seed);
    let mut w = ModelWeights::new();
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    let embd: Vec<f32> = (0..v * h).map(|_| next()).collect();
    let head: Vec<f32> = if cfg.tie_word_embeddings {
        crate::weights::transpose(&embd, v, h)
    } else {
        (0..h * v).map(|_| next() / (h as f32).sqrt()).collect()
    };
    w.insert("token_embd.weight", embd);
    w.insert("output.weight", head);
    w.insert("output_norm.weight", (0..h).map(|_| 1.0 + 0.1 * next()).collect());
    for l in 0..cfg.num_layers {
        for (name, shape) in layer_weight_shapes(cfg) {
            let n: usize = shape.iter().product();
            let data = if shape.len() == 1 {
                (0..n).map(|_| 1.0 + 0.1 * next()).collect()
            } else {
                let scale = 1.5 / (shape[0] as f32).sqrt();
                (0..n).map(|_| scale * next()).collect()
            };
            w.insert(format!("blk.{l}.{name}"), data);
        }
    }
    w
}

/// Values for every input and weight of one graph.
#[derive(Debug, Clone)]
pub struct SyntheticData {
    /// One vector per graph input, in the graph's input order.
    pub inputs: Vec<Vec<f32>>,
    /// Weights by name.
    pub weights: HashMap<String, Vec<f32>>,
}

impl SyntheticData {
    /// Data for `graph` (built for `seq` tokens by [`crate::layer_graph`]),
    /// the same for the same `seed`. The input named `causal_mask` gets the
    /// mask (0 on and below the diagonal, -1e9 above); other inputs are
    /// uniform in [-1, 1).
    pub fn for_graph(graph: &CompilerGraph, seq: usize, seed: u64) -> SyntheticData {
        let mut next = uniform(seed);
        let weights = graph
            .weights
            .iter()
            .map(|(name, d)| {
                let v = if name.contains("norm") {
                    (0..d.numel()).map(|_| 1.0 + 0.1 * next()).collect()
                } else {
                    (0..d.numel()).map(|_| 0.05 * next()).collect()
                };
                (name.clone(), v)
            })
            .collect();
        let inputs = graph
            .inputs
            .iter()
            .map(|(name, d)| match name.as_str() {
                "causal_mask" => (0..d.numel()).map(|x| if x % seq > x / seq { -1e9 } else { 0.0 }).collect(),
                _ => (0..d.numel()).map(|_| next()).collect(),
            })
            .collect();
        SyntheticData { inputs, weights }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_graph::decoder_layer;
    use crate::LlamaConfig;

    #[test]
    fn data_is_deterministic_and_the_mask_is_causal() {
        let seq = 4;
        let g = decoder_layer(&LlamaConfig::smollm2_135m(), seq);
        let a = SyntheticData::for_graph(&g, seq, 7);
        let b = SyntheticData::for_graph(&g, seq, 7);
        assert_eq!(a.inputs, b.inputs);
        assert_eq!(a.weights, b.weights);
        assert_ne!(a.inputs, SyntheticData::for_graph(&g, seq, 8).inputs);
        assert_eq!(a.weights.len(), g.weights.len());
        for ((name, d), v) in g.inputs.iter().zip(&a.inputs) {
            assert_eq!(v.len(), d.numel(), "{name}");
        }
        let mask_at = g.inputs.iter().position(|(n, _)| n == "causal_mask").expect("the layer has a mask");
        let mask = &a.inputs[mask_at];
        for row in 0..seq {
            for col in 0..seq {
                let want = if col > row { -1e9 } else { 0.0 };
                assert_eq!(mask[row * seq + col], want, "mask[{row}][{col}]");
            }
        }
        for (name, w) in &a.weights {
            let (lo, hi) = if name.contains("norm") { (0.9, 1.1) } else { (-0.05, 0.05) };
            assert!(w.iter().all(|&x| (lo..hi).contains(&x)), "{name} outside [{lo}, {hi})");
        }
    }
}
