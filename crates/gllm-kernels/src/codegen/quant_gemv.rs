//! Matrix products with block-quantised weights read in their stored
//! format: a JIT GEMV for decode (one to a few activation rows) and a
//! dequantising packer that feeds the f32 GEMM for prompt processing.
//!
//! ```text
//!  QuantMatrix ──pack──► QuantPanels (pairs of blocks per record, per row)
//!  x (f32) ──quantise per 32──► activation records (int8 + scales)
//!  kernel(W weight rows × R activation rows): integer dot per block pair,
//!          scaled and accumulated in f32, one horizontal sum per output
//! ```
//!
//! **Why the integer path.** Decode reads every weight once per token, so
//! the kernel must keep up with memory while spending as few instructions
//! per byte as possible. Converting 4-bit codes to f32 costs ~4 vector
//! instructions per 8 weights; multiplying them as bytes with `vpmaddubsw`
//! against an int8 copy of the activations (quantised per 32, as llama.cpp
//! does) costs ~8 per 64 weights. The price is the activation rounding,
//! bounded by [`crate::quant::activation_quantisation_bound`].
//!
//! **Layout.** Two consecutive blocks of a row form one record so that one
//! 32-byte load brings both blocks' codes and one `vcvtph2ps` both scales:
//! Q4_0 `qs0[16] qs1[16] d0 d1` (36 bytes), Q4_1 the same plus `m0 m1`
//! (40), Q8_0 `qs0[32] qs1[32] d0 d1` (68) — the same bytes as the file,
//! reordered. A row with an odd block count gets a zero block. Q4_K runs
//! through the Q4_1 kernel's arithmetic: each super-block of 256 becomes
//! `f32 d | f32 −dmin` and four 36-byte records (a sub-block pair's codes,
//! re-nibbled to Q4_1's order, then the 6-bit `sc_a m_a sc_b m_b` unpacked
//! to bytes): 152 bytes for the file's 144, and the per-sub-block scales
//! `d·sc` and `−dmin·m` are formed exactly in f32 inside the kernel.
//! Q6_K likewise: `f32 d`, then per 64 weights the low nibbles in Q4_1's
//! order, their 2-bit highs packed four to a byte so that two variable
//! shifts of one broadcast put them in place, and the four `i8` scales of
//! its 16-weight sub-blocks (212 bytes per 256 for the file's 210); the
//! `−32` offset is subtracted in the integer sums (the activation records
//! carry `−32·Σq` per sub-block).
//!
//! **F16 and BF16** take the float path instead: records of 8 weights
//! (`vcvtph2ps`, or a zero-extend and shift for BF16) against f32
//! activations padded to a multiple of 8, one FMA per 8 weights: exact
//! products, 2 bytes per weight read, no activation rounding.
//!
//! **ISA.** The kernels use AVX2 encodings (256-bit integer multiply-adds),
//! which AVX-512 machines also run; a VNNI (`vpdpbusd`) variant is the next
//! step there.

use super::gemm::{GemmKernel, PackedB};
use super::{check_length, Buffer, CodegenError};
use crate::device::Isa;
use crate::fusion::parallel::for_quantised_gemv;
use crate::quant::{quantize_activation_block, QuantFormat, QuantMatrix, ACT_BLOCK};
use crate::runtime::dispatch::for_each_part;
use crate::runtime::ExecutableCode;
use iced_x86::code_asm::*;
use std::sync::OnceLock;

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
    /// Block pairs per row (an odd block count is padded with a zero block).
    pairs: usize,
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

/// Bytes of one block-pair record of weights.
fn record_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_0 | QuantFormat::Q4K => 36,
        QuantFormat::Q4_1 => 40,
        QuantFormat::Q6K => 52,
        QuantFormat::Q8_0 => 68,
        QuantFormat::F16 | QuantFormat::Bf16 => 16,
    }
}

/// Whether `format` runs the float path (f32 activations).
fn is_float(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::F16 | QuantFormat::Bf16)
}

/// Elements of one record.
fn record_elems(format: QuantFormat) -> usize {
    if is_float(format) {
        8
    } else {
        2 * ACT_BLOCK
    }
}

/// Block-pair records per kernel loop step: a K-quant super-block's four
/// share one header.
fn records_per_step(format: QuantFormat) -> usize {
    if matches!(format, QuantFormat::Q4K | QuantFormat::Q6K) {
        4
    } else {
        1
    }
}

/// Bytes before a step's records: Q4_K's `f32 d | f32 −dmin`, Q6_K's `f32 d`.
fn step_header(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4K => 8,
        QuantFormat::Q6K => 4,
        _ => 0,
    }
}

/// Bytes of one kernel loop step of a weight row.
fn step_bytes(format: QuantFormat) -> usize {
    step_header(format) + records_per_step(format) * record_bytes(format)
}

/// Bytes of one block-pair record of quantised activations.
fn act_record_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8_0 => 96,
        QuantFormat::Q6K => 160,
        QuantFormat::F16 | QuantFormat::Bf16 => 32,
        _ => 128,
    }
}

impl QuantPanels {
    /// Reorders `m` into the kernel's records (parallel over rows).
    pub fn pack(m: &QuantMatrix) -> Result<QuantPanels, CodegenError> {
        let format = m.format();
        if !format.has_kernel() {
            return Err(CodegenError::Unsupported(format!("a GEMV kernel for {format} weights")));
        }
        let pairs = m.cols().div_ceil(record_elems(format));
        let rec = record_bytes(format);
        let row_bytes = pairs / records_per_step(format) * step_bytes(format);
        let mut data = vec![0u8; m.rows() * row_bytes + TAIL_PAD];
        let bb = format.block_bytes();
        let (head, codes) = match format {
            QuantFormat::Q4_1 => (4, 16),
            QuantFormat::Q4_0 => (2, 16),
            _ => (2, 32),
        };
        let base = data.as_mut_ptr() as usize;
        let parts = rayon::current_num_threads().min(m.rows().max(1));
        let per = m.rows().div_ceil(parts.max(1));
        let fill = |part: usize| -> Result<(), CodegenError> {
            for r in part * per..((part + 1) * per).min(m.rows()) {
                // SAFETY: rows own disjoint `row_bytes` ranges of `data`.
                let out =
                    unsafe { std::slice::from_raw_parts_mut((base + r * row_bytes) as *mut u8, row_bytes) };
                if is_float(format) {
                    out[..m.row(r).len()].copy_from_slice(m.row(r));
                    continue;
                }
                if records_per_step(format) > 1 {
                    for (block, out) in
                        m.row(r).chunks_exact(bb).zip(out.chunks_exact_mut(step_bytes(format)))
                    {
                        if format == QuantFormat::Q4K {
                            pack_q4_k(block, out);
                        } else {
                            pack_q6_k(block, out);
                        }
                    }
                    continue;
                }
                for (b, block) in m.row(r).chunks_exact(bb).enumerate() {
                    let (p, half) = (b / 2, b % 2);
                    let rec = &mut out[p * rec..(p + 1) * rec];
                    rec[half * codes..(half + 1) * codes].copy_from_slice(&block[head..head + codes]);
                    let scales = 2 * codes;
                    rec[scales + 2 * half..scales + 2 * half + 2].copy_from_slice(&block[..2]);
                    if format == QuantFormat::Q4_1 {
                        rec[scales + 4 + 2 * half..scales + 6 + 2 * half].copy_from_slice(&block[2..4]);
                    }
                }
            }
            Ok(())
        };
        for_each_part(parts, fill)?;
        Ok(QuantPanels { format, rows: m.rows(), cols: m.cols(), pairs, data, prefill: OnceLock::new() })
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
        self.steps() * step_bytes(self.format)
    }

    /// Kernel loop steps per row.
    fn steps(&self) -> usize {
        self.pairs / records_per_step(self.format)
    }

    /// Rows `r0..r0 + count` dequantised to f32, `cols` apart, into `out`:
    /// the same values as [`crate::quant::dequantize_row`] on the stored
    /// rows (same f32 operations), read from the records.
    pub fn dequantize_rows(&self, r0: usize, count: usize, out: &mut [f32]) {
        let (rec, row_bytes) = (record_bytes(self.format), self.row_bytes());
        let f16_at = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        for (i, out) in out.chunks_exact_mut(self.cols.max(1)).take(count).enumerate() {
            let row = &self.data[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
            if is_float(self.format) {
                // The stored row itself (zero padded after `cols`).
                crate::quant::dequantize_row(self.format, &row[..2 * self.cols], out);
                continue;
            }
            for (b, dst) in out.chunks_exact_mut(ACT_BLOCK).enumerate() {
                let (p, h) = (b / 2, b % 2);
                if self.format == QuantFormat::Q6K {
                    let step = &row[b / 8 * step_bytes(self.format)..];
                    let d = f32::from_le_bytes([step[0], step[1], step[2], step[3]]);
                    let rec = &step[step_header(self.format) + (p % 4) * rec..];
                    // Block h of the pair: elements j and j + 16 in byte
                    // 16h + j's nibbles; their high bits in byte j of the
                    // 16 at 32 (bits 2h.. and 4 + 2h..); scales at 48.
                    let (sc_lo, sc_hi) = (rec[48 + 2 * h] as i8, rec[49 + 2 * h] as i8);
                    let (s_lo, s_hi) = (d * f32::from(sc_lo), d * f32::from(sc_hi));
                    let (lo, hi) = dst.split_at_mut(16);
                    for (j, (l, u)) in lo.iter_mut().zip(hi).enumerate() {
                        let (q, hb) = (rec[16 * h + j], rec[32 + j]);
                        let ql = (q & 0x0F) | (((hb >> (2 * h)) & 3) << 4);
                        let qu = (q >> 4) | (((hb >> (4 + 2 * h)) & 3) << 4);
                        *l = s_lo * f32::from(ql as i8 - 32);
                        *u = s_hi * f32::from(qu as i8 - 32);
                    }
                    continue;
                }
                if self.format == QuantFormat::Q4K {
                    let step = &row[b / 8 * step_bytes(self.format)..];
                    let f32_at =
                        |i: usize| f32::from_le_bytes([step[i], step[i + 1], step[i + 2], step[i + 3]]);
                    let (d, neg_dmin) = (f32_at(0), f32_at(4));
                    let rec = &step[step_header(self.format) + (p % 4) * rec..];
                    let (sc, m) = (rec[32 + 2 * h], rec[33 + 2 * h]);
                    // The reference's `d·sc·q − dmin·m`, bit for bit:
                    // (−dmin)·m is −(dmin·m) exactly.
                    let (scale, min) = (d * f32::from(sc), neg_dmin * f32::from(m));
                    let (lo, hi) = dst.split_at_mut(16);
                    for ((l, u), &q) in lo.iter_mut().zip(hi).zip(&rec[16 * h..16 * h + 16]) {
                        *l = scale * f32::from(q & 0x0F) + min;
                        *u = scale * f32::from(q >> 4) + min;
                    }
                    continue;
                }
                let rec = &row[p * rec..(p + 1) * rec];
                match self.format {
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
    /// `threads` threads.
    pub fn gemv(&self, x: &[f32], m: usize, y: &mut [f32], threads: usize) -> Result<(), CodegenError> {
        let acts = self.quantize(x, m)?;
        self.gemv_quantized(&acts, y, threads)
    }

    /// `x` (`m` rows of `cols`) as this matrix's kernels read activations;
    /// one result serves every matrix of the same format and `cols` (e.g.
    /// the Q, K and V projections of one input).
    pub fn quantize(&self, x: &[f32], m: usize) -> Result<QuantActivations, CodegenError> {
        check_length(Buffer::X, x.len(), m * self.cols)?;
        let x_stride = self.pairs * act_record_bytes(self.format);
        let mut data = vec![0u8; m * x_stride];
        for (xr, out) in x.chunks_exact(self.cols.max(1)).zip(data.chunks_exact_mut(x_stride.max(1))) {
            quantize_activations(self.format, xr, out);
        }
        Ok(QuantActivations { format: self.format, cols: self.cols, m, x_stride, data })
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
        if (acts.format, acts.cols) != (self.format, self.cols) {
            return Err(CodegenError::BadArguments(format!(
                "activations quantised for {} rows of {} reach a {} matrix with rows of {}",
                acts.format, acts.cols, self.format, self.cols
            )));
        }
        let (m, x_stride, acts) = (acts.m, acts.x_stride, &acts.data);
        check_length(Buffer::Y, y.len(), m * self.rows)?;
        if m == 0 || self.rows == 0 {
            return Ok(());
        }
        if self.cols == 0 {
            y.fill(0.0);
            return Ok(());
        }
        let set = kernel_set(self.format)?;
        let rows = self.rows;
        let threads = for_quantised_gemv(self.size_bytes(), threads).min(rows.div_ceil(4));
        let per = rows.div_ceil(threads).div_ceil(4) * 4;
        let y_addr = y.as_mut_ptr() as usize;
        let row_bytes = self.row_bytes();
        let work = |t: usize| -> Result<(), CodegenError> {
            let (i0, i1) = (t * per, ((t + 1) * per).min(rows));
            for r0 in (0..m).step_by(MAX_ACT_ROWS) {
                let r = MAX_ACT_ROWS.min(m - r0);
                let w_max = max_weight_rows(r);
                let mut i = i0;
                while i < i1 {
                    let w = w_max.min(i1 - i);
                    let f = set.get(w, r)?;
                    let args = KernelArgs {
                        w: self.data[i * row_bytes..].as_ptr(),
                        x: acts[r0 * x_stride..].as_ptr(),
                        y: (y_addr + (r0 * rows + i) * 4) as *mut f32,
                        steps: self.steps(),
                        w_stride: row_bytes,
                        x_stride,
                        y_stride: rows * 4,
                        consts: (&CONSTS as *const Consts).cast(),
                    };
                    // SAFETY: rows i..i+w of W are `row_bytes` apart with
                    // TAIL_PAD after the last; activation rows r0..r0+r are
                    // `x_stride` apart; y rows r0..r0+r, columns i..i+w lie
                    // in y (m × rows), and threads own disjoint columns.
                    unsafe { f(&args) };
                    i += w;
                }
            }
            Ok(())
        };
        for_each_part(threads, work)
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

/// Activation rows quantised per block of 32 in the kernels' record layout
/// for one weight format (see [`quantize_activations`]).
#[derive(Debug, Clone)]
pub struct QuantActivations {
    format: QuantFormat,
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

/// One Q4_K super-block as its kernel step: `f32 d | f32 −dmin`, then per
/// sub-block pair (2p, 2p + 1) the codes in Q4_1's nibble order (byte `j`:
/// element `j` low, `j + 16` high; sub-block 2p's 16 bytes, then 2p + 1's)
/// and the bytes `sc_2p m_2p sc_2p+1 m_2p+1`.
fn pack_q4_k(block: &[u8], out: &mut [u8]) {
    let f16_at = |i: usize| half::f16::from_le_bytes([block[i], block[i + 1]]).to_f32();
    out[..4].copy_from_slice(&f16_at(0).to_le_bytes());
    out[4..8].copy_from_slice(&(-f16_at(2)).to_le_bytes());
    let (scales, mins) = crate::quant::q4_k_scales_and_mins(&block[4..16]);
    for (p, codes) in block[16..144].chunks_exact(32).enumerate() {
        let rec = &mut out[8 + 36 * p..8 + 36 * (p + 1)];
        for j in 0..16 {
            // Sub-block 2p is the low nibbles of `codes`, 2p + 1 the high.
            rec[j] = (codes[j] & 0x0F) | (codes[j + 16] << 4);
            rec[16 + j] = (codes[j] >> 4) | (codes[j + 16] & 0xF0);
        }
        rec[32..36].copy_from_slice(&[scales[2 * p], mins[2 * p], scales[2 * p + 1], mins[2 * p + 1]]);
    }
}

/// One Q6_K super-block as its kernel step: `f32 d`, then per pair of
/// 32-element blocks (A, B) a 52-byte record: the low nibbles of the 6-bit
/// codes in Q4_1's order (A's 0–15 | 16–31 in bytes 0–15, B's in 16–31),
/// 16 bytes whose byte `j` holds the high 2 bits of A`j`, B`j`, A`j+16`,
/// B`j+16` (bits 0, 2, 4, 6), and the `i8` scales of the sub-blocks A 0–15,
/// A 16–31, B 0–15, B 16–31.
fn pack_q6_k(block: &[u8], out: &mut [u8]) {
    let scales = &block[192..208];
    let d = half::f16::from_le_bytes([block[208], block[209]]).to_f32();
    out[..4].copy_from_slice(&d.to_le_bytes());
    let code = |e: usize| crate::quant::q6_k_code(block, e);
    for p in 0..4 {
        let rec = &mut out[4 + 52 * p..4 + 52 * (p + 1)];
        let (a, b) = (64 * p, 64 * p + 32);
        for j in 0..16 {
            let (a0, a1, b0, b1) = (code(a + j), code(a + 16 + j), code(b + j), code(b + 16 + j));
            rec[j] = (a0 & 0x0F) | (a1 << 4);
            rec[16 + j] = (b0 & 0x0F) | (b1 << 4);
            rec[32 + j] = (a0 >> 4) | ((b0 >> 4) << 2) | ((a1 >> 4) << 4) | ((b1 >> 4) << 6);
        }
        rec[48..52].copy_from_slice(&scales[4 * p..4 * p + 4]);
    }
}

/// Writes `x` (one activation row) as the kernel's activation records:
/// Q4 formats `q[64]` (block pair's elements 0–15 of both blocks, then
/// 16–31 of both) `[d0×4, d1×4]` `[c·s0/4 ×4, c·s1/4 ×4]` with `c = 1` for
/// Q4_1's `m` term and `−8` for Q4_0's offset; Q8_0 `q[64]` (natural order)
/// and `[d0, d0, d1, d1, d0, d0, d1, d1]`.
pub fn quantize_activations(format: QuantFormat, x: &[f32], out: &mut [u8]) {
    if is_float(format) {
        // f32 as is, zero padded to whole records.
        out.fill(0);
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let xrec = act_record_bytes(format);
    for (p, rec) in out.chunks_exact_mut(xrec).enumerate() {
        let block = |b: usize| {
            let start = (2 * p + b) * ACT_BLOCK;
            let end = (start + ACT_BLOCK).min(x.len());
            if start < end {
                quantize_activation_block(&x[start..end])
            } else {
                quantize_activation_block(&[])
            }
        };
        let (b0, b1) = (block(0), block(1));
        let put_f32 = |rec: &mut [u8], at: usize, v: [f32; 8]| {
            for (i, v) in v.iter().enumerate() {
                rec[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
            }
        };
        // The 4-bit formats' nibble order: both blocks' elements 0–15, then
        // both blocks' 16–31.
        let put_nibble_order = |rec: &mut [u8]| {
            for j in 0..16 {
                rec[j] = b0.q[j] as u8;
                rec[16 + j] = b1.q[j] as u8;
                rec[32 + j] = b0.q[16 + j] as u8;
                rec[48 + j] = b1.q[16 + j] as u8;
            }
        };
        match format {
            QuantFormat::Q8_0 => {
                for (i, &q) in b0.q.iter().chain(&b1.q).enumerate() {
                    rec[i] = q as u8;
                }
                let (a, b) = (b0.d, b1.d);
                put_f32(rec, 64, [a, a, b, b, a, a, b, b]);
            }
            QuantFormat::Q6K => {
                put_nibble_order(rec);
                // −32·Σq of each 16-element sub-block, in the first i32 lane
                // of the four its partial sums occupy.
                let sum16 = |q: &[i8]| -32 * q.iter().map(|&v| i32::from(v)).sum::<i32>();
                let put_i32 = |rec: &mut [u8], at: usize, v: [i32; 8]| {
                    for (i, v) in v.iter().enumerate() {
                        rec[at + 4 * i..at + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
                    }
                };
                put_i32(rec, 64, [sum16(&b0.q[..16]), 0, 0, 0, sum16(&b1.q[..16]), 0, 0, 0]);
                put_i32(rec, 96, [sum16(&b0.q[16..]), 0, 0, 0, sum16(&b1.q[16..]), 0, 0, 0]);
                let (a, b) = (b0.d, b1.d);
                put_f32(rec, 128, [a, a, a, a, b, b, b, b]);
            }
            _ => {
                put_nibble_order(rec);
                let c = if format == QuantFormat::Q4_0 { -8.0 / 4.0 } else { 1.0 / 4.0 };
                let (a, b) = (b0.d, b1.d);
                put_f32(rec, 64, [a, a, a, a, b, b, b, b]);
                let (a, b) = (c * b0.s, c * b1.s);
                put_f32(rec, 96, [a, a, a, a, b, b, b, b]);
            }
        }
    }
}

/// How far ahead of the first row's cursor the kernels prefetch weights.
///
/// A call's W rows are contiguous and calls walk the matrix in order, so for
/// short rows (SmolLM2's 576 columns: 360 bytes of Q4_1) the weights are one
/// stream that the kernel reads as W interleaved pieces; the hardware
/// prefetcher alone left the kernel waiting on DRAM for every few rows (time
/// ≈ compute + memory rather than the larger of the two). Sweeping a
/// software prefetch one record per row per iteration ahead of that stream
/// took SmolLM2's 1-thread decode from ~67 to 100–136 tokens/s on the AVX2
/// EPYC (1 KiB: 102, 2 KiB: 125, 4 KiB: 108–136, 6 KiB: 100); prefetching
/// each row at its own distance did little (69–87).
const PREFETCH_AHEAD: i32 = 4096;

/// Weight rows per call for `r` activation rows: accumulators (W·R) share
/// the 16 vector registers with 4 constants and 6 temporaries.
fn max_weight_rows(r: usize) -> usize {
    (6 / r.max(1)).clamp(1, 4)
}

#[repr(C)]
struct KernelArgs {
    w: *const u8,
    x: *const u8,
    y: *mut f32,
    /// Loop steps (block pairs, or Q4_K super-blocks).
    steps: usize,
    w_stride: usize,
    x_stride: usize,
    y_stride: usize,
    consts: *const u8,
}

type QuantGemvFn = unsafe extern "C" fn(*const KernelArgs);

/// The kernels' constant vectors.
#[repr(C, align(32))]
struct Consts {
    nibble_mask: [u8; 32],
    ones: [i16; 16],
    /// `[d0, d1, m0, m1]` → `[d0×4, d1×4]`.
    idx_d: [i32; 8],
    /// `[d0, d1, m0, m1]` → `[m0×4, m1×4]`.
    idx_m: [i32; 8],
    /// `[d0, d1, ..]` → the lanes `vphaddd` leaves each block's sums in.
    idx_q8: [i32; 8],
    /// Q4_K's `[d·sc_a, −dmin·m_a, d·sc_b, −dmin·m_b]` → `[d·sc_a×4, d·sc_b×4]`.
    idx_d_q4k: [i32; 8],
    /// … → `[−dmin·m_a×4, −dmin·m_b×4]`.
    idx_m_q4k: [i32; 8],
    /// Q6_K: the high bits of the low-nibble vector: left by 4 (block A,
    /// bits 0–1) and 2 (block B, bits 2–3) into bits 4–5.
    shl_q6k: [i32; 8],
    /// … of the high-nibble vector: right by 0 (A, bits 4–5) and 2 (B, 6–7).
    shr_q6k: [i32; 8],
    /// Bits 4–5 of every byte.
    mask_q6k: [u8; 32],
}

static CONSTS: Consts = Consts {
    nibble_mask: [0x0F; 32],
    ones: [1; 16],
    idx_d: [0, 0, 0, 0, 1, 1, 1, 1],
    idx_m: [2, 2, 2, 2, 3, 3, 3, 3],
    idx_q8: [0, 0, 1, 1, 0, 0, 1, 1],
    idx_d_q4k: [0, 0, 0, 0, 2, 2, 2, 2],
    idx_m_q4k: [1, 1, 1, 1, 3, 3, 3, 3],
    shl_q6k: [4, 4, 4, 4, 2, 2, 2, 2],
    shr_q6k: [0, 0, 0, 0, 2, 2, 2, 2],
    mask_q6k: [0x30; 32],
};

/// One format's kernels, compiled on first use for each (W, R).
struct KernelSet {
    format: QuantFormat,
    slots: [[OnceLock<Result<ExecutableCode, String>>; MAX_ACT_ROWS]; 4],
}

impl KernelSet {
    fn get(&self, w: usize, r: usize) -> Result<QuantGemvFn, CodegenError> {
        let code = self.slots[w - 1][r - 1].get_or_init(|| {
            let bytes = generate(self.format, w, r).map_err(|e| e.to_string())?;
            ExecutableCode::new(&bytes).map_err(|e| e.to_string())
        });
        match code {
            // SAFETY: generated by `generate` for this signature, sealed r-x.
            Ok(code) => Ok(unsafe { std::mem::transmute::<*const u8, QuantGemvFn>(code.entry()) }),
            Err(e) => Err(CodegenError::Unsupported(format!("{} GEMV kernel: {e}", self.format))),
        }
    }
}

fn kernel_set(format: QuantFormat) -> Result<&'static KernelSet, CodegenError> {
    static SETS: [OnceLock<KernelSet>; 7] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let i = match format {
        QuantFormat::Q8_0 => 0,
        QuantFormat::Q4_0 => 1,
        QuantFormat::Q4_1 => 2,
        QuantFormat::Q4K => 3,
        QuantFormat::Q6K => 4,
        QuantFormat::F16 => 5,
        QuantFormat::Bf16 => 6,
    };
    if !host_has_avx2() {
        return Err(CodegenError::IsaNotOnHost { isa: Isa::Avx2 });
    }
    Ok(SETS[i].get_or_init(|| KernelSet { format, slots: Default::default() }))
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

/// Generates the kernel for `w` weight rows × `r` activation rows.
///
/// Registers: ymm0–3 constants, ymm4–7 the weight side of one record, ymm8–9
/// the activation side, ymm10.. the W·R accumulators; rdx the prefetch
/// cursor ([`PREFETCH_AHEAD`]).
fn generate(format: QuantFormat, w: usize, r: usize) -> Result<Vec<u8>, CodegenError> {
    assert!((1..=4).contains(&w) && (1..=MAX_ACT_ROWS).contains(&r) && w * r <= 6);
    let mut a = CodeAssembler::new(64)?;
    let wp = [r10, r11, rbx, r15];
    let xp = [rsi, r12, r13, r14];
    for reg in [rbx, r12, r13, r14, r15] {
        a.push(reg)?;
    }
    a.mov(r10, qword_ptr(rdi))?;
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
    let (mask, ones, idx_d, idx_m) = (YMM[0], YMM[1], YMM[2], YMM[3]);
    let q8 = format == QuantFormat::Q8_0;
    if q8 {
        a.vmovdqa(ones, ymmword_ptr(rax + 32))?;
        a.vmovdqa(idx_m, ymmword_ptr(rax + 128))?; // idx_q8 lives in ymm3
    } else if matches!(format, QuantFormat::Q4K | QuantFormat::Q6K) {
        a.vmovdqa(mask, ymmword_ptr(rax))?;
        a.vmovdqa(ones, ymmword_ptr(rax + 32))?;
        a.vmovdqa(idx_d, ymmword_ptr(rax + 160))?;
        a.vmovdqa(idx_m, ymmword_ptr(rax + 192))?;
    } else {
        a.vmovdqa(mask, ymmword_ptr(rax))?;
        a.vmovdqa(ones, ymmword_ptr(rax + 32))?;
        a.vmovdqa(idx_d, ymmword_ptr(rax + 64))?;
        a.vmovdqa(idx_m, ymmword_ptr(rax + 96))?;
    }
    let acc = |i: usize, x: usize| YMM[10 + i * r + x];
    for i in 0..w {
        for x in 0..r {
            a.vxorps(acc(i, x), acc(i, x), acc(i, x))?;
        }
    }
    let (t0, t1) = (YMM[8], YMM[9]);
    let rec = record_bytes(format) as i32;
    let xrec = act_record_bytes(format) as i32;
    let step = step_bytes(format) as i32;
    let per_step = records_per_step(format) as i32;
    let mut body = a.create_label();
    let mut reduce = a.create_label();
    // Software prefetch: rdx sweeps the call's rows (contiguous, W records
    // per iteration) PREFETCH_AHEAD bytes ahead of the first row's cursor.
    let sweep = w as i32 * step;
    a.lea(rdx, qword_ptr(r10 + PREFETCH_AHEAD))?;
    a.test(rcx, rcx)?;
    a.jz(reduce)?;
    a.set_label(&mut body)?;
    for line in (0..sweep).step_by(64) {
        a.prefetcht0(byte_ptr(rdx + line))?;
    }
    a.add(rdx, sweep)?;
    for k in 0..per_step {
        // Where record k of this step starts in a weight row / activation row.
        let (wk, xk) = (step_header(format) as i32 + k * rec, k * xrec);
        for (i, &wr) in wp.iter().enumerate().take(w) {
            if is_float(format) {
                let wv = YMM[4];
                if format == QuantFormat::F16 {
                    a.vcvtph2ps(wv, xmmword_ptr(wr))?;
                } else {
                    // bf16 is the upper half of an f32.
                    a.vpmovzxwd(wv, xmmword_ptr(wr))?;
                    a.vpslld(wv, wv, 16)?;
                }
                for (x, &xr) in xp.iter().enumerate().take(r) {
                    a.vfmadd231ps(acc(i, x), wv, ymmword_ptr(xr))?;
                }
            } else if format == QuantFormat::Q6K {
                let (lo, hi, s_lo, s_hi) = (YMM[4], YMM[5], YMM[6], YMM[7]);
                a.vmovdqu(lo, ymmword_ptr(wr + wk))?;
                a.vpsrlw(hi, lo, 4)?;
                a.vpand(lo, lo, mask)?;
                a.vpand(hi, hi, mask)?;
                // The 2-bit highs into bits 4–5 of each code.
                a.vbroadcasti128(t0, xmmword_ptr(wr + wk + 32))?;
                a.vpsllvd(t1, t0, ymmword_ptr(rax + 224))?;
                a.vpand(t1, t1, ymmword_ptr(rax + 288))?;
                a.vpor(lo, lo, t1)?;
                a.vpsrlvd(t0, t0, ymmword_ptr(rax + 256))?;
                a.vpand(t0, t0, ymmword_ptr(rax + 288))?;
                a.vpor(hi, hi, t0)?;
                // [d·sc_A0, d·sc_A1, d·sc_B0, d·sc_B1], exact in f32.
                a.vpmovsxbd(XMM[6], dword_ptr(wr + wk + 48))?;
                a.vcvtdq2ps(XMM[6], XMM[6])?;
                a.vbroadcastss(XMM[7], dword_ptr(wr))?;
                a.vmulps(XMM[6], XMM[6], XMM[7])?;
                a.vpermps(s_hi, idx_m, s_lo)?;
                a.vpermps(s_lo, idx_d, s_lo)?;
                for (x, &xr) in xp.iter().enumerate().take(r) {
                    // Σ code·q − 32·Σq per sub-block, exact in i32, then
                    // scaled per sub-block and by the activation scale.
                    a.vpmaddubsw(t0, lo, ymmword_ptr(xr + xk))?;
                    a.vpmaddwd(t0, t0, ones)?;
                    a.vpaddd(t0, t0, ymmword_ptr(xr + xk + 64))?;
                    a.vcvtdq2ps(t0, t0)?;
                    a.vmulps(t0, t0, s_lo)?;
                    a.vpmaddubsw(t1, hi, ymmword_ptr(xr + xk + 32))?;
                    a.vpmaddwd(t1, t1, ones)?;
                    a.vpaddd(t1, t1, ymmword_ptr(xr + xk + 96))?;
                    a.vcvtdq2ps(t1, t1)?;
                    a.vfmadd231ps(t0, t1, s_hi)?;
                    a.vfmadd231ps(acc(i, x), t0, ymmword_ptr(xr + xk + 128))?;
                }
            } else if q8 {
                let (w0, w1, a0, a1) = (YMM[4], YMM[5], YMM[6], YMM[7]);
                let d = YMM[2];
                a.vmovdqu(w0, ymmword_ptr(wr))?;
                a.vmovdqu(w1, ymmword_ptr(wr + 32))?;
                a.vpabsb(a0, w0)?;
                a.vpabsb(a1, w1)?;
                a.vcvtph2ps(XMM[2], qword_ptr(wr + 64))?;
                a.vpermps(d, idx_m, d)?;
                for (x, &xr) in xp.iter().enumerate().take(r) {
                    a.vmovdqu(t0, ymmword_ptr(xr))?;
                    a.vpsignb(t0, t0, w0)?;
                    a.vpmaddubsw(t0, a0, t0)?;
                    a.vpmaddwd(t0, t0, ones)?;
                    a.vmovdqu(t1, ymmword_ptr(xr + 32))?;
                    a.vpsignb(t1, t1, w1)?;
                    a.vpmaddubsw(t1, a1, t1)?;
                    a.vpmaddwd(t1, t1, ones)?;
                    a.vphaddd(t0, t0, t1)?;
                    a.vcvtdq2ps(t0, t0)?;
                    a.vmulps(t1, d, ymmword_ptr(xr + 64))?;
                    a.vfmadd231ps(acc(i, x), t0, t1)?;
                }
            } else {
                let (lo, hi, d, m) = (YMM[4], YMM[5], YMM[6], YMM[7]);
                a.vmovdqu(lo, ymmword_ptr(wr + wk))?;
                a.vpsrlw(hi, lo, 4)?;
                a.vpand(lo, lo, mask)?;
                a.vpand(hi, hi, mask)?;
                if format == QuantFormat::Q4K {
                    // [sc_a, m_a, sc_b, m_b] · [d, −dmin, d, −dmin], exact in f32.
                    a.vpmovzxbd(XMM[6], dword_ptr(wr + wk + 32))?;
                    a.vcvtdq2ps(XMM[6], XMM[6])?;
                    a.vmovddup(XMM[7], qword_ptr(wr))?;
                    a.vmulps(XMM[6], XMM[6], XMM[7])?;
                } else {
                    a.vcvtph2ps(XMM[6], qword_ptr(wr + 32))?;
                }
                let m = if matches!(format, QuantFormat::Q4_1 | QuantFormat::Q4K) {
                    a.vpermps(m, idx_m, d)?;
                    m
                } else {
                    d
                };
                a.vpermps(d, idx_d, d)?;
                for (x, &xr) in xp.iter().enumerate().take(r) {
                    a.vpmaddubsw(t0, lo, ymmword_ptr(xr + xk))?;
                    a.vpmaddubsw(t1, hi, ymmword_ptr(xr + xk + 32))?;
                    a.vpaddw(t0, t0, t1)?;
                    a.vpmaddwd(t0, t0, ones)?;
                    a.vcvtdq2ps(t0, t0)?;
                    a.vmulps(t1, d, ymmword_ptr(xr + xk + 64))?;
                    a.vfmadd231ps(acc(i, x), t0, t1)?;
                    a.vfmadd231ps(acc(i, x), m, ymmword_ptr(xr + xk + 96))?;
                }
            }
        }
    }
    for &wr in wp.iter().take(w) {
        a.add(wr, step)?;
    }
    for &xr in xp.iter().take(r) {
        a.add(xr, per_step * xrec)?;
    }
    a.dec(rcx)?;
    a.jnz(body)?;
    a.set_label(&mut reduce)?;
    a.mov(rdx, qword_ptr(rdi + 16))?;
    a.mov(r8, qword_ptr(rdi + 48))?;
    for x in 0..r {
        for i in 0..w {
            let (v, xv) = (acc(i, x), XMM[10 + i * r + x]);
            a.vextractf128(XMM[8], v, 1)?;
            a.vaddps(xv, xv, XMM[8])?;
            a.vhaddps(xv, xv, xv)?;
            a.vhaddps(xv, xv, xv)?;
            a.vmovss(dword_ptr(rdx + 4 * i as i32), xv)?;
        }
        a.add(rdx, r8)?;
    }
    for reg in [r15, r14, r13, r12, rbx] {
        a.pop(reg)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(a.assemble(0)?)
}
