//! Exhaustive accuracy of MathApprox: every finite f32 input of exp, log,
//! tanh, sigmoid and GELU, on every ISA this machine runs, against the f64
//! reference. `cargo run --release --example math_accuracy [exp log …]`.
//! Takes a few minutes per function on 2 cores.

use gllm_kernels::codegen::math::{ulp_error, MathFn, MathKernel};
use gllm_kernels::device::{DeviceProfile, Isa};
use rayon::prelude::*;
use std::time::Instant;

const CHUNK: u64 = 1 << 22;

#[derive(Clone, Copy, Default)]
struct Stats {
    max: f64,
    worst: f32,
    over: u64,
    checked: u64,
}

fn merge(a: Stats, b: Stats) -> Stats {
    let (max, worst) = if b.max > a.max { (b.max, b.worst) } else { (a.max, a.worst) };
    Stats { max, worst, over: a.over + b.over, checked: a.checked + b.checked }
}

fn main() {
    let wanted: Vec<String> = std::env::args().skip(1).collect();
    let host = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let mut isas = vec![Isa::Avx2];
    if host.features.supports(Isa::Avx512) {
        isas.push(Isa::Avx512);
    }
    println!("| function | ISA | inputs | max error (ulp) | at x | over bound | bound |");
    println!("|---|---|---|---|---|---|---|");
    for f in MathFn::ALL.into_iter().filter(|f| wanted.is_empty() || wanted.iter().any(|w| w == f.name())) {
        for &isa in &isas {
            let kernel = MathKernel::compile(f, &host.clone().with_isa(isa).unwrap()).unwrap();
            let started = Instant::now();
            let stats = (0..(1u64 << 32) / CHUNK)
                .into_par_iter()
                .map(|c| {
                    let xs: Vec<f32> = (c * CHUNK..(c + 1) * CHUNK)
                        .map(|b| f32::from_bits(b as u32))
                        .filter(|x| x.is_finite())
                        .collect();
                    let mut out = vec![0.0; xs.len()];
                    kernel.run(&xs, &mut out).unwrap();
                    let mut s = Stats::default();
                    for (x, y) in xs.iter().zip(&out) {
                        let e = ulp_error(*y, f.reference(*x as f64));
                        s.checked += 1;
                        if e > f.max_ulps() {
                            s.over += 1;
                        }
                        if e > s.max {
                            s.max = e;
                            s.worst = *x;
                        }
                    }
                    s
                })
                .reduce(Stats::default, merge);
            println!(
                "| {} | {} | {} | {:.3} | {:e} | {} | ≤ {} |  ({:.0} s)",
                f.name(),
                isa,
                stats.checked,
                stats.max,
                stats.worst,
                stats.over,
                f.max_ulps(),
                started.elapsed().as_secs_f64()
            );
        }
    }
}
