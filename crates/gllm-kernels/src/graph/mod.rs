//! Phase 1: the compiler graph — a DAG of atomic operators over typed tensors.
//!
//! ```text
//!   CompilerGraph (nodes: OpKind + OpParams over TensorRefs, built by gllm)
//!      ──[analyse: registry signature → arity/roles/lengths, trace → class and shape rule,
//!                  def-use edges, post-dominators]──> SemanticGraph ──> fusion::plan
//! ```
//!
//! Guarantees of a `SemanticGraph`: every node's op is registered and
//! traced, every tensor's shape agrees with its producer and consumers,
//! the graph is acyclic with every output used or returned; bad input is a
//! [`GraphError`] naming the node and the problem.
//!
//! The front end (gllm) expands its model-level fused ops into this graph; the
//! compiler validates it ([`CompilerGraph::analyse`]) into a [`SemanticGraph`]
//! that knows each node's trace and class, its tensors' def-use edges and
//! post-dominators. Phase 2 ([`crate::fusion`]) plans from that.
//!
//! Nothing here knows what an operator computes: arities, roles and lengths come
//! from the operator's registered signature, classes from its trace.

mod analysis;
mod validate;

pub use analysis::{SemanticGraph, SemanticNode, TensorEdge, TensorId};
pub use validate::GraphError;

use crate::scalar::OpKind;
use std::fmt;

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        })
    }
}

/// The largest graph the validator accepts, in nodes: far beyond any model
/// layer stack (a LLaMA-70B layer is ~30 nodes; 80 layers ~2 400), small
/// enough that analysing and planning it fits in memory.
pub const MAX_NODES: usize = 1 << 20;

/// The largest tensor the validator accepts (1 TiB): a shape beyond it is a
/// mistake, not a model, and its sizes would overflow the planner's sums.
pub const MAX_TENSOR_BYTES: usize = 1 << 40;

/// Shape and element type of a tensor (row-major, last dimension contiguous).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorDesc {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorDesc {
    pub fn new(shape: impl Into<Vec<usize>>, dtype: DType) -> TensorDesc {
        TensorDesc { shape: shape.into(), dtype }
    }

    /// An f32 tensor: the common case.
    pub fn f32(shape: impl Into<Vec<usize>>) -> TensorDesc {
        TensorDesc::new(shape, DType::F32)
    }

    /// Number of elements (1 for a 0-d tensor).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn size_bytes(&self) -> usize {
        self.numel() * self.dtype.size_bytes()
    }

    /// Bytes, or `None` if the count overflows: the validator's check
    /// before anything trusts [`TensorDesc::size_bytes`].
    pub fn checked_size_bytes(&self) -> Option<usize> {
        self.shape.iter().try_fold(self.dtype.size_bytes(), |acc, &d| acc.checked_mul(d))
    }

    /// Length of the last (contiguous) dimension: a row.
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows: the product of all but the last dimension.
    pub fn rows(&self) -> usize {
        self.shape.iter().rev().skip(1).product()
    }
}

impl fmt::Display for TensorDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dims: Vec<String> = self.shape.iter().map(|d| d.to_string()).collect();
        write!(f, "{}[{}]", self.dtype, dims.join("×"))
    }
}

/// Index of a node in [`CompilerGraph::nodes`].
pub type NodeId = usize;

/// Where a node input comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TensorRef {
    /// Graph input `k` (the caller's activations, tables, caches).
    Input(usize),
    /// Output `output` of node `node`.
    Node { node: NodeId, output: usize },
    /// A named weight, bound when the layer's weights are loaded.
    Weight(String),
}

impl TensorRef {
    /// The first (usually only) output of `node`.
    pub fn node(node: NodeId) -> TensorRef {
        TensorRef::Node { node, output: 0 }
    }

    pub fn weight(name: impl Into<String>) -> TensorRef {
        TensorRef::Weight(name.into())
    }
}

impl fmt::Display for TensorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TensorRef::Input(k) => write!(f, "input {k}"),
            TensorRef::Node { node, output: 0 } => write!(f, "node {node}"),
            TensorRef::Node { node, output } => write!(f, "node {node} output {output}"),
            TensorRef::Weight(name) => write!(f, "weight `{name}`"),
        }
    }
}

/// How the operands of one batch element sit in a batched GEMM's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BatchLayout {
    /// The batch is the outermost dimension: `[batch, rows, cols]`.
    #[default]
    Stacked,
    /// The batch is a block of columns: `[rows, batch·cols]` (attention heads
    /// inside a `[seq, heads·head_dim]` activation).
    Interleaved,
}

/// Parameters of `C = A·B` (possibly batched, as in attention).
///
/// Logical shapes per batch element: A is m×k, B is k×n (stored n×k when
/// `transpose_b`), C is m×n. With `b_shared_by = g`, batch element `i` uses B
/// element `i / g` (grouped-query attention).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatMulParams {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_b: bool,
    pub batch: usize,
    pub b_shared_by: usize,
    pub a_layout: BatchLayout,
    pub b_layout: BatchLayout,
    pub c_layout: BatchLayout,
}

impl MatMulParams {
    /// A plain, unbatched `[m,k]·[k,n]`.
    pub fn new(m: usize, n: usize, k: usize) -> MatMulParams {
        MatMulParams {
            m,
            n,
            k,
            transpose_b: false,
            batch: 1,
            b_shared_by: 1,
            a_layout: BatchLayout::Stacked,
            b_layout: BatchLayout::Stacked,
            c_layout: BatchLayout::Stacked,
        }
    }

    /// Multiply-adds of the whole (batched) product.
    pub fn flops(&self) -> u64 {
        2 * (self.batch as u64) * (self.m as u64) * (self.n as u64) * (self.k as u64)
    }
}

/// An operator's parameters beyond its tensors.
#[derive(Debug, Clone, PartialEq)]
pub enum OpParams {
    /// Nothing beyond the tensors (elementwise ops).
    None,
    MatMul(MatMulParams),
    /// Normalisation over the last dimension (RMSNorm, LayerNorm).
    Norm {
        eps: f32,
    },
    /// How a function written on two halves is applied to whole rows: its
    /// first two inputs are the lower and upper halves of each `period`-long
    /// block of the node's input 0, its two outputs the same halves of the
    /// node's one output, and its other inputs per-row tables of `period/2`
    /// shared by the row's blocks. RoPE is the case in point (a head's
    /// halves, cos/sin tables per token); any Injective function of that
    /// form works the same way, so nothing downstream names RoPE.
    PairedHalves {
        period: usize,
    },
    /// Softmax over `axis` (only the last axis, -1, is supported).
    Softmax {
        axis: i32,
    },
    /// The reference function's scalar arguments, in order (Scale's factor,
    /// custom operators' constants).
    Scalars(Vec<f32>),
}

impl OpParams {
    /// Values for the reference function's scalar (`f32`) arguments.
    pub fn scalar_args(&self) -> Vec<f32> {
        match self {
            OpParams::Norm { eps } => vec![*eps],
            OpParams::Scalars(v) => v.clone(),
            _ => Vec::new(),
        }
    }
}

/// One atomic operator with its parameters.
///
/// Everything else about the op — its arity, which input is its "extra"
/// operand (a weight, bias or residual streamed beside the data), its trace
/// — comes from the registry the graph is analysed with, so a custom op
/// registered at run time is built exactly like a built-in one.
#[derive(Debug, Clone, PartialEq)]
pub struct CompilerOp {
    pub kind: OpKind,
    pub params: OpParams,
}

impl CompilerOp {
    /// An op with no parameters.
    pub fn new(kind: OpKind) -> CompilerOp {
        CompilerOp::with_params(kind, OpParams::None)
    }

    pub fn with_params(kind: OpKind, params: OpParams) -> CompilerOp {
        CompilerOp { kind, params }
    }

    pub fn matmul(params: MatMulParams) -> CompilerOp {
        CompilerOp::with_params(OpKind::MatMul, OpParams::MatMul(params))
    }

    pub fn rms_norm(eps: f32) -> CompilerOp {
        CompilerOp::with_params(OpKind::RmsNorm, OpParams::Norm { eps })
    }

    pub fn layer_norm(eps: f32) -> CompilerOp {
        CompilerOp::with_params(OpKind::LayerNorm, OpParams::Norm { eps })
    }

    /// RoPE on the halves of each `head_dim`-wide head (the cos/sin tables
    /// are its inputs, so the frequency base stays with whoever builds them).
    pub fn rope(head_dim: usize) -> CompilerOp {
        CompilerOp::with_params(OpKind::Rope, OpParams::PairedHalves { period: head_dim })
    }

    pub fn softmax() -> CompilerOp {
        CompilerOp::with_params(OpKind::Softmax, OpParams::Softmax { axis: -1 })
    }

    pub fn scale(factor: f32) -> CompilerOp {
        CompilerOp::with_params(OpKind::Scale, OpParams::Scalars(vec![factor]))
    }

    /// The op's MatMul parameters, if it is one.
    pub fn matmul_params(&self) -> Option<&MatMulParams> {
        match &self.params {
            OpParams::MatMul(p) => Some(p),
            _ => None,
        }
    }
}

/// One node: an operator applied to tensors, producing one or more tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CompilerNode {
    /// A human name for plans and errors ("blk0.attn_norm").
    pub name: String,
    pub op: CompilerOp,
    pub inputs: Vec<TensorRef>,
    pub outputs: Vec<TensorDesc>,
}

/// The atomic-op DAG of (usually) one model layer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompilerGraph {
    /// Caller-provided tensors, referenced by [`TensorRef::Input`].
    pub inputs: Vec<(String, TensorDesc)>,
    /// Named weights, referenced by [`TensorRef::Weight`].
    pub weights: Vec<(String, TensorDesc)>,
    pub nodes: Vec<CompilerNode>,
    /// Tensors the caller reads back (must be node outputs).
    pub outputs: Vec<TensorRef>,
}

impl CompilerGraph {
    pub fn new() -> CompilerGraph {
        CompilerGraph::default()
    }

    /// Declares a graph input and returns a reference to it.
    pub fn input(&mut self, name: impl Into<String>, desc: TensorDesc) -> TensorRef {
        self.inputs.push((name.into(), desc));
        TensorRef::Input(self.inputs.len() - 1)
    }

    /// Declares a named weight and returns a reference to it.
    pub fn weight(&mut self, name: impl Into<String>, desc: TensorDesc) -> TensorRef {
        let name = name.into();
        self.weights.push((name.clone(), desc));
        TensorRef::Weight(name)
    }

    /// Appends a single-output node and returns a reference to its output.
    pub fn node(
        &mut self,
        name: impl Into<String>,
        op: CompilerOp,
        inputs: Vec<TensorRef>,
        output: TensorDesc,
    ) -> TensorRef {
        self.nodes.push(CompilerNode { name: name.into(), op, inputs, outputs: vec![output] });
        TensorRef::node(self.nodes.len() - 1)
    }

    /// Marks a tensor as a graph output.
    pub fn output(&mut self, t: TensorRef) {
        self.outputs.push(t);
    }

    /// The descriptor `r` refers to, if it exists.
    pub fn desc(&self, r: &TensorRef) -> Option<&TensorDesc> {
        match r {
            TensorRef::Input(k) => self.inputs.get(*k).map(|(_, d)| d),
            TensorRef::Node { node, output } => self.nodes.get(*node)?.outputs.get(*output),
            TensorRef::Weight(name) => self.weights.iter().find(|(n, _)| n == name).map(|(_, d)| d),
        }
    }

    /// Validates the graph against `registry` and analyses it (Phase 1).
    pub fn analyse(
        &self,
        registry: &crate::scalar::ScalarOpRegistry,
    ) -> Result<SemanticGraph<'_>, GraphError> {
        validate::validate(self, registry)?;
        analysis::analyse(self, registry)
    }
}
