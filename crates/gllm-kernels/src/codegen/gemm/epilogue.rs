//! Epilogues: elementwise chains lowered from their traces into the
//! microkernel's store (`GemmEpilogue`), the extra operands they read, and
//! the microkernel variant that applies them to each finished tile.

use super::*;

/// Most extra operands (bias, residual, …) one epilogue chain may read.
pub const MAX_EPILOGUE_EXTRAS: usize = 3;

/// Elementwise consumers applied to C's accumulators before the single store.
///
/// Built from trace bodies, whatever ops they came from: `Input(0)` of the
/// composed body is the GEMM result; each consumer's other input becomes an
/// extra operand — one row of N (a bias, broadcast over the rows) or a full
/// M×N matrix (a residual).
#[derive(Debug, Clone)]
pub struct GemmEpilogue {
    pub(super) body: Body,
    pub(super) params: Vec<f32>,
    pub(super) extras: usize,
}

impl Default for GemmEpilogue {
    fn default() -> Self {
        GemmEpilogue {
            body: Body { ops: vec![TraceOp::Input(0)], outputs: vec![0] },
            params: Vec::new(),
            extras: 0,
        }
    }
}

impl GemmEpilogue {
    /// No consumers yet.
    pub fn new() -> GemmEpilogue {
        GemmEpilogue::default()
    }

    /// Appends a consumer: its input `data_slot` is the value so far, its
    /// other input (if any) the next extra operand; `params` are its scalar
    /// arguments.
    pub fn then(
        mut self,
        consumer: &Body,
        data_slot: usize,
        params: &[f32],
    ) -> Result<GemmEpilogue, CodegenError> {
        let inputs =
            consumer.inputs_used().iter().map(|&k| k as usize + 1).max().unwrap_or(0).max(data_slot + 1);
        let mut streams = Vec::with_capacity(inputs);
        for slot in 0..inputs {
            if slot == data_slot {
                streams.push(None);
            } else {
                self.extras += 1;
                if self.extras > MAX_EPILOGUE_EXTRAS {
                    return Err(CodegenError::Unsupported(Unsupported::EpilogueExtras {
                        max: MAX_EPILOGUE_EXTRAS,
                    }));
                }
                streams.push(Some(self.extras as u8));
            }
        }
        let base = self.params.len() as u8;
        self.params.extend_from_slice(params);
        append_consumer(&mut self.body, consumer, data_slot, &streams, base)?;
        Ok(self)
    }

    /// The epilogue a fusion plan chose for one GEMM, and the tensors its
    /// extra operands come from (in the order `gemm_with` takes them).
    pub fn from_plan(
        sem: &crate::graph::SemanticGraph,
        ops: &[crate::fusion::EpilogueOp],
    ) -> Result<(GemmEpilogue, Vec<crate::graph::TensorId>), CodegenError> {
        let mut epilogue = GemmEpilogue::new();
        let mut extras = Vec::new();
        for op in ops {
            let params = sem.node(op.node).op.params.scalar_args();
            epilogue = epilogue.then(&op.trace.body, op.data_input, &params)?;
            extras.extend(op.extra);
        }
        if extras.len() != epilogue.extras {
            return Err(CodegenError::Unsupported(Unsupported::EpilogueOpExtras));
        }
        Ok((epilogue, extras))
    }

    /// The composed body: `Input(0)` is the GEMM result, `Input(i)` extra `i`.
    pub fn body(&self) -> &Body {
        &self.body
    }

    /// The consumers' scalar arguments, in `Param` order.
    pub fn params(&self) -> &[f32] {
        &self.params
    }

    /// Extra operands the epilogue reads, in order.
    pub fn num_extras(&self) -> usize {
        self.extras
    }

    pub fn is_empty(&self) -> bool {
        self.body.ops.len() == 1
    }
}

/// An epilogue in its two forms: inside the microkernel (full tiles) and as
/// a loop kernel over C (edge tiles), both lowered from the same body.
#[derive(Debug)]
pub(super) struct CompiledEpilogue {
    pub(super) micro: ExecutableCode,
    pub(super) pool: crate::codegen::pool::PoolData,
    pub(super) edges: LoopKernel,
    pub(super) extras: usize,
}

/// What the epilogue microkernel reads through r9.
#[repr(C)]
pub(super) struct EpiArgs {
    pub(super) accumulate: usize,
    pub(super) pool: *const u8,
    pub(super) extras: [*const f32; MAX_EPILOGUE_EXTRAS],
    /// Bytes between an extra operand's rows (0 = broadcast row).
    pub(super) ld_bytes: [usize; MAX_EPILOGUE_EXTRAS],
}

/// The epilogue microkernel's argument block for the tile at (`row`, `col`).
pub(super) fn epi_args(
    e: &CompiledEpilogue,
    extras: &[(usize, usize)],
    accumulate: usize,
    row: usize,
    col: usize,
) -> EpiArgs {
    let mut args = EpiArgs {
        accumulate,
        pool: e.pool.as_ptr(),
        extras: [std::ptr::null(); MAX_EPILOGUE_EXTRAS],
        ld_bytes: [0; MAX_EPILOGUE_EXTRAS],
    };
    for (j, &(ptr, ld)) in extras.iter().enumerate() {
        args.extras[j] = (ptr + (row * ld + col) * 4) as *const f32;
        args.ld_bytes[j] = ld * 4;
    }
    args
}

/// `fn(a_panel, b_panel, c, ldc_elems, kc, &EpiArgs)`.
pub(super) type EpiMicroFn =
    unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, *const EpiArgs);

pub(super) fn unsafe_epi_micro(code: &ExecutableCode) -> EpiMicroFn {
    // SAFETY: generated by `microkernel_with_epilogue` for this signature.
    unsafe { std::mem::transmute::<*const u8, EpiMicroFn>(code.entry()) }
}

/// The microkernel with an epilogue, for the last KC block of full tiles.
/// SysV: rdi = A panel, rsi = B panel, rdx = C, rcx = ldc (elements),
/// r8 = kc, r9 = &EpiArgs. Accumulators (+ C when accumulating) go through
/// the epilogue body in place, using only `spare_regs` scratch registers,
/// then are stored once.
pub(super) fn microkernel_with_epilogue(
    isa: Isa,
    blocking: &GemmBlocking,
    epilogue: &GemmEpilogue,
    pool: &mut crate::codegen::pool::ConstPool,
) -> Result<Vec<u8>, CodegenError> {
    use crate::codegen::lower::{emit_trace_ops, InPlace, Operand};
    use iced_x86::code_asm::{qword_ptr, r10, r8, r9, rax, rcx, rdi, rdx, rsi};
    let mut asm = VecAsm::new(isa)?;
    let lanes = isa.f32_lanes();
    let nv = blocking.nr / lanes;
    let vb = isa.vector_bytes() as i32;
    let regs = isa.num_simd_regs();
    let scratch: Vec<V> = (regs - blocking.spare_regs..regs).map(|r| V(r as u8)).collect();
    emit_k_loop(&mut asm, blocking, blocking.mr)?;
    // Epilogue phase: rdi, rsi, r8 now hold the extra operands' row pointers.
    let extra_regs = [rdi, rsi, r8];
    asm.a.shl(rcx, 2)?;
    asm.a.mov(crate::codegen::pool::POOL_REG, qword_ptr(r9 + 8))?;
    for (j, &reg) in extra_regs.iter().enumerate().take(epilogue.extras) {
        asm.a.mov(reg, qword_ptr(r9 + (16 + 8 * j as i32)))?;
    }
    let ld_off = |j: usize| 16 + 8 * MAX_EPILOGUE_EXTRAS as i32 + 8 * j as i32;
    asm.a.mov(r10, qword_ptr(r9))?;
    asm.a.mov(rax, rdx)?;
    for r in 0..blocking.mr {
        let mut no_acc = asm.a.create_label();
        asm.a.test(r10, r10)?;
        asm.a.jz(no_acc)?;
        for v in 0..nv {
            let a = acc_reg(blocking, lanes, r, v);
            asm.add(a, a, Src::Mem(Mem::base(rax, v as i32 * vb)))?;
        }
        asm.a.set_label(&mut no_acc)?;
        for v in 0..nv {
            let a = acc_reg(blocking, lanes, r, v);
            let mut leaf = |op: &TraceOp, pool: &mut crate::codegen::pool::ConstPool| match *op {
                TraceOp::Input(k) if k >= 1 && (k as usize) <= epilogue.extras => {
                    Ok(Operand::Mem(Mem::base(extra_regs[k as usize - 1], v as i32 * vb)))
                }
                TraceOp::Param(p) => epilogue
                    .params
                    .get(p as usize)
                    .map(|&x| Operand::Mem(pool.splat(x)))
                    .ok_or(CodegenError::BadArguments(BadArguments::EpilogueParameter(p as usize))),
                other => Err(CodegenError::Unsupported(Unsupported::EpilogueOp(other))),
            };
            emit_trace_ops(
                &mut asm,
                pool,
                &epilogue.body,
                &mut leaf,
                Some(InPlace { input: 0, reg: a }),
                &scratch,
            )?;
            asm.store(Mem::base(rax, v as i32 * vb), a)?;
        }
        if r + 1 < blocking.mr {
            asm.a.add(rax, rcx)?;
            for (j, &reg) in extra_regs.iter().enumerate().take(epilogue.extras) {
                asm.a.add(reg, qword_ptr(r9 + ld_off(j)))?;
            }
        }
    }
    asm.vzeroupper()?;
    asm.a.ret()?;
    Ok(asm.a.assemble(0)?)
}

impl GemmKernel {
    /// A GEMM whose result goes through `epilogue` before it is stored.
    /// Refused when the chain needs more scratch registers than the
    /// microkernel leaves free (the planner's rule, `GemmBlocking::spare_regs`).
    pub fn compile_with_epilogue(
        profile: &DeviceProfile,
        epilogue: &GemmEpilogue,
    ) -> Result<GemmKernel, CodegenError> {
        let mut g = GemmKernel::compile(profile)?;
        if epilogue.is_empty() {
            return Ok(g);
        }
        let need = scratch_registers(&epilogue.body, 0, g.isa);
        if need > g.blocking.spare_regs {
            return Err(CodegenError::Unsupported(Unsupported::EpilogueRegisters {
                need,
                mr: g.blocking.mr,
                nr: g.blocking.nr,
                spare: g.blocking.spare_regs,
            }));
        }
        let mut pool = crate::codegen::pool::ConstPool::new();
        let micro =
            ExecutableCode::new(&microkernel_with_epilogue(g.isa, &g.blocking, epilogue, &mut pool)?)?;
        let prog =
            LoopProgram::elementwise(epilogue.body.clone(), 1 + epilogue.extras, epilogue.params.clone());
        // The columns past the last full panel: part of the matmul, so in its ISA.
        let edges = LoopKernel::compile(&prog, &profile.for_kernels(KernelClass::Matmul))?;
        g.epilogue = Some(CompiledEpilogue { micro, pool: pool.finish(), edges, extras: epilogue.extras });
        Ok(g)
    }

    /// Applies this kernel's epilogue (if any) in place to a finished
    /// `m × n` C, as a loop over C: for products computed by another kernel
    /// (the quantised GEMV).
    pub(crate) fn apply_epilogue(
        &self,
        c: &mut [f32],
        m: usize,
        n: usize,
        extras: &[&[f32]],
    ) -> Result<(), CodegenError> {
        check_length(Buffer::C, c.len(), m * n)?;
        let extras = self.check_extras(extras, m, n)?;
        if let Some(e) = &self.epilogue {
            // SAFETY: C is m × n (checked), extras checked against m and n.
            unsafe { self.edge_epilogue(e, OutC { ptr: c.as_mut_ptr(), ld: n }, &extras, (0, m), (0, n)) };
        }
        Ok(())
    }

    /// Row strides (elements; 0 = broadcast) of the extra operands, checked.
    pub(super) fn check_extras(
        &self,
        extras: &[&[f32]],
        m: usize,
        n: usize,
    ) -> Result<Vec<(usize, usize)>, CodegenError> {
        self.extra_layouts(extras.iter().map(|e| (e.as_ptr() as usize, e.len())).collect(), m, n)
    }

    /// That `given` extra operands are what this kernel's epilogue reads.
    pub(super) fn check_extra_count(&self, given: usize) -> Result<(), CodegenError> {
        let want = self.epilogue.as_ref().map_or(0, |e| e.extras);
        if given != want {
            return Err(CodegenError::BadArguments(BadArguments::EpilogueOperands { want, given }));
        }
        Ok(())
    }

    /// `(address, elements)` of each extra operand → `(address, row stride)`:
    /// one row of N (stride 0, broadcast) or an M×N matrix (stride N).
    pub(super) fn extra_layouts(
        &self,
        extras: Vec<(usize, usize)>,
        m: usize,
        n: usize,
    ) -> Result<Vec<(usize, usize)>, CodegenError> {
        self.check_extra_count(extras.len())?;
        extras
            .into_iter()
            .enumerate()
            .map(|(i, (ptr, len))| match len {
                l if l == m * n => Ok((ptr, n)),
                l if l == n => Ok((ptr, 0)),
                got => Err(CodegenError::BadArguments(BadArguments::ExtraLength { index: i, got, m, n })),
            })
            .collect()
    }
}
