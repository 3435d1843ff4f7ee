//! Throughput of the vector instructions the code generators lean on, in
//! cycles per instruction (12 independent instructions per loop iteration),
//! and of the two exp forms. The cost model behind docs/codegen.md's
//! "observations on this machine". `cargo run --release --example uarch_probe`
//!
//! Cycles come from the FMA chain: a 4-cycle-latency dependent `vfmadd` per
//! iteration gives the clock without performance counters.

use gllm_kernels::codegen::math;
use gllm_kernels::codegen::pool::{ConstPool, POOL_REG};
use gllm_kernels::codegen::vasm::{Mem, Src, VecAsm, V};
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::runtime::ExecutableCode;
use iced_x86::code_asm::*;
use std::time::Instant;

type Emit<'a> = &'a dyn Fn(&mut VecAsm, &mut ConstPool, u8);

/// Seconds per loop iteration of `per_iter` copies of `emit` (register
/// r = 0..per_iter as destination), `rsi` pointing at a 64-byte aligned buffer.
fn seconds_per_iter(isa: Isa, per_iter: u8, emit: Emit) -> f64 {
    let mut asm = VecAsm::new(isa).unwrap();
    let mut pool = ConstPool::new();
    asm.a.mov(POOL_REG, rdx).unwrap();
    for r in 0..16u8 {
        asm.xor(V(r), V(r), Src::Reg(V(r))).unwrap();
    }
    let mut top = asm.a.create_label();
    asm.a.set_label(&mut top).unwrap();
    for r in 0..per_iter {
        emit(&mut asm, &mut pool, r);
    }
    asm.a.dec(rdi).unwrap();
    asm.a.jnz(top).unwrap();
    asm.vzeroupper().unwrap();
    asm.a.ret().unwrap();
    let code = ExecutableCode::new(&asm.a.assemble(0).unwrap()).unwrap();
    let pool = pool.finish();
    // SAFETY: the code just assembled takes (count, f32 buffer, constant pool), sealed r-x.
    let f: extern "C" fn(u64, *const f32, *const u8) = unsafe { std::mem::transmute(code.entry()) };
    #[repr(align(64))]
    struct Buf([f32; 64]);
    let buf = Buf([1.0; 64]);
    let iters = 2_000_000u64;
    f(iters / 10, buf.0.as_ptr(), pool.as_ptr());
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            f(iters, buf.0.as_ptr(), pool.as_ptr());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    best / iters as f64
}

fn main() {
    let host = DeviceProfile::detect().expect("AVX2 or AVX-512 CPU");
    // One dependent FMA per iteration: 4 cycles on every recent x86 core.
    let cycle =
        seconds_per_iter(host.isa, 1, &|a, _, _| a.fmadd231(V(0), V(14), Src::Reg(V(15))).unwrap()) / 4.0;
    println!("clock ≈ {:.2} GHz (from a dependent FMA chain)\n", 1e-9 / cycle);
    println!("| instruction | ISA | cycles per instruction |\n|---|---|---|");
    let mut isas = vec![Isa::Avx2];
    if host.features.supports(Isa::Avx512) {
        isas.insert(0, Isa::Avx512);
    }
    for &isa in &isas {
        let cases: Vec<(&str, Emit)> = vec![
            ("fma reg", &|a, _, r| a.fmadd231(V(r), V(14), Src::Reg(V(15))).unwrap()),
            ("add reg", &|a, _, r| a.add(V(r), V(14), Src::Reg(V(15))).unwrap()),
            ("fma + max (alternating)", &|a, _, r| {
                if r % 2 == 0 {
                    a.fmadd231(V(r), V(14), Src::Reg(V(15))).unwrap()
                } else {
                    a.max(V(r), V(14), Src::Reg(V(15))).unwrap()
                }
            }),
            ("load (full vector)", &|a, _, r| a.load(V(r), Src::Mem(Mem::base(rsi, 64))).unwrap()),
            ("fma with full-vector memory operand", &|a, _, r| {
                a.fmadd231(V(r), V(14), Src::Mem(Mem::base(rsi, 64))).unwrap()
            }),
            ("fma + max, full-vector memory operands", &|a, _, r| {
                if r % 2 == 0 {
                    a.fmadd231(V(r), V(14), Src::Mem(Mem::base(rsi, 64))).unwrap()
                } else {
                    a.max(V(r), V(14), Src::Mem(Mem::base(rsi, 128))).unwrap()
                }
            }),
            ("fma + max, pool constants (broadcast on AVX-512)", &|a, p, r| {
                if r % 2 == 0 {
                    a.fmadd231(V(r), V(14), Src::Mem(p.splat(1.5))).unwrap()
                } else {
                    a.max(V(r), V(14), Src::Mem(p.splat(0.5))).unwrap()
                }
            }),
            ("store", &|a, _, r| a.store(Mem::base(rsi, 64 * (r as i32 % 2)), V(r)).unwrap()),
            ("div", &|a, _, r| a.div(V(r), V(14), Src::Reg(V(15))).unwrap()),
            ("permps", &|a, _, r| a.permps(V(r), V(14), Src::Reg(V(15))).unwrap()),
        ];
        for (name, emit) in cases {
            let t = seconds_per_iter(isa, 12, emit) / 12.0;
            println!("| {name} | {isa} | {:.2} |", t / cycle);
        }
        if isa == Isa::Avx512 {
            let t = seconds_per_iter(isa, 12, &|a, _, r| a.scalef(V(r), V(14), V(15)).unwrap()) / 12.0;
            println!("| scalef | {isa} | {:.2} |", t / cycle);
        }
    }
    println!("\n| exp form | ISA | cycles per vector |\n|---|---|---|");
    for &isa in &isas {
        for temps in [2usize, 3] {
            if isa == Isa::Avx2 && temps == 3 {
                continue;
            }
            // Three independent exps per iteration (4 registers each).
            let t = seconds_per_iter(isa, 3, &|a, p, r| {
                let base = 1 + 4 * r;
                let t: Vec<V> = (1..=temps as u8).map(|k| V(base + k)).collect();
                math::exp(a, p, V(base), V(0), &t).unwrap()
            }) / 3.0;
            let form =
                if temps >= 3 && isa == Isa::Avx512 { "table (2^(i/16), degree 3)" } else { "degree 6" };
            println!("| {form} | {isa} | {:.1} |", t / cycle);
        }
    }
}
