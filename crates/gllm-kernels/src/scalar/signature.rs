//! What each argument of a scalar reference function means.

use super::abi::{AbiReturn, AbiType};
use std::fmt;

/// What a tensor input is for: decides which inputs fusion may treat as an
/// op's "extra" input (weight, bias, residual) rather than its data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorRole {
    /// The data flowing through the layer.
    Activation,
    /// A learned weight (norm scale, GEMM B operand).
    Weight,
    Bias,
    /// A residual stream added back in.
    Residual,
    /// Precomputed tables (RoPE cos/sin).
    Table,
}

/// Element count of a pointer argument, in terms of the function's `usize`
/// arguments (numbered among the `usize` arguments only, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Len {
    Dim(u8),
    Product(u8, u8),
}

impl Len {
    /// Evaluates the length for concrete dimension values.
    pub fn eval(self, dims: &[usize]) -> Option<usize> {
        match self {
            Len::Dim(d) => dims.get(d as usize).copied(),
            Len::Product(a, b) => dims.get(a as usize)?.checked_mul(*dims.get(b as usize)?),
        }
    }
}

/// The meaning of one argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arg {
    /// An f32 element of an input stream (functions applied per element).
    Element { name: &'static str, role: TensorRole },
    /// An f32 parameter that is the same for every element (eps, a scale).
    Scalar { name: &'static str },
    /// `*const f32`: an input tensor of `len` elements.
    Input { name: &'static str, role: TensorRole, len: Len },
    /// `*mut f32`: an output tensor of `len` elements, written (not read).
    Output { name: &'static str, len: Len },
    /// `usize`: a dimension.
    Dim { name: &'static str },
}

impl Arg {
    pub fn name(&self) -> &'static str {
        match *self {
            Arg::Element { name, .. }
            | Arg::Scalar { name }
            | Arg::Input { name, .. }
            | Arg::Output { name, .. }
            | Arg::Dim { name } => name,
        }
    }

    fn abi_type(&self) -> AbiType {
        match self {
            Arg::Element { .. } | Arg::Scalar { .. } => AbiType::F32,
            Arg::Input { .. } => AbiType::ConstPtr,
            Arg::Output { .. } => AbiType::MutPtr,
            Arg::Dim { .. } => AbiType::Usize,
        }
    }
}

/// What the function's return value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Returns {
    Nothing,
    /// The output element (per-element functions).
    Element,
    /// One value for the whole row (reductions).
    RowScalar,
}

/// The two shapes a reference function can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FnForm {
    /// `fn(f32, ...) -> f32`, called once per element.
    PerElement,
    /// Pointers and lengths: one call processes whole rows/matrices.
    Slices,
}

/// The meaning of a reference function's arguments and result.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OpSignature {
    args: Vec<Arg>,
    returns: Returns,
}

/// Why a signature does not fit its function.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature has {sig} arguments but the function takes {abi}")]
    ArgCount { sig: usize, abi: usize },
    #[error("argument {index} (`{name}`) is declared {declared} but the function takes {actual:?}")]
    ArgType { index: usize, name: &'static str, declared: &'static str, actual: AbiType },
    #[error("return declared {declared:?} but the function returns {actual:?}")]
    Return { declared: Returns, actual: AbiReturn },
    #[error(
        "argument `{name}`'s length refers to dimension {dim}, but there are only {dims} usize arguments"
    )]
    BadLen { name: &'static str, dim: u8, dims: usize },
    #[error("per-element arguments cannot be mixed with pointer arguments")]
    MixedForm,
    #[error("{0}")]
    Shape(&'static str),
    #[error("too many {kind} arguments ({count}; at most {max} are supported)")]
    TooManyArgs { kind: &'static str, count: usize, max: usize },
}

impl OpSignature {
    /// Checks the declared meaning against the function's real argument types.
    pub fn new(args: Vec<Arg>, returns: Returns) -> Result<OpSignature, SignatureError> {
        let sig = OpSignature { args, returns };
        let dims = sig.args.iter().filter(|a| matches!(a, Arg::Dim { .. })).count();
        for a in &sig.args {
            if let Arg::Input { len, name, .. } | Arg::Output { len, name } = a {
                let (x, y) = match *len {
                    Len::Dim(d) => (d, d),
                    Len::Product(x, y) => (x, y),
                };
                if x.max(y) as usize >= dims {
                    return Err(SignatureError::BadLen { name, dim: x.max(y), dims });
                }
            }
        }
        let floats = sig.args.iter().filter(|a| a.abi_type() == AbiType::F32).count();
        let ints = sig.args.len() - floats;
        if floats > 8 {
            return Err(SignatureError::TooManyArgs { kind: "f32", count: floats, max: 8 });
        }
        if ints > 12 {
            return Err(SignatureError::TooManyArgs { kind: "pointer/usize", count: ints, max: 12 });
        }
        let has_elements = sig.args.iter().any(|a| matches!(a, Arg::Element { .. }));
        if has_elements && ints > 0 {
            return Err(SignatureError::MixedForm);
        }
        match (sig.form(), sig.returns) {
            (FnForm::PerElement, Returns::Element) => {}
            (FnForm::PerElement, _) => {
                return Err(SignatureError::Shape("a per-element function must return its output element"))
            }
            (FnForm::Slices, Returns::Element) => {
                return Err(SignatureError::Shape("only per-element functions return an element"))
            }
            (FnForm::Slices, Returns::Nothing) if sig.num_outputs() == 0 => {
                return Err(SignatureError::Shape("the function has no output pointer and returns nothing"))
            }
            (FnForm::Slices, Returns::RowScalar) if sig.outputs().count() > 0 => {
                return Err(SignatureError::Shape("a reduction returns its result and has no output pointer"))
            }
            _ => {}
        }
        if sig.num_inputs() == 0 {
            return Err(SignatureError::Shape("the function has no tensor input"));
        }
        Ok(sig)
    }

    /// Checks the signature against a function's argument and return types.
    pub fn check_abi(&self, params: &[AbiType], returns: AbiReturn) -> Result<(), SignatureError> {
        if params.len() != self.args.len() {
            return Err(SignatureError::ArgCount { sig: self.args.len(), abi: params.len() });
        }
        for (index, (arg, &actual)) in self.args.iter().zip(params).enumerate() {
            if arg.abi_type() != actual {
                let declared = match arg {
                    Arg::Element { .. } => "an element (f32)",
                    Arg::Scalar { .. } => "a scalar parameter (f32)",
                    Arg::Input { .. } => "an input (*const f32)",
                    Arg::Output { .. } => "an output (*mut f32)",
                    Arg::Dim { .. } => "a dimension (usize)",
                };
                return Err(SignatureError::ArgType { index, name: arg.name(), declared, actual });
            }
        }
        let ok = matches!(
            (self.returns, returns),
            (Returns::Nothing, AbiReturn::Unit) | (Returns::Element | Returns::RowScalar, AbiReturn::F32)
        );
        if !ok {
            return Err(SignatureError::Return { declared: self.returns, actual: returns });
        }
        Ok(())
    }

    pub fn args(&self) -> &[Arg] {
        &self.args
    }

    pub fn returns(&self) -> Returns {
        self.returns
    }

    pub fn form(&self) -> FnForm {
        if self.args.iter().any(|a| matches!(a, Arg::Input { .. } | Arg::Output { .. })) {
            FnForm::Slices
        } else {
            FnForm::PerElement
        }
    }

    /// Tensor inputs (element or pointer), in argument order: the trace's
    /// `Input(k)` numbering.
    pub fn inputs(&self) -> impl Iterator<Item = (usize, &Arg)> {
        self.args.iter().enumerate().filter(|(_, a)| matches!(a, Arg::Element { .. } | Arg::Input { .. }))
    }

    pub fn num_inputs(&self) -> usize {
        self.inputs().count()
    }

    /// Output pointers in argument order.
    pub fn outputs(&self) -> impl Iterator<Item = (usize, &Arg)> {
        self.args.iter().enumerate().filter(|(_, a)| matches!(a, Arg::Output { .. }))
    }

    /// Number of outputs: output pointers, or 1 for a returned value.
    pub fn num_outputs(&self) -> usize {
        match self.returns {
            Returns::Nothing => self.outputs().count(),
            _ => 1,
        }
    }

    /// Scalar parameters in argument order: the trace's `Param(k)` numbering.
    pub fn scalars(&self) -> impl Iterator<Item = (usize, &Arg)> {
        self.args.iter().enumerate().filter(|(_, a)| matches!(a, Arg::Scalar { .. }))
    }

    /// Dimensions in argument order: the trace's `Dim(k)` numbering.
    pub fn dims(&self) -> impl Iterator<Item = (usize, &Arg)> {
        self.args.iter().enumerate().filter(|(_, a)| matches!(a, Arg::Dim { .. }))
    }

    pub fn num_dims(&self) -> usize {
        self.dims().count()
    }

    /// Index (among inputs) of the op's one extra input: the first input that
    /// is not an activation (VecMul → weight, VecAdd → residual, BiasAdd → bias).
    pub fn extra_input_idx(&self) -> Option<usize> {
        self.inputs().position(|(_, a)| {
            matches!(a, Arg::Element { role, .. } | Arg::Input { role, .. } if *role != TensorRole::Activation)
        })
    }
}

impl fmt::Display for OpSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| match a {
                Arg::Element { name, role } => format!("{name}: elem<{role:?}>"),
                Arg::Scalar { name } => format!("{name}: f32"),
                Arg::Input { name, role, len } => format!("{name}: in<{role:?}>[{}]", len_str(*len)),
                Arg::Output { name, len } => format!("{name}: out[{}]", len_str(*len)),
                Arg::Dim { name } => format!("{name}: usize"),
            })
            .collect();
        let ret = match self.returns {
            Returns::Nothing => "",
            Returns::Element => " -> elem",
            Returns::RowScalar => " -> f32",
        };
        write!(f, "({}){ret}", args.join(", "))
    }
}

fn len_str(len: Len) -> String {
    match len {
        Len::Dim(d) => format!("d{d}"),
        Len::Product(a, b) => format!("d{a}·d{b}"),
    }
}
