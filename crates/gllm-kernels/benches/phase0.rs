//! Phase 0 cost: analysing every registered op from scratch (cold: a new
//! registry, so no cached traces), and a cached lookup. Prints medians of
//! several runs. Run with `cargo bench -p gllm-kernels --bench phase0`.

use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use std::time::Instant;

mod common;
use common::median;

fn main() {
    let runs = 15;
    let mut cold = Vec::new();
    let mut per_op: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..runs {
        let registry = ScalarOpRegistry::with_builtins();
        let start = Instant::now();
        for (i, op) in registry.iter().enumerate() {
            let t = Instant::now();
            op.trace().expect("built-in ops analyse");
            if per_op.len() <= i {
                per_op.push((op.kind().name().to_string(), Vec::new()));
            }
            per_op[i].1.push(t.elapsed().as_secs_f64());
        }
        cold.push(start.elapsed().as_secs_f64());
    }
    let registry = ScalarOpRegistry::with_builtins();
    registry.trace(OpKind::Softmax).unwrap();
    let lookups = 1_000_000;
    let start = Instant::now();
    for _ in 0..lookups {
        std::hint::black_box(registry.trace(std::hint::black_box(OpKind::Softmax)).unwrap());
    }
    let cached = start.elapsed().as_secs_f64() / lookups as f64;

    println!("| op | analysis (median of {runs}) |\n|---|---|");
    for (name, times) in per_op {
        println!("| {name} | {:.1} µs |", median(times) * 1e6);
    }
    println!("\nall {} ops, cold: median {:.2} ms (target < 10 ms)", registry.len(), median(cold) * 1e3);
    println!("cached trace lookup: {:.0} ns", cached * 1e9);
}
