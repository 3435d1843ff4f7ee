//! `FusedGraph` expansion: unknown op names, bad shapes, and a small synthetic
//! mixture-of-experts model through the JIT against the scalar reference
//! path and against a plain sparse MoE written here (each token runs only
//! its two chosen experts).

use gllm::fused::{ExpandError, FusedGraph, FusedOp, FusedValue};
use gllm_kernels::codegen::layer::compile_graph;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::graph::TensorDesc;
use gllm_kernels::reference;
use gllm_kernels::scalar::ScalarOpRegistry;
use std::collections::HashMap;

#[test]
fn an_unknown_op_type_is_named() {
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([2, 8]));
    let y = g.node1("blk0.act", FusedOp::AtomicOp { op_type: "swishy".into(), params: vec![] }, vec![x]);
    g.output(y);
    let e = g.expand(ScalarOpRegistry::global()).unwrap_err();
    assert!(matches!(&e, ExpandError::UnknownOp { op_type, .. } if op_type == "swishy"));
    let text = e.to_string();
    assert!(text.starts_with("node `blk0.act`: unknown op_type `swishy` (known: "), "{text}");
    assert!(text.contains("silu") && text.contains("rms_norm"), "{text}");
}

#[test]
fn bad_inputs_are_refused_with_the_node_named() {
    let reg = ScalarOpRegistry::global();
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([3, 8]));
    let w = g.weight("w", TensorDesc::f32([9, 4]));
    let y =
        g.node1("proj", FusedOp::AtomicOp { op_type: "matmul".into(), params: vec![] }, vec![x.clone(), w]);
    g.output(y);
    assert_eq!(
        g.expand(reg).unwrap_err().to_string(),
        "node `proj` (matmul): [3, 8] · [9, 4]: inner dimensions differ"
    );
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([3, 8]));
    let y = g.node1("n", FusedOp::AtomicOp { op_type: "rms_norm".into(), params: vec![] }, vec![x]);
    g.output(y);
    assert_eq!(g.expand(reg).unwrap_err().to_string(), "node `n` (rms_norm): needs its eps as parameter 0");
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([3, 8]));
    g.node("bad", FusedOp::SwiGlu, vec![x, FusedValue::Node { node: 7, output: 0 }]);
    assert!(matches!(g.expand(reg).unwrap_err(), ExpandError::Dangling { .. }));
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([3, 8]));
    let parts: Vec<FusedValue> = [[8, 4], [8, 12], [8, 12], [12, 8]]
        .iter()
        .enumerate()
        .map(|(i, s)| g.weight(format!("w{i}"), TensorDesc::f32(*s)))
        .collect();
    let mut ins = vec![x];
    ins.extend(parts);
    g.node("moe", FusedOp::MoERouting { experts: 4, top_k: 1 }, ins);
    let text = g.expand(reg).unwrap_err().to_string();
    assert!(text.contains("top-1 of 4 experts: routing is top-2"), "{text}");
}

/// A plain sparse mixture of experts: each token's two largest router logits
/// choose its experts, weighted by the softmax over those two.
#[allow(clippy::too_many_arguments)]
fn sparse_moe(
    x: &[f32],
    router: &[f32],
    gate: &[f32],
    up: &[f32],
    down: &[f32],
    seq: usize,
    h: usize,
    e: usize,
    f: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; seq * h];
    for t in 0..seq {
        let xt = &x[t * h..(t + 1) * h];
        let logits: Vec<f32> = (0..e).map(|j| (0..h).map(|i| xt[i] * router[i * e + j]).sum()).collect();
        let mut order: Vec<usize> = (0..e).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let (a, b) = (order[0], order[1]);
        let z = (logits[b] - logits[a]).exp();
        for (expert, w) in [(a, 1.0 / (1.0 + z)), (b, z / (1.0 + z))] {
            let hidden: Vec<f32> = (0..f)
                .map(|k| {
                    let col = expert * f + k;
                    let g: f32 = (0..h).map(|i| xt[i] * gate[i * e * f + col]).sum();
                    let u: f32 = (0..h).map(|i| xt[i] * up[i * e * f + col]).sum();
                    g / (1.0 + (-g).exp()) * u
                })
                .collect();
            for c in 0..h {
                let y: f32 = (0..f).map(|k| hidden[k] * down[(expert * f + k) * h + c]).sum();
                out[t * h + c] += w * y;
            }
        }
    }
    out
}

#[test]
fn a_synthetic_moe_layer_runs_through_the_jit() {
    for seq in [1, 7] {
        moe_layer(seq);
    }
}

fn moe_layer(seq: usize) {
    let (h, e, f) = (32, 4, 24);
    let reg = ScalarOpRegistry::global();
    let mut g = FusedGraph::new();
    let x = g.input("x", TensorDesc::f32([seq, h]));
    let shapes =
        [("router", [h, e]), ("gate_exps", [h, e * f]), ("up_exps", [h, e * f]), ("down_exps", [e * f, h])];
    let mut ins = vec![x];
    for (name, s) in shapes {
        ins.push(g.weight(name, TensorDesc::f32(s)));
    }
    let y = g.node1("moe", FusedOp::MoERouting { experts: e, top_k: 2 }, ins);
    g.output(y);
    let graph = g.expand(reg).unwrap();
    let mut next = gllm::synthetic::uniform(99);
    let xs: Vec<f32> = (0..seq * h).map(|_| next()).collect();
    let weights: HashMap<&str, Vec<f32>> =
        shapes.iter().map(|(name, s)| (*name, (0..s[0] * s[1]).map(|_| next() * 0.4).collect())).collect();
    let get = |name: &str| weights.get(name).map(|v| v.as_slice());

    let want = sparse_moe(
        &xs,
        &weights["router"],
        &weights["gate_exps"],
        &weights["up_exps"],
        &weights["down_exps"],
        seq,
        h,
        e,
        f,
    );
    let sem = graph.analyse(reg).unwrap();
    let scalar = reference::evaluate(&sem, reg, &[&xs], &get).unwrap().swap_remove(0);
    let layer = compile_graph(&graph, &DeviceProfile::detect().unwrap(), reg).unwrap();
    let prepared = layer.prepare_weights(&get).unwrap();
    let jit = layer.run(&prepared, &[&xs]).unwrap().swap_remove(0);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.1, "the layer output is not trivially small");
    let tol = gllm_kernels::oracle::Tolerance::composed(1e-5);
    for (what, got) in [("reference", &scalar), ("JIT", &jit)] {
        gllm_kernels::oracle::check(got, &want, &[], &tol)
            .unwrap_or_else(|e| panic!("seq {seq} {what} vs the sparse mixture of experts{e}"));
    }
}

#[test]
fn the_decoder_layer_expands_to_the_documented_nodes() {
    let cfg = gllm::LlamaConfig::smollm2_135m();
    let g = gllm::layer_graph::decoder_layer(&cfg, 4);
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "blk0.attn_norm",
            "blk0.attn_q",
            "blk0.attn_k",
            "blk0.attn_v",
            "blk0.rope_q",
            "blk0.rope_k",
            "blk0.attn_scores",
            "blk0.attn_scale",
            "blk0.attn_mask",
            "blk0.attn_softmax",
            "blk0.attn_pv",
            "blk0.attn_output",
            "blk0.attn_residual",
            "blk0.ffn_norm",
            "blk0.ffn_gate",
            "blk0.ffn_up",
            "blk0.ffn_silu",
            "blk0.ffn_gated",
            "blk0.ffn_down",
            "blk0.ffn_residual",
        ]
    );
}
