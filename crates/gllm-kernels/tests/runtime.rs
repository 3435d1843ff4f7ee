//! The generate → seal → call path: W^X pages and the demo kernel on both ISAs.

use gllm_kernels::codegen::MulAddKernel;
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::runtime::ExecutableCode;

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
    let kernel = MulAddKernel::compile(&host()).unwrap();
    let perms = permissions_of(kernel.code().entry() as usize);
    assert!(perms.starts_with("r-x"), "kernel pages are {perms}");
}

#[test]
fn empty_code_is_rejected() {
    assert!(ExecutableCode::new(&[]).is_err());
}

/// Deterministic pseudo-random f32 in [-4, 4) (xorshift; no test dependency on rand).
fn random_vec(seed: &mut u64, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 8.0 - 4.0
        })
        .collect()
}

fn check_kernel(isa: Isa) {
    let profile = host().with_isa(isa).unwrap();
    let kernel = MulAddKernel::compile(&profile).unwrap();
    assert_eq!(kernel.isa(), isa);
    let mut seed = 0x9e37_79b9_7f4a_7c15;
    for n in 0..=300 {
        let a = random_vec(&mut seed, n);
        let b = random_vec(&mut seed, n);
        let init = random_vec(&mut seed, n + 16);
        // Guard elements after `n` catch any write past the end.
        let mut out = init.clone();
        kernel.run(&a, &b, &mut out[..n]).unwrap();
        for i in 0..n {
            let want = a[i].mul_add(b[i], init[i]);
            assert_eq!(out[i].to_bits(), want.to_bits(), "{isa} n={n} i={i}");
        }
        assert_eq!(&out[n..], &init[n..], "{isa} n={n}: wrote past the end");
    }
}

#[test]
fn mul_add_kernel_matches_scalar_avx2() {
    check_kernel(Isa::Avx2);
}

#[test]
fn mul_add_kernel_matches_scalar_avx512() {
    if !host().features.supports(Isa::Avx512) {
        eprintln!("AVX-512 not on this CPU; its kernel cannot be run here");
        return;
    }
    check_kernel(Isa::Avx512);
}

#[test]
fn length_mismatch_is_an_error() {
    let kernel = MulAddKernel::compile(&host()).unwrap();
    let mut out = vec![0.0; 3];
    assert!(kernel.run(&[1.0; 3], &[1.0; 2], &mut out).is_err());
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
