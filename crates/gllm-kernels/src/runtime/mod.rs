//! Where generated machine code lives and how it is entered.
//!
//! ```text
//!   Vec<u8> (assembled) ──[ExecutableCode::new]──> RW pages ──[seal]──> R+X pages ──> fn pointer
//! ```
//!
//! Pages are never writable and executable at the same time (W^X): code is
//! copied into fresh read-write anonymous pages, which are then re-protected
//! read+execute before any pointer into them is handed out. Dropping the value
//! unmaps the pages.
//!
//! [`GuardedBuffer`] is data memory between two `PROT_NONE` pages, so that
//! generated code reading or writing one element outside an operand faults
//! (the differential tester's operands, a guarded layer workspace's arena).

pub mod dispatch;
mod executable;
mod guarded;

pub use executable::{compiled_code_count, ExecutableCode, RuntimeError};
pub use guarded::{GuardedBuffer, Placement};
