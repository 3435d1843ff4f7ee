//! GEMMs sharing one packed A (`gemm_group`), tile-level fusion of a row op
//! into the MC loop (`TileProducer`), and a fusion plan's GEMM group compiled
//! for a layer (`CompiledGemmGroup`). All of it runs the one loop nest in
//! `driver.rs`, as a plain GEMM does.

use super::*;

/// A row-wise producer of A (RMSNorm, LayerNorm) run on each MC block of
/// rows inside the GEMM (tile-level fusion): its output rows go to a
/// scratch block that A-packing reads, and never to memory as a whole.
pub struct TileProducer<'a> {
    /// The producer compiled as a loop kernel (its first input is A's source).
    pub kernel: &'a LoopKernel,
    /// Its other inputs (e.g. the norm weight, one row of K).
    pub inputs: &'a [&'a [f32]],
}

/// One GEMM of a group sharing one A operand (Q/K/V, gate/up).
pub struct GroupMember<'a> {
    /// The kernel (with this member's epilogue, if any).
    pub gemm: &'a GemmKernel,
    pub b: &'a PackedB,
    pub c: &'a mut [f32],
    /// The epilogue's extra operands.
    pub extras: &'a [&'a [f32]],
    /// Extra operands that are another member's result instead: `(slot, j)`
    /// reads member `j`'s C as extra `slot` (SiLU(gate)·up, with up computed
    /// first in the same group). The slice at `slot` in `extras` is ignored.
    pub from_members: &'a [(usize, usize)],
}

/// `c_i = producer(a) · B_i` for every member, packing each A block once for
/// all members and computing the producer per MC block of rows (no full
/// intermediate). `a` is M × K; all members must share K and blocking.
/// Rows are split across threads in MR multiples.
pub fn gemm_group(
    a: &[f32],
    m: usize,
    producer: Option<TileProducer>,
    members: &mut [GroupMember],
    threads: usize,
) -> Result<(), CodegenError> {
    let Some(first) = members.first() else { return Ok(()) };
    let (k, blocking) = (first.b.k, *first.gemm.blocking());
    check_length(Buffer::A, a.len(), m * k)?;
    let outs: Vec<(usize, usize)> =
        members.iter_mut().map(|mb| (mb.c.as_mut_ptr() as usize, mb.c.len())).collect();
    let mut extras = Vec::with_capacity(members.len());
    for (i, mb) in members.iter().enumerate() {
        if mb.b.k != k || *mb.gemm.blocking() != blocking || mb.b.kc != blocking.kc || mb.b.nr != blocking.nr
        {
            return Err(CodegenError::BadArguments(BadArguments::MemberShape { member: i, k }));
        }
        check_length(Buffer::MemberC(i), mb.c.len(), m * mb.b.n)?;
        let mut resolved = Vec::with_capacity(mb.extras.len());
        for (slot, e) in mb.extras.iter().enumerate() {
            let source = mb.from_members.iter().find(|&&(s, _)| s == slot).map(|&(_, j)| j);
            resolved.push(match source {
                Some(j) if j < outs.len() && j != i => outs[j],
                Some(j) => {
                    return Err(CodegenError::BadArguments(BadArguments::MemberExtraNotMember {
                        member: i,
                        slot,
                        named: j,
                    }))
                }
                None => (e.as_ptr() as usize, e.len()),
            });
        }
        let ex = mb.gemm.extra_layouts(resolved, m, mb.b.n).map_err(|e| {
            CodegenError::BadArguments(BadArguments::Member { member: i, source: Box::new(e) })
        })?;
        extras.push(ex);
        mb.gemm.variants()?;
    }
    if m == 0 {
        return Ok(());
    }
    let mr = blocking.mr;
    let threads = threads.max(1).min(m.div_ceil(mr));
    let per = m.div_ceil(threads).div_ceil(mr) * mr;
    let members: &[GroupMember] = members;
    let nest_members: Vec<NestMember> = members
        .iter()
        .zip(&outs)
        .zip(&extras)
        .map(|((mbr, &(c, _)), extras)| NestMember {
            gemm: mbr.gemm,
            panels: NestPanels::Packed { b: std::borrow::Cow::Borrowed(mbr.b), col0: 0 },
            c: OutC { ptr: c as *mut f32, ld: mbr.b.n },
            extras,
            cols: (0, mbr.b.n),
        })
        .collect();
    let a = match &producer {
        Some(producer) => NestA::Produced { a, producer },
        None => NestA::Rows(RowsRef { data: a, ld: k }),
    };
    let work = |t: usize| -> Result<(), CodegenError> {
        let rows = (t * per, ((t + 1) * per).min(m));
        // SAFETY: every C_i is m × n_i (checked) and threads own disjoint
        // row ranges of all of them; extras checked against m × n_i.
        unsafe { nest(a, k, &nest_members, rows) }
    };
    for_each_part(threads, work)
}

/// A GEMM fusion group of a plan, compiled: one kernel per member (with the
/// epilogue the plan chose) and, under tile-level fusion, the row producer.
/// The plan decides everything; this only turns its decisions into code.
#[derive(Debug)]
pub struct CompiledGemmGroup {
    pub(super) members: Vec<PlannedMember>,
    pub(super) producer: Option<(LoopKernel, Vec<crate::graph::TensorId>)>,
    /// The tensor A is made from (the producer's input under tile fusion).
    pub(super) a: crate::graph::TensorId,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) threads: usize,
    /// The plan's thread budget: quantised weights arrive after planning, so
    /// their GEMV picks its own thread count within it
    /// ([`crate::fusion::parallel::for_quantised_gemv`]).
    pub(super) budget: usize,
    /// Set for a batched (attention) GEMM: its B is an activation, not a weight.
    pub(super) batched: Option<crate::graph::MatMulParams>,
}

#[derive(Debug)]
pub(super) struct PlannedMember {
    pub(super) gemm: GemmKernel,
    /// The weight B (to be prepacked by the caller with [`GemmKernel::pack_b`]).
    pub(super) weight: crate::graph::TensorId,
    pub(super) extras: Vec<crate::graph::TensorId>,
    /// The tensor this member writes (its epilogue's last output).
    pub(super) output: crate::graph::TensorId,
}

impl CompiledGemmGroup {
    /// Compiles `group` (a `FusionStrategy::Gemm` group of `sem`'s plan).
    pub fn compile(
        sem: &crate::graph::SemanticGraph,
        group: &crate::fusion::FusionGroup,
        profile: &DeviceProfile,
    ) -> Result<CompiledGemmGroup, CodegenError> {
        use crate::fusion::{FusionStrategy, ProducerPlacement, RowProducer};
        let FusionStrategy::Gemm(f) = &group.strategy else {
            return Err(CodegenError::Unsupported(Unsupported::NotAGemmGroup));
        };
        let first = f.members.first().ok_or(CodegenError::Unsupported(Unsupported::EmptyGemmGroup))?;
        let p = *sem
            .node(first.node)
            .op
            .matmul_params()
            .ok_or(CodegenError::Unsupported(Unsupported::GemmWithoutParams))?;
        // B computed by the graph (attention's K and V, a mixture's expert
        // outputs) is read in place through the batched path; only weights
        // are packed ahead of time.
        let b_is_weight =
            matches!(sem.tensors[sem.nodes[first.node].inputs[1]].source, crate::graph::TensorRef::Weight(_));
        let batched = (p.batch != 1 || p.transpose_b || !b_is_weight).then_some(p);
        if batched.is_some() && (f.members.len() != 1 || f.producer.is_some()) {
            return Err(CodegenError::Unsupported(Unsupported::SharedBatchedGemm));
        }
        let mut members = Vec::new();
        for mb in &f.members {
            let (epilogue, extras) = GemmEpilogue::from_plan(sem, &mb.epilogue)?;
            let output =
                mb.epilogue.last().map_or(sem.nodes[mb.node].outputs[0], |e| sem.nodes[e.node].outputs[0]);
            members.push(PlannedMember {
                gemm: GemmKernel::compile_with_epilogue(profile, &epilogue)?,
                weight: sem.nodes[mb.node].inputs[1],
                extras,
                output,
            });
        }
        let (producer, a) = match f.producer {
            Some(RowProducer { node, placement: ProducerPlacement::TileLevelFusion { .. }, .. }) => {
                let prog =
                    LoopProgram::from_trace(&sem.nodes[node].trace, sem.node(node).op.params.scalar_args())?;
                let inputs = sem.nodes[node].inputs.clone();
                // The norm runs inside the GEMM's row-block loop: the matmul's ISA.
                let kernel = LoopKernel::compile(&prog, &profile.for_kernels(KernelClass::Matmul))?;
                (Some((kernel, inputs[1..].to_vec())), inputs[0])
            }
            _ => (None, sem.nodes[first.node].inputs[0]),
        };
        let threads = group.parallel.threads();
        let budget = crate::fusion::parallel::threads_for(profile);
        Ok(CompiledGemmGroup { members, producer, a, m: p.m, k: p.k, threads, budget, batched })
    }

    /// The tensors `run` reads: A's source, then each member's weight, then
    /// each member's epilogue extras, then the producer's other inputs.
    pub fn inputs(&self) -> Vec<crate::graph::TensorId> {
        let mut v = vec![self.a];
        v.extend(self.members.iter().map(|m| m.weight));
        v.extend(self.members.iter().flat_map(|m| m.extras.iter().copied()));
        if let Some((_, ins)) = &self.producer {
            v.extend(ins.iter().copied());
        }
        v
    }

    /// The tensors `run` writes, one per member, in member order.
    pub fn outputs(&self) -> Vec<crate::graph::TensorId> {
        self.members.iter().map(|m| m.output).collect()
    }

    /// The member kernel that packs weight `i` (all members share one blocking).
    pub fn member_kernel(&self, i: usize) -> Option<&GemmKernel> {
        self.members.get(i).map(|m| &m.gemm)
    }

    /// Whether this is a batched (attention) GEMM, whose B is an activation
    /// read through `tensor` instead of a packed weight.
    pub fn is_batched(&self) -> bool {
        self.batched.is_some()
    }

    /// Runs the group. `tensor` resolves activations and extras, `weights`
    /// holds each member's prepared B (in member order; empty for a batched
    /// group). Quantised weights run through the quantised GEMV for up to
    /// [`GEMV_MAX_ROWS`] rows, else are dequantised into panels for this call.
    pub fn run<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PreparedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        if let Some(p) = &self.batched {
            let [out] = outputs else {
                return Err(CodegenError::BadArguments(BadArguments::BatchedGroupOutputs));
            };
            let m = &self.members[0];
            let extras: Vec<&[f32]> = m.extras.iter().map(|&t| tensor(t)).collect();
            return m.gemm.gemm_batched(tensor(self.a), tensor(m.weight), out, p, &extras, self.threads);
        }
        if weights.len() != self.members.len() || outputs.len() != self.members.len() {
            return Err(CodegenError::BadArguments(BadArguments::GroupOperands {
                members: self.members.len(),
                weights: weights.len(),
                outputs: outputs.len(),
            }));
        }
        for (i, w) in weights.iter().enumerate() {
            if w.k() != self.k || w.n() * self.m != outputs[i].len() {
                return Err(CodegenError::BadArguments(BadArguments::MemberWeightShape {
                    member: i,
                    k: w.k(),
                    n: w.n(),
                    want_k: self.k,
                    want_c: outputs[i].len(),
                }));
            }
        }
        let quantised = weights.iter().any(|w| matches!(w, PreparedB::Quant(_)));
        if quantised && self.m <= GEMV_MAX_ROWS {
            return self.run_quant_gemv(tensor, weights, outputs);
        }
        // Prompt processing: quantised weights as dequantised f32 panels
        // (made on the plan's threads: `-t 1` means one).
        let threads = self.budget.max(self.threads);
        let kernel = &self.members[0].gemm;
        let panels: Vec<std::borrow::Cow<'_, PackedB>> = weights
            .iter()
            .map(|w| match w {
                PreparedB::Packed(p) => std::borrow::Cow::Borrowed(p),
                PreparedB::Quant(q) => q.prefill_panels(kernel, threads),
            })
            .collect();
        let packed: Vec<&PackedB> = panels.iter().map(|p| &**p).collect();
        self.run_packed(tensor, &packed, outputs)
    }

    /// The member whose result is tensor `t`, if any.
    pub(super) fn member_writing(&self, t: crate::graph::TensorId) -> Option<usize> {
        self.members.iter().position(|m| m.output == t)
    }

    /// Which member writes each extra operand of member `i`: `(slot, j)`.
    pub(super) fn extras_from_members(&self, i: usize) -> Vec<(usize, usize)> {
        self.members[i]
            .extras
            .iter()
            .enumerate()
            .filter_map(|(slot, &t)| self.member_writing(t).map(|j| (slot, j)))
            .collect()
    }

    /// The quantised members' GEMVs as one fan-out ([`gemv_group`]), then
    /// member by member the epilogues (a loop over C) and the f32 members'
    /// GEMMs with theirs. A member's extra written by another member must
    /// come from an earlier one, which is complete (GEMV and epilogue)
    /// before the later member's epilogue reads it; no GEMV reads another
    /// member's output, so running them together changes nothing.
    ///
    /// [`gemv_group`]: crate::codegen::quant_gemv::gemv_group
    pub(super) fn run_quant_gemv<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PreparedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        use crate::codegen::quant_gemv::{gemv_group, GemvMember, QuantActivations};
        let (m, k) = (self.m, self.k);
        let source = tensor(self.a);
        let produced;
        let a: &[f32] = match &self.producer {
            Some((kernel, ins)) => {
                let mut rows = vec![0.0f32; m * k];
                let mut inputs: Vec<&[f32]> = vec![source];
                inputs.extend(ins.iter().map(|&t| tensor(t)));
                kernel.run(&inputs, &mut [&mut rows], m, k, 1)?;
                produced = rows;
                &produced
            }
            None => source,
        };
        check_length(Buffer::A, a.len(), m * k)?;
        for i in 0..self.members.len() {
            if let Some(&(slot, j)) = self.extras_from_members(i).iter().find(|&&(_, j)| j >= i) {
                return Err(CodegenError::BadArguments(BadArguments::MemberExtraLater {
                    member: i,
                    slot,
                    producer: j,
                }));
            }
        }
        // Members share A: quantise it once per weight format.
        let mut quantised: Vec<QuantActivations> = Vec::new();
        for w in weights {
            if let PreparedB::Quant(q) = w {
                if !quantised.iter().any(|x| x.format() == q.format()) {
                    quantised.push(q.quantize(a, m)?);
                }
            }
        }
        let mut gemvs: Vec<GemvMember<'_>> = Vec::new();
        for (w, c) in weights.iter().zip(outputs.iter_mut()) {
            if let PreparedB::Quant(q) = w {
                let acts = quantised.iter().find(|x| x.format() == q.format()).expect("quantised above");
                gemvs.push(GemvMember { panels: q, acts, y: c });
            }
        }
        gemv_group(&mut gemvs, self.budget)?;
        drop(gemvs);
        for (i, member) in self.members.iter().enumerate() {
            let from = self.extras_from_members(i);
            let (done, rest) = outputs.split_at_mut(i);
            let mut extras = Vec::with_capacity(member.extras.len());
            for (slot, &t) in member.extras.iter().enumerate() {
                // Checked above: a member's extra comes from an earlier member.
                match from.iter().find(|&&(s, _)| s == slot) {
                    Some(&(_, j)) => extras.push(&*done[j]),
                    None => extras.push(tensor(t)),
                }
            }
            let c = &mut *rest[0];
            match weights[i] {
                PreparedB::Packed(b) => member.gemm.gemm_prepacked_with(a, b, c, m, &extras, self.threads)?,
                PreparedB::Quant(q) => member.gemm.apply_epilogue(c, m, q.rows(), &extras)?,
            }
        }
        Ok(())
    }

    /// Every member's B as f32 panels: the tile loop of [`gemm_group`].
    pub(super) fn run_packed<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PackedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        // An extra that another member writes is read from that member's C.
        let extras: Vec<Vec<&[f32]>> = self
            .members
            .iter()
            .map(|m| {
                m.extras
                    .iter()
                    .map(|&t| if self.member_writing(t).is_some() { &[][..] } else { tensor(t) })
                    .collect()
            })
            .collect();
        let from: Vec<Vec<(usize, usize)>> =
            (0..self.members.len()).map(|i| self.extras_from_members(i)).collect();
        let producer_inputs: Vec<&[f32]> = self
            .producer
            .as_ref()
            .map(|(_, ins)| ins.iter().map(|&t| tensor(t)).collect())
            .unwrap_or_default();
        let mut members: Vec<GroupMember> = self
            .members
            .iter()
            .zip(weights)
            .zip(outputs.iter_mut())
            .zip(extras.iter().zip(&from))
            .map(|(((m, b), c), (e, f))| GroupMember { gemm: &m.gemm, b, c, extras: e, from_members: f })
            .collect();
        let producer =
            self.producer.as_ref().map(|(kernel, _)| TileProducer { kernel, inputs: &producer_inputs });
        let a = tensor(self.a);
        check_length(Buffer::A, a.len(), self.m * self.k)?;
        gemm_group(a, self.m, producer, &mut members, self.threads)
    }
}
