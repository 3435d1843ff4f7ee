//! The memory-bound kernels of `benches/loops.rs` under divan: per-kernel
//! statistics (fastest, slowest, median, mean) and throughput, next to the
//! copy and triad references, on 1 and 2 threads.
//! `cargo bench -p gllm-kernels --bench memory_kernels`
//!
//! Bytes are counted once per tensor read or written (STREAM convention).
//! `threads` splits each job into that many parts on rayon's global pool.
//! `loops` is the table harness that relates these to the same-round
//! bandwidth; this one is for the distribution of each timing.

use common::memory::{self, Tensors, Unfused, Workload, N};
use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::graph::CompilerOp;
use std::sync::LazyLock;

mod common;

const THREADS: [usize; 2] = [1, 2];

fn main() {
    // Build the inputs before timing anything.
    LazyLock::force(&DATA);
    divan::main();
}

static PROFILE: LazyLock<DeviceProfile> =
    LazyLock::new(|| DeviceProfile::detect().expect("AVX2 or AVX-512 CPU"));
static DATA: LazyLock<Tensors> = LazyLock::new(Tensors::new);

/// An output buffer with its pages already faulted in (a fresh `vec!` of
/// zeros is mapped lazily, and the first sample would time the page faults).
fn output() -> Vec<f32> {
    let mut v = vec![0.0f32; N];
    v.fill(1.0);
    v
}

fn bytes(tensors: usize) -> BytesCount {
    BytesCount::new(tensors * N * 4)
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn copy(b: Bencher, threads: usize) {
    let mut out = output();
    b.counter(bytes(2)).bench_local(|| memory::copy(&mut out, black_box(&DATA.x), threads));
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn triad(b: Bencher, threads: usize) {
    let mut out = output();
    b.counter(bytes(3)).bench_local(|| memory::triad(&mut out, &DATA, threads));
}

fn bench_workload(b: Bencher, w: Workload, tensors: usize, threads: usize) {
    let inputs = w.inputs(&DATA);
    let mut out = output();
    b.counter(bytes(tensors)).bench_local(|| w.group.run_with_threads(&inputs, &mut out, threads).unwrap());
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn rms_norm(b: Bencher, threads: usize) {
    bench_workload(b, Workload::single(CompilerOp::rms_norm(1e-5), true, &PROFILE), 2, threads);
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn softmax(b: Bencher, threads: usize) {
    bench_workload(b, Workload::single(CompilerOp::softmax(), false, &PROFILE), 2, threads);
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn silu_mul_add_fused(b: Bencher, threads: usize) {
    bench_workload(b, Workload::silu_mul_add(&PROFILE), 3, threads);
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn silu_mul_add_unfused(b: Bencher, threads: usize) {
    let unfused = Unfused::new(&PROFILE);
    let (mut t1, mut t2, mut out) = (output(), output(), output());
    b.counter(bytes(3)).bench_local(|| unfused.run(&DATA, (&mut t1, &mut t2), &mut out, threads));
}
