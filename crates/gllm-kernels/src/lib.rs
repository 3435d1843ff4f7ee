//! gllm-kernels: a CPU JIT compiler for LLM-inference kernels.
//!
//! ```text
//!   scalar extern "C" fn ──[trace]──> OpTrace ──[graph]──> CompilerGraph ──[fusion]──> FusionPlan
//!        (scalar/)          (Phase 0)              (Phase 1)                  (Phase 2)
//!                                                        ──[codegen]──> machine code ──[runtime]──> call
//!                                                          (Phase 3)                    (W^X pages)
//! ```
//!
//! The compiler learns what each operator computes by symbolically executing
//! the machine code of its plain scalar reference function, so it carries no
//! per-operator knowledge. Every hardware-dependent decision is made from a
//! [`device::DeviceProfile`]. See `docs/` and the repository README.

pub mod codegen;
pub mod device;
pub mod fusion;
pub mod graph;
pub mod oracle;
pub mod quant;
pub mod reference;
pub mod runtime;
pub mod scalar;
pub mod trace;
pub mod tune;
