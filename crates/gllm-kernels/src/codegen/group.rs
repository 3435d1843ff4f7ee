//! Compiles a non-GEMM fusion group (loop-fused chain, row op with its
//! elementwise consumers, or a single op) into one loop kernel.
//!
//! The nodes' trace bodies are composed into one: each consumer's data input
//! becomes the previous node's result, every other input becomes a stream,
//! parameters are renumbered. Still no per-operator code: what each node
//! computes comes from its trace.

use super::loops::{LoopKernel, LoopProgram, RawSlice};
use super::{BadArguments, CodegenError, Unsupported};
use crate::device::DeviceProfile;
use crate::fusion::compose::{compose_group, loop_chain, ComposedGroup};
use crate::fusion::{FusionGroup, FusionStrategy};
use crate::graph::{OpParams, SemanticGraph, TensorId};
use crate::trace::ComputePattern;

/// How the group's tensors map onto the kernel's rows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    /// `rows` rows of `row_len`; inputs full or one broadcast row.
    Rows { rows: usize, row_len: usize },
    /// A function of two halves on every `period`-long block (RoPE's heads):
    /// the kernel runs per row over its blocks, reading x at offsets 0 and
    /// `period/2`, each table's row broadcast over the blocks.
    PairedHalves { rows: usize, blocks: usize, period: usize },
}

/// A compiled non-GEMM group with a typed entry point.
#[derive(Debug)]
pub struct CompiledGroup {
    kernel: LoopKernel,
    shape: Shape,
    /// The group's input tensors, in the order `run` takes them.
    inputs: Vec<TensorId>,
    output: TensorId,
    threads: usize,
}

impl CompiledGroup {
    /// Compiles `group` (not a GEMM group) of `sem` for `profile`.
    pub fn compile(
        sem: &SemanticGraph,
        group: &FusionGroup,
        profile: &DeviceProfile,
    ) -> Result<CompiledGroup, CodegenError> {
        let head = group.nodes[0];
        let chain: Vec<(usize, usize)> = match &group.strategy {
            FusionStrategy::Gemm(_) => return Err(CodegenError::Unsupported(Unsupported::GemmGroupAsLoop)),
            FusionStrategy::RowFusion { epilogue, .. } => {
                epilogue.iter().map(|e| (e.node, e.data_input)).collect()
            }
            FusionStrategy::LoopFusion | FusionStrategy::Standalone => loop_chain(sem, &group.nodes)?,
        };
        let head_trace = sem.nodes[head].trace.clone();
        let head_inputs = &sem.nodes[head].inputs;
        let paired = match sem.node(head).op.params {
            OpParams::PairedHalves { period } => Some(period),
            _ => None,
        };
        let ComposedGroup { trace: prog_trace, streams, params } = compose_group(sem, head, &chain)?;
        let output = sem.nodes[*group.nodes.last().expect("groups are non-empty")].outputs[0];
        let out_desc = &sem.tensors[output].desc;
        // An output bigger than the last-level cache will not be read back
        // from cache anyway: stream it past the caches.
        let streaming = out_desc.size_bytes() >= profile.caches.l3.size_bytes;
        let prog = LoopProgram::from_trace(&prog_trace, params)?.with_streaming_stores(streaming);
        let kernel = LoopKernel::compile(&prog, profile)?;
        let shape = match paired {
            Some(period) => {
                Shape::PairedHalves { rows: out_desc.rows(), blocks: out_desc.row_len() / period, period }
            }
            None if matches!(head_trace.pattern, ComputePattern::NormLike | ComputePattern::Reduction) => {
                let data = &sem.tensors[head_inputs[0]].desc;
                Shape::Rows { rows: data.rows(), row_len: data.row_len() }
            }
            None => {
                // Elementwise: one row, unless some input broadcasts; then
                // rows of the broadcast period.
                let n = out_desc.numel();
                let period = streams.iter().map(|&t| sem.tensors[t].desc.numel()).filter(|&p| p != n).min();
                match period {
                    Some(p) if p > 0 && n % p == 0 => Shape::Rows { rows: n / p, row_len: p },
                    Some(p) => {
                        return Err(CodegenError::Unsupported(Unsupported::Broadcast {
                            elements: p,
                            over: n,
                        }));
                    }
                    None => Shape::Rows { rows: 1, row_len: n },
                }
            }
        };
        let threads = group.parallel.threads();
        Ok(CompiledGroup { kernel, shape, inputs: streams_dedup(&streams), output, threads })
    }

    /// The group's input tensors, in the order [`CompiledGroup::run`] takes them.
    pub fn inputs(&self) -> &[TensorId] {
        &self.inputs
    }

    pub fn output(&self) -> TensorId {
        self.output
    }

    /// Threads the plan gave this group.
    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn kernel(&self) -> &LoopKernel {
        &self.kernel
    }

    /// Runs the group: `inputs` in [`CompiledGroup::inputs`] order, full size
    /// (or the broadcast size the graph declared).
    pub fn run(&self, inputs: &[&[f32]], output: &mut [f32]) -> Result<(), CodegenError> {
        self.run_with_threads(inputs, output, self.threads)
    }

    /// [`CompiledGroup::run`] on `threads` threads instead of the plan's.
    pub fn run_with_threads(
        &self,
        inputs: &[&[f32]],
        output: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        let ins: Vec<RawSlice> = inputs.iter().map(|i| RawSlice::of(i)).collect();
        // SAFETY: slices are valid for their lengths and the output, a
        // `&mut`, overlaps no input.
        unsafe { self.run_raw(&ins, RawSlice::of_mut(output), threads) }
    }

    /// [`CompiledGroup::run`] on raw regions: the output may be one of the
    /// inputs (the scratchpad plan computes elementwise groups in place).
    ///
    /// # Safety
    /// As [`LoopKernel::run_raw`]: regions valid for their lengths; the
    /// output coincides exactly with an input or overlaps none.
    pub unsafe fn run_raw(
        &self,
        inputs: &[RawSlice],
        output: RawSlice,
        threads: usize,
    ) -> Result<(), CodegenError> {
        match self.shape {
            // SAFETY: forwarded (the caller's contract is the kernel's).
            Shape::Rows { rows, row_len } => unsafe {
                self.kernel.run_raw(inputs, &[output], rows, row_len, threads)
            },
            Shape::PairedHalves { rows, blocks, period } => {
                let half = period / 2;
                let (x, tables) =
                    inputs.split_first().ok_or(CodegenError::BadArguments(BadArguments::NoInputs))?;
                let width = blocks * period;
                if x.len != rows * width || output.len != rows * width {
                    return Err(CodegenError::BadArguments(BadArguments::PairedLength {
                        want: rows * width,
                        x: x.len,
                        out: output.len,
                    }));
                }
                if tables.iter().any(|t| t.len != rows * half) {
                    return Err(CodegenError::BadArguments(BadArguments::PairedTables { want: rows * half }));
                }
                // Per row: kernel rows = blocks, the halves of x at stride
                // `period`, the row's table line broadcast over its blocks.
                for r in 0..rows {
                    // SAFETY: bounds checked above; the caller's contract covers aliasing.
                    unsafe { self.paired_row(x.addr, tables, output.addr, r, blocks, period) };
                }
                Ok(())
            }
        }
    }

    /// # Safety
    /// `x` and `out` hold `rows × blocks × period` f32, each table
    /// `rows × period / 2`; `out` is `x` or overlaps nothing.
    unsafe fn paired_row(
        &self,
        x: usize,
        tables: &[RawSlice],
        out: usize,
        t: usize,
        blocks: usize,
        period: usize,
    ) {
        use super::loops::{KernelArgs, MAX_STREAMS};
        let half = period / 2;
        let base = t * blocks * period;
        let at = |addr: usize, elem: usize| (addr + elem * 4) as *mut f32;
        let mut args = KernelArgs {
            ptrs: [std::ptr::null_mut(); MAX_STREAMS],
            strides: [0; MAX_STREAMS],
            len: half,
            rows: blocks,
            pool: std::ptr::null(),
        };
        let stride = (period * 4) as isize;
        args.ptrs[0] = at(x, base);
        args.ptrs[1] = at(x, base + half);
        args.strides[0] = stride;
        args.strides[1] = stride;
        for (i, tab) in tables.iter().enumerate() {
            args.ptrs[2 + i] = at(tab.addr, t * half);
        }
        let ni = 2 + tables.len();
        args.ptrs[ni] = at(out, base);
        args.ptrs[ni + 1] = at(out, base + half);
        args.strides[ni] = stride;
        args.strides[ni + 1] = stride;
        // SAFETY: row t's blocks span [base, base + blocks·period) of x
        // and out, its tables' row has `half` elements (the caller checked
        // the lengths); each output element is written once, after its two
        // inputs are read (in place is allowed).
        unsafe { self.kernel.call(args) };
    }
}

fn streams_dedup(streams: &[TensorId]) -> Vec<TensorId> {
    let mut v: Vec<TensorId> = Vec::new();
    for &s in streams {
        if !v.contains(&s) {
            v.push(s);
        }
    }
    v
}
