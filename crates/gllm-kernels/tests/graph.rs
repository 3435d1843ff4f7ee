//! Phase 1: every validator error, exactly; def-use edges and post-dominators.

use gllm_kernels::graph::{
    BatchLayout, CompilerGraph, CompilerOp, DType, GraphError, MatMulParams, OpParams, TensorDesc, TensorRef,
};
use gllm_kernels::scalar::{Arg, OpKind, OpSignature, Returns, ScalarOpRegistry, TensorRole};
use gllm_kernels::trace::OpClass;

fn f32t(shape: &[usize]) -> TensorDesc {
    TensorDesc::f32(shape.to_vec())
}

/// x[4,8] → silu → mul(weight[8]) → output.
fn small() -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let w = g.weight("w", f32t(&[8]));
    let s = g.node("act", CompilerOp::new(OpKind::Silu), vec![x], f32t(&[4, 8]));
    let m = g.node("scale", CompilerOp::new(OpKind::Mul), vec![s, w], f32t(&[4, 8]));
    g.output(m);
    g
}

fn error(g: &CompilerGraph) -> String {
    match g.analyse(ScalarOpRegistry::global()) {
        Ok(_) => panic!("graph unexpectedly valid"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn valid_graph_analyses() {
    let g = small();
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    assert_eq!(sem.order, vec![0, 1]);
    assert_eq!(sem.nodes[0].class, OpClass::ElemWise);
    // Tensors: x, silu out, w, mul out.
    assert_eq!(sem.tensors.len(), 4);
    let silu_out = sem.nodes[0].outputs[0];
    assert_eq!(sem.tensors[silu_out].consumers, vec![(1, 0)]);
    assert_eq!(sem.tensors[silu_out].size_bytes(), 4 * 8 * 4);
    assert!(sem.tensors[sem.nodes[1].outputs[0]].is_graph_output);
    assert_eq!(sem.ipost_dom, vec![Some(1), None]);
}

#[test]
fn post_dominators_of_a_diamond() {
    // a → {b, c} → d: d post-dominates a, b and c; neither b nor c post-dominates a.
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[16]));
    let a = g.node("a", CompilerOp::new(OpKind::Exp), vec![x], f32t(&[16]));
    let b = g.node("b", CompilerOp::new(OpKind::Silu), vec![a.clone()], f32t(&[16]));
    let c = g.node("c", CompilerOp::new(OpKind::Relu), vec![a], f32t(&[16]));
    let d = g.node("d", CompilerOp::new(OpKind::Add), vec![b, c], f32t(&[16]));
    g.output(d);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    assert_eq!(sem.ipost_dom, vec![Some(3), Some(3), Some(3), None]);
    assert!(sem.post_dominates(3, 0));
    assert!(!sem.post_dominates(1, 0));
    assert_eq!(sem.consumers_of(0), vec![1, 2]);
}

#[test]
fn classes_come_from_traces() {
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[2, 64]));
    let w = g.weight("norm", f32t(&[64]));
    let wm = g.weight("proj", f32t(&[64, 32]));
    let cos = g.input("cos", f32t(&[2, 8]));
    let sin = g.input("sin", f32t(&[2, 8]));
    let n = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, w], f32t(&[2, 64]));
    let m = g.node("proj", CompilerOp::matmul(MatMulParams::new(2, 32, 64)), vec![n, wm], f32t(&[2, 32]));
    let r = g.node("rope", CompilerOp::rope(16), vec![m, cos, sin], f32t(&[2, 32]));
    let s = g.node("sum", CompilerOp::new(OpKind::ReduceSum), vec![r], f32t(&[2, 1]));
    g.output(s);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let classes: Vec<OpClass> = sem.nodes.iter().map(|n| n.class).collect();
    assert_eq!(classes, [OpClass::Reduction, OpClass::Gemm, OpClass::Injective, OpClass::Reduction]);
}

#[test]
fn unknown_op() {
    let mut g = small();
    g.nodes[0].op.kind = OpKind::Custom("frobnicate");
    assert_eq!(
        error(&g),
        "node 0 `act` (frobnicate): operator is not registered (operator `frobnicate` is not registered)"
    );
}

extern "C" fn popcount_op(x: f32) -> f32 {
    // Bit counting: nothing the analyser can express as float arithmetic.
    std::hint::black_box(x.to_bits()).count_ones() as f32
}

#[test]
fn unanalysable_reference_function() {
    let mut registry = ScalarOpRegistry::with_builtins();
    let sig =
        OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
            .unwrap();
    let kind = registry.register_custom("popcount", popcount_op as extern "C" fn(f32) -> f32, sig).unwrap();
    let mut g = small();
    g.nodes[0].op = CompilerOp::new(kind);
    let e = g.analyse(&registry).unwrap_err();
    assert!(matches!(e, GraphError::Trace { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("node 0 `act` (popcount): the operator's reference function could not be analysed"),
        "{e}"
    );
}

#[test]
fn wrong_arity() {
    let mut g = small();
    g.nodes[1].inputs.pop();
    assert_eq!(error(&g), "node 1 `scale` (mul): takes 2 input(s), got 1");
}

#[test]
fn wrong_output_count() {
    let mut g = small();
    g.nodes[0].outputs.push(f32t(&[4, 8]));
    assert_eq!(error(&g), "node 0 `act` (silu): produces 1 output(s), 2 declared");
}

#[test]
fn dangling_graph_input() {
    let mut g = small();
    g.nodes[0].inputs[0] = TensorRef::Input(3);
    assert_eq!(
        error(&g),
        "node 0 `act` (silu): input 0 refers to graph input 3, but the graph has 1 input(s)"
    );
}

#[test]
fn dangling_node() {
    let mut g = small();
    g.nodes[1].inputs[0] = TensorRef::node(7);
    assert_eq!(error(&g), "node 1 `scale` (mul): input 0 refers to node 7, which does not exist (2 nodes)");
}

#[test]
fn dangling_node_output() {
    let mut g = small();
    g.nodes[1].inputs[0] = TensorRef::Node { node: 0, output: 1 };
    assert_eq!(
        error(&g),
        "node 1 `scale` (mul): input 0 refers to output 1 of node 0, which has 1 output(s)"
    );
}

#[test]
fn undeclared_weight() {
    let mut g = small();
    g.nodes[1].inputs[1] = TensorRef::weight("missing");
    assert_eq!(error(&g), "node 1 `scale` (mul): input 1 refers to weight `missing`, which is not declared");
}

#[test]
fn graph_output_must_be_a_node_output() {
    let mut g = small();
    g.outputs.push(TensorRef::Input(0));
    assert_eq!(error(&g), "graph output 1 refers to input 0, which is not a node output");
    let mut g = small();
    g.outputs[0] = TensorRef::node(9);
    assert_eq!(error(&g), "graph output 0 refers to node 9, which is not a node output");
    // Listed twice, the compiled layer would write only one of the two
    // output buffers: refused instead.
    let mut g = small();
    g.outputs.push(g.outputs[0].clone());
    assert_eq!(error(&g), "graph output 1 (node 1) is already graph output 0: list each tensor once");
}

#[test]
fn cycle() {
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[8]));
    let a = g.node("a", CompilerOp::new(OpKind::Add), vec![x, TensorRef::node(2)], f32t(&[8]));
    let b = g.node("b", CompilerOp::new(OpKind::Exp), vec![a], f32t(&[8]));
    let c = g.node("c", CompilerOp::new(OpKind::Relu), vec![b], f32t(&[8]));
    let _ = c;
    let d = g.node("d", CompilerOp::new(OpKind::Silu), vec![TensorRef::node(1)], f32t(&[8]));
    g.output(d);
    assert_eq!(error(&g), "graph has a cycle through node 0 `a` -> node 1 `b` -> node 2 `c` -> node 0 `a`");
    // A node reading itself.
    let mut g = small();
    g.nodes[0].inputs[0] = TensorRef::node(0);
    assert_eq!(error(&g), "graph has a cycle through node 0 `act` -> node 0 `act`");
}

#[test]
fn parameter_errors() {
    let mut g = small();
    g.nodes[0].op.params = OpParams::Scalars(vec![2.0]);
    assert_eq!(
        error(&g),
        "node 0 `act` (silu): the operator takes 0 scalar parameter(s), 1 given by Scalars([2.0])"
    );

    let mut g = CompilerGraph::new();
    let a = g.input("a", f32t(&[4, 8]));
    let b = g.weight("b", f32t(&[8, 2]));
    let c = g.node("mm", CompilerOp::new(OpKind::MatMul), vec![a, b], f32t(&[4, 2]));
    g.output(c);
    assert_eq!(error(&g), "node 0 `mm` (matmul): a GEMM needs MatMul parameters (m, n, k)");

    let mut g2 = g.clone();
    g2.nodes[0].op =
        CompilerOp::matmul(MatMulParams { batch: 3, b_shared_by: 2, ..MatMulParams::new(4, 2, 8) });
    assert_eq!(error(&g2), "node 0 `mm` (matmul): batch 3 must be a non-zero multiple of b_shared_by 2");

    let mut g = small();
    g.nodes[0].op.params = OpParams::MatMul(MatMulParams::new(4, 8, 8));
    assert_eq!(error(&g), "node 0 `act` (silu): MatMul parameters on an operator that is not a GEMM");

    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let s = g.node(
        "sm",
        CompilerOp::with_params(OpKind::Softmax, OpParams::Softmax { axis: 0 }),
        vec![x],
        f32t(&[4, 8]),
    );
    g.output(s);
    assert_eq!(
        error(&g),
        "node 0 `sm` (softmax): softmax over axis 0 is not supported; only the last axis (-1)"
    );

    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[4, 12]));
    let t = g.input("cos", f32t(&[4, 3]));
    let r = g.node("rope", CompilerOp::rope(6), vec![x.clone(), t.clone(), t.clone()], f32t(&[4, 12]));
    g.output(r);
    assert!(g.analyse(ScalarOpRegistry::global()).is_ok());
    g.nodes[0].op = CompilerOp::rope(5);
    assert_eq!(error(&g), "node 0 `rope` (rope): the paired-halves period must be even and non-zero, got 5");
    g.nodes[0].op = CompilerOp::rope(8);
    assert_eq!(
        error(&g),
        "node 0 `rope` (rope): a paired-halves input must be [rows, blocks·8], got [4, 12]"
    );
}

#[test]
fn dtype_mismatch() {
    let mut g = small();
    g.weights[0].1.dtype = DType::BF16;
    assert_eq!(error(&g), "node 1 `scale` (mul): input 1 is bf16, expected f32");
}

#[test]
fn shape_mismatches() {
    let mut g = small();
    g.nodes[0].outputs[0] = f32t(&[4, 9]);
    assert_eq!(error(&g), "node 0 `act` (silu): output 0 has shape [4, 9], expected [4, 8]");

    // A weight broadcasts over leading dimensions only.
    let mut g = small();
    g.weights[0].1 = f32t(&[4]);
    assert_eq!(error(&g), "node 1 `scale` (mul): input 1 (Weight, broadcast) has shape [4], expected [4, 8]");

    // Two activations must agree exactly.
    let mut g = CompilerGraph::new();
    let a = g.input("a", f32t(&[4, 8]));
    let b = g.input("b", f32t(&[8]));
    let s = g.node("sw", CompilerOp::new(OpKind::SwiGlu), vec![a, b], f32t(&[4, 8]));
    g.output(s);
    assert_eq!(error(&g), "node 0 `sw` (swiglu): input 1 has shape [8], expected [4, 8]");

    // A norm's weight is one row.
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[4, 8]));
    let w = g.weight("w", f32t(&[4, 8]));
    let n = g.node("norm", CompilerOp::rms_norm(1e-6), vec![x, w], f32t(&[4, 8]));
    g.output(n);
    assert_eq!(error(&g), "node 0 `norm` (rms_norm): input 1 (Weight) has shape [4, 8], expected [8]");

    // GEMM operands, plain and batched.
    let mut g = CompilerGraph::new();
    let a = g.input("a", f32t(&[4, 8]));
    let b = g.weight("b", f32t(&[8, 2]));
    let c = g.node("mm", CompilerOp::matmul(MatMulParams::new(4, 2, 16)), vec![a, b], f32t(&[4, 2]));
    g.output(c);
    assert_eq!(error(&g), "node 0 `mm` (matmul): input 0 (A) has shape [4, 8], expected [4, 16]");
    g.nodes[0].op = CompilerOp::matmul(MatMulParams { transpose_b: true, ..MatMulParams::new(4, 2, 8) });
    assert_eq!(error(&g), "node 0 `mm` (matmul): input 1 (B) has shape [8, 2], expected [2, 8]");
    g.nodes[0].op = CompilerOp::matmul(MatMulParams::new(4, 2, 8));
    g.nodes[0].outputs[0] = f32t(&[2, 4]);
    assert_eq!(error(&g), "node 0 `mm` (matmul): output 0 (C) has shape [2, 4], expected [4, 2]");

    let mut g = CompilerGraph::new();
    let q = g.input("q", f32t(&[5, 4 * 16]));
    let k = g.input("k", f32t(&[5, 2 * 16]));
    let p = MatMulParams {
        batch: 4,
        b_shared_by: 2,
        transpose_b: true,
        a_layout: BatchLayout::Interleaved,
        b_layout: BatchLayout::Interleaved,
        ..MatMulParams::new(5, 5, 16)
    };
    let s = g.node("scores", CompilerOp::matmul(p), vec![q, k], f32t(&[4, 5, 5]));
    g.output(s);
    assert!(g.analyse(ScalarOpRegistry::global()).is_ok());
    g.nodes[0].op = CompilerOp::matmul(MatMulParams { b_shared_by: 1, ..p });
    assert_eq!(error(&g), "node 0 `scores` (matmul): input 1 (B) has shape [5, 32], expected [5, 64]");

    // A reduction's output keeps the rows and has one element per row.
    let mut g = CompilerGraph::new();
    let x = g.input("x", f32t(&[3, 8]));
    let s = g.node("sum", CompilerOp::new(OpKind::ReduceSum), vec![x], f32t(&[3]));
    g.output(s);
    assert_eq!(error(&g), "node 0 `sum` (reduce_sum): output 0 has shape [3], expected [3, 1]");
}

#[test]
fn unused_output() {
    let mut g = small();
    g.outputs.clear();
    assert_eq!(error(&g), "node 1 `scale` (mul): output 0 is never used and is not a graph output");
}

#[test]
fn absurd_sizes_are_errors_naming_the_limit() {
    use gllm_kernels::graph::{MAX_NODES, MAX_TENSOR_BYTES};
    // A tensor whose byte count overflows, one just over the limit, and the
    // same shapes on a weight and a node output.
    let mut g = small();
    g.inputs[0].1 = f32t(&[usize::MAX / 2, 8]);
    assert_eq!(
        error(&g),
        format!(
            "graph input `x` has shape [{}, 8] (more bytes than a usize holds), more than the limit of {MAX_TENSOR_BYTES} bytes per tensor",
            usize::MAX / 2
        )
    );
    let mut g = small();
    g.weights[0].1 = f32t(&[MAX_TENSOR_BYTES / 4 + 1]);
    let e = error(&g);
    assert!(e.starts_with("weight `w` has shape") && e.contains("more than the limit of"), "{e}");
    let mut g = small();
    g.nodes[0].outputs[0] = f32t(&[1 << 20, 1 << 20, 1 << 20]);
    let e = error(&g);
    assert!(e.starts_with("node 0 `act` (silu): output 0 has shape [1048576, 1048576, 1048576]"), "{e}");
    // Exactly at the limit is accepted by the size check (the shapes then
    // disagree, which is a different error).
    let mut g = small();
    g.weights[0].1 = f32t(&[MAX_TENSOR_BYTES / 4]);
    assert!(!error(&g).contains("limit"));
    // Too many nodes: checked before any node is looked at.
    let mut g = small();
    let x = g.inputs[0].1.clone();
    let first = g.nodes[0].clone();
    g.nodes.resize(MAX_NODES + 1, first);
    g.nodes[0].outputs[0] = x;
    assert_eq!(
        error(&g),
        format!("the graph has {} nodes, more than the limit of {MAX_NODES}", MAX_NODES + 1)
    );
}
