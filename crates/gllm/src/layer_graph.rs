//! Expansion of a LLaMA decoder layer into the compiler's atomic-op graph.
//!
//! The graph covers a prefill of `seq` tokens with no earlier context (so the
//! attention context is the `seq` tokens themselves, with a causal mask input).
//! Attention is expressed with batched GEMMs over the heads: Q·Kᵀ reads the
//! heads as column blocks of the projections (grouped-query: `num_heads /
//! num_kv_heads` query heads share one KV head), softmax runs over the last
//! axis, and P·V writes the heads back as column blocks.

use crate::config::LlamaConfig;
use gllm_kernels::graph::{BatchLayout, CompilerGraph, CompilerOp, MatMulParams, TensorDesc, TensorRef};
use gllm_kernels::scalar::OpKind;

/// Graph inputs shared by every layer of a stack.
struct SharedInputs {
    cos: TensorRef,
    sin: TensorRef,
    mask: TensorRef,
}

fn shared_inputs(g: &mut CompilerGraph, cfg: &LlamaConfig, seq: usize) -> SharedInputs {
    let half = cfg.head_dim / 2;
    SharedInputs {
        cos: g.input("rope_cos", TensorDesc::f32([seq, half])),
        sin: g.input("rope_sin", TensorDesc::f32([seq, half])),
        mask: g.input("causal_mask", TensorDesc::f32([seq, seq])),
    }
}

/// One decoder layer: `x` [seq, hidden] in, the layer's output [seq, hidden] returned.
fn add_layer(
    g: &mut CompilerGraph,
    cfg: &LlamaConfig,
    seq: usize,
    layer: usize,
    x: TensorRef,
    shared: &SharedInputs,
) -> TensorRef {
    let (h, q_dim, kv_dim, ffn) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    let p = |s: &str| format!("blk{layer}.{s}");
    let act = |cols: usize| TensorDesc::f32([seq, cols]);
    let w = |g: &mut CompilerGraph, name: &str, shape: [usize; 2]| g.weight(p(name), TensorDesc::f32(shape));
    let linear = |g: &mut CompilerGraph, name: &str, input: TensorRef, k: usize, n: usize| {
        let weight = w(g, &format!("{name}.weight"), [k, n]);
        g.node(p(name), CompilerOp::matmul(MatMulParams::new(seq, n, k)), vec![input, weight], act(n))
    };

    let attn_norm_w = g.weight(p("attn_norm.weight"), TensorDesc::f32([h]));
    let normed =
        g.node(p("attn_norm"), CompilerOp::rms_norm(cfg.rms_norm_eps), vec![x.clone(), attn_norm_w], act(h));
    let q = linear(g, "attn_q", normed.clone(), h, q_dim);
    let k = linear(g, "attn_k", normed.clone(), h, kv_dim);
    let v = linear(g, "attn_v", normed, h, kv_dim);
    let rope = CompilerOp::rope(cfg.head_dim, cfg.rope_theta);
    let q_rot =
        g.node(p("rope_q"), rope.clone(), vec![q, shared.cos.clone(), shared.sin.clone()], act(q_dim));
    let k_rot = g.node(p("rope_k"), rope, vec![k, shared.cos.clone(), shared.sin.clone()], act(kv_dim));

    let heads = MatMulParams {
        batch: cfg.num_heads,
        b_shared_by: cfg.num_heads / cfg.num_kv_heads,
        ..MatMulParams::new(seq, seq, cfg.head_dim)
    };
    let scores_params = MatMulParams {
        transpose_b: true,
        a_layout: BatchLayout::Interleaved,
        b_layout: BatchLayout::Interleaved,
        c_layout: BatchLayout::Stacked,
        ..heads
    };
    let per_head = TensorDesc::f32([cfg.num_heads, seq, seq]);
    let scores =
        g.node(p("attn_scores"), CompilerOp::matmul(scores_params), vec![q_rot, k_rot], per_head.clone());
    let scale = 1.0 / (cfg.head_dim as f32).sqrt();
    let scaled = g.node(p("attn_scale"), CompilerOp::scale(scale), vec![scores], per_head.clone());
    let masked = g.node(
        p("attn_mask"),
        CompilerOp::new(OpKind::Add),
        vec![scaled, shared.mask.clone()],
        per_head.clone(),
    );
    let probs = g.node(p("attn_softmax"), CompilerOp::softmax(), vec![masked], per_head);
    let pv_params = MatMulParams {
        n: cfg.head_dim,
        k: seq,
        a_layout: BatchLayout::Stacked,
        b_layout: BatchLayout::Interleaved,
        c_layout: BatchLayout::Interleaved,
        ..heads
    };
    let attn = g.node(p("attn_pv"), CompilerOp::matmul(pv_params), vec![probs, v], act(q_dim));
    let o = linear(g, "attn_output", attn, q_dim, h);
    let resid = g.node(p("attn_residual"), CompilerOp::new(OpKind::Add), vec![o, x], act(h));

    let ffn_norm_w = g.weight(p("ffn_norm.weight"), TensorDesc::f32([h]));
    let normed = g.node(
        p("ffn_norm"),
        CompilerOp::rms_norm(cfg.rms_norm_eps),
        vec![resid.clone(), ffn_norm_w],
        act(h),
    );
    let gate = linear(g, "ffn_gate", normed.clone(), h, ffn);
    let up = linear(g, "ffn_up", normed, h, ffn);
    let act_gate = g.node(p("ffn_silu"), CompilerOp::new(OpKind::Silu), vec![gate], act(ffn));
    let gated = g.node(p("ffn_gated"), CompilerOp::new(OpKind::Mul), vec![act_gate, up], act(ffn));
    let down = linear(g, "ffn_down", gated, ffn, h);
    g.node(p("ffn_residual"), CompilerOp::new(OpKind::Add), vec![down, resid], act(h))
}

/// The atomic-op graph of one decoder layer for a prefill of `seq` tokens.
pub fn decoder_layer(cfg: &LlamaConfig, seq: usize) -> CompilerGraph {
    decoder_stack(cfg, seq, 1)
}

/// `layers` decoder layers chained (the residual stream flows from one to the next).
pub fn decoder_stack(cfg: &LlamaConfig, seq: usize, layers: usize) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let mut x = g.input("x", TensorDesc::f32([seq, cfg.hidden_size]));
    let shared = shared_inputs(&mut g, cfg, seq);
    for layer in 0..layers {
        x = add_layer(&mut g, cfg, seq, layer, x, &shared);
    }
    g.output(x);
    g
}
