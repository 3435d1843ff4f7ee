//! `compile_graph`: a whole graph (usually one decoder layer) planned and
//! compiled group by group, with weights prepared once.
//!
//! This is the entry point the front end calls. Weights are prepared once
//! and keyed by name, so one [`PreparedWeights`] serves every compiled
//! instance of the same graph (e.g. compiled for different token counts),
//! and one compiled graph serves every layer with that layer's weights.
//! Intermediates live in the plan's scratchpad arena, held by a
//! [`LayerWorkspace`](crate::runtime::LayerWorkspace) that is allocated
//! once and reused run after run; running the compiled graph is
//! `runtime::execute`'s ([`CompiledLayer::run`] and friends).

use super::gemm::{CompiledGemmGroup, PreparedB};
use super::group::CompiledGroup;
use super::quant_gemv::QuantPanels;
use super::{CodegenError, Unsupported};
use crate::device::DeviceProfile;
use crate::fusion::{self, BufferPurpose, FusionOptions, FusionPlan, FusionStrategy};
use crate::graph::{CompilerGraph, SemanticGraph, TensorId, TensorRef};
use crate::quant::{ActivationPrecision, QuantMatrix};
use crate::scalar::ScalarOpRegistry;
use std::collections::HashMap;

/// One group of the plan, compiled (run by `runtime::execute`).
pub(crate) enum Unit {
    Loop(CompiledGroup),
    Gemm { group: CompiledGemmGroup, weights: Vec<String> },
}

/// A compiled graph: its plan and one compiled unit per group.
pub struct CompiledLayer {
    pub(crate) plan: FusionPlan,
    pub(crate) units: Vec<Unit>,
    /// Per unit: its group's [`crate::fusion::FusionGroup::label`], which
    /// [`crate::runtime::profile`] accounts its time under.
    pub(crate) unit_labels: Vec<String>,
    /// Per tensor: element count, where it comes from.
    pub(crate) numel: Vec<usize>,
    pub(crate) sources: Vec<TensorRef>,
    /// Per declared graph input: its tensor (None when no node reads it)
    /// and its declared length.
    pub(crate) graph_inputs: Vec<(Option<TensorId>, usize)>,
    pub(crate) graph_outputs: Vec<TensorId>,
    /// Weight tensors read directly (norm weights, biases), by name.
    pub(crate) plain_weights: Vec<(TensorId, String)>,
    /// Weight tensors packed for a GEMM: (tensor, name, k, n, unit).
    pub(crate) packed_weights: Vec<(TensorId, String, usize, usize, usize)>,
    /// Per tensor: its offset in the scratchpad arena, in f32 elements.
    pub(crate) arena_offset: Vec<Option<usize>>,
    /// Gaps no buffer uses, `(offset, len)` in f32 (planned with
    /// `FusionOptions::arena_guard_bytes`; empty otherwise).
    pub(crate) arena_guards: Vec<(usize, usize)>,
    /// Arena size in f32 elements.
    pub(crate) arena_len: usize,
}

/// Weights made ready for a compiled graph: GEMM operands packed once (f32
/// panels, or quantised records read as stored), the others copied; keyed
/// by weight name so that every graph compiled from the same weights for
/// the same device can use them.
#[derive(Debug, Default)]
pub struct PreparedWeights {
    pub(crate) plain: HashMap<String, Vec<f32>>,
    pub(crate) packed: HashMap<String, PreparedB>,
    /// How the GEMVs over quantised weights quantise their activations.
    pub(crate) activations: ActivationPrecision,
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
        let unit_labels = plan.groups.iter().map(|g| g.label(sem.graph)).collect();
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
        let graph_outputs = sem.output_tensors();
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
            unit_labels,
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
}

pub(crate) fn not_prepared(name: &str) -> CodegenError {
    CodegenError::WeightNotPrepared { name: name.to_string() }
}
