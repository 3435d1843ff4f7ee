//! JIT GEMM throughput against this machine's FMA peak (an FMA-chain probe
//! run in the same process) and OpenBLAS (numpy, run in the same benchmark
//! when python3 + numpy are available). Medians of several runs.
//! `cargo bench -p gllm-kernels --bench gemm`

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::codegen::vasm::{Src, VecAsm, V};
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::runtime::ExecutableCode;
use std::process::Command;

mod common;
use common::{median_time, warm_median_time};
use gllm_kernels::tune::ReadProbe;

/// GFLOP/s of independent FMA chains on one core (12 accumulators).
fn fma_peak(isa: Isa) -> f64 {
    let mut asm = VecAsm::new(isa).unwrap();
    use iced_x86::code_asm::*;
    let mut top = asm.a.create_label();
    for r in 0..14u8 {
        asm.xor(V(r), V(r), Src::Reg(V(r))).unwrap();
    }
    asm.a.set_label(&mut top).unwrap();
    for r in 0..12u8 {
        asm.fmadd231(V(r), V(12), Src::Reg(V(13))).unwrap();
    }
    asm.a.dec(rdi).unwrap();
    asm.a.jnz(top).unwrap();
    asm.vzeroupper().unwrap();
    asm.a.ret().unwrap();
    let code = ExecutableCode::new(&asm.a.assemble(0).unwrap()).unwrap();
    // SAFETY: the code just assembled is an `extern "C" fn(u64)` (a loop count in rdi), sealed r-x.
    let f: extern "C" fn(u64) = unsafe { std::mem::transmute(code.entry()) };
    let iters = 20_000_000u64;
    let t = median_time(5, || {
        f(iters);
    });
    (iters * 12 * isa.f32_lanes() as u64 * 2) as f64 / t / 1e9
}

fn openblas(m: usize, n: usize, k: usize, threads: usize) -> Option<f64> {
    let script = format!(
        "import numpy as np, time\n\
         a=np.random.rand({m},{k}).astype(np.float32); b=np.random.rand({k},{n}).astype(np.float32)\n\
         a@b\n\
         ts=[]\n\
         for _ in range(7):\n\
         \x20t=time.perf_counter(); a@b; ts.append(time.perf_counter()-t)\n\
         print(sorted(ts)[3])"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(2.0 * (m * n * k) as f64 / secs / 1e9)
}

fn main() {
    let profile = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    let peak = fma_peak(profile.isa);
    let peak_ymm = fma_peak(Isa::Avx2);
    let g = GemmKernel::compile(&profile).unwrap();
    let b = g.blocking();
    println!(
        "{} ({}), microkernel {}×{}, KC {}, MC {}, NC {}\nFMA peak per core measured now: {peak:.0} GFLOP/s ({}), {peak_ymm:.0} GFLOP/s (ymm)\n",
        profile.name, profile.isa, b.mr, b.nr, b.kc, b.mc, b.nc, profile.isa
    );
    println!("| M×K×N | threads | ours GFLOP/s | % of peak | OpenBLAS GFLOP/s | ours / OpenBLAS |");
    println!("|---|---|---|---|---|---|");
    let probe = ReadProbe::new(&profile).expect("the read probe compiles");
    let mut gemv_rows = Vec::new();
    for (m, k, n) in [(128, 4096, 4096), (32, 4096, 4096), (1, 4096, 4096), (1, 4096, 11008)] {
        let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
        let bm: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
        let packed = g.pack_b(&bm, k, n).unwrap();
        let mut c = vec![0.0f32; m * n];
        let times: Vec<f64> = if m == 1 {
            // The GEMV against the read probe, interleaved round by round.
            let mut c2 = vec![0.0f32; m * n];
            let t = common::interleaved_median_times(
                15,
                &mut [
                    &mut || probe.run(1),
                    &mut || probe.run(2),
                    &mut || g.gemm_prepacked(&a, &packed, &mut c, m, 1).unwrap(),
                    &mut || g.gemm_prepacked(&a, &packed, &mut c2, m, 2).unwrap(),
                ],
            );
            let gbs = |secs: f64| (k * n * 4) as f64 / secs / 1e9;
            let probe_gbs = |secs: f64| probe.bytes() / secs / 1e9;
            gemv_rows.push((k, n, probe_gbs(t[0]), probe_gbs(t[1]), gbs(t[2]), gbs(t[3])));
            vec![t[2], t[3]]
        } else {
            [1usize, 2]
                .iter()
                .map(|&threads| {
                    g.gemm_prepacked(&a, &packed, &mut c, m, threads).unwrap();
                    median_time(7, || g.gemm_prepacked(&a, &packed, &mut c, m, threads).unwrap())
                })
                .collect()
        };
        for (threads, t) in [1usize, 2].into_iter().zip(times) {
            let ours = 2.0 * (m * n * k) as f64 / t / 1e9;
            let ob = openblas(m, n, k, threads);
            println!(
                "| {m}×{k}×{n} | {threads} | {ours:.1} | {:.0}% | {} | {} |",
                100.0 * ours / (peak * threads as f64),
                ob.map_or("n/a".into(), |v| format!("{v:.1}")),
                ob.map_or("n/a".into(), |v| format!("{:.2}×", ours / v)),
            );
        }
    }
    println!(
        "\nGEMV (M = 1) against the 8-stream read probe (192 MiB), measured in the same interleaved rounds:\n"
    );
    println!("| K×N | read probe 1 thr GB/s | GEMV 1 thr GB/s (% of probe) | read probe 2 thr GB/s (× 1 thr) | GEMV 2 thr GB/s (% of 2-thr probe) | GEMV 2 thr / 1-thr probe |");
    println!("|---|---|---|---|---|---|");
    for (k, n, p1, p2, g1, g2) in gemv_rows {
        println!(
            "| {k}×{n} | {p1:.1} | {g1:.1} ({:.0}%) | {p2:.1} ({:.2}×) | {g2:.1} ({:.0}%) | {:.2}× |",
            100.0 * g1 / p1,
            p2 / p1,
            100.0 * g2 / p2,
            g2 / p1
        );
    }

    fused_rows(&profile, &g);
}

/// Tile-level RMSNorm → GEMM against the GEMM alone, shared-input Q/K/V
/// against three GEMMs, and the JIT compile time of a GEMM with an epilogue.
fn fused_rows(profile: &DeviceProfile, g: &GemmKernel) {
    use gllm_kernels::codegen::gemm::{gemm_group, GemmEpilogue, GroupMember, TileProducer};
    use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
    let (m, k, n) = (128, 4096, 4096);
    let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01 - 0.06).collect();
    let w: Vec<f32> = (0..k).map(|i| 1.0 + (i % 5) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let packed = g.pack_b(&b, k, n).unwrap();
    let rms_t = ScalarOpRegistry::global().trace(OpKind::RmsNorm).unwrap();
    let rms = LoopKernel::compile(&LoopProgram::from_trace(&rms_t, vec![1e-5]).unwrap(), profile).unwrap();
    let mut c = vec![0.0f32; m * n];
    let time = |f: &mut dyn FnMut()| warm_median_time(7, f);
    let alone = time(&mut || g.gemm_prepacked(&x, &packed, &mut c, m, 1).unwrap());
    let fused = time(&mut || {
        let none: [&[f32]; 0] = [];
        let weight = [&w[..]];
        let mut members = [GroupMember { gemm: g, b: &packed, c: &mut c, extras: &none, from_members: &[] }];
        gemm_group(&x, m, Some(TileProducer { kernel: &rms, inputs: &weight }), &mut members, 1).unwrap();
    });
    println!("\nRMSNorm → GEMM tile-fused, {m}×{k}×{n}, 1 thread: {:.2} ms vs GEMM alone {:.2} ms = {:.3}× (target ≤ 1.05×)", fused * 1e3, alone * 1e3, fused / alone);
    let (nq, nkv) = (4096, 1024);
    let bq = g.pack_b(&b[..k * nq], k, nq).unwrap();
    let bk = g.pack_b(&b[..k * nkv], k, nkv).unwrap();
    let bv = g.pack_b(&b[k * nkv..2 * k * nkv], k, nkv).unwrap();
    let (mut cq, mut ck, mut cv) = (vec![0.0; m * nq], vec![0.0; m * nkv], vec![0.0; m * nkv]);
    let separate = time(&mut || {
        g.gemm_prepacked(&x, &bq, &mut cq, m, 1).unwrap();
        g.gemm_prepacked(&x, &bk, &mut ck, m, 1).unwrap();
        g.gemm_prepacked(&x, &bv, &mut cv, m, 1).unwrap();
    });
    let shared = time(&mut || {
        let none: [&[f32]; 0] = [];
        let mut members = [
            GroupMember { gemm: g, b: &bq, c: &mut cq, extras: &none, from_members: &[] },
            GroupMember { gemm: g, b: &bk, c: &mut ck, extras: &none, from_members: &[] },
            GroupMember { gemm: g, b: &bv, c: &mut cv, extras: &none, from_members: &[] },
        ];
        gemm_group(&x, m, None, &mut members, 1).unwrap();
    });
    println!(
        "Q/K/V ({m}×{k} · {nq}/{nkv}/{nkv}) sharing one A pack: {:.2} ms vs three GEMMs {:.2} ms = {:.3}×",
        shared * 1e3,
        separate * 1e3,
        shared / separate
    );
    // Attention's batched GEMMs read heads in place (strided views, K
    // transposed while packing): against the same GEMMs on contiguous copies.
    {
        use gllm_kernels::graph::{BatchLayout, MatMulParams};
        let (heads, kv, hd, seq) = (9usize, 3usize, 64usize, 512usize);
        let q: Vec<f32> = (0..seq * heads * hd).map(|i| (i % 17) as f32 * 0.01).collect();
        let kk: Vec<f32> = (0..seq * kv * hd).map(|i| (i % 13) as f32 * 0.01).collect();
        let mut s = vec![0.0f32; heads * seq * seq];
        let qk = MatMulParams {
            transpose_b: true,
            batch: heads,
            b_shared_by: heads / kv,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Stacked,
            ..MatMulParams::new(seq, seq, hd)
        };
        let batched = time(&mut || g.gemm_batched(&q, &kk, &mut s, &qk, &[], 1).unwrap());
        // Per head its own (already gathered) Q, Kᵀ and scores.
        let a1 = vec![vec![0.5f32; seq * hd]; heads];
        let b1 = vec![vec![0.5f32; hd * seq]; heads];
        let mut c1 = vec![vec![0.0f32; seq * seq]; heads];
        let plain = time(&mut || {
            for h in 0..heads {
                g.gemm(&a1[h], &b1[h], &mut c1[h], (seq, seq, hd), 1).unwrap();
            }
        });
        println!(
            "Attention QKᵀ, {heads} heads ({kv} KV) × {seq}² × {hd}, batched in place: {:.2} ms vs {heads} GEMMs on gathered copies {:.2} ms = {:.2}× (gathering not counted)",
            batched * 1e3,
            plain * 1e3,
            batched / plain
        );
    }
    // Bias·SiLU where the microkernel leaves SiLU its registers (AVX-512),
    // else bias·ReLU (AVX2's 6×16 tile leaves 4; SiLU needs 5).
    let bias = &ScalarOpRegistry::global().trace(OpKind::BiasAdd).unwrap().body;
    let with = |kind: OpKind| {
        let act = &ScalarOpRegistry::global().trace(kind).unwrap().body;
        GemmEpilogue::new().then(bias, 0, &[]).unwrap().then(act, 0, &[]).unwrap()
    };
    let (act_name, epi) = match GemmKernel::compile_with_epilogue(profile, &with(OpKind::Silu)) {
        Ok(_) => ("SiLU", with(OpKind::Silu)),
        Err(_) => ("ReLU", with(OpKind::Relu)),
    };
    let compile = median_time(21, || {
        std::hint::black_box(GemmKernel::compile_with_epilogue(profile, &epi).ok());
    });
    // First use also generates the partial-row and GEMV variants.
    let (a1, b1, bias1) = (vec![0.5f32; 7 * 64], vec![0.25f32; 64 * 64], vec![0.0f32; 64]);
    let first_use = median_time(21, || {
        let kern = GemmKernel::compile_with_epilogue(profile, &epi).unwrap();
        let mut c1 = vec![0.0f32; 7 * 64];
        kern.gemm_with(&a1, &b1, &mut c1, (7, 64, 64), &[&bias1], 1).unwrap();
    });
    println!(
        "JIT compile of a GEMM with a bias·{act_name} epilogue: {:.0} µs (target < 1 ms); with the partial-row and GEMV variants generated on first use: {:.0} µs",
        compile * 1e6,
        first_use * 1e6
    );
}
