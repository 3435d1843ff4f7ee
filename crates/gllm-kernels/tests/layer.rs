//! `compile_graph`: a small graph end to end, and its errors.

mod support;

use gllm_kernels::codegen::layer::compile_graph;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc};
use gllm_kernels::oracle::Tolerance;
use gllm_kernels::scalar::ops::{gk_matmul, gk_rms_norm, gk_silu};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

fn graph() -> CompilerGraph {
    let (m, k, n) = (3, 40, 24);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let nw = g.weight("norm", TensorDesc::f32([k]));
    let w = g.weight("w", TensorDesc::f32([k, n]));
    let h = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, nw], TensorDesc::f32([m, k]));
    let y =
        g.node("proj", CompilerOp::matmul(MatMulParams::new(m, n, k)), vec![h, w], TensorDesc::f32([m, n]));
    let z = g.node("act", CompilerOp::new(OpKind::Silu), vec![y], TensorDesc::f32([m, n]));
    g.output(z);
    g
}

#[test]
fn a_small_graph_runs_and_matches_the_references() {
    let (m, k, n) = (3, 40, 24);
    let g = graph();
    let layer = compile_graph(&g, &DeviceProfile::detect().unwrap(), ScalarOpRegistry::global()).unwrap();
    let x: Vec<f32> = (0..m * k).map(|i| (i % 11) as f32 * 0.1 - 0.5).collect();
    let nw: Vec<f32> = (0..k).map(|i| 1.0 + (i % 3) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.02 - 0.06).collect();
    let weights = layer
        .prepare_weights(&|name: &str| match name {
            "norm" => Some(&nw[..]),
            "w" => Some(&w[..]),
            _ => None,
        })
        .unwrap();
    let out = layer.run(&weights, &[&x]).unwrap();
    let mut normed = vec![0.0; m * k];
    for r in 0..m {
        // SAFETY: one row of k elements in and out.
        unsafe { gk_rms_norm(x[r * k..].as_ptr(), nw.as_ptr(), normed[r * k..].as_mut_ptr(), k, 1e-5) };
    }
    let mut y = vec![0.0; m * n];
    // SAFETY: m·k, k·n and m·n elements.
    unsafe { gk_matmul(normed.as_ptr(), w.as_ptr(), y.as_mut_ptr(), m, n, k) };
    let want: Vec<f32> = y.iter().map(|&v| gk_silu(v)).collect();
    support::assert_within("norm → matmul → silu ", &out[0], &want, &[], &Tolerance::composed(1e-5));
}

#[test]
fn bad_weights_and_inputs_are_named() {
    let g = graph();
    let layer = compile_graph(&g, &DeviceProfile::detect().unwrap(), ScalarOpRegistry::global()).unwrap();
    let nw = [1.0f32; 40];
    let w = vec![0.0f32; 40 * 24];
    let e = layer.prepare_weights(&|name: &str| (name == "norm").then_some(&nw[..])).err().unwrap();
    assert_eq!(e.to_string(), "weight `w` is missing");
    let short = [0.0f32; 7];
    let e = layer
        .prepare_weights(&|name: &str| match name {
            "norm" => Some(&short[..]),
            _ => Some(&w[..]),
        })
        .err()
        .unwrap();
    assert_eq!(e.to_string(), "weight `norm` has 7 elements, the graph declares 40");
    let weights = layer
        .prepare_weights(&|name: &str| if name == "norm" { Some(&nw[..]) } else { Some(&w[..]) })
        .unwrap();
    let e = layer.run(&weights, &[]).unwrap_err();
    assert_eq!(e.to_string(), "the graph takes 1 inputs, 0 given");
    let e = layer.run(&weights, &[&short]).unwrap_err();
    assert_eq!(e.to_string(), "input 0 has 7 elements, the graph declares 120");
    // A malformed graph is reported by the validator, with the node.
    let mut bad = graph();
    bad.nodes[2].outputs[0] = TensorDesc::f32([3, 25]);
    let e = compile_graph(&bad, &DeviceProfile::detect().unwrap(), ScalarOpRegistry::global()).err().unwrap();
    assert_eq!(e.to_string(), "node 2 `act` (silu): output 0 has shape [3, 25], expected [3, 24]");
}

/// A custom op with a weight operand (`y = x·w + w²`, per column), built
/// with `CompilerOp::new` like a built-in and compiled with the registry it
/// was registered in: its extra input comes from that registry's signature.
extern "C" fn weighted_square(x: f32, w: f32) -> f32 {
    x * w + w * w
}

#[test]
fn a_custom_op_with_a_weight_operand_compiles_like_a_builtin() {
    use gllm_kernels::scalar::{Arg, OpSignature, Returns, TensorRole};
    let mut registry = ScalarOpRegistry::with_builtins();
    let sig = OpSignature::new(
        vec![
            Arg::Element { name: "x", role: TensorRole::Activation },
            Arg::Element { name: "w", role: TensorRole::Weight },
        ],
        Returns::Element,
    )
    .unwrap();
    let kind = registry
        .register_custom("weighted_square", weighted_square as extern "C" fn(f32, f32) -> f32, sig)
        .unwrap();
    let (m, k, n) = (5, 24, 19);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let w = g.weight("w", TensorDesc::f32([k, n]));
    let cw = g.weight("cw", TensorDesc::f32([n]));
    let y =
        g.node("proj", CompilerOp::matmul(MatMulParams::new(m, n, k)), vec![x, w], TensorDesc::f32([m, n]));
    let z = g.node("custom", CompilerOp::new(kind), vec![y, cw], TensorDesc::f32([m, n]));
    g.output(z);
    let profile = DeviceProfile::detect().unwrap();
    let layer = compile_graph(&g, &profile, &registry).unwrap_or_else(|e| panic!("{e}"));
    let xv: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let wv: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.03 - 0.07).collect();
    let cv: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.125).collect();
    let weights = layer
        .prepare_weights(&|name: &str| match name {
            "w" => Some(&wv[..]),
            "cw" => Some(&cv[..]),
            _ => None,
        })
        .unwrap();
    let out = layer.run(&weights, &[&xv]).unwrap();
    let mut yv = vec![0.0; m * n];
    // SAFETY: m·k, k·n and m·n elements.
    unsafe { gk_matmul(xv.as_ptr(), wv.as_ptr(), yv.as_mut_ptr(), m, n, k) };
    let want: Vec<f32> = yv.iter().enumerate().map(|(i, &y)| weighted_square(y, cv[i % n])).collect();
    support::assert_within("matmul → weighted_square ", &out[0], &want, &[], &Tolerance::composed(1e-5));
    // And the plan fused it into the GEMM as an epilogue, like Mul would be.
    let plan = gllm_kernels::fusion::fuse_with(&g, &profile, &registry).unwrap();
    assert_eq!(plan.groups.len(), 1, "{}", plan.explain(&g));
}

/// Found by the graph fuzzer: a row op with many row scalars (top-2
/// softmax) whose elementwise consumers, each within the per-op budget,
/// together overflowed the loop kernel's registers, so `compile_graph`
/// failed on a valid graph. The planner now composes the chain as the code
/// generator will and ends it where it stops fitting.
#[test]
fn a_fused_chain_that_would_overflow_the_registers_is_cut_where_it_fits() {
    use gllm_kernels::reference;
    let (rows, n) = (7, 10);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([rows, n]));
    let x1 = g.input("x1", TensorDesc::f32([rows, n]));
    let w = g.weight("w", TensorDesc::f32([n]));
    let t = g.node("top2", CompilerOp::softmax(), vec![x], TensorDesc::f32([rows, n]));
    g.nodes[0].op.kind = OpKind::Top2Softmax;
    let m = g.node("mul", CompilerOp::new(OpKind::Mul), vec![t, w], TensorDesc::f32([rows, n]));
    let r = g.node("relu", CompilerOp::new(OpKind::Relu), vec![m], TensorDesc::f32([rows, n]));
    let s = g.node("swiglu", CompilerOp::new(OpKind::SwiGlu), vec![r, x1], TensorDesc::f32([rows, n]));
    g.output(s);
    let registry = ScalarOpRegistry::global();
    // AVX2's 16 registers: where the whole chain does not fit.
    let profile = DeviceProfile::preset("haswell").unwrap();
    let layer = compile_graph(&g, &profile, registry).unwrap_or_else(|e| panic!("{e}"));
    let plan = layer.plan().explain(&g);
    assert!(plan.contains("vector registers"), "the chain was not cut:\n{plan}");
    let xv: Vec<f32> = (0..rows * n).map(|i| ((i * 7) % 13) as f32 * 0.3 - 1.5).collect();
    let x1v: Vec<f32> = (0..rows * n).map(|i| ((i * 5) % 11) as f32 * 0.2 - 1.0).collect();
    let wv: Vec<f32> = (0..n).map(|i| 0.5 + i as f32 * 0.1).collect();
    let weights = layer.prepare_weights(&|_: &str| Some(&wv[..])).unwrap();
    let got = layer.run(&weights, &[&xv, &x1v]).unwrap();
    let sem = g.analyse(registry).unwrap();
    let want = reference::evaluate(&sem, registry, &[&xv, &x1v], &|_: &str| Some(&wv[..])).unwrap();
    support::assert_within("cut chain ", &got[0], &want[0], &[], &Tolerance::composed(1e-6));
}

/// Every unseen elementwise op (registered at run time, no parameter) as
/// the epilogue of a GEMM through `compile_graph`, against the unfused
/// reference evaluation of the same graph. The GEMM's data are dyadic
/// (exact sums), so the only difference left is the op's own, held to the
/// oracle's bound for it — floors and roundings exactly.
#[test]
fn unseen_elementwise_ops_fuse_into_gemms_through_compile_graph() {
    use gllm_kernels::oracle::Scale;
    use gllm_kernels::reference;
    use gllm_kernels::scalar::{Arg, FnForm};
    use gllm_kernels::trace::ComputePattern;
    let (registry, kinds) = support::builtins_and_unseen();
    let (m, k, n) = (7, 33, 29);
    let xv: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 9) as f32 * 0.5 - 2.0).collect();
    let wv: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 * 0.125 - 0.625).collect();
    let (mut fused, mut tested) = (Vec::new(), 0);
    for profile in support::profiles() {
        for &kind in &kinds {
            let op = registry.get(kind).unwrap();
            let trace = op.trace().unwrap();
            let has_param = op.signature().args().iter().any(|a| matches!(a, Arg::Scalar { .. }));
            if trace.pattern != ComputePattern::Elementwise
                || op.signature().form() != FnForm::PerElement
                || has_param
            {
                continue;
            }
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([m, k]));
            let w = g.weight("w", TensorDesc::f32([k, n]));
            let y = g.node(
                "proj",
                CompilerOp::matmul(MatMulParams::new(m, n, k)),
                vec![x, w],
                TensorDesc::f32([m, n]),
            );
            let z = g.node("op", CompilerOp::new(kind), vec![y], TensorDesc::f32([m, n]));
            g.output(z);
            let layer = compile_graph(&g, &profile, &registry).unwrap_or_else(|e| panic!("{kind}: {e}"));
            let weights = layer.prepare_weights(&|name: &str| (name == "w").then_some(&wv[..])).unwrap();
            let got = layer.run(&weights, &[&xv]).unwrap().swap_remove(0);
            let sem = g.analyse(&registry).unwrap();
            let want =
                reference::evaluate(&sem, &registry, &[&xv], &|name: &str| (name == "w").then_some(&wv[..]))
                    .unwrap()
                    .swap_remove(0);
            let mut yv = vec![0.0; m * n];
            // SAFETY: m·k, k·n and m·n elements.
            unsafe { gk_matmul(xv.as_ptr(), wv.as_ptr(), yv.as_mut_ptr(), m, n, k) };
            // The op's own bound, its input being the product y.
            let tol = Tolerance::for_op(op, &trace, m * n, false);
            let scale: Vec<f32> = match tol.scale {
                Scale::Inputs => yv.iter().map(|y| y.abs().max(1.0)).collect(),
                _ => want.iter().zip(&yv).map(|(w, y)| w.abs().max(y.abs())).collect(),
            };
            support::assert_within(&format!("{kind} on {} ", profile.isa), &got, &want, &scale, &tol);
            tested += 1;
            let plan = gllm_kernels::fusion::fuse_with(&g, &profile, &registry).unwrap();
            if plan.groups.len() == 1 {
                fused.push(format!("{kind}/{}", profile.isa));
            }
        }
    }
    assert!(tested >= 20, "{tested} ops tested");
    assert!(fused.len() >= 4, "fused as epilogues: {fused:?}");
    eprintln!("fused as GEMM epilogues: {fused:?}");
}

#[test]
fn a_quantised_gemv_group_with_an_epilogue_reading_an_earlier_member() {
    // a = x·W1, b = x·W2 + a, c = x·W3 share x: one group whose GEMVs run
    // as one fan-out, then the epilogues in member order, so b's add reads
    // a's finished output. Weights stay quantised (Q4_1, Q8_0, F16); the
    // result must equal each member's own GEMV plus the add, exactly.
    use gllm_kernels::codegen::layer::WeightData;
    use gllm_kernels::codegen::quant_gemv::QuantPanels;
    use gllm_kernels::oracle::quant::{random_activations, random_stored_matrix};
    use gllm_kernels::quant::{QuantFormat, QuantMatrix};
    let (k, n, n3) = (576, 200, 97);
    let mut rng = support::Rng(0x91a);
    let formats = [QuantFormat::Q4_1, QuantFormat::Q8_0, QuantFormat::F16];
    let shapes = [n, n, n3];
    let bytes: Vec<Vec<u8>> =
        formats.iter().zip(shapes).map(|(&f, rows)| random_stored_matrix(f, rows, k, &mut rng)).collect();
    let mats: Vec<QuantMatrix> = formats
        .iter()
        .zip(shapes)
        .zip(&bytes)
        .map(|((&f, rows), b)| QuantMatrix::new(f, rows, k, b).unwrap())
        .collect();
    for m in [1, 3] {
        let mut g = CompilerGraph::new();
        let x = g.input("x", TensorDesc::f32([m, k]));
        let w: Vec<_> = ["w1", "w2", "w3"]
            .iter()
            .zip(shapes)
            .map(|(&name, cols)| g.weight(name, TensorDesc::f32([k, cols])))
            .collect();
        let mm = |n| CompilerOp::matmul(MatMulParams::new(m, n, k));
        let a = g.node("a", mm(n), vec![x.clone(), w[0].clone()], TensorDesc::f32([m, n]));
        let b0 = g.node("b0", mm(n), vec![x.clone(), w[1].clone()], TensorDesc::f32([m, n]));
        let b = g.node("b", CompilerOp::new(OpKind::Add), vec![b0, a], TensorDesc::f32([m, n]));
        let c = g.node("c", mm(n3), vec![x, w[2].clone()], TensorDesc::f32([m, n3]));
        g.output(b);
        g.output(c);
        let profile = DeviceProfile::detect().unwrap();
        let layer = compile_graph(&g, &profile, ScalarOpRegistry::global()).unwrap();
        let mut prepared = Default::default();
        layer
            .prepare_more_from(&mut prepared, &|name: &str| {
                ["w1", "w2", "w3"].iter().position(|&w| w == name).map(|i| WeightData::Quant(mats[i]))
            })
            .unwrap();
        let xv = random_activations(m * k, &mut rng);
        let out = layer.run(&prepared, &[&xv]).unwrap();
        let gemv = |i: usize| {
            let panels = QuantPanels::pack(&mats[i]).unwrap();
            let mut y = vec![0.0f32; m * panels.rows()];
            panels.gemv(&xv, m, &mut y, 1).unwrap();
            y
        };
        let (ya, yb, yc) = (gemv(0), gemv(1), gemv(2));
        let want_b: Vec<f32> = yb.iter().zip(&ya).map(|(p, q)| p + q).collect();
        let plan = gllm_kernels::fusion::fuse(&g, &profile).unwrap().explain(&g);
        assert_eq!(out[0], want_b, "b = x·W2 + a, m = {m}\n{plan}");
        assert_eq!(out[1], yc, "c = x·W3, m = {m}\n{plan}");
    }
}
