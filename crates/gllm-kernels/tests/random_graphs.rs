//! Random graphs of registered ops, compiled by `compile_graph` (planned,
//! fused, JIT-compiled) under every profile preset this host can run and
//! the detected profile, run on random data, and compared with evaluating
//! the same graph node by node through the scalar reference functions.
//!
//! The generator builds what models contain: chains, diamonds and tensors
//! read by several nodes; GEMMs followed by random elementwise chains (the
//! epilogue and tile-fusion candidates); norms before GEMMs; two GEMMs of
//! one input (a shared-input group); attention-shaped batched GEMMs
//! (Q·Kᵀ over interleaved heads, a softmax, then ·V). Proptest shrinks a
//! failure to a minimal graph and keeps it in
//! `random_graphs.proptest-regressions`.

mod support;

use gllm_kernels::codegen::layer::{compile_graph, compile_graph_with};
use gllm_kernels::device::{DeviceProfile, Isa, KernelClass, PRESET_NAMES};
use gllm_kernels::fusion::FusionOptions;
use gllm_kernels::graph::{BatchLayout, CompilerGraph, CompilerOp, MatMulParams, TensorDesc, TensorRef};
use gllm_kernels::oracle::{self, GuardedBuffer, Placement};
use gllm_kernels::reference;
use gllm_kernels::runtime::LayerWorkspace;
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use proptest::prelude::*;
use std::collections::HashMap;
use support::Rng;

/// Tensor widths: 16 = two attention heads of 8.
const WIDTHS: [usize; 2] = [16, 40];
const HEADS: usize = 2;
const HEAD_DIM: usize = 8;

/// One generator step: `(what, operand a, operand b / variant)`.
type Step = (u8, u16, u16);

fn random_graph(steps: &[Step], m: usize) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let mut tensors: Vec<(TensorRef, usize)> = vec![
        (g.input("x0", TensorDesc::f32([m, WIDTHS[0]])), WIDTHS[0]),
        (g.input("x1", TensorDesc::f32([m, WIDTHS[1]])), WIDTHS[1]),
    ];
    for (i, &(what, a, b)) in steps.iter().enumerate() {
        // Half the steps extend the newest tensor: chains after GEMMs.
        let pick = if a & 0x100 == 0 { tensors.len() - 1 } else { a as usize % tensors.len() };
        let (ta, wa) = tensors[pick].clone();
        let (tb, wb) = tensors[b as usize % tensors.len()].clone();
        let name = format!("n{i}");
        let full = |w: usize| TensorDesc::f32([m, w]);
        let matmul = |g: &mut CompilerGraph, x: TensorRef, k: usize, n: usize, tag: &str| {
            let w = g.weight(format!("{name}.{tag}"), TensorDesc::f32([k, n]));
            let y = g.node(
                format!("{name}.{tag}"),
                CompilerOp::matmul(MatMulParams::new(m, n, k)),
                vec![x, w],
                full(n),
            );
            (y, n)
        };
        let out = match what % 11 {
            0 => {
                let op = match b % 6 {
                    0 => CompilerOp::new(OpKind::Silu),
                    1 => CompilerOp::new(OpKind::Gelu),
                    2 => CompilerOp::new(OpKind::Relu),
                    3 => CompilerOp::new(OpKind::Tanh),
                    4 => CompilerOp::new(OpKind::Sigmoid),
                    _ => CompilerOp::scale(0.5 + f32::from(b % 5) * 0.25),
                };
                vec![(g.node(name, op, vec![ta], full(wa)), wa)]
            }
            1 => {
                let kind = [OpKind::Add, OpKind::Mul, OpKind::SwiGlu][b as usize % 3];
                let other = if wb == wa { tb } else { ta.clone() };
                vec![(g.node(name, CompilerOp::new(kind), vec![ta, other], full(wa)), wa)]
            }
            2 => {
                let bias = g.weight(format!("{name}.b"), TensorDesc::f32([wa]));
                vec![(g.node(name, CompilerOp::new(OpKind::BiasAdd), vec![ta, bias], full(wa)), wa)]
            }
            3 if b % 2 == 0 => {
                let w = g.weight(format!("{name}.w"), TensorDesc::f32([wa]));
                vec![(g.node(name, CompilerOp::rms_norm(1e-5), vec![ta, w], full(wa)), wa)]
            }
            3 => {
                let gamma = g.weight(format!("{name}.g"), TensorDesc::f32([wa]));
                let beta = g.weight(format!("{name}.b"), TensorDesc::f32([wa]));
                vec![(g.node(name, CompilerOp::layer_norm(1e-5), vec![ta, gamma, beta], full(wa)), wa)]
            }
            // Rotary embedding over heads of 8 (16 = 2 heads, 40 = 5).
            8 => {
                let cos = g.weight(format!("{name}.cos"), TensorDesc::f32([m, HEAD_DIM / 2]));
                let sin = g.weight(format!("{name}.sin"), TensorDesc::f32([m, HEAD_DIM / 2]));
                vec![(g.node(name, CompilerOp::rope(HEAD_DIM), vec![ta, cos, sin], full(wa)), wa)]
            }
            // A row reduction: a graph output nothing else reads.
            9 => {
                let kind = if b % 2 == 0 { OpKind::ReduceSum } else { OpKind::ReduceMax };
                let r = g.node(name, CompilerOp::new(kind), vec![ta], TensorDesc::f32([m, 1]));
                g.output(r);
                vec![]
            }
            4 => vec![matmul(&mut g, ta, wa, WIDTHS[b as usize % 2], "w")],
            5 => vec![(g.node(name, CompilerOp::softmax(), vec![ta], full(wa)), wa)],
            // Two GEMMs of one input: a shared-input group.
            6 => {
                let first = matmul(&mut g, ta.clone(), wa, WIDTHS[0], "p");
                vec![first, matmul(&mut g, ta, wa, WIDTHS[1], "q")]
            }
            // Attention over two interleaved heads of 8: softmax(Q·Kᵀ)·V with
            // Q = K = V = a (a 16-wide tensor; otherwise a ReLU). (7 and 10.)
            _ if wa != HEADS * HEAD_DIM => {
                vec![(g.node(name, CompilerOp::new(OpKind::Relu), vec![ta], full(wa)), wa)]
            }
            _ => {
                let heads = |p: MatMulParams| MatMulParams {
                    batch: HEADS,
                    a_layout: BatchLayout::Interleaved,
                    b_layout: BatchLayout::Interleaved,
                    ..p
                };
                let qk = MatMulParams {
                    transpose_b: true,
                    c_layout: BatchLayout::Stacked,
                    ..heads(MatMulParams::new(m, m, HEAD_DIM))
                };
                let scores = g.node(
                    format!("{name}.scores"),
                    CompilerOp::matmul(qk),
                    vec![ta.clone(), ta.clone()],
                    TensorDesc::f32([HEADS, m, m]),
                );
                let probs = g.node(
                    format!("{name}.probs"),
                    CompilerOp::softmax(),
                    vec![scores],
                    TensorDesc::f32([HEADS, m, m]),
                );
                let pv = MatMulParams {
                    a_layout: BatchLayout::Stacked,
                    b_layout: BatchLayout::Interleaved,
                    c_layout: BatchLayout::Interleaved,
                    batch: HEADS,
                    ..MatMulParams::new(m, HEAD_DIM, m)
                };
                vec![(g.node(format!("{name}.attn"), CompilerOp::matmul(pv), vec![probs, ta], full(wa)), wa)]
            }
        };
        tensors.extend(out);
    }
    support::output_unread_nodes(&mut g, 3);
    g
}

/// The detected profile and every preset whose ISA this host runs.
/// The host, every preset it can run, and every preset it cannot run with
/// each kernel class forced to an ISA the host runs (a zen5 preset with
/// AVX2 loops and matmuls runs on an AVX2 host with zen5's caches and
/// nominal ISA: a code generator that ignored its class's ISA would emit
/// AVX-512 and fail here). On an AVX-512 host the mixed pairs are included.
fn host_and_presets() -> Vec<DeviceProfile> {
    let host = DeviceProfile::detect().unwrap();
    let runnable: Vec<Isa> = Isa::ALL.into_iter().filter(|&i| host.features.supports(i)).collect();
    let mut v = vec![host.clone()];
    for name in PRESET_NAMES {
        let p = DeviceProfile::preset(name).unwrap();
        if host.features.supports(p.isa) {
            v.push(p.clone());
        }
        for &loops in runnable.iter().filter(|&&i| i <= p.isa) {
            for &matmul in runnable.iter().filter(|&&i| i <= p.isa) {
                if (loops, matmul) == (p.isa, p.isa) {
                    continue;
                }
                let mixed = p.clone().with_kernel_isa(KernelClass::Loops, loops).unwrap();
                v.push(mixed.with_kernel_isa(KernelClass::Matmul, matmul).unwrap());
            }
        }
    }
    v
}

fn check(g: &CompilerGraph, seed: u64) -> Result<(), TestCaseError> {
    let registry = ScalarOpRegistry::global();
    let sem =
        g.analyse(registry).map_err(|e| TestCaseError::fail(format!("generated an invalid graph: {e}")))?;
    let mut rng = Rng(seed);
    // Inputs in [-1, 1]; weights scaled by 1/√k so values stay O(1).
    let inputs: Vec<Vec<f32>> = sem
        .graph
        .inputs
        .iter()
        .map(|(_, desc)| (0..desc.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect())
        .collect();
    let mut weights: HashMap<String, Vec<f32>> = HashMap::new();
    for t in &sem.tensors {
        if let TensorRef::Weight(name) = &t.source {
            let scale = 1.0 / (t.desc.shape[0] as f32).sqrt();
            let v = (0..t.desc.numel()).map(|_| rng.uniform(-1.0, 1.0) * scale + 0.25).collect();
            weights.insert(name.clone(), v);
        }
    }
    let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let weight = |name: &str| weights.get(name).map(|v| v.as_slice());
    let want = reference::evaluate(&sem, registry, &ins, &weight)
        .map_err(|e| TestCaseError::fail(format!("reference: {e}")))?;
    for profile in host_and_presets() {
        // Every scratchpad buffer followed by a 64-byte guard gap checked
        // after the run, the arena ending at a PROT_NONE page, the graph's
        // inputs and outputs each against one too.
        let options = FusionOptions { arena_guard_bytes: 64, ..FusionOptions::default() };
        let layer = compile_graph_with(g, &profile, registry, options)
            .map_err(|e| TestCaseError::fail(format!("{}: does not compile: {e}", profile.isa)))?;
        let prepared = layer.prepare_weights(&weight).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let guarded_ins: Vec<GuardedBuffer> =
            inputs.iter().map(|v| GuardedBuffer::new(v, Placement::AgainstEnd).unwrap()).collect();
        let mut guarded_outs: Vec<GuardedBuffer> = layer
            .output_lens()
            .into_iter()
            .map(|n| GuardedBuffer::filled(n, f32::NAN, Placement::AgainstEnd).unwrap())
            .collect();
        {
            let gins: Vec<&[f32]> = guarded_ins.iter().map(|b| b.as_slice()).collect();
            let mut gouts: Vec<&mut [f32]> = guarded_outs.iter_mut().map(|b| b.as_mut_slice()).collect();
            layer.run_checked(&prepared, &gins, &mut gouts, &mut LayerWorkspace::guarded()).map_err(|e| {
                TestCaseError::fail(format!("{}: {e}; plan\n{}", profile.isa, layer.plan().explain(g)))
            })?;
        }
        prop_assert!(
            guarded_outs.iter().chain(&guarded_ins).all(GuardedBuffer::canary_intact),
            "wrote next to an operand"
        );
        let got: Vec<Vec<f32>> = guarded_outs.iter().map(|b| b.as_slice().to_vec()).collect();
        for (o, (gv, wv)) in got.iter().zip(&want).enumerate() {
            oracle::check(gv, wv, &[], &oracle::Tolerance::composed(2e-4)).map_err(|e| {
                TestCaseError::fail(format!(
                    "{} (profile {}): output {o} ({}){e}; plan\n{}",
                    profile.isa,
                    profile.name,
                    sem.graph.outputs[o],
                    layer.plan().explain(g)
                ))
            })?;
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, .. ProptestConfig::default() })]

    #[test]
    fn compiled_random_graphs_equal_node_by_node_reference_evaluation(
        steps in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..14),
        // Mostly a few rows; sometimes more than one MC block of the GEMM.
        m in prop_oneof![4 => 1usize..10, 1 => Just(97usize), 1 => Just(130usize)],
        seed in any::<u64>(),
    ) {
        check(&random_graph(&steps, m), seed | 1)?;
    }
}

/// Compiles and runs `g` with `registry` (weights and inputs from `seed`).
fn compile_and_run(g: &CompilerGraph, registry: &ScalarOpRegistry, seed: u64) -> Vec<Vec<f32>> {
    let profile = DeviceProfile::detect().unwrap();
    let layer = compile_graph(g, &profile, registry).unwrap();
    let mut rng = Rng(seed);
    let weights: HashMap<String, Vec<f32>> = g
        .weights
        .iter()
        .map(|(name, d)| (name.clone(), (0..d.numel()).map(|_| rng.uniform(-0.5, 0.5)).collect()))
        .collect();
    let inputs: Vec<Vec<f32>> =
        g.inputs.iter().map(|(_, d)| (0..d.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect()).collect();
    let prepared = layer.prepare_weights(&|n: &str| weights.get(n).map(|v| v.as_slice())).unwrap();
    let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    layer.run(&prepared, &ins).unwrap()
}

#[test]
fn compiling_and_running_from_many_threads_matches_one_thread() {
    // A fresh registry: the first traces are computed by racing threads.
    let registry = ScalarOpRegistry::with_builtins();
    let mut rng = Rng(0xc0c0);
    let graphs: Vec<CompilerGraph> = (0..23) // prime: every stride below visits all
        .map(|_| {
            let steps: Vec<Step> = (0..1 + rng.next_u64() % 10)
                .map(|_| (rng.next_u64() as u8, rng.next_u64() as u16, rng.next_u64() as u16))
                .collect();
            random_graph(&steps, 1 + (rng.next_u64() % 9) as usize)
        })
        .collect();
    let results: Vec<Vec<Vec<Vec<f32>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (graphs, registry) = (&graphs, &registry);
                s.spawn(move || {
                    // Each thread walks the graphs in its own order.
                    let mut out = vec![Vec::new(); graphs.len()];
                    for i in 0..graphs.len() {
                        let j = (i * (2 * t + 1) + t) % graphs.len();
                        out[j] = compile_and_run(&graphs[j], registry, j as u64);
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (j, g) in graphs.iter().enumerate() {
        let alone = compile_and_run(g, &registry, j as u64);
        for (t, r) in results.iter().enumerate() {
            let same = r[j]
                .iter()
                .zip(&alone)
                .all(|(a, b)| a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
            assert!(same, "graph {j}: thread {t} differs from a single-threaded run");
        }
    }
}
