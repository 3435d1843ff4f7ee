//! Phase 2: the plan follows the hardware, and holds its invariants on
//! random graphs.

use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{
    fuse, BufferPurpose, FusionPlan, FusionStrategy, ParallelStrategy, ProducerPlacement,
};
use gllm_kernels::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc, TensorRef};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use proptest::prelude::*;

mod support;

fn preset(name: &str) -> DeviceProfile {
    DeviceProfile::preset(name).unwrap()
}

/// x[m,k] → RMSNorm → MatMul(W[k,n]).
fn norm_then_gemm(m: usize, k: usize, n: usize) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let w = g.weight("norm.w", TensorDesc::f32([k]));
    let b = g.weight("proj.w", TensorDesc::f32([k, n]));
    let normed = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, w], TensorDesc::f32([m, k]));
    let y = g.node(
        "proj",
        CompilerOp::matmul(MatMulParams::new(m, n, k)),
        vec![normed, b],
        TensorDesc::f32([m, n]),
    );
    g.output(y);
    g
}

fn gemm_group(plan: &FusionPlan, gemm_node: usize) -> &gllm_kernels::fusion::GemmFusion {
    match &plan.group_of(gemm_node).unwrap().strategy {
        FusionStrategy::Gemm(f) => f,
        other => panic!("node {gemm_node} is in a {} group", other.name()),
    }
}

#[test]
fn rms_norm_into_gemm_follows_l1_size() {
    let zen5 = preset("zen5");
    assert_eq!(zen5.caches.l1d.size_bytes, 48 << 10);
    // K = 4096 f32: a row is 16 KiB ≤ 36 KiB → compute root, the norm is its own group.
    let g = norm_then_gemm(64, 4096, 256);
    let plan = fuse(&g, &zen5).unwrap();
    let f = gemm_group(&plan, 1);
    let p = f.producer.expect("the norm is recorded as the GEMM's producer");
    assert_eq!(p.node, 0);
    assert_eq!(p.row_bytes, 16 << 10);
    assert_eq!(p.placement, ProducerPlacement::ComputeRoot);
    assert_ne!(plan.group_of(0).unwrap().id, plan.group_of(1).unwrap().id);
    // The normed activation is a real buffer between the two groups.
    let allocs = &plan.buffers.allocations;
    assert_eq!(allocs.len(), 1);
    assert!(matches!(allocs[0].purpose, BufferPurpose::Tensor(_)));
    assert_eq!(allocs[0].size_bytes, 64 * 4096 * 4);

    // K = 16384: a row is 64 KiB > 36 KiB → the norm runs inside the MC loop.
    let g = norm_then_gemm(64, 16384, 256);
    let plan = fuse(&g, &zen5).unwrap();
    let f = gemm_group(&plan, 1);
    let mc = zen5.gemm_blocking().mc;
    let p = f.producer.unwrap();
    assert_eq!(
        p.placement,
        ProducerPlacement::TileLevelFusion { tile_rows: mc, scratch_bytes: 64 * 16384 * 4 }
    );
    assert_eq!(plan.group_of(0).unwrap().id, plan.group_of(1).unwrap().id);
    assert_eq!(plan.group_of(1).unwrap().strategy.name(), "TileLevelFusion");
    // No full-size normed buffer, only the tile scratch.
    let purposes: Vec<BufferPurpose> = plan.buffers.allocations.iter().map(|a| a.purpose).collect();
    assert_eq!(purposes, vec![BufferPurpose::TileScratch { group: 0 }]);
    assert_eq!(plan.buffers.scratchpad_bytes, 64 * 16384 * 4);
    // With M > MC the tile is MC rows.
    let plan = fuse(&norm_then_gemm(2000, 16384, 64), &zen5).unwrap();
    let p = gemm_group(&plan, 1).producer.unwrap();
    assert_eq!(
        p.placement,
        ProducerPlacement::TileLevelFusion { tile_rows: mc, scratch_bytes: mc * 16384 * 4 }
    );
}

#[test]
fn tile_fusion_threshold_is_three_quarters_of_l1() {
    // 48 KiB L1: 36 KiB = 9216 f32. Exactly at the limit stays compute root.
    let zen5 = preset("zen5");
    let at = fuse(&norm_then_gemm(8, 9216, 64), &zen5).unwrap();
    assert_eq!(gemm_group(&at, 1).producer.unwrap().placement, ProducerPlacement::ComputeRoot);
    let above = fuse(&norm_then_gemm(8, 9232, 64), &zen5).unwrap();
    assert!(matches!(
        gemm_group(&above, 1).producer.unwrap().placement,
        ProducerPlacement::TileLevelFusion { .. }
    ));
    // The same K = 8192 row (32 KiB) is tiled on a 32 KiB-L1 machine only.
    let g = norm_then_gemm(8, 8192, 64);
    let zen = fuse(&g, &zen5).unwrap();
    let hsw = fuse(&g, &preset("haswell")).unwrap();
    assert_eq!(gemm_group(&zen, 1).producer.unwrap().placement, ProducerPlacement::ComputeRoot);
    assert!(matches!(
        gemm_group(&hsw, 1).producer.unwrap().placement,
        ProducerPlacement::TileLevelFusion { tile_rows: 42, .. }
    ));
}

/// x → MatMul → `epilogue` op (→ output).
fn gemm_then(kind: OpKind) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([64, 256]));
    let w = g.weight("w", TensorDesc::f32([256, 512]));
    let y = g.node(
        "proj",
        CompilerOp::matmul(MatMulParams::new(64, 512, 256)),
        vec![x, w],
        TensorDesc::f32([64, 512]),
    );
    let z = g.node("act", CompilerOp::new(kind), vec![y], TensorDesc::f32([64, 512]));
    g.output(z);
    g
}

#[test]
fn epilogue_register_budget_depends_on_the_microkernel() {
    let g = gemm_then(OpKind::Silu);
    // AVX-512 12×32 leaves 8 registers after its k-loop; SiLU needs 5: injected.
    let plan = fuse(&g, &preset("zen5")).unwrap();
    let f = gemm_group(&plan, 0);
    assert_eq!(f.members[0].epilogue.len(), 1);
    assert_eq!(f.members[0].epilogue[0].node, 1);
    assert_eq!(f.members[0].epilogue[0].scratch_regs, 5);
    assert_eq!(plan.groups.len(), 1);
    assert!(plan.buffers.allocations.is_empty(), "the GEMM result never touches memory before SiLU");
    // AVX2 6×16 leaves 4: rejected, SiLU runs as its own pass.
    let plan = fuse(&g, &preset("haswell")).unwrap();
    assert!(gemm_group(&plan, 0).members[0].epilogue.is_empty());
    assert_eq!(plan.groups.len(), 2);
    let why = &plan.group_of(0).unwrap().reasons;
    assert!(
        why.iter().any(|r| r
            == "`act` (silu) rejected as epilogue: needs 5 scratch registers, the 6×16 microkernel leaves 4"),
        "{why:?}"
    );
    // The same profile with the AVX-512 ISA accepts it again: the register file decides.
    let plan = fuse(&g, &preset("skylake-x")).unwrap();
    assert_eq!(gemm_group(&plan, 0).members[0].epilogue.len(), 1);
    // A bias-like epilogue needs nothing and fits both.
    let mut g = gemm_then(OpKind::Relu);
    g.nodes[1].op = CompilerOp::scale(0.5);
    for p in ["zen5", "haswell"] {
        let plan = fuse(&g, &preset(p)).unwrap();
        assert_eq!(gemm_group(&plan, 0).members[0].epilogue.len(), 1, "{p}");
    }
}

#[test]
fn injective_ops_are_never_gemm_epilogues() {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([16, 64]));
    let cos = g.input("cos", TensorDesc::f32([16, 16]));
    let sin = g.input("sin", TensorDesc::f32([16, 16]));
    let w = g.weight("wq", TensorDesc::f32([64, 64]));
    let q =
        g.node("q", CompilerOp::matmul(MatMulParams::new(16, 64, 64)), vec![x, w], TensorDesc::f32([16, 64]));
    let r = g.node("rope", CompilerOp::rope(32), vec![q, cos, sin], TensorDesc::f32([16, 64]));
    let s = g.node("act", CompilerOp::new(OpKind::Silu), vec![r], TensorDesc::f32([16, 64]));
    g.output(s);
    let plan = fuse(&g, &preset("zen5")).unwrap();
    assert!(gemm_group(&plan, 0).members[0].epilogue.is_empty());
    // RoPE fuses into its elementwise consumer instead.
    let rope_group = plan.group_of(1).unwrap();
    assert!(matches!(rope_group.strategy, FusionStrategy::LoopFusion));
    assert_eq!(rope_group.nodes, vec![1, 2]);
}

#[test]
fn multi_consumer_producers_are_not_fused() {
    // silu's output feeds both mul and add: neither absorbs it.
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([1024]));
    let w = g.weight("w", TensorDesc::f32([1024]));
    let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![x], TensorDesc::f32([1024]));
    let b = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a.clone(), w], TensorDesc::f32([1024]));
    let c = g.node("add", CompilerOp::new(OpKind::Add), vec![b, a], TensorDesc::f32([1024]));
    g.output(c);
    let plan = fuse(&g, &preset("zen5")).unwrap();
    assert_eq!(plan.group_of(0).unwrap().nodes, vec![0]);
    assert_eq!(plan.group_of(1).unwrap().nodes, vec![1, 2]);
}

#[test]
fn loop_fusion_of_an_elementwise_chain() {
    // SiLU → VecMul(weight) → VecAdd(residual): one pass, intermediates in registers.
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([4096]));
    let res = g.input("res", TensorDesc::f32([4096]));
    let w = g.weight("w", TensorDesc::f32([4096]));
    let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![x], TensorDesc::f32([4096]));
    let b = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a, w], TensorDesc::f32([4096]));
    let c = g.node("add", CompilerOp::new(OpKind::Add), vec![b, res], TensorDesc::f32([4096]));
    g.output(c);
    let plan = fuse(&g, &preset("haswell")).unwrap();
    assert_eq!(plan.groups.len(), 1);
    let grp = &plan.groups[0];
    assert!(matches!(grp.strategy, FusionStrategy::LoopFusion));
    assert_eq!(grp.nodes, vec![0, 1, 2]);
    assert_eq!(grp.carried.len(), 2);
    assert_eq!(plan.buffers.scratchpad_bytes, 0);
    assert_eq!(grp.parallel, ParallelStrategy::Sequential, "16 KiB is not worth a second thread");
}

#[test]
fn shared_input_gemms_pack_once_and_tile_fuse_their_norm() {
    let (m, k) = (32, 16384);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let nw = g.weight("norm", TensorDesc::f32([k]));
    let normed = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, nw], TensorDesc::f32([m, k]));
    for (name, n) in [("q", 1024), ("k", 256), ("v", 256)] {
        let w = g.weight(name, TensorDesc::f32([k, n]));
        let y = g.node(
            name,
            CompilerOp::matmul(MatMulParams::new(m, n, k)),
            vec![normed.clone(), w],
            TensorDesc::f32([m, n]),
        );
        g.output(y);
    }
    let plan = fuse(&g, &preset("zen5")).unwrap();
    assert_eq!(plan.groups.len(), 1);
    let f = gemm_group(&plan, 1);
    assert_eq!(f.members.iter().map(|m| m.node).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(matches!(f.producer.unwrap().placement, ProducerPlacement::TileLevelFusion { .. }));
    assert_eq!(plan.groups[0].strategy.name(), "TileLevelFusion");
}

#[test]
fn parallel_strategy_per_group() {
    let zen5 = preset("zen5");
    // 64×512×256 is 16.8 MFLOP, just above the threshold: NC split in NR multiples.
    let plan = fuse(&gemm_then(OpKind::Relu), &zen5).unwrap();
    assert_eq!(plan.groups[0].parallel, ParallelStrategy::GemmNcSplit { threads: 2, cols_per_thread: 256 });
    // Small products run on one thread.
    let plan = fuse(&norm_then_gemm(8, 256, 64), &zen5).unwrap();
    assert_eq!(plan.group_of(1).unwrap().parallel, ParallelStrategy::Sequential);
    let plan = fuse(&norm_then_gemm(128, 4096, 4096), &zen5).unwrap();
    assert_eq!(
        plan.group_of(1).unwrap().parallel,
        ParallelStrategy::GemmNcSplit { threads: 2, cols_per_thread: 2048 }
    );
    // Norm over 128 rows × 4096: 4 MiB of traffic is below the measured threshold.
    assert_eq!(plan.group_of(0).unwrap().parallel, ParallelStrategy::Sequential);
    let plan = fuse(&norm_then_gemm(1024, 4096, 64), &zen5).unwrap();
    assert_eq!(
        plan.group_of(0).unwrap().parallel,
        ParallelStrategy::RowSplit { threads: 2, rows_per_thread: 512 }
    );
    // Narrow GEMM with many rows: M split in MR multiples.
    assert_eq!(
        plan.group_of(1).unwrap().parallel,
        ParallelStrategy::GemmMSplit { threads: 2, rows_per_thread: 516 }
    );
    // Elementwise over 16M elements: aligned to the vector width.
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([16_000_001]));
    let y = g.node("exp", CompilerOp::new(OpKind::Exp), vec![x], TensorDesc::f32([16_000_001]));
    g.output(y);
    let plan = fuse(&g, &preset("skylake-x")).unwrap();
    match plan.groups[0].parallel {
        ParallelStrategy::ElemSplit { threads: 16, elems_per_thread } => {
            assert_eq!(elems_per_thread % 16, 0);
            assert!(elems_per_thread * 16 >= 16_000_001);
        }
        other => panic!("{other:?}"),
    }
}

// ---------- property tests on random DAGs of registered ops ----------

/// Builds a random valid graph from a list of choices. Tensors all have
/// `rows` rows; widths vary through MatMuls.
fn random_graph(choices: &[(u8, u16, u16)], rows: usize) -> CompilerGraph {
    let mut g = CompilerGraph::new();
    // 12288 f32 (48 KiB rows) makes row producers candidates for tile fusion.
    let widths = [16usize, 48, 64, 12288];
    let mut tensors: Vec<(TensorRef, usize)> = Vec::new();
    tensors.push((g.input("x0", TensorDesc::f32([rows, 64])), 64));
    tensors.push((g.input("x1", TensorDesc::f32([rows, 64])), 64));
    let cos = g.input("cos", TensorDesc::f32([rows, 8]));
    let sin = g.input("sin", TensorDesc::f32([rows, 8]));
    for (i, &(op, a, b)) in choices.iter().enumerate() {
        let (ta, wa) = tensors[a as usize % tensors.len()].clone();
        let same: Vec<&(TensorRef, usize)> = tensors.iter().filter(|(_, w)| *w == wa).collect();
        let (tb, _) = same[b as usize % same.len()].clone();
        let out = |w: usize| TensorDesc::f32([rows, w]);
        let name = format!("n{i}");
        let (node_op, inputs, width) = match op % 12 {
            0 => (CompilerOp::new(OpKind::Silu), vec![ta], wa),
            1 => (CompilerOp::new(OpKind::Gelu), vec![ta], wa),
            2 => (CompilerOp::new(OpKind::Relu), vec![ta], wa),
            3 => (CompilerOp::new(OpKind::Add), vec![ta, tb], wa),
            4 => (CompilerOp::new(OpKind::Mul), vec![ta, tb], wa),
            5 => {
                let w = g.weight(format!("{name}.bias"), TensorDesc::f32([wa]));
                (CompilerOp::new(OpKind::BiasAdd), vec![ta, w], wa)
            }
            6 => {
                let w = g.weight(format!("{name}.w"), TensorDesc::f32([wa]));
                (CompilerOp::rms_norm(1e-5), vec![ta, w], wa)
            }
            7 => (CompilerOp::softmax(), vec![ta], wa),
            8 | 9 => {
                let n = widths[b as usize % widths.len()];
                let w = g.weight(format!("{name}.w"), TensorDesc::f32([wa, n]));
                (CompilerOp::matmul(MatMulParams::new(rows, n, wa)), vec![ta, w], n)
            }
            10 => (CompilerOp::rope(16), vec![ta, cos.clone(), sin.clone()], wa),
            _ => (CompilerOp::new(OpKind::SwiGlu), vec![ta, tb], wa),
        };
        let r = g.node(name, node_op, inputs, out(width));
        tensors.push((r, width));
    }
    support::output_unread_nodes(&mut g, 5);
    g
}

fn check_invariants(g: &CompilerGraph, plan: &FusionPlan) -> Result<(), TestCaseError> {
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    // Every node in exactly one group.
    let mut seen = vec![0; g.nodes.len()];
    for grp in &plan.groups {
        for &n in &grp.nodes {
            seen[n] += 1;
        }
    }
    prop_assert!(seen.iter().all(|&c| c == 1), "node group counts {:?}", seen);
    let mut group_of = vec![0; g.nodes.len()];
    for (i, grp) in plan.groups.iter().enumerate() {
        prop_assert_eq!(grp.id, i);
        for &n in &grp.nodes {
            group_of[n] = i;
        }
    }
    // Groups in topological order; within a group, nodes after their producers.
    for grp in &plan.groups {
        for (pos, &n) in grp.nodes.iter().enumerate() {
            for &t in &sem.nodes[n].inputs {
                if let Some(p) = sem.tensors[t].producer {
                    prop_assert!(group_of[p] <= grp.id, "group {} reads group {}", grp.id, group_of[p]);
                    if group_of[p] == grp.id {
                        let ppos = grp.nodes.iter().position(|&x| x == p).unwrap();
                        prop_assert!(ppos < pos, "node {} before its producer {} in group {}", n, p, grp.id);
                    }
                }
            }
        }
    }
    // Every tensor crossing groups (or read as an in-group extra) has memory.
    for t in &sem.tensors {
        let Some(p) = t.producer else { continue };
        let crosses = t.consumers.iter().any(|&(c, _)| group_of[c] != group_of[p]);
        if crosses && !t.is_graph_output {
            prop_assert!(
                plan.buffers.tensor(t.id).is_some(),
                "tensor {} crosses groups without a buffer",
                t.id
            );
        }
        if t.is_graph_output {
            prop_assert!(plan.buffers.tensor(t.id).is_none(), "graph outputs live in caller memory");
        }
    }
    // No two simultaneously live buffers overlap (unless one overwrites the other in place).
    let allocs = &plan.buffers.allocations;
    for (i, a) in allocs.iter().enumerate() {
        prop_assert!(a.end() <= plan.buffers.scratchpad_bytes);
        prop_assert_eq!(a.offset % 64, 0);
        for b in &allocs[i + 1..] {
            let live_together = a.first_group <= b.last_group && b.first_group <= a.last_group;
            let overlap = a.offset < b.end() && b.offset < a.end() && a.size_bytes > 0 && b.size_bytes > 0;
            if live_together && overlap {
                prop_assert_eq!(a.slot, b.slot, "buffers {:?} and {:?} overlap while live", a, b);
            }
        }
        if let Some(src) = a.in_place_of {
            let s = plan.buffers.tensor(src).unwrap();
            prop_assert_eq!((s.offset, s.size_bytes), (a.offset, a.size_bytes));
            prop_assert_eq!(s.last_group, a.first_group);
        }
    }
    prop_assert!(plan.buffers.scratchpad_bytes <= plan.buffers.naive_bytes);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    #[test]
    fn plans_of_random_graphs_are_valid(
        choices in prop::collection::vec((any::<u8>(), any::<u16>(), any::<u16>()), 1..40),
        rows in prop::sample::select(vec![1usize, 3, 64, 1000]),
        profile in prop::sample::select(vec!["haswell", "skylake-x", "zen5"]),
    ) {
        let g = random_graph(&choices, rows);
        let plan = fuse(&g, &preset(profile)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_invariants(&g, &plan)?;
        // Explain renders every group.
        let text = plan.explain(&g);
        prop_assert!(text.matches("\ngroup ").count() == plan.groups.len(), "{}", text);
    }
}
