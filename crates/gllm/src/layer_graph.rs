//! A LLaMA decoder layer as a [`FusedGraph`], expanded into the compiler's
//! atomic-op graph.
//!
//! Inference runs a layer in three parts, because attention's shape changes
//! with every token while the rest depends only on how many tokens are
//! processed at once:
//!
//! ```text
//!   x ──[pre_attention: FusedQkvRope]──> q, k, v ──> KV cache
//!   q, K/V cache ──[attention: Gqa, run-time context length]──> attn
//!   attn, x ──[post_attention: attn_output + residual, ffn_norm, SwiGlu + residual]──> x'
//!   x_last ──[lm_head: FusedRmsLinear]──> logits
//! ```
//!
//! Weight names inside a part carry no layer prefix (`attn_q.weight`), so one
//! compiled part serves every layer with that layer's weights.
//! [`decoder_layer`] / [`decoder_stack`] build whole layers (context = the
//! prompt itself, with a causal mask input) for planning and `explain`.

use crate::config::LlamaConfig;
use crate::fused::{FusedGraph, FusedOp, FusedValue};
use gllm_kernels::graph::{CompilerGraph, TensorDesc};
use gllm_kernels::scalar::ScalarOpRegistry;

/// Weight names of one layer's parts, without the layer prefix, with their
/// shapes (`[in, out]` for projections).
pub fn layer_weight_shapes(cfg: &LlamaConfig) -> Vec<(&'static str, Vec<usize>)> {
    let (h, q, kv, f) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    vec![
        ("attn_norm.weight", vec![h]),
        ("attn_q.weight", vec![h, q]),
        ("attn_k.weight", vec![h, kv]),
        ("attn_v.weight", vec![h, kv]),
        ("attn_output.weight", vec![q, h]),
        ("ffn_norm.weight", vec![h]),
        ("ffn_gate.weight", vec![h, f]),
        ("ffn_up.weight", vec![h, f]),
        ("ffn_down.weight", vec![f, h]),
    ]
}

fn weight(g: &mut FusedGraph, cfg: &LlamaConfig, prefix: &str, name: &str) -> FusedValue {
    let shape = layer_weight_shapes(cfg).into_iter().find(|(n, _)| *n == name).expect("a layer weight").1;
    g.weight(format!("{prefix}{name}"), TensorDesc::f32(shape))
}

/// Adds the attention prologue; returns (q, k, v).
fn add_pre_attention(
    g: &mut FusedGraph,
    cfg: &LlamaConfig,
    scope: &str,
    prefix: &str,
    x: FusedValue,
    cos: FusedValue,
    sin: FusedValue,
) -> (FusedValue, FusedValue, FusedValue) {
    let ins = vec![
        x,
        weight(g, cfg, prefix, "attn_norm.weight"),
        weight(g, cfg, prefix, "attn_q.weight"),
        weight(g, cfg, prefix, "attn_k.weight"),
        weight(g, cfg, prefix, "attn_v.weight"),
        cos,
        sin,
    ];
    let op = FusedOp::FusedQkvRope { eps: cfg.rms_norm_eps, head_dim: cfg.head_dim, theta: cfg.rope_theta };
    let mut outs = g.node(scope, op, ins);
    let v = outs.pop().expect("three outputs");
    let k = outs.pop().expect("three outputs");
    let q = outs.pop().expect("three outputs");
    (q, k, v)
}

fn add_attention(g: &mut FusedGraph, cfg: &LlamaConfig, scope: &str, ins: Vec<FusedValue>) -> FusedValue {
    let op = if cfg.num_kv_heads == cfg.num_heads {
        FusedOp::FlashAttention { heads: cfg.num_heads, head_dim: cfg.head_dim }
    } else {
        FusedOp::Gqa { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim }
    };
    g.node1(scope, op, ins)
}

/// Output projection + residual, then the feed-forward block + residual.
fn add_post_attention(
    g: &mut FusedGraph,
    cfg: &LlamaConfig,
    scope: &str,
    prefix: &str,
    attn: FusedValue,
    x: FusedValue,
) -> FusedValue {
    let atomic = |op: &str, params: Vec<f32>| FusedOp::AtomicOp { op_type: op.into(), params };
    let wo = weight(g, cfg, prefix, "attn_output.weight");
    let o = g.node1(format!("{scope}.attn_output"), atomic("matmul", vec![]), vec![attn, wo]);
    let resid = g.node1(format!("{scope}.attn_residual"), atomic("add", vec![]), vec![o, x]);
    let nw = weight(g, cfg, prefix, "ffn_norm.weight");
    let normed = g.node1(
        format!("{scope}.ffn_norm"),
        atomic("rms_norm", vec![cfg.rms_norm_eps]),
        vec![resid.clone(), nw],
    );
    let ffn_ins = vec![
        normed,
        weight(g, cfg, prefix, "ffn_gate.weight"),
        weight(g, cfg, prefix, "ffn_up.weight"),
        weight(g, cfg, prefix, "ffn_down.weight"),
    ];
    let down = g.node1(scope, FusedOp::SwiGlu, ffn_ins);
    g.node1(format!("{scope}.ffn_residual"), atomic("add", vec![]), vec![down, resid])
}

fn expand(g: &FusedGraph) -> CompilerGraph {
    g.expand(ScalarOpRegistry::global()).expect("the layer's fused ops are built-in")
}

/// Part 1 of a layer for `seq` tokens: inputs `x [seq, hidden]`, `rope_cos`,
/// `rope_sin` (`[seq, head_dim/2]`, the tokens' positions); outputs q, k, v
/// (q and k rotated).
pub fn pre_attention(cfg: &LlamaConfig, seq: usize) -> CompilerGraph {
    let mut g = FusedGraph::new();
    let half = cfg.head_dim / 2;
    let x = g.input("x", TensorDesc::f32([seq, cfg.hidden_size]));
    let cos = g.input("rope_cos", TensorDesc::f32([seq, half]));
    let sin = g.input("rope_sin", TensorDesc::f32([seq, half]));
    let (q, k, v) = add_pre_attention(&mut g, cfg, "layer", "", x, cos, sin);
    for t in [q, k, v] {
        g.output(t);
    }
    expand(&g)
}

/// Part 2 for `seq` new tokens over a context of `ctx` positions: inputs q
/// `[seq, q_dim]`, the cached k and v `[ctx, kv_dim]`, the mask `[seq, ctx]`.
/// (The JIT runs this part with `codegen::attention::CausalAttention`, which
/// takes `ctx` at run time; the scalar reference evaluates this graph.)
pub fn attention(cfg: &LlamaConfig, seq: usize, ctx: usize) -> CompilerGraph {
    let mut g = FusedGraph::new();
    let q = g.input("q", TensorDesc::f32([seq, cfg.q_dim()]));
    let k = g.input("k", TensorDesc::f32([ctx, cfg.kv_dim()]));
    let v = g.input("v", TensorDesc::f32([ctx, cfg.kv_dim()]));
    let mask = g.input("mask", TensorDesc::f32([seq, ctx]));
    let out = add_attention(&mut g, cfg, "layer", vec![q, k, v, mask]);
    g.output(out);
    expand(&g)
}

/// Part 3 for `seq` tokens: inputs attn `[seq, q_dim]` and the layer's input
/// x `[seq, hidden]`; output the layer's output `[seq, hidden]`.
pub fn post_attention(cfg: &LlamaConfig, seq: usize) -> CompilerGraph {
    let mut g = FusedGraph::new();
    let attn = g.input("attn", TensorDesc::f32([seq, cfg.q_dim()]));
    let x = g.input("x", TensorDesc::f32([seq, cfg.hidden_size]));
    let out = add_post_attention(&mut g, cfg, "layer", "", attn, x);
    g.output(out);
    expand(&g)
}

/// The final norm and LM head for `seq` tokens: input x `[seq, hidden]`,
/// weights `output_norm.weight` and `output.weight [hidden, vocab]`.
pub fn lm_head(cfg: &LlamaConfig, seq: usize) -> CompilerGraph {
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([seq, cfg.hidden_size]));
    let nw = g.weight("output_norm.weight", TensorDesc::f32([cfg.hidden_size]));
    let w = g.weight("output.weight", TensorDesc::f32([cfg.hidden_size, cfg.vocab_size]));
    let logits = g.node1("head", FusedOp::FusedRmsLinear { eps: cfg.rms_norm_eps }, vec![x, nw, w]);
    g.output(logits);
    expand(&g)
}

/// The whole decoder as one fused graph: `layers` layers over a prompt of
/// `seq` tokens with no earlier context (inputs `x`, `rope_cos`, `rope_sin`,
/// `causal_mask`), weights named `blk{l}.…`.
pub fn decoder_fused(cfg: &LlamaConfig, seq: usize, layers: usize) -> FusedGraph {
    let mut g = FusedGraph::new();
    let half = cfg.head_dim / 2;
    let mut x = g.input("x", TensorDesc::f32([seq, cfg.hidden_size]));
    let cos = g.input("rope_cos", TensorDesc::f32([seq, half]));
    let sin = g.input("rope_sin", TensorDesc::f32([seq, half]));
    let mask = g.input("causal_mask", TensorDesc::f32([seq, seq]));
    for layer in 0..layers {
        let scope = format!("blk{layer}");
        let prefix = format!("blk{layer}.");
        let (q, k, v) = add_pre_attention(&mut g, cfg, &scope, &prefix, x.clone(), cos.clone(), sin.clone());
        let attn = add_attention(&mut g, cfg, &scope, vec![q, k, v, mask.clone()]);
        x = add_post_attention(&mut g, cfg, &scope, &prefix, attn, x);
    }
    g.output(x);
    g
}

/// The atomic-op graph of one decoder layer for a prefill of `seq` tokens.
pub fn decoder_layer(cfg: &LlamaConfig, seq: usize) -> CompilerGraph {
    expand(&decoder_fused(cfg, seq, 1))
}

/// A decoder stack too large to build.
#[derive(Debug, thiserror::Error)]
#[error(
    "{layers} decoder layers of {per_layer} nodes each exceed the graph limit of {limit} nodes \
     (gllm_kernels::graph::MAX_NODES)"
)]
pub struct TooManyLayers {
    pub layers: usize,
    pub per_layer: usize,
    pub limit: usize,
}

/// `layers` decoder layers chained (the residual stream flows from one to the next).
/// The node count is checked against the compiler's graph limit before
/// anything is built; tensor sizes are checked when the graph is validated.
pub fn decoder_stack(cfg: &LlamaConfig, seq: usize, layers: usize) -> Result<CompilerGraph, TooManyLayers> {
    let limit = gllm_kernels::graph::MAX_NODES;
    let per_layer = decoder_layer(cfg, 1).nodes.len();
    if layers.checked_mul(per_layer).is_none_or(|n| n > limit) {
        return Err(TooManyLayers { layers, per_layer, limit });
    }
    Ok(expand(&decoder_fused(cfg, seq, layers)))
}
