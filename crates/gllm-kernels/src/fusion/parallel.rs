//! Step 3.5: how each fusion group's work is split across threads.
//!
//! The JIT code is single-threaded; the runtime hands each thread a range of
//! columns (GEMM NC loop), rows, batches or elements, as chosen here.

use crate::device::{DeviceProfile, GemmBlocking};
use crate::graph::MatMulParams;
use std::fmt;

/// Below this many bytes of memory traffic a memory-bound group runs on one
/// thread. Measured on the project's 2-core Zen 5 VM when dispatch went
/// through rayon (≈ 15 µs to wake the second worker): an elementwise pass
/// over 4 MiB gained nothing (78 µs vs 86 µs), 16 MiB 1.4× and 64 MiB 1.8×.
/// The spinning pool (`runtime::dispatch`) hands off in about a microsecond,
/// but on these VMs one core already takes most of the DRAM bandwidth, so
/// lowering the thresholds did not speed up decoding (SmolLM2 tg64 with
/// 1 MFLOP: 27.6 tok/s vs 29.1 with 16 MFLOP on 2 threads); they stay.
pub const MIN_PARALLEL_BYTES: usize = 8 << 20;

/// Below this many flops a GEMM runs on one thread: at ≈ 200 GFLOP/s per
/// core, 16 MFLOP is ≈ 80 µs, several times the dispatch cost above.
pub const MIN_PARALLEL_FLOPS: u64 = 16_000_000;

/// Below this many bytes of quantised weights a GEMV runs on one thread.
/// SmolLM2 decode on the 2-core AVX2 EPYC, 2 threads (tg128 tok/s):
/// splitting only the 30 MB LM head, 94; from 1 MB, 105; from 300 KB
/// (gate/up/down), 117; from 100 KB (also Q and O, 207 KB each), 136–164;
/// from 30 KB (also K and V, 69 KB), 137–155.
pub const MIN_PARALLEL_QUANT_BYTES: usize = 128 << 10;

/// Threads for a GEMV over `weight_bytes` of quantised weights: unlike the
/// f32 GEMV it is bound by instructions as much as by memory, so a second
/// core pays off far below [`MIN_PARALLEL_FLOPS`].
pub fn for_quantised_gemv(weight_bytes: usize, threads: usize) -> usize {
    if weight_bytes < MIN_PARALLEL_QUANT_BYTES {
        1
    } else {
        threads.max(1)
    }
}

/// How one group's work is divided among threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParallelStrategy {
    /// One thread: the work is too small to pay for dispatch, or cannot be split.
    Sequential,
    /// Each thread takes `cols_per_thread` columns of C (a multiple of NR):
    /// its own slice of the NC loop, so B panels are never shared.
    GemmNcSplit { threads: usize, cols_per_thread: usize },
    /// Each thread takes `rows_per_thread` rows of C (a multiple of MR): for
    /// narrow outputs with many rows.
    GemmMSplit { threads: usize, rows_per_thread: usize },
    /// Each thread takes whole batch elements (attention heads).
    GemmBatchSplit { threads: usize, batches_per_thread: usize },
    /// Each thread takes `elems_per_thread` elements (a multiple of the vector width).
    ElemSplit { threads: usize, elems_per_thread: usize },
    /// Each thread takes whole rows (norms, softmax: a row is never split).
    RowSplit { threads: usize, rows_per_thread: usize },
}

impl ParallelStrategy {
    pub fn threads(&self) -> usize {
        match *self {
            ParallelStrategy::Sequential => 1,
            ParallelStrategy::GemmNcSplit { threads, .. }
            | ParallelStrategy::GemmMSplit { threads, .. }
            | ParallelStrategy::GemmBatchSplit { threads, .. }
            | ParallelStrategy::ElemSplit { threads, .. }
            | ParallelStrategy::RowSplit { threads, .. } => threads,
        }
    }
}

impl fmt::Display for ParallelStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ParallelStrategy::Sequential => write!(f, "sequential"),
            ParallelStrategy::GemmNcSplit { threads, cols_per_thread } => {
                write!(f, "NC split: {threads} threads × {cols_per_thread} columns")
            }
            ParallelStrategy::GemmMSplit { threads, rows_per_thread } => {
                write!(f, "M split: {threads} threads × {rows_per_thread} rows")
            }
            ParallelStrategy::GemmBatchSplit { threads, batches_per_thread } => {
                write!(f, "batch split: {threads} threads × {batches_per_thread} batch elements")
            }
            ParallelStrategy::ElemSplit { threads, elems_per_thread } => {
                write!(f, "element split: {threads} threads × {elems_per_thread} elements")
            }
            ParallelStrategy::RowSplit { threads, rows_per_thread } => {
                write!(f, "row split: {threads} threads × {rows_per_thread} rows")
            }
        }
    }
}

fn div_ceil_to(x: usize, parts: usize, multiple: usize) -> usize {
    x.div_ceil(parts).div_ceil(multiple) * multiple
}

/// Threads the plan may use: one per physical core (SMT siblings share the
/// FMA units and the L1, so they do not help these kernels).
pub fn threads_for(profile: &DeviceProfile) -> usize {
    profile.physical_cores.max(1)
}

/// GEMM: split columns (the NC loop) when there are enough NR panels for
/// every thread, else rows, else batch elements; small products run alone.
pub fn for_gemm(p: &MatMulParams, total_n: usize, b: &GemmBlocking, threads: usize) -> ParallelStrategy {
    let flops = 2 * (p.batch as u64) * (p.m as u64) * (total_n as u64) * (p.k as u64);
    if threads < 2 || flops < MIN_PARALLEL_FLOPS {
        return ParallelStrategy::Sequential;
    }
    if p.batch >= threads {
        return ParallelStrategy::GemmBatchSplit { threads, batches_per_thread: p.batch.div_ceil(threads) };
    }
    if p.n >= threads * b.nr * 2 {
        return ParallelStrategy::GemmNcSplit { threads, cols_per_thread: div_ceil_to(p.n, threads, b.nr) };
    }
    if p.m >= threads * b.mr {
        return ParallelStrategy::GemmMSplit { threads, rows_per_thread: div_ceil_to(p.m, threads, b.mr) };
    }
    ParallelStrategy::Sequential
}

/// Memory-bound groups: whole rows for row ops, vector-aligned element
/// ranges for elementwise chains.
pub fn for_stream(
    bytes_moved: usize,
    elems: usize,
    rows: Option<usize>,
    lanes: usize,
    threads: usize,
) -> ParallelStrategy {
    if threads < 2 || bytes_moved < MIN_PARALLEL_BYTES {
        return ParallelStrategy::Sequential;
    }
    match rows {
        Some(rows) if rows >= threads => {
            ParallelStrategy::RowSplit { threads, rows_per_thread: rows.div_ceil(threads) }
        }
        Some(_) => ParallelStrategy::Sequential,
        None => ParallelStrategy::ElemSplit { threads, elems_per_thread: div_ceil_to(elems, threads, lanes) },
    }
}
