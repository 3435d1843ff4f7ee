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
//! one), and each row prefetches 4 KiB ahead (`PREFETCH_AHEAD`).
//!
//! **ISA.** The kernels use AVX2 encodings (256-bit integer multiply-adds),
//! which AVX-512 machines also run; a VNNI (`vpdpbusd`) variant is the next
//! step there.

use super::gemm::{GemmKernel, PackedB};
use super::{check_length, Buffer, CodegenError, Unsupported};
use crate::device::Isa;
use crate::fusion::parallel::for_quantised_gemv;
use crate::quant::{
    quantize_activation_block_at, ActivationBlock, ActivationPrecision, QuantFormat, QuantMatrix, ACT_BLOCK,
};
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use iced_x86::code_asm::*;
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

/// Blocks of 32 one group holds (a K-quant super-block is one group).
const GROUP_BLOCKS: usize = 8;

/// Bytes of one tail record (a pair of blocks, or 8 F16/BF16 elements);
/// the K-quants have none (their rows are whole super-blocks).
fn record_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_0 => 36,
        QuantFormat::Q4_1 => 40,
        QuantFormat::Q8_0 => 68,
        QuantFormat::F16 | QuantFormat::Bf16 => 16,
        QuantFormat::Q4K | QuantFormat::Q6K => 0,
    }
}

/// Whether `format` runs the float path (f32 activations).
fn is_float(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::F16 | QuantFormat::Bf16)
}

/// Elements of one tail record.
fn record_elems(format: QuantFormat) -> usize {
    if is_float(format) {
        8
    } else {
        2 * ACT_BLOCK
    }
}

/// Bytes of one group of 256 weights (the file's bytes, reordered; Q4_K
/// and Q6_K keep their f16 super-block scales as f32).
fn group_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_0 => 144,
        QuantFormat::Q4_1 => 160,
        QuantFormat::Q8_0 => 272,
        QuantFormat::Q4K => 152,
        QuantFormat::Q6K => 212,
        QuantFormat::F16 | QuantFormat::Bf16 => 0,
    }
}

/// Integer digits per activation: `Int16` values are two base-255 digits.
fn digits(precision: ActivationPrecision) -> usize {
    match precision {
        ActivationPrecision::Int8 => 1,
        ActivationPrecision::Int16 => 2,
    }
}

/// Where the parts of one unit of quantised activations lie: a group of
/// 256 (a half group of 128 for Q6_K) or a tail record. The integer
/// values come first, one copy per digit (`Int16`: the high digits, then
/// the low ones `digit` bytes later), then the `dx` vector, and for the
/// 4-bit formats `c·s` (Q6_K: `−32·Σq` as i32, before `dx`).
#[derive(Debug, Clone, Copy)]
struct ActParts {
    digit: i32,
    dx: i32,
    extra: i32,
    bytes: usize,
}

impl ActParts {
    fn group(format: QuantFormat, precision: ActivationPrecision) -> ActParts {
        let n = digits(precision) as i32;
        match format {
            QuantFormat::Q6K => {
                ActParts { digit: 128, extra: 128 * n, dx: 128 * n + 32, bytes: 128 * n as usize + 64 }
            }
            QuantFormat::Q8_0 => ActParts { digit: 256, dx: 256 * n, extra: 0, bytes: 256 * n as usize + 32 },
            QuantFormat::F16 | QuantFormat::Bf16 => ActParts { digit: 0, dx: 0, extra: 0, bytes: 0 },
            _ => ActParts { digit: 256, dx: 256 * n, extra: 256 * n + 32, bytes: 256 * n as usize + 64 },
        }
    }

    fn record(format: QuantFormat, precision: ActivationPrecision) -> ActParts {
        let n = digits(precision) as i32;
        match format {
            QuantFormat::Q8_0 => ActParts { digit: 64, dx: 64 * n, extra: 0, bytes: 64 * n as usize + 32 },
            QuantFormat::F16 | QuantFormat::Bf16 => ActParts { digit: 0, dx: 0, extra: 0, bytes: 32 },
            QuantFormat::Q4K | QuantFormat::Q6K => ActParts { digit: 0, dx: 0, extra: 0, bytes: 0 },
            _ => ActParts { digit: 64, dx: 64 * n, extra: 64 * n + 32, bytes: 64 * n as usize + 64 },
        }
    }
}

/// Bytes of one group of 256 quantised activations.
fn act_group_bytes(format: QuantFormat, precision: ActivationPrecision) -> usize {
    let parts = ActParts::group(format, precision).bytes;
    if format == QuantFormat::Q6K {
        2 * parts
    } else {
        parts
    }
}

/// Byte of element `k` of block `j` in a group's 256 int8 codes (Q8_0
/// weights, every activation group): vector `k / 4`, lane `j`, so that a
/// `vpmaddubsw` + `vpmaddwd` leaves block `j`'s partial sum in i32 lane `j`.
fn lane_byte(j: usize, k: usize) -> usize {
    32 * (k / 4) + 4 * j + k % 4
}

/// Byte and shift of element `k` of block `j` in a group's 128 bytes of
/// 4-bit codes: the codes of vector `k / 4` in the low (even vectors) or
/// high nibbles of 32-byte load `k / 8`.
fn nibble_at(j: usize, k: usize) -> (usize, u32) {
    (32 * (k / 8) + 4 * j + k % 4, 4 * ((k / 4) % 2) as u32)
}

/// How a row of `cols` elements is stored: whole groups of 256 first, then
/// tail records for the blocks left over (a pair padded with a zero block
/// when their count is odd); F16/BF16 rows are all tail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowShape {
    groups: usize,
    tail: usize,
}

impl RowShape {
    fn new(format: QuantFormat, cols: usize) -> RowShape {
        if is_float(format) {
            return RowShape { groups: 0, tail: cols.div_ceil(record_elems(format)) };
        }
        let blocks = cols.div_ceil(ACT_BLOCK);
        let groups = blocks / GROUP_BLOCKS;
        let tail = if record_bytes(format) == 0 { 0 } else { (blocks - GROUP_BLOCKS * groups).div_ceil(2) };
        RowShape { groups, tail }
    }

    fn weight_bytes(self, format: QuantFormat) -> usize {
        self.groups * group_bytes(format) + self.tail * record_bytes(format)
    }

    fn act_bytes(self, format: QuantFormat, precision: ActivationPrecision) -> usize {
        self.groups * act_group_bytes(format, precision)
            + self.tail * ActParts::record(format, precision).bytes
    }
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
            set: kernel_set(self.format, self.precision)?,
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
    // more to both than they gain.
    let key = ThreadKey {
        shapes: jobs.iter().map(|j| j.panels.shape_key()).collect(),
        act_rows: jobs.iter().map(|j| j.m.min(MAX_ACT_ROWS)).max().unwrap_or(1),
        threads,
    };
    let cached = thread_choices().lock().unwrap_or_else(|e| e.into_inner()).get(&key).map(|c| c.threads);
    let threads = match cached {
        Some(t) => t,
        None => {
            let choice = measure_threads(&jobs, threads)?;
            thread_choices().lock().unwrap_or_else(|e| e.into_inner()).insert(key, choice);
            choice.threads
        }
    };
    run_jobs(&jobs, threads)
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
            // call (the kernel loops over them).
            let rows_at = |c: usize| (n - c).div_ceil(run).min(lanes);
            let mut c = 0;
            while c < run {
                let w = rows_at(c);
                let calls = (c..run).take_while(|&c| rows_at(c) == w).count();
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

/// Times the jobs on one thread and on `threads` (interleaved, after a
/// warm-up, median of [`THREAD_TIMING_RUNS`] each) and keeps `threads` only
/// when it is at least [`PARALLEL_MARGIN`] faster. The outputs are written
/// by every run (the same result whatever the split).
fn measure_threads(jobs: &[GemvJob<'_>], threads: usize) -> Result<ThreadChoice, CodegenError> {
    let mut times = [Vec::new(), Vec::new()];
    for round in 0..=THREAD_TIMING_RUNS {
        for (slot, t) in [1, threads].into_iter().enumerate() {
            let started = std::time::Instant::now();
            run_jobs(jobs, t)?;
            if round > 0 {
                times[slot].push(started.elapsed().as_secs_f64());
            }
        }
    }
    let [one, many] = times.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    let chosen = if many <= one * (1.0 - PARALLEL_MARGIN) { threads } else { 1 };
    Ok(ThreadChoice { threads: chosen, one_thread_secs: one, many_threads_secs: many })
}

/// Timed runs per candidate when a GEMV shape's thread count is measured.
const THREAD_TIMING_RUNS: usize = 7;

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

fn thread_choices() -> &'static std::sync::Mutex<std::collections::HashMap<ThreadKey, ThreadChoice>> {
    static CHOICES: OnceLock<std::sync::Mutex<std::collections::HashMap<ThreadKey, ThreadChoice>>> =
        OnceLock::new();
    CHOICES.get_or_init(Default::default)
}

/// Every quantised GEMV shape measured so far in this process, and what
/// was chosen (for `gllm bench` and the benchmark tables).
pub fn measured_thread_choices() -> Vec<(ThreadKey, ThreadChoice)> {
    let mut v: Vec<(ThreadKey, ThreadChoice)> = thread_choices()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, c)| (k.clone(), *c))
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

/// Where element `e` (0..256) of a Q6_K super-block lives in its group:
/// its lane byte `at` and vector `v` (0..4). Half `H` of the super-block is
/// three 32-byte vectors X, Y, Z at `20 + 96·H`; byte `4j + t` of each is
/// lane `t` of sub-block `8H + j`. Vectors 0–2 keep their 6-bit codes in
/// bits 0–5 of X, Y, Z; vector 3's code is split two bits at a time into
/// bits 6–7 of X, Y and Z. The kernel then needs one mask per vector for
/// vectors 0–2 and three shift-and-masks for vector 3, where a nibble plus
/// 2-bit-high layout needed a shift and two masks per vector.
fn q6_k_at(e: usize) -> (usize, usize) {
    let sub = e / 16;
    let (half, j, k) = (sub / 8, sub % 8, e % 16);
    (20 + 96 * half + 4 * j + k % 4, k / 4)
}

/// Stores Q6_K code `code` (0..64) of element `e` into group `g` ([`q6_k_at`]).
fn q6_k_put(g: &mut [u8], e: usize, code: u8) {
    let (at, v) = q6_k_at(e);
    if v < 3 {
        g[at + 32 * v] |= code & 0x3F;
    } else {
        for p in 0..3 {
            g[at + 32 * p] |= ((code >> (2 * p)) & 3) << 6;
        }
    }
}

/// The Q6_K code (0..64) of element `e` of group `g` ([`q6_k_at`]).
fn q6_k_get(g: &[u8], e: usize) -> u8 {
    let (at, v) = q6_k_at(e);
    if v < 3 {
        g[at + 32 * v] & 0x3F
    } else {
        (0..3).fold(0, |code, p| code | ((g[at + 32 * p] >> 6) << (2 * p)))
    }
}

/// One stored row in the kernel's layout (`out` zeroed): F16/BF16 as
/// stored; otherwise each 256 weights as a group, then the blocks left over
/// as pair records `qs0 qs1 d0 d1 (m0 m1)`.
///
/// Groups: Q4_0/Q4_1 `codes[128] d[8] (m[8])` (f16 scales), Q8_0
/// `codes[256] d[8]`, Q4_K `f32 d, f32 −dmin, sc[8], m[8], codes[128]`
/// (the 6-bit scales unpacked), Q6_K `f32 d, sc[16] (i8), codes[192]`;
/// codes in the orders of [`lane_byte`], [`nibble_at`] and [`q6_k_at`].
fn pack_row(format: QuantFormat, shape: RowShape, row: &[u8], out: &mut [u8]) {
    if is_float(format) {
        out[..row.len()].copy_from_slice(row);
        return;
    }
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let (groups, tail) = out.split_at_mut(shape.groups * group_bytes(format));
    let group_src = GROUP_BLOCKS * ACT_BLOCK / format.block_elems() * format.block_bytes();
    for (src, g) in row.chunks_exact(group_src).zip(groups.chunks_exact_mut(group_bytes(format))) {
        match format {
            QuantFormat::Q4K => {
                g[..4].copy_from_slice(&f16_at(src, 0).to_le_bytes());
                g[4..8].copy_from_slice(&(-f16_at(src, 2)).to_le_bytes());
                let (scales, mins) = crate::quant::q4_k_scales_and_mins(&src[4..16]);
                g[8..16].copy_from_slice(&scales);
                g[16..24].copy_from_slice(&mins);
                // Sub-block j: the low (even j) or high nibbles of the
                // file's 32 bytes at 16 + 32·(j / 2).
                for j in 0..8 {
                    for k in 0..32 {
                        let q = (src[16 + 32 * (j / 2) + k] >> (4 * (j % 2))) & 0x0F;
                        let (byte, shift) = nibble_at(j, k);
                        g[24 + byte] |= q << shift;
                    }
                }
            }
            QuantFormat::Q6K => {
                g[..4].copy_from_slice(&f16_at(src, 208).to_le_bytes());
                g[4..20].copy_from_slice(&src[192..208]);
                for e in 0..256 {
                    q6_k_put(g, e, crate::quant::q6_k_code(src, e));
                }
            }
            _ => {
                let bb = format.block_bytes();
                for (j, block) in src.chunks_exact(bb).enumerate() {
                    if format == QuantFormat::Q8_0 {
                        for k in 0..32 {
                            g[lane_byte(j, k)] = block[2 + k];
                        }
                        g[256 + 2 * j..258 + 2 * j].copy_from_slice(&block[..2]);
                        continue;
                    }
                    // The file's byte i: element i low, i + 16 high.
                    let codes = &block[bb - 16..];
                    for k in 0..32 {
                        let q = if k < 16 { codes[k] & 0x0F } else { codes[k - 16] >> 4 };
                        let (byte, shift) = nibble_at(j, k);
                        g[byte] |= q << shift;
                    }
                    g[128 + 2 * j..130 + 2 * j].copy_from_slice(&block[..2]);
                    if format == QuantFormat::Q4_1 {
                        g[144 + 2 * j..146 + 2 * j].copy_from_slice(&block[2..4]);
                    }
                }
            }
        }
    }
    // Tail records: the blocks after the groups, two per record.
    let (bb, rec) = (format.block_bytes(), record_bytes(format));
    let (head, codes) = match format {
        QuantFormat::Q4_1 => (4, 16),
        QuantFormat::Q4_0 => (2, 16),
        _ => (2, 32),
    };
    let left = &row[shape.groups * group_src..];
    for (b, block) in left.chunks_exact(bb).enumerate() {
        let (p, half) = (b / 2, b % 2);
        let rec = &mut tail[p * rec..(p + 1) * rec];
        rec[half * codes..(half + 1) * codes].copy_from_slice(&block[head..head + codes]);
        let scales = 2 * codes;
        rec[scales + 2 * half..scales + 2 * half + 2].copy_from_slice(&block[..2]);
        if format == QuantFormat::Q4_1 {
            rec[scales + 4 + 2 * half..scales + 6 + 2 * half].copy_from_slice(&block[2..4]);
        }
    }
}

/// One group of 256 weights back to f32, with the reference dequantiser's
/// operations (so prompt processing sees the file's values bit for bit).
fn dequantize_group(format: QuantFormat, g: &[u8], out: &mut [f32]) {
    let f16_at = |i: usize| half::f16::from_le_bytes([g[i], g[i + 1]]).to_f32();
    let f32_at = |i: usize| f32::from_le_bytes([g[i], g[i + 1], g[i + 2], g[i + 3]]);
    // Block j's 32 codes from the group's 4-bit code bytes at `at` (the
    // order of `nibble_at`, walked a byte at a time).
    let nibbles = |at: usize, j: usize| {
        let mut q = [0u8; ACT_BLOCK];
        for l in 0..4 {
            for t in 0..4 {
                let byte = g[at + 32 * l + 4 * j + t];
                q[8 * l + t] = byte & 0x0F;
                q[8 * l + 4 + t] = byte >> 4;
            }
        }
        q
    };
    if format == QuantFormat::Q6K {
        for (sub, out) in out.chunks_exact_mut(16).enumerate() {
            let scale = f32_at(0) * f32::from(g[4 + sub] as i8);
            for (k, o) in out.iter_mut().enumerate() {
                *o = scale * f32::from(q6_k_get(g, 16 * sub + k) as i8 - 32);
            }
        }
        return;
    }
    for (j, out) in out.chunks_exact_mut(ACT_BLOCK).enumerate() {
        match format {
            QuantFormat::Q8_0 => {
                let d = f16_at(256 + 2 * j);
                for (k, o) in out.iter_mut().enumerate() {
                    *o = f32::from(g[32 * (k / 4) + 4 * j + k % 4] as i8) * d;
                }
            }
            QuantFormat::Q4_1 => {
                let (d, m) = (f16_at(128 + 2 * j), f16_at(144 + 2 * j));
                for (o, q) in out.iter_mut().zip(nibbles(0, j)) {
                    *o = d * f32::from(q) + m;
                }
            }
            QuantFormat::Q4K => {
                // The reference's `d·sc·q − dmin·m`, bit for bit:
                // (−dmin)·m is −(dmin·m) exactly.
                let (scale, min) = (f32_at(0) * f32::from(g[8 + j]), f32_at(4) * f32::from(g[16 + j]));
                for (o, q) in out.iter_mut().zip(nibbles(24, j)) {
                    *o = scale * f32::from(q) + min;
                }
            }
            _ => {
                let d = f16_at(128 + 2 * j);
                for (o, q) in out.iter_mut().zip(nibbles(0, j)) {
                    *o = d * f32::from(q as i8 - 8);
                }
            }
        }
    }
}

/// Writes `x` (one activation row) as the kernel's activations at
/// `precision`, in the [`ActParts`] layouts: groups of 256 with the values
/// in [`lane_byte`] order, `dx[8]` and, for the 4-bit formats, `c·s[8]`
/// (`c = −8` for Q4_0's offset, 1 for the `m` terms); Q6_K per half of a
/// group its eight 16-element sub-blocks as the lanes, `−32·Σq[8]` (i32)
/// and `dx[8]`. Then tail records: Q4 formats' values in their nibble order
/// (block pair's elements 0–15 of both blocks, then 16–31 of both),
/// `[d0×4, d1×4]` `[c·s0/4 ×4, c·s1/4 ×4]`; Q8_0's in natural order and
/// `[d0, d0, d1, d1, d0, d0, d1, d1]`.
fn quantize_activations(format: QuantFormat, precision: ActivationPrecision, x: &[f32], out: &mut [u8]) {
    if is_float(format) {
        // f32 as is, zero padded to whole records.
        out.fill(0);
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let block = |b: usize| {
        let start = b * ACT_BLOCK;
        let end = (start + ACT_BLOCK).min(x.len());
        quantize_activation_block_at(if start < end { &x[start..end] } else { &[] }, precision)
    };
    let put_f32 = |rec: &mut [u8], at: i32, v: [f32; 8]| {
        for (i, v) in v.iter().enumerate() {
            let at = at as usize + 4 * i;
            rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    };
    // Element k of `b` at byte `at` of each digit's copy.
    let put_q = |out: &mut [u8], digit: i32, at: usize, b: &ActivationBlock, k: usize| match precision {
        ActivationPrecision::Int8 => out[at] = b.q[k] as i8 as u8,
        ActivationPrecision::Int16 => {
            let (hi, lo) = b.digits(k);
            out[at] = hi as u8;
            out[digit as usize + at] = lo as u8;
        }
    };
    let c = if format == QuantFormat::Q4_0 { -8.0 } else { 1.0 };
    let shape = RowShape::new(format, x.len());
    let gp = ActParts::group(format, precision);
    let (groups, tail) = out.split_at_mut(shape.groups * act_group_bytes(format, precision));
    for (g, out) in groups.chunks_exact_mut(act_group_bytes(format, precision)).enumerate() {
        let blocks: [_; GROUP_BLOCKS] = std::array::from_fn(|j| block(GROUP_BLOCKS * g + j));
        if format == QuantFormat::Q6K {
            for (half, out) in out.chunks_exact_mut(gp.bytes).enumerate() {
                for j in 0..8 {
                    let sub = 8 * half + j;
                    let (b, first) = (&blocks[sub / 2], 16 * (sub % 2));
                    for k in 0..16 {
                        put_q(out, gp.digit, 32 * (k / 4) + 4 * j + k % 4, b, first + k);
                    }
                    let sum: i32 = b.q[first..first + 16].iter().map(|&v| i32::from(v)).sum();
                    let at = gp.extra as usize + 4 * j;
                    out[at..at + 4].copy_from_slice(&(-32 * sum).to_le_bytes());
                    let at = gp.dx as usize + 4 * j;
                    out[at..at + 4].copy_from_slice(&b.d.to_le_bytes());
                }
            }
            continue;
        }
        for (j, b) in blocks.iter().enumerate() {
            if precision == ActivationPrecision::Int8 {
                // `lane_byte` four bytes at a time: vector v, lane j.
                for (v, q) in b.q.chunks_exact(4).enumerate() {
                    let lane = &mut out[32 * v + 4 * j..32 * v + 4 * j + 4];
                    lane.iter_mut().zip(q).for_each(|(o, &q)| *o = q as i8 as u8);
                }
                continue;
            }
            for k in 0..ACT_BLOCK {
                put_q(out, gp.digit, lane_byte(j, k), b, k);
            }
        }
        put_f32(out, gp.dx, std::array::from_fn(|j| blocks[j].d));
        if format != QuantFormat::Q8_0 {
            put_f32(out, gp.extra, std::array::from_fn(|j| c * blocks[j].s));
        }
    }
    let rp = ActParts::record(format, precision);
    let first = shape.groups * GROUP_BLOCKS;
    for (p, rec) in tail.chunks_exact_mut(rp.bytes.max(1)).enumerate() {
        let (b0, b1) = (block(first + 2 * p), block(first + 2 * p + 1));
        if format == QuantFormat::Q8_0 {
            for k in 0..ACT_BLOCK {
                put_q(rec, rp.digit, k, &b0, k);
                put_q(rec, rp.digit, 32 + k, &b1, k);
            }
            let (a, b) = (b0.d, b1.d);
            put_f32(rec, rp.dx, [a, a, b, b, a, a, b, b]);
            continue;
        }
        // The 4-bit formats' nibble order: both blocks' elements 0–15, then
        // both blocks' 16–31.
        for j in 0..16 {
            put_q(rec, rp.digit, j, &b0, j);
            put_q(rec, rp.digit, 16 + j, &b1, j);
            put_q(rec, rp.digit, 32 + j, &b0, 16 + j);
            put_q(rec, rp.digit, 48 + j, &b1, 16 + j);
        }
        let (a, b) = (b0.d, b1.d);
        put_f32(rec, rp.dx, [a, a, a, a, b, b, b, b]);
        let (a, b) = (c / 4.0 * b0.s, c / 4.0 * b1.s);
        put_f32(rec, rp.extra, [a, a, a, a, b, b, b, b]);
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
};

/// A compiled kernel, or why it could not be (kept, so the failure is not
/// retried on every call).
type KernelSlot = Result<ExecutableCode, Arc<CodegenError>>;

/// One format's kernels at one activation precision, compiled on first
/// use for each (W, R).
struct KernelSet {
    format: QuantFormat,
    precision: ActivationPrecision,
    slots: [[OnceLock<KernelSlot>; MAX_ACT_ROWS]; 4],
}

impl KernelSet {
    fn get(&self, w: usize, r: usize) -> Result<QuantGemvFn, CodegenError> {
        let code = self.slots[w - 1][r - 1].get_or_init(|| {
            let bytes = generate(self.format, self.precision, w, r).map_err(Arc::new)?;
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

/// The ISA the stored-format kernels are encoded for. They are AVX2 code
/// whichever ISA the rest of a plan uses (an AVX-512 host runs them too;
/// VNNI `vpdpbusd` versions would be a second set behind the ISA seam).
pub const KERNEL_ISA: Isa = Isa::Avx2;

fn kernel_set(
    format: QuantFormat,
    precision: ActivationPrecision,
) -> Result<&'static KernelSet, CodegenError> {
    static SETS: [OnceLock<KernelSet>; 14] = [const { OnceLock::new() }; 14];
    let i = QuantFormat::ALL.iter().position(|&f| f == format).expect("every format is in ALL");
    let precision = kernel_precision(format, precision);
    let i = 2 * i + usize::from(precision == ActivationPrecision::Int16);
    if !host_has_avx2() {
        return Err(CodegenError::IsaNotOnHost { isa: KERNEL_ISA });
    }
    Ok(SETS[i].get_or_init(|| KernelSet { format, precision, slots: Default::default() }))
}

fn host_has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c")
}

const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
const XMM: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// What a kernel is generated for, and its registers: two constants,
/// temporaries, then per digit and activation row an integer sum (groups),
/// and the W·R f32 accumulators at the top.
struct Regs {
    format: QuantFormat,
    precision: ActivationPrecision,
    /// The activation rows' cursors (the first `r`).
    xp: [AsmRegister64; MAX_ACT_ROWS],
    w: usize,
    r: usize,
    /// Integer digits per activation (2 for `Int16`).
    digits: usize,
}

impl Regs {
    const MASK: AsmRegisterYmm = ymm0;
    const ONES: AsmRegisterYmm = ymm1;
    /// Group temporaries.
    const LO: AsmRegisterYmm = ymm2;
    const HI: AsmRegisterYmm = ymm3;
    const T: AsmRegisterYmm = ymm4;
    const T2: AsmRegisterYmm = ymm5;
    const HB: AsmRegisterYmm = ymm6;

    /// The integer sums of digit `d` of activation row `x` over one group.
    fn sum(&self, d: usize, x: usize) -> AsmRegisterYmm {
        YMM[7 + d * self.r + x]
    }

    /// The f32 accumulator of weight row `i` × activation row `x`.
    fn acc(&self, i: usize, x: usize) -> AsmRegisterYmm {
        YMM[self.acc_index(i, x)]
    }

    fn acc_index(&self, i: usize, x: usize) -> usize {
        16 - self.w * self.r + i * self.r + x
    }

    /// Widens the i16 sums of digit `d` of row `x` to i32 (`vpmaddwd` by 1).
    fn widen(&self, a: &mut CodeAssembler, d: usize, x: usize) -> Result<(), IcedError> {
        a.vpmaddwd(self.sum(d, x), self.sum(d, x), Regs::ONES)
    }

    /// Folds row `x`'s i32 digit sums into `sum(0, x)`: `255·hi + lo`.
    fn combine(&self, a: &mut CodeAssembler, x: usize) -> Result<(), IcedError> {
        combine_digits(a, self.digits, self.sum(0, x), self.sum(1, x), Regs::T)
    }
}

/// `acc += f32(sum) · (scale · x_scale)`: an integer dot product per lane,
/// scaled by the weight's and the activation's scales (`sum` is converted
/// in place; `t` is scratch).
fn accumulate_scaled(
    a: &mut CodeAssembler,
    acc: AsmRegisterYmm,
    sum: AsmRegisterYmm,
    scale: AsmRegisterYmm,
    x_scale: AsmMemoryOperand,
    t: AsmRegisterYmm,
) -> Result<(), IcedError> {
    a.vcvtdq2ps(sum, sum)?;
    a.vmulps(t, scale, x_scale)?;
    a.vfmadd231ps(acc, sum, t)
}

/// `hi ← 255·hi + lo` in i32 lanes (exact), using `t`; nothing for one digit.
fn combine_digits(
    a: &mut CodeAssembler,
    digits: usize,
    hi: AsmRegisterYmm,
    lo: AsmRegisterYmm,
    t: AsmRegisterYmm,
) -> Result<(), IcedError> {
    if digits == 2 {
        a.vpslld(t, hi, 8)?;
        a.vpsubd(hi, t, hi)?;
        a.vpaddd(hi, hi, lo)?;
    }
    Ok(())
}

/// One group (256 weights) of weight row `wr` against the activation rows,
/// accumulated into `acc(i, ·)`.
///
/// The 4-bit formats unpack each 32-byte load into two vectors of codes and
/// sum all eight `vpmaddubsw` products per activation row and digit in i16
/// (at most 8·2·15·127 = 30 480), so one `vpmaddwd` leaves each block's
/// integer dot product in its own i32 lane: the scales are applied once per
/// group, as 8-lane vectors. Q8_0 (products up to 2·128·127) widens every
/// vector with `vpmaddwd`; Q6_K (2·63·127) every two, per half of 128
/// weights whose eight 16-element sub-blocks are the lanes.
fn emit_group_row(a: &mut CodeAssembler, regs: &Regs, i: usize, wr: AsmRegister64) -> Result<(), IcedError> {
    let (format, precision, xp) = (regs.format, regs.precision, &regs.xp[..regs.r]);
    let (lo, hi, t, t2, hb) = (Regs::LO, Regs::HI, Regs::T, Regs::T2, Regs::HB);
    let (mask, ones) = (Regs::MASK, Regs::ONES);
    let parts = ActParts::group(format, precision);
    let digits = regs.digits;
    match format {
        QuantFormat::Q8_0 => {
            for v in 0..8 {
                a.vpabsb(lo, ymmword_ptr(wr + 32 * v))?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        // |w| (unsigned) × x·sign(w) (signed).
                        let at = d as i32 * parts.digit + 32 * v;
                        a.vmovdqu(t, ymmword_ptr(xr + at))?;
                        a.vpsignb(t, t, ymmword_ptr(wr + 32 * v))?;
                        a.vpmaddubsw(t, lo, t)?;
                        if v == 0 {
                            a.vpmaddwd(regs.sum(d, x), t, ones)?;
                        } else {
                            a.vpmaddwd(t, t, ones)?;
                            a.vpaddd(regs.sum(d, x), regs.sum(d, x), t)?;
                        }
                    }
                }
            }
            a.vcvtph2ps(lo, xmmword_ptr(wr + 256))?;
            for (x, &xr) in xp.iter().enumerate() {
                regs.combine(a, x)?;
                accumulate_scaled(a, regs.acc(i, x), regs.sum(0, x), lo, ymmword_ptr(xr + parts.dx), t)?;
            }
        }
        QuantFormat::Q6K => {
            for half in 0..2i32 {
                let base = half * parts.bytes as i32;
                let xyz = 20 + 96 * half;
                // Vectors 0 and 1 from X and Y; vector 3's code collects
                // in `hb` from bits 6–7 of X, Y and Z (see `q6_k_at`).
                a.vmovdqu(lo, ymmword_ptr(wr + xyz))?;
                a.vpsrlw(hb, lo, 6)?;
                a.vpand(hb, hb, ymmword_ptr(rax + C_Q6K_FROM_X))?;
                a.vpand(lo, lo, ymmword_ptr(rax + C_Q6K_CODE))?;
                a.vmovdqu(hi, ymmword_ptr(wr + xyz + 32))?;
                a.vpsrlw(t, hi, 4)?;
                a.vpand(t, t, ymmword_ptr(rax + C_Q6K_FROM_Y))?;
                a.vpor(hb, hb, t)?;
                a.vpand(hi, hi, ymmword_ptr(rax + C_Q6K_CODE))?;
                for p in 0..2i32 {
                    if p == 1 {
                        // Vector 2 from Z, and the last two bits of vector 3.
                        a.vmovdqu(lo, ymmword_ptr(wr + xyz + 64))?;
                        a.vpsrlw(t, lo, 2)?;
                        a.vpand(t, t, ymmword_ptr(rax + C_Q6K_FROM_Z))?;
                        a.vpor(hi, hb, t)?;
                        a.vpand(lo, lo, ymmword_ptr(rax + C_Q6K_CODE))?;
                    }
                    for (x, &xr) in xp.iter().enumerate() {
                        for d in 0..digits {
                            let at = base + d as i32 * parts.digit + 64 * p;
                            a.vpmaddubsw(t, lo, ymmword_ptr(xr + at))?;
                            a.vpmaddubsw(t2, hi, ymmword_ptr(xr + at + 32))?;
                            a.vpaddw(t, t, t2)?;
                            if p == 0 {
                                a.vpmaddwd(regs.sum(d, x), t, ones)?;
                            } else {
                                a.vpmaddwd(t, t, ones)?;
                                a.vpaddd(regs.sum(d, x), regs.sum(d, x), t)?;
                            }
                        }
                    }
                }
                // d·sc per sub-block, exact in f32.
                a.vpmovsxbd(lo, qword_ptr(wr + 4 + 8 * half))?;
                a.vcvtdq2ps(lo, lo)?;
                a.vbroadcastss(t, dword_ptr(wr))?;
                a.vmulps(lo, lo, t)?;
                for (x, &xr) in xp.iter().enumerate() {
                    // Σ code·q − 32·Σq per sub-block, exact in i32.
                    regs.combine(a, x)?;
                    a.vpaddd(regs.sum(0, x), regs.sum(0, x), ymmword_ptr(xr + base + parts.extra))?;
                    accumulate_scaled(
                        a,
                        regs.acc(i, x),
                        regs.sum(0, x),
                        lo,
                        ymmword_ptr(xr + base + parts.dx),
                        t,
                    )?;
                }
            }
        }
        _ => {
            let codes = if format == QuantFormat::Q4K { 24 } else { 0 };
            for l in 0..4i32 {
                a.vmovdqu(lo, ymmword_ptr(wr + codes + 32 * l))?;
                a.vpsrlw(hi, lo, 4)?;
                a.vpand(lo, lo, mask)?;
                a.vpand(hi, hi, mask)?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        let (sum, at) = (regs.sum(d, x), d as i32 * parts.digit + 64 * l);
                        if l == 0 {
                            a.vpmaddubsw(sum, lo, ymmword_ptr(xr + at))?;
                        } else {
                            a.vpmaddubsw(t, lo, ymmword_ptr(xr + at))?;
                            a.vpaddw(sum, sum, t)?;
                        }
                        a.vpmaddubsw(t, hi, ymmword_ptr(xr + at + 32))?;
                        a.vpaddw(sum, sum, t)?;
                    }
                }
            }
            // `lo` ← the weight scale per block, `hi` ← what multiplies
            // the activation's c·s: m (Q4_1), −dmin·m (Q4_K), d (Q4_0).
            let offset = match format {
                QuantFormat::Q4K => {
                    // d·sc and (−dmin)·m, exact in f32.
                    for (reg, at) in [(lo, 8), (hi, 16)] {
                        a.vpmovzxbd(reg, qword_ptr(wr + at))?;
                        a.vcvtdq2ps(reg, reg)?;
                        a.vbroadcastss(t, dword_ptr(wr + (at - 8) / 2))?;
                        a.vmulps(reg, reg, t)?;
                    }
                    hi
                }
                QuantFormat::Q4_1 => {
                    a.vcvtph2ps(lo, xmmword_ptr(wr + 128))?;
                    a.vcvtph2ps(hi, xmmword_ptr(wr + 144))?;
                    hi
                }
                _ => {
                    a.vcvtph2ps(lo, xmmword_ptr(wr + 128))?;
                    lo
                }
            };
            for (x, &xr) in xp.iter().enumerate() {
                for d in 0..digits {
                    regs.widen(a, d, x)?;
                }
                regs.combine(a, x)?;
                accumulate_scaled(a, regs.acc(i, x), regs.sum(0, x), lo, ymmword_ptr(xr + parts.dx), t)?;
                a.vfmadd231ps(regs.acc(i, x), offset, ymmword_ptr(xr + parts.extra))?;
            }
        }
    }
    Ok(())
}

/// One tail record (a block pair, or 8 F16/BF16 weights) of weight row `wr`
/// against the activation rows. Registers: ymm0–3 constants, ymm4–9
/// temporaries (and ymm10–11 for `Int16`).
fn emit_record_row(a: &mut CodeAssembler, regs: &Regs, i: usize, wr: AsmRegister64) -> Result<(), IcedError> {
    let (format, precision, xp) = (regs.format, regs.precision, &regs.xp[..regs.r]);
    let (t0, t1) = (YMM[8], YMM[9]);
    // Each digit's sums: the first in t0 (t1 its second half), the second
    // in ymm10 (ymm11).
    let dsum = [(t0, t1), (YMM[10], YMM[11])];
    let (mask, ones, idx_d, idx_m) = (YMM[0], YMM[1], YMM[2], YMM[3]);
    let parts = ActParts::record(format, precision);
    let digits = regs.digits;
    if is_float(format) {
        let wv = YMM[4];
        if format == QuantFormat::F16 {
            a.vcvtph2ps(wv, xmmword_ptr(wr))?;
        } else {
            // bf16 is the upper half of an f32.
            a.vpmovzxwd(wv, xmmword_ptr(wr))?;
            a.vpslld(wv, wv, 16)?;
        }
        for (x, &xr) in xp.iter().enumerate() {
            a.vfmadd231ps(regs.acc(i, x), wv, ymmword_ptr(xr))?;
        }
    } else if format == QuantFormat::Q8_0 {
        let (w0, w1, a0, a1) = (YMM[4], YMM[5], YMM[6], YMM[7]);
        let d = YMM[2];
        a.vmovdqu(w0, ymmword_ptr(wr))?;
        a.vmovdqu(w1, ymmword_ptr(wr + 32))?;
        a.vpabsb(a0, w0)?;
        a.vpabsb(a1, w1)?;
        a.vcvtph2ps(XMM[2], qword_ptr(wr + 64))?;
        a.vpermps(d, idx_m, d)?; // idx_q8 lives in ymm3
        for (x, &xr) in xp.iter().enumerate() {
            for (dg, &(s0, s1)) in dsum.iter().enumerate().take(digits) {
                let at = dg as i32 * parts.digit;
                a.vmovdqu(s0, ymmword_ptr(xr + at))?;
                a.vpsignb(s0, s0, w0)?;
                a.vpmaddubsw(s0, a0, s0)?;
                a.vpmaddwd(s0, s0, ones)?;
                a.vmovdqu(s1, ymmword_ptr(xr + at + 32))?;
                a.vpsignb(s1, s1, w1)?;
                a.vpmaddubsw(s1, a1, s1)?;
                a.vpmaddwd(s1, s1, ones)?;
                a.vphaddd(s0, s0, s1)?;
            }
            combine_digits(a, digits, t0, dsum[1].0, t1)?;
            accumulate_scaled(a, regs.acc(i, x), t0, d, ymmword_ptr(xr + parts.dx), t1)?;
        }
    } else {
        let (lo, hi, d, m) = (YMM[4], YMM[5], YMM[6], YMM[7]);
        a.vmovdqu(lo, ymmword_ptr(wr))?;
        a.vpsrlw(hi, lo, 4)?;
        a.vpand(lo, lo, mask)?;
        a.vpand(hi, hi, mask)?;
        a.vcvtph2ps(XMM[6], qword_ptr(wr + 32))?;
        let m = if format == QuantFormat::Q4_1 {
            a.vpermps(m, idx_m, d)?;
            m
        } else {
            d
        };
        a.vpermps(d, idx_d, d)?;
        for (x, &xr) in xp.iter().enumerate() {
            for (dg, &(s0, s1)) in dsum.iter().enumerate().take(digits) {
                let at = dg as i32 * parts.digit;
                a.vpmaddubsw(s0, lo, ymmword_ptr(xr + at))?;
                a.vpmaddubsw(s1, hi, ymmword_ptr(xr + at + 32))?;
                a.vpaddw(s0, s0, s1)?;
                a.vpmaddwd(s0, s0, ones)?;
            }
            combine_digits(a, digits, t0, dsum[1].0, t1)?;
            accumulate_scaled(a, regs.acc(i, x), t0, d, ymmword_ptr(xr + parts.dx), t1)?;
            a.vfmadd231ps(regs.acc(i, x), m, ymmword_ptr(xr + parts.extra))?;
        }
    }
    Ok(())
}

/// Generates the kernel for `w` weight rows × `r` activation rows: a loop
/// over the rows' groups, then one over their tail records, then one
/// horizontal sum per output.
fn generate(
    format: QuantFormat,
    precision: ActivationPrecision,
    w: usize,
    r: usize,
) -> Result<Vec<u8>, CodegenError> {
    let digits = if is_float(format) { 1 } else { digits(precision) };
    let regs = Regs { format, precision, xp: [rsi, r12, r13, r14], w, r, digits };
    // Group sums below the accumulators; Int16 tail records use ymm10–11.
    let first_acc = 16 - w * r;
    assert!((1..=4).contains(&w) && (1..=MAX_ACT_ROWS).contains(&r) && w * r <= 6);
    assert!(7 + digits * r <= first_acc && (digits == 1 || first_acc >= 12));
    let mut a = CodeAssembler::new(64)?;
    let wp = [r10, r11, rbx, r15];
    let (wp, xp) = (&wp[..w], &regs.xp[..r]);
    for reg in [rbx, r12, r13, r14, r15] {
        a.push(reg)?;
    }
    // The calls' cursors on the stack: [rsp] rows, [rsp + 8] outputs,
    // [rsp + 16] calls left.
    a.sub(rsp, 24)?;
    a.mov(rax, qword_ptr(rdi))?;
    a.mov(qword_ptr(rsp), rax)?;
    a.mov(rax, qword_ptr(rdi + 16))?;
    a.mov(qword_ptr(rsp + 8), rax)?;
    a.mov(rax, qword_ptr(rdi + 88))?;
    a.mov(qword_ptr(rsp + 16), rax)?;
    let mut next_call = a.create_label();
    a.set_label(&mut next_call)?;
    a.mov(r10, qword_ptr(rsp))?;
    a.mov(rsi, qword_ptr(rdi + 8))?;
    a.mov(rcx, qword_ptr(rdi + 24))?;
    a.mov(r8, qword_ptr(rdi + 32))?;
    a.mov(r9, qword_ptr(rdi + 40))?;
    a.mov(rax, qword_ptr(rdi + 56))?;
    for i in 1..w {
        a.lea(wp[i], qword_ptr(wp[i - 1] + r8))?;
    }
    for i in 1..r {
        a.lea(xp[i], qword_ptr(xp[i - 1] + r9))?;
    }
    if !is_float(format) {
        a.vmovdqa(Regs::MASK, ymmword_ptr(rax + C_MASK))?;
        a.vmovdqa(Regs::ONES, ymmword_ptr(rax + C_ONES))?;
    }
    for i in 0..w {
        for x in 0..r {
            a.vxorps(regs.acc(i, x), regs.acc(i, x), regs.acc(i, x))?;
        }
    }
    let mut loops: Vec<(i32, i32, bool)> = Vec::new();
    if group_bytes(format) > 0 {
        loops.push((group_bytes(format) as i32, act_group_bytes(format, precision) as i32, true));
    }
    if record_bytes(format) > 0 {
        loops.push((record_bytes(format) as i32, ActParts::record(format, precision).bytes as i32, false));
    }
    for (step, xstep, groups) in loops {
        let mut body = a.create_label();
        let mut done = a.create_label();
        if !groups {
            a.mov(rcx, qword_ptr(rdi + 64))?;
            if format == QuantFormat::Q8_0 {
                a.vmovdqa(YMM[3], ymmword_ptr(rax + C_IDX_Q8))?;
            } else if !is_float(format) {
                a.vmovdqa(YMM[2], ymmword_ptr(rax + C_IDX_D))?;
                a.vmovdqa(YMM[3], ymmword_ptr(rax + C_IDX_M))?;
            }
        }
        a.test(rcx, rcx)?;
        a.jz(done)?;
        a.set_label(&mut body)?;
        for &wr in wp {
            for line in (0..step).step_by(64) {
                a.prefetcht0(byte_ptr(wr + PREFETCH_AHEAD + line))?;
            }
        }
        for (i, &wr) in wp.iter().enumerate() {
            if groups {
                emit_group_row(&mut a, &regs, i, wr)?;
            } else {
                emit_record_row(&mut a, &regs, i, wr)?;
            }
        }
        for &wr in wp {
            a.add(wr, step)?;
        }
        for &xr in xp {
            a.add(xr, xstep)?;
        }
        a.dec(rcx)?;
        a.jnz(body)?;
        a.set_label(&mut done)?;
    }
    a.mov(rdx, qword_ptr(rsp + 8))?;
    a.mov(r8, qword_ptr(rdi + 48))?;
    a.mov(r9, qword_ptr(rdi + 72))?;
    for x in 0..r {
        a.mov(r11, rdx)?;
        for i in 0..w {
            let (v, xv) = (regs.acc(i, x), XMM[regs.acc_index(i, x)]);
            a.vextractf128(XMM[8], v, 1)?;
            a.vaddps(xv, xv, XMM[8])?;
            a.vhaddps(xv, xv, xv)?;
            a.vhaddps(xv, xv, xv)?;
            a.vmovss(dword_ptr(r11), xv)?;
            a.add(r11, r9)?;
        }
        a.add(rdx, r8)?;
    }
    a.mov(rax, qword_ptr(rdi + 80))?;
    a.add(qword_ptr(rsp), rax)?;
    a.add(qword_ptr(rsp + 8), 4)?;
    a.dec(qword_ptr(rsp + 16))?;
    a.jnz(next_call)?;
    a.add(rsp, 24)?;
    for reg in [r15, r14, r13, r12, rbx] {
        a.pop(reg)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(a.assemble(0)?)
}
