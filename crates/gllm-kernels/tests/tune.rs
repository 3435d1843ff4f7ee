//! Per-kernel-class ISA choice: timed on this host, forced by a profile,
//! cached, and honoured by every code generator.

mod support;

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::{DeviceProfile, Isa, KernelClass};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use gllm_kernels::tune::{confirm_isas, Decision};
use std::sync::Arc;

#[test]
fn every_class_is_timed_on_every_isa_the_host_runs_and_the_choice_is_applied() {
    let host = DeviceProfile::detect().unwrap();
    let (tuned, timings) = confirm_isas(&host).unwrap();
    let runnable: Vec<Isa> = support::profiles().iter().map(|p| p.isa).collect();
    assert_eq!(timings.classes.len(), KernelClass::ALL.len());
    for c in &timings.classes {
        let Decision::Timed(times) = &c.decision else {
            panic!("{} was not timed: {:?}", c.class, c.decision)
        };
        let mut timed: Vec<Isa> = times.iter().map(|&(isa, _)| isa).collect();
        timed.sort();
        assert_eq!(timed, runnable, "{}: every ISA this host runs is a candidate", c.class);
        assert!(times.iter().all(|&(_, s)| s.is_finite() && s > 0.0), "{times:?}");
        assert!(runnable.contains(&c.isa));
        assert_eq!(tuned.isa_for(c.class), c.isa, "the tuned profile carries the choice");
    }
    // Cached: the second call reuses the timings.
    let (_, again) = confirm_isas(&host).unwrap();
    assert!(Arc::ptr_eq(&timings, &again));
    // The tuned profile has every class set, so it is not timed again.
    let (_, of_tuned) = confirm_isas(&tuned).unwrap();
    assert!(of_tuned.classes.iter().all(|c| c.decision == Decision::Forced));
}

#[test]
fn a_forced_class_is_not_timed_and_a_foreign_profile_is_not_run() {
    let host = DeviceProfile::detect().unwrap();
    let forced = host.clone().with_kernel_isa(KernelClass::Loops, Isa::Avx2).unwrap();
    let (tuned, timings) = confirm_isas(&forced).unwrap();
    assert_eq!(timings.classes[0].decision, Decision::Forced);
    assert_eq!(tuned.isa_for(KernelClass::Loops), Isa::Avx2);
    assert!(matches!(timings.classes[1].decision, Decision::Timed(_)));
    if !host.features.supports(Isa::Avx512) {
        let zen5 = DeviceProfile::preset("zen5").unwrap();
        let (same, timings) = confirm_isas(&zen5).unwrap();
        assert!(timings.classes.iter().all(|c| c.decision == Decision::NotOnHost && c.isa == Isa::Avx512));
        assert_eq!(same, zen5);
    }
}

#[test]
fn code_generators_take_their_class_isa() {
    // A zen5 profile (AVX-512) with both classes forced to AVX2 compiles
    // AVX2 code that runs here; its blocking follows the matmul ISA.
    let zen5 = DeviceProfile::preset("zen5").unwrap();
    let p = zen5.with_kernel_isa(KernelClass::Loops, Isa::Avx2).unwrap();
    let p = p.with_kernel_isa(KernelClass::Matmul, Isa::Avx2).unwrap();
    assert!(p.runs_on_host());
    assert_eq!(p.gemm_blocking().nr, 16);
    let gemm = GemmKernel::compile(&p).unwrap();
    assert_eq!(gemm.isa(), Isa::Avx2);
    let trace = ScalarOpRegistry::global().trace(OpKind::Silu).unwrap();
    let silu = LoopKernel::compile(&LoopProgram::from_trace(&trace, vec![]).unwrap(), &p).unwrap();
    assert_eq!(silu.isa(), Isa::Avx2);
    // Forcing only one class leaves the other on the profile's ISA.
    let host = DeviceProfile::detect().unwrap();
    if host.features.supports(Isa::Avx512) {
        let mixed = host.with_kernel_isa(KernelClass::Loops, Isa::Avx2).unwrap();
        assert_eq!(GemmKernel::compile(&mixed).unwrap().isa(), Isa::Avx512);
        let silu = LoopKernel::compile(&LoopProgram::from_trace(&trace, vec![]).unwrap(), &mixed).unwrap();
        assert_eq!(silu.isa(), Isa::Avx2);
    } else {
        eprintln!("SKIPPED: mixed AVX2/AVX-512 classes need an AVX-512 host");
    }
}
