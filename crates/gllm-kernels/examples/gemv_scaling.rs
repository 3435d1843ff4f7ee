//! GEMV (M = 1, prepacked B) on 1 and 2 threads, many repetitions, to see
//! the spread: `cargo run --release --example gemv_scaling [K N]`.
use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::device::DeviceProfile;
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (k, n) = match args[..] {
        [k, n] => (k, n),
        _ => (4096, 4096),
    };
    let p = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let g = GemmKernel::compile(&p).unwrap();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32).collect();
    let packed = g.pack_b(&b, k, n).unwrap();
    let x = vec![1.0f32; k];
    let mut y = vec![0.0f32; n];
    for threads in [1usize, 2, 1, 2] {
        let mut ts: Vec<f64> = (0..31)
            .map(|_| {
                let t = Instant::now();
                g.gemm_prepacked(&x, &packed, &mut y, 1, threads).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        let gbs = |t: f64| (k * n * 4) as f64 / t / 1e9;
        println!(
            "{threads} thread(s): B at {:.1} GB/s median (min time {:.1}, max time {:.1})",
            gbs(ts[15]),
            gbs(ts[0]),
            gbs(ts[30])
        );
    }
}
