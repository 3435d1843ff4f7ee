//! Scalar reference operators and the registry that names them.
//!
//! ```text
//!   extern "C" fn (ops.rs) + OpSignature ──[register]──> ScalarOpRegistry ──[trace(kind)]──> Arc<OpTrace>
//!                                                             │                        (Phase 0, cached)
//!                                                             └──[call]──> reference results for tests
//! ```
//!
//! A function pointer has two roles: it is callable (the correctness reference
//! for every generated kernel) and its machine code is what Phase 0 analyses.
//! Adding an operator is writing one function and registering it — at build
//! time in `scalar/builtin.rs`, or at run time with [`ScalarOpRegistry::register_custom`].

pub mod abi;
mod builtin;
pub mod ops;
mod registry;
mod signature;

pub use abi::{AbiReturn, AbiType, AbiValue, ScalarFn, ScalarFnPtr};
pub use registry::{OpKind, RegisteredOp, RegistryError, ScalarOpRegistry};
pub use signature::{Arg, FnForm, Len, OpSignature, Returns, SignatureError, TensorRole};
