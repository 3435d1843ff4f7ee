//! Matrix products with block-quantised weights read in their stored
//! format: a JIT GEMV for decode (one to a few activation rows) and a
//! dequantising packer that feeds the f32 GEMM for prompt processing.
//!
//! ```text
//!  QuantMatrix ──pack──► QuantPanels (per row: groups of 256, then pair records)
//!  x (f32) ──quantise per 32 (int8 or int16)──► activations in the same layout
//!  kernel(W far-apart weight rows × R activation rows): integer dot per
//!          block, one scale vector per group, accumulated in f32, one
//!          horizontal sum per output
//! ```
//!
//! **Why the integer path.** Decode reads every weight once per token, so
//! the kernel must keep up with memory while spending as few instructions
//! per byte as possible. Converting 4-bit codes to f32 costs ~4 vector
//! instructions per 8 weights; multiplying them as bytes with `vpmaddubsw`
//! against an int8 copy of the activations (quantised per 32, as llama.cpp
//! does) costs ~10 per 64. The price is the activation rounding, bounded by
//! [`crate::quant::activation_quantisation_bound`]; at
//! [`ActivationPrecision::Int16`] the activations are 16-bit, fed as two
//! base-255 digits (one more `vpmaddubsw` + add per 32 weights), and the
//! rounding becomes 256× smaller.
//!
//! **Layout.** Each 256 weights of a row form a group: its eight blocks'
//! codes interleaved four bytes at a time (`lane_byte`, `nibble_at`) so
//! that after `vpmaddubsw` + `vpmaddwd` block `j`'s dot product is in i32
//! lane `j`, followed by the eight scales (and mins) — the file's bytes,
//! reordered; the scales are applied once per group as 8-lane vectors.
//! Q4_K and Q6_K super-blocks are groups, with `d` (and `−dmin`) as f32 and
//! Q4_K's 6-bit scales unpacked to bytes (152 and 212 bytes for the file's
//! 144 and 210); the `d·sc` products are formed exactly in f32, and Q6_K's
//! `−32` offset is subtracted in the integer sums. The blocks after the
//! last whole group (SmolLM2's 576 columns leave 2) are pair records:
//! Q4_0 `qs0[16] qs1[16] d0 d1` (36 bytes), Q4_1 plus `m0 m1` (40), Q8_0
//! `qs0[32] qs1[32] d0 d1` (68), a zero block padding an odd count.
//!
//! **F16 and BF16** take the float path instead: records of 8 weights
//! (`vcvtph2ps`, or a zero-extend and shift for BF16) against f32
//! activations padded to a multiple of 8, one FMA per 8 weights: exact
//! products, 2 bytes per weight read, no activation rounding.
//!
//! **Memory.** A call's W rows come from W far-apart runs of its thread's
//! rows, each run read front to back across calls (four DRAM streams, not
//! one), and each row prefetches 4 KiB ahead into L2 (`PREFETCH_AHEAD`).
//!
//! **ISA.** Two encodings read the same layouts ([`QuantKernelIsa`]):
//! AVX2 (256-bit `vpmaddubsw` + `vpmaddwd`, every host) and AVX-512 VNNI
//! (512-bit loads, `vpdpbusd` straight into i32 lanes: about half the
//! instructions per weight), chosen per host. Both form the same exact
//! integer sums and then the same f32 operations, so their outputs agree
//! bit for bit. Modules: `layout` (the records), `frame` (the loops
//! every encoding shares), `avx2` and `avx512` (the group bodies).

mod avx2;
mod avx512;
mod frame;
mod layout;

use self::layout::*;
use super::gemm::{GemmKernel, PackedB};
use super::{check_length, Buffer, CodegenError, Unsupported};
use crate::device::Isa;
use crate::fusion::parallel::for_quantised_gemv;
use crate::quant::{ActivationPrecision, QuantFormat, QuantMatrix, ACT_BLOCK};
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use std::sync::{Arc, OnceLock};

/// Activation rows one kernel call reads at most.
pub const MAX_ACT_ROWS: usize = 4;

/// Up to this many activation rows the GEMV kernel is used (weights are
/// read once per [`MAX_ACT_ROWS`] rows); above, the weights are dequantised
/// into GEMM panels once per call and the f32 GEMM runs.
pub const GEMV_MAX_ROWS: usize = 8;

/// Bytes read past the last record by a `vcvtph2ps` of a record's scales.
const TAIL_PAD: usize = 64;

/// A quantised matrix in the GEMV kernel's record layout.
#[derive(Debug, Clone)]
pub struct QuantPanels {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    /// Groups and tail records per row.
    shape: RowShape,
    /// How the block formats' kernels quantise activations.
    precision: ActivationPrecision,
    /// The encoding of the kernels that read these panels.
    kernel_isa: QuantKernelIsa,
    data: Vec<u8>,
    /// Dequantised f32 panels kept for prompt processing (see
    /// [`QuantPanels::prefill_panels`]).
    prefill: OnceLock<PackedB>,
}

static PANEL_CACHE_BUDGET: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1 << 30);
static PANEL_CACHE_USED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes of dequantised f32 panels that quantised weights may keep for
/// prompt processing, process-wide (default 1 GiB; 0 turns the cache off).
/// Above it, each prompt-processing call dequantises the panels it needs.
pub fn set_panel_cache_budget(bytes: usize) {
    PANEL_CACHE_BUDGET.store(bytes, std::sync::atomic::Ordering::Release);
}

impl QuantPanels {
    /// Reorders `m` into the kernel's groups and records (parallel over rows).
    pub fn pack(m: &QuantMatrix) -> Result<QuantPanels, CodegenError> {
        let format = m.format();
        if !format.has_kernel() {
            return Err(CodegenError::Unsupported(Unsupported::QuantFormat(format)));
        }
        let shape = RowShape::new(format, m.cols());
        let row_bytes = shape.weight_bytes(format);
        let mut data = vec![0u8; m.rows() * row_bytes + TAIL_PAD];
        let base = data.as_mut_ptr() as usize;
        let parts = rayon::current_num_threads().min(m.rows().max(1));
        let per = m.rows().div_ceil(parts.max(1));
        let fill = |part: usize| -> Result<(), CodegenError> {
            for r in part * per..((part + 1) * per).min(m.rows()) {
                // SAFETY: rows own disjoint `row_bytes` ranges of `data`.
                let out =
                    unsafe { std::slice::from_raw_parts_mut((base + r * row_bytes) as *mut u8, row_bytes) };
                pack_row(format, shape, m.row(r), out);
            }
            Ok(())
        };
        for_each_part(parts, fill)?;
        Ok(QuantPanels {
            format,
            rows: m.rows(),
            cols: m.cols(),
            shape,
            precision: ActivationPrecision::Int8,
            kernel_isa: QuantKernelIsa::host_default(),
            data,
            prefill: OnceLock::new(),
        })
    }

    /// These panels with their GEMV quantising activations at `precision`
    /// (F16/BF16 always use f32 activations).
    pub fn with_activations(mut self, precision: ActivationPrecision) -> QuantPanels {
        self.precision = precision;
        self
    }

    /// These panels read by kernels in `isa` (the layout is the same for
    /// every encoding): for tests and benchmarks that compare encodings.
    pub fn with_kernel_isa(mut self, isa: QuantKernelIsa) -> Result<QuantPanels, CodegenError> {
        if !isa.on_host() {
            return Err(CodegenError::IsaNotOnHost { isa: isa.isa() });
        }
        self.kernel_isa = isa;
        Ok(self)
    }

    /// The encoding of the kernels that read these panels.
    pub fn kernel_isa(&self) -> QuantKernelIsa {
        self.kernel_isa
    }

    /// How the GEMV quantises activations.
    pub fn activations(&self) -> ActivationPrecision {
        self.precision
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Output features (B's columns).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (B's rows).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held.
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    fn row_bytes(&self) -> usize {
        self.shape.weight_bytes(self.format)
    }

    /// Rows `r0..r0 + count` dequantised to f32, `cols` apart, into `out`:
    /// the same values as [`crate::quant::dequantize_row`] on the stored
    /// rows (same f32 operations), read from the records.
    pub fn dequantize_rows(&self, r0: usize, count: usize, out: &mut [f32]) {
        let (format, row_bytes) = (self.format, self.row_bytes());
        let f16_at = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (group_split, elem_split) = (self.shape.groups * group_bytes(format), self.shape.groups * 256);
        for (i, out) in out.chunks_exact_mut(self.cols.max(1)).take(count).enumerate() {
            let row = &self.data[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
            if is_float(format) {
                // The stored row itself (zero padded after `cols`).
                crate::quant::dequantize_row(format, &row[..2 * self.cols], out);
                continue;
            }
            let ((groups, tail), (head, rest)) = (row.split_at(group_split), out.split_at_mut(elem_split));
            for (group, out) in groups.chunks_exact(group_bytes(format)).zip(head.chunks_exact_mut(256)) {
                dequantize_group(format, group, out);
            }
            let rec = record_bytes(format);
            for (b, dst) in rest.chunks_exact_mut(ACT_BLOCK).enumerate() {
                let (rec, h) = (&tail[b / 2 * rec..(b / 2 + 1) * rec], b % 2);
                match format {
                    QuantFormat::Q8_0 => {
                        let d = f16_at(&rec[64 + 2 * h..]);
                        for (o, &q) in dst.iter_mut().zip(&rec[32 * h..32 * h + 32]) {
                            *o = f32::from(q as i8) * d;
                        }
                    }
                    QuantFormat::Q4_1 => {
                        let (d, m) = (f16_at(&rec[32 + 2 * h..]), f16_at(&rec[36 + 2 * h..]));
                        let (lo, hi) = dst.split_at_mut(16);
                        for ((l, u), &q) in lo.iter_mut().zip(hi).zip(&rec[16 * h..16 * h + 16]) {
                            *l = d * f32::from(q & 0x0F) + m;
                            *u = d * f32::from(q >> 4) + m;
                        }
                    }
                    _ => {
                        let d = f16_at(&rec[32 + 2 * h..]);
                        let (lo, hi) = dst.split_at_mut(16);
                        for ((l, u), &q) in lo.iter_mut().zip(hi).zip(&rec[16 * h..16 * h + 16]) {
                            *l = d * f32::from((q & 0x0F) as i8 - 8);
                            *u = d * f32::from((q >> 4) as i8 - 8);
                        }
                    }
                }
            }
        }
    }

    /// `y[m × rows] = x[m × cols] · Wᵀ` with the GEMV kernel (any `m`; meant
    /// for `m ≤` [`GEMV_MAX_ROWS`]). Rows of W are split across up to
    /// `threads` threads: as many as this shape was measured faster on.
    pub fn gemv(&self, x: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<(), CodegenError> {
        let acts = self.quantize(x, m)?;
        self.gemv_quantized(&acts, y, threads)
    }

    /// [`QuantPanels::gemv`] split over exactly `threads` threads (at most
    /// one per 4 rows), bypassing the size rule and the measured choice:
    /// for tests of the split and benchmarks that compare thread counts.
    pub fn gemv_exact_threads(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        let acts = self.quantize(x, m)?;
        match self.job(&acts, y)? {
            Some(job) => run_jobs(&[job], threads.clamp(1, self.rows.div_ceil(4))),
            None => Ok(()),
        }
    }

    /// This matrix as a key of [`measured_thread_choices`].
    fn shape_key(&self) -> GemvShape {
        GemvShape { format: self.format, precision: self.precision, rows: self.rows, cols: self.cols }
    }

    /// `x` (`m` rows of `cols`) as this matrix's kernels read activations;
    /// one result serves every matrix of the same format and `cols` (e.g.
    /// the Q, K and V projections of one input).
    pub fn quantize(&self, x: &[f32], m: usize) -> Result<QuantActivations, CodegenError> {
        check_length(Buffer::X, x.len(), m * self.cols)?;
        let x_stride = self.shape.act_bytes(self.format, self.precision);
        let mut data = vec![0u8; m * x_stride];
        for (xr, out) in x.chunks_exact(self.cols.max(1)).zip(data.chunks_exact_mut(x_stride.max(1))) {
            quantize_activations(self.format, self.precision, xr, out);
        }
        Ok(QuantActivations {
            format: self.format,
            precision: self.precision,
            cols: self.cols,
            m,
            x_stride,
            data,
        })
    }

    /// [`QuantPanels::gemv`] on activations quantised by
    /// [`QuantPanels::quantize`] (of this or a same-format, same-`cols` matrix).
    /// `threads` is an upper bound: a matrix too small to pay for a hand-off
    /// runs on one ([`for_quantised_gemv`]).
    pub fn gemv_quantized(
        &self,
        acts: &QuantActivations,
        y: &mut [f32],
        threads: usize,
    ) -> Result<(), CodegenError> {
        gemv_group(&mut [GemvMember { panels: self, acts, y }], threads)
    }

    /// Checks that `acts` are what this matrix's kernels read and that `y`
    /// holds their output; `None` when no kernel needs to run.
    fn job<'a>(
        &'a self,
        acts: &'a QuantActivations,
        y: &mut [f32],
    ) -> Result<Option<GemvJob<'a>>, CodegenError> {
        if (acts.format, acts.cols, acts.precision) != (self.format, self.cols, self.precision) {
            return Err(CodegenError::QuantActivationsMismatch {
                acts_format: acts.format,
                acts_cols: acts.cols,
                acts_precision: acts.precision,
                format: self.format,
                cols: self.cols,
                precision: self.precision,
            });
        }
        if self.nothing_to_compute(acts.m, y)? {
            return Ok(None);
        }
        Ok(Some(GemvJob {
            panels: self,
            set: kernel_set(self.format, self.precision, self.kernel_isa)?,
            m: acts.m,
            x_stride: acts.x_stride,
            acts: &acts.data,
            y: y.as_mut_ptr() as usize,
        }))
    }

    /// Checks `y` holds `m` rows of output; true when no kernel needs to
    /// run (no rows, or no columns: then `y` is all zeros).
    fn nothing_to_compute(&self, m: usize, y: &mut [f32]) -> Result<bool, CodegenError> {
        check_length(Buffer::Y, y.len(), m * self.rows)?;
        if m == 0 || self.rows == 0 {
            return Ok(true);
        }
        if self.cols == 0 {
            y.fill(0.0);
            return Ok(true);
        }
        Ok(false)
    }

    /// Dequantises into the f32 GEMM's packed panels for `kernel`'s blocking
    /// (parallel over panels): prompt processing amortises this over its rows.
    pub fn dequantize_packed(&self, kernel: &GemmKernel, threads: usize) -> PackedB {
        kernel.pack_b_lines(self.cols, self.rows, threads, &|r0, count, out| {
            self.dequantize_rows(r0, count, out)
        })
    }

    /// The f32 panels for prompt processing: made on first use and kept
    /// while the process-wide [panel cache budget](set_panel_cache_budget)
    /// allows (so a small model pays the dequantisation once), else made
    /// for this call only.
    pub fn prefill_panels(&self, kernel: &GemmKernel, threads: usize) -> std::borrow::Cow<'_, PackedB> {
        use std::sync::atomic::Ordering;
        let fits = |p: &PackedB| p.kc_nr() == (kernel.blocking().kc, kernel.blocking().nr);
        if let Some(p) = self.prefill.get().filter(|p| fits(p)) {
            return std::borrow::Cow::Borrowed(p);
        }
        let packed = self.dequantize_packed(kernel, threads);
        let size = packed.size_bytes();
        let reserved = PANEL_CACHE_USED
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + size <= PANEL_CACHE_BUDGET.load(Ordering::Acquire)).then_some(used + size)
            })
            .is_ok();
        if reserved && self.prefill.get().is_none() {
            if let Err(p) = self.prefill.set(packed) {
                PANEL_CACHE_USED.fetch_sub(size, Ordering::AcqRel);
                return std::borrow::Cow::Owned(p);
            }
            return std::borrow::Cow::Borrowed(self.prefill.get().expect("just set"));
        }
        if reserved {
            PANEL_CACHE_USED.fetch_sub(size, Ordering::AcqRel);
        }
        std::borrow::Cow::Owned(packed)
    }
}

/// One matrix of a [`gemv_group`]: its weights, its activations (quantised
/// by [`QuantPanels::quantize`] for its format), its output (`m × rows`).
pub struct GemvMember<'a> {
    pub panels: &'a QuantPanels,
    pub acts: &'a QuantActivations,
    pub y: &'a mut [f32],
}

/// Several quantised GEMVs as one fan-out: a layer's Q, K and V
/// projections, or its FFN gate and up, read the same activation rows.
/// Every matrix's rows are cut into parts that the threads take from one
/// counter, so the small matrices (SmolLM2's K and V, 69 KiB each, too
/// small to split alone) run beside the large one instead of on one
/// thread while the others wait, and the workers are handed work once per
/// group instead of once per matrix. The thread count is as for one
/// matrix: the size rule on the group's bytes, then measured once per
/// group shape ([`measured_thread_choices`]). Each output is computed by
/// one thread in the same order whatever the split, so results do not
/// depend on it.
pub fn gemv_group(members: &mut [GemvMember<'_>], threads: usize) -> Result<(), CodegenError> {
    let jobs = jobs_of(members)?;
    let bytes: usize = jobs.iter().map(|j| j.panels.size_bytes()).sum();
    let threads = for_quantised_gemv(bytes, threads).min(splittable(&jobs));
    if threads <= 1 {
        return run_jobs(&jobs, 1);
    }
    // More threads only where this machine was measured faster with them,
    // for this group shape (once per process): a hand-off costs
    // microseconds, a vCPU may not be running, and small matrices can lose
    // more to both than they gain. The measurement is made on the calls
    // themselves, alternating the candidates, so it sees the caches as the
    // caller leaves them (a decode step's matrices arrive from DRAM; timed
    // back to back they would arrive from L3).
    let key = ThreadKey {
        shapes: jobs.iter().map(|j| j.panels.shape_key()).collect(),
        act_rows: jobs.iter().map(|j| j.m.min(MAX_ACT_ROWS)).max().unwrap_or(1),
        threads,
    };
    let trial = {
        let mut choices = thread_choices().lock().unwrap_or_else(|e| e.into_inner());
        match choices.entry(key.clone()).or_insert_with(|| ChoiceState::Measuring(ThreadTrials::default())) {
            ChoiceState::Decided(c) => return run_jobs(&jobs, c.threads),
            ChoiceState::Measuring(trials) => trials.next_candidate(threads),
        }
    };
    let started = std::time::Instant::now();
    run_jobs(&jobs, trial)?;
    let secs = started.elapsed().as_secs_f64();
    let mut choices = thread_choices().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(state) = choices.get_mut(&key) {
        if let ChoiceState::Measuring(trials) = state {
            if let Some(choice) = trials.record(trial, threads, secs) {
                *state = ChoiceState::Decided(choice);
            }
        }
    }
    Ok(())
}

/// Where a fan-out shape's thread count stands.
#[derive(Debug, Clone)]
enum ChoiceState {
    Measuring(ThreadTrials),
    Decided(ThreadChoice),
}

/// The timed calls of a shape on one thread and on the budget, in turn.
#[derive(Debug, Clone, Default)]
struct ThreadTrials {
    /// Calls of each candidate so far (the first of each is not timed: it
    /// compiles kernels and wakes workers).
    calls: [usize; 2],
    secs: [Vec<f64>; 2],
}

impl ThreadTrials {
    /// The thread count the next call runs on: whichever candidate has
    /// had fewer calls (one thread first).
    fn next_candidate(&mut self, threads: usize) -> usize {
        let slot = usize::from(self.calls[1] < self.calls[0]);
        self.calls[slot] += 1;
        [1, threads][slot]
    }

    /// Records a call's time; the choice once each candidate has
    /// [`THREAD_TIMING_RUNS`] timed calls: the budget only when its median
    /// is at least [`PARALLEL_MARGIN`] below one thread's.
    fn record(&mut self, ran_on: usize, threads: usize, secs: f64) -> Option<ThreadChoice> {
        let slot = usize::from(ran_on != 1);
        if self.calls[slot] > 1 + self.secs[slot].len() {
            self.secs[slot].push(secs);
        }
        if self.secs.iter().any(|v| v.len() < THREAD_TIMING_RUNS) {
            return None;
        }
        let [one, many] = self.secs.clone().map(|mut v| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        });
        let chosen = if many <= one * (1.0 - PARALLEL_MARGIN) { threads } else { 1 };
        Some(ThreadChoice { threads: chosen, one_thread_secs: one, many_threads_secs: many })
    }
}

/// [`gemv_group`] split over exactly `threads` threads (at most one per 4
/// rows), bypassing the size rule and the measured choice: for tests of
/// the split and benchmarks that compare thread counts.
pub fn gemv_group_exact_threads(members: &mut [GemvMember<'_>], threads: usize) -> Result<(), CodegenError> {
    let jobs = jobs_of(members)?;
    run_jobs(&jobs, threads.clamp(1, splittable(&jobs).max(1)))
}

/// The members that have something to compute, checked.
fn jobs_of<'a>(members: &'a mut [GemvMember<'_>]) -> Result<Vec<GemvJob<'a>>, CodegenError> {
    let mut jobs = Vec::with_capacity(members.len());
    for member in members.iter_mut() {
        if let Some(job) = member.panels.job(member.acts, member.y)? {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// How many threads the jobs can use: one per 4 rows.
fn splittable(jobs: &[GemvJob<'_>]) -> usize {
    jobs.iter().map(|j| j.panels.rows.div_ceil(4)).sum()
}

/// One GEMV of a fan-out, checked: its kernels, activations and output.
struct GemvJob<'a> {
    panels: &'a QuantPanels,
    set: &'static KernelSet,
    m: usize,
    x_stride: usize,
    acts: &'a [u8],
    /// Address of the output (`m × rows` f32), which the fan-out's caller
    /// borrows exclusively while the jobs run.
    y: usize,
}

impl GemvJob<'_> {
    /// Rows `i0..i1` of W against every activation row: one part's work.
    fn rows(&self, i0: usize, i1: usize) -> Result<(), CodegenError> {
        let (set, m, x_stride, acts, y_addr) = (self.set, self.m, self.x_stride, self.acts, self.y);
        let panels = self.panels;
        let rows = panels.rows;
        let row_bytes = panels.row_bytes();
        let n = i1.saturating_sub(i0);
        let precision = kernel_precision(panels.format, panels.precision);
        let act_rows = max_act_rows(precision);
        for r0 in (0..m).step_by(act_rows) {
            let r = act_rows.min(m - r0);
            // The part's rows as `lanes` far-apart runs of `run` rows,
            // one row of each per call: each run is read front to back
            // across the calls, so the call streams from `lanes` places
            // at once (one core reads DRAM twice as fast from four
            // streams as from one).
            let lanes = max_weight_rows(r, precision).min(n);
            let run = n.div_ceil(lanes.max(1));
            // Consecutive calls with the same row count are one kernel
            // call (the kernel loops over them): call c has a row in run k
            // while c + k·run < n, so it has w rows up to call
            // n − (w − 1)·run (counted, not searched: the LM head has
            // thousands of calls).
            let rows_at = |c: usize| (n - c).div_ceil(run).min(lanes);
            let mut c = 0;
            while c < run {
                let w = rows_at(c);
                let calls = (n - (w - 1) * run).min(run) - c;
                debug_assert!(
                    (c..c + calls).all(|c| rows_at(c) == w) && (c + calls == run || rows_at(c + calls) < w)
                );
                let f = set.get(w, r)?;
                let i = i0 + c;
                c += calls;
                let args = KernelArgs {
                    w: panels.data[i * row_bytes..].as_ptr(),
                    x: acts[r0 * x_stride..].as_ptr(),
                    y: (y_addr + (r0 * rows + i) * 4) as *mut f32,
                    groups: panels.shape.groups,
                    w_stride: run * row_bytes,
                    x_stride,
                    y_stride: rows * 4,
                    consts: (&CONSTS as *const Consts).cast(),
                    tail: panels.shape.tail,
                    y_row_stride: run * 4,
                    row_bytes,
                    calls,
                };
                // SAFETY: rows i + j + k·run (j < calls, k < w, all
                // < i1: `rows_at` counted them) of W are `row_bytes`
                // and `run · row_bytes` apart with TAIL_PAD after the
                // last; activation rows r0..r0+r are `x_stride` apart;
                // y rows r0..r0+r, columns i + j + k·run lie in y
                // (m × rows, borrowed for the fan-out: `GemvJob::y`),
                // and parts own disjoint columns.
                unsafe { f(&args) };
            }
        }
        Ok(())
    }
}

/// The jobs on exactly `threads` threads: each matrix's rows cut into
/// parts of a multiple of 4 rows — about two parts per thread over the
/// whole fan-out, in proportion to each matrix's bytes, so a worker that
/// starts late (on this VM a vCPU is not always running) still takes a
/// share of what is left — taken from one counter.
fn run_jobs(jobs: &[GemvJob<'_>], threads: usize) -> Result<(), CodegenError> {
    if threads <= 1 {
        return jobs.iter().try_for_each(|j| j.rows(0, j.panels.rows));
    }
    let total: usize = jobs.iter().map(|j| j.panels.size_bytes()).sum::<usize>().max(1);
    let mut parts = Vec::new();
    for (n, job) in jobs.iter().enumerate() {
        let rows = job.panels.rows;
        let count = (2 * threads * job.panels.size_bytes()).div_ceil(total).clamp(1, rows.div_ceil(4));
        let per = rows.div_ceil(count).div_ceil(4) * 4;
        parts.extend((0..rows).step_by(per).map(|i0| (n, i0, (i0 + per).min(rows))));
    }
    for_each_part(parts.len(), |p| {
        let (n, i0, i1) = parts[p];
        jobs[n].rows(i0, i1)
    })
}

/// Timed calls per candidate when a GEMV shape's thread count is measured
/// (after one untimed call each): the first `2 · (THREAD_TIMING_RUNS + 1)`
/// calls of a shape measure it.
pub const THREAD_TIMING_RUNS: usize = 7;

/// How much faster (as a fraction) several threads must be than one to be
/// used: beyond this VM's run-to-run noise, so a shape near break-even
/// stays on one thread (never slower than one thread by more than noise).
pub const PARALLEL_MARGIN: f64 = 0.10;

/// One matrix of a measured fan-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemvShape {
    pub format: QuantFormat,
    pub precision: ActivationPrecision,
    /// Output rows and input columns of the weight.
    pub rows: usize,
    pub cols: usize,
}

/// A quantised GEMV fan-out whose thread count was measured: one matrix,
/// or the matrices of a [`gemv_group`] run as one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ThreadKey {
    pub shapes: Vec<GemvShape>,
    /// Activation rows per kernel call (1..=[`MAX_ACT_ROWS`]).
    pub act_rows: usize,
    /// The thread budget the choice was made within.
    pub threads: usize,
}

impl std::fmt::Display for ThreadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.shapes.iter().enumerate() {
            let sep = if i == 0 { "" } else { " + " };
            write!(f, "{sep}{} {}×{}", s.format, s.rows, s.cols)?;
            // The precision once per run of members that share it.
            if self.shapes.get(i + 1).is_none_or(|next| next.precision != s.precision) {
                write!(f, " ({} activations)", s.precision)?;
            }
        }
        write!(f, ", {} row(s), budget {}", self.act_rows, self.threads)
    }
}

/// The outcome of one measurement: the thread count used from then on and
/// the median times behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThreadChoice {
    pub threads: usize,
    pub one_thread_secs: f64,
    pub many_threads_secs: f64,
}

type ChoiceMap = std::sync::Mutex<std::collections::HashMap<ThreadKey, ChoiceState>>;

fn thread_choices() -> &'static ChoiceMap {
    static CHOICES: OnceLock<ChoiceMap> = OnceLock::new();
    CHOICES.get_or_init(Default::default)
}

/// Every quantised GEMV shape measured so far in this process, and what
/// was chosen (for `gllm bench` and the benchmark tables).
pub fn measured_thread_choices() -> Vec<(ThreadKey, ThreadChoice)> {
    let mut v: Vec<(ThreadKey, ThreadChoice)> = thread_choices()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|(k, state)| match state {
            ChoiceState::Decided(c) => Some((k.clone(), *c)),
            ChoiceState::Measuring(_) => None,
        })
        .collect();
    v.sort_by_key(|(k, _)| {
        let dims: Vec<(usize, usize)> = k.shapes.iter().map(|s| (s.rows, s.cols)).collect();
        (dims, k.act_rows, k.threads)
    });
    v
}

/// Activation rows quantised per block of 32 in the kernels' record layout
/// for one weight format (see [`QuantPanels::quantize`]).
#[derive(Debug, Clone)]
pub struct QuantActivations {
    format: QuantFormat,
    precision: ActivationPrecision,
    cols: usize,
    m: usize,
    /// Bytes between rows.
    x_stride: usize,
    data: Vec<u8>,
}

impl QuantActivations {
    /// The weight format these records are laid out for.
    pub fn format(&self) -> QuantFormat {
        self.format
    }
}

/// How far ahead of each row's cursor the kernels prefetch its weights.
///
/// A call reads W rows from W far-apart runs (see
/// [`QuantPanels::gemv_quantized`]), each front to back across the calls,
/// so each row's next bytes are a fixed distance ahead in its own stream.
/// The hardware prefetcher alone left the kernel waiting on DRAM for much
/// of its time (time ≈ compute + memory rather than the larger of the two):
/// on the AVX2 EPYC a Q4_1 4096×11008 GEMV on one thread went from 7–10 to
/// 12–16 GB/s with this, best at 3–4 KiB (2 KiB: 12–14, 6 KiB: 10–12).
///
/// The prefetches are `prefetcht1` (into L2, not L1): on a Zen 4 EPYC with
/// `prefetcht0` the same GEMV swung between 10 and 19 GB/s from run to run
/// (distances 0.5–16 KiB alike), with `prefetcht1` at 2–4 KiB it held
/// 17–19 GB/s (AVX-512 VNNI kernels; the read probe: 19–20). L1's few miss
/// buffers are the loads' to use; L2 has room for the streams ahead.
///
/// Each row's prefetches go just before that row's body rather than all
/// rows' at the top of the loop: on the Zen 4 EPYC (`--bench quant`, the
/// two builds alternated, medians of four runs, 4096×11008, one thread)
/// Q4_1 went from 18.1 to 21.3 GB/s with the VNNI kernels and from 16.1 to
/// 20.4 with the AVX2 ones, Q4_K 19.5 → 20.4 (read probe 22–25 GB/s).
/// Prefetching each stream's first 2–8 KiB at kernel entry, which the
/// loop's prefetches never cover, made no difference there.
const PREFETCH_AHEAD: i32 = 4096;

/// The precision `format`'s kernels run at: F16/BF16 read f32 activations
/// whatever was asked, so one (`Int8`-shaped) kernel set serves both.
fn kernel_precision(format: QuantFormat, precision: ActivationPrecision) -> ActivationPrecision {
    if is_float(format) {
        ActivationPrecision::Int8
    } else {
        precision
    }
}

/// Activation rows one kernel call reads at `precision`: `Int16` keeps two
/// integer sums per row.
fn max_act_rows(precision: ActivationPrecision) -> usize {
    match precision {
        ActivationPrecision::Int8 => MAX_ACT_ROWS,
        ActivationPrecision::Int16 => 3,
    }
}

/// Weight rows per call for `r` activation rows: the W·R accumulators
/// share the 16 vector registers with 2 constants, 5 temporaries and
/// digits·R integer sums (a group), or 8 constants and temporaries plus 2
/// more for `Int16` (a tail record).
fn max_weight_rows(r: usize, precision: ActivationPrecision) -> usize {
    match precision {
        ActivationPrecision::Int8 => (6 / r.max(1)).clamp(1, 4),
        ActivationPrecision::Int16 => [4, 2, 1][r.clamp(1, 3) - 1],
    }
}

#[repr(C)]
struct KernelArgs {
    w: *const u8,
    x: *const u8,
    y: *mut f32,
    /// Groups of 256 weights per row.
    groups: usize,
    w_stride: usize,
    x_stride: usize,
    y_stride: usize,
    consts: *const u8,
    /// Tail records per row (after the groups).
    tail: usize,
    /// Bytes between the outputs of consecutive weight rows.
    y_row_stride: usize,
    /// Bytes of one stored row: the next call's rows follow the last's.
    row_bytes: usize,
    /// Calls made as one: call j reads rows `w + j·row_bytes` (+ k·w_stride)
    /// and writes outputs `y + 4j` (+ k·y_row_stride). At least 1.
    calls: usize,
}

/// Asserts at compile time that each field of a `#[repr(C)]` struct lies
/// at the byte offset the generated code addresses it by.
macro_rules! assert_offsets {
    ($ty:ty { $($field:ident: $offset:expr),* $(,)? }) => {
        const _: () = { $(assert!(std::mem::offset_of!($ty, $field) == $offset as usize);)* };
    };
}

assert_offsets!(KernelArgs {
    w: 0,
    x: 8,
    y: 16,
    groups: 24,
    w_stride: 32,
    x_stride: 40,
    y_stride: 48,
    consts: 56,
    tail: 64,
    y_row_stride: 72,
    row_bytes: 80,
    calls: 88,
});

type QuantGemvFn = unsafe extern "C" fn(*const KernelArgs);

/// The kernels' constant vectors.
#[repr(C, align(32))]
struct Consts {
    nibble_mask: [u8; 32],
    ones: [i16; 16],
    /// Tail records: `[d0, d1, m0, m1]` → `[d0×4, d1×4]`.
    idx_d: [i32; 8],
    /// … → `[m0×4, m1×4]`.
    idx_m: [i32; 8],
    /// Q8_0 tail records: `[d0, d1, ..]` → the lanes `vphaddd` leaves each
    /// block's sums in.
    idx_q8: [i32; 8],
    /// Q6_K ([`q6_k_at`]): a code in bits 0–5; vector 3's two-bit parts
    /// from X, Y, Z after their shifts by 6, 4, 2.
    q6k_code: [u8; 32],
    q6k_from_x: [u8; 32],
    q6k_from_y: [u8; 32],
    q6k_from_z: [u8; 32],
    /// Q4_K (AVX-512): `vpermps` indices spreading a group's `[d, −dmin]`
    /// over eight lanes each.
    q4k_d_dmin: [i32; 16],
    /// Q8_0 (AVX-512): the sign bit of a byte, which `vpxord` flips to
    /// turn a signed code `w` into the unsigned `w + 128`.
    sign_bit: [u8; 4],
}

/// Byte offsets of [`Consts`]' fields.
const C_MASK: i32 = 0;
const C_ONES: i32 = 32;
const C_IDX_D: i32 = 64;
const C_IDX_M: i32 = 96;
const C_IDX_Q8: i32 = 128;
const C_Q6K_CODE: i32 = 160;
const C_Q6K_FROM_X: i32 = 192;
const C_Q6K_FROM_Y: i32 = 224;
const C_Q6K_FROM_Z: i32 = 256;
const C_Q4K_D_DMIN: i32 = 288;
const C_SIGN_BIT: i32 = 352;

assert_offsets!(Consts {
    nibble_mask: C_MASK,
    ones: C_ONES,
    idx_d: C_IDX_D,
    idx_m: C_IDX_M,
    idx_q8: C_IDX_Q8,
    q6k_code: C_Q6K_CODE,
    q6k_from_x: C_Q6K_FROM_X,
    q6k_from_y: C_Q6K_FROM_Y,
    q6k_from_z: C_Q6K_FROM_Z,
    q4k_d_dmin: C_Q4K_D_DMIN,
    sign_bit: C_SIGN_BIT,
});

static CONSTS: Consts = Consts {
    nibble_mask: [0x0F; 32],
    ones: [1; 16],
    idx_d: [0, 0, 0, 0, 1, 1, 1, 1],
    idx_m: [2, 2, 2, 2, 3, 3, 3, 3],
    idx_q8: [0, 0, 1, 1, 0, 0, 1, 1],
    q6k_code: [0x3F; 32],
    q6k_from_x: [0x03; 32],
    q6k_from_y: [0x0C; 32],
    q6k_from_z: [0x30; 32],
    q4k_d_dmin: [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1],
    sign_bit: [0x80; 4],
};

/// A compiled kernel, or why it could not be (kept, so the failure is not
/// retried on every call).
type KernelSlot = Result<ExecutableCode, Arc<CodegenError>>;

/// One format's kernels at one activation precision, compiled on first
/// use for each (W, R).
struct KernelSet {
    format: QuantFormat,
    precision: ActivationPrecision,
    isa: QuantKernelIsa,
    slots: [[OnceLock<KernelSlot>; MAX_ACT_ROWS]; 4],
}

impl KernelSet {
    fn get(&self, w: usize, r: usize) -> Result<QuantGemvFn, CodegenError> {
        let code = self.slots[w - 1][r - 1].get_or_init(|| {
            let bytes = frame::generate(self.isa, self.format, self.precision, w, r).map_err(Arc::new)?;
            ExecutableCode::new(&bytes).map_err(|e| Arc::new(e.into()))
        });
        match code {
            // SAFETY: generated by `generate` for this signature, sealed r-x.
            Ok(code) => Ok(unsafe { std::mem::transmute::<*const u8, QuantGemvFn>(code.entry()) }),
            Err(e) => Err(CodegenError::Unsupported(Unsupported::QuantKernel {
                format: self.format,
                cause: e.clone(),
            })),
        }
    }
}

/// The instruction set a stored-format kernel is encoded in. The weight and
/// activation layouts are the same for both, so one packed matrix runs on
/// either ([`QuantPanels::with_kernel_isa`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuantKernelIsa {
    /// 256-bit `vpmaddubsw` + `vpmaddwd` (AVX2, FMA, F16C): every x86
    /// host this project targets.
    Avx2,
    /// 512-bit loads and `vpdpbusd` (AVX-512 F/BW/VL + VNNI): one
    /// instruction per 64 byte products into i32 lanes, with no i16
    /// intermediate — half the instructions per weight of [`Self::Avx2`].
    Avx512Vnni,
}

impl QuantKernelIsa {
    pub const ALL: [QuantKernelIsa; 2] = [QuantKernelIsa::Avx2, QuantKernelIsa::Avx512Vnni];

    /// Whether this CPU runs the encoding.
    pub fn on_host(self) -> bool {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        match self {
            QuantKernelIsa::Avx2 => avx2,
            QuantKernelIsa::Avx512Vnni => {
                avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni")
            }
        }
    }

    /// The fastest encoding this CPU runs, unless `GLLM_QUANT_KERNELS`
    /// (`avx2` or `avx512-vnni`) names another it runs: for A/B runs of a
    /// whole model. A value that names nothing this CPU runs is ignored
    /// here; [`QuantKernelIsa::from_env`] reports it (the CLI checks it at
    /// start-up).
    pub fn host_default() -> QuantKernelIsa {
        static CHOSEN: OnceLock<QuantKernelIsa> = OnceLock::new();
        *CHOSEN.get_or_init(|| match QuantKernelIsa::from_env() {
            Ok(Some(isa)) => isa,
            _ if QuantKernelIsa::Avx512Vnni.on_host() => QuantKernelIsa::Avx512Vnni,
            _ => QuantKernelIsa::Avx2,
        })
    }

    /// The encoding `GLLM_QUANT_KERNELS` asks for (`None` when unset), or
    /// why it cannot be used.
    pub fn from_env() -> Result<Option<QuantKernelIsa>, QuantKernelsEnvError> {
        let Some(value) = std::env::var_os("GLLM_QUANT_KERNELS") else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        let isa = QuantKernelIsa::ALL
            .into_iter()
            .find(|i| i.name() == value)
            .ok_or_else(|| QuantKernelsEnvError::Unknown { value: value.clone() })?;
        if !isa.on_host() {
            return Err(QuantKernelsEnvError::NotOnHost { isa });
        }
        Ok(Some(isa))
    }

    /// The name `GLLM_QUANT_KERNELS` and reports use.
    pub fn name(self) -> &'static str {
        match self {
            QuantKernelIsa::Avx2 => "avx2",
            QuantKernelIsa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The plan-level ISA these kernels belong to (for reports and errors).
    pub fn isa(self) -> Isa {
        match self {
            QuantKernelIsa::Avx2 => Isa::Avx2,
            QuantKernelIsa::Avx512Vnni => Isa::Avx512,
        }
    }
}

/// A `GLLM_QUANT_KERNELS` value that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantKernelsEnvError {
    #[error("GLLM_QUANT_KERNELS={value:?} names no stored-format kernels (expected avx2 or avx512-vnni)")]
    Unknown { value: String },
    #[error(
        "GLLM_QUANT_KERNELS={isa}: this CPU cannot run those kernels (they need AVX-512 F/BW/VL and VNNI)"
    )]
    NotOnHost { isa: QuantKernelIsa },
}

impl std::fmt::Display for QuantKernelIsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn kernel_set(
    format: QuantFormat,
    precision: ActivationPrecision,
    isa: QuantKernelIsa,
) -> Result<&'static KernelSet, CodegenError> {
    // One set per (format, encoding, activation precision).
    const PER_FORMAT: usize = 2 * QuantKernelIsa::ALL.len();
    const SETS_LEN: usize = PER_FORMAT * QuantFormat::ALL.len();
    static SETS: [OnceLock<KernelSet>; SETS_LEN] = [const { OnceLock::new() }; SETS_LEN];
    let f = QuantFormat::ALL.iter().position(|&f| f == format).expect("every format is in ALL");
    let e = QuantKernelIsa::ALL.iter().position(|&e| e == isa).expect("every encoding is in ALL");
    let precision = kernel_precision(format, precision);
    let i = PER_FORMAT * f + 2 * e + usize::from(precision == ActivationPrecision::Int16);
    if !isa.on_host() {
        return Err(CodegenError::IsaNotOnHost { isa: isa.isa() });
    }
    Ok(SETS[i].get_or_init(|| KernelSet { format, precision, isa, slots: Default::default() }))
}
