//! Row-loop kernels: everything that is not a GEMM.
//!
//! One generator covers elementwise chains, reductions and norm-like ops,
//! because all of them are "for each row: zero or more folds over the row,
//! some per-row scalars, then zero or one pass over the row's elements"
//! (an elementwise op is one row with no folds). The description comes from
//! an [`OpTrace`] (or a fused body); nothing here knows an operator by name.
//!
//! Generated code is single-threaded; the wrapper splits rows (or, for one
//! long row, element ranges) across rayon threads.

use super::lower::{emit_trace_ops, Operand};
use super::pool::{ConstPool, PoolData, POOL_REG};
use super::vasm::{Mask, Mem, Src, VecAsm, K, V};
use super::{CodegenError, RegisterUse, Unsupported};
use crate::device::{DeviceProfile, Isa, KernelClass};
use crate::fusion::pressure::scratch_registers;
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use crate::trace::{Body, ComputePattern, OpTrace, TraceOp, ValueId};
use iced_x86::code_asm::*;

/// Most tensor streams (inputs + outputs) one kernel can address.
pub const MAX_STREAMS: usize = 8;

/// The block every generated loop kernel reads its arguments from.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct KernelArgs {
    pub ptrs: [*mut f32; MAX_STREAMS],
    /// Bytes to advance each stream by after a row (0 = broadcast).
    pub strides: [isize; MAX_STREAMS],
    /// Elements per row.
    pub len: usize,
    pub rows: usize,
    pub pool: *const u8,
}

const OFF_PTRS: i32 = 0;
const OFF_STRIDES: i32 = 8 * MAX_STREAMS as i32;
const OFF_LEN: i32 = 16 * MAX_STREAMS as i32;
const OFF_ROWS: i32 = OFF_LEN + 8;
const OFF_POOL: i32 = OFF_LEN + 16;

/// General registers holding stream pointers, in stream order.
const STREAM_GPRS: [AsmRegister64; MAX_STREAMS] = [rcx, rdx, r8, r9, r10, rbx, rbp, r12];

/// How a fold's accumulator absorbs each element's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Combine {
    Add,
    /// `g > acc ? g : acc` (operand order as the trace had it).
    MaxGAcc,
    MaxAccG,
    MinGAcc,
    MinAccG,
    /// `isnan(acc) ? g : max(g, acc)`: `f32::max`'s NaN-ignoring maximum.
    MaxNum,
    /// `isnan(acc) ? g : min(g, acc)`: `f32::min`'s.
    MinNum,
}

#[derive(Debug, Clone)]
struct FoldPlan {
    combine: Combine,
    identity: u32,
    /// The per-element value folded in (the combine body minus the accumulator).
    element: Body,
}

/// What a loop kernel computes per row.
#[derive(Debug, Clone)]
pub struct LoopProgram {
    folds: Vec<FoldPlan>,
    /// Per-row scalars from fold results, params, the row length.
    row: Body,
    /// Per-element outputs, or (for reductions) the per-row results.
    body: Body,
    /// Tensor inputs (streams 0..num_inputs); outputs follow.
    num_inputs: usize,
    /// True when `body` is evaluated once per row and stored as one scalar.
    per_row_output: bool,
    params: Vec<f32>,
    /// A fold whose per-element value the body recomputes (softmax's
    /// exp(x − max)): that pass stores it into a one-row scratch stream
    /// (after the outputs), and `body` reads it back instead of recomputing it.
    memo_fold: Option<usize>,
    /// Write the element outputs with non-temporal stores (for outputs far
    /// larger than the caches: saves the read-for-ownership traffic).
    streaming_stores: bool,
}

impl LoopProgram {
    /// Uses non-temporal stores for the element outputs (aligned by peeling
    /// a masked head off each row).
    pub fn with_streaming_stores(mut self, on: bool) -> LoopProgram {
        self.streaming_stores = on && !self.per_row_output;
        self
    }

    /// An elementwise (possibly multi-input/multi-output) body.
    pub fn elementwise(body: Body, num_inputs: usize, params: Vec<f32>) -> LoopProgram {
        LoopProgram {
            folds: Vec::new(),
            row: Body::default(),
            body,
            num_inputs,
            per_row_output: false,
            params,
            memo_fold: None,
            streaming_stores: false,
        }
    }

    /// A non-GEMM op's trace: elementwise, injective, reduction or norm-like.
    pub fn from_trace(trace: &OpTrace, params: Vec<f32>) -> Result<LoopProgram, CodegenError> {
        if matches!(trace.pattern, ComputePattern::Gemm { .. }) {
            return Err(CodegenError::Unsupported(Unsupported::GemmInLoopKernel));
        }
        let folds: Vec<FoldPlan> =
            trace.folds.iter().map(|f| fold_plan(f.identity, &f.combine)).collect::<Result<_, _>>()?;
        let per_row_output = trace.pattern == ComputePattern::Reduction;
        let mut body = trace.body.clone();
        let mut memo_fold = None;
        if !per_row_output && body.outputs.len() == 1 {
            // The last fold whose (costly) element value the body recomputes.
            for (f, fold) in folds.iter().enumerate().rev() {
                let costly = fold
                    .element
                    .ops
                    .iter()
                    .any(|o| o.is_libm_call() || matches!(o, TraceOp::Div(..) | TraceOp::Sqrt(_)));
                let target = expr_key(&fold.element, fold.element.outputs[0]);
                let hit = (0..body.ops.len()).find(|&v| expr_key(&body, v as ValueId) == target);
                if let (true, Some(v)) = (costly, hit) {
                    // Read back from the scratch stream that follows the outputs.
                    body.ops[v] = TraceOp::Input((trace.num_inputs + body.outputs.len()) as u8);
                    body = prune(&body);
                    memo_fold = Some(f);
                    break;
                }
            }
        }
        // Division by a per-row value: one reciprocal per row, a multiply per
        // element (vdivps costs several multiplies; differs by ≤ 1 ulp).
        let mut row = trace.row.clone();
        for i in 0..body.ops.len() {
            if let TraceOp::Div(a, b) = body.ops[i] {
                if let TraceOp::RowScalar(k) = body.ops[b as usize] {
                    let one = row.ops.len() as ValueId;
                    row.ops.push(TraceOp::Const(1f32.to_bits()));
                    row.ops.push(TraceOp::Div(one, row.outputs[k as usize]));
                    row.outputs.push(one + 1);
                    let recip = body.ops.len() as ValueId;
                    body.ops.push(TraceOp::RowScalar((row.outputs.len() - 1) as u8));
                    body.ops[i] = TraceOp::Mul(a, recip);
                }
            }
        }
        // Keep SSA order: operands before uses.
        let body = topo_sorted(&body);
        Ok(LoopProgram {
            folds,
            row,
            body,
            num_inputs: trace.num_inputs,
            per_row_output,
            params,
            memo_fold,
            streaming_stores: false,
        })
    }

    pub fn num_inputs(&self) -> usize {
        self.num_inputs
    }

    pub fn num_outputs(&self) -> usize {
        self.body.outputs.len()
    }

    /// Streams the kernel addresses: inputs, outputs and the memo scratch row.
    fn num_streams(&self) -> usize {
        self.num_inputs + self.body.outputs.len() + usize::from(self.memo_fold.is_some())
    }

    /// Whether each row yields one value (reductions) instead of a row of outputs.
    pub fn per_row_output(&self) -> bool {
        self.per_row_output
    }
}

/// Splits `acc ⊕ g(inputs)` into ⊕ and g.
fn fold_plan(identity: u32, combine: &Body) -> Result<FoldPlan, CodegenError> {
    let unsupported =
        || CodegenError::Unsupported(Unsupported::FoldShape { combine: Box::new(combine.clone()) });
    let &out = combine.outputs.first().ok_or_else(unsupported)?;
    let acc = |v: ValueId| combine.ops[v as usize] == TraceOp::Acc;
    let (comb, g) = match combine.ops[out as usize] {
        TraceOp::Add(a, b) if acc(a) => (Combine::Add, b),
        TraceOp::Add(a, b) if acc(b) => (Combine::Add, a),
        TraceOp::Max(a, b) if acc(a) => (Combine::MaxAccG, b),
        TraceOp::Max(a, b) if acc(b) => (Combine::MaxGAcc, a),
        TraceOp::Min(a, b) if acc(a) => (Combine::MinAccG, b),
        TraceOp::Min(a, b) if acc(b) => (Combine::MinGAcc, a),
        // f32::max / f32::min: a NaN accumulator is replaced by the element;
        // a NaN element leaves the accumulator (x86 max returns its second
        // operand on NaN).
        TraceOp::Select(c, g, m) if is_nan_test_of_acc(combine, c) => match combine.ops[m as usize] {
            TraceOp::Max(x, a) if x == g && acc(a) => (Combine::MaxNum, g),
            TraceOp::Min(x, a) if x == g && acc(a) => (Combine::MinNum, g),
            _ => return Err(unsupported()),
        },
        _ => return Err(unsupported()),
    };
    let element = Body { ops: combine.ops.clone(), outputs: vec![g] };
    if depends_on_acc(&element, g) {
        return Err(unsupported());
    }
    Ok(FoldPlan { combine: comb, identity, element: prune(&element) })
}

/// Whether value `c` of `combine` is `unord(acc, acc)` (acc is NaN).
fn is_nan_test_of_acc(combine: &Body, c: ValueId) -> bool {
    let acc = |v: ValueId| combine.ops[v as usize] == TraceOp::Acc;
    matches!(combine.ops[c as usize], TraceOp::Cmp(crate::trace::CmpPred::Unord, a, b) if acc(a) && acc(b))
}

/// The body with ops reordered so every operand precedes its use.
fn topo_sorted(body: &Body) -> Body {
    let mut order: Vec<ValueId> = Vec::new();
    let mut state = vec![0u8; body.ops.len()];
    fn visit(body: &Body, v: ValueId, state: &mut [u8], order: &mut Vec<ValueId>) {
        if state[v as usize] != 0 {
            return;
        }
        state[v as usize] = 1;
        for a in body.ops[v as usize].operands() {
            visit(body, a, state, order);
        }
        order.push(v);
    }
    for &o in &body.outputs {
        visit(body, o, &mut state, &mut order);
    }
    let mut map = vec![0 as ValueId; body.ops.len()];
    for (new, &old) in order.iter().enumerate() {
        map[old as usize] = new as ValueId;
    }
    Body {
        ops: order.iter().map(|&old| remap(&body.ops[old as usize], &map)).collect(),
        outputs: body.outputs.iter().map(|&o| map[o as usize]).collect(),
    }
}

/// A structural key of value `v` (equal keys compute the same thing).
fn expr_key(body: &Body, v: ValueId) -> String {
    let op = body.ops[v as usize];
    let args: Vec<String> = op.operands().iter().map(|&a| expr_key(body, a)).collect();
    let head = match op {
        TraceOp::Cmp(p, ..) => format!("cmp.{p:?}"),
        leaf if op.operands().is_empty() => format!("{leaf:?}"),
        other => format!("{other:?}").split('(').next().unwrap_or_default().to_string(),
    };
    format!("{head}({})", args.join(","))
}

fn depends_on_acc(body: &Body, v: ValueId) -> bool {
    let op = body.ops[v as usize];
    op == TraceOp::Acc || op.operands().iter().any(|&a| depends_on_acc(body, a))
}

/// Keeps only the ops its outputs need (renumbered).
pub fn prune(body: &Body) -> Body {
    let mut keep = vec![false; body.ops.len()];
    let mut stack: Vec<ValueId> = body.outputs.clone();
    while let Some(v) = stack.pop() {
        if !keep[v as usize] {
            keep[v as usize] = true;
            stack.extend(body.ops[v as usize].operands());
        }
    }
    let mut map = vec![0 as ValueId; body.ops.len()];
    let mut ops = Vec::new();
    for (i, op) in body.ops.iter().enumerate() {
        if keep[i] {
            map[i] = ops.len() as ValueId;
            ops.push(remap(op, &map));
        }
    }
    Body { ops, outputs: body.outputs.iter().map(|&o| map[o as usize]).collect() }
}

fn remap(op: &TraceOp, m: &[ValueId]) -> TraceOp {
    op.map_operands(|v| m[v as usize])
}

/// The highest fold index a value depends on (None: no fold).
fn fold_depth(body: &Body, v: ValueId) -> Option<u8> {
    match body.ops[v as usize] {
        TraceOp::FoldResult(k) => Some(k),
        op => op.operands().iter().filter_map(|&a| fold_depth(body, a)).max(),
    }
}

/// Tail inputs loaded into registers, and the registers left over.
type TailLoads = (Vec<(u8, V)>, Vec<V>);

/// A region of f32 values given by address and length: how callers that
/// manage their own memory (a scratchpad arena) hand tensors to kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawSlice {
    pub addr: usize,
    /// Elements, not bytes.
    pub len: usize,
}

impl RawSlice {
    pub fn of(s: &[f32]) -> RawSlice {
        RawSlice { addr: s.as_ptr() as usize, len: s.len() }
    }

    pub fn of_mut(s: &mut [f32]) -> RawSlice {
        RawSlice { addr: s.as_mut_ptr() as usize, len: s.len() }
    }
}

/// A compiled loop kernel.
#[derive(Debug)]
pub struct LoopKernel {
    code: ExecutableCode,
    pool: PoolData,
    isa: Isa,
    num_inputs: usize,
    num_outputs: usize,
    per_row_output: bool,
    has_folds: bool,
    /// The stream index of the one-row memo scratch, if the kernel uses one.
    scratch_stream: Option<usize>,
}

/// Registers with fixed jobs in loop kernels.
const IDX: AsmRegister64 = rax;
const LEN: AsmRegister64 = rsi;
const ROWS: AsmRegister64 = r15;
const BOUND: AsmRegister64 = r14;
const TMP: AsmRegister64 = r13;
const CALLEE_SAVED: [AsmRegister64; 6] = [rbx, rbp, r12, r13, r14, r15];

/// Where a kernel's leaf values live (fixed for the whole kernel).
struct Layout<'p> {
    prog: &'p LoopProgram,
    dim: Option<V>,
    folds: Vec<V>,
    row_scalars: Vec<V>,
}

struct Gen<'p> {
    asm: VecAsm,
    pool: ConstPool,
    layout: Layout<'p>,
    /// Vector registers not reserved for fold results, row scalars, the row
    /// length or the AVX2 tail mask.
    free: Vec<V>,
    tail_mask: Mask,
}

impl LoopKernel {
    /// Generates the kernel for `profile`'s loops-class ISA (which must run
    /// here).
    pub fn compile(prog: &LoopProgram, profile: &DeviceProfile) -> Result<LoopKernel, CodegenError> {
        let profile = &profile.for_kernels(KernelClass::Loops);
        if !profile.runs_on_host() {
            return Err(CodegenError::IsaNotOnHost { isa: profile.isa });
        }
        let streams = prog.num_streams();
        if streams > MAX_STREAMS {
            return Err(CodegenError::Unsupported(Unsupported::Streams { streams, max: MAX_STREAMS }));
        }
        let isa = profile.isa;
        let mut all: Vec<V> = (0..isa.num_simd_regs() as u8).map(V).collect();
        let mut take = || all.pop().expect("register file is not exhausted by reservations");
        let tail_mask = if isa.caps().opmask { Mask::K(K(1)) } else { Mask::V(take()) };
        let uses_dim = [&prog.row, &prog.body]
            .iter()
            .chain(prog.folds.iter().map(|f| &f.element).collect::<Vec<_>>().iter())
            .any(|b| b.ops.iter().any(|o| matches!(o, TraceOp::Dim(_))));
        let dim = uses_dim.then(&mut take);
        let folds: Vec<V> = prog.folds.iter().map(|_| take()).collect();
        let row_scalars: Vec<V> = prog.row.outputs.iter().map(|_| take()).collect();
        all.reverse();
        let mut g = Gen {
            asm: VecAsm::new(isa)?,
            pool: ConstPool::new(),
            layout: Layout { prog, dim, folds, row_scalars },
            free: all,
            tail_mask,
        };
        g.emit()?;
        let Gen { mut asm, pool, .. } = g;
        let bytes = asm.a.assemble(0)?;
        Ok(LoopKernel {
            code: ExecutableCode::new(&bytes)?,
            pool: pool.finish(),
            isa,
            num_inputs: prog.num_inputs,
            num_outputs: prog.body.outputs.len(),
            per_row_output: prog.per_row_output,
            has_folds: !prog.folds.is_empty(),
            scratch_stream: prog.memo_fold.map(|_| prog.num_inputs + prog.body.outputs.len()),
        })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    pub fn code(&self) -> &ExecutableCode {
        &self.code
    }

    pub fn num_inputs(&self) -> usize {
        self.num_inputs
    }

    pub fn num_outputs(&self) -> usize {
        self.num_outputs
    }

    /// Runs the kernel on raw arguments (`pool` is filled in here).
    ///
    /// # Safety
    /// Every stream pointer must be valid for `rows` rows of `len` elements
    /// at its stride (reads for inputs, writes for outputs; one element per
    /// row for a reduction's output), and outputs must not overlap inputs
    /// except element-for-element.
    pub unsafe fn call(&self, mut args: KernelArgs) {
        args.pool = self.pool.as_ptr();
        type Entry = unsafe extern "C" fn(*const KernelArgs);
        // SAFETY: the code was generated for exactly this argument block and
        // sealed r-x; `compile` checked the CPU supports its ISA; the caller
        // guarantees the pointers (see above).
        unsafe {
            let f: Entry = std::mem::transmute::<*const u8, Entry>(self.code.entry());
            f(&args);
        }
    }

    /// Runs over `rows` rows of `row_len` elements. Each input is either the
    /// full `rows × row_len` or one row (`row_len`, broadcast to every row);
    /// outputs are full (or one value per row for reductions). Rows — or the
    /// elements of a single elementwise row — are split across up to
    /// `threads` threads.
    pub fn run(
        &self,
        inputs: &[&[f32]],
        outputs: &mut [&mut [f32]],
        rows: usize,
        row_len: usize,
        threads: usize,
    ) -> Result<(), CodegenError> {
        let ins: Vec<RawSlice> = inputs.iter().map(|i| RawSlice::of(i)).collect();
        let outs: Vec<RawSlice> = outputs.iter_mut().map(|o| RawSlice::of_mut(o)).collect();
        // SAFETY: the slices are valid for their lengths, and the borrow
        // checker keeps every output apart from every input.
        unsafe { self.run_raw(&ins, &outs, rows, row_len, threads) }
    }

    /// [`LoopKernel::run`] on raw regions, for callers whose output may be
    /// one of the inputs (an elementwise group computed in place).
    ///
    /// # Safety
    /// Every region must be valid for reads (inputs) or writes (outputs) of
    /// its length; an output may coincide exactly with an input of the same
    /// length, and must not otherwise overlap any input or output.
    pub unsafe fn run_raw(
        &self,
        inputs: &[RawSlice],
        outputs: &[RawSlice],
        rows: usize,
        row_len: usize,
        threads: usize,
    ) -> Result<(), CodegenError> {
        if inputs.len() != self.num_inputs || outputs.len() != self.num_outputs {
            return Err(CodegenError::ArgumentCount {
                inputs: self.num_inputs,
                outputs: self.num_outputs,
                got_inputs: inputs.len(),
                got_outputs: outputs.len(),
            });
        }
        let full = rows * row_len;
        let mut strides = [0isize; MAX_STREAMS];
        for (k, i) in inputs.iter().enumerate() {
            strides[k] = if i.len == full {
                (row_len * 4) as isize
            } else if i.len == row_len {
                0
            } else {
                return Err(CodegenError::InputLength { index: k, got: i.len, full, rows, row_len });
            };
        }
        let out_len = if self.per_row_output { rows } else { full };
        let out_stride = if self.per_row_output { 4 } else { (row_len * 4) as isize };
        for (j, o) in outputs.iter().enumerate() {
            if o.len != out_len {
                return Err(CodegenError::OutputLength { index: j, got: o.len, want: out_len });
            }
            strides[self.num_inputs + j] = out_stride;
        }
        if rows == 0 {
            return Ok(());
        }
        // Base pointers as integers so the closure is Send.
        let mut base = [0usize; MAX_STREAMS];
        for (k, i) in inputs.iter().enumerate() {
            base[k] = i.addr;
        }
        for (j, o) in outputs.iter().enumerate() {
            base[self.num_inputs + j] = o.addr;
        }
        let streams = self.num_inputs + self.num_outputs;
        let lanes = self.isa.f32_lanes();
        let run_part = |row0: usize, nrows: usize, col0: usize, ncols: usize| {
            let mut args = KernelArgs {
                ptrs: [std::ptr::null_mut(); MAX_STREAMS],
                strides,
                len: ncols,
                rows: nrows,
                pool: std::ptr::null(),
            };
            for s in 0..streams {
                let col_bytes = if s >= self.num_inputs && self.per_row_output { 0 } else { col0 * 4 };
                args.ptrs[s] =
                    (base[s] as isize + strides[s] * row0 as isize + col_bytes as isize) as *mut f32;
            }
            // Each part gets its own scratch row (stride 0: reused by every row).
            let mut scratch = Vec::new();
            if let Some(k) = self.scratch_stream {
                scratch = vec![0.0f32; ncols];
                args.ptrs[k] = scratch.as_mut_ptr();
                args.strides[k] = 0;
            }
            // SAFETY: lengths were checked above against rows × row_len (or
            // one row for broadcast inputs, one value per row for reduction
            // outputs); each part covers a disjoint range of rows or columns.
            unsafe { self.call(args) };
            drop(scratch);
        };
        let threads = threads.max(1);
        if threads > 1 && rows >= threads {
            let per = rows.div_ceil(threads);
            for_each_part(threads, |t| {
                let r0 = t * per;
                if r0 < rows {
                    run_part(r0, per.min(rows - r0), 0, row_len);
                }
                Ok::<(), CodegenError>(())
            })?;
        } else if threads > 1 && rows == 1 && !self.has_folds && !self.per_row_output {
            let per = row_len.div_ceil(threads).div_ceil(lanes) * lanes;
            for_each_part(threads, |t| {
                let c0 = t * per;
                if c0 < row_len {
                    run_part(0, 1, c0, per.min(row_len - c0));
                }
                Ok::<(), CodegenError>(())
            })?;
        } else {
            run_part(0, rows, 0, row_len);
        }
        Ok(())
    }
}

impl Layout<'_> {
    /// Resolves leaves of row-level and element bodies.
    fn leaf(
        &self,
        op: &TraceOp,
        pool: &mut ConstPool,
        at: Option<Mem>,
        tail: &[(u8, V)],
    ) -> Result<Operand, CodegenError> {
        match *op {
            TraceOp::Input(k) => {
                if let Some(&(_, r)) = tail.iter().find(|(i, _)| *i == k) {
                    return Ok(Operand::Reg(r));
                }
                let at = at.ok_or(CodegenError::Unsupported(Unsupported::ElementInputPerRow))?;
                Ok(Operand::Mem(Mem { base: STREAM_GPRS[k as usize], ..at }))
            }
            TraceOp::Param(k) => {
                let v = *self.prog.params.get(k as usize).ok_or(CodegenError::MissingParameter {
                    index: k as usize,
                    given: self.prog.params.len(),
                })?;
                Ok(Operand::Mem(pool.splat(v)))
            }
            TraceOp::Dim(0) => Ok(Operand::Reg(self.dim.expect("reserved when Dim is used"))),
            TraceOp::Dim(k) => Err(CodegenError::Unsupported(Unsupported::Dimension(k))),
            TraceOp::FoldResult(k) => Ok(Operand::Reg(self.folds[k as usize])),
            TraceOp::RowScalar(k) => Ok(Operand::Reg(self.row_scalars[k as usize])),
            other => Err(CodegenError::Unsupported(Unsupported::Leaf(other))),
        }
    }
}

impl Gen<'_> {
    fn stream(&self, k: usize) -> AsmRegister64 {
        STREAM_GPRS[k]
    }

    fn emit(&mut self) -> Result<(), CodegenError> {
        let streams = self.layout.prog.num_streams();
        let a = &mut self.asm.a;
        for r in CALLEE_SAVED {
            a.push(r)?;
        }
        a.mov(LEN, qword_ptr(rdi + OFF_LEN))?;
        a.mov(ROWS, qword_ptr(rdi + OFF_ROWS))?;
        a.mov(POOL_REG, qword_ptr(rdi + OFF_POOL))?;
        for (s, &reg) in STREAM_GPRS.iter().enumerate().take(streams) {
            a.mov(reg, qword_ptr(rdi + (OFF_PTRS + 8 * s as i32)))?;
        }
        let mut done = a.create_label();
        a.test(ROWS, ROWS)?;
        a.jz(done)?;
        if let Some(d) = self.layout.dim {
            self.asm.cvt_gpr_to_low(d, LEN)?;
            self.asm.broadcast_low(d, d)?;
        }
        let mut row_loop = self.asm.a.create_label();
        self.asm.a.set_label(&mut row_loop)?;
        for f in 0..self.layout.prog.folds.len() {
            self.emit_fold(f)?;
            self.emit_row_scalars(Some(f as u8))?;
        }
        if self.layout.prog.folds.is_empty() {
            self.emit_row_scalars(None)?;
        }
        if self.layout.prog.per_row_output {
            self.emit_row_output()?;
        } else {
            self.emit_element_pass()?;
        }
        for (s, &reg) in STREAM_GPRS.iter().enumerate().take(streams) {
            self.asm.a.add(reg, qword_ptr(rdi + (OFF_STRIDES + 8 * s as i32)))?;
        }
        self.asm.a.dec(ROWS)?;
        self.asm.a.jnz(row_loop)?;
        let a = &mut self.asm.a;
        a.set_label(&mut done)?;
        if self.layout.prog.streaming_stores {
            // Non-temporal stores are weakly ordered: publish them before returning.
            a.sfence()?;
        }
        a.vzeroupper()?;
        for r in CALLEE_SAVED.iter().rev() {
            a.pop(*r)?;
        }
        a.ret()?;
        Ok(())
    }

    /// Lowers `body` at element address `at` (or with tail inputs in registers).
    fn lower(
        &mut self,
        body: &Body,
        at: Option<Mem>,
        tail: &[(u8, V)],
        scratch: &[V],
    ) -> Result<Vec<V>, CodegenError> {
        let Gen { asm, pool, layout, .. } = self;
        let mut leaf = |op: &TraceOp, pool: &mut ConstPool| layout.leaf(op, pool, at, tail);
        emit_trace_ops(asm, pool, body, &mut leaf, None, scratch)
    }

    /// Computes the row body's outputs that depend on folds up to `upto`
    /// (and not on later ones) into their row-scalar registers.
    fn emit_row_scalars(&mut self, upto: Option<u8>) -> Result<(), CodegenError> {
        let row = &self.layout.prog.row;
        let ready: Vec<usize> = (0..row.outputs.len())
            .filter(|&j| {
                fold_depth(row, row.outputs[j]) == upto
                    || (upto.is_none() && self.layout.prog.folds.is_empty())
            })
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let sub =
            prune(&Body { ops: row.ops.clone(), outputs: ready.iter().map(|&j| row.outputs[j]).collect() });
        let scratch = self.free.clone();
        let regs = self.lower(&sub, None, &[], &scratch)?;
        for (&j, r) in ready.iter().zip(regs) {
            self.asm.mov(self.layout.row_scalars[j], r)?;
        }
        Ok(())
    }

    /// Unrolled vector loop over the row: `main(gen, at, copy)` for full
    /// vectors, `tail(gen)` once for the 1..lanes−1 remaining elements (with
    /// the tail mask set and `IDX` at the first of them).
    fn emit_loop(
        &mut self,
        unroll: usize,
        align_stream: Option<usize>,
        main: &mut dyn FnMut(&mut Gen, Mem, usize) -> Result<(), CodegenError>,
        tail: &mut dyn FnMut(&mut Gen) -> Result<(), CodegenError>,
    ) -> Result<(), CodegenError> {
        let lanes = self.asm.lanes() as i32;
        let vb = self.asm.vector_bytes();
        let at = |disp: i32| Mem { base: rdi, index: Some(IDX), disp, splat: false };
        let mut after_main = self.asm.a.create_label();
        let mut main_loop = self.asm.a.create_label();
        let mut single = self.asm.a.create_label();
        let mut after_single = self.asm.a.create_label();
        let mut end = self.asm.a.create_label();
        self.asm.a.xor(eax, eax)?;
        if let Some(k) = align_stream {
            // Head: the elements before stream k's first vector-aligned
            // address, as one masked step.
            let mut no_head = self.asm.a.create_label();
            let base = self.stream(k);
            let a = &mut self.asm.a;
            a.mov(BOUND, base)?;
            a.neg(BOUND)?;
            a.and(BOUND, vb - 1)?;
            a.shr(BOUND, 2)?;
            a.cmp(BOUND, LEN)?;
            a.cmova(BOUND, LEN)?;
            a.test(BOUND, BOUND)?;
            a.jz(no_head)?;
            self.set_tail_mask(BOUND)?;
            tail(self)?;
            self.asm.a.mov(IDX, BOUND)?;
            self.asm.a.set_label(&mut no_head)?;
        }
        let a = &mut self.asm.a;
        if unroll > 1 {
            a.mov(BOUND, LEN)?;
            a.sub(BOUND, IDX)?;
            a.and(BOUND, -(lanes * unroll as i32))?;
            a.jz(after_main)?;
            a.add(BOUND, IDX)?;
            a.set_label(&mut main_loop)?;
            for u in 0..unroll {
                main(self, at(u as i32 * vb), u)?;
            }
            let a = &mut self.asm.a;
            a.add(IDX, lanes * unroll as i32)?;
            a.cmp(IDX, BOUND)?;
            a.jb(main_loop)?;
        }
        let a = &mut self.asm.a;
        a.set_label(&mut after_main)?;
        a.mov(BOUND, LEN)?;
        a.sub(BOUND, IDX)?;
        a.and(BOUND, -lanes)?;
        a.jz(after_single)?;
        a.add(BOUND, IDX)?;
        a.set_label(&mut single)?;
        main(self, at(0), 0)?;
        let a = &mut self.asm.a;
        a.add(IDX, lanes)?;
        a.cmp(IDX, BOUND)?;
        a.jb(single)?;
        a.set_label(&mut after_single)?;
        a.mov(BOUND, LEN)?;
        a.sub(BOUND, IDX)?;
        a.jz(end)?;
        self.set_tail_mask(BOUND)?;
        tail(self)?;
        self.asm.a.set_label(&mut end)?;
        Ok(())
    }

    /// Sets the tail mask to the first `count` lanes (`count` in a GPR other
    /// than TMP, which this clobbers).
    fn set_tail_mask(&mut self, count: AsmRegister64) -> Result<(), CodegenError> {
        self.asm.set_tail_mask(self.tail_mask, count, TMP, &mut self.pool)
    }

    /// Vector registers a body needs beyond its loads.
    fn pressure(&self, body: &Body) -> usize {
        scratch_registers(body, u8::MAX, self.asm.isa)
    }

    /// After the first fold a row is cache-resident and later passes make no
    /// memory reads of their own: they prefetch (into L2) the next row of the
    /// streams the first fold reads, so DRAM stays busy while they compute.
    /// Returns the registers holding the next rows' addresses (spare stream
    /// registers; as many streams as there are spares).
    fn next_row_prefetch(&mut self) -> Result<Vec<AsmRegister64>, CodegenError> {
        let mut next_rows = Vec::new();
        let Some(first) = self.layout.prog.folds.first() else { return Ok(next_rows) };
        let streams = self.layout.prog.num_streams();
        for (k, &spare) in first.element.inputs_used().iter().zip(STREAM_GPRS[streams..].iter()) {
            let k = *k as usize;
            let base = self.stream(k);
            self.asm.a.mov(spare, base)?;
            self.asm.a.add(spare, qword_ptr(rdi + (OFF_STRIDES + 8 * k as i32)))?;
            next_rows.push(spare);
        }
        Ok(next_rows)
    }

    fn emit_fold(&mut self, f: usize) -> Result<(), CodegenError> {
        let fold = self.layout.prog.folds[f].clone();
        let used_inputs = fold.element.inputs_used();
        let need = self.pressure(&fold.element) + used_inputs.len() + 1;
        let unroll = [4usize, 2, 1].into_iter().find(|&u| self.free.len() >= u + need).unwrap_or(1);
        if self.free.len() < unroll + need {
            return Err(CodegenError::OutOfRegisters { at: RegisterUse::Fold(f) });
        }
        let accs: Vec<V> = self.free[..unroll].to_vec();
        let scratch: Vec<V> = self.free[unroll..].to_vec();
        let identity = self.pool.splat_bits(fold.identity);
        for &acc in &accs {
            self.asm.load(acc, Src::Mem(identity))?;
        }
        let combine = fold.combine;
        let element = fold.element.clone();
        let scratch_main = scratch.clone();
        let memo = (self.layout.prog.memo_fold == Some(f))
            .then_some(self.layout.prog.num_inputs + self.layout.prog.body.outputs.len());
        let next_rows = if f > 0 { self.next_row_prefetch()? } else { Vec::new() };
        let mut main = |g: &mut Gen, at: Mem, copy: usize| -> Result<(), CodegenError> {
            for &n in &next_rows {
                g.asm.a.prefetcht1(byte_ptr(n + IDX * 4 + at.disp))?;
            }
            let r = g.lower(&element, Some(at), &[], &scratch_main)?[0];
            if let Some(out) = memo {
                g.asm.store(Mem { base: g.stream(out), ..at }, r)?;
            }
            let tmp = free_besides(&scratch_main, &[r])?;
            combine_into(&mut g.asm, combine, accs[copy], r, tmp)
        };
        let element_t = fold.element.clone();
        let scratch_t = scratch.clone();
        let acc0 = accs[0];
        let mut tail = |g: &mut Gen| -> Result<(), CodegenError> {
            let (loaded, rest) = g.masked_loads(&element_t, &scratch_t)?;
            let r = g.lower(&element_t, None, &loaded, &rest)?[0];
            if let Some(out) = memo {
                g.asm.store_masked(Mem::indexed(g.stream(out), IDX), r, g.tail_mask)?;
            }
            // Inactive lanes contribute the identity.
            let t = *rest
                .iter()
                .find(|&&x| x != r)
                .ok_or(CodegenError::OutOfRegisters { at: RegisterUse::FoldTail })?;
            g.asm.load(t, Src::Mem(identity))?;
            g.asm.blend(t, t, Src::Reg(r), g.tail_mask)?;
            let tmp = free_besides(&rest, &[r, t])?;
            combine_into(&mut g.asm, combine, acc0, t, tmp)
        };
        self.emit_loop(unroll, None, &mut main, &mut tail)?;
        let t = scratch[0];
        let tmp = free_besides(&scratch, &[t])?;
        for &acc in &accs[1..] {
            combine_into(&mut self.asm, combine, accs[0], acc, tmp)?;
        }
        // Butterfly: every lane ends up with the whole row's result.
        let acc = accs[0];
        self.asm.swap_halves(t, acc)?;
        combine_into(&mut self.asm, combine, acc, t, tmp)?;
        // A 512-bit vector has four 128-bit quarters: one more step.
        if self.asm.vector_bytes() == 64 {
            self.asm.swap_quarters(t, acc)?;
            combine_into(&mut self.asm, combine, acc, t, tmp)?;
        }
        self.asm.permilps(t, acc, 0x4E)?;
        combine_into(&mut self.asm, combine, acc, t, tmp)?;
        self.asm.permilps(t, acc, 0xB1)?;
        combine_into(&mut self.asm, combine, acc, t, tmp)?;
        self.asm.mov(self.layout.folds[f], acc)
    }

    /// Masked loads of the inputs `body` uses, into the first registers of
    /// `scratch`; returns them and the registers left.
    fn masked_loads(&mut self, body: &Body, scratch: &[V]) -> Result<TailLoads, CodegenError> {
        let used = body.inputs_used();
        if used.len() > scratch.len() {
            return Err(CodegenError::OutOfRegisters { at: RegisterUse::TailLoads });
        }
        let mut loaded = Vec::new();
        for (i, &k) in used.iter().enumerate() {
            let at = Mem::indexed(self.stream(k as usize), IDX);
            self.asm.load_masked(scratch[i], at, self.tail_mask)?;
            loaded.push((k, scratch[i]));
        }
        Ok((loaded, scratch[used.len()..].to_vec()))
    }

    fn emit_element_pass(&mut self) -> Result<(), CodegenError> {
        let body = self.layout.prog.body.clone();
        let ni = self.layout.prog.num_inputs;
        let need = self.pressure(&body) + body.inputs_used().len() + body.outputs.len();
        if self.free.len() < need {
            return Err(CodegenError::OutOfRegisters { at: RegisterUse::ElementBody });
        }
        let scratch = self.free.clone();
        let unroll = if body.ops.len() <= 24 { 4 } else { 2 };
        let next_rows = self.next_row_prefetch()?;
        // Streaming stores need aligned addresses: align the first output
        // (with several outputs only if they share alignment; else skip).
        let streaming = self.layout.prog.streaming_stores && body.outputs.len() == 1;
        let body_m = body.clone();
        let scratch_m = scratch.clone();
        let mut main = |g: &mut Gen, at: Mem, _copy: usize| -> Result<(), CodegenError> {
            for &n in &next_rows {
                g.asm.a.prefetcht1(byte_ptr(n + IDX * 4 + at.disp))?;
            }
            let regs = g.lower(&body_m, Some(at), &[], &scratch_m)?;
            for (j, r) in regs.into_iter().enumerate() {
                let dst = Mem { base: g.stream(ni + j), ..at };
                if streaming {
                    g.asm.store_nt(dst, r)?;
                } else {
                    g.asm.store(dst, r)?;
                }
            }
            Ok(())
        };
        let mut tail = |g: &mut Gen| -> Result<(), CodegenError> {
            let (loaded, rest) = g.masked_loads(&body, &scratch)?;
            let regs = g.lower(&body, None, &loaded, &rest)?;
            for (j, r) in regs.into_iter().enumerate() {
                let at = Mem::indexed(g.stream(ni + j), IDX);
                g.asm.store_masked(at, r, g.tail_mask)?;
            }
            Ok(())
        };
        self.emit_loop(unroll, streaming.then_some(ni), &mut main, &mut tail)
    }

    /// Reductions: the body (no element inputs) once per row, lane 0 stored.
    fn emit_row_output(&mut self) -> Result<(), CodegenError> {
        let body = self.layout.prog.body.clone();
        let scratch = self.free.clone();
        let regs = self.lower(&body, None, &[], &scratch)?;
        let ni = self.layout.prog.num_inputs;
        for (j, r) in regs.into_iter().enumerate() {
            self.asm.store_low(Mem::base(self.stream(ni + j), 0), r)?;
        }
        Ok(())
    }
}

/// A register of `regs` other than `busy` (a combine's mask scratch).
fn free_besides(regs: &[V], busy: &[V]) -> Result<V, CodegenError> {
    regs.iter()
        .copied()
        .find(|r| !busy.contains(r))
        .ok_or(CodegenError::OutOfRegisters { at: RegisterUse::FoldCombine })
}

/// `acc = acc ⊕ g` in the trace's operand order; `tmp` is a free register
/// (the NaN-ignoring forms need a mask: `k2` with opmasks, else `tmp`).
fn combine_into(asm: &mut VecAsm, c: Combine, acc: V, g: V, tmp: V) -> Result<(), CodegenError> {
    /// `_CMP_UNORD_Q`.
    const UNORD: i32 = 3;
    let nan_mask = |asm: &VecAsm| asm.mask_or(K(2), tmp);
    match c {
        Combine::Add => asm.add(acc, acc, Src::Reg(g)),
        Combine::MaxAccG => asm.max(acc, acc, Src::Reg(g)),
        Combine::MaxGAcc => asm.max(acc, g, Src::Reg(acc)),
        Combine::MinAccG => asm.min(acc, acc, Src::Reg(g)),
        Combine::MinGAcc => asm.min(acc, g, Src::Reg(acc)),
        Combine::MaxNum | Combine::MinNum => {
            let m = nan_mask(asm);
            asm.cmp(m, acc, Src::Reg(acc), UNORD)?;
            if c == Combine::MaxNum {
                asm.max(acc, g, Src::Reg(acc))?;
            } else {
                asm.min(acc, g, Src::Reg(acc))?;
            }
            asm.blend(acc, acc, Src::Reg(g), m)
        }
    }
}
