//! The differential tester: every registered op's JIT kernels against the
//! op's own scalar reference function, the way llama.cpp's
//! `test-backend-ops` checks a backend against the CPU one.
//!
//! ```text
//!   registered op ──[reference fn, per element / row / matrix]──────────────> want
//!        │
//!        └──[LoopKernel | GemmKernel (plain, GEMV, epilogue, batched)]──> got
//!              every operand in its own mapping against a PROT_NONE page
//!   (want, got) ──[Tolerance::for_op]──> OpReport { max ULPs, NMSE, pass/fail }
//! ```
//!
//! The sweep covers every tail length 0..=64, primes, non-multiples of the
//! vector width and a large row; each case runs on small-integer data (sums
//! exact in any order, so a dropped or doubled element cannot hide inside a
//! rounding bound) and on random data with special values, with its
//! operands placed against the leading and then the trailing guard page (a
//! read or write one element outside faults) and the slack around them
//! checked for stray writes. `gllm test-ops` prints the table; the test
//! suite runs the same function.

mod fused;
mod metrics;
pub mod quant;

pub use crate::runtime::{GuardedBuffer, Placement};
pub use metrics::{ulps, ErrorStats, Scale, Tolerance};

use crate::codegen::gemm::{GemmEpilogue, GemmKernel};
use crate::codegen::loops::{LoopKernel, LoopProgram};
use crate::codegen::CodegenError;
use crate::device::{DeviceProfile, Isa};
use crate::graph::{BatchLayout, MatMulParams};
use crate::reference;
use crate::scalar::{Arg, FnForm, OpKind, RegisteredOp, ScalarOpRegistry, TensorRole};
use crate::trace::{ComputePattern, OpTrace};
use std::fmt;

/// xorshift64*: deterministic, dependency-free random data.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32)
    }

    /// Any f32 bit pattern (all magnitudes, infinities and NaNs included).
    pub fn any_bits(&mut self) -> f32 {
        f32::from_bits(self.next_u64() as u32)
    }

    /// Mostly moderate values with occasional zeros, subnormals and tiny ones.
    pub fn row_value(&mut self) -> f32 {
        match self.next_u64() % 64 {
            0 => 0.0,
            1 => -0.0,
            2 => f32::from_bits(1 + (self.next_u64() % 1000) as u32),
            3 => -1e-30,
            _ => self.uniform(-4.0, 4.0),
        }
    }

    /// An integer in -8..=8: sums of up to 2²⁰ of them (or of their
    /// pairwise products) are exact in f32 in any order.
    pub fn small_integer(&mut self) -> f32 {
        (self.next_u64() % 17) as f32 - 8.0
    }
}

/// Values every per-element op is checked on, besides random ones.
pub fn special_values() -> Vec<f32> {
    vec![
        0.0,
        -0.0,
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::from_bits(0x007f_ffff),
        1.0,
        -1.0,
        0.5,
        88.7,
        -88.7,
        89.0,
        -104.0,
        1e30,
        -1e30,
        f32::MAX,
        f32::MIN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]
}

/// How many shapes each op is run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// A dozen lengths around the vector widths (seconds for everything).
    Quick,
    /// Every tail 0..=64, primes around the cache blockings and a 65 537-long row.
    Full,
}

impl Sweep {
    /// Row lengths of loop-kernel cases.
    pub fn row_lengths(self) -> Vec<usize> {
        match self {
            Sweep::Quick => vec![0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 257, 1021],
            Sweep::Full => (0..=64).chain([127, 128, 129, 257, 1021, 4099, 65_537]).collect(),
        }
    }

    /// `(m, n, k)` of GEMM cases: degenerate, tiny, every N tail 0..=64,
    /// M tails across the microkernel's rows, and a few beyond a block.
    pub fn gemm_shapes(self) -> Vec<(usize, usize, usize)> {
        let mut v = vec![(0, 4, 3), (4, 0, 3), (3, 4, 0), (1, 1, 1), (2, 3, 5), (7, 1, 13), (16, 17, 15)];
        match self {
            Sweep::Quick => v.extend([(3, 33, 65), (13, 7, 64), (31, 47, 129)]),
            Sweep::Full => {
                v.extend((0..=64).map(|n| (3, n, 5)));
                v.extend((0..=17).map(|m| (m, 19, 7)));
                v.extend([(3, 33, 65), (64, 64, 64), (31, 47, 129), (97, 131, 83), (200, 61, 301)]);
            }
        }
        v
    }

    /// `(n, k)` of GEMV cases (M = 1 through the prepacked path).
    pub fn gemv_shapes(self) -> Vec<(usize, usize)> {
        match self {
            Sweep::Quick => vec![(1, 1), (7, 13), (16, 64), (33, 5), (257, 31)],
            Sweep::Full => (0..=64).map(|n| (n, 7)).chain([(127, 64), (257, 301), (1000, 96)]).collect(),
        }
    }
}

/// Which generated code a report row is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelKind {
    /// A loop kernel compiled from the op's trace.
    Loop,
    /// The blocked GEMM (packing, microkernel, edges).
    Gemm,
    /// M = 1 through the prepacked-B streaming GEMV.
    Gemv,
    /// The GEMM with this elementwise op fused as its epilogue.
    GemmEpilogue(String),
    /// Batched GEMMs (stacked, shared B, interleaved operands, B transposed).
    Batched,
    /// The GEMV over weights in their stored (quantised or half) format.
    QuantGemv,
    /// RMSNorm computed tile by tile inside the GEMM's row-block loop
    /// (`compile_graph` of norm → matmul with rows too long for L1).
    TileFusedNormGemm,
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKind::Loop => f.write_str("loop"),
            KernelKind::Gemm => f.write_str("gemm"),
            KernelKind::Gemv => f.write_str("gemv"),
            KernelKind::GemmEpilogue(op) => write!(f, "gemm+{op}"),
            KernelKind::Batched => f.write_str("batched gemm"),
            KernelKind::QuantGemv => f.write_str("stored-format gemv"),
            KernelKind::TileFusedNormGemm => f.write_str("tile-fused norm+gemm"),
        }
    }
}

/// The outcome for one op, kernel kind and ISA over the sweep.
#[derive(Debug, Clone)]
pub struct OpReport {
    pub op: String,
    pub isa: Isa,
    pub kernel: KernelKind,
    /// The bound on random data at the largest case (exact-data cases are
    /// held to the tighter bound [`Tolerance::for_op`] gives them).
    pub tolerance: String,
    pub cases: usize,
    pub max_ulps: u64,
    /// The largest NMSE of any case.
    pub max_nmse: f64,
    /// The first failure, described with its case.
    pub failure: Option<String>,
    /// Why nothing was run (e.g. an epilogue the GEMM cannot fuse, which
    /// the planner then does not fuse either).
    pub skipped: Option<String>,
}

impl OpReport {
    fn new(op: &str, isa: Isa, kernel: KernelKind) -> OpReport {
        OpReport {
            op: op.to_string(),
            isa,
            kernel,
            tolerance: String::new(),
            cases: 0,
            max_ulps: 0,
            max_nmse: 0.0,
            failure: None,
            skipped: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            self.failure = Some(why);
        }
    }

    fn record(&mut self, stats: &ErrorStats) {
        self.cases += 1;
        self.max_ulps = self.max_ulps.max(stats.max_ulps);
        self.max_nmse = self.max_nmse.max(stats.nmse());
    }
}

/// How a loop kernel is called: [`run_loop_kernel`] normally; a test may
/// pass a deliberately broken caller to show the oracle catches it.
pub type LoopRunner<'a> =
    &'a dyn Fn(&LoopKernel, &[&[f32]], &mut [&mut [f32]], usize, usize) -> Result<(), CodegenError>;

/// The real call: `rows` rows of `n` on one thread, two for big cases.
pub fn run_loop_kernel(
    kernel: &LoopKernel,
    ins: &[&[f32]],
    outs: &mut [&mut [f32]],
    rows: usize,
    n: usize,
) -> Result<(), CodegenError> {
    let threads = if rows * n >= 1 << 16 { 2 } else { 1 };
    kernel.run(ins, outs, rows, n, threads)
}

/// The ISAs this host runs, each as a profile of the host; the second
/// value names what the host cannot run (so a caller can say it skipped it).
pub fn host_profiles() -> Result<(Vec<DeviceProfile>, Vec<Isa>), crate::device::ProfileError> {
    let host = DeviceProfile::detect()?;
    let mut run = Vec::new();
    let mut skipped = Vec::new();
    for isa in Isa::ALL {
        if host.features.supports(isa) {
            run.push(host.clone().with_isa(isa)?);
        } else {
            skipped.push(isa);
        }
    }
    Ok((run, skipped))
}

/// Tests every op in `registry` that `select` accepts, on every profile:
/// loop kernels for non-GEMM ops; for GEMM-pattern ops the plain GEMM, the
/// GEMV, batched GEMMs and the GEMM with each selected elementwise op as
/// its epilogue; then the stored-format GEMV of each of `formats`.
/// `progress` sees each report as it is finished.
pub fn test_ops(
    registry: &ScalarOpRegistry,
    profiles: &[DeviceProfile],
    formats: &[crate::quant::QuantFormat],
    sweep: Sweep,
    select: &dyn Fn(&RegisteredOp) -> bool,
    progress: &mut dyn FnMut(&OpReport),
) -> Vec<OpReport> {
    let ops: Vec<&RegisteredOp> = registry.iter().filter(|o| select(o)).collect();
    let mut reports = Vec::new();
    for profile in profiles {
        for op in &ops {
            let rows = match op.trace() {
                Err(e) => {
                    let mut r = OpReport::new(op.kind().name(), profile.isa, KernelKind::Loop);
                    r.fail(format!("Phase 0 failed: {e}"));
                    vec![r]
                }
                Ok(trace) if matches!(trace.pattern, ComputePattern::Gemm { .. }) => {
                    let epilogues: Vec<&RegisteredOp> =
                        ops.iter().copied().filter(|o| fusable_as_epilogue(o)).collect();
                    test_matmul_op(op, &trace, &epilogues, profile, sweep)
                }
                Ok(trace) => vec![test_loop_op(op, &trace, profile, sweep, &run_loop_kernel)],
            };
            for r in rows {
                progress(&r);
                reports.push(r);
            }
        }
    }
    // RMSNorm tiled into the GEMM, when both ops are in the selection.
    let has = |k: OpKind| ops.iter().any(|o| o.kind() == k);
    if has(OpKind::RmsNorm) && has(OpKind::MatMul) {
        for profile in profiles {
            let r = fused::test_tile_fused_norm_gemm(registry, profile, sweep);
            progress(&r);
            reports.push(r);
        }
    }
    // The stored-format kernels: each encoding this host runs whose ISA is
    // in the run (the layouts are shared, the instructions are not).
    for kernel_isa in crate::codegen::quant_gemv::QuantKernelIsa::ALL {
        if kernel_isa.on_host() && profiles.iter().any(|p| p.isa == kernel_isa.isa()) {
            for &format in formats {
                let r = quant::test_quant_format(format, kernel_isa, sweep);
                progress(&r);
                reports.push(r);
            }
        }
    }
    reports
}

/// Scalar parameters used for ops that take them (eps; any other factor).
pub fn params_for(op: &RegisteredOp) -> Vec<f32> {
    op.signature().scalars().map(|(_, a)| if a.name() == "eps" { 1e-5 } else { 0.75 }).collect()
}

/// The value an output buffer starts with: no kernel computes it, so an
/// element left unwritten shows.
const UNWRITTEN: f32 = -7.0e33;

/// Input values for one case.
fn case_inputs(op: &RegisteredOp, rng: &mut Rng, rows: usize, n: usize, exact: bool) -> Vec<Vec<f32>> {
    let sig = op.signature();
    let per_element = sig.form() == FnForm::PerElement;
    let specials = special_values();
    sig.inputs()
        .map(|(_, a)| {
            let broadcast = rows > 1
                && matches!(a, Arg::Input { role, .. } | Arg::Element { role, .. } if *role != TensorRole::Activation);
            let len = if broadcast { n } else { rows * n };
            (0..len)
                .map(|i| match () {
                    _ if exact => rng.small_integer(),
                    _ if per_element && i % 3 == 0 => specials[(i / 3) % specials.len()],
                    _ if per_element && i % 3 == 1 => rng.any_bits(),
                    _ => rng.row_value(),
                })
                .collect()
        })
        .collect()
}

/// The reference outputs of a loop-kernel case.
fn loop_reference(
    op: &RegisteredOp,
    ins: &[&[f32]],
    params: &[f32],
    rows: usize,
    n: usize,
    out_lens: &[usize],
) -> Result<Vec<Vec<f32>>, String> {
    let mut outs: Vec<Vec<f32>> = out_lens.iter().map(|&l| vec![0.0; l]).collect();
    match op.signature().form() {
        FnForm::PerElement => reference::per_element(op, ins, params, &mut outs[0])?,
        FnForm::Slices => {
            let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            reference::rows(op, ins, params, rows, n, &mut views)?
        }
    }
    Ok(outs)
}

/// Per-element magnitude of a case for the tolerance's [`Scale`].
#[allow(clippy::too_many_arguments)]
fn magnitudes(
    tol: &Tolerance,
    op: &RegisteredOp,
    want: &[f32],
    inputs: &[&[f32]],
    params: &[f32],
    rows: usize,
    n: usize,
    out_len: usize,
) -> Result<Vec<f32>, String> {
    let input_max = |i: usize| inputs.iter().map(|v| v[i % v.len()].abs()).fold(0.0, f32::max);
    Ok(match tol.scale {
        Scale::Output | Scale::OutputPeak => output_scale(tol, want),
        Scale::OutputAndInputs => (0..out_len).map(|i| want[i].abs().max(input_max(i))).collect(),
        Scale::Inputs => (0..out_len).map(|i| input_max(i).max(1.0)).collect(),
        Scale::AbsoluteReference => {
            let abs: Vec<Vec<f32>> = inputs.iter().map(|v| v.iter().map(|x| x.abs()).collect()).collect();
            let refs: Vec<&[f32]> = abs.iter().map(|v| v.as_slice()).collect();
            loop_reference(op, &refs, params, rows, n, &[out_len])?.swap_remove(0)
        }
    })
}

/// One loop-kernel op over the sweep, on `profile`, with `runner` calling
/// the compiled kernel.
pub fn test_loop_op(
    op: &RegisteredOp,
    trace: &OpTrace,
    profile: &DeviceProfile,
    sweep: Sweep,
    runner: LoopRunner<'_>,
) -> OpReport {
    test_loop_op_at(op, trace, profile, &sweep.row_lengths(), runner)
}

/// [`test_loop_op`] at the row lengths `lengths` instead of a sweep's.
pub fn test_loop_op_at(
    op: &RegisteredOp,
    trace: &OpTrace,
    profile: &DeviceProfile,
    lengths: &[usize],
    runner: LoopRunner<'_>,
) -> OpReport {
    let name = op.kind().name();
    let mut report = OpReport::new(name, profile.isa, KernelKind::Loop);
    let params = params_for(op);
    let kernel =
        match LoopProgram::from_trace(trace, params.clone()).and_then(|p| LoopKernel::compile(&p, profile)) {
            Ok(k) => k,
            Err(e) => {
                report.fail(format!("does not compile: {e}"));
                return report;
            }
        };
    let per_element = op.signature().form() == FnForm::PerElement;
    let row_scalar = metrics::returns_row_scalar(op);
    let num_outputs = op.signature().num_outputs().max(1);
    let mut rng = Rng(0x7e57_0000 ^ u64::from(name.len() as u32) << 32 ^ profile.isa as u64);
    let largest = lengths.iter().copied().max().unwrap_or(0);
    report.tolerance = Tolerance::for_op(op, trace, largest, false).to_string();
    for &n in lengths {
        for rows in if per_element { vec![1] } else { vec![1, 3] } {
            // Small integers only where they make the folds exact: repeated
            // values would otherwise correlate the reference's rounding.
            for exact in [metrics::folds_exact_on_integers(trace), false] {
                for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
                    let out_len = if row_scalar { rows } else { rows * n };
                    let case = format!("n={n} rows={rows} {} data, operands {placement}", data_name(exact));
                    let inputs = case_inputs(op, &mut rng, rows, n, exact);
                    if let Err(e) = run_loop_case(
                        op,
                        trace,
                        &kernel,
                        runner,
                        (&inputs, &params),
                        (rows, n, out_len, num_outputs),
                        (exact, placement),
                        &mut report,
                    ) {
                        report.fail(format!("{case}: {e}"));
                        return report;
                    }
                }
            }
        }
    }
    report
}

fn data_name(exact: bool) -> &'static str {
    if exact {
        "small-integer"
    } else {
        "random"
    }
}

#[allow(clippy::too_many_arguments)]
fn run_loop_case(
    op: &RegisteredOp,
    trace: &OpTrace,
    kernel: &LoopKernel,
    runner: LoopRunner<'_>,
    (inputs, params): (&[Vec<f32>], &[f32]),
    (rows, n, out_len, num_outputs): (usize, usize, usize, usize),
    (exact, placement): (bool, Placement),
    report: &mut OpReport,
) -> Result<(), String> {
    let os = |e: std::io::Error| format!("guarded buffer: {e}");
    let guarded_ins: Vec<GuardedBuffer> =
        inputs.iter().map(|v| GuardedBuffer::new(v, placement)).collect::<Result<_, _>>().map_err(os)?;
    let mut guarded_outs: Vec<GuardedBuffer> = (0..num_outputs)
        .map(|_| GuardedBuffer::filled(out_len, UNWRITTEN, placement))
        .collect::<Result<_, _>>()
        .map_err(os)?;
    {
        let ins: Vec<&[f32]> = guarded_ins.iter().map(|b| b.as_slice()).collect();
        let mut outs: Vec<&mut [f32]> = guarded_outs.iter_mut().map(|b| b.as_mut_slice()).collect();
        runner(kernel, &ins, &mut outs, rows, n).map_err(|e| format!("run failed: {e}"))?;
    }
    for (i, (b, v)) in guarded_ins.iter().zip(inputs).enumerate() {
        if !b.as_slice().iter().zip(v).all(|(a, b)| a.to_bits() == b.to_bits()) || !b.canary_intact() {
            return Err(format!("input {i} or the memory around it was written"));
        }
    }
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let want = loop_reference(op, &refs, params, rows, n, &vec![out_len; num_outputs])?;
    let tol = Tolerance::for_op(op, trace, n, exact);
    let scale = magnitudes(&tol, op, &want[0], &refs, params, rows, n, out_len)?;
    let mut stats = ErrorStats::default();
    for (j, (g, w)) in guarded_outs.iter().zip(&want).enumerate() {
        if !g.canary_intact() {
            return Err(format!("wrote outside output {j}"));
        }
        compare(g.as_slice(), w, &scale, &tol, &mut stats).map_err(|e| format!("output {j}{e}"))?;
    }
    check_nmse(&stats, &tol)?;
    report.record(&stats);
    Ok(())
}

/// Per-element magnitudes computed from the reference output alone
/// ([`Scale::Output`], [`Scale::OutputPeak`]).
fn output_scale(tol: &Tolerance, want: &[f32]) -> Vec<f32> {
    match tol.scale {
        Scale::OutputPeak => {
            let peak = want.iter().filter(|w| w.is_finite()).fold(1.0f32, |m, w| m.max(w.abs()));
            vec![peak; want.len()]
        }
        _ => want.iter().map(|w| w.abs()).collect(),
    }
}

/// `got` against the reference `want` under `tol`: every element (NaN
/// only where the reference has NaN), then the case's NMSE. This is the
/// one comparison the oracle and every JIT test make. `scale` holds each
/// element's magnitude as `tol.scale` asks; pass `&[]` when the scale comes
/// from `want` alone ([`Scale::Output`], [`Scale::OutputPeak`]). The error
/// names the first element outside the bound.
pub fn check(got: &[f32], want: &[f32], scale: &[f32], tol: &Tolerance) -> Result<ErrorStats, String> {
    if got.len() != want.len() {
        return Err(format!(" has {} elements, the reference {}", got.len(), want.len()));
    }
    let own;
    let scale = if scale.is_empty() && matches!(tol.scale, Scale::Output | Scale::OutputPeak) {
        own = output_scale(tol, want);
        &own[..]
    } else if scale.len() != want.len() {
        return Err(format!(": {} magnitudes for {} elements ({tol})", scale.len(), want.len()));
    } else {
        scale
    };
    let mut stats = ErrorStats::default();
    compare(got, want, scale, tol, &mut stats)?;
    check_nmse(&stats, tol)?;
    Ok(stats)
}

/// [`check`] for a matrix product `C = A·B` (`m×k` by `k×n`, row-major) on
/// random data: [`Tolerance::reordered_product`], magnitudes `Σ|a||b|`.
pub fn check_matmul(
    got: &[f32],
    want: &[f32],
    a: &[f32],
    b: &[f32],
    (m, n, k): (usize, usize, usize),
) -> Result<ErrorStats, String> {
    if a.len() != m * k || b.len() != k * n {
        return Err(format!(": operands of {} and {} elements for {m}×{k}·{k}×{n}", a.len(), b.len()));
    }
    let mut scale = vec![0.0f32; m * n];
    for i in 0..m {
        for p in 0..k {
            let x = a[i * k + p].abs();
            for (s, y) in scale[i * n..(i + 1) * n].iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *s += x * y.abs();
            }
        }
    }
    check(got, want, &scale, &Tolerance::reordered_product(k))
}

/// Element-by-element comparison under `tol`; the error names the first
/// element outside it.
fn compare(
    got: &[f32],
    want: &[f32],
    scale: &[f32],
    tol: &Tolerance,
    stats: &mut ErrorStats,
) -> Result<(), String> {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        // Bounds relative to the inputs' size (a cancelling formula, a
        // cancelling sum) or to the output's peak measure the NMSE against
        // that size too: a sum that cancels to ~0 is accurate relative to
        // Σ|x|, not to itself.
        if matches!(tol.scale, Scale::Inputs | Scale::AbsoluteReference | Scale::OutputPeak) {
            stats.add_scaled(g, w, scale[i]);
        } else {
            stats.add(g, w);
        }
        if !tol.accepts(g, w, scale[i]) {
            let what = if g.to_bits() == UNWRITTEN.to_bits() { " (never written)" } else { "" };
            return Err(format!(
                "[{i}]: got {g:e}{what}, reference {w:e} ({} ulps; bound {tol})",
                metrics::ulps(g, w)
            ));
        }
    }
    Ok(())
}

fn check_nmse(stats: &ErrorStats, tol: &Tolerance) -> Result<(), String> {
    if stats.nmse() > tol.max_nmse {
        return Err(format!("NMSE {:.2e} above {:.0e}", stats.nmse(), tol.max_nmse));
    }
    Ok(())
}

/// Elementwise ops (one output, no folds) that a GEMM epilogue can apply.
fn fusable_as_epilogue(op: &RegisteredOp) -> bool {
    op.trace().is_ok_and(|t| {
        matches!(t.pattern, ComputePattern::Elementwise | ComputePattern::BinaryElementwise)
            && t.folds.is_empty()
    })
}

/// The GEMM kernels for a GEMM-pattern op: plain, GEMV, batched, and one
/// epilogue per fusable elementwise op.
fn test_matmul_op(
    op: &RegisteredOp,
    trace: &OpTrace,
    epilogues: &[&RegisteredOp],
    profile: &DeviceProfile,
    sweep: Sweep,
) -> Vec<OpReport> {
    let name = op.kind().name();
    let mut out = Vec::new();
    let mut rng = Rng(0x6e44_0001 ^ profile.isa as u64);
    let plain = GemmKernel::compile(profile);
    for kind in [KernelKind::Gemm, KernelKind::Gemv, KernelKind::Batched] {
        let mut r = OpReport::new(name, profile.isa, kind.clone());
        r.tolerance = Tolerance::for_op(op, trace, 301, false).to_string();
        match &plain {
            Err(e) => r.fail(format!("does not compile: {e}")),
            Ok(g) => {
                if let Err(e) = gemm_cases(op, trace, g, &kind, sweep, &mut rng, &mut r) {
                    r.fail(e);
                }
            }
        }
        out.push(r);
    }
    for ep in epilogues {
        let kind = KernelKind::GemmEpilogue(ep.kind().name().to_string());
        let mut r = OpReport::new(name, profile.isa, kind);
        if let Err(e) = epilogue_cases(op, ep, profile, sweep, &mut rng, &mut r) {
            r.fail(e);
        }
        out.push(r);
    }
    out
}

/// Guarded copies of `values` (inputs of a GEMM case).
fn guard_all(values: &[&[f32]], placement: Placement) -> Result<Vec<GuardedBuffer>, String> {
    values
        .iter()
        .map(|v| GuardedBuffer::new(v, placement).map_err(|e| format!("guarded buffer: {e}")))
        .collect()
}

fn matrix(rng: &mut Rng, len: usize, exact: bool) -> Vec<f32> {
    (0..len).map(|_| if exact { rng.small_integer() } else { rng.row_value() }).collect()
}

fn gemm_cases(
    op: &RegisteredOp,
    trace: &OpTrace,
    g: &GemmKernel,
    kind: &KernelKind,
    sweep: Sweep,
    rng: &mut Rng,
    report: &mut OpReport,
) -> Result<(), String> {
    let mut problems: Vec<MatMulParams> = match kind {
        KernelKind::Gemv => {
            sweep.gemv_shapes().into_iter().map(|(n, k)| MatMulParams::new(1, n, k)).collect()
        }
        KernelKind::Batched => batched_problems(sweep),
        _ => sweep.gemm_shapes().into_iter().map(|(m, n, k)| MatMulParams::new(m, n, k)).collect(),
    };
    for p in problems.drain(..) {
        for exact in [true, false] {
            for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
                let case = format!("{p:?} {} data, operands {placement}", data_name(exact));
                let bb = p.batch / p.b_shared_by;
                let a = matrix(rng, p.batch * p.m * p.k, exact);
                let b = matrix(rng, bb * p.k * p.n, exact);
                let ins = guard_all(&[&a, &b], placement)?;
                let mut c = GuardedBuffer::filled(p.batch * p.m * p.n, UNWRITTEN, placement)
                    .map_err(|e| format!("guarded buffer: {e}"))?;
                let (ga, gb) = (ins[0].as_slice(), ins[1].as_slice());
                let run = match kind {
                    KernelKind::Gemv => g
                        .pack_b(gb, p.k, p.n)
                        .and_then(|packed| g.gemm_prepacked(ga, &packed, c.as_mut_slice(), p.m, 1)),
                    KernelKind::Batched => g.gemm_batched(ga, gb, c.as_mut_slice(), &p, &[], 2),
                    _ => g.gemm(ga, gb, c.as_mut_slice(), (p.m, p.n, p.k), 1 + usize::from(p.m * p.n > 4096)),
                };
                run.map_err(|e| format!("{case}: run failed: {e}"))?;
                let mut want = vec![0.0; c.as_slice().len()];
                reference::matmul(op, &p, &[&a, &b], &mut want).map_err(|e| format!("{case}: {e}"))?;
                let tol = Tolerance::for_op(op, trace, p.k, exact);
                let mut scale: Vec<f32> = want.iter().map(|w| w.abs()).collect();
                if tol.scale == Scale::AbsoluteReference {
                    let (aa, ab): (Vec<f32>, Vec<f32>) =
                        (a.iter().map(|x| x.abs()).collect(), b.iter().map(|x| x.abs()).collect());
                    reference::matmul(op, &p, &[&aa, &ab], &mut scale).map_err(|e| format!("{case}: {e}"))?;
                }
                let mut stats = ErrorStats::default();
                if !c.canary_intact() || !ins.iter().all(GuardedBuffer::canary_intact) {
                    return Err(format!("{case}: wrote outside its operands"));
                }
                compare(c.as_slice(), &want, &scale, &tol, &mut stats)
                    .and_then(|()| check_nmse(&stats, &tol))
                    .map_err(|e| format!("{case}: C{e}"))?;
                report.record(&stats);
            }
        }
    }
    Ok(())
}

/// Batched products: stacked, B shared by groups of A (grouped-query
/// attention), interleaved heads, B transposed (Q·Kᵀ).
fn batched_problems(sweep: Sweep) -> Vec<MatMulParams> {
    let mut v = Vec::new();
    let shapes: &[(usize, usize, usize)] = match sweep {
        Sweep::Quick => &[(1, 7, 5), (5, 9, 16)],
        Sweep::Full => &[(1, 7, 5), (5, 9, 16), (3, 64, 8), (17, 33, 64), (1, 1, 1)],
    };
    if sweep == Sweep::Full {
        // Every N tail 0..=64 on two interleaved heads, B transposed (Q·Kᵀ).
        v.extend((0..=64).map(|n| MatMulParams {
            batch: 2,
            transpose_b: true,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Interleaved,
            ..MatMulParams::new(3, n, 5)
        }));
    }
    for &(m, n, k) in shapes {
        for (batch, shared) in [(1, 1), (3, 1), (4, 2)] {
            for (transpose_b, interleaved) in [(false, false), (true, false), (true, true)] {
                let layout = if interleaved { BatchLayout::Interleaved } else { BatchLayout::Stacked };
                v.push(MatMulParams {
                    batch,
                    b_shared_by: shared,
                    transpose_b,
                    a_layout: layout,
                    b_layout: layout,
                    c_layout: layout,
                    ..MatMulParams::new(m, n, k)
                });
            }
        }
    }
    v
}

/// The GEMM with `ep` as its epilogue: `ep(A·B, extra…)` against the
/// reference product followed by `ep`'s reference per element. Products of
/// small integers are exact, so the bound is `ep`'s own.
fn epilogue_cases(
    op: &RegisteredOp,
    ep: &RegisteredOp,
    profile: &DeviceProfile,
    sweep: Sweep,
    rng: &mut Rng,
    report: &mut OpReport,
) -> Result<(), String> {
    let ep_trace = ep.trace().map_err(|e| e.to_string())?;
    let params = params_for(ep);
    let epilogue =
        GemmEpilogue::new().then(&ep_trace.body, 0, &params).map_err(|e| format!("epilogue: {e}"))?;
    let g = match GemmKernel::compile_with_epilogue(profile, &epilogue) {
        Ok(g) => g,
        // An epilogue too big for the spare registers is not fused by the
        // planner either: nothing to test, and nothing wrong.
        Err(CodegenError::Unsupported(why @ crate::codegen::Unsupported::EpilogueRegisters { .. })) => {
            report.skipped = Some(format!("not fusable: {why}"));
            return Ok(());
        }
        Err(e) => return Err(format!("does not compile: {e}")),
    };
    let extras = ep.signature().num_inputs().saturating_sub(1);
    let shapes: Vec<(usize, usize, usize)> = match sweep {
        Sweep::Quick => vec![(1, 9, 4), (5, 17, 8), (13, 33, 16)],
        Sweep::Full => (0..=64).map(|n| (3, n, 4)).chain([(1, 9, 4), (17, 31, 16), (64, 67, 8)]).collect(),
    };
    report.tolerance = Tolerance::for_op(ep, &ep_trace, 1, false).to_string();
    for (m, n, k) in shapes {
        for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
            // Extras alternate between a broadcast row and a full matrix.
            let extra_len = if n % 2 == 0 { n } else { m * n };
            let case = format!("m={m} n={n} k={k}, extras of {extra_len}, operands {placement}");
            let a = matrix(rng, m * k, true);
            let b = matrix(rng, k * n, true);
            let ex: Vec<Vec<f32>> = (0..extras).map(|_| matrix(rng, extra_len, false)).collect();
            let mut all: Vec<&[f32]> = vec![&a, &b];
            all.extend(ex.iter().map(|v| v.as_slice()));
            let ins = guard_all(&all, placement)?;
            let mut c = GuardedBuffer::filled(m * n, UNWRITTEN, placement).map_err(|e| e.to_string())?;
            let gex: Vec<&[f32]> = ins[2..].iter().map(|b| b.as_slice()).collect();
            g.gemm_with(ins[0].as_slice(), ins[1].as_slice(), c.as_mut_slice(), (m, n, k), &gex, 1)
                .map_err(|e| format!("{case}: run failed: {e}"))?;
            let mut product = vec![0.0; m * n];
            reference::matmul(op, &MatMulParams::new(m, n, k), &[&a, &b], &mut product)
                .map_err(|e| format!("{case}: {e}"))?;
            // The per-element reference over (product, extras broadcast).
            let full_ex: Vec<Vec<f32>> = ex
                .iter()
                .map(|v| (0..m * n).map(|i| v[if v.len() == n { i % n.max(1) } else { i }]).collect())
                .collect();
            let mut ep_ins: Vec<&[f32]> = vec![&product];
            ep_ins.extend(full_ex.iter().map(|v| v.as_slice()));
            let mut want = vec![0.0; m * n];
            if m * n > 0 {
                match ep.signature().form() {
                    FnForm::PerElement => reference::per_element(ep, &ep_ins, &params, &mut want),
                    // An elementwise op written over slices: one row of m·n.
                    FnForm::Slices => reference::rows(ep, &ep_ins, &params, 1, m * n, &mut [&mut want]),
                }
                .map_err(|e| format!("{case}: {e}"))?;
            }
            let tol = Tolerance::for_op(ep, &ep_trace, 1, false);
            let scale = magnitudes(&tol, ep, &want, &ep_ins, &params, 1, m * n, m * n)?;
            if !c.canary_intact() || !ins.iter().all(GuardedBuffer::canary_intact) {
                return Err(format!("{case}: wrote outside its operands"));
            }
            let mut stats = ErrorStats::default();
            compare(c.as_slice(), &want, &scale, &tol, &mut stats)
                .and_then(|()| check_nmse(&stats, &tol))
                .map_err(|e| format!("{case}: C{e}"))?;
            report.record(&stats);
        }
    }
    Ok(())
}
