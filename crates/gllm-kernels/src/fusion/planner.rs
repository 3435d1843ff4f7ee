//! The grouping passes of [`super::fuse`]: GEMM groups first (they claim
//! tile-fused producers and epilogues), then row ops with their elementwise
//! consumers, then elementwise/injective chains, then whatever is left.

use super::parallel::{self, ParallelStrategy};
use super::{compose, pressure};
use super::{
    EpilogueOp, FusionGroup, FusionStrategy, GemmFusion, GemmMember, GemmVariant, ProducerPlacement,
    RowProducer,
};
use crate::device::{DeviceProfile, GemmBlocking, KernelClass};
use crate::graph::{NodeId, OpParams, SemanticGraph, TensorId, TensorRef};
use crate::trace::{ComputePattern, OpClass};

/// A producer row larger than this fraction of L1d is tile-fused into the GEMM.
const TILE_FUSION_L1_FRACTION: (usize, usize) = (3, 4);

struct Draft {
    nodes: Vec<NodeId>,
    strategy: FusionStrategy,
    reasons: Vec<String>,
    /// Tensors passed between the group's nodes without a full buffer.
    carried: Vec<TensorId>,
}

struct Planner<'s, 'g> {
    sem: &'s SemanticGraph<'g>,
    profile: &'s DeviceProfile,
    blocking: GemmBlocking,
    /// Position of each node in the topological order.
    pos: Vec<usize>,
    group_of: Vec<NodeState>,
    drafts: Vec<Draft>,
    /// False: one group per node (see [`super::FusionOptions`]).
    fuse: bool,
}

/// Where the planner has put a node so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NodeState {
    Free,
    /// Taken by an epilogue chain of the GEMM group being built (so another
    /// member's chain cannot take it too); grouped when that group is added.
    Claimed,
    Grouped(usize),
}

pub(super) fn group(
    sem: &SemanticGraph,
    profile: &DeviceProfile,
    options: super::FusionOptions,
) -> Vec<FusionGroup> {
    let mut pos = vec![0; sem.nodes.len()];
    for (i, &n) in sem.order.iter().enumerate() {
        pos[n] = i;
    }
    let mut p = Planner {
        sem,
        profile,
        blocking: profile.gemm_blocking(),
        pos,
        group_of: vec![NodeState::Free; sem.nodes.len()],
        drafts: Vec::new(),
        fuse: options.fuse,
    };
    for &n in &sem.order {
        if p.free(n) && sem.nodes[n].class == OpClass::Gemm {
            p.gemm_group(n);
        }
    }
    if !options.fuse {
        for &n in &sem.order {
            if p.free(n) {
                p.add(vec![n], FusionStrategy::Standalone, vec!["fusion disabled (--no-fusion)".into()]);
            }
        }
        return p.finish();
    }
    for &n in &sem.order {
        if p.free(n) && sem.nodes[n].trace.pattern == ComputePattern::NormLike {
            p.row_group(n);
        }
    }
    for &n in &sem.order {
        if p.free(n) && matches!(sem.nodes[n].class, OpClass::ElemWise | OpClass::Injective) {
            p.loop_group(n);
        }
    }
    for &n in &sem.order {
        if p.free(n) {
            p.add(vec![n], FusionStrategy::Standalone, vec![]);
        }
    }
    p.finish()
}

impl Planner<'_, '_> {
    fn free(&self, n: NodeId) -> bool {
        self.group_of[n] == NodeState::Free
    }

    fn name(&self, n: NodeId) -> String {
        let node = self.sem.node(n);
        format!("`{}` ({})", node.name, node.op.kind)
    }

    fn add(&mut self, nodes: Vec<NodeId>, strategy: FusionStrategy, reasons: Vec<String>) {
        let id = self.drafts.len();
        for &n in &nodes {
            debug_assert!(!matches!(self.group_of[n], NodeState::Grouped(_)), "node {n} planned twice");
            self.group_of[n] = NodeState::Grouped(id);
        }
        let carried = carried_values(self.sem, &nodes, &strategy);
        self.drafts.push(Draft { nodes, strategy, reasons, carried });
    }

    /// The one node reading tensor `t` through exactly one input, if `t` may
    /// be fused away (not read back by the caller, no other readers).
    fn sole_consumer(&self, t: TensorId) -> Option<(NodeId, usize)> {
        let edge = &self.sem.tensors[t];
        match edge.consumers.as_slice() {
            [(c, slot)] if !edge.is_graph_output && self.free(*c) => Some((*c, *slot)),
            _ => None,
        }
    }

    /// Why `t`'s consumer cannot be fused, for the plan's reasons.
    fn why_not_fused(&self, t: TensorId) -> Option<String> {
        let edge = &self.sem.tensors[t];
        if edge.is_graph_output {
            Some("its output is read back by the caller".into())
        } else if edge.consumer_nodes().len() > 1 {
            Some(format!("its output has {} consumers", edge.consumer_nodes().len()))
        } else {
            None
        }
    }

    /// Checks that node `c` can consume the carried value `t` (through input
    /// `slot`) in registers: one output of the same size, at most one other
    /// input, produced before `anchor` or by an earlier member (`allowed`).
    fn elementwise_step(
        &self,
        c: NodeId,
        slot: usize,
        t: TensorId,
        anchor: NodeId,
        allowed: &[TensorId],
    ) -> Result<Option<TensorId>, String> {
        let sem = self.sem;
        let node = &sem.nodes[c];
        if node.outputs.len() != 1 {
            return Err(format!("{} has several outputs", self.name(c)));
        }
        if sem.tensors[node.outputs[0]].desc.numel() != sem.tensors[t].desc.numel() {
            return Err(format!("{} changes the element count", self.name(c)));
        }
        let others: Vec<(usize, TensorId)> =
            node.inputs.iter().copied().enumerate().filter(|&(s, _)| s != slot).collect();
        if others.iter().any(|&(_, o)| o == t) {
            return Err(format!("{} reads the value twice", self.name(c)));
        }
        let extra = match others.as_slice() {
            [] => None,
            [(_, e)] => Some(*e),
            _ => return Err(format!("{} has more than one extra input", self.name(c))),
        };
        if let Some(e) = extra {
            let early = sem.tensors[e].producer.is_none_or(|p| self.pos[p] < self.pos[anchor]);
            if !early && !allowed.contains(&e) {
                return Err(format!("{}'s extra input is computed later", self.name(c)));
            }
        }
        Ok(extra)
    }

    /// Follows single-consumer elementwise nodes from `t`, accepting each
    /// while `budget` scratch registers suffice. Returns the epilogue and
    /// notes why it stopped.
    fn epilogue_chain(
        &self,
        mut t: TensorId,
        anchor: NodeId,
        budget: Option<(usize, KernelClass, &str)>,
        allowed: &[TensorId],
        reasons: &mut Vec<String>,
    ) -> Vec<EpilogueOp> {
        let mut chain = Vec::new();
        while let Some((c, slot)) = self.sole_consumer(t) {
            let node = &self.sem.nodes[c];
            if node.class != OpClass::ElemWise {
                if node.class == OpClass::Injective {
                    reasons.push(format!("{} is injective: never an epilogue", self.name(c)));
                }
                break;
            }
            let extra = match self.elementwise_step(c, slot, t, anchor, allowed) {
                Ok(e) => e,
                Err(why) => {
                    reasons.push(format!("epilogue stops: {why}"));
                    break;
                }
            };
            // Counted for the ISA of the kernel the op would join.
            let class = budget.map_or(KernelClass::Loops, |(_, class, _)| class);
            let scratch =
                pressure::scratch_registers(&node.trace.body, slot as u8, self.profile.isa_for(class));
            if let Some((budget, _, kernel)) = budget {
                if scratch > budget {
                    reasons.push(format!(
                        "{} rejected as epilogue: needs {scratch} scratch registers, the {kernel} leaves {budget}",
                        self.name(c)
                    ));
                    break;
                }
            }
            chain.push(EpilogueOp {
                node: c,
                trace: node.trace.clone(),
                data_input: slot,
                extra,
                scratch_regs: scratch,
            });
            t = node.outputs[0];
        }
        if let Some(why) = self.why_not_fused(t) {
            if !chain.is_empty() || self.sem.tensors[t].consumer_nodes().len() > 1 {
                reasons.push(format!("result stored: {why}"));
            }
        }
        chain
    }

    /// GEMMs that can share `n`'s A operand: same A tensor, M and K, unbatched,
    /// with weight B operands (so none depends on another).
    fn shared_members(&self, n: NodeId) -> Vec<NodeId> {
        let sem = self.sem;
        let shareable = |g: NodeId| {
            let node = sem.node(g);
            let p = node.op.matmul_params();
            p.is_some_and(|p| p.batch == 1) && matches!(node.inputs[1], TensorRef::Weight(_))
        };
        if !shareable(n) {
            return vec![n];
        }
        let a = sem.nodes[n].inputs[0];
        let key = |g: NodeId| sem.node(g).op.matmul_params().map(|p| (p.m, p.k, p.a_layout));
        let mut members: Vec<NodeId> = sem.tensors[a]
            .consumers
            .iter()
            .filter(|&&(g, slot)| {
                slot == 0
                    && self.free(g)
                    && sem.nodes[g].class == OpClass::Gemm
                    && shareable(g)
                    && key(g) == key(n)
            })
            .map(|&(g, _)| g)
            .collect();
        members.sort_by_key(|&g| self.pos[g]);
        members.dedup();
        members
    }

    fn gemm_group(&mut self, n: NodeId) {
        let sem = self.sem;
        let members = if self.fuse { self.shared_members(n) } else { vec![n] };
        let params = *sem.node(n).op.matmul_params().expect("GEMM nodes carry MatMul params");
        let a = sem.nodes[n].inputs[0];
        let mut reasons = Vec::new();
        if members.len() > 1 {
            let names: Vec<String> = members.iter().map(|&m| self.name(m)).collect();
            reasons.push(format!("{} share input A: packed once", names.join(", ")));
        }
        let producer = if self.fuse { self.row_producer(a, &members, &params, &mut reasons) } else { None };
        let anchor = match producer {
            Some(RowProducer { node, placement: ProducerPlacement::TileLevelFusion { .. }, .. }) => node,
            _ => members[0],
        };
        let kernel = format!("{}×{} microkernel", self.blocking.mr, self.blocking.nr);
        let member_outputs: Vec<TensorId> = members.iter().map(|&m| sem.nodes[m].outputs[0]).collect();
        // Members' raw outputs may feed another member's epilogue (gate·up).
        let mut built: Vec<GemmMember> = Vec::new();
        for &m in &members {
            if !self.fuse {
                built.push(GemmMember { node: m, epilogue: Vec::new() });
                continue;
            }
            let epilogue = self.epilogue_chain(
                sem.nodes[m].outputs[0],
                anchor,
                Some((self.blocking.spare_regs, KernelClass::Matmul, &kernel)),
                &member_outputs,
                &mut reasons,
            );
            for e in &epilogue {
                self.group_of[e.node] = NodeState::Claimed;
            }
            built.push(GemmMember { node: m, epilogue });
        }
        order_members(&mut built, sem);
        let mut nodes = Vec::new();
        if let Some(RowProducer { node, placement: ProducerPlacement::TileLevelFusion { .. }, .. }) = producer
        {
            nodes.push(node);
        }
        for b in &built {
            nodes.push(b.node);
            nodes.extend(b.epilogue.iter().map(|e| e.node));
        }
        let variant = if params.m == 1 && params.batch == 1 {
            reasons.push("M = 1: bandwidth-bound GEMV path".into());
            // The `parallel:` line is the f32 weights' split; weights kept
            // quantised arrive after planning and decide at run time.
            reasons.push(format!(
                "weights kept quantised: the group's GEMVs run as one fan-out, split across threads from {} KiB when measured faster at first use (`gllm bench` lists the choices)",
                parallel::MIN_PARALLEL_QUANT_BYTES >> 10
            ));
            GemmVariant::Gemv
        } else {
            GemmVariant::Blocked
        };
        let fusion = GemmFusion { members: built, producer, blocking: self.blocking, variant };
        self.add(nodes, FusionStrategy::Gemm(fusion), reasons);
    }

    /// Decides tile-level fusion vs compute root for a row op producing `a`.
    fn row_producer(
        &self,
        a: TensorId,
        members: &[NodeId],
        params: &crate::graph::MatMulParams,
        reasons: &mut Vec<String>,
    ) -> Option<RowProducer> {
        let sem = self.sem;
        let p = sem.tensors[a].producer?;
        let b_is_weight = matches!(sem.node(members[0]).inputs[1], TensorRef::Weight(_));
        if sem.nodes[p].trace.pattern != ComputePattern::NormLike
            || !self.free(p)
            || params.batch != 1
            || !b_is_weight
        {
            return None;
        }
        let desc = &sem.tensors[a].desc;
        let row_bytes = desc.row_len() * desc.dtype.size_bytes();
        let l1 = self.profile.caches.l1d.size_bytes;
        let limit = l1 * TILE_FUSION_L1_FRACTION.0 / TILE_FUSION_L1_FRACTION.1;
        let readers = sem.tensors[a].consumer_nodes();
        if sem.tensors[a].is_graph_output || readers.iter().any(|r| !members.contains(r)) {
            reasons.push(format!(
                "{} computed first: {}",
                self.name(p),
                self.why_not_fused(a).unwrap_or_else(|| "it has consumers outside this GEMM group".into())
            ));
            return Some(RowProducer { node: p, row_bytes, placement: ProducerPlacement::ComputeRoot });
        }
        let placement = if row_bytes > limit {
            let tile_rows = self.blocking.mc;
            let scratch_bytes = tile_rows.min(params.m) * desc.row_len() * desc.dtype.size_bytes();
            reasons.push(format!(
                "TileLevelFusion of {}: a row is {} > 0.75 × L1d = {}; {tile_rows}-row (MC) tiles into a {} scratch region",
                self.name(p),
                fmt_bytes(row_bytes),
                fmt_bytes(limit),
                fmt_bytes(scratch_bytes)
            ));
            ProducerPlacement::TileLevelFusion { tile_rows, scratch_bytes }
        } else {
            reasons.push(format!(
                "ComputeRoot for {}: a row is {} ≤ 0.75 × L1d = {}, it stays in L1",
                self.name(p),
                fmt_bytes(row_bytes),
                fmt_bytes(limit)
            ));
            ProducerPlacement::ComputeRoot
        };
        Some(RowProducer { node: p, row_bytes, placement })
    }

    fn row_group(&mut self, n: NodeId) {
        let sem = self.sem;
        let mut reasons = Vec::new();
        let budget = self.profile.isa_for(KernelClass::Loops).num_simd_regs() - 2;
        let out = sem.nodes[n].outputs[0];
        let epilogue = if sem.nodes[n].outputs.len() == 1 {
            self.epilogue_chain(out, n, Some((budget, KernelClass::Loops, "row kernel")), &[], &mut reasons)
        } else {
            Vec::new()
        };
        let mut epilogue = epilogue;
        let chain = |e: &[EpilogueOp]| e.iter().map(|o| (o.node, o.data_input)).collect::<Vec<_>>();
        while let Some(last) = epilogue.last() {
            match self.loop_kernel_overflow(n, &chain(&epilogue)) {
                None => break,
                Some(why) => {
                    reasons.push(format!("{} not fused: {why}", self.name(last.node)));
                    epilogue.pop();
                }
            }
        }
        if epilogue.is_empty() {
            let nodes = vec![n];
            self.add(nodes, FusionStrategy::Standalone, reasons);
            return;
        }
        let mut nodes = vec![n];
        nodes.extend(epilogue.iter().map(|e| e.node));
        self.add(nodes, FusionStrategy::RowFusion { row_op: n, epilogue }, reasons);
    }

    fn loop_group(&mut self, head: NodeId) {
        let sem = self.sem;
        let mut nodes = vec![head];
        let mut reasons = Vec::new();
        while sem.nodes[*nodes.last().unwrap()].outputs.len() == 1 {
            let t = sem.nodes[*nodes.last().unwrap()].outputs[0];
            let Some((c, slot)) = self.sole_consumer(t) else {
                if let Some(why) = self.why_not_fused(t) {
                    if nodes.len() > 1 {
                        reasons.push(format!("chain ends: {why}"));
                    }
                }
                break;
            };
            if !matches!(sem.nodes[c].class, OpClass::ElemWise | OpClass::Injective) {
                break;
            }
            // A head computing several elements per step (RoPE's halves)
            // takes only consumers whose one input is its result.
            let per_step = sem.nodes[head].trace.body.outputs.len();
            if per_step > 1 && sem.nodes[c].inputs.len() > 1 {
                reasons.push(format!(
                    "chain ends: {} computes {per_step} elements per step; {} reads another tensor",
                    self.name(head),
                    self.name(c)
                ));
                break;
            }
            if let Err(why) = self.elementwise_step(c, slot, t, head, &[]) {
                reasons.push(format!("chain ends: {why}"));
                break;
            }
            nodes.push(c);
        }
        while nodes.len() > 1 {
            let chain = compose::loop_chain(sem, &nodes).unwrap_or_default();
            match self.loop_kernel_overflow(head, &chain) {
                None => break,
                Some(why) => {
                    let last = nodes.pop().expect("more than one node");
                    reasons.push(format!("chain ends before {}: {why}", self.name(last)));
                }
            }
        }
        let strategy = if nodes.len() > 1 { FusionStrategy::LoopFusion } else { FusionStrategy::Standalone };
        self.add(nodes, strategy, reasons);
    }

    /// Why the loop kernel of `head` followed by `chain` would not fit the
    /// register file (None when it fits), from the same composition the
    /// code generator compiles.
    fn loop_kernel_overflow(&self, head: NodeId, chain: &[(NodeId, usize)]) -> Option<String> {
        let composed = match compose::compose_group(self.sem, head, chain) {
            Ok(c) => c,
            Err(e) => return Some(e.to_string()),
        };
        let (need, have) =
            pressure::loop_kernel_registers(&composed.trace, self.profile.isa_for(KernelClass::Loops));
        (need > have).then(|| format!("the fused loop would need {need} vector registers, {have} are free"))
    }

    /// Orders the groups topologically and fills in their interfaces and
    /// parallel strategies. Falls back to one group per node should the
    /// grouping ever create a cycle between groups.
    fn finish(mut self) -> Vec<FusionGroup> {
        let sem = self.sem;
        let group_of: Vec<usize> = self
            .group_of
            .iter()
            .map(|g| match g {
                NodeState::Grouped(id) => *id,
                other => unreachable!("every node is grouped by the end, not {other:?}"),
            })
            .collect();
        let order = match topo_groups(sem, &self.drafts, &group_of, &self.pos) {
            Some(order) => order,
            None => return self.fallback(),
        };
        let threads = parallel::threads_for(self.profile);
        let mut drafts: Vec<Option<Draft>> = std::mem::take(&mut self.drafts).into_iter().map(Some).collect();
        order
            .into_iter()
            .enumerate()
            .map(|(id, d)| {
                let draft = drafts[d].take().expect("each draft once");
                self.build(id, d, draft, &group_of, threads)
            })
            .collect()
    }

    /// The final group `id` from draft number `d`.
    fn build(&self, id: usize, d: usize, draft: Draft, group_of: &[usize], threads: usize) -> FusionGroup {
        let (inputs, outputs) = interface(self.sem, &draft.nodes, d, group_of);
        let parallel = choose_parallel(self.sem, &draft, &self.blocking, self.profile, threads);
        FusionGroup {
            id,
            nodes: draft.nodes,
            strategy: draft.strategy,
            inputs,
            outputs,
            carried: draft.carried,
            parallel,
            reasons: draft.reasons,
        }
    }

    fn fallback(&self) -> Vec<FusionGroup> {
        let threads = parallel::threads_for(self.profile);
        let group_of: Vec<usize> = (0..self.sem.nodes.len()).collect();
        self.sem
            .order
            .iter()
            .enumerate()
            .map(|(id, &n)| {
                let draft = Draft {
                    nodes: vec![n],
                    strategy: FusionStrategy::Standalone,
                    reasons: vec!["fusion disabled: grouping created a dependency cycle".into()],
                    carried: Vec::new(),
                };
                self.build(id, n, draft, &group_of, threads)
            })
            .collect()
    }
}

/// Values that stay in registers (or, for a tile-fused producer, in the
/// group's tile scratch) between a group's nodes.
fn carried_values(sem: &SemanticGraph, nodes: &[NodeId], strategy: &FusionStrategy) -> Vec<TensorId> {
    let out = |n: NodeId| sem.nodes[n].outputs[0];
    let chain = |first: NodeId, epilogue: &[EpilogueOp]| {
        let mut v = Vec::new();
        if !epilogue.is_empty() {
            v.push(out(first));
            v.extend(epilogue[..epilogue.len() - 1].iter().map(|e| out(e.node)));
        }
        v
    };
    match strategy {
        FusionStrategy::Standalone => Vec::new(),
        FusionStrategy::LoopFusion => nodes[..nodes.len() - 1].iter().map(|&n| out(n)).collect(),
        FusionStrategy::RowFusion { row_op, epilogue } => chain(*row_op, epilogue),
        FusionStrategy::Gemm(g) => {
            let mut v: Vec<TensorId> = g.members.iter().flat_map(|m| chain(m.node, &m.epilogue)).collect();
            if let Some(RowProducer { node, placement: ProducerPlacement::TileLevelFusion { .. }, .. }) =
                g.producer
            {
                v.push(out(node));
            }
            v
        }
    }
}

/// Puts members whose raw output another member's epilogue reads first.
fn order_members(members: &mut [GemmMember], sem: &SemanticGraph) {
    let reads = |reader: &GemmMember, writer: &GemmMember| {
        let out = sem.nodes[writer.node].outputs[0];
        reader.epilogue.iter().any(|e| e.extra == Some(out))
    };
    for i in 0..members.len() {
        for j in i + 1..members.len() {
            if reads(&members[i], &members[j]) {
                members[i..=j].rotate_right(1);
            }
        }
    }
}

/// Kahn's algorithm over groups, lowest first-node position first.
fn topo_groups(
    sem: &SemanticGraph,
    drafts: &[Draft],
    group_of: &[usize],
    pos: &[usize],
) -> Option<Vec<usize>> {
    let n = drafts.len();
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut indegree = vec![0usize; n];
    for (g, d) in drafts.iter().enumerate() {
        let mut preds: Vec<usize> = d
            .nodes
            .iter()
            .flat_map(|&node| sem.nodes[node].inputs.iter())
            .filter_map(|&t| sem.tensors[t].producer)
            .map(|p| group_of[p])
            .filter(|&pg| pg != g)
            .collect();
        preds.sort_unstable();
        preds.dedup();
        indegree[g] = preds.len();
        for p in preds {
            deps[p].push(g);
        }
    }
    let first = |g: usize| drafts[g].nodes.iter().map(|&x| pos[x]).min().unwrap_or(0);
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<(usize, usize)>> =
        (0..n).filter(|&g| indegree[g] == 0).map(|g| std::cmp::Reverse((first(g), g))).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse((_, g))) = ready.pop() {
        order.push(g);
        for &c in &deps[g] {
            indegree[c] -= 1;
            if indegree[c] == 0 {
                ready.push(std::cmp::Reverse((first(c), c)));
            }
        }
    }
    (order.len() == n).then_some(order)
}

/// Tensors a group reads from outside and writes for outside.
fn interface(
    sem: &SemanticGraph,
    nodes: &[NodeId],
    g: usize,
    group_of: &[usize],
) -> (Vec<TensorId>, Vec<TensorId>) {
    let mut inputs: Vec<TensorId> = nodes
        .iter()
        .flat_map(|&n| sem.nodes[n].inputs.iter().copied())
        .filter(|&t| sem.tensors[t].producer.is_none_or(|p| group_of[p] != g))
        .collect();
    inputs.sort_unstable();
    inputs.dedup();
    let mut outputs: Vec<TensorId> = nodes
        .iter()
        .flat_map(|&n| sem.nodes[n].outputs.iter().copied())
        .filter(|&t| {
            let e = &sem.tensors[t];
            e.is_graph_output || e.consumers.iter().any(|&(c, _)| group_of[c] != g)
        })
        .collect();
    outputs.sort_unstable();
    (inputs, outputs)
}

fn choose_parallel(
    sem: &SemanticGraph,
    draft: &Draft,
    blocking: &GemmBlocking,
    profile: &DeviceProfile,
    threads: usize,
) -> ParallelStrategy {
    if let FusionStrategy::Gemm(g) = &draft.strategy {
        let first = sem.node(g.members[0].node).op.matmul_params().expect("GEMM params");
        let total_n = g.members.iter().map(|m| sem.node(m.node).op.matmul_params().map_or(0, |p| p.n)).sum();
        return parallel::for_gemm(first, total_n, blocking, threads);
    }
    let head = draft.nodes[0];
    let data = &sem.tensors[sem.nodes[head].inputs[0]].desc;
    let bytes: usize = draft
        .nodes
        .iter()
        .flat_map(|&n| sem.nodes[n].inputs.iter().chain(&sem.nodes[n].outputs))
        .map(|&t| sem.tensors[t].size_bytes())
        .sum();
    let row_wise =
        matches!(sem.nodes[head].trace.pattern, ComputePattern::NormLike | ComputePattern::Reduction)
            || matches!(sem.node(head).op.params, OpParams::PairedHalves { .. });
    let rows = row_wise.then(|| data.rows());
    parallel::for_stream(bytes, data.numel(), rows, profile.isa_for(KernelClass::Loops).f32_lanes(), threads)
}

/// `16 KiB`, `1.5 MiB`, `512 B`.
pub(super) fn fmt_bytes(b: usize) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        if b % 1024 == 0 {
            format!("{} KiB", b >> 10)
        } else {
            format!("{:.1} KiB", b as f64 / 1024.0)
        }
    } else {
        format!("{b} B")
    }
}
