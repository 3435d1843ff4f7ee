//! The memory-bound kernels of `benches/loops.rs` under divan: per-kernel
//! statistics (fastest, slowest, median, mean) and throughput, next to the
//! copy and triad references, on 1 and 2 threads.
//! `cargo bench -p gllm-kernels --bench memory_kernels`
//!
//! Bytes are counted once per tensor read or written (STREAM convention).
//! `threads` splits each job into that many parts on rayon's global pool.
//! `loops` is the table harness that relates these to the same-round
//! bandwidth; this one is for the distribution of each timing.

use divan::counter::BytesCount;
use divan::{black_box, Bencher};
use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion;
use gllm_kernels::graph::{CompilerGraph, CompilerOp, TensorDesc};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use rayon::prelude::*;
use std::sync::LazyLock;

const N: usize = 1 << 24;
const ROW: usize = 4096;
const ROWS: usize = N / ROW;
const THREADS: [usize; 2] = [1, 2];

fn main() {
    // Build the inputs before timing anything.
    LazyLock::force(&DATA);
    divan::main();
}

/// Inputs shared by every benchmark (64 MiB each).
struct Data {
    profile: DeviceProfile,
    x: Vec<f32>,
    res: Vec<f32>,
    w: Vec<f32>,
}

static DATA: LazyLock<Data> = LazyLock::new(|| Data {
    profile: DeviceProfile::detect().expect("AVX2 or AVX-512 CPU"),
    x: (0..N).map(|i| ((i % 1000) as f32 - 500.0) * 0.01).collect(),
    res: (0..N).map(|i| ((i % 777) as f32) * 0.001).collect(),
    w: (0..ROW).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect(),
});

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

/// A single-op graph compiled through the planner, like a layer's groups.
fn single(op: CompilerOp, with_weight: bool) -> CompiledGroup {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([ROWS, ROW]));
    let mut ins = vec![x];
    if with_weight {
        ins.push(g.weight("w", TensorDesc::f32([ROW])));
    }
    let y = g.node("op", op, ins, TensorDesc::f32([ROWS, ROW]));
    g.output(y);
    let sem = g.analyse(ScalarOpRegistry::global()).expect("valid graph");
    let plan = fusion::plan(&sem, &DATA.profile);
    CompiledGroup::compile(&sem, &plan.groups[0], &DATA.profile).expect("compiles")
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn copy(b: Bencher, threads: usize) {
    let mut out = output();
    let part = N / threads;
    b.counter(bytes(2)).bench_local(|| {
        out.par_chunks_mut(part).zip(DATA.x.par_chunks(part)).for_each(|(o, i)| o.copy_from_slice(i));
        black_box(&out);
    });
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn triad(b: Bencher, threads: usize) {
    let mut out = output();
    let part = N / threads;
    let s = black_box(0.5f32);
    b.counter(bytes(3)).bench_local(|| {
        out.par_chunks_mut(part).zip(DATA.x.par_chunks(part).zip(DATA.res.par_chunks(part))).for_each(
            |(o, (x, r))| {
                for ((o, x), r) in o.iter_mut().zip(x).zip(r) {
                    *o = x + s * r;
                }
            },
        );
        black_box(&out);
    });
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn rms_norm(b: Bencher, threads: usize) {
    let k = single(CompilerOp::rms_norm(1e-5), true);
    let mut out = output();
    b.counter(bytes(2)).bench_local(|| k.run_with_threads(&[&DATA.x, &DATA.w], &mut out, threads).unwrap());
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn softmax(b: Bencher, threads: usize) {
    let k = single(CompilerOp::softmax(), false);
    let mut out = output();
    b.counter(bytes(2)).bench_local(|| k.run_with_threads(&[&DATA.x], &mut out, threads).unwrap());
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn silu_mul_add_fused(b: Bencher, threads: usize) {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([ROWS, ROW]));
    let res = g.input("res", TensorDesc::f32([ROWS, ROW]));
    let w = g.weight("w", TensorDesc::f32([ROW]));
    let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![x], TensorDesc::f32([ROWS, ROW]));
    let m = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a, w], TensorDesc::f32([ROWS, ROW]));
    let c = g.node("add", CompilerOp::new(OpKind::Add), vec![m, res], TensorDesc::f32([ROWS, ROW]));
    g.output(c);
    let sem = g.analyse(ScalarOpRegistry::global()).expect("valid graph");
    let plan = fusion::plan(&sem, &DATA.profile);
    let k = CompiledGroup::compile(&sem, &plan.groups[0], &DATA.profile).expect("compiles");
    let inputs: Vec<&[f32]> = k
        .inputs()
        .iter()
        .map(|&t| match plan.tensor_names[t].split(' ').next() {
            Some("x") => &DATA.x[..],
            Some("res") => &DATA.res[..],
            _ => &DATA.w[..],
        })
        .collect();
    let mut out = output();
    b.counter(bytes(3)).bench_local(|| k.run_with_threads(&inputs, &mut out, threads).unwrap());
}

#[divan::bench(args = THREADS, sample_count = 15)]
fn silu_mul_add_unfused(b: Bencher, threads: usize) {
    let kernel = |kind| {
        let op = ScalarOpRegistry::global().get(kind).unwrap();
        LoopKernel::compile(&LoopProgram::from_trace(&op.trace().unwrap(), vec![]).unwrap(), &DATA.profile)
            .unwrap()
    };
    let (silu, mul, add) = (kernel(OpKind::Silu), kernel(OpKind::Mul), kernel(OpKind::Add));
    let (mut t1, mut t2, mut out) = (output(), output(), output());
    b.counter(bytes(3)).bench_local(|| {
        silu.run(&[&DATA.x], &mut [&mut t1], 1, N, threads).unwrap();
        mul.run(&[&t1, &DATA.w], &mut [&mut t2], ROWS, ROW, threads).unwrap();
        add.run(&[&t2, &DATA.res], &mut [&mut out], 1, N, threads).unwrap();
    });
}
