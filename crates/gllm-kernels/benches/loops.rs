//! Memory-bound kernels on 16M-element tensors against this machine's
//! memory bandwidth measured in the same run. Medians of several rounds in
//! which every job (references and kernels) runs once, so drift in the
//! machine's bandwidth affects all of them alike.
//! `cargo bench -p gllm-kernels --bench loops`
//!
//! Bytes are counted once per tensor read or written (STREAM convention);
//! the bandwidth references are a plain copy (`copy_from_slice`, 1 read +
//! 1 write) and a 3-stream triad `a = b + s·c` (2 reads + 1 write), both
//! compiled by rustc.

use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion;
use gllm_kernels::graph::{CompilerGraph, CompilerOp, TensorDesc};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use std::hint::black_box;

const N: usize = 1 << 24;
const ROW: usize = 4096;
const RUNS: usize = 11;

mod common;

fn kernel(kind: OpKind, params: Vec<f32>, profile: &DeviceProfile) -> LoopKernel {
    let op = ScalarOpRegistry::global().get(kind).unwrap();
    LoopKernel::compile(&LoopProgram::from_trace(&op.trace().unwrap(), params).unwrap(), profile).unwrap()
}

fn main() {
    let profile = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let threads_list = [1usize, profile.physical_cores.max(1)];
    let x: Vec<f32> = (0..N).map(|i| ((i % 1000) as f32 - 500.0) * 0.01).collect();
    let res: Vec<f32> = (0..N).map(|i| ((i % 777) as f32) * 0.001).collect();
    let w: Vec<f32> = (0..ROW).map(|i| 1.0 + (i % 7) as f32 * 0.1).collect();
    let mut out = vec![0.0f32; N];
    let mut t1 = vec![0.0f32; N];
    let mut t2 = vec![0.0f32; N];
    let mut t3 = vec![0.0f32; N];
    let mb = (N * 4) as f64;
    println!("{} ({}), 16M f32 = 64 MiB per tensor, median of {RUNS}\n", profile.name, profile.isa);

    let rows = N / ROW;
    // Single-op graphs, compiled through the planner like a layer's groups
    // (so they get the same code: streaming stores for 64 MiB outputs).
    let single = |op: CompilerOp, with_weight: bool| {
        let mut g = CompilerGraph::new();
        let x = g.input("x", TensorDesc::f32([rows, ROW]));
        let mut ins = vec![x];
        if with_weight {
            ins.push(g.weight("w", TensorDesc::f32([ROW])));
        }
        let y = g.node("op", op, ins, TensorDesc::f32([rows, ROW]));
        g.output(y);
        let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
        let plan = fusion::plan(&sem, &profile);
        gllm_kernels::codegen::group::CompiledGroup::compile(&sem, &plan.groups[0], &profile).unwrap()
    };
    let rms = single(CompilerOp::rms_norm(1e-5), true);
    let softmax = single(CompilerOp::softmax(), false);
    let silu = kernel(OpKind::Silu, vec![], &profile);
    let mul = kernel(OpKind::Mul, vec![], &profile);
    let add = kernel(OpKind::Add, vec![], &profile);

    // The fused chain comes from the planner, like in a real layer.
    let mut g = CompilerGraph::new();
    let gx = g.input("x", TensorDesc::f32([N / ROW, ROW]));
    let gres = g.input("res", TensorDesc::f32([N / ROW, ROW]));
    let gw = g.weight("w", TensorDesc::f32([ROW]));
    let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![gx], TensorDesc::f32([N / ROW, ROW]));
    let b = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a, gw], TensorDesc::f32([N / ROW, ROW]));
    let c = g.node("add", CompilerOp::new(OpKind::Add), vec![b, gres], TensorDesc::f32([N / ROW, ROW]));
    g.output(c);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let plan = fusion::plan(&sem, &profile);
    let chain =
        gllm_kernels::codegen::group::CompiledGroup::compile(&sem, &plan.groups[0], &profile).unwrap();
    let chain_inputs: Vec<&[f32]> = chain
        .inputs()
        .iter()
        .map(|&t| match plan.tensor_names[t].split(' ').next().unwrap() {
            "x" => &x[..],
            "res" => &res[..],
            _ => &w[..],
        })
        .collect();

    println!(
        "| kernel | threads | time | GB/s | % of copy | % of triad | % of machine (best of copy, triad) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &threads in &threads_list {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            use rayon::prelude::*;
            let part = N / threads;
            let mut copy = || {
                if threads == 1 {
                    out.copy_from_slice(black_box(&x));
                } else {
                    out.par_chunks_mut(part).zip(x.par_chunks(part)).for_each(|(o, i)| o.copy_from_slice(i));
                }
            };
            // A separate output so the jobs do not share buffers in odd ways.
            let mut triad_out = vec![0.0f32; N];
            let mut triad = || {
                let s = black_box(0.5f32);
                triad_out.par_chunks_mut(part).zip(x.par_chunks(part).zip(res.par_chunks(part))).for_each(
                    |(o, (b, c))| {
                        for ((o, b), c) in o.iter_mut().zip(b).zip(c) {
                            *o = b + s * c;
                        }
                    },
                );
            };
            let mut rms_out = vec![0.0f32; N];
            let mut rms_job = || rms.run_with_threads(&[&x, &w], &mut rms_out, threads).unwrap();
            let mut softmax_out = vec![0.0f32; N];
            let mut softmax_job = || softmax.run_with_threads(&[&x], &mut softmax_out, threads).unwrap();
            let mut chain_out = vec![0.0f32; N];
            let mut fused_job = || chain.run_with_threads(&chain_inputs, &mut chain_out, threads).unwrap();
            let mut unfused_job = || {
                silu.run(&[&x], &mut [&mut t1], 1, N, threads).unwrap();
                mul.run(&[&t1, &w], &mut [&mut t2], rows, ROW, threads).unwrap();
                add.run(&[&t2, &res], &mut [&mut t3], 1, N, threads).unwrap();
            };
            let t = common::interleaved_median_times(
                RUNS,
                &mut [
                    &mut copy,
                    &mut triad,
                    &mut rms_job,
                    &mut softmax_job,
                    &mut fused_job,
                    &mut unfused_job,
                ],
            );
            let (copy, triad) = (t[0], t[1]);
            let copy_bw = 2.0 * mb / copy;
            let triad_bw = 3.0 * mb / triad;
            let best = copy_bw.max(triad_bw);
            let row = |name: &str, secs: f64, tensors: f64| {
                let bw = tensors * mb / secs;
                println!(
                    "| {name} | {threads} | {:.2} ms | {:.1} | {:.0}% | {:.0}% | {:.0}% |",
                    secs * 1e3,
                    bw / 1e9,
                    100.0 * bw / copy_bw,
                    100.0 * bw / triad_bw,
                    100.0 * bw / best
                );
            };
            row("copy (rustc memcpy)", copy, 2.0);
            row("triad a = b + s·c (rustc)", triad, 3.0);
            row("rms_norm [4096 × 4096]", t[2], 2.0);
            row("softmax [4096 × 4096]", t[3], 2.0);
            row("silu·mul·add fused", t[4], 3.0);
            row("silu, mul, add unfused (3 kernels)", t[5], 3.0);
            println!("| fused speed-up over unfused | {threads} | {:.2}× | | | | |", t[5] / t[4]);
        });
    }
}
