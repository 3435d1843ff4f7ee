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

use common::memory::{self, Tensors, Unfused, Workload, N};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::graph::CompilerOp;
use std::hint::black_box;

const RUNS: usize = 11;

mod common;

fn main() {
    let profile = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let threads_list = [1usize, profile.physical_cores.max(1)];
    let data = Tensors::new();
    let mb = (N * 4) as f64;
    println!("{} ({}), 16M f32 = 64 MiB per tensor, median of {RUNS}\n", profile.name, profile.isa);

    let rms = Workload::single(CompilerOp::rms_norm(1e-5), true, &profile);
    let softmax = Workload::single(CompilerOp::softmax(), false, &profile);
    let chain = Workload::silu_mul_add(&profile);
    let unfused = Unfused::new(&profile);
    let (rms_in, softmax_in, chain_in) = (rms.inputs(&data), softmax.inputs(&data), chain.inputs(&data));
    // Every job writes its own output.
    let mut outs: [Vec<f32>; 6] = std::array::from_fn(|_| vec![0.0f32; N]);
    let (mut t1, mut t2) = (vec![0.0f32; N], vec![0.0f32; N]);

    println!(
        "| kernel | threads | time | GB/s | % of copy | % of triad | % of machine (best of copy, triad) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &threads in &threads_list {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let [o_copy, o_triad, o_rms, o_softmax, o_fused, o_unfused] = &mut outs;
            let t = common::interleaved_median_times(
                RUNS,
                &mut [
                    &mut || memory::copy(o_copy, black_box(&data.x), threads),
                    &mut || memory::triad(o_triad, &data, threads),
                    &mut || rms.group.run_with_threads(&rms_in, o_rms, threads).unwrap(),
                    &mut || softmax.group.run_with_threads(&softmax_in, o_softmax, threads).unwrap(),
                    &mut || chain.group.run_with_threads(&chain_in, o_fused, threads).unwrap(),
                    &mut || unfused.run(&data, (&mut t1, &mut t2), o_unfused, threads),
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
