//! Where generated machine code lives and how it is run.
//!
//! ```text
//!   Vec<u8> (assembled) ──[ExecutableCode::new]──> RW pages ──[seal]──> R+X pages ──> fn pointer
//!   CompiledLayer ──[execute: tensor addresses, units in plan order]──> outputs
//!        intermediates in a LayerWorkspace arena; threads via dispatch; built once per key: CompileCache
//! ```
//!
//! Codegen produces code and layouts; everything about *running* them —
//! executable memory, the thread pool's hand-offs, the scratchpad arena,
//! running a compiled graph, the cache of compiled parts — is here. (A
//! single kernel's typed entry point, e.g. `LoopKernel::run`, stays with
//! the kernel: it checks that kernel's own arguments and calls it.)
//!
//! Pages are never writable and executable at the same time (W^X): code is
//! copied into fresh read-write anonymous pages, which are then re-protected
//! read+execute before any pointer into them is handed out. Dropping the value
//! unmaps the pages.
//!
//! [`GuardedBuffer`] is data memory between two `PROT_NONE` pages, so that
//! generated code reading or writing one element outside an operand faults
//! (the differential tester's operands, a guarded layer workspace's arena).

mod affinity;
mod arena;
mod compile_cache;
pub mod dispatch;
mod executable;
mod execute;
mod guarded;
pub mod profile;

pub use affinity::WorkerPlacement;
pub use arena::LayerWorkspace;
pub use compile_cache::CompileCache;

pub use executable::{compiled_code_count, ExecutableCode, RuntimeError};
pub use guarded::{GuardedBuffer, Placement};
