//! Phase 3: machine code from traces and fusion plans.
//!
//! ```text
//!   OpTrace bodies ──[lower: TraceOp → vector instructions, MathApprox]──┐
//!   FusionGroup    ──[loops / group: row loops with folds, chains]───────┼─[vasm over iced-x86]─> bytes
//!                  ──[gemm: packing + JIT microkernel + epilogue]────────┤       ──> runtime::ExecutableCode
//!                  ──[quant_gemv, attention]──────────────────────────────┘
//!   FusionPlan     ──[layer::compile_graph]──> CompiledLayer (kernels + scratchpad arena)
//! ```
//!
//! Guarantees: no per-operator code — every kernel lowers what its op's trace
//! says (a GEMM only where the trace is exactly Σ A·B, see `docs/phase0.md`);
//! vector code is written once in [`vasm`] for AVX-512 and AVX2; a body the
//! planner accepted as an epilogue fits the registers the microkernel leaves
//! (`fusion::pressure` is the contract); libm functions without a MathApprox
//! routine are called per lane, exactly. Accuracy of every kernel against its
//! scalar reference is checked by [`crate::oracle`] (`gllm test-ops`).
//! Errors: [`CodegenError`].

pub mod attention;
mod error;
pub mod gemm;
pub mod group;
pub mod layer;
pub mod loops;
pub mod lower;
pub mod math;
pub mod pool;
pub mod quant_gemv;
pub mod vasm;

pub(crate) use error::check_length;
pub use error::{BadArguments, Buffer, CodegenError, KvCache, MaskMisuse, RegisterUse, Unsupported};
