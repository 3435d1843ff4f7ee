//! JIT GEMM: `C = A·B` (f32, row-major), BLIS-style.
//!
//! The loops are the classic five: NC columns of C at a time (B panel in L3),
//! KC deep (packed B micro-panels in L1), MC rows (packed A block in L2), then
//! NR × MR register tiles computed by a JIT-generated microkernel. MR × NR, KC,
//! MC and NC all come from [`GemmBlocking`] (i.e. from the DeviceProfile).
//! Packing and the loop nest are Rust; the microkernel is generated machine
//! code, one per ISA. Threads split the NC loop (each thread packs its own
//! panels), or M when N is too narrow.
//!
//! On top of the plain GEMM: prepacked B (weights packed once), elementwise
//! epilogues lowered from their traces into the microkernel's store,
//! tile-level fusion of a row op (RMSNorm) into the MC loop and several GEMMs
//! sharing one packed A (`gemm_group`), batched GEMMs (stacked, shared B,
//! interleaved heads, Bᵀ), the M ≤ 16 GEMV path, and quantised weights
//! dequantised into the packed panels. Blocking and measured results:
//! `docs/gemm.md`. (Packing, microkernel, epilogue, driver, GEMV and batched
//! are still one file: splitting them by concept is issue #14.)

use super::loops::{LoopKernel, LoopProgram};
use super::quant_gemv::GEMV_MAX_ROWS;
use super::vasm::{Mem, Src, VecAsm, V};
use super::{check_length, BadArguments, Buffer, CodegenError, Unsupported};
use crate::device::{DeviceProfile, GemmBlocking, Isa};
use crate::fusion::compose::append_consumer;
use crate::fusion::pressure::scratch_registers;
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use crate::trace::{Body, TraceOp};

/// `fn(a_panel, b_panel, c, ldc_elems, kc, accumulate)`.
type MicroFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize);

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
    body: Body,
    params: Vec<f32>,
    extras: usize,
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
struct CompiledEpilogue {
    micro: ExecutableCode,
    pool: super::pool::PoolData,
    edges: LoopKernel,
    extras: usize,
}

/// What the epilogue microkernel reads through r9.
#[repr(C)]
struct EpiArgs {
    accumulate: usize,
    pool: *const u8,
    extras: [*const f32; MAX_EPILOGUE_EXTRAS],
    /// Bytes between an extra operand's rows (0 = broadcast row).
    ld_bytes: [usize; MAX_EPILOGUE_EXTRAS],
}

/// Most B panels one GEMV kernel call streams side by side (more streams
/// keep more memory requests in flight; bounded by the accumulators).
const GEMV_PANELS: usize = 8;

/// Panels a GEMV call can stream on `isa`: accumulators for each panel plus
/// the broadcast register must fit the register file.
fn gemv_panels(isa: Isa, blocking: &GemmBlocking) -> usize {
    let nv = blocking.nr / isa.f32_lanes();
    ((isa.num_simd_regs() - 1) / nv).min(GEMV_PANELS)
}

/// `fn(x, first_panel, y, kc, panel_stride_bytes, accumulate)`.
type GemvFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize);

/// B packed once (e.g. a weight at load time) in the kernel's panel layout.
#[derive(Debug, Clone)]
pub struct PackedB {
    k: usize,
    n: usize,
    kc: usize,
    nr: usize,
    /// For each KC block (in order), NR-wide panels of `kc_len × NR`, zero-padded.
    data: Vec<f32>,
    /// Offset of each KC block in `data`.
    block_offsets: Vec<usize>,
}

impl PackedB {
    pub fn k(&self) -> usize {
        self.k
    }

    pub fn n(&self) -> usize {
        self.n
    }

    /// Bytes of packed panels (with their zero padding).
    pub fn size_bytes(&self) -> usize {
        self.data.len() * 4
    }

    /// The blocking the panels were packed for.
    pub(crate) fn kc_nr(&self) -> (usize, usize) {
        (self.kc, self.nr)
    }
}

/// A GEMM's weight operand made ready once: f32 panels, or quantised
/// records read in their stored format (see [`super::quant_gemv`]).
#[derive(Debug, Clone)]
pub enum PreparedB {
    Packed(PackedB),
    Quant(super::quant_gemv::QuantPanels),
}

impl PreparedB {
    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.size_bytes(),
            PreparedB::Quant(q) => q.size_bytes(),
        }
    }

    /// B's rows (the reduction depth).
    pub fn k(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.k,
            PreparedB::Quant(q) => q.cols(),
        }
    }

    /// B's columns.
    pub fn n(&self) -> usize {
        match self {
            PreparedB::Packed(p) => p.n,
            PreparedB::Quant(q) => q.rows(),
        }
    }
}

impl GemmKernel {
    /// Generates the microkernel for `profile` (whose ISA must run here).
    pub fn compile(profile: &DeviceProfile) -> Result<GemmKernel, CodegenError> {
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
        let need = scratch_registers(&epilogue.body, 0, profile.isa);
        if need > g.blocking.spare_regs {
            return Err(CodegenError::Unsupported(Unsupported::EpilogueRegisters {
                need,
                mr: g.blocking.mr,
                nr: g.blocking.nr,
                spare: g.blocking.spare_regs,
            }));
        }
        let mut pool = super::pool::ConstPool::new();
        let micro =
            ExecutableCode::new(&microkernel_with_epilogue(profile.isa, &g.blocking, epilogue, &mut pool)?)?;
        let prog =
            LoopProgram::elementwise(epilogue.body.clone(), 1 + epilogue.extras, epilogue.params.clone());
        let edges = LoopKernel::compile(&prog, profile)?;
        g.epilogue = Some(CompiledEpilogue { micro, pool: pool.finish(), edges, extras: epilogue.extras });
        Ok(g)
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
    fn check_extras(
        &self,
        extras: &[&[f32]],
        m: usize,
        n: usize,
    ) -> Result<Vec<(usize, usize)>, CodegenError> {
        self.extra_layouts(extras.iter().map(|e| (e.as_ptr() as usize, e.len())).collect(), m, n)
    }

    /// That `given` extra operands are what this kernel's epilogue reads.
    fn check_extra_count(&self, given: usize) -> Result<(), CodegenError> {
        let want = self.epilogue.as_ref().map_or(0, |e| e.extras);
        if given != want {
            return Err(CodegenError::BadArguments(BadArguments::EpilogueOperands { want, given }));
        }
        Ok(())
    }

    /// `(address, elements)` of each extra operand → `(address, row stride)`:
    /// one row of N (stride 0, broadcast) or an M×N matrix (stride N).
    fn extra_layouts(
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

    /// Packs `b[k×n]` (row-major) once, for [`GemmKernel::gemm_prepacked`].
    pub fn pack_b(&self, b: &[f32], k: usize, n: usize) -> Result<PackedB, CodegenError> {
        check_length(Buffer::B, b.len(), k * n)?;
        Ok(self.pack_view(BView { rows: RowsRef { data: b, ld: n }, transposed: false }, k, n))
    }

    /// Packs a k × n B given as a view, once, for [`BSource::Packed`].
    fn pack_view(&self, b: BView, k: usize, n: usize) -> PackedB {
        let (kc, nr) = (self.blocking.kc, self.blocking.nr);
        let mut data = Vec::new();
        let mut block_offsets = Vec::new();
        for pc in (0..k).step_by(kc.max(1)) {
            let kb = kc.min(k - pc);
            block_offsets.push(data.len());
            let start = data.len();
            data.resize(start + n.div_ceil(nr) * nr * kb, 0.0);
            b.pack_block(&mut data[start..], pc, kb, 0, n, nr);
        }
        PackedB { k, n, kc, nr, data, block_offsets }
    }

    /// Packs a k × n B given as its columns (Bᵀ lines): `lines(j0, count,
    /// out)` writes columns `j0..j0 + count`, k values each, into `out`.
    /// Parallel over NR-column panels; each panel's lines are fetched once.
    pub(crate) fn pack_b_lines(
        &self,
        k: usize,
        n: usize,
        threads: usize,
        lines: &(dyn Fn(usize, usize, &mut [f32]) + Sync),
    ) -> PackedB {
        let (kc, nr) = (self.blocking.kc, self.blocking.nr);
        let panels = n.div_ceil(nr);
        let mut block_offsets = Vec::new();
        let mut len = 0;
        for pc in (0..k).step_by(kc.max(1)) {
            block_offsets.push(len);
            len += panels * nr * kc.min(k - pc);
        }
        let mut data = vec![0.0f32; len];
        let base = data.as_mut_ptr() as usize;
        let parts = threads.max(1).min(panels.max(1));
        let per = panels.div_ceil(parts);
        let offsets = &block_offsets;
        let fill = |t: usize| -> Result<(), std::convert::Infallible> {
            let mut tmp = vec![0.0f32; nr * k];
            for p in t * per..((t + 1) * per).min(panels) {
                let count = nr.min(n - p * nr);
                lines(p * nr, count, &mut tmp[..count * k]);
                for (bi, pc) in (0..k).step_by(kc.max(1)).enumerate() {
                    let kb = kc.min(k - pc);
                    let at = offsets[bi] + p * nr * kb;
                    // SAFETY: panel p of block bi is `nr·kb` values at `at`,
                    // inside `data`; parts own disjoint panels.
                    let dst = unsafe { std::slice::from_raw_parts_mut((base as *mut f32).add(at), nr * kb) };
                    pack_line_panels(dst, &tmp, k, 0, count, pc, kb, nr);
                }
            }
            Ok(())
        };
        let _ = for_each_part(parts, fill);
        PackedB { k, n, kc, nr, data, block_offsets }
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

    /// `y[n] = x[k] · B`: streams each packed panel once, several side by
    /// side; the panels are split across threads.
    fn gemv_prepacked(
        &self,
        x: &[f32],
        b: &PackedB,
        y: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        let gemv = &self.variants()?.gemv;
        let nr = b.nr;
        let panels = b.n.div_ceil(nr);
        let threads = threads.max(1).min(panels);
        let per = panels.div_ceil(threads);
        let y_addr = y.as_mut_ptr() as usize;
        let work = |t: usize| -> Result<(), CodegenError> {
            let (p0, p1) = (t * per, ((t + 1) * per).min(panels));
            if p0 >= p1 {
                return Ok(());
            }
            let mut acc = vec![0.0f32; (p1 - p0) * nr];
            for (bi, pc) in (0..b.k).step_by(b.kc).enumerate() {
                let kb = b.kc.min(b.k - pc);
                let stride = nr * kb;
                let group = gemv.len();
                for g in (p0..p1).step_by(group) {
                    let count = group.min(p1 - g);
                    let f: GemvFn = unsafe_gemv(&gemv[count - 1]);
                    let first = &b.data[b.block_offsets[bi] + g * stride..];
                    let out = &mut acc[(g - p0) * nr..(g - p0 + count) * nr];
                    // SAFETY: `first` starts `count` panels of kb·NR values
                    // each, `stride` apart; `out` has count·NR elements; x has
                    // k ≥ pc + kb elements.
                    unsafe {
                        f(
                            x[pc..].as_ptr(),
                            first.as_ptr(),
                            out.as_mut_ptr(),
                            kb,
                            stride * 4,
                            usize::from(bi > 0),
                        )
                    };
                }
            }
            let c0 = p0 * nr;
            let c1 = (p1 * nr).min(b.n);
            // SAFETY: threads own disjoint column ranges [c0, c1) of y (n elements).
            let y = unsafe { std::slice::from_raw_parts_mut(y_addr as *mut f32, b.n) };
            y[c0..c1].copy_from_slice(&acc[..c1 - c0]);
            Ok(())
        };
        for_each_part(threads, work)
    }

    /// The GEMM on operand views, split over up to `threads` threads.
    ///
    /// # Safety
    /// `a` holds m rows of k elements at its row stride, `b` k × n, and C is
    /// valid for writes of m rows of n elements at its row stride, not
    /// overlapping A or B; `extras` lie in their operands' shapes.
    unsafe fn run(
        &self,
        a: RowsRef,
        b: BSource,
        c: OutC,
        (m, n, k): (usize, usize, usize),
        extras: &[(usize, usize)],
        threads: usize,
    ) -> Result<(), CodegenError> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        // Builds the row-count and GEMV variants on first use.
        self.variants()?;
        if k == 0 {
            for r in 0..m {
                // SAFETY: row r of C (caller's contract).
                unsafe { std::slice::from_raw_parts_mut(c.ptr.add(r * c.ld), n).fill(0.0) };
            }
            if let Some(e) = &self.epilogue {
                // SAFETY: C is m × n at its stride, extras checked against m and n.
                unsafe { self.edge_epilogue(e, c, extras, (0, m), (0, n)) };
            }
            return Ok(());
        }
        let bl = &self.blocking;
        let threads = threads.max(1);
        // Split columns (NR multiples) across threads when wide enough, else rows.
        let col_split = n >= threads * bl.nr * 2 || m < threads * bl.mr;
        let parts: Vec<(usize, usize, usize, usize)> = if threads == 1 {
            vec![(0, m, 0, n)]
        } else if col_split {
            let per = n.div_ceil(threads).div_ceil(bl.nr) * bl.nr;
            (0..threads).map(|t| (0, m, t * per, ((t + 1) * per).min(n))).filter(|p| p.2 < p.3).collect()
        } else {
            let per = m.div_ceil(threads).div_ceil(bl.mr) * bl.mr;
            (0..threads).map(|t| (t * per, ((t + 1) * per).min(m), 0, n)).filter(|p| p.0 < p.1).collect()
        };
        let c_addr = c.ptr as usize;
        let ldc = c.ld;
        let work = |&(m0, m1, n0, n1): &(usize, usize, usize, usize)| {
            let c = OutC { ptr: c_addr as *mut f32, ld: ldc };
            // SAFETY: parts cover disjoint row or column ranges of C, so no
            // two threads write the same element; the rest is the caller's.
            unsafe { self.block(a, &b, c, k, (m0, m1), (n0, n1), extras) };
            Ok::<(), std::convert::Infallible>(())
        };
        // Infallible: the parts cannot fail.
        let _ = for_each_part(parts.len(), |i| work(&parts[i]));
        Ok(())
    }

    /// The BLIS loop nest over rows `m0..m1` and columns `n0..n1` of C.
    ///
    /// # Safety
    /// As [`GemmKernel::run`], for this part of C.
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &self,
        a: RowsRef,
        b: &BSource,
        c: OutC,
        k: usize,
        (m0, m1): (usize, usize),
        (n0, n1): (usize, usize),
        extras: &[(usize, usize)],
    ) {
        let bl = &self.blocking;
        let (mr, nr) = (bl.mr, bl.nr);
        let mut a_pack = vec![0.0f32; bl.mc.div_ceil(mr) * mr * bl.kc];
        let mut b_pack = Vec::new();
        let mut edge = vec![0.0f32; mr * nr];
        for jc in (n0..n1).step_by(bl.nc) {
            let nb = bl.nc.min(n1 - jc);
            for (bi, pc) in (0..k).step_by(bl.kc).enumerate() {
                let kb = bl.kc.min(k - pc);
                let b_panels: &[f32] = match b {
                    BSource::View(v) => {
                        b_pack.resize(nb.div_ceil(nr) * nr * kb, 0.0);
                        v.pack_block(&mut b_pack, pc, kb, jc, nb, nr);
                        &b_pack
                    }
                    BSource::Packed(p) => {
                        // Panels of the prepacked block starting at column jc.
                        let off = p.block_offsets[bi] + (jc / nr) * nr * kb;
                        &p.data[off..]
                    }
                };
                let accumulate = usize::from(pc > 0);
                let last = pc + kb == k;
                for ic in (m0..m1).step_by(bl.mc) {
                    let mb = bl.mc.min(m1 - ic);
                    pack_line_panels(&mut a_pack, a.data, a.ld, ic, mb, pc, kb, mr);
                    let step = TileStep { kb, accumulate, last };
                    // SAFETY: rows ic..ic+mb, columns jc..jc+nb lie in this part of C.
                    unsafe { self.tiles(&a_pack, b_panels, c, step, (ic, mb), (jc, nb), extras, &mut edge) };
                }
            }
        }
        // SAFETY: this part's rows and columns lie in C and the extras.
        unsafe { self.finish_edge_tiles(c, extras, (m0, m1), (n0, n1)) };
    }

    /// All MR×NR tiles of one packed A block (rows `row0..row0+mb`) against
    /// the packed B panels of columns `col0..col0+nb`, for one KC step.
    ///
    /// # Safety
    /// Rows `row0..row0+mb`, columns `col0..col0+nb` of C are valid for
    /// writes (and reads when accumulating), and lie in the extras' shapes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn tiles(
        &self,
        a_pack: &[f32],
        b_panels: &[f32],
        c: OutC,
        step: TileStep,
        (row0, mb): (usize, usize),
        (col0, nb): (usize, usize),
        extras: &[(usize, usize)],
        edge: &mut [f32],
    ) {
        let (mr, nr) = (self.blocking.mr, self.blocking.nr);
        let TileStep { kb, accumulate, last } = step;
        let micro: MicroFn = unsafe_micro(&self.micro);
        for jr in (0..nb).step_by(nr) {
            let nw = nr.min(nb - jr);
            let bp = &b_panels[(jr / nr) * nr * kb..];
            for ir in (0..mb).step_by(mr) {
                let mh = mr.min(mb - ir);
                let ap = &a_pack[(ir / mr) * mr * kb..];
                let row = row0 + ir;
                let col = col0 + jr;
                // SAFETY (pointer arithmetic): (row, col) lies in C (caller).
                let tile = unsafe { c.ptr.add(row * c.ld + col) };
                let ldc = c.ld;
                if mh == mr && nw == nr {
                    match (&self.epilogue, last) {
                        (Some(e), true) => {
                            let args = epi_args(e, extras, accumulate, row, col);
                            let f: EpiMicroFn = unsafe_epi_micro(&e.micro);
                            // SAFETY: as below; the extras cover C's shape
                            // (checked), offset to this tile.
                            unsafe { f(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, &args) };
                        }
                        // SAFETY: full tile: rows row..row+MR and columns
                        // col..col+NR of C exist (caller); panels hold kb·MR
                        // and kb·NR values.
                        _ => unsafe { micro(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, accumulate) },
                    }
                } else if nw == nr && !(self.epilogue.is_some() && last) {
                    // Partial row tile, full columns: the row-count variant
                    // writes its mh rows straight into C.
                    let rows = &self
                        .variants
                        .get()
                        .and_then(|v| v.as_ref().ok())
                        .expect("variants built by run")
                        .rows;
                    let f: MicroFn = unsafe_micro(&rows[mh - 1]);
                    // SAFETY: rows row..row+mh and columns col..col+NR of C
                    // exist; the kernel touches only those rows.
                    unsafe { f(ap.as_ptr(), bp.as_ptr(), tile, ldc, kb, accumulate) };
                } else {
                    // Edge tile: the full tile into a buffer (padding is
                    // zeros), then the valid part (its epilogue runs later).
                    // SAFETY: `edge` is MR×NR with ldc = NR.
                    unsafe { micro(ap.as_ptr(), bp.as_ptr(), edge.as_mut_ptr(), nr, kb, 0) };
                    for r in 0..mh {
                        // SAFETY: row + r, columns col..col+nw lie in C (caller).
                        let dst = unsafe { std::slice::from_raw_parts_mut(tile.add(r * ldc), nw) };
                        let src = &edge[r * nr..r * nr + nw];
                        if accumulate == 1 {
                            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                        } else {
                            dst.copy_from_slice(src);
                        }
                    }
                }
            }
        }
    }

    /// Applies the epilogue (if any) to the edge tiles of rows `m0..m1`,
    /// columns `n0..n1` of C: `tiles` stored them raw.
    ///
    /// # Safety
    /// The region must lie in C and in the extras' shapes.
    unsafe fn finish_edge_tiles(
        &self,
        c: OutC,
        extras: &[(usize, usize)],
        (m0, m1): (usize, usize),
        (n0, n1): (usize, usize),
    ) {
        let Some(e) = &self.epilogue else { return };
        let full_m = m0 + (m1 - m0) / self.blocking.mr * self.blocking.mr;
        let full_n = n0 + (n1 - n0) / self.blocking.nr * self.blocking.nr;
        // SAFETY: both regions lie inside the caller's region.
        unsafe {
            self.edge_epilogue(e, c, extras, (full_m, m1), (n0, n1));
            self.edge_epilogue(e, c, extras, (m0, full_m), (full_n, n1));
        }
    }

    /// Runs the epilogue's loop kernel in place over rows `r0..r1`, columns
    /// `c0..c1` of C.
    ///
    /// # Safety
    /// The region must lie in C and in the extras' shapes.
    unsafe fn edge_epilogue(
        &self,
        e: &CompiledEpilogue,
        c: OutC,
        extras: &[(usize, usize)],
        (r0, r1): (usize, usize),
        (c0, c1): (usize, usize),
    ) {
        use super::loops::{KernelArgs, MAX_STREAMS};
        if r0 >= r1 || c0 >= c1 {
            return;
        }
        let mut args = KernelArgs {
            ptrs: [std::ptr::null_mut(); MAX_STREAMS],
            strides: [0; MAX_STREAMS],
            len: c1 - c0,
            rows: r1 - r0,
            pool: std::ptr::null(),
        };
        // SAFETY (pointer arithmetic): inside C and the extras by the caller's contract.
        let origin = unsafe { c.ptr.add(r0 * c.ld + c0) };
        args.ptrs[0] = origin;
        args.strides[0] = (c.ld * 4) as isize;
        for (j, &(ptr, ld)) in extras.iter().enumerate() {
            args.ptrs[1 + j] = (ptr + (r0 * ld + c0) * 4) as *mut f32;
            args.strides[1 + j] = (ld * 4) as isize;
        }
        let out = 1 + extras.len();
        args.ptrs[out] = origin;
        args.strides[out] = (c.ld * 4) as isize;
        // SAFETY: the region is valid for reads and writes (caller); the
        // kernel writes each C element after reading it (in place).
        unsafe { e.edges.call(args) };
    }
}

/// The epilogue microkernel's argument block for the tile at (`row`, `col`).
fn epi_args(
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
type EpiMicroFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, *const EpiArgs);

fn unsafe_epi_micro(code: &ExecutableCode) -> EpiMicroFn {
    // SAFETY: generated by `microkernel_with_epilogue` for this signature.
    unsafe { std::mem::transmute::<*const u8, EpiMicroFn>(code.entry()) }
}

/// One KC step of the tile loop.
#[derive(Clone, Copy)]
struct TileStep {
    kb: usize,
    /// Add to C (not the first KC block).
    accumulate: usize,
    /// The last KC block: apply the epilogue.
    last: bool,
}

/// Rows of a matrix operand: row r starts at `data[r·ld]`, elements contiguous.
#[derive(Clone, Copy)]
struct RowsRef<'a> {
    data: &'a [f32],
    ld: usize,
}

/// Where C is written: row r starts at `ptr + r·ld`, elements contiguous.
/// A raw pointer because threads (and batch elements of interleaved
/// layouts) write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct OutC {
    ptr: *mut f32,
    ld: usize,
}

/// B as it lies in memory: k × n row by row, or (`transposed`) Bᵀ, n × k
/// row by row, so B[kk][col] = data[col·ld + kk] (attention's K).
#[derive(Clone, Copy)]
struct BView<'a> {
    rows: RowsRef<'a>,
    transposed: bool,
}

impl BView<'_> {
    /// B rows `pc..pc+kb`, columns `jc..jc+nb` into NR-column panels.
    fn pack_block(&self, dst: &mut [f32], pc: usize, kb: usize, jc: usize, nb: usize, nr: usize) {
        let RowsRef { data, ld } = self.rows;
        if self.transposed {
            pack_line_panels(dst, data, ld, jc, nb, pc, kb, nr);
        } else {
            pack_b_block(dst, data, ld, pc, kb, jc, nb, nr);
        }
    }
}

enum BSource<'a> {
    /// Packed block by block as the loops reach it.
    View(BView<'a>),
    Packed(&'a PackedB),
}

fn unsafe_gemv(code: &ExecutableCode) -> GemvFn {
    // SAFETY: generated by `gemv_kernel` for this signature and sealed r-x.
    unsafe { std::mem::transmute::<*const u8, GemvFn>(code.entry()) }
}

fn unsafe_micro(code: &ExecutableCode) -> MicroFn {
    // SAFETY: the code was generated by `microkernel` for this signature and
    // sealed r-x; calling it is only done with valid panels (see `block`).
    unsafe { std::mem::transmute::<*const u8, MicroFn>(code.entry()) }
}

/// Lines `ic..ic+mb` of `a` (each contiguous, `lda` apart), depth
/// `pc..pc+kb`, into panels of `mr` lines, k-major (`panel[k·mr + r]`), the
/// last panel zero-padded. Packs A (lines are rows, panels of MR) and B
/// given as Bᵀ (lines are B's columns, panels of NR).
#[allow(clippy::too_many_arguments)]
fn pack_line_panels(
    dst: &mut [f32],
    a: &[f32],
    lda: usize,
    ic: usize,
    mb: usize,
    pc: usize,
    kb: usize,
    mr: usize,
) {
    for (p, i0) in (0..mb).step_by(mr).enumerate() {
        let panel = &mut dst[p * mr * kb..(p + 1) * mr * kb];
        let rows = mr.min(mb - i0);
        for r in 0..mr {
            // Row r of the block: every MR-th value of the panel from r.
            let dst = panel[r..].iter_mut().step_by(mr);
            if r < rows {
                let src = &a[(ic + i0 + r) * lda + pc..(ic + i0 + r) * lda + pc + kb];
                dst.zip(src).for_each(|(d, &v)| *d = v);
            } else {
                dst.for_each(|d| *d = 0.0);
            }
        }
    }
}

/// B rows `pc..pc+kb`, columns `jc..jc+nb` into NR-column panels, k-major
/// (`panel[k·NR + c]`), the last panel zero-padded.
#[allow(clippy::too_many_arguments)]
fn pack_b_block(
    dst: &mut [f32],
    b: &[f32],
    ldb: usize,
    pc: usize,
    kb: usize,
    jc: usize,
    nb: usize,
    nr: usize,
) {
    for (p, j0) in (0..nb).step_by(nr).enumerate() {
        let panel = &mut dst[p * nr * kb..(p + 1) * nr * kb];
        let cols = nr.min(nb - j0);
        for kk in 0..kb {
            let src = &b[(pc + kk) * ldb + jc + j0..(pc + kk) * ldb + jc + j0 + cols];
            let row = &mut panel[kk * nr..(kk + 1) * nr];
            row[..cols].copy_from_slice(src);
            row[cols..].fill(0.0);
        }
    }
}

/// Accumulator register of row `r`, vector `v`.
fn acc_reg(blocking: &GemmBlocking, lanes: usize, r: usize, v: usize) -> V {
    V((r * (blocking.nr / lanes) + v) as u8)
}

/// The k loop shared by both microkernels: zeroes the accumulators, then
/// `acc += A panel · B panel` over r8 = kc steps (rdi = A, rsi = B).
/// Only the first `rows` rows of the tile are computed (edge variants).
fn emit_k_loop(asm: &mut VecAsm, blocking: &GemmBlocking, rows: usize) -> Result<(), CodegenError> {
    use iced_x86::code_asm::{r10, r8, rdi, rsi};
    let isa = asm.isa;
    let lanes = isa.f32_lanes();
    let nv = blocking.nr / lanes;
    let (mr, nr) = (blocking.mr, blocking.nr);
    let vb = isa.vector_bytes() as i32;
    let acc = |r: usize, v: usize| acc_reg(blocking, lanes, r, v);
    let bregs: Vec<V> = (0..nv).map(|v| V((mr * nv + v) as u8)).collect();
    let bcast = V((mr * nv + nv) as u8);
    for r in 0..rows {
        for v in 0..nv {
            asm.xor(acc(r, v), acc(r, v), Src::Reg(acc(r, v)))?;
        }
    }
    // One k step at panel offset `step` (A: MR floats, B: NR floats per step).
    let emit_step = |asm: &mut VecAsm, step: i32| -> Result<(), CodegenError> {
        let (a_off, b_off) = (step * (mr * 4) as i32, step * (nr * 4) as i32);
        for (v, &b) in bregs.iter().enumerate() {
            asm.load(b, Src::Mem(Mem::base(rsi, b_off + v as i32 * vb)))?;
        }
        for r in 0..rows {
            let a_elem = Mem::base(rdi, a_off + (r * 4) as i32);
            // AVX-512 folds the broadcast into each FMA; AVX2 broadcasts once per row.
            if isa == Isa::Avx512 {
                for (v, &b) in bregs.iter().enumerate() {
                    asm.fmadd231_bcst(acc(r, v), b, a_elem)?;
                }
            } else {
                asm.broadcast_mem(bcast, a_elem)?;
                for (v, &b) in bregs.iter().enumerate() {
                    asm.fmadd231(acc(r, v), b, Src::Reg(bcast))?;
                }
            }
        }
        Ok(())
    };
    // Two k steps per iteration, then the odd one.
    let mut pair_loop = asm.a.create_label();
    let mut odd = asm.a.create_label();
    let mut end = asm.a.create_label();
    asm.a.mov(r10, r8)?;
    asm.a.shr(r10, 1)?;
    asm.a.jz(odd)?;
    asm.a.set_label(&mut pair_loop)?;
    emit_step(asm, 0)?;
    emit_step(asm, 1)?;
    asm.a.add(rdi, (2 * mr * 4) as i32)?;
    asm.a.add(rsi, (2 * nr * 4) as i32)?;
    asm.a.dec(r10)?;
    asm.a.jnz(pair_loop)?;
    asm.a.set_label(&mut odd)?;
    asm.a.test(r8, 1)?;
    asm.a.jz(end)?;
    emit_step(asm, 0)?;
    asm.a.set_label(&mut end)?;
    Ok(())
}

/// The microkernel with an epilogue, for the last KC block of full tiles.
/// SysV: rdi = A panel, rsi = B panel, rdx = C, rcx = ldc (elements),
/// r8 = kc, r9 = &EpiArgs. Accumulators (+ C when accumulating) go through
/// the epilogue body in place, using only `spare_regs` scratch registers,
/// then are stored once.
fn microkernel_with_epilogue(
    isa: Isa,
    blocking: &GemmBlocking,
    epilogue: &GemmEpilogue,
    pool: &mut super::pool::ConstPool,
) -> Result<Vec<u8>, CodegenError> {
    use super::lower::{emit_trace_ops, InPlace, Operand};
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
    asm.a.mov(super::pool::POOL_REG, qword_ptr(r9 + 8))?;
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
            let mut leaf = |op: &TraceOp, pool: &mut super::pool::ConstPool| match *op {
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

/// The MR×NR microkernel: `C[MR×NR] (+)= Apanel · Bpanel` over `kc` steps.
/// SysV: rdi = A panel, rsi = B panel, rdx = C, rcx = ldc (elements),
/// r8 = kc, r9 = accumulate (0/1).
/// Computes (and stores) only the first `rows` rows of the tile.
fn microkernel(isa: Isa, blocking: &GemmBlocking, rows: usize) -> Result<Vec<u8>, CodegenError> {
    use iced_x86::code_asm::{r9, rax, rcx, rdx};
    let mut asm = VecAsm::new(isa)?;
    let lanes = isa.f32_lanes();
    let nv = blocking.nr / lanes;
    let vb = isa.vector_bytes() as i32;
    let acc = |r: usize, v: usize| acc_reg(blocking, lanes, r, v);
    let mr = rows;
    emit_k_loop(&mut asm, blocking, rows)?;
    asm.a.shl(rcx, 2)?;
    let mut overwrite = asm.a.create_label();
    let mut done = asm.a.create_label();
    asm.a.test(r9, r9)?;
    asm.a.jz(overwrite)?;
    for pass in 0..2 {
        if pass == 1 {
            asm.a.set_label(&mut overwrite)?;
        }
        asm.a.mov(rax, rdx)?;
        for r in 0..mr {
            for v in 0..nv {
                let at = Mem::base(rax, v as i32 * vb);
                if pass == 0 {
                    asm.add(acc(r, v), acc(r, v), Src::Mem(at))?;
                }
                asm.store(at, acc(r, v))?;
            }
            if r + 1 < mr {
                asm.a.add(rax, rcx)?;
            }
        }
        if pass == 0 {
            asm.a.jmp(done)?;
        }
    }
    asm.a.set_label(&mut done)?;
    asm.vzeroupper()?;
    asm.a.ret()?;
    Ok(asm.a.assemble(0)?)
}

/// GEMV over `panels` packed B panels side by side: `y[panels·NR] (+)= x[kc] · B`.
/// SysV: rdi = x, rsi = first panel, rdx = y, rcx = kc, r8 = panel stride
/// (bytes), r9 = accumulate. Memory-bound: one broadcast of x[k] feeds
/// `panels × NR/lanes` FMAs on freshly streamed B rows.
fn gemv_kernel(isa: Isa, blocking: &GemmBlocking, panels: usize) -> Result<Vec<u8>, CodegenError> {
    use iced_x86::code_asm::{r10, r11, r12, r13, r14, r8, r9, rax, rbx, rcx, rdi, rdx, rsi};
    let mut asm = VecAsm::new(isa)?;
    let nv = blocking.nr / isa.f32_lanes();
    let vb = isa.vector_bytes() as i32;
    let acc = |p: usize, v: usize| V((p * nv + v) as u8);
    let bcast = V((panels * nv) as u8);
    let bases = [rsi, r10, r11, rax, rbx, r12, r13, r14];
    let saved = [rbx, r12, r13, r14];
    for &r in &saved {
        asm.a.push(r)?;
    }
    for p in 0..panels {
        for v in 0..nv {
            asm.xor(acc(p, v), acc(p, v), Src::Reg(acc(p, v)))?;
        }
    }
    // Panel base pointers.
    for p in 1..panels {
        asm.a.lea(bases[p], iced_x86::code_asm::ptr(bases[p - 1] + r8))?;
    }
    let mut k_loop = asm.a.create_label();
    let mut store = asm.a.create_label();
    asm.a.test(rcx, rcx)?;
    asm.a.jz(store)?;
    asm.a.set_label(&mut k_loop)?;
    asm.broadcast_mem(bcast, Mem::base(rdi, 0))?;
    for (p, &base) in bases.iter().enumerate().take(panels) {
        for v in 0..nv {
            asm.fmadd231(acc(p, v), bcast, Src::Mem(Mem::base(base, v as i32 * vb)))?;
        }
    }
    asm.a.add(rdi, 4)?;
    for &base in bases.iter().take(panels) {
        asm.a.add(base, (blocking.nr * 4) as i32)?;
    }
    asm.a.dec(rcx)?;
    asm.a.jnz(k_loop)?;
    asm.a.set_label(&mut store)?;
    let mut overwrite = asm.a.create_label();
    let mut done = asm.a.create_label();
    asm.a.test(r9, r9)?;
    asm.a.jz(overwrite)?;
    for pass in 0..2 {
        if pass == 1 {
            asm.a.set_label(&mut overwrite)?;
        }
        for p in 0..panels {
            for v in 0..nv {
                let at = Mem::base(rdx, ((p * nv + v) as i32) * vb);
                if pass == 0 {
                    asm.add(acc(p, v), acc(p, v), Src::Mem(at))?;
                }
                asm.store(at, acc(p, v))?;
            }
        }
        if pass == 0 {
            asm.a.jmp(done)?;
        }
    }
    asm.a.set_label(&mut done)?;
    for &r in saved.iter().rev() {
        asm.a.pop(r)?;
    }
    asm.vzeroupper()?;
    asm.a.ret()?;
    Ok(asm.a.assemble(0)?)
}

/// A row-wise producer of A (RMSNorm, LayerNorm) run on each MC block of
/// rows inside the GEMM (tile-level fusion): its output rows go to a
/// scratch block that A-packing reads, and never to memory as a whole.
pub struct TileProducer<'a> {
    /// The producer compiled as a loop kernel (its first input is A's source).
    pub kernel: &'a LoopKernel,
    /// Its other inputs (e.g. the norm weight, one row of K).
    pub inputs: &'a [&'a [f32]],
}

/// One GEMM of a group sharing one A operand (Q/K/V, gate/up).
pub struct GroupMember<'a> {
    /// The kernel (with this member's epilogue, if any).
    pub gemm: &'a GemmKernel,
    pub b: &'a PackedB,
    pub c: &'a mut [f32],
    /// The epilogue's extra operands.
    pub extras: &'a [&'a [f32]],
    /// Extra operands that are another member's result instead: `(slot, j)`
    /// reads member `j`'s C as extra `slot` (SiLU(gate)·up, with up computed
    /// first in the same group). The slice at `slot` in `extras` is ignored.
    pub from_members: &'a [(usize, usize)],
}

/// `c_i = producer(a) · B_i` for every member, packing each A block once for
/// all members and computing the producer per MC block of rows (no full
/// intermediate). `a` is M × K; all members must share K and blocking.
/// Rows are split across threads in MR multiples.
pub fn gemm_group(
    a: &[f32],
    m: usize,
    producer: Option<TileProducer>,
    members: &mut [GroupMember],
    threads: usize,
) -> Result<(), CodegenError> {
    let Some(first) = members.first() else { return Ok(()) };
    let (k, blocking) = (first.b.k, *first.gemm.blocking());
    check_length(Buffer::A, a.len(), m * k)?;
    let outs: Vec<(usize, usize)> =
        members.iter_mut().map(|mb| (mb.c.as_mut_ptr() as usize, mb.c.len())).collect();
    let mut extras = Vec::with_capacity(members.len());
    for (i, mb) in members.iter().enumerate() {
        if mb.b.k != k || *mb.gemm.blocking() != blocking || mb.b.kc != blocking.kc || mb.b.nr != blocking.nr
        {
            return Err(CodegenError::BadArguments(BadArguments::MemberShape { member: i, k }));
        }
        check_length(Buffer::MemberC(i), mb.c.len(), m * mb.b.n)?;
        let mut resolved = Vec::with_capacity(mb.extras.len());
        for (slot, e) in mb.extras.iter().enumerate() {
            let source = mb.from_members.iter().find(|&&(s, _)| s == slot).map(|&(_, j)| j);
            resolved.push(match source {
                Some(j) if j < outs.len() && j != i => outs[j],
                Some(j) => {
                    return Err(CodegenError::BadArguments(BadArguments::MemberExtraNotMember {
                        member: i,
                        slot,
                        named: j,
                    }))
                }
                None => (e.as_ptr() as usize, e.len()),
            });
        }
        let ex = mb.gemm.extra_layouts(resolved, m, mb.b.n).map_err(|e| {
            CodegenError::BadArguments(BadArguments::Member { member: i, source: Box::new(e) })
        })?;
        extras.push(ex);
        mb.gemm.variants()?;
    }
    if m == 0 {
        return Ok(());
    }
    let mr = blocking.mr;
    let threads = threads.max(1).min(m.div_ceil(mr));
    let per = m.div_ceil(threads).div_ceil(mr) * mr;
    let members: &[GroupMember] = members;
    let work = |t: usize| -> Result<(), CodegenError> {
        let (m0, m1) = (t * per, ((t + 1) * per).min(m));
        if m0 >= m1 {
            return Ok(());
        }
        let (mc, kc, nr) = (blocking.mc, blocking.kc, blocking.nr);
        let mut scratch = if producer.is_some() { vec![0.0f32; mc.min(m1 - m0) * k] } else { Vec::new() };
        let mut a_pack = vec![0.0f32; mc.div_ceil(mr) * mr * kc];
        let mut edge = vec![0.0f32; mr * nr];
        for ic in (m0..m1).step_by(mc) {
            let mb = mc.min(m1 - ic);
            let (src, src_row) = match &producer {
                Some(p) => {
                    let mut ins: Vec<&[f32]> = vec![&a[ic * k..(ic + mb) * k]];
                    ins.extend_from_slice(p.inputs);
                    p.kernel.run(&ins, &mut [&mut scratch[..mb * k]], mb, k, 1)?;
                    (&scratch[..], 0)
                }
                None => (a, ic),
            };
            for (bi, pc) in (0..k).step_by(kc).enumerate() {
                let kb = kc.min(k - pc);
                pack_line_panels(&mut a_pack, src, k, src_row, mb, pc, kb, mr);
                let step = TileStep { kb, accumulate: usize::from(pc > 0), last: pc + kb == k };
                for (i, mbr) in members.iter().enumerate() {
                    let n = mbr.b.n;
                    let c = OutC { ptr: outs[i].0 as *mut f32, ld: n };
                    let panels = &mbr.b.data[mbr.b.block_offsets[bi]..];
                    // SAFETY: C_i is m × n (checked); threads own disjoint row
                    // ranges of every C; extras checked against m × n.
                    unsafe {
                        mbr.gemm.tiles(&a_pack, panels, c, step, (ic, mb), (0, n), &extras[i], &mut edge)
                    };
                }
            }
        }
        for (i, mbr) in members.iter().enumerate() {
            let n = mbr.b.n;
            let c = OutC { ptr: outs[i].0 as *mut f32, ld: n };
            // SAFETY: this thread's rows of C_i lie in C_i and its extras.
            unsafe { mbr.gemm.finish_edge_tiles(c, &extras[i], (m0, m1), (0, n)) };
        }
        Ok(())
    };
    for_each_part(threads, work)
}

/// A GEMM fusion group of a plan, compiled: one kernel per member (with the
/// epilogue the plan chose) and, under tile-level fusion, the row producer.
/// The plan decides everything; this only turns its decisions into code.
#[derive(Debug)]
pub struct CompiledGemmGroup {
    members: Vec<PlannedMember>,
    producer: Option<(LoopKernel, Vec<crate::graph::TensorId>)>,
    /// The tensor A is made from (the producer's input under tile fusion).
    a: crate::graph::TensorId,
    m: usize,
    k: usize,
    threads: usize,
    /// The plan's thread budget: quantised weights arrive after planning, so
    /// their GEMV picks its own thread count within it
    /// ([`crate::fusion::parallel::for_quantised_gemv`]).
    budget: usize,
    /// Set for a batched (attention) GEMM: its B is an activation, not a weight.
    batched: Option<crate::graph::MatMulParams>,
}

#[derive(Debug)]
struct PlannedMember {
    gemm: GemmKernel,
    /// The weight B (to be prepacked by the caller with [`GemmKernel::pack_b`]).
    weight: crate::graph::TensorId,
    extras: Vec<crate::graph::TensorId>,
    /// The tensor this member writes (its epilogue's last output).
    output: crate::graph::TensorId,
}

impl CompiledGemmGroup {
    /// Compiles `group` (a `FusionStrategy::Gemm` group of `sem`'s plan).
    pub fn compile(
        sem: &crate::graph::SemanticGraph,
        group: &crate::fusion::FusionGroup,
        profile: &DeviceProfile,
    ) -> Result<CompiledGemmGroup, CodegenError> {
        use crate::fusion::{FusionStrategy, ProducerPlacement, RowProducer};
        let FusionStrategy::Gemm(f) = &group.strategy else {
            return Err(CodegenError::Unsupported(Unsupported::NotAGemmGroup));
        };
        let first = f.members.first().ok_or(CodegenError::Unsupported(Unsupported::EmptyGemmGroup))?;
        let p = *sem
            .node(first.node)
            .op
            .matmul_params()
            .ok_or(CodegenError::Unsupported(Unsupported::GemmWithoutParams))?;
        // B computed by the graph (attention's K and V, a mixture's expert
        // outputs) is read in place through the batched path; only weights
        // are packed ahead of time.
        let b_is_weight =
            matches!(sem.tensors[sem.nodes[first.node].inputs[1]].source, crate::graph::TensorRef::Weight(_));
        let batched = (p.batch != 1 || p.transpose_b || !b_is_weight).then_some(p);
        if batched.is_some() && (f.members.len() != 1 || f.producer.is_some()) {
            return Err(CodegenError::Unsupported(Unsupported::SharedBatchedGemm));
        }
        let mut members = Vec::new();
        for mb in &f.members {
            let (epilogue, extras) = GemmEpilogue::from_plan(sem, &mb.epilogue)?;
            let output =
                mb.epilogue.last().map_or(sem.nodes[mb.node].outputs[0], |e| sem.nodes[e.node].outputs[0]);
            members.push(PlannedMember {
                gemm: GemmKernel::compile_with_epilogue(profile, &epilogue)?,
                weight: sem.nodes[mb.node].inputs[1],
                extras,
                output,
            });
        }
        let (producer, a) = match f.producer {
            Some(RowProducer { node, placement: ProducerPlacement::TileLevelFusion { .. }, .. }) => {
                let prog =
                    LoopProgram::from_trace(&sem.nodes[node].trace, sem.node(node).op.params.scalar_args())?;
                let inputs = sem.nodes[node].inputs.clone();
                (Some((LoopKernel::compile(&prog, profile)?, inputs[1..].to_vec())), inputs[0])
            }
            _ => (None, sem.nodes[first.node].inputs[0]),
        };
        let threads = group.parallel.threads();
        let budget = crate::fusion::parallel::threads_for(profile);
        Ok(CompiledGemmGroup { members, producer, a, m: p.m, k: p.k, threads, budget, batched })
    }

    /// The tensors `run` reads: A's source, then each member's weight, then
    /// each member's epilogue extras, then the producer's other inputs.
    pub fn inputs(&self) -> Vec<crate::graph::TensorId> {
        let mut v = vec![self.a];
        v.extend(self.members.iter().map(|m| m.weight));
        v.extend(self.members.iter().flat_map(|m| m.extras.iter().copied()));
        if let Some((_, ins)) = &self.producer {
            v.extend(ins.iter().copied());
        }
        v
    }

    /// The tensors `run` writes, one per member, in member order.
    pub fn outputs(&self) -> Vec<crate::graph::TensorId> {
        self.members.iter().map(|m| m.output).collect()
    }

    /// The member kernel that packs weight `i` (all members share one blocking).
    pub fn member_kernel(&self, i: usize) -> Option<&GemmKernel> {
        self.members.get(i).map(|m| &m.gemm)
    }

    /// Whether this is a batched (attention) GEMM, whose B is an activation
    /// read through `tensor` instead of a packed weight.
    pub fn is_batched(&self) -> bool {
        self.batched.is_some()
    }

    /// Runs the group. `tensor` resolves activations and extras, `weights`
    /// holds each member's prepared B (in member order; empty for a batched
    /// group). Quantised weights run through the quantised GEMV for up to
    /// [`GEMV_MAX_ROWS`] rows, else are dequantised into panels for this call.
    pub fn run<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PreparedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        if let Some(p) = &self.batched {
            let [out] = outputs else {
                return Err(CodegenError::BadArguments(BadArguments::BatchedGroupOutputs));
            };
            let m = &self.members[0];
            let extras: Vec<&[f32]> = m.extras.iter().map(|&t| tensor(t)).collect();
            return m.gemm.gemm_batched(tensor(self.a), tensor(m.weight), out, p, &extras, self.threads);
        }
        if weights.len() != self.members.len() || outputs.len() != self.members.len() {
            return Err(CodegenError::BadArguments(BadArguments::GroupOperands {
                members: self.members.len(),
                weights: weights.len(),
                outputs: outputs.len(),
            }));
        }
        for (i, w) in weights.iter().enumerate() {
            if w.k() != self.k || w.n() * self.m != outputs[i].len() {
                return Err(CodegenError::BadArguments(BadArguments::MemberWeightShape {
                    member: i,
                    k: w.k(),
                    n: w.n(),
                    want_k: self.k,
                    want_c: outputs[i].len(),
                }));
            }
        }
        let quantised = weights.iter().any(|w| matches!(w, PreparedB::Quant(_)));
        if quantised && self.m <= GEMV_MAX_ROWS {
            return self.run_quant_gemv(tensor, weights, outputs);
        }
        // Prompt processing: quantised weights as dequantised f32 panels
        // (made on the plan's threads: `-t 1` means one).
        let threads = self.budget.max(self.threads);
        let kernel = &self.members[0].gemm;
        let panels: Vec<std::borrow::Cow<'_, PackedB>> = weights
            .iter()
            .map(|w| match w {
                PreparedB::Packed(p) => std::borrow::Cow::Borrowed(p),
                PreparedB::Quant(q) => q.prefill_panels(kernel, threads),
            })
            .collect();
        let packed: Vec<&PackedB> = panels.iter().map(|p| &**p).collect();
        self.run_packed(tensor, &packed, outputs)
    }

    /// The member whose result is tensor `t`, if any.
    fn member_writing(&self, t: crate::graph::TensorId) -> Option<usize> {
        self.members.iter().position(|m| m.output == t)
    }

    /// Which member writes each extra operand of member `i`: `(slot, j)`.
    fn extras_from_members(&self, i: usize) -> Vec<(usize, usize)> {
        self.members[i]
            .extras
            .iter()
            .enumerate()
            .filter_map(|(slot, &t)| self.member_writing(t).map(|j| (slot, j)))
            .collect()
    }

    /// Members one after another: the quantised GEMV (then the epilogue as
    /// a loop over C) or the f32 GEMM with its epilogue. A member's extra
    /// written by another member must come from an earlier one.
    fn run_quant_gemv<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PreparedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        let (m, k) = (self.m, self.k);
        let source = tensor(self.a);
        let produced;
        let a: &[f32] = match &self.producer {
            Some((kernel, ins)) => {
                let mut rows = vec![0.0f32; m * k];
                let mut inputs: Vec<&[f32]> = vec![source];
                inputs.extend(ins.iter().map(|&t| tensor(t)));
                kernel.run(&inputs, &mut [&mut rows], m, k, 1)?;
                produced = rows;
                &produced
            }
            None => source,
        };
        check_length(Buffer::A, a.len(), m * k)?;
        // Members share A: quantise it once per weight format.
        let mut quantised: Vec<super::quant_gemv::QuantActivations> = Vec::new();
        for (i, member) in self.members.iter().enumerate() {
            let from = self.extras_from_members(i);
            let (done, rest) = outputs.split_at_mut(i);
            let mut extras = Vec::with_capacity(member.extras.len());
            for (slot, &t) in member.extras.iter().enumerate() {
                match from.iter().find(|&&(s, _)| s == slot) {
                    Some(&(_, j)) if j < i => extras.push(&*done[j]),
                    Some(&(_, j)) => {
                        return Err(CodegenError::BadArguments(BadArguments::MemberExtraLater {
                            member: i,
                            slot,
                            producer: j,
                        }))
                    }
                    None => extras.push(tensor(t)),
                }
            }
            let c = &mut *rest[0];
            match weights[i] {
                PreparedB::Packed(b) => member.gemm.gemm_prepacked_with(a, b, c, m, &extras, self.threads)?,
                PreparedB::Quant(q) => {
                    let acts = match quantised.iter().position(|x| x.format() == q.format()) {
                        Some(j) => &quantised[j],
                        None => {
                            quantised.push(q.quantize(a, m)?);
                            quantised.last().expect("just pushed")
                        }
                    };
                    q.gemv_quantized(acts, c, self.budget)?;
                    member.gemm.apply_epilogue(c, m, q.rows(), &extras)?;
                }
            }
        }
        Ok(())
    }

    /// Every member's B as f32 panels: the tile loop of [`gemm_group`].
    fn run_packed<'t>(
        &self,
        tensor: &dyn Fn(crate::graph::TensorId) -> &'t [f32],
        weights: &[&PackedB],
        outputs: &mut [&mut [f32]],
    ) -> Result<(), CodegenError> {
        // An extra that another member writes is read from that member's C.
        let extras: Vec<Vec<&[f32]>> = self
            .members
            .iter()
            .map(|m| {
                m.extras
                    .iter()
                    .map(|&t| if self.member_writing(t).is_some() { &[][..] } else { tensor(t) })
                    .collect()
            })
            .collect();
        let from: Vec<Vec<(usize, usize)>> =
            (0..self.members.len()).map(|i| self.extras_from_members(i)).collect();
        let producer_inputs: Vec<&[f32]> = self
            .producer
            .as_ref()
            .map(|(_, ins)| ins.iter().map(|&t| tensor(t)).collect())
            .unwrap_or_default();
        let mut members: Vec<GroupMember> = self
            .members
            .iter()
            .zip(weights)
            .zip(outputs.iter_mut())
            .zip(extras.iter().zip(&from))
            .map(|(((m, b), c), (e, f))| GroupMember { gemm: &m.gemm, b, c, extras: e, from_members: f })
            .collect();
        let producer =
            self.producer.as_ref().map(|(kernel, _)| TileProducer { kernel, inputs: &producer_inputs });
        let a = tensor(self.a);
        check_length(Buffer::A, a.len(), self.m * self.k)?;
        gemm_group(a, self.m, producer, &mut members, self.threads)
    }
}

impl GemmKernel {
    /// A batched GEMM as the graph describes it (attention): for each batch
    /// element `i`, `C_i = A_i · B_{i / b_shared_by}` (B transposed when
    /// `transpose_b`), each operand Stacked (`[batch, rows, cols]`) or
    /// Interleaved (`[rows, batch·cols]`). Extras are one row of N, an M×N
    /// matrix shared by every batch element (a mask), or one M×N matrix per
    /// element.
    ///
    /// Each batch element runs on views of the operands (no copies); batch
    /// elements are split across threads.
    pub fn gemm_batched(
        &self,
        a: &[f32],
        b: &[f32],
        c: &mut [f32],
        p: &crate::graph::MatMulParams,
        extras: &[&[f32]],
        threads: usize,
    ) -> Result<(), CodegenError> {
        use crate::graph::BatchLayout;
        let (m, n, k, batch) = (p.m, p.n, p.k, p.batch);
        if batch == 0 || p.b_shared_by == 0 || batch % p.b_shared_by != 0 {
            return Err(CodegenError::BadArguments(BadArguments::BatchSharing {
                batch,
                shared_by: p.b_shared_by,
            }));
        }
        let b_batch = batch / p.b_shared_by;
        check_length(Buffer::A, a.len(), batch * m * k)?;
        check_length(Buffer::B, b.len(), b_batch * k * n)?;
        check_length(Buffer::C, c.len(), batch * m * n)?;
        // Each extra operand is a tensor of C's shape or a row broadcast
        // over it (C's row is `batch·n` wide when heads are interleaved), or
        // one m × n matrix shared by every batch element.
        #[derive(Clone, Copy)]
        enum Extra {
            LikeC,
            Row,
            SharedMatrix,
        }
        let interleaved_c = p.c_layout == BatchLayout::Interleaved && batch > 1;
        let row_len = if interleaved_c { batch * n } else { n };
        self.check_extra_count(extras.len())?;
        let kinds: Vec<Extra> = extras
            .iter()
            .enumerate()
            .map(|(i, e)| match e.len() {
                l if l == row_len => Ok(Extra::Row),
                l if l == batch * m * n => Ok(Extra::LikeC),
                l if l == m * n && !interleaved_c => Ok(Extra::SharedMatrix),
                got => Err(CodegenError::BadArguments(BadArguments::BatchedExtraLength {
                    index: i,
                    got,
                    row_len,
                    batch,
                    m,
                    n,
                })),
            })
            .collect::<Result<_, _>>()?;
        // Views of batch element i: (offset, row stride) of a `rows × cols`
        // element of an operand holding `count` of them.
        let view = |layout: BatchLayout, count: usize, i: usize, rows: usize, cols: usize| match layout {
            BatchLayout::Stacked => (i * rows * cols, cols),
            BatchLayout::Interleaved => (i * cols, count * cols),
        };
        if m == 0 || n == 0 {
            return Ok(());
        }
        // With k = 0 the operands are empty and never read.
        fn from(v: &[f32], off: usize) -> &[f32] {
            v.get(off..).unwrap_or(&[])
        }
        let c_addr = c.as_mut_ptr() as usize;
        // B element bi as rows (of Bᵀ when transposed).
        let b_view = |bi: usize| {
            let (rows, cols) = if p.transpose_b { (n, k) } else { (k, n) };
            let (off, ld) = view(p.b_layout, b_batch, bi, rows, cols);
            BView { rows: RowsRef { data: from(b, off), ld }, transposed: p.transpose_b }
        };
        // A B shared by several batch elements (grouped-query attention's K
        // and V) is packed once for all of them.
        let shared: Vec<PackedB> = if p.b_shared_by > 1 {
            (0..b_batch).map(|bi| self.pack_view(b_view(bi), k, n)).collect()
        } else {
            Vec::new()
        };
        let work = |i: usize| -> Result<(), CodegenError> {
            let (a_off, lda) = view(p.a_layout, batch, i, m, k);
            let bi = i / p.b_shared_by;
            let b_src = match shared.get(bi) {
                Some(packed) => BSource::Packed(packed),
                None => BSource::View(b_view(bi)),
            };
            let (c_off, ldc) = view(p.c_layout, batch, i, m, n);
            // (address, row stride) of batch element i's part of each extra.
            let ex: Vec<(usize, usize)> = extras
                .iter()
                .zip(&kinds)
                .map(|(e, kind)| match kind {
                    Extra::LikeC => {
                        let (off, ld) = view(p.c_layout, batch, i, m, n);
                        (e[off..].as_ptr() as usize, ld)
                    }
                    Extra::Row if interleaved_c => (e[i * n..].as_ptr() as usize, 0),
                    Extra::Row => (e.as_ptr() as usize, 0),
                    Extra::SharedMatrix => (e.as_ptr() as usize, n),
                })
                .collect();
            let c = OutC { ptr: (c_addr as *mut f32).wrapping_add(c_off), ld: ldc };
            // SAFETY: element i's A, B and C views, and the extras' views
            // (like C's; a row of n at i·n of a batch·n row; a whole m × n
            // matrix), lie in the checked lengths
            // (offset + (rows − 1)·ld + cols ≤ len in both layouts); batch
            // elements write disjoint elements of C (each (i, r, col) maps to
            // a distinct index in either layout), A and B are not C.
            unsafe { self.run(RowsRef { data: from(a, a_off), ld: lda }, b_src, c, (m, n, k), &ex, 1) }
        };
        let threads = threads.max(1).min(batch);
        let per = batch.div_ceil(threads);
        for_each_part(threads, |t| (t * per..((t + 1) * per).min(batch)).try_for_each(&work))
    }
}
