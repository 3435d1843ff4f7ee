//! Phase 2: device-driven fusion planning.
//!
//! ```text
//!   SemanticGraph + DeviceProfile (L1d, registers per kernel class, cores)
//!      ──[planner: GEMM groups, epilogues, tile/row fusion, loop fusion; pressure: register fit]──> groups
//!      ──[parallel: threads per group]──[buffers: scratchpad offsets, lifetimes]──> FusionPlan
//!      ──> codegen::layer::compile_graph;  FusionPlan::explain ──> `gllm explain`
//! ```
//!
//! Guarantees: every node is in exactly one group; a fused body fits the
//! registers its kernel leaves (`pressure` is the contract with codegen);
//! no tensor that is read elsewhere is fused away; each decision records
//! its reason.
//!
//! [`fuse`] turns a validated graph into a [`FusionPlan`]: groups of nodes that
//! become one kernel each, with a strategy, tile sizes, a parallel strategy and
//! a scratchpad layout. Every decision that depends on the machine reads the
//! [`DeviceProfile`] (L1d size, registers left free by the GEMM microkernel,
//! cores), so one graph gives different plans on different hardware, and each
//! group records *why* it was planned that way for `gllm explain`.
//!
//! Rules (TVM-style, from the producers' classes):
//! - GEMM → elementwise consumers: **epilogue injection**, while the consumer
//!   chain's scratch-register need fits what the microkernel leaves free;
//! - row op (RMSNorm, LayerNorm) → GEMM: **tile-level fusion** inside the MC
//!   loop when a row of its output exceeds 0.75 × L1d, else **compute root**;
//! - GEMMs reading the same activation with weight B operands share one group
//!   (the input is packed once);
//! - elementwise/injective chains: **loop fusion** (one pass over memory);
//!   injective ops (RoPE) are never GEMM epilogues;
//! - row op → elementwise consumers: applied before the row's store;
//! - a tensor with several consumers (or read back by the caller) is never
//!   fused into one of them.

mod buffers;
pub mod compose;
mod explain;
pub mod parallel;
mod planner;
pub mod pressure;

pub use buffers::{BufferAlloc, BufferPlan, BufferPurpose, BUFFER_ALIGN};
pub use parallel::ParallelStrategy;

use crate::device::{DeviceProfile, GemmBlocking, Isa, KernelClass};
use crate::graph::{CompilerGraph, GraphError, NodeId, SemanticGraph, TensorId};
use crate::scalar::ScalarOpRegistry;
use crate::trace::OpTrace;
use std::sync::Arc;

/// An elementwise consumer applied to values already in registers (a GEMM's
/// accumulators or a row op's results) before they are stored.
#[derive(Debug, Clone)]
pub struct EpilogueOp {
    pub node: NodeId,
    /// The consumer's trace: code generation lowers its body, whatever op it is.
    pub trace: Arc<OpTrace>,
    /// Which of the consumer's inputs is the value being carried (in a register).
    pub data_input: usize,
    /// The consumer's other input (bias, residual, gate…), streamed from memory.
    pub extra: Option<TensorId>,
    /// Scratch vector registers its body needs ([`pressure::scratch_registers`]).
    pub scratch_regs: usize,
}

/// Which GEMM kernel shape a group uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmVariant {
    /// Packed, cache-blocked GEMM with the MR×NR register tile.
    Blocked,
    /// Bandwidth-bound matrix-vector product (one row: decode), streaming B once.
    Gemv,
}

/// One GEMM of a GEMM group, with the consumers injected into its store.
#[derive(Debug, Clone)]
pub struct GemmMember {
    pub node: NodeId,
    pub epilogue: Vec<EpilogueOp>,
}

/// Where a row-wise producer of a GEMM's A operand runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProducerPlacement {
    /// Inside the GEMM's MC loop: `tile_rows` rows at a time are normalised
    /// into a scratchpad region that A-packing reads.
    TileLevelFusion { tile_rows: usize, scratch_bytes: usize },
    /// Computed completely first (its own group); its rows stay cache-resident.
    ComputeRoot,
}

/// The row-wise producer of a GEMM group's A operand and where it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowProducer {
    pub node: NodeId,
    /// Bytes of one output row (what the 0.75 × L1d rule compares).
    pub row_bytes: usize,
    pub placement: ProducerPlacement,
}

/// A group built around one or more GEMMs.
#[derive(Debug, Clone)]
pub struct GemmFusion {
    /// GEMMs sharing one A operand (Q/K/V, gate/up), in execution order;
    /// usually one.
    pub members: Vec<GemmMember>,
    pub producer: Option<RowProducer>,
    pub blocking: GemmBlocking,
    pub variant: GemmVariant,
}

/// How a group's nodes become one kernel.
#[derive(Debug, Clone)]
pub enum FusionStrategy {
    /// One node on its own.
    Standalone,
    /// Elementwise/injective nodes in one pass over memory.
    LoopFusion,
    /// A row op (norm, softmax) whose elementwise consumers run before its store.
    RowFusion { row_op: NodeId, epilogue: Vec<EpilogueOp> },
    /// GEMM(s) with epilogues and possibly a tile-fused producer.
    Gemm(GemmFusion),
}

impl FusionStrategy {
    /// Short name for tables.
    pub fn name(&self) -> &'static str {
        match self {
            FusionStrategy::Standalone => "Standalone",
            FusionStrategy::LoopFusion => "LoopFusion",
            FusionStrategy::RowFusion { .. } => "RowFusion",
            FusionStrategy::Gemm(g) => match (&g.producer, g.members.len()) {
                (Some(RowProducer { placement: ProducerPlacement::TileLevelFusion { .. }, .. }), _) => {
                    "TileLevelFusion"
                }
                (_, n) if n > 1 => "SharedInputGemm",
                _ if g.members.iter().any(|m| !m.epilogue.is_empty()) => "EpilogueInjection",
                _ => "Gemm",
            },
        }
    }
}

/// One kernel's worth of nodes.
#[derive(Debug, Clone)]
pub struct FusionGroup {
    pub id: usize,
    /// Nodes in execution order within the group.
    pub nodes: Vec<NodeId>,
    pub strategy: FusionStrategy,
    /// Tensors read from outside the group (activations, weights, extras).
    pub inputs: Vec<TensorId>,
    /// Tensors the group writes for later groups or the caller.
    pub outputs: Vec<TensorId>,
    /// Tensors passed between the group's nodes in registers (or, for a
    /// tile-fused producer, through the group's tile scratch): never stored whole.
    pub carried: Vec<TensorId>,
    pub parallel: ParallelStrategy,
    /// Why the planner decided what it did, for people.
    pub reasons: Vec<String>,
}

/// The result of Phase 2 for one graph on one device.
#[derive(Debug, Clone)]
pub struct FusionPlan {
    /// The profile's name, for reports.
    pub profile: String,
    /// The ISA of each kernel class, in [`KernelClass::ALL`] order.
    pub isas: [(KernelClass, Isa); 2],
    pub l1d_bytes: usize,
    pub threads: usize,
    /// The GEMM blocking of this profile (per-group copies may be clipped).
    pub blocking: GemmBlocking,
    /// Groups in a valid execution (topological) order.
    pub groups: Vec<FusionGroup>,
    pub buffers: BufferPlan,
    /// A readable name per tensor id (its source and shape), for reports.
    pub tensor_names: Vec<String>,
}

impl FusionPlan {
    /// The group containing `node`.
    pub fn group_of(&self, node: NodeId) -> Option<&FusionGroup> {
        self.groups.iter().find(|g| g.nodes.contains(&node))
    }
}

/// Validates `graph` against the built-in registry, analyses it and plans it
/// for `profile`.
pub fn fuse(graph: &CompilerGraph, profile: &DeviceProfile) -> Result<FusionPlan, GraphError> {
    fuse_with(graph, profile, ScalarOpRegistry::global())
}

/// [`fuse`] with a caller's registry (custom operators).
pub fn fuse_with(
    graph: &CompilerGraph,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
) -> Result<FusionPlan, GraphError> {
    let sem = graph.analyse(registry)?;
    Ok(plan(&sem, profile))
}

/// What the planner may do. The default fuses everything the rules allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FusionOptions {
    /// When false every node is its own group (GEMMs without epilogues or
    /// fused producers): the unfused baseline that fused plans are checked
    /// and measured against.
    pub fuse: bool,
    /// Bytes left free after every scratchpad buffer (0 in production): a
    /// compiled layer can fill them with a canary and check after a run
    /// that no kernel wrote past its buffer (`CompiledLayer::run_checked`).
    pub arena_guard_bytes: usize,
}

impl Default for FusionOptions {
    fn default() -> Self {
        FusionOptions { fuse: true, arena_guard_bytes: 0 }
    }
}

/// Plans an already analysed graph.
pub fn plan(sem: &SemanticGraph, profile: &DeviceProfile) -> FusionPlan {
    plan_with(sem, profile, FusionOptions::default())
}

/// [`plan`] with explicit [`FusionOptions`].
pub fn plan_with(sem: &SemanticGraph, profile: &DeviceProfile, options: FusionOptions) -> FusionPlan {
    let groups = planner::group(sem, profile, options);
    let buffers = buffers::plan_buffers(sem, &groups, options.arena_guard_bytes);
    FusionPlan {
        profile: match &profile.source {
            crate::device::ProfileSource::Detected => format!("detected ({})", profile.name),
            crate::device::ProfileSource::Preset(p) => format!("preset {p}"),
            crate::device::ProfileSource::File(f) => format!("file {f}"),
        },
        isas: profile.class_isas(),
        l1d_bytes: profile.caches.l1d.size_bytes,
        threads: parallel::threads_for(profile),
        blocking: profile.gemm_blocking(),
        groups,
        buffers,
        tensor_names: sem
            .tensors
            .iter()
            .map(|t| format!("{} {}", explain::ref_name(sem.graph, &t.source), t.desc))
            .collect(),
    }
}
