//! A person-readable rendering of a plan: what runs as one kernel, how it is
//! tiled and threaded, where intermediates live, and why.

use super::planner::fmt_bytes;
use super::{
    BufferPurpose, EpilogueOp, FusionGroup, FusionPlan, FusionStrategy, GemmVariant, ProducerPlacement,
};
use crate::graph::{CompilerGraph, NodeId, TensorRef};
use std::fmt::Write;

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

impl FusionGroup {
    /// The group's nodes in execution order as people read them:
    /// ``kind `name` → kind `name` …`` (`explain`'s group line, and the label
    /// [`crate::runtime::profile`] accounts the group's time under).
    pub fn label(&self, graph: &CompilerGraph) -> String {
        let names: Vec<String> = self
            .nodes
            .iter()
            .map(|&n| format!("{} `{}`", graph.nodes[n].op.kind, graph.nodes[n].name))
            .collect();
        names.join(" → ")
    }
}

impl FusionPlan {
    /// Renders the plan with the node and tensor names of `graph` (the graph
    /// it was planned from).
    pub fn explain(&self, graph: &CompilerGraph) -> String {
        let node = |n: NodeId| format!("{} `{}`", graph.nodes[n].op.kind, graph.nodes[n].name);
        let b = &self.blocking;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Fusion plan for {} ({}, L1d {}, {} thread{})",
            self.profile,
            crate::device::isa_summary(&self.isas),
            fmt_bytes(self.l1d_bytes),
            self.threads,
            if self.threads == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            s,
            "GEMM microkernel {}×{}: {} accumulators, {} register{} free for epilogues; KC {}, MC {}, NC {}",
            b.mr,
            b.nr,
            b.accumulators,
            b.spare_regs,
            if b.spare_regs == 1 { "" } else { "s" },
            b.kc,
            b.mc,
            b.nc
        );
        let _ = writeln!(s, "{} nodes in {} groups\n", graph.nodes.len(), self.groups.len());
        for g in &self.groups {
            let _ = writeln!(s, "group {:>3}  {:<17} {}", g.id, g.strategy.name(), g.label(graph));
            let pad = "           ";
            match &g.strategy {
                FusionStrategy::Gemm(f) => {
                    for m in &f.members {
                        let p = graph.nodes[m.node].op.matmul_params().expect("GEMM params");
                        let tiles = match f.variant {
                            GemmVariant::Gemv => "GEMV (one row, B streamed once)".to_string(),
                            GemmVariant::Blocked => format!(
                                "tiles MC {} × KC {} × NC {}",
                                b.mc.min(round_up(p.m, b.mr)),
                                b.kc.min(p.k),
                                b.nc.min(round_up(p.n, b.nr))
                            ),
                        };
                        let batch = if p.batch > 1 { format!("{} × ", p.batch) } else { String::new() };
                        let _ = writeln!(
                            s,
                            "{pad}{}: {batch}[{}×{}]·[{}×{}]{}, {tiles}",
                            graph.nodes[m.node].name,
                            p.m,
                            p.k,
                            p.k,
                            p.n,
                            if p.transpose_b { "ᵀ" } else { "" }
                        );
                        if !m.epilogue.is_empty() {
                            let _ = writeln!(s, "{pad}  epilogue: {}", epilogue(graph, &m.epilogue));
                        }
                    }
                    if let Some(p) = &f.producer {
                        if let ProducerPlacement::TileLevelFusion { tile_rows, scratch_bytes } = p.placement {
                            let _ = writeln!(
                                s,
                                "{pad}{} tiled into the MC loop: {tile_rows} rows per tile, {} tile scratch",
                                node(p.node),
                                fmt_bytes(scratch_bytes)
                            );
                        }
                    }
                }
                FusionStrategy::RowFusion { epilogue: e, .. } => {
                    let _ = writeln!(s, "{pad}before the store: {}", epilogue(graph, e));
                }
                FusionStrategy::LoopFusion | FusionStrategy::Standalone => {}
            }
            let _ = writeln!(s, "{pad}parallel: {}", g.parallel);
            for r in &g.reasons {
                let _ = writeln!(s, "{pad}why: {r}");
            }
        }
        let bp = &self.buffers;
        let _ = writeln!(
            s,
            "\nscratchpad: {} for {} buffers (without reuse: {})",
            fmt_bytes(bp.scratchpad_bytes),
            bp.allocations.len(),
            fmt_bytes(bp.naive_bytes)
        );
        let mut allocs: Vec<_> = bp.allocations.iter().collect();
        allocs.sort_by_key(|a| (a.first_group, a.offset));
        for a in allocs {
            let what = match a.purpose {
                BufferPurpose::Tensor(t) => tensor_name(graph, self, t),
                BufferPurpose::TileScratch { group } => format!("tile scratch of group {group}"),
            };
            let reuse = a.in_place_of.map(|t| format!(" (in place of {})", tensor_name(graph, self, t)));
            let _ = writeln!(
                s,
                "  @{:>10}  {:>10}  groups {:>3}..={:<3}  {what}{}",
                a.offset,
                fmt_bytes(a.size_bytes),
                a.first_group,
                a.last_group,
                reuse.unwrap_or_default()
            );
        }
        s
    }
}

fn epilogue(graph: &CompilerGraph, ops: &[EpilogueOp]) -> String {
    let parts: Vec<String> = ops
        .iter()
        .map(|e| {
            let n = &graph.nodes[e.node];
            let extra = match e.extra {
                Some(_) => {
                    let other = if e.data_input == 0 { 1 } else { 0 };
                    format!("(+{})", ref_name(graph, &n.inputs[other]))
                }
                None => String::new(),
            };
            format!("{}{extra} [{} scratch regs]", n.op.kind, e.scratch_regs)
        })
        .collect();
    parts.join(" → ")
}

pub(super) fn ref_name(graph: &CompilerGraph, r: &TensorRef) -> String {
    match r {
        TensorRef::Input(k) => graph.inputs[*k].0.clone(),
        TensorRef::Weight(w) => w.clone(),
        TensorRef::Node { node, .. } => graph.nodes[*node].name.clone(),
    }
}

fn tensor_name(_graph: &CompilerGraph, plan: &FusionPlan, t: usize) -> String {
    plan.tensor_names.get(t).cloned().unwrap_or_else(|| format!("tensor {t}"))
}
