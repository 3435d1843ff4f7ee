//! The LLaMA decoder layer graph: valid, and planned differently per device.

use gllm::layer_graph::{decoder_layer, decoder_stack};
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{fuse, FusionPlan, ProducerPlacement};
use gllm_kernels::graph::CompilerGraph;
use gllm_kernels::oracle::{self, Tolerance};

fn plan(g: &CompilerGraph, preset: &str) -> FusionPlan {
    fuse(g, &DeviceProfile::preset(preset).unwrap()).unwrap_or_else(|e| panic!("{e}"))
}

fn node(g: &CompilerGraph, name: &str) -> usize {
    g.nodes.iter().position(|n| n.name == name).unwrap_or_else(|| panic!("no node {name}"))
}

/// (strategy name, node names) per group: the shape of a plan.
fn summary(g: &CompilerGraph, p: &FusionPlan) -> Vec<(String, Vec<String>)> {
    p.groups
        .iter()
        .map(|grp| {
            (grp.strategy.name().to_string(), grp.nodes.iter().map(|&n| g.nodes[n].name.clone()).collect())
        })
        .collect()
}

#[test]
fn every_model_layer_validates_and_plans() {
    for name in gllm::MODEL_NAMES {
        let cfg = LlamaConfig::by_name(name).unwrap();
        for seq in [1, 7, 128] {
            let g = decoder_layer(&cfg, seq);
            for preset in gllm_kernels::device::PRESET_NAMES {
                let p = plan(&g, preset);
                assert_eq!(p.groups.iter().map(|grp| grp.nodes.len()).sum::<usize>(), g.nodes.len());
            }
        }
    }
}

#[test]
fn llama_7b_layer_differs_between_avx512_and_avx2() {
    let g = decoder_layer(&LlamaConfig::llama_7b(), 128);
    let zen5 = plan(&g, "zen5");
    let hsw = plan(&g, "haswell");
    assert_ne!(summary(&g, &zen5), summary(&g, &hsw));
    // On zen5 SiLU and the up-projection product ride on the gate GEMM's accumulators.
    let silu = node(&g, "blk0.ffn_silu");
    let gate = node(&g, "blk0.ffn_gate");
    assert_eq!(zen5.group_of(silu).unwrap().id, zen5.group_of(gate).unwrap().id);
    // On haswell the 6×16 kernel leaves one register, so SiLU · up is a separate fused loop.
    let hsw_silu = hsw.group_of(silu).unwrap();
    assert_ne!(hsw_silu.id, hsw.group_of(gate).unwrap().id);
    assert_eq!(hsw_silu.strategy.name(), "LoopFusion");
    // explain says why.
    let text = hsw.explain(&g);
    assert!(
        text.contains("`blk0.ffn_silu` (silu) rejected as epilogue: needs 5 scratch registers, the 6×16 microkernel leaves 4"),
        "{text}"
    );
    assert!(
        text.contains("ComputeRoot for `blk0.attn_norm` (rms_norm): a row is 16 KiB ≤ 0.75 × L1d = 24 KiB")
    );
    let text = zen5.explain(&g);
    assert!(text.contains("epilogue: silu [5 scratch regs] → mul(+blk0.ffn_up) [0 scratch regs]"), "{text}");
    assert!(text.contains("share input A: packed once"));
    assert!(text.contains("scratchpad: "));
}

#[test]
fn llama_70b_norm_is_tile_fused_only_on_the_smaller_l1() {
    // Hidden 8192 f32: a 32 KiB row. 0.75 × 48 KiB = 36 KiB keeps it in L1 on
    // zen5; 0.75 × 32 KiB = 24 KiB does not on skylake-x.
    let g = decoder_layer(&LlamaConfig::llama_70b(), 16);
    let q = node(&g, "blk0.attn_q");
    let placement = |p: &FusionPlan| match &p.group_of(q).unwrap().strategy {
        gllm_kernels::fusion::FusionStrategy::Gemm(f) => f.producer.unwrap().placement,
        _ => panic!("Q projection is not in a GEMM group"),
    };
    assert_eq!(placement(&plan(&g, "zen5")), ProducerPlacement::ComputeRoot);
    assert!(matches!(placement(&plan(&g, "skylake-x")), ProducerPlacement::TileLevelFusion { .. }));
    assert!(plan(&g, "skylake-x").explain(&g).contains("TileLevelFusion of `blk0.attn_norm`"));
}

#[test]
fn stacked_layers_reuse_the_scratchpad() {
    let cfg = LlamaConfig::smollm2_135m();
    let one = plan(&decoder_stack(&cfg, 16, 1).unwrap(), "zen5");
    let four = plan(&decoder_stack(&cfg, 16, 4).unwrap(), "zen5");
    assert!(four.buffers.naive_bytes > 3 * one.buffers.naive_bytes);
    // Each layer's intermediates die before the next layer's peak.
    assert!(four.buffers.scratchpad_bytes <= one.buffers.scratchpad_bytes + (16 * 576 * 4) * 2);
}

#[test]
fn every_non_gemm_group_of_a_layer_compiles_and_runs() {
    use gllm_kernels::codegen::group::CompiledGroup;
    use gllm_kernels::device::Isa;
    use gllm_kernels::fusion::{plan, FusionStrategy};
    use gllm_kernels::scalar::ScalarOpRegistry;
    let host = DeviceProfile::detect().unwrap();
    let mut isas = vec![Isa::Avx2];
    if host.features.supports(Isa::Avx512) {
        isas.push(Isa::Avx512);
    }
    let g = decoder_layer(&LlamaConfig::smollm2_135m(), 7);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    for isa in isas {
        let profile = host.clone().with_isa(isa).unwrap();
        let p = plan(&sem, &profile);
        let mut compiled = 0;
        for grp in p.groups.iter().filter(|grp| !matches!(grp.strategy, FusionStrategy::Gemm(_))) {
            let cg = CompiledGroup::compile(&sem, grp, &profile)
                .unwrap_or_else(|e| panic!("group {}: {e}", grp.id));
            let data: Vec<Vec<f32>> = cg
                .inputs()
                .iter()
                .map(|&t| (0..sem.tensors[t].desc.numel()).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect())
                .collect();
            let ins: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
            let mut out = vec![f32::NAN; sem.tensors[cg.output()].desc.numel()];
            cg.run(&ins, &mut out).unwrap();
            assert!(out.iter().all(|v| v.is_finite()), "group {} produced non-finite values", grp.id);
            compiled += 1;
        }
        assert!(compiled >= 5, "norms, ropes and softmax at least");
    }
}

/// A whole SmolLM2-shaped decoder layer (random weights) planned for this
/// machine and executed group by group through the JIT — norms, projections
/// with shared input, RoPE, attention GEMMs with the scale·mask epilogue,
/// softmax, SwiGLU, residuals — against node-by-node evaluation of the traces
/// and a plain batched matmul.
#[test]
fn a_decoder_layer_runs_through_the_jit() {
    use gllm_kernels::codegen::gemm::{CompiledGemmGroup, PreparedB};
    use gllm_kernels::codegen::group::CompiledGroup;
    use gllm_kernels::fusion::FusionStrategy;
    use gllm_kernels::graph::{BatchLayout, OpParams, TensorRef};
    use gllm_kernels::scalar::ScalarOpRegistry;
    use gllm_kernels::trace::ComputePattern;
    use std::collections::HashMap;

    let cfg = LlamaConfig::smollm2_135m();
    let seq = 5;
    let g = decoder_layer(&cfg, seq);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    // Deterministic inputs and weights, small enough to keep activations O(1).
    let data = gllm::synthetic::SyntheticData::for_graph(&g, seq, 0x1234_5678);
    let mut values: HashMap<usize, Vec<f32>> = HashMap::new();
    for t in sem.tensors.iter().filter(|t| t.producer.is_none()) {
        let v = match &t.source {
            TensorRef::Input(k) => data.inputs[*k].clone(),
            TensorRef::Weight(name) => data.weights[name].clone(),
            TensorRef::Node { .. } => unreachable!("tensors without a producer are inputs or weights"),
        };
        values.insert(t.id, v);
    }

    // Reference: node by node.
    let mut want = values.clone();
    for &id in &sem.order {
        let node = &sem.nodes[id];
        let cnode = sem.node(id);
        let out_desc = &sem.tensors[node.outputs[0]].desc;
        let ins: Vec<&Vec<f32>> = node.inputs.iter().map(|t| &want[t]).collect();
        let params = cnode.op.params.scalar_args();
        let mut out = vec![0.0f32; out_desc.numel()];
        match (&node.trace.pattern, &cnode.op.params) {
            (ComputePattern::Gemm { .. }, OpParams::MatMul(p)) => {
                let at = |layout: BatchLayout,
                          count: usize,
                          i: usize,
                          rows: usize,
                          cols: usize,
                          r: usize,
                          c: usize| match layout {
                    BatchLayout::Stacked => (i * rows + r) * cols + c,
                    BatchLayout::Interleaved => r * (count * cols) + i * cols + c,
                };
                let bb = p.batch / p.b_shared_by;
                for i in 0..p.batch {
                    for r in 0..p.m {
                        for c in 0..p.n {
                            let mut s = 0.0f32;
                            for x in 0..p.k {
                                let a = ins[0][at(p.a_layout, p.batch, i, p.m, p.k, r, x)];
                                let b = if p.transpose_b {
                                    ins[1][at(p.b_layout, bb, i / p.b_shared_by, p.n, p.k, c, x)]
                                } else {
                                    ins[1][at(p.b_layout, bb, i / p.b_shared_by, p.k, p.n, x, c)]
                                };
                                s += a * b;
                            }
                            out[at(p.c_layout, p.batch, i, p.m, p.n, r, c)] = s;
                        }
                    }
                }
            }
            (_, OpParams::PairedHalves { period: head_dim }) => {
                let half = head_dim / 2;
                let width = out_desc.row_len();
                for t in 0..out_desc.rows() {
                    for h in 0..width / head_dim {
                        let b = t * width + h * head_dim;
                        let (x0, x1) = (&ins[0][b..b + half], &ins[0][b + half..b + head_dim]);
                        let (c, s) = (&ins[1][t * half..(t + 1) * half], &ins[2][t * half..(t + 1) * half]);
                        let (mut o0, mut o1) = (vec![0.0; half], vec![0.0; half]);
                        node.trace.eval(&[x0, x1, c, s], &[], &[], &mut [&mut o0, &mut o1]).unwrap();
                        out[b..b + half].copy_from_slice(&o0);
                        out[b + half..b + head_dim].copy_from_slice(&o1);
                    }
                }
            }
            (ComputePattern::NormLike, _) => {
                let n = out_desc.row_len();
                for r in 0..out_desc.rows() {
                    let row_ins: Vec<&[f32]> = ins
                        .iter()
                        .map(|v| if v.len() == n { &v[..] } else { &v[r * n..(r + 1) * n] })
                        .collect();
                    node.trace.eval(&row_ins, &params, &[n], &mut [&mut out[r * n..(r + 1) * n]]).unwrap();
                }
            }
            _ => {
                let len = out.len();
                let full: Vec<Vec<f32>> =
                    ins.iter().map(|v| (0..len).map(|x| v[x % v.len()]).collect()).collect();
                let refs: Vec<&[f32]> = full.iter().map(|v| v.as_slice()).collect();
                node.trace.eval(&refs, &params, &[], &mut [&mut out]).unwrap();
            }
        }
        want.insert(node.outputs[0], out);
    }

    // The JIT, group by group as planned, on every ISA this CPU runs (the
    // plans differ: SiLU·up is a GEMM epilogue on AVX-512, a fused loop on AVX2).
    let host = DeviceProfile::detect().unwrap();
    let isas: Vec<gllm_kernels::device::Isa> =
        [gllm_kernels::device::Isa::Avx2, gllm_kernels::device::Isa::Avx512]
            .into_iter()
            .filter(|&i| host.features.supports(i))
            .collect();
    for isa in isas {
        let profile = host.clone().with_isa(isa).unwrap();
        let p = gllm_kernels::fusion::plan(&sem, &profile);
        let mut got = values.clone();
        for group in &p.groups {
            if let FusionStrategy::Gemm(f) = &group.strategy {
                let cg = CompiledGemmGroup::compile(&sem, group, &profile)
                    .unwrap_or_else(|e| panic!("group {}: {e}", group.id));
                let packed: Vec<_> = if cg.is_batched() {
                    Vec::new()
                } else {
                    f.members
                        .iter()
                        .map(|mb| {
                            let w = sem.nodes[mb.node].inputs[1];
                            let shape = &sem.tensors[w].desc.shape;
                            PreparedB::Packed(
                                cg.member_kernel(0).unwrap().pack_b(&got[&w], shape[0], shape[1]).unwrap(),
                            )
                        })
                        .collect()
                };
                let packed_refs: Vec<_> = packed.iter().collect();
                let mut bufs: Vec<Vec<f32>> =
                    cg.outputs().iter().map(|&t| vec![f32::NAN; sem.tensors[t].desc.numel()]).collect();
                {
                    let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                    let lookup = |t: usize| got[&t].as_slice();
                    cg.run(&lookup, &packed_refs, &mut outs)
                        .unwrap_or_else(|e| panic!("group {}: {e}", group.id));
                }
                for (t, b) in cg.outputs().into_iter().zip(bufs) {
                    got.insert(t, b);
                }
            } else {
                let cg = CompiledGroup::compile(&sem, group, &profile)
                    .unwrap_or_else(|e| panic!("group {}: {e}", group.id));
                let ins: Vec<&[f32]> = cg.inputs().iter().map(|t| got[t].as_slice()).collect();
                let mut out = vec![f32::NAN; sem.tensors[cg.output()].desc.numel()];
                cg.run(&ins, &mut out).unwrap();
                got.insert(cg.output(), out);
            }
        }
        // The same through the library entry point: compile_graph → prepare_weights → run.
        let layer =
            gllm_kernels::codegen::layer::compile_graph(&g, &profile, ScalarOpRegistry::global()).unwrap();
        let by_name: HashMap<String, &Vec<f32>> = sem
            .tensors
            .iter()
            .filter_map(|t| match &t.source {
                TensorRef::Weight(n) => Some((n.clone(), &values[&t.id])),
                _ => None,
            })
            .collect();
        let prepared = layer.prepare_weights(&|name: &str| by_name.get(name).map(|v| v.as_slice())).unwrap();
        let mut input_ids: Vec<(usize, usize)> = sem
            .tensors
            .iter()
            .filter_map(|t| match t.source {
                gllm_kernels::graph::TensorRef::Input(k) => Some((k, t.id)),
                _ => None,
            })
            .collect();
        input_ids.sort_unstable();
        let inputs: Vec<&[f32]> = input_ids.iter().map(|(_, id)| values[id].as_slice()).collect();
        let outputs = layer.run(&prepared, &inputs).unwrap();
        let out_ids: Vec<usize> =
            g.outputs.iter().map(|r| sem.tensors.iter().position(|t| &t.source == r).unwrap()).collect();
        assert_eq!(outputs.len(), out_ids.len());
        for (o, id) in outputs.iter().zip(&out_ids) {
            oracle::check(o, &got[id], &[], &Tolerance::EXACT)
                .unwrap_or_else(|e| panic!("{isa}: compile_graph differs from the groups run one by one{e}"));
        }
        for t in sem.tensors.iter().filter(|t| t.is_graph_output) {
            let (a, b) = (&got[&t.id], &want[&t.id]);
            assert!(a.iter().all(|x| x.is_finite()), "{isa}: a non-finite output");
            oracle::check(a, b, &[], &Tolerance::composed(1e-4))
                .unwrap_or_else(|e| panic!("{isa}: output tensor {}{e}", t.id));
        }
    }
}

#[test]
fn absurd_stack_sizes_are_errors_naming_the_limit() {
    let cfg = LlamaConfig::tiny();
    // `gllm explain --layers 1000000000`: refused before anything is built.
    let e = decoder_stack(&cfg, 16, 1_000_000_000).unwrap_err().to_string();
    assert!(e.starts_with("1000000000 decoder layers of") && e.contains("limit of 1048576 nodes"), "{e}");
    assert!(decoder_stack(&cfg, 16, usize::MAX).is_err(), "no overflow in the count");
    // `--seq 100000000000`: shapes are numbers until validation refuses them.
    let g = decoder_stack(&cfg, 100_000_000_000, 1).unwrap();
    let e = g.analyse(gllm_kernels::scalar::ScalarOpRegistry::global()).unwrap_err().to_string();
    assert!(e.contains("more than the limit of 1099511627776 bytes per tensor"), "{e}");
}
