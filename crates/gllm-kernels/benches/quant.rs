//! Quantised GEMV (weights read as stored) against this machine's read
//! bandwidth, measured in the same interleaved rounds: GB/s of compressed
//! weight bytes per second over the 8-stream read probe, 1 and 2 threads,
//! each GEMV with its matrix cold in DRAM and the two-thread one with the
//! worker awake (as in decode; what waking a parked worker costs is printed
//! on its own); then SmolLM2's shapes on 1 vs 2 threads (hot, in cache),
//! and the dequantising prompt-processing path. Medians of several rounds. Block
//! formats run with int8 activations (as llama.cpp) and again with int16
//! ("int16 x": the accurate mode's cost).
//! `cargo bench -p gllm-kernels --bench quant [-- FORMAT…]` (e.g. `-- Q4_1 Q8_0`:
//! only those formats' bandwidth rows).

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::codegen::quant_gemv::{
    measured_thread_choices, QuantKernelIsa, QuantPanels, MAX_ACT_ROWS, THREAD_TIMING_RUNS,
};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::quant::{ActivationPrecision, QuantFormat, QuantMatrix};

mod common;
use common::interleaved_median_times;
use gllm_kernels::runtime::dispatch;
use gllm_kernels::tune::ReadProbe;

/// Random stored bytes with ordinary f16 scales (F16/BF16: every element
/// the scale's bytes).
fn matrix(format: QuantFormat, rows: usize, cols: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let bytes = format.row_bytes(cols).unwrap() * rows;
    let mut v: Vec<u8> = (0..bytes).map(|_| next() as u8).collect();
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in v.chunks_exact_mut(format.block_bytes()) {
        if format == QuantFormat::Q6K {
            block[208..].copy_from_slice(&scale);
            continue;
        }
        block[..2].copy_from_slice(&scale);
        if matches!(format, QuantFormat::Q4_1 | QuantFormat::Q4K) {
            block[2..4].copy_from_slice(&scale);
        }
    }
    v
}

/// Wakes the pool's parked workers and waits until they run.
fn wake_and_wait() {
    while {
        dispatch::wake_workers();
        dispatch::parked_workers() > 0
    } {
        std::hint::spin_loop();
    }
}

fn main() {
    let profile = DeviceProfile::detect().expect("an AVX2 or AVX-512 CPU");
    let probe = ReadProbe::new(&profile).expect("the read probe compiles");
    println!(
        "{} ({}); GEMV y = x·Wᵀ with W stored quantised, x f32 (quantised per 32 inside)\n",
        profile.name, profile.isa
    );
    println!("| format | kernels | K×N | MiB | read probe 1 thr GB/s | GEMV 1 thr GB/s (% of probe) | read probe 2 thr GB/s | GEMV 2 thr GB/s (% of 2-thr probe) |");
    println!("|---|---|---|---|---|---|---|---|");
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    for format in QuantFormat::ALL {
        if !only.is_empty() && !only.iter().any(|f| f.eq_ignore_ascii_case(&format.to_string())) {
            continue;
        }
        let float = matches!(format, QuantFormat::F16 | QuantFormat::Bf16);
        let precisions: &[ActivationPrecision] = if float {
            &[ActivationPrecision::Int8]
        } else {
            &[ActivationPrecision::Int8, ActivationPrecision::Int16]
        };
        let cases = precisions.iter().flat_map(|p| [(p, (4096, 4096)), (p, (4096, 11008))]);
        let isas = QuantKernelIsa::ALL.into_iter().filter(|i| i.on_host());
        for (kernel_isa, (&precision, (k, n))) in cases.flat_map(|c| isas.clone().map(move |i| (i, c))) {
            let bytes = matrix(format, n, k);
            let panels = QuantPanels::pack(&QuantMatrix::new(format, n, k, &bytes).unwrap())
                .unwrap()
                .with_activations(precision)
                .with_kernel_isa(kernel_isa)
                .unwrap();
            let label = if precision == ActivationPrecision::Int16 {
                format!("{format}, int16 x")
            } else {
                format.to_string()
            };
            let x: Vec<f32> = (0..k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
            let (mut y1, mut y2) = (vec![0.0f32; n], vec![0.0f32; n]);
            // Each GEMV follows a probe run, which reads 192 MiB: the
            // matrix starts in DRAM, not in the L3 the other GEMV left it
            // in. The two-thread GEMV runs with the worker awake, as
            // between a decode step's GEMVs (after the probe's milliseconds
            // it has parked; waking it is timed on its own below).
            let t = interleaved_median_times(
                11,
                &mut [
                    &mut || probe.run(1),
                    &mut || panels.gemv(&x, 1, &mut y1, 1).unwrap(),
                    &mut || probe.run(2),
                    &mut wake_and_wait,
                    &mut || panels.gemv_exact_threads(&x, 1, &mut y2, 2).unwrap(),
                ],
            );
            let size = bytes.len() as f64;
            let (p1, p2) = (probe.bytes() / t[0] / 1e9, probe.bytes() / t[2] / 1e9);
            let (g1, g2) = (size / t[1] / 1e9, size / t[4] / 1e9);
            println!(
                "| {label} | {kernel_isa} | {k}×{n} | {:.1} | {p1:.1} | {g1:.1} ({:.0}%) | {p2:.1} | {g2:.1} ({:.0}%) |",
                size / (1 << 20) as f64,
                100.0 * g1 / p1,
                100.0 * g2 / p2
            );
        }
    }

    // What a parked worker costs the first fan-out after a pause: a
    // two-part no-op job after the worker has parked, against the same
    // job with the worker spinning.
    let noop = || dispatch::for_each_part::<()>(2, |_| Ok(())).unwrap();
    let cold = || {
        while dispatch::parked_workers() < dispatch::worker_placement().workers {
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
        let start = std::time::Instant::now();
        noop();
        start.elapsed().as_secs_f64()
    };
    let hot = || {
        wake_and_wait();
        let start = std::time::Instant::now();
        noop();
        start.elapsed().as_secs_f64()
    };
    let mut times = [Vec::new(), Vec::new()];
    for _ in 0..51 {
        times[0].push(cold());
        times[1].push(hot());
    }
    let [cold, hot] = times.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    println!(
        "\nA two-part job's hand-off ({}): {:.1} µs with the worker parked, {:.1} µs with it spinning (medians of 51)",
        dispatch::worker_placement(),
        cold * 1e6,
        hot * 1e6
    );

    // As gllm's commands do: the thread that drives the fan-outs stays on
    // the core without a worker (`dispatch::pin_caller`).
    dispatch::pin_caller();
    println!(
        "\nSmolLM2-135M's shapes, Q4_1 weights, hot: 1 vs 2 threads (µs, median); `auto`: a 2-thread budget"
    );
    println!("as the engine runs it (the GEMV's thread count measured once per shape, see PARALLEL_MARGIN),");
    println!("timed against one thread in its own alternated pair\n");
    println!("| M×K×N | path | 1 thr µs | 2 thr µs | 2 thr / 1 thr | auto: threads | auto / 1 thr |");
    println!("|---|---|---|---|---|---|---|");
    let gemm = GemmKernel::compile(&profile).unwrap();
    for (m, k, n) in [
        (1, 576, 192),
        (1, 576, 576),
        (1, 576, 1536),
        (1, 1536, 576),
        (4, 576, 1536),
        (16, 576, 576),
        (128, 576, 192),
        (512, 576, 1536),
    ] {
        let format = QuantFormat::Q4_1;
        let bytes = matrix(format, n, k);
        let panels = QuantPanels::pack(&QuantMatrix::new(format, n, k, &bytes).unwrap()).unwrap();
        let x: Vec<f32> = (0..m * k).map(|i| ((i % 17) as f32 - 8.0) * 0.1).collect();
        let (mut y, mut y2, mut y3) = (vec![0.0f32; m * n], vec![0.0f32; m * n], vec![0.0f32; m * n]);
        let (path, t) = if m <= 8 {
            let mut t = interleaved_median_times(
                101,
                &mut [&mut || panels.gemv_exact_threads(&x, m, &mut y, 1).unwrap(), &mut || {
                    panels.gemv_exact_threads(&x, m, &mut y2, 2).unwrap()
                }],
            );
            // The engine's call against one thread in a pair of its own: a
            // call right after a forced two-thread one finds half of W and
            // y in the other core's cache, which decode (W from DRAM) never
            // sees. The first 2·(THREAD_TIMING_RUNS + 1) calls are the
            // in-situ measurement.
            for _ in 0..2 * (THREAD_TIMING_RUNS + 1) {
                panels.gemv(&x, m, &mut y3, 2).unwrap();
            }
            let pair = interleaved_median_times(
                101,
                &mut [&mut || panels.gemv_exact_threads(&x, m, &mut y, 1).unwrap(), &mut || {
                    panels.gemv(&x, m, &mut y3, 2).unwrap()
                }],
            );
            t.push(pair[1] / pair[0]);
            ("quantised GEMV", t)
        } else {
            let packed = panels.prefill_panels(&gemm, 2).into_owned();
            let t = interleaved_median_times(
                15,
                &mut [&mut || gemm.gemm_prepacked(&x, &packed, &mut y, m, 1).unwrap(), &mut || {
                    gemm.gemm_prepacked(&x, &packed, &mut y2, m, 2).unwrap()
                }],
            );
            ("dequantised panels, f32 GEMM", t)
        };
        let auto = match t.get(2) {
            Some(&ratio) => {
                let chosen = measured_thread_choices()
                    .into_iter()
                    .find(|(key, _)| {
                        key.shapes.len() == 1
                            && (key.shapes[0].rows, key.shapes[0].cols, key.act_rows)
                                == (n, k, m.min(MAX_ACT_ROWS))
                    })
                    .map_or(1, |(_, c)| c.threads);
                format!("{chosen} | {ratio:.2}×")
            }
            None => "— | —".to_string(),
        };
        println!(
            "| {m}×{k}×{n} | {path} | {:.1} | {:.1} | {:.2}× | {auto} |",
            t[0] * 1e6,
            t[1] * 1e6,
            t[1] / t[0]
        );
    }
    let (k, n) = (576, 1536);
    let bytes = matrix(QuantFormat::Q4_1, n, k);
    let panels = QuantPanels::pack(&QuantMatrix::new(QuantFormat::Q4_1, n, k, &bytes).unwrap()).unwrap();
    let t = interleaved_median_times(
        15,
        &mut [&mut || drop(panels.dequantize_packed(&gemm, 1)), &mut || {
            drop(panels.dequantize_packed(&gemm, 2))
        }],
    );
    println!(
        "\nDequantising a Q4_1 {k}×{n} weight into GEMM panels: {:.0} µs (1 thr), {:.0} µs (2 thr): {:.2} ns per weight",
        t[0] * 1e6,
        t[1] * 1e6,
        t[0] * 1e9 / (k * n) as f64
    );
}
