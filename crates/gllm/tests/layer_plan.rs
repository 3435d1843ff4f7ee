//! The LLaMA decoder layer graph: valid, and planned differently per device.

use gllm::layer_graph::{decoder_layer, decoder_stack};
use gllm::LlamaConfig;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{fuse, FusionPlan, ProducerPlacement};
use gllm_kernels::graph::CompilerGraph;

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
        text.contains("`blk0.ffn_silu` (silu) rejected as epilogue: needs 5 scratch registers, the 6×16 microkernel leaves 1"),
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
    let one = plan(&decoder_stack(&cfg, 16, 1), "zen5");
    let four = plan(&decoder_stack(&cfg, 16, 4), "zen5");
    assert!(four.buffers.naive_bytes > 3 * one.buffers.naive_bytes);
    // Each layer's intermediates die before the next layer's peak.
    assert!(four.buffers.scratchpad_bytes <= one.buffers.scratchpad_bytes + (16 * 576 * 4) * 2);
}

#[test]
fn every_non_gemm_group_of_a_layer_compiles_and_runs() {
    use gllm_kernels::codegen::group::CompiledGroup;
    use gllm_kernels::device::Isa;
    use gllm_kernels::fusion::FusionStrategy;
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
        let p = fuse(&g, &profile).unwrap();
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
