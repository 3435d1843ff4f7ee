//! Our JIT GEMM against the `gemm` crate (faer's GEMM) in the same run, on the
//! shapes of issue #7. Medians of 7 runs; GFLOP/s and ratios.

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::device::DeviceProfile;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..7)
            .map(|_| {
                let s = Instant::now();
                f();
                s.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let profile = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let ours = GemmKernel::compile(&profile).unwrap();
    println!("{} ({})\n", profile.name, profile.isa);
    println!("| M×K×N | threads | ours GFLOP/s | gemm crate GFLOP/s | ours / gemm |");
    println!("|---|---|---|---|---|");
    for (m, k, n) in [(128, 4096, 4096), (32, 4096, 4096), (1, 4096, 4096), (1, 4096, 11008)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let packed = ours.pack_b(&b, k, n).unwrap();
        let mut c = vec![0.0f32; m * n];
        for threads in [1usize, 2] {
            let t_ours = time(|| ours.gemm_prepacked(&a, &packed, &mut c, m, threads).unwrap());
            let par = if threads == 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
            let t_peer = time(|| {
                // SAFETY: row-major m×k, k×n and m×n buffers of the right sizes;
                // column stride 1, row stride = row length.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            });
            let flops = 2.0 * (m * n * k) as f64;
            println!(
                "| {m}×{k}×{n} | {threads} | {:.1} | {:.1} | {:.2}× |",
                flops / t_ours / 1e9,
                flops / t_peer / 1e9,
                t_peer / t_ours
            );
        }
    }
}
