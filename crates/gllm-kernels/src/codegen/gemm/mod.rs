//! JIT GEMM: `C = A·B` (f32, row-major), BLIS-style.
//!
//! The loops are the classic five, in one nest (`driver::nest`) that every
//! f32 GEMM runs: MC rows of A at a time (packed block in L2, or made by a
//! tile-fused row op), KC deep, then each member GEMM's NC columns
//! (B's micro-panels streamed through L1), then NR × MR register tiles
//! computed by a JIT-generated microkernel. MR × NR, KC, MC and NC all come
//! from [`GemmBlocking`] (i.e. from the DeviceProfile). Packing and the loop
//! nest are Rust; the microkernel is generated machine code, one per ISA.
//! Threads split columns (each thread with its own B panels), or M when N
//! is too narrow; groups split M.
//!
//! On top of the plain GEMM: prepacked B (weights packed once), elementwise
//! epilogues lowered from their traces into the microkernel's store,
//! tile-level fusion of a row op (RMSNorm) into the MC loop and several GEMMs
//! sharing one packed A (`gemm_group`), batched GEMMs (stacked, shared B,
//! interleaved heads, Bᵀ), the M ≤ 16 GEMV path, and quantised weights
//! dequantised into the packed panels. Blocking and measured results:
//! `docs/gemm.md`.
//!
//! ```text
//! mod.rs          GemmKernel: compile, the public entry points
//! pack.rs         A and B into MR/NR panels; PackedB, PreparedB (weights packed once)
//! microkernel.rs  the MR × NR k-loop and plain store, per ISA and row count
//! epilogue.rs     GemmEpilogue: trace chains applied in the store; its microkernel
//! driver.rs       the one loop nest (MC, KC, members, NC, tiles, edges)
//! gemv.rs         M ≤ 16: packed panels streamed by the GEMV kernel
//! group.rs        gemm_group (several GEMMs on one A, a tile-fused producer), a plan's GEMM group
//! batched.rs      batched GEMMs on strided views (attention)
//! ```

use super::loops::{LoopKernel, LoopProgram};
use super::quant_gemv::GEMV_MAX_ROWS;
use super::vasm::{Mem, Src, VecAsm, V};
use super::{check_length, BadArguments, Buffer, CodegenError, Unsupported};
use crate::device::{DeviceProfile, GemmBlocking, Isa, KernelClass};
use crate::fusion::compose::append_consumer;
use crate::fusion::pressure::scratch_registers;
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use crate::trace::{Body, TraceOp};

mod batched;
mod driver;
mod epilogue;
mod gemv;
mod group;
mod microkernel;
mod pack;

use driver::*;
use epilogue::*;
pub use epilogue::{GemmEpilogue, MAX_EPILOGUE_EXTRAS};
use gemv::*;
pub use group::{gemm_group, CompiledGemmGroup, GroupMember, TileProducer};
use microkernel::*;
use pack::*;
pub use pack::{PackedB, PreparedB};

/// A compiled GEMM for one profile.
#[derive(Debug)]
pub struct GemmKernel {
    micro: ExecutableCode,
    /// Microkernels for the last, partial row tile: `rows[r - 1]` computes
    /// only r < MR rows, straight into C; and the GEMV kernels over 1, 2, …
    /// packed B panels. Generated on first use, so compiling a GEMM stays
    /// cheap for callers that never need them.
    variants: std::sync::OnceLock<Result<Variants, std::sync::Arc<CodegenError>>>,
    blocking: GemmBlocking,
    isa: Isa,
    epilogue: Option<CompiledEpilogue>,
}

/// Kernels generated on first use (see [`GemmKernel`]).
#[derive(Debug)]
struct Variants {
    rows: Vec<ExecutableCode>,
    gemv: Vec<ExecutableCode>,
}

impl GemmKernel {
    /// Generates the microkernel for `profile`'s matmul-class ISA (which
    /// must run here).
    pub fn compile(profile: &DeviceProfile) -> Result<GemmKernel, CodegenError> {
        let profile = &profile.for_kernels(KernelClass::Matmul);
        if !profile.runs_on_host() {
            return Err(CodegenError::IsaNotOnHost { isa: profile.isa });
        }
        let blocking = profile.gemm_blocking();
        let bytes = microkernel(profile.isa, &blocking, blocking.mr)?;
        Ok(GemmKernel {
            micro: ExecutableCode::new(&bytes)?,
            variants: std::sync::OnceLock::new(),
            blocking,
            isa: profile.isa,
            epilogue: None,
        })
    }

    /// The partial-row and GEMV kernels, generated on first call.
    fn variants(&self) -> Result<&Variants, CodegenError> {
        let (isa, bl) = (self.isa, &self.blocking);
        let built = self.variants.get_or_init(|| {
            let build = || -> Result<Variants, CodegenError> {
                let rows = (1..bl.mr)
                    .map(|r| ExecutableCode::new(&microkernel(isa, bl, r)?).map_err(CodegenError::from))
                    .collect::<Result<Vec<_>, _>>()?;
                let gemv = (1..=gemv_panels(isa, bl))
                    .map(|p| ExecutableCode::new(&gemv_kernel(isa, bl, p)?).map_err(CodegenError::from))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Variants { rows, gemv })
            };
            build().map_err(std::sync::Arc::new)
        });
        built.as_ref().map_err(|e| CodegenError::Unsupported(Unsupported::GemmVariants(e.clone())))
    }

    pub fn blocking(&self) -> &GemmBlocking {
        &self.blocking
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The generated microkernel's machine code.
    pub fn microkernel_code(&self) -> &ExecutableCode {
        &self.micro
    }

    /// `c[m×n] = a[m×k] · b[k×n]`, all row-major and contiguous, on up to `threads` threads.
    pub fn gemm(
        &self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        (m, n, k): (usize, usize, usize),
        threads: usize,
    ) -> Result<(), CodegenError> {
        self.gemm_with(a, b, c, (m, n, k), &[], threads)
    }

    /// [`GemmKernel::gemm`] with the epilogue's extra operands (each N or M×N).
    pub fn gemm_with(
        &self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        (m, n, k): (usize, usize, usize),
        extras: &[&[f32]],
        threads: usize,
    ) -> Result<(), CodegenError> {
        check_length(Buffer::A, a.len(), m * k)?;
        check_length(Buffer::B, b.len(), k * n)?;
        check_length(Buffer::C, c.len(), m * n)?;
        let extras = self.check_extras(extras, m, n)?;
        let c = OutC { ptr: c.as_mut_ptr(), ld: n };
        // SAFETY: A is m·k (lda k), B k·n (ldb n), C m·n (ldc n): checked above.
        unsafe {
            self.run(
                RowsRef { data: a, ld: k },
                BSource::View(BView { rows: RowsRef { data: b, ld: n }, transposed: false }),
                c,
                (m, n, k),
                &extras,
                threads,
            )
        }
    }

    /// `c = a · B` with B packed by [`GemmKernel::pack_b`].
    pub fn gemm_prepacked(
        &self,
        a: &[f32],
        b: &PackedB,
        c: &mut [f32],
        m: usize,
        threads: usize,
    ) -> Result<(), CodegenError> {
        self.gemm_prepacked_with(a, b, c, m, &[], threads)
    }

    /// [`GemmKernel::gemm_prepacked`] with the epilogue's extra operands.
    pub fn gemm_prepacked_with(
        &self,
        a: &[f32],
        b: &PackedB,
        c: &mut [f32],
        m: usize,
        extras: &[&[f32]],
        threads: usize,
    ) -> Result<(), CodegenError> {
        if b.kc != self.blocking.kc || b.nr != self.blocking.nr {
            return Err(CodegenError::BadArguments(BadArguments::PackedForOtherBlocking));
        }
        let (n, k) = (b.n, b.k);
        check_length(Buffer::A, a.len(), m * k)?;
        check_length(Buffer::C, c.len(), m * n)?;
        let extras = self.check_extras(extras, m, n)?;
        if m == 1 && k > 0 && n > 0 && self.epilogue.is_none() {
            return self.gemv_prepacked(a, b, c, threads);
        }
        let c = OutC { ptr: c.as_mut_ptr(), ld: n };
        // SAFETY: A is m·k (lda k), C m·n (ldc n): checked above; B was packed for k × n.
        unsafe { self.run(RowsRef { data: a, ld: k }, BSource::Packed(b), c, (m, n, k), &extras, threads) }
    }
}
