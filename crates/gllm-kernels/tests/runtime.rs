//! The generate → seal → call path: W^X pages, and a kernel compiled from
//! a trace called on every ISA this host runs.

mod support;

use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::runtime::ExecutableCode;
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

fn host() -> DeviceProfile {
    DeviceProfile::detect().expect("AVX2 or better")
}

/// The permissions column of the /proc/self/maps line containing `addr`.
fn permissions_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut cols = line.split_whitespace();
        let range = cols.next().unwrap();
        let perms = cols.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (usize::from_str_radix(lo, 16).unwrap(), usize::from_str_radix(hi, 16).unwrap());
        if (lo..hi).contains(&addr) {
            return perms.to_string();
        }
    }
    panic!("{addr:#x} is not mapped");
}

#[test]
fn sealed_code_pages_are_read_execute_not_writable() {
    let code = ExecutableCode::new(&[0xc3; 100]).unwrap();
    let perms = permissions_of(code.entry() as usize);
    assert!(perms.starts_with("r-x"), "code pages are {perms}");
    assert_eq!(code.bytes(), &[0xc3; 100][..]);
    let kernel = add_kernel(&host());
    let perms = permissions_of(kernel.code().entry() as usize);
    assert!(perms.starts_with("r-x"), "kernel pages are {perms}");
}

#[test]
fn empty_code_is_rejected() {
    assert!(ExecutableCode::new(&[]).is_err());
}

/// The `add` op's loop kernel, compiled from its trace for `profile`.
fn add_kernel(profile: &DeviceProfile) -> LoopKernel {
    let trace = ScalarOpRegistry::global().trace(OpKind::Add).unwrap();
    LoopKernel::compile(&LoopProgram::from_trace(&trace, Vec::new()).unwrap(), profile).unwrap()
}

#[test]
fn a_compiled_kernel_runs_on_every_host_isa_and_writes_nothing_past_its_output() {
    for profile in support::profiles() {
        let kernel = add_kernel(&profile);
        assert_eq!(kernel.isa(), profile.isa);
        let mut rng = support::Rng(0x9e37_79b9_7f4a_7c15);
        for n in 0..=100 {
            let a: Vec<f32> = (0..n).map(|_| rng.uniform(-4.0, 4.0)).collect();
            let b: Vec<f32> = (0..n).map(|_| rng.uniform(-4.0, 4.0)).collect();
            // Guard elements after `n` catch any write past the end.
            let mut out = vec![-7.0f32; n + 16];
            kernel.run(&[&a, &b], &mut [&mut out[..n]], 1, n, 1).unwrap();
            for i in 0..n {
                assert_eq!(out[i].to_bits(), (a[i] + b[i]).to_bits(), "{} n={n} i={i}", profile.isa);
            }
            assert!(out[n..].iter().all(|&v| v == -7.0), "{} n={n}: wrote past the end", profile.isa);
        }
    }
}

#[test]
fn length_mismatch_is_an_error() {
    let kernel = add_kernel(&host());
    let mut out = vec![0.0; 3];
    assert!(kernel.run(&[&[1.0; 3], &[1.0; 2]], &mut [&mut out], 1, 3, 1).is_err());
}

#[test]
fn presets_have_documented_registers_and_caches() {
    let hsw = DeviceProfile::preset("haswell").unwrap();
    assert_eq!((hsw.isa, hsw.num_simd_regs(), hsw.caches.l1d.size_bytes), (Isa::Avx2, 16, 32 << 10));
    assert_eq!((hsw.caches.l2.size_bytes, hsw.caches.l3.size_bytes), (256 << 10, 8 << 20));
    let zen5 = DeviceProfile::preset("zen5").unwrap();
    assert_eq!((zen5.isa, zen5.num_simd_regs(), zen5.caches.l1d.size_bytes), (Isa::Avx512, 32, 48 << 10));
    assert_eq!((zen5.caches.l2.size_bytes, zen5.caches.l3.size_bytes), (1 << 20, 32 << 20));
    let skx = DeviceProfile::preset("skylake-x").unwrap();
    assert_eq!((skx.num_simd_regs(), skx.caches.l1d.size_bytes), (32, 32 << 10));
    assert!(DeviceProfile::preset("pentium-pro").is_err());
    // AVX2 forced on an AVX-512 machine keeps its caches but has 16 registers.
    let forced = zen5.clone().with_isa(Isa::Avx2).unwrap();
    assert_eq!((forced.num_simd_regs(), forced.caches), (16, zen5.caches));
    assert!(hsw.with_isa(Isa::Avx512).is_err());
}
