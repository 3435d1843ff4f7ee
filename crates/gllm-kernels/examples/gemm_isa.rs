//! GFLOP/s of the JIT GEMM on each ISA this CPU runs, for one shape:
//! `cargo run --release --example gemm_isa [M K N]`.
use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::device::{DeviceProfile, Isa};
use std::time::Instant;
fn main() {
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let (m, k, n) = match args[..] {
        [m, k, n] => (m, k, n),
        _ => (128, 4096, 4096),
    };
    let host = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    for isa in Isa::ALL {
        if !host.features.supports(isa) {
            continue;
        }
        let mut p = host.clone().with_isa(isa).unwrap();
        if let Ok(l1) = std::env::var("L1_KIB") {
            p.caches.l1d.size_bytes = l1.parse::<usize>().unwrap() << 10;
        }
        let g = GemmKernel::compile(&p).unwrap();
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let packed = g.pack_b(&b, k, n).unwrap();
        let mut c = vec![0.0; m * n];
        let mut ts: Vec<f64> = (0..7)
            .map(|_| {
                let t = Instant::now();
                g.gemm_prepacked(&a, &packed, &mut c, m, 1).unwrap();
                t.elapsed().as_secs_f64()
            })
            .collect();
        ts.sort_by(f64::total_cmp);
        let bl = g.blocking();
        println!(
            "{isa} {}×{} KC {} MC {}: {:.1} GFLOP/s",
            bl.mr,
            bl.nr,
            bl.kc,
            bl.mc,
            2.0 * (m * n * k) as f64 / ts[3] / 1e9
        );
    }
}
