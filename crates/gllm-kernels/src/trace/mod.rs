//! Phase 0: binary symbolic execution of scalar reference functions.
//!
//! ```text
//!   fn address ──[cfg: decode by following branches, find loops]──> CodeMap
//!              ──[exec: run control flow concretely, f32 data symbolically]──> expression DAGs per output
//!              ──[lift: fold chains → reductions, per-element templates → bodies]──> OpTrace
//! ```
//!
//! The analyser receives only a function pointer and the meaning of its
//! arguments ([`OpSignature`]). Pointers and lengths get concrete values (each
//! pointer its own far-apart region), so everything rustc emits around the
//! math — alias checks, unrolled and vectorised bodies, remainder loops, early
//! returns — resolves by itself, while every f32 is a symbolic expression.
//! The resulting per-element expressions are then lifted into an [`OpTrace`]
//! and checked to be the same for every output element and for two different
//! lengths; anything that does not fit is a [`TraceError`], never a guess.
//! See `docs/phase0.md` for the full argument.

mod cfg;
mod error;
mod eval;
mod exec;
mod expr;
mod lift;
mod math_op;
mod memory;

pub use cfg::{CodeMap, LoopInfo};
pub use error::{TraceError, TraceErrorKind};
pub use eval::EvalError;
pub use math_op::{powf_address, MathOp};
pub use memory::{BufferMemory, CodeMemory, ProcessMemory};

use crate::scalar::{OpSignature, ScalarFn};
use std::fmt;

/// Equal as values, NaN equal to NaN (±0 equal too): what "computes the
/// same" means when the order of an order-insensitive combine may differ.
pub(crate) fn same_value(a: f32, b: f32) -> bool {
    a == b || a.is_nan() && b.is_nan()
}

/// Index of a value within a [`Body`] (SSA: operands always refer to earlier values).
pub type ValueId = u32;

/// Comparison predicates (ordered comparisons are false on NaN; `Ne` is unordered-or-not-equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpPred {
    Eq,
    Lt,
    Le,
    Ne,
    /// Not less than (true on NaN).
    Nlt,
    /// Not less or equal (true on NaN).
    Nle,
    /// Either operand is NaN.
    Unord,
    /// Neither operand is NaN.
    Ord,
}

impl CmpPred {
    pub fn eval(self, a: f32, b: f32) -> bool {
        match self {
            CmpPred::Eq => a == b,
            CmpPred::Lt => a < b,
            CmpPred::Le => a <= b,
            CmpPred::Ne => a != b,
            // "Not less than" is true on NaN, unlike `>=`.
            CmpPred::Nlt => a.partial_cmp(&b) != Some(std::cmp::Ordering::Less),
            CmpPred::Nle => {
                !matches!(a.partial_cmp(&b), Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal))
            }
            CmpPred::Unord => a.is_nan() || b.is_nan(),
            CmpPred::Ord => !a.is_nan() && !b.is_nan(),
        }
    }
}

/// One scalar operation of a trace body.
///
/// Semantics are exact IEEE-754 single precision; `Max`/`Min` have the x86
/// (and `vmaxps`) meaning `a > b ? a : b` / `a < b ? a : b`, so they return `b`
/// when either is NaN. `Exp`, `Log`, `Tanh` mean the libm functions the
/// reference called (`expf`, `logf`, `tanhf`); so do `Math` (see [`MathOp`])
/// and `Pow` (`powf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceOp {
    /// The current element of tensor input `k` (numbering: the signature's inputs).
    Input(u8),
    /// Scalar parameter `k` (numbering: the signature's scalar params).
    Param(u8),
    /// Dimension `k` converted to f32 (e.g. the row length in a mean).
    Dim(u8),
    /// An f32 constant, by bit pattern.
    Const(u32),
    /// The running accumulator (only in a fold's combine body).
    Acc,
    /// The final value of fold `k` (only in the row body).
    FoldResult(u8),
    /// Row scalar `k`: output `k` of the row body.
    RowScalar(u8),
    Add(ValueId, ValueId),
    Sub(ValueId, ValueId),
    Mul(ValueId, ValueId),
    Div(ValueId, ValueId),
    Max(ValueId, ValueId),
    Min(ValueId, ValueId),
    /// a·b + c with one rounding.
    Fma(ValueId, ValueId, ValueId),
    Neg(ValueId),
    Abs(ValueId),
    Sqrt(ValueId),
    Exp(ValueId),
    Log(ValueId),
    Tanh(ValueId),
    /// Another one-argument libm function, or an exact rounding.
    Math(MathOp, ValueId),
    /// `powf(a, b)`.
    Pow(ValueId, ValueId),
    /// `a` with the sign of `b`.
    CopySign(ValueId, ValueId),
    /// A comparison mask (true/false), used only by `Select`.
    Cmp(CmpPred, ValueId, ValueId),
    /// `cond ? a : b`.
    Select(ValueId, ValueId, ValueId),
}

impl TraceOp {
    /// The same op reading `f(v)` instead of each operand `v` (renumbering
    /// when bodies are pruned, reordered or composed).
    pub fn map_operands(&self, f: impl Fn(ValueId) -> ValueId) -> TraceOp {
        use TraceOp::*;
        match *self {
            Add(a, b) => Add(f(a), f(b)),
            Sub(a, b) => Sub(f(a), f(b)),
            Mul(a, b) => Mul(f(a), f(b)),
            Div(a, b) => Div(f(a), f(b)),
            Max(a, b) => Max(f(a), f(b)),
            Min(a, b) => Min(f(a), f(b)),
            Fma(a, b, c) => Fma(f(a), f(b), f(c)),
            Neg(a) => Neg(f(a)),
            Abs(a) => Abs(f(a)),
            Sqrt(a) => Sqrt(f(a)),
            Exp(a) => Exp(f(a)),
            Log(a) => Log(f(a)),
            Tanh(a) => Tanh(f(a)),
            Math(m, a) => Math(m, f(a)),
            Pow(a, b) => Pow(f(a), f(b)),
            CopySign(a, b) => CopySign(f(a), f(b)),
            Cmp(p, a, b) => Cmp(p, f(a), f(b)),
            Select(c, a, b) => Select(f(c), f(a), f(b)),
            leaf => leaf,
        }
    }

    /// A libm function other than sqrt/fma: the JIT computes it with a
    /// MathApprox routine (a few ulps from libm) or calls libm per lane, so
    /// it is costly and may differ slightly from the reference.
    pub fn is_libm_call(&self) -> bool {
        match self {
            TraceOp::Exp(_) | TraceOp::Log(_) | TraceOp::Tanh(_) | TraceOp::Pow(..) => true,
            TraceOp::Math(m, _) => !m.is_exact(),
            _ => false,
        }
    }

    /// Values this op reads.
    pub fn operands(&self) -> Vec<ValueId> {
        use TraceOp::*;
        match *self {
            Input(_) | Param(_) | Dim(_) | Const(_) | Acc | FoldResult(_) | RowScalar(_) => vec![],
            Neg(a) | Abs(a) | Sqrt(a) | Exp(a) | Log(a) | Tanh(a) | Math(_, a) => vec![a],
            Pow(a, b)
            | CopySign(a, b)
            | Add(a, b)
            | Sub(a, b)
            | Mul(a, b)
            | Div(a, b)
            | Max(a, b)
            | Min(a, b)
            | Cmp(_, a, b) => {
                vec![a, b]
            }
            Fma(a, b, c) | Select(a, b, c) => vec![a, b, c],
        }
    }
}

impl fmt::Display for TraceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use TraceOp::*;
        match *self {
            Input(k) => write!(f, "input {k}"),
            Param(k) => write!(f, "param {k}"),
            Dim(k) => write!(f, "dim {k} as f32"),
            Const(bits) => write!(f, "const {:?}", f32::from_bits(bits)),
            Acc => write!(f, "acc"),
            FoldResult(k) => write!(f, "fold {k} result"),
            RowScalar(k) => write!(f, "row scalar {k}"),
            Add(a, b) => write!(f, "add %{a}, %{b}"),
            Sub(a, b) => write!(f, "sub %{a}, %{b}"),
            Mul(a, b) => write!(f, "mul %{a}, %{b}"),
            Div(a, b) => write!(f, "div %{a}, %{b}"),
            Max(a, b) => write!(f, "max %{a}, %{b}"),
            Min(a, b) => write!(f, "min %{a}, %{b}"),
            Fma(a, b, c) => write!(f, "fma %{a}, %{b}, %{c}"),
            Neg(a) => write!(f, "neg %{a}"),
            Abs(a) => write!(f, "abs %{a}"),
            Sqrt(a) => write!(f, "sqrt %{a}"),
            Exp(a) => write!(f, "exp %{a}"),
            Log(a) => write!(f, "log %{a}"),
            Tanh(a) => write!(f, "tanh %{a}"),
            Math(m, a) => write!(f, "{} %{a}", m.name()),
            Pow(a, b) => write!(f, "pow %{a}, %{b}"),
            CopySign(a, b) => write!(f, "copysign %{a}, %{b}"),
            Cmp(p, a, b) => write!(f, "cmp.{p:?} %{a}, %{b}"),
            Select(c, a, b) => write!(f, "select %{c}, %{a}, %{b}"),
        }
    }
}

/// An SSA list of operations and which of its values are results.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Body {
    pub ops: Vec<TraceOp>,
    pub outputs: Vec<ValueId>,
}

impl Body {
    /// Tensor inputs this body reads (sorted, distinct).
    pub fn inputs_used(&self) -> Vec<u8> {
        let mut v: Vec<u8> = self
            .ops
            .iter()
            .filter_map(|op| if let TraceOp::Input(k) = op { Some(*k) } else { None })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, indent: &str) -> fmt::Result {
        for (i, op) in self.ops.iter().enumerate() {
            writeln!(f, "{indent}%{i} = {op}")?;
        }
        let outs: Vec<String> = self.outputs.iter().map(|o| format!("%{o}")).collect();
        writeln!(f, "{indent}=> {}", outs.join(", "))
    }
}

/// A left fold over the reduced axis: `acc = identity; for each position: acc = combine(acc, elements)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fold {
    /// Initial accumulator, as f32 bits.
    pub identity: u32,
    /// Computes the new accumulator from `Acc`, the position's `Input`s and earlier `RowScalar`s.
    pub combine: Body,
}

/// What kind of computation an operator is, recognised from its structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ComputePattern {
    /// One input, one output, element by element.
    Elementwise,
    /// Two inputs, one output, element by element.
    BinaryElementwise,
    /// Element by element with more inputs or several outputs (RoPE: 4 in, 2 out).
    Injective { num_inputs: usize, num_outputs: usize },
    /// Folds over a row with one result per row (sum, max, dot).
    Reduction,
    /// Folds over a row, then an elementwise pass using their results (norms, softmax).
    NormLike,
    /// `C[i,j] = fold over p of A[i,p]·B[p,j]`; `m`, `n`, `k` say which
    /// dimension argument is which, `layout` how the reference function
    /// reads its operands (it matters only for calling that function: a
    /// graph says how its tensors are stored with `MatMulParams`).
    Gemm { m: u8, n: u8, k: u8, layout: GemmLayout },
}

/// How a GEMM reference function's operands are laid out, learned from
/// the addresses it reads: A is `m×k` row-major or, transposed, `k×m`; B is
/// `k×n` or, transposed, `n×k` (`acc += a[i*k+p] * b[j*k+p]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GemmLayout {
    pub a_transposed: bool,
    pub b_transposed: bool,
}

impl GemmLayout {
    /// Every layout, the plain one first (tried in this order).
    pub const ALL: [GemmLayout; 4] = [
        GemmLayout { a_transposed: false, b_transposed: false },
        GemmLayout { a_transposed: false, b_transposed: true },
        GemmLayout { a_transposed: true, b_transposed: false },
        GemmLayout { a_transposed: true, b_transposed: true },
    ];

    /// Index of A[i, p] in the function's A.
    pub fn a_index(self, i: usize, p: usize, m: usize, k: usize) -> usize {
        if self.a_transposed {
            p * m + i
        } else {
            i * k + p
        }
    }

    /// Index of B[p, j] in the function's B.
    pub fn b_index(self, p: usize, j: usize, n: usize, k: usize) -> usize {
        if self.b_transposed {
            j * k + p
        } else {
            p * n + j
        }
    }
}

impl fmt::Display for GemmLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |x: bool| if x { "ᵀ" } else { "" };
        write!(f, "A{}·B{}", t(self.a_transposed), t(self.b_transposed))
    }
}

/// Fusion class, TVM-style; derived from the pattern, never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpClass {
    ElemWise,
    Injective,
    Reduction,
    Gemm,
    Opaque,
}

impl ComputePattern {
    pub fn class(&self) -> OpClass {
        match self {
            ComputePattern::Elementwise | ComputePattern::BinaryElementwise => OpClass::ElemWise,
            ComputePattern::Injective { .. } => OpClass::Injective,
            ComputePattern::Reduction | ComputePattern::NormLike => OpClass::Reduction,
            ComputePattern::Gemm { .. } => OpClass::Gemm,
        }
    }
}

/// What Phase 0 learned about one operator.
///
/// Evaluation order, per row (or per output element of a GEMM): each fold in
/// turn (its combine may use row scalars that depend only on earlier folds),
/// the row body's scalars as soon as their folds are done, then `body` once
/// per output element (`Input`s are that element of each input; a reduction's
/// body has no `Input` and runs once).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpTrace {
    pub pattern: ComputePattern,
    pub folds: Vec<Fold>,
    /// Per-row scalars computed from fold results, params, dims and constants.
    pub row: Body,
    /// The per-output-element computation.
    pub body: Body,
    /// Tensor inputs of the op (the signature's), whether or not all are read.
    pub num_inputs: usize,
    /// Loops found in the machine code (back edges), for reporting.
    pub loops: Vec<LoopInfo>,
    /// The code has a vectorised path that leaves its loop when it sees a
    /// NaN (LLVM's `f32::max` folds at -O2/-O3), analysed as if none came:
    /// the trace holds for inputs without NaN by construction, and
    /// [`crate::scalar::RegisteredOp::trace`] checks it against the function
    /// on inputs with NaNs before handing it out.
    pub assumed_no_nan: bool,
}

impl OpTrace {
    /// The fusion class of this op.
    pub fn class(&self) -> OpClass {
        self.pattern.class()
    }

    /// Deepest loop nesting in the machine code (0 = straight-line).
    pub fn loop_depth(&self) -> usize {
        self.loops.iter().map(|l| l.depth).max().unwrap_or(0)
    }
}

impl fmt::Display for OpTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pattern {:?} (class {:?}), {} input(s)", self.pattern, self.class(), self.num_inputs)?;
        writeln!(f, "machine-code loops: {} (max depth {})", self.loops.len(), self.loop_depth())?;
        for (i, fold) in self.folds.iter().enumerate() {
            writeln!(f, "fold {i}: identity {:?}", f32::from_bits(fold.identity))?;
            fold.combine.write(f, "  ")?;
        }
        if !self.row.ops.is_empty() {
            writeln!(f, "row:")?;
            self.row.write(f, "  ")?;
        }
        writeln!(f, "body:")?;
        self.body.write(f, "  ")
    }
}

/// Analyses the live function `func` (in this process) with the given meaning
/// of its arguments.
pub fn analyse(name: &str, func: &ScalarFn, signature: &OpSignature) -> Result<OpTrace, TraceError> {
    let memory = ProcessMemory::new();
    analyse_in(name, func.address() as u64, signature, &memory)
}

/// Analyses the code at `entry`, reading code and constants through `memory`
/// (used directly by tests to analyse arbitrary byte buffers).
pub fn analyse_in(
    name: &str,
    entry: u64,
    signature: &OpSignature,
    memory: &dyn CodeMemory,
) -> Result<OpTrace, TraceError> {
    let code = CodeMap::discover(name, entry, memory)?;
    lift::lift(name, &code, signature, memory)
}
