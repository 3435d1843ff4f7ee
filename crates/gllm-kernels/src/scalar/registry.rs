use super::abi::{ScalarFn, ScalarFnPtr};
use super::signature::{FnForm, OpSignature, Returns, SignatureError};
use crate::trace::{OpTrace, TraceError, TraceErrorKind};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// An operator the compiler knows by a scalar reference function.
///
/// The built-in kinds cover a LLaMA-family layer; `Custom` names an operator
/// registered at run time. The compiler has no per-kind knowledge: what a kind
/// computes comes from its function's trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    MatMul,
    RmsNorm,
    LayerNorm,
    Softmax,
    Silu,
    Gelu,
    Relu,
    Sigmoid,
    Tanh,
    Exp,
    /// Elementwise product (VecMul).
    Mul,
    /// Elementwise sum (VecAdd, residual).
    Add,
    BiasAdd,
    /// Multiplication by a scalar parameter.
    Scale,
    Rope,
    /// silu(gate) · up.
    SwiGlu,
    /// Softmax over the two largest entries of a row, zero elsewhere (MoE routing).
    Top2Softmax,
    ReduceSum,
    ReduceMax,
    Dot,
    /// An operator registered at run time, by name.
    Custom(&'static str),
}

impl OpKind {
    /// Every built-in kind.
    pub const BUILTIN: [OpKind; 20] = [
        OpKind::MatMul,
        OpKind::RmsNorm,
        OpKind::LayerNorm,
        OpKind::Softmax,
        OpKind::Silu,
        OpKind::Gelu,
        OpKind::Relu,
        OpKind::Sigmoid,
        OpKind::Tanh,
        OpKind::Exp,
        OpKind::Mul,
        OpKind::Add,
        OpKind::BiasAdd,
        OpKind::Scale,
        OpKind::Rope,
        OpKind::SwiGlu,
        OpKind::Top2Softmax,
        OpKind::ReduceSum,
        OpKind::ReduceMax,
        OpKind::Dot,
    ];

    /// The name used in graphs, on the command line and in errors.
    pub fn name(&self) -> &'static str {
        match self {
            OpKind::MatMul => "matmul",
            OpKind::RmsNorm => "rms_norm",
            OpKind::LayerNorm => "layer_norm",
            OpKind::Softmax => "softmax",
            OpKind::Silu => "silu",
            OpKind::Gelu => "gelu",
            OpKind::Relu => "relu",
            OpKind::Sigmoid => "sigmoid",
            OpKind::Tanh => "tanh",
            OpKind::Exp => "exp",
            OpKind::Mul => "mul",
            OpKind::Add => "add",
            OpKind::BiasAdd => "bias_add",
            OpKind::Scale => "scale",
            OpKind::Rope => "rope",
            OpKind::SwiGlu => "swiglu",
            OpKind::Top2Softmax => "top2_softmax",
            OpKind::ReduceSum => "reduce_sum",
            OpKind::ReduceMax => "reduce_max",
            OpKind::Dot => "dot",
            OpKind::Custom(name) => name,
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a registry operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown operator `{name}` (registered: {known})")]
    UnknownOp { name: String, known: String },
    #[error("operator `{0}` is not registered")]
    NotRegistered(OpKind),
    #[error("operator `{0}` is already registered")]
    Duplicate(String),
    #[error("operator `{op}`: {source}")]
    Signature {
        op: String,
        #[source]
        source: SignatureError,
    },
    #[error(transparent)]
    Trace(#[from] TraceError),
}

/// One registered operator: its kind, reference function, signature and
/// (lazily computed, then cached) trace.
pub struct RegisteredOp {
    kind: OpKind,
    func: ScalarFn,
    signature: OpSignature,
    trace: OnceLock<Result<Arc<OpTrace>, TraceError>>,
}

impl RegisteredOp {
    pub fn kind(&self) -> OpKind {
        self.kind
    }

    /// The reference function (callable, and the analyser's input).
    pub fn func(&self) -> &ScalarFn {
        &self.func
    }

    pub fn signature(&self) -> &OpSignature {
        &self.signature
    }

    /// The op's trace: analysed on first use, then cached (errors too). A
    /// trace analysed on the assumption that no NaN comes
    /// ([`OpTrace::assumed_no_nan`]) is first checked against the function
    /// on rows holding NaNs.
    pub fn trace(&self) -> Result<Arc<OpTrace>, TraceError> {
        self.trace
            .get_or_init(|| {
                let trace = crate::trace::analyse(self.kind.name(), &self.func, &self.signature)?;
                if trace.assumed_no_nan {
                    self.check_nan_inputs(&trace)?;
                }
                Ok(Arc::new(trace))
            })
            .clone()
    }

    /// Calls the function and evaluates `trace` on rows with a NaN at the
    /// start, middle or end, or all NaN (lengths that reach the vector
    /// loops and their remainders); any difference refuses the trace.
    fn check_nan_inputs(&self, trace: &OpTrace) -> Result<(), TraceError> {
        let refuse = |why: String| TraceError {
            function: self.kind.name().to_string(),
            address: self.func.address() as u64,
            instruction: None,
            kind: TraceErrorKind::Unrecognised(why),
        };
        let sig = &self.signature;
        if sig.form() != FnForm::Slices {
            return Err(refuse("a vectorised NaN test outside a function over rows".into()));
        }
        let per_row = sig.returns() == Returns::RowScalar;
        let params: Vec<f32> = sig.scalars().map(|_| 0.5).collect();
        for n in [5usize, 37, 127, 300] {
            for nan_at in [Some(0), Some(n / 2), Some(n - 1), None] {
                let value = |k: usize, i: usize| match nan_at {
                    Some(p) if p != i => ((i * 7 + k * 3) % 23) as f32 - 11.0,
                    _ => f32::NAN,
                };
                let inputs: Vec<Vec<f32>> =
                    (0..sig.num_inputs()).map(|k| (0..n).map(|i| value(k, i)).collect()).collect();
                let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
                let outs = sig.num_outputs().max(usize::from(per_row));
                let len = if per_row { 1 } else { n };
                let mut want = vec![vec![0.0f32; len]; outs];
                let mut got = want.clone();
                let mut views: Vec<&mut [f32]> = want.iter_mut().map(|o| o.as_mut_slice()).collect();
                crate::reference::rows(self, &ins, &params, 1, n, &mut views).map_err(refuse)?;
                let mut views: Vec<&mut [f32]> = got.iter_mut().map(|o| o.as_mut_slice()).collect();
                trace.eval(&ins, &params, &[n], &mut views).map_err(|e| refuse(e.to_string()))?;
                let pairs = want.iter().flatten().zip(got.iter().flatten());
                if let Some((i, (w, g))) =
                    pairs.enumerate().find(|(_, (&w, &g))| !crate::trace::same_value(w, g))
                {
                    return Err(refuse(format!(
                        "the vectorised loop leaves on a NaN, and what runs then is not the fold \
                         found (n = {n}, NaN at {nan_at:?}: output {i} is {w:e} from the function, \
                         {g:e} from the trace)"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RegisteredOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} @ {:#x}", self.kind, self.signature, self.func.address())
    }
}

/// Maps operators to their scalar reference functions and cached traces.
pub struct ScalarOpRegistry {
    ops: Vec<RegisteredOp>,
    by_kind: HashMap<OpKind, usize>,
    by_name: HashMap<&'static str, usize>,
}

impl Default for ScalarOpRegistry {
    fn default() -> Self {
        Self::with_builtins()
    }
}

impl ScalarOpRegistry {
    /// A registry with no operators.
    pub fn empty() -> ScalarOpRegistry {
        ScalarOpRegistry { ops: Vec::new(), by_kind: HashMap::new(), by_name: HashMap::new() }
    }

    /// A registry with every built-in operator.
    pub fn with_builtins() -> ScalarOpRegistry {
        let mut r = Self::empty();
        super::builtin::register_all(&mut r);
        r
    }

    /// The process-wide built-in registry (traces cached across callers).
    pub fn global() -> &'static ScalarOpRegistry {
        static GLOBAL: OnceLock<ScalarOpRegistry> = OnceLock::new();
        GLOBAL.get_or_init(ScalarOpRegistry::with_builtins)
    }

    /// Registers `func` as the reference for `kind`. The signature is checked
    /// against the function's real argument types.
    pub fn register<F: ScalarFnPtr>(
        &mut self,
        kind: OpKind,
        func: F,
        signature: OpSignature,
    ) -> Result<(), RegistryError> {
        let func = ScalarFn::new(func);
        signature
            .check_abi(func.params(), func.returns())
            .map_err(|source| RegistryError::Signature { op: kind.name().to_string(), source })?;
        if self.by_kind.contains_key(&kind) || self.by_name.contains_key(kind.name()) {
            return Err(RegistryError::Duplicate(kind.name().to_string()));
        }
        let idx = self.ops.len();
        self.ops.push(RegisteredOp { kind, func, signature, trace: OnceLock::new() });
        self.by_kind.insert(kind, idx);
        self.by_name.insert(kind.name(), idx);
        Ok(())
    }

    /// Registers a new operator under `name` (not a built-in kind) and
    /// returns its kind. The name is interned for the life of the process.
    pub fn register_custom<F: ScalarFnPtr>(
        &mut self,
        name: &str,
        func: F,
        signature: OpSignature,
    ) -> Result<OpKind, RegistryError> {
        if self.by_name.contains_key(name) {
            return Err(RegistryError::Duplicate(name.to_string()));
        }
        let kind = OpKind::Custom(Box::leak(name.to_string().into_boxed_str()));
        self.register(kind, func, signature)?;
        Ok(kind)
    }

    /// The operator registered for `kind`.
    pub fn get(&self, kind: OpKind) -> Result<&RegisteredOp, RegistryError> {
        self.by_kind.get(&kind).map(|&i| &self.ops[i]).ok_or(RegistryError::NotRegistered(kind))
    }

    /// The operator registered under `name`.
    pub fn lookup(&self, name: &str) -> Result<&RegisteredOp, RegistryError> {
        self.by_name.get(name).map(|&i| &self.ops[i]).ok_or_else(|| RegistryError::UnknownOp {
            name: name.to_string(),
            known: self.ops.iter().map(|o| o.kind.name()).collect::<Vec<_>>().join(", "),
        })
    }

    /// The cached trace of `kind` (analysed on first request).
    pub fn trace(&self, kind: OpKind) -> Result<Arc<OpTrace>, RegistryError> {
        Ok(self.get(kind)?.trace()?)
    }

    /// All registered operators, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &RegisteredOp> {
        self.ops.iter()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}
