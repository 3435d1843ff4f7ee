//! `compile_graph`: a whole graph (usually one decoder layer) planned and
//! compiled group by group, with weights prepared once and a `run` that
//! executes the groups in plan order.
//!
//! This is the entry point the front end calls. Intermediates live in one
//! buffer per tensor for now; placing them in the plan's scratchpad arena is
//! the next step.

use super::gemm::{CompiledGemmGroup, PackedB};
use super::group::CompiledGroup;
use super::CodegenError;
use crate::device::DeviceProfile;
use crate::fusion::{self, FusionPlan, FusionStrategy};
use crate::graph::{CompilerGraph, SemanticGraph, TensorId, TensorRef};
use crate::scalar::ScalarOpRegistry;
use std::borrow::Cow;

enum Unit {
    Loop(CompiledGroup),
    Gemm { group: CompiledGemmGroup, weights: Vec<TensorId> },
}

/// A compiled graph: its plan and one compiled unit per group.
pub struct CompiledLayer {
    plan: FusionPlan,
    units: Vec<Unit>,
    /// Per tensor: element count, where it comes from.
    numel: Vec<usize>,
    sources: Vec<TensorRef>,
    graph_inputs: Vec<TensorId>,
    graph_outputs: Vec<TensorId>,
    /// Weight tensors read directly (norm weights, biases), by name.
    plain_weights: Vec<(TensorId, String)>,
    /// Weight tensors packed for a GEMM: (tensor, name, k, n, unit).
    packed_weights: Vec<(TensorId, String, usize, usize, usize)>,
}

/// Weights made ready for one [`CompiledLayer`]: GEMM operands packed once.
pub struct PreparedWeights {
    plain: Vec<(TensorId, Vec<f32>)>,
    packed: Vec<(TensorId, PackedB)>,
}

/// Validates, analyses, plans and compiles `graph` for `profile`.
pub fn compile_graph(
    graph: &CompilerGraph,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
) -> Result<CompiledLayer, CodegenError> {
    let sem = graph.analyse(registry)?;
    let plan = fusion::plan(&sem, profile);
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
                                return Err(CodegenError::Unsupported(format!(
                                    "GEMM `{}` whose B is not a weight",
                                    sem.node(mb.node).name
                                )));
                            };
                            let shape = &sem.tensors[w].desc.shape;
                            packed_weights.push((w, name.clone(), shape[0], shape[1], units.len()));
                            weights.push(w);
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
        let mut graph_inputs: Vec<(usize, TensorId)> = sem
            .tensors
            .iter()
            .filter_map(|t| match t.source {
                TensorRef::Input(k) => Some((k, t.id)),
                _ => None,
            })
            .collect();
        graph_inputs.sort_unstable();
        let graph_outputs = sem
            .graph
            .outputs
            .iter()
            .map(|r| sem.tensors.iter().position(|t| &t.source == r).expect("outputs are tensors"))
            .collect();
        Ok(CompiledLayer {
            plan,
            units,
            numel: sem.tensors.iter().map(|t| t.desc.numel()).collect(),
            sources: sem.tensors.iter().map(|t| t.source.clone()).collect(),
            graph_inputs: graph_inputs.into_iter().map(|(_, t)| t).collect(),
            graph_outputs,
            plain_weights,
            packed_weights,
        })
    }

    /// The plan this layer was compiled from.
    pub fn plan(&self) -> &FusionPlan {
        &self.plan
    }

    /// Packs every GEMM weight once and copies the others; `weight` returns
    /// a weight's data by name (row-major, the shape the graph declared).
    pub fn prepare_weights<'w>(
        &self,
        weight: &dyn Fn(&str) -> Option<&'w [f32]>,
    ) -> Result<PreparedWeights, CodegenError> {
        let get = |name: &str, id: TensorId| -> Result<&'w [f32], CodegenError> {
            let data = weight(name)
                .ok_or_else(|| CodegenError::BadArguments(format!("weight `{name}` is missing")))?;
            if data.len() != self.numel[id] {
                return Err(CodegenError::BadArguments(format!(
                    "weight `{name}` has {} elements, the graph declares {}",
                    data.len(),
                    self.numel[id]
                )));
            }
            Ok(data)
        };
        let mut plain = Vec::new();
        for (id, name) in &self.plain_weights {
            plain.push((*id, get(name, *id)?.to_vec()));
        }
        let mut packed = Vec::new();
        for (id, name, k, n, unit) in &self.packed_weights {
            let Unit::Gemm { group, .. } = &self.units[*unit] else {
                unreachable!("packed weights belong to GEMM units")
            };
            let kernel = group.member_kernel(0).expect("GEMM groups have members");
            packed.push((*id, kernel.pack_b(get(name, *id)?, *k, *n)?));
        }
        Ok(PreparedWeights { plain, packed })
    }

    /// Runs every group in plan order on `inputs` (the graph's inputs, in
    /// order) and returns the graph's outputs.
    pub fn run(&self, weights: &PreparedWeights, inputs: &[&[f32]]) -> Result<Vec<Vec<f32>>, CodegenError> {
        if inputs.len() != self.graph_inputs.len() {
            return Err(CodegenError::BadArguments(format!(
                "the graph takes {} inputs, {} given",
                self.graph_inputs.len(),
                inputs.len()
            )));
        }
        // Inputs and weights are borrowed; only what the groups compute is owned.
        let mut store: Vec<Option<Cow<[f32]>>> = vec![None; self.numel.len()];
        for (&id, data) in self.graph_inputs.iter().zip(inputs) {
            if data.len() != self.numel[id] {
                return Err(CodegenError::BadArguments(format!(
                    "{} has {} elements, the graph declares {}",
                    self.sources[id],
                    data.len(),
                    self.numel[id]
                )));
            }
            store[id] = Some(Cow::Borrowed(data));
        }
        for (id, data) in &weights.plain {
            store[*id] = Some(Cow::Borrowed(data));
        }
        for unit in &self.units {
            match unit {
                Unit::Loop(cg) => {
                    let ins: Vec<&[f32]> =
                        cg.inputs().iter().map(|&t| tensor(&store, t)).collect::<Result<_, _>>()?;
                    let mut out = vec![0.0f32; self.numel[cg.output()]];
                    cg.run(&ins, &mut out)?;
                    store[cg.output()] = Some(Cow::Owned(out));
                }
                Unit::Gemm { group, weights: ids } => {
                    let packed: Vec<&PackedB> = ids
                        .iter()
                        .map(|id| {
                            weights.packed.iter().find(|(w, _)| w == id).map(|(_, p)| p).ok_or_else(|| {
                                CodegenError::BadArguments("weights were prepared for another layer".into())
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    let mut bufs: Vec<Vec<f32>> =
                        group.outputs().iter().map(|&t| vec![0.0; self.numel[t]]).collect();
                    {
                        // Check first: the lookup below cannot report errors.
                        // (Packed weights and the group's own results are not in the store.)
                        let own = group.outputs();
                        for t in group.inputs() {
                            if !ids.contains(&t) && !own.contains(&t) {
                                tensor(&store, t)?;
                            }
                        }
                        let mut outs: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                        let lookup = |t: TensorId| store[t].as_deref().unwrap_or(&[]);
                        group.run(&lookup, &packed, &mut outs)?;
                    }
                    for (t, b) in group.outputs().into_iter().zip(bufs) {
                        store[t] = Some(Cow::Owned(b));
                    }
                }
            }
        }
        self.graph_outputs.iter().map(|&t| tensor(&store, t).map(<[f32]>::to_vec)).collect()
    }
}

fn tensor<'s>(store: &'s [Option<Cow<[f32]>>], t: TensorId) -> Result<&'s [f32], CodegenError> {
    store[t]
        .as_deref()
        .ok_or_else(|| CodegenError::BadArguments(format!("tensor {t} is read before it is computed")))
}
