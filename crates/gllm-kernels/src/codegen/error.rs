//! Why code generation or a run of generated code failed: variants a caller
//! can act on (fix the arguments, choose another ISA, plan smaller groups),
//! with the details as data.

use crate::device::Isa;
use crate::quant::QuantFormat;
use crate::runtime::RuntimeError;
use crate::trace::TraceOp;
use iced_x86::IcedError;
use std::sync::Arc;
use thiserror::Error;

/// Why a kernel could not be generated or run.
#[derive(Debug, Error)]
pub enum CodegenError {
    #[error("assembler rejected generated code: {0}")]
    Assemble(#[from] IcedError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("code for {isa} cannot run on this CPU (it lacks the features)")]
    IsaNotOnHost { isa: Isa },
    #[error("slice lengths differ: a has {a}, b has {b}, out has {out}")]
    LengthMismatch { a: usize, b: usize, out: usize },
    #[error("out of vector registers while lowering {at}")]
    OutOfRegisters { at: RegisterUse },
    /// A comparison mask where a number is needed (or the reverse): the
    /// lowering's SSA discipline was broken by the body it was given.
    #[error("cannot generate code for {0}")]
    MaskMisuse(MaskMisuse),
    #[error("kernel takes {inputs} inputs and {outputs} outputs, got {got_inputs} and {got_outputs}")]
    ArgumentCount { inputs: usize, outputs: usize, got_inputs: usize, got_outputs: usize },
    #[error(
        "input {index} has {got} elements; expected {full} ({rows} rows × {row_len}) or one row of {row_len}"
    )]
    InputLength { index: usize, got: usize, full: usize, rows: usize, row_len: usize },
    #[error("output {index} has {got} elements, expected {want}")]
    OutputLength { index: usize, got: usize, want: usize },
    #[error("{what} has {got} elements, expected {want}")]
    Length { what: Buffer, got: usize, want: usize },
    #[error("weight `{name}` is missing")]
    MissingWeight { name: String },
    #[error("weight `{name}` was not prepared for this graph")]
    WeightNotPrepared { name: String },
    #[error("{what}weight `{name}` has {got} elements, the graph declares {want}", what = if *.prepared { "prepared " } else { "" })]
    WeightLength { name: String, got: usize, want: usize, prepared: bool },
    #[error(
        "quantised weight `{name}` is {rows}×{cols} (rows × cols); the graph's {k}×{n} operand needs {n}×{k}"
    )]
    QuantWeightShape { name: String, rows: usize, cols: usize, k: usize, n: usize },
    #[error("the graph takes {want} inputs, {got} given")]
    GraphInputCount { want: usize, got: usize },
    #[error("the graph has {want} outputs, {got} given")]
    GraphOutputCount { want: usize, got: usize },
    /// A graph input or output the caller passed with the wrong length.
    #[error("{}{tensor} has {got} elements, the graph declares {want}", if *.output { "output " } else { "" })]
    TensorLength { tensor: crate::graph::TensorRef, got: usize, want: usize, output: bool },
    #[error(
        "activations quantised ({acts_precision}) for {acts_format} rows of {acts_cols} reach a {format} matrix \
         with rows of {cols} ({precision})"
    )]
    QuantActivationsMismatch {
        acts_format: crate::quant::QuantFormat,
        acts_cols: usize,
        acts_precision: crate::quant::ActivationPrecision,
        format: crate::quant::QuantFormat,
        cols: usize,
        precision: crate::quant::ActivationPrecision,
    },
    #[error("parameter {index} is used but {given} given")]
    MissingParameter { index: usize, given: usize },
    #[error("cannot generate code for {0}")]
    Unsupported(Unsupported),
    #[error("{0}")]
    BadArguments(BadArguments),
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    #[error("cannot fuse: {0}")]
    Compose(#[from] crate::fusion::compose::ComposeError),
    #[error(
        "a kernel wrote into the scratchpad's guard gap at byte {offset_bytes} (past one of its buffers)"
    )]
    ArenaGuardOverwritten { offset_bytes: usize },
}

/// What the generator cannot produce code for: a caller can plan the group
/// differently (smaller, unfused) or leave the op to the reference path.
#[derive(Debug, Error)]
pub enum Unsupported {
    #[error("more than {max} extra operands in one GEMM epilogue")]
    EpilogueExtras { max: usize },
    #[error("an epilogue op reading more than one extra input")]
    EpilogueOpExtras,
    #[error("an epilogue needing {need} scratch registers: the {mr}×{nr} microkernel leaves {spare}")]
    EpilogueRegisters { need: usize, mr: usize, nr: usize, spare: usize },
    #[error("`{0}` in a GEMM epilogue")]
    EpilogueOp(TraceOp),
    #[error("GEMM kernel variants ({0})")]
    GemmVariants(Arc<CodegenError>),
    #[error("a non-GEMM group in the GEMM compiler")]
    NotAGemmGroup,
    #[error("an empty GEMM group")]
    EmptyGemmGroup,
    #[error("a GEMM group member without MatMul parameters")]
    GemmWithoutParams,
    #[error("a batched GEMM sharing its input or with a tile-fused producer")]
    SharedBatchedGemm,
    #[error("GEMM `{node}` whose B is not a weight")]
    GemmBNotWeight { node: String },
    #[error("GEMM groups (they have their own generator)")]
    GemmGroupAsLoop,
    #[error("a GEMM in a loop kernel (GEMMs have their own generator)")]
    GemmInLoopKernel,
    #[error("broadcast of {elements} elements over {over}")]
    Broadcast { elements: usize, over: usize },
    #[error("fold that is not `acc ⊕ f(x)` with ⊕ ∈ {{+, max, min}}: {combine:?}")]
    FoldShape { combine: Box<crate::trace::Body> },
    #[error("{streams} tensor streams (at most {max})")]
    Streams { streams: usize, max: usize },
    #[error("an element input in a per-row body")]
    ElementInputPerRow,
    #[error("dimension {0} in a loop kernel (only the row length)")]
    Dimension(u8),
    #[error("`{0}` as a leaf")]
    Leaf(TraceOp),
    #[error("a GEMV kernel for {0} weights")]
    QuantFormat(QuantFormat),
    #[error("{format} GEMV kernel: {cause}")]
    QuantKernel { format: QuantFormat, cause: Arc<CodegenError> },
    #[error("{op:?} ({source})")]
    OpTrace { op: crate::scalar::OpKind, source: Box<crate::scalar::RegistryError> },
}

/// Arguments that do not fit the compiled code: the caller's to fix.
#[derive(Debug, Error)]
pub enum BadArguments {
    #[error("the epilogue reads {want} extra operand(s), {given} given")]
    EpilogueOperands { want: usize, given: usize },
    #[error("extra operand {index} has {got} elements; expected {n} (one row) or {} ({m}×{n})", m * n)]
    ExtraLength { index: usize, got: usize, m: usize, n: usize },
    #[error(
        "extra operand {index} has {got} elements; expected {row_len} (a row of C), {} (C's shape) \
         or {} (one matrix for every batch element)",
        batch * m * n, m * n
    )]
    BatchedExtraLength { index: usize, got: usize, row_len: usize, batch: usize, m: usize, n: usize },
    #[error("B was packed for another blocking")]
    PackedForOtherBlocking,
    #[error("epilogue parameter {0} missing")]
    EpilogueParameter(usize),
    #[error("member {member} does not share K = {k} and the blocking of member 0")]
    MemberShape { member: usize, k: usize },
    #[error("member {member}'s extra {slot} names member {named}, which is not another member")]
    MemberExtraNotMember { member: usize, slot: usize, named: usize },
    #[error("member {member}'s extra {slot} is member {producer}'s result, which is computed later")]
    MemberExtraLater { member: usize, slot: usize, producer: usize },
    #[error("member {member}: {source}")]
    Member { member: usize, source: Box<CodegenError> },
    #[error("a batched GEMM group has one output")]
    BatchedGroupOutputs,
    #[error("the group has {members} members; got {weights} weights and {outputs} outputs")]
    GroupOperands { members: usize, weights: usize, outputs: usize },
    #[error(
        "member {member}'s weight is {k}×{n}, the graph declares K = {want_k} and C of {want_c} elements"
    )]
    MemberWeightShape { member: usize, k: usize, n: usize, want_k: usize, want_c: usize },
    #[error("batch {batch} must be a non-zero multiple of b_shared_by {shared_by}")]
    BatchSharing { batch: usize, shared_by: usize },
    #[error(
        "attention with {heads} heads over {kv_heads} KV heads of dimension {head_dim}: heads must be a \
         non-zero multiple of KV heads"
    )]
    AttentionHeads { heads: usize, kv_heads: usize, head_dim: usize },
    #[error(
        "attention queries have {q} elements and the output {out}: both must be the same multiple of {q_dim}"
    )]
    AttentionQueries { q: usize, out: usize, q_dim: usize },
    #[error("the {cache} cache holds {positions} positions; attention needs {ctx}")]
    KvCacheShort { cache: KvCache, positions: usize, ctx: usize },
    #[error("{scores} scores and a mask of {mask} for {heads} heads of {rows}×{ctx}")]
    AttentionMask { scores: usize, mask: usize, heads: usize, rows: usize, ctx: usize },
    #[error("tensor {0} has no memory in the plan")]
    TensorWithoutMemory(usize),
    #[error("no inputs")]
    NoInputs,
    #[error("paired-halves input/output must have {want} elements, got {x} and {out}")]
    PairedLength { want: usize, x: usize, out: usize },
    #[error("paired-halves tables must have {want} elements")]
    PairedTables { want: usize },
    #[error("input has {x} elements, output {out}")]
    UnaryLengths { x: usize, out: usize },
}

/// Which half of a KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvCache {
    K,
    V,
}

impl std::fmt::Display for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvCache::K => "key",
            KvCache::V => "value",
        })
    }
}

/// What needed a vector register when none was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterUse {
    /// A value of a lowered body.
    Op(TraceOp),
    /// The accumulator of fold `k`.
    Fold(usize),
    /// Merging a fold's lanes at the end of a row.
    FoldTail,
    /// The masked loads of a row's tail.
    TailLoads,
    /// The per-element pass.
    ElementBody,
    /// A fold's combine step.
    FoldCombine,
}

impl std::fmt::Display for RegisterUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterUse::Op(op) => write!(f, "`{op}`"),
            RegisterUse::Fold(k) => write!(f, "fold {k}"),
            RegisterUse::FoldTail => f.write_str("a fold's tail"),
            RegisterUse::TailLoads => f.write_str("the tail loads"),
            RegisterUse::ElementBody => f.write_str("the element body"),
            RegisterUse::FoldCombine => f.write_str("a fold's combine"),
        }
    }
}

/// How a body used a comparison mask wrongly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MaskMisuse {
    #[error("a mask used as a number")]
    AsNumber,
    #[error("a body whose result is a mask")]
    AsResult,
    #[error("comparison of masks")]
    Compared,
    #[error("select on a value that is not a comparison")]
    NotAMask,
}

/// An operand of a GEMM or GEMV call, for length errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// The GEMM's A (activations).
    A,
    /// The GEMM's B (weights, unpacked).
    B,
    /// The GEMM's C (output).
    C,
    /// C of member `k` of a shared-input GEMM group.
    MemberC(usize),
    /// A GEMV's input vector(s).
    X,
    /// A GEMV's output vector(s).
    Y,
}

impl std::fmt::Display for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Buffer::A => f.write_str("A"),
            Buffer::B => f.write_str("B"),
            Buffer::C => f.write_str("C"),
            Buffer::MemberC(k) => write!(f, "C of member {k}"),
            Buffer::X => f.write_str("x"),
            Buffer::Y => f.write_str("y"),
        }
    }
}

/// `Ok` when `got == want`, else [`CodegenError::Length`].
pub(crate) fn check_length(what: Buffer, got: usize, want: usize) -> Result<(), CodegenError> {
    if got != want {
        return Err(CodegenError::Length { what, got, want });
    }
    Ok(())
}
