//! Running a compiled graph: every group in plan order over borrowed
//! inputs, prepared weights, the caller's outputs and the workspace arena.
//!
//! ```text
//!   CompiledLayer (codegen: kernels + plan) + PreparedWeights + inputs
//!      ──[tensor addresses: inputs, weights, outputs, arena offsets]──>
//!      ──[per unit: loop group (run_raw) | GEMM group (packed / quantised), threads via dispatch]──> outputs
//! ```
//!
//! Codegen produces the kernels and the layout; this module owns calling
//! them: argument checks, where each tensor lives during the run, the
//! arena's guard canaries.

use super::LayerWorkspace;
use crate::codegen::gemm::PreparedB;
use crate::codegen::layer::{not_prepared, CompiledLayer, PreparedWeights, Unit};
use crate::codegen::loops::RawSlice;
use crate::codegen::{BadArguments, CodegenError};
use crate::graph::{TensorId, TensorRef};

/// The value guard gaps hold: a NaN payload no kernel computes.
const ARENA_CANARY: u32 = 0x7fb1_9a7d;

impl CompiledLayer {
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
        let profiling = super::profile::enabled();
        for (unit, label) in self.units.iter().zip(&self.unit_labels) {
            let started = profiling.then(std::time::Instant::now);
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
            if let Some(started) = started {
                super::profile::record(label, started.elapsed());
            }
        }
        Ok(())
    }

    fn is_packed(&self, t: TensorId) -> bool {
        self.packed_weights.iter().any(|w| w.0 == t)
    }
}
