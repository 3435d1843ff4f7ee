use std::fmt;

/// Why a function could not be analysed. Always names the function, the
/// address and (when there is one) the instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError {
    pub function: String,
    pub address: u64,
    /// The instruction at `address`, formatted, when it could be decoded.
    pub instruction: Option<String>,
    pub kind: TraceErrorKind,
}

/// The specific problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceErrorKind {
    #[error("code is not readable memory")]
    UnreadableCode,
    #[error("bytes do not decode to a valid x86-64 instruction")]
    InvalidInstruction,
    #[error("more than {limit} reachable instructions")]
    TooMuchCode { limit: usize },
    #[error("indirect branch (target not known statically)")]
    IndirectBranch,
    #[error("call to {}", describe_call(.target, .symbol))]
    UnknownCall { target: Option<u64>, symbol: Option<String> },
    #[error("unsupported instruction")]
    UnsupportedInstruction,
    #[error("unsupported operand: {0}")]
    UnsupportedOperand(String),
    #[error("branch depends on floating-point data")]
    DataDependentBranch,
    #[error("did not finish within {steps} steps (unbounded loop?)")]
    StepLimit { steps: usize },
    #[error("memory access at {addr:#x} is outside the tensors, the stack and readable constants")]
    WildMemoryAccess { addr: u64 },
    #[error("access to `{arg}` at element {index} is outside its declared length {len}")]
    OutOfBounds { arg: String, index: i64, len: usize },
    #[error("misaligned or partial access to `{arg}` (byte offset {offset})")]
    MisalignedAccess { arg: String, offset: i64 },
    #[error("reads output `{arg}` before writing it")]
    ReadsOutput { arg: String },
    #[error("writes to input `{arg}`")]
    WritesInput { arg: String },
    #[error("value used before it was defined ({0})")]
    Undefined(String),
    #[error("bit operation on floating-point data that is not a sign/abs/select idiom")]
    OpaqueBitOperation,
    #[error("{0}")]
    Unrecognised(String),
    #[error("the signature does not fit the code: {0}")]
    Signature(String),
}

fn describe_call(target: &Option<u64>, symbol: &Option<String>) -> String {
    match (target, symbol) {
        (_, Some(s)) => format!("`{s}`, which is not a recognised math function"),
        (Some(t), None) => format!("unknown function at {t:#x}"),
        (None, None) => "an unresolvable target".into(),
    }
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot analyse `{}` at {:#x}: {}", self.function, self.address, self.kind)?;
        if let Some(i) = &self.instruction {
            write!(f, " (instruction `{i}`)")?;
        }
        Ok(())
    }
}

impl std::error::Error for TraceError {}
