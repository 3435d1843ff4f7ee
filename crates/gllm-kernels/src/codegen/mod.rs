//! Machine-code generation.
//!
//! ```text
//!   (today) hand-assembled kernels ──[iced-x86 CodeAssembler]──> Vec<u8> ──> runtime::ExecutableCode
//! ```
//!
//! This module will hold the TraceOp emitter, MathApprox and the GEMM
//! generator; for now it holds the one kernel that proves the
//! assemble → seal → call path end to end on both ISAs.

pub mod attention;
pub mod gemm;
pub mod group;
pub mod layer;
pub mod loops;
pub mod lower;
pub mod math;
mod mul_add;
pub mod pool;
pub mod quant_gemv;
pub mod vasm;

pub use mul_add::{CodegenError, MulAddKernel};
