//! `compile_graph`: a whole graph (usually one decoder layer) planned and
//! compiled group by group, with weights prepared once and a `run` that
//! executes the groups in plan order.
//!
//! This is the entry point the front end calls. Weights are prepared once
//! and keyed by name, so one [`PreparedWeights`] serves every compiled
//! instance of the same graph (e.g. compiled for different token counts),
//! and one compiled graph serves every layer with that layer's weights.
//! Intermediates live in the plan's scratchpad arena, held by a
//! [`LayerWorkspace`] that is allocated once and reused run after run.

use super::gemm::{CompiledGemmGroup, PreparedB};
use super::group::CompiledGroup;
use super::loops::RawSlice;
use super::quant_gemv::QuantPanels;
use super::{BadArguments, CodegenError, Unsupported};
use crate::device::DeviceProfile;
use crate::fusion::{self, BufferPurpose, FusionOptions, FusionPlan, FusionStrategy};
use crate::graph::{CompilerGraph, SemanticGraph, TensorId, TensorRef};
use crate::quant::{ActivationPrecision, QuantMatrix};
use crate::scalar::ScalarOpRegistry;
use std::collections::HashMap;

enum Unit {
    Loop(CompiledGroup),
    Gemm { group: CompiledGemmGroup, weights: Vec<String> },
}

/// A compiled graph: its plan and one compiled unit per group.
pub struct CompiledLayer {
    plan: FusionPlan,
    units: Vec<Unit>,
    /// Per tensor: element count, where it comes from.
    numel: Vec<usize>,
    sources: Vec<TensorRef>,
    /// Per declared graph input: its tensor (None when no node reads it)
    /// and its declared length.
    graph_inputs: Vec<(Option<TensorId>, usize)>,
    graph_outputs: Vec<TensorId>,
    /// Weight tensors read directly (norm weights, biases), by name.
    plain_weights: Vec<(TensorId, String)>,
    /// Weight tensors packed for a GEMM: (tensor, name, k, n, unit).
    packed_weights: Vec<(TensorId, String, usize, usize, usize)>,
    /// Per tensor: its offset in the scratchpad arena, in f32 elements.
    arena_offset: Vec<Option<usize>>,
    /// Gaps no buffer uses, `(offset, len)` in f32 (planned with
    /// `FusionOptions::arena_guard_bytes`; empty otherwise).
    arena_guards: Vec<(usize, usize)>,
    /// Arena size in f32 elements.
    arena_len: usize,
}

/// Weights made ready for a compiled graph: GEMM operands packed once (f32
/// panels, or quantised records read as stored), the others copied; keyed
/// by weight name so that every graph compiled from the same weights for
/// the same device can use them.
#[derive(Debug, Default)]
pub struct PreparedWeights {
    plain: HashMap<String, Vec<f32>>,
    packed: HashMap<String, PreparedB>,
    /// How the GEMVs over quantised weights quantise their activations.
    activations: ActivationPrecision,
}

/// A weight as the caller holds it: f32 in the graph's declared shape, or a
/// quantised matrix stored as rows of output features (`n` rows of `k`:
/// Bᵀ of the graph's k × n operand, the layout model files use).
#[derive(Debug, Clone, Copy)]
pub enum WeightData<'w> {
    F32(&'w [f32]),
    Quant(QuantMatrix<'w>),
}

impl PreparedWeights {
    /// An empty set whose quantised weights' GEMVs quantise activations at
    /// `precision` (the default, [`ActivationPrecision::Int8`], is
    /// llama.cpp's rounding).
    pub fn with_activations(precision: ActivationPrecision) -> PreparedWeights {
        PreparedWeights { activations: precision, ..PreparedWeights::default() }
    }

    /// Bytes held (packed panels include their zero padding).
    pub fn size_bytes(&self) -> usize {
        let plain: usize = self.plain.values().map(|v| v.len() * 4).sum();
        let packed: usize = self.packed.values().map(|p| p.size_bytes()).sum();
        plain + packed
    }
}

/// Memory for one run of a [`CompiledLayer`]: the plan's scratchpad arena,
/// aligned to 64 bytes. Reused across runs (and across layers compiled from
/// the same graph); grown when a larger graph uses it.
#[derive(Default)]
pub struct LayerWorkspace {
    buf: Vec<f32>,
    /// With [`LayerWorkspace::guarded`]: the arena in its own mapping, its
    /// end against a `PROT_NONE` page (a write past the arena faults).
    guarded: Option<crate::runtime::GuardedBuffer>,
    want_guard: bool,
}

impl std::fmt::Debug for LayerWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWorkspace")
            .field("len", &self.buf.len())
            .field("guarded", &self.want_guard)
            .finish()
    }
}

impl LayerWorkspace {
    pub fn new() -> LayerWorkspace {
        LayerWorkspace::default()
    }

    /// A workspace whose arena ends against an inaccessible page (for
    /// testing generated code; slower to grow).
    pub fn guarded() -> LayerWorkspace {
        LayerWorkspace { want_guard: true, ..LayerWorkspace::default() }
    }

    /// `len` f32 starting at a 64-byte boundary.
    fn arena(&mut self, len: usize) -> RawSlice {
        const ALIGN_F32: usize = fusion::BUFFER_ALIGN / 4;
        if self.want_guard {
            use crate::runtime::{GuardedBuffer, Placement};
            // Arena sizes are whole 64-byte buffers, so the data, ending on a
            // page boundary, starts 64-byte aligned.
            let len = len.div_ceil(ALIGN_F32) * ALIGN_F32;
            if self.guarded.as_ref().is_none_or(|g| g.as_slice().len() != len) {
                self.guarded = Some(
                    GuardedBuffer::filled(len, 0.0, Placement::AgainstEnd).expect("mapping a guarded arena"),
                );
            }
            let g = self.guarded.as_mut().expect("just made");
            return RawSlice { addr: g.as_mut_slice().as_mut_ptr() as usize, len };
        }
        if self.buf.len() < len + ALIGN_F32 {
            self.buf = vec![0.0; len + ALIGN_F32];
        }
        let skip = self.buf.as_ptr().align_offset(fusion::BUFFER_ALIGN).min(ALIGN_F32);
        RawSlice { addr: self.buf[skip..].as_mut_ptr() as usize, len }
    }
}

/// The value guard gaps hold: a NaN payload no kernel computes.
const ARENA_CANARY: u32 = 0x7fb1_9a7d;

/// Validates, analyses, plans and compiles `graph` for `profile`.
pub fn compile_graph(
    graph: &CompilerGraph,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
) -> Result<CompiledLayer, CodegenError> {
    compile_graph_with(graph, profile, registry, FusionOptions::default())
}

/// [`compile_graph`] with explicit fusion options (e.g. everything unfused).
pub fn compile_graph_with(
    graph: &CompilerGraph,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
    options: FusionOptions,
) -> Result<CompiledLayer, CodegenError> {
    let sem = graph.analyse(registry)?;
    let plan = fusion::plan_with(&sem, profile, options);
    CompiledLayer::from_plan(&sem, plan, profile)
}

impl CompiledLayer {
    fn from_plan(
        sem: &SemanticGraph,
        plan: FusionPlan,
        profile: &DeviceProfile,
    ) -> Result<CompiledLayer, CodegenError> {
        let mut units = Vec::with_capacity(plan.groups.len());
        let mut packed_weights = Vec::new();
        for group in &plan.groups {
            let unit = match &group.strategy {
                FusionStrategy::Gemm(f) => {
                    let cg = CompiledGemmGroup::compile(sem, group, profile)?;
                    let mut weights = Vec::new();
                    if !cg.is_batched() {
                        for mb in &f.members {
                            let w = sem.nodes[mb.node].inputs[1];
                            let TensorRef::Weight(name) = &sem.tensors[w].source else {
                                return Err(CodegenError::Unsupported(Unsupported::GemmBNotWeight {
                                    node: sem.node(mb.node).name.clone(),
                                }));
                            };
                            let shape = &sem.tensors[w].desc.shape;
                            packed_weights.push((w, name.clone(), shape[0], shape[1], units.len()));
                            weights.push(name.clone());
                        }
                    }
                    Unit::Gemm { group: cg, weights }
                }
                _ => Unit::Loop(CompiledGroup::compile(sem, group, profile)?),
            };
            units.push(unit);
        }
        let packed_ids: Vec<TensorId> = packed_weights.iter().map(|w| w.0).collect();
        let plain_weights = sem
            .tensors
            .iter()
            .filter(|t| !packed_ids.contains(&t.id))
            .filter_map(|t| match &t.source {
                TensorRef::Weight(name) => Some((t.id, name.clone())),
                _ => None,
            })
            .collect();
        // Every declared input, read or not, so that callers pass the
        // graph's inputs in the graph's order.
        let graph_inputs: Vec<(Option<TensorId>, usize)> = sem
            .graph
            .inputs
            .iter()
            .enumerate()
            .map(|(k, (_, desc))| {
                let id = sem.tensors.iter().find(|t| t.source == TensorRef::Input(k)).map(|t| t.id);
                (id, desc.numel())
            })
            .collect();
        let graph_outputs = sem
            .graph
            .outputs
            .iter()
            .map(|r| sem.tensors.iter().position(|t| &t.source == r).expect("outputs are tensors"))
            .collect();
        let mut arena_offset = vec![None; sem.tensors.len()];
        for a in &plan.buffers.allocations {
            if let BufferPurpose::Tensor(t) = a.purpose {
                arena_offset[t] = Some(a.offset / 4);
            }
        }
        let arena_len = plan.buffers.scratchpad_bytes.div_ceil(4);
        let arena_guards = plan.buffers.guard_regions().into_iter().map(|(o, b)| (o / 4, b / 4)).collect();
        Ok(CompiledLayer {
            plan,
            units,
            numel: sem.tensors.iter().map(|t| t.desc.numel()).collect(),
            sources: sem.tensors.iter().map(|t| t.source.clone()).collect(),
            graph_inputs,
            graph_outputs,
            plain_weights,
            packed_weights,
            arena_offset,
            arena_guards,
            arena_len,
        })
    }

    /// The plan this layer was compiled from.
    pub fn plan(&self) -> &FusionPlan {
        &self.plan
    }

    /// Element counts of the graph's outputs, in order.
    pub fn output_lens(&self) -> Vec<usize> {
        self.graph_outputs.iter().map(|&t| self.numel[t]).collect()
    }

    /// Packs every GEMM weight once and copies the others; `weight` returns
    /// a weight's data by name (row-major, the shape the graph declared).
    pub fn prepare_weights<'w>(
        &self,
        weight: &dyn Fn(&str) -> Option<&'w [f32]>,
    ) -> Result<PreparedWeights, CodegenError> {
        let mut prepared = PreparedWeights::default();
        self.prepare_more(&mut prepared, weight)?;
        Ok(prepared)
    }

    /// Adds to `prepared` the weights this graph needs that it does not hold
    /// yet (several graphs can share one set: e.g. the parts of a layer).
    pub fn prepare_more<'w>(
        &self,
        prepared: &mut PreparedWeights,
        weight: &dyn Fn(&str) -> Option<&'w [f32]>,
    ) -> Result<(), CodegenError> {
        self.prepare_more_from(prepared, &|name| weight(name).map(WeightData::F32))
    }

    /// [`CompiledLayer::prepare_more`] for weights that may be quantised: a
    /// quantised GEMM operand in a format the JIT reads is kept in that
    /// format ([`QuantPanels`]); other formats are dequantised once into f32
    /// panels; a quantised non-GEMM weight (a norm's) is dequantised.
    pub fn prepare_more_from<'w>(
        &self,
        prepared: &mut PreparedWeights,
        weight: &dyn Fn(&str) -> Option<WeightData<'w>>,
    ) -> Result<(), CodegenError> {
        let missing = |name: &str| CodegenError::MissingWeight { name: name.to_string() };
        let wrong_size = |name: &str, got: usize, want: usize| CodegenError::WeightLength {
            name: name.to_string(),
            got,
            want,
            prepared: false,
        };
        for (id, name) in &self.plain_weights {
            if prepared.plain.contains_key(name) {
                continue;
            }
            let data = match weight(name).ok_or_else(|| missing(name))? {
                WeightData::F32(d) => d.to_vec(),
                WeightData::Quant(q) => q.dequantize(),
            };
            if data.len() != self.numel[*id] {
                return Err(wrong_size(name, data.len(), self.numel[*id]));
            }
            prepared.plain.insert(name.clone(), data);
        }
        for (_, name, k, n, unit) in &self.packed_weights {
            if prepared.packed.contains_key(name) {
                continue;
            }
            let Unit::Gemm { group, .. } = &self.units[*unit] else {
                unreachable!("packed weights belong to GEMM units")
            };
            let kernel = group.member_kernel(0).expect("GEMM groups have members");
            let ready = match weight(name).ok_or_else(|| missing(name))? {
                WeightData::F32(d) => {
                    if d.len() != k * n {
                        return Err(wrong_size(name, d.len(), k * n));
                    }
                    PreparedB::Packed(kernel.pack_b(d, *k, *n)?)
                }
                WeightData::Quant(q) => {
                    if (q.rows(), q.cols()) != (*n, *k) {
                        return Err(CodegenError::QuantWeightShape {
                            name: name.clone(),
                            rows: q.rows(),
                            cols: q.cols(),
                            k: *k,
                            n: *n,
                        });
                    }
                    if q.format().has_kernel() {
                        PreparedB::Quant(QuantPanels::pack(&q)?.with_activations(prepared.activations))
                    } else {
                        let threads = rayon::current_num_threads();
                        PreparedB::Packed(kernel.pack_b_lines(*k, *n, threads, &|r0, count, out| {
                            q.dequantize_rows(r0, count, out)
                        }))
                    }
                }
            };
            prepared.packed.insert(name.clone(), ready);
        }
        Ok(())
    }

    /// Runs every group in plan order on `inputs` (the graph's inputs, in
    /// order) and returns the graph's outputs.
    pub fn run(&self, weights: &PreparedWeights, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, CodegenError> {
        let mut outputs: Vec<Vec<f32>> = self.output_lens().into_iter().map(|n| vec![0.0; n]).collect();
        let mut outs: Vec<&mut [f32]> = outputs.iter_mut().map(|o| o.as_mut_slice()).collect();
        self.run_into(weights, inputs, &mut outs, &mut LayerWorkspace::new())?;
        Ok(outputs)
    }

    /// [`CompiledLayer::run_into`], with the arena's guard gaps filled with
    /// a canary before and checked after: an error names the first gap a
    /// kernel wrote into. Meaningful for layers compiled with
    /// `FusionOptions::arena_guard_bytes` (and, with
    /// [`LayerWorkspace::guarded`], a write past the arena faults).
    pub fn run_checked(
        &self,
        weights: &PreparedWeights,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        workspace: &mut LayerWorkspace,
    ) -> Result<(), CodegenError> {
        let arena = workspace.arena(self.arena_len);
        let word = |i: usize| (arena.addr + 4 * i) as *mut u32;
        for &(off, len) in &self.arena_guards {
            for i in off..(off + len).min(arena.len) {
                // SAFETY: i < arena.len, inside the workspace's arena.
                unsafe { word(i).write(ARENA_CANARY) };
            }
        }
        self.run_into(weights, inputs, outputs, workspace)?;
        for &(off, len) in &self.arena_guards {
            for i in off..(off + len).min(arena.len) {
                // SAFETY: as above; the run is over.
                if unsafe { word(i).read() } != ARENA_CANARY {
                    return Err(CodegenError::ArenaGuardOverwritten { offset_bytes: 4 * i });
                }
            }
        }
        Ok(())
    }

    /// Runs every group in plan order, writing the graph's outputs into
    /// `outputs` and every intermediate into `workspace`'s arena: no tensor
    /// buffer is allocated once the workspace has grown to this graph's arena
    /// (only small per-run tables of tensor addresses).
    pub fn run_into(
        &self,
        weights: &PreparedWeights,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        workspace: &mut LayerWorkspace,
    ) -> Result<(), CodegenError> {
        if inputs.len() != self.graph_inputs.len() {
            return Err(CodegenError::GraphInputCount { want: self.graph_inputs.len(), got: inputs.len() });
        }
        if outputs.len() != self.graph_outputs.len() {
            return Err(CodegenError::GraphOutputCount {
                want: self.graph_outputs.len(),
                got: outputs.len(),
            });
        }
        // Where every tensor is: borrowed inputs and weights, the caller's
        // outputs, the arena for intermediates.
        let mut at: Vec<Option<RawSlice>> = vec![None; self.numel.len()];
        for (k, (&(id, numel), data)) in self.graph_inputs.iter().zip(inputs).enumerate() {
            if data.len() != numel {
                return Err(CodegenError::TensorLength {
                    tensor: TensorRef::Input(k),
                    got: data.len(),
                    want: numel,
                    output: false,
                });
            }
            if let Some(id) = id {
                at[id] = Some(RawSlice::of(data));
            }
        }
        for (id, name) in &self.plain_weights {
            let w = weights.plain.get(name).ok_or_else(|| not_prepared(name))?;
            if w.len() != self.numel[*id] {
                return Err(CodegenError::WeightLength {
                    name: name.clone(),
                    got: w.len(),
                    want: self.numel[*id],
                    prepared: true,
                });
            }
            at[*id] = Some(RawSlice::of(w));
        }
        for (&id, out) in self.graph_outputs.iter().zip(outputs.iter_mut()) {
            if out.len() != self.numel[id] {
                return Err(CodegenError::TensorLength {
                    tensor: self.sources[id].clone(),
                    got: out.len(),
                    want: self.numel[id],
                    output: true,
                });
            }
            at[id] = Some(RawSlice::of_mut(out));
        }
        let arena = workspace.arena(self.arena_len);
        for (id, off) in self.arena_offset.iter().enumerate() {
            if let Some(off) = off {
                at[id] = Some(RawSlice { addr: arena.addr + off * 4, len: self.numel[id] });
            }
        }
        let region =
            |t: TensorId| at[t].ok_or(CodegenError::BadArguments(BadArguments::TensorWithoutMemory(t)));
        for unit in &self.units {
            match unit {
                Unit::Loop(cg) => {
                    let ins: Vec<RawSlice> =
                        cg.inputs().iter().map(|&t| region(t)).collect::<Result<_, _>>()?;
                    // SAFETY: every region is an input, a weight, a caller's
                    // output or an arena buffer of its tensor's size; the
                    // scratchpad plan gives tensors live at the same time
                    // disjoint memory, except an elementwise group's output
                    // that overwrites a dying input of the same size exactly.
                    unsafe { cg.run_raw(&ins, region(cg.output())?, cg.threads())? };
                }
                Unit::Gemm { group, weights: names } => {
                    let packed: Vec<&PreparedB> = names
                        .iter()
                        .map(|n| weights.packed.get(n).ok_or_else(|| not_prepared(n)))
                        .collect::<Result<_, _>>()?;
                    let own = group.outputs();
                    for t in group.inputs() {
                        if !own.contains(&t) && (group.is_batched() || !self.is_packed(t)) {
                            region(t)?;
                        }
                    }
                    let out_regions: Vec<RawSlice> =
                        own.iter().map(|&t| region(t)).collect::<Result<_, _>>()?;
                    // SAFETY: as above; a GEMM group's outputs are live at the
                    // same time as its inputs, so the plan gave them memory
                    // apart from every input, and from each other.
                    let mut outs: Vec<&mut [f32]> = out_regions
                        .iter()
                        .map(|r| unsafe { std::slice::from_raw_parts_mut(r.addr as *mut f32, r.len) })
                        .collect();
                    let lookup = |t: TensorId| -> &[f32] {
                        match at[t] {
                            // SAFETY: see above; inputs are only read.
                            Some(r) => unsafe { std::slice::from_raw_parts(r.addr as *const f32, r.len) },
                            None => &[],
                        }
                    };
                    group.run(&lookup, &packed, &mut outs)?;
                }
            }
        }
        Ok(())
    }

    fn is_packed(&self, t: TensorId) -> bool {
        self.packed_weights.iter().any(|w| w.0 == t)
    }
}

fn not_prepared(name: &str) -> CodegenError {
    CodegenError::WeightNotPrepared { name: name.to_string() }
}
