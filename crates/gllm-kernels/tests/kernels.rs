//! Phase 3a: every non-GEMM JIT kernel against its scalar reference
//! function, on random data, all lengths 0..=300 and a few large ones, under
//! both ISAs; MathApprox on a sample (the exhaustive check is
//! `cargo run --release --example math_accuracy`).

mod support;

use gllm_kernels::oracle::{self, params_for};
use support::profiles;

use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::scalar::{Arg, FnForm, OpKind, RegisteredOp, Returns, ScalarOpRegistry};
use support::Rng;

fn random_inputs(op: &RegisteredOp, rng: &mut Rng, rows: usize, n: usize, specials: bool) -> Vec<Vec<f32>> {
    let sig = op.signature();
    let per_element = sig.form() == FnForm::PerElement;
    sig.inputs()
        .map(|(_, a)| {
            let broadcast = matches!(a, Arg::Input { role, .. } if *role != gllm_kernels::scalar::TensorRole::Activation)
                && rows > 1;
            let len = if broadcast { n } else { rows * n };
            let sv = support::special_values();
            (0..len)
                .map(|i| {
                    if specials && per_element && i % 3 == 0 {
                        sv[(i / 3) % sv.len()]
                    } else {
                        rng.row_value()
                    }
                })
                .collect()
        })
        .collect()
}

/// The oracle at every length 0..=300 and a few large ones (rows 1 and 3,
/// random and small-integer data, operands against both guard pages): the
/// bound is `Tolerance::for_op`, the one table of per-op bounds.
fn check_op(op: &RegisteredOp, profile: &DeviceProfile, lengths: &[usize]) {
    let trace = op.trace().unwrap();
    let report = oracle::test_loop_op_at(op, &trace, profile, lengths, &oracle::run_loop_kernel);
    assert!(report.passed(), "{} on {}: {}", op.kind(), profile.isa, report.failure.unwrap_or_default());
    assert!(
        report.cases >= lengths.len(),
        "{} on {}: only {} cases ran",
        op.kind(),
        profile.isa,
        report.cases
    );
}

fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=300).collect();
    v.extend([1021, 4099, 65_537]);
    v
}

#[test]
fn every_builtin_non_gemm_op_matches_its_reference() {
    let registry = ScalarOpRegistry::global();
    for profile in profiles() {
        for op in registry.iter().filter(|o| o.kind() != OpKind::MatMul) {
            check_op(op, &profile, &lengths());
        }
    }
}

#[test]
fn unseen_ops_compile_with_no_emitter_change() {
    let (registry, kinds) = support::unseen_registry();
    for profile in profiles() {
        for &k in &kinds {
            check_op(registry.get(k).unwrap(), &profile, &lengths());
        }
    }
}

#[test]
fn threads_give_identical_results() {
    let registry = ScalarOpRegistry::global();
    let mut rng = Rng(7);
    let profile = profiles().pop().unwrap();
    for kind in [OpKind::Silu, OpKind::RmsNorm, OpKind::Softmax, OpKind::ReduceSum] {
        let op = registry.get(kind).unwrap();
        let prog = LoopProgram::from_trace(&op.trace().unwrap(), params_for(op)).unwrap();
        let kernel = LoopKernel::compile(&prog, &profile).unwrap();
        let (rows, n) = if op.signature().form() == FnForm::PerElement { (1, 100_003) } else { (37, 1001) };
        let inputs = random_inputs(op, &mut rng, rows, n, false);
        let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
        let out_len = if op.signature().returns() == Returns::RowScalar { rows } else { rows * n };
        let mut one = vec![0.0; out_len];
        let mut two = vec![1.0; out_len];
        kernel.run(&ins, &mut [&mut one], rows, n, 1).unwrap();
        kernel.run(&ins, &mut [&mut two], rows, n, 2).unwrap();
        assert!(one.iter().zip(&two).all(|(a, b)| a.to_bits() == b.to_bits()), "{kind}");
    }
}

#[test]
fn bad_arguments_are_errors() {
    let op = ScalarOpRegistry::global().get(OpKind::Add).unwrap();
    let prog = LoopProgram::from_trace(&op.trace().unwrap(), vec![]).unwrap();
    let kernel = LoopKernel::compile(&prog, &profiles()[0]).unwrap();
    let a = vec![1.0; 10];
    let b = vec![1.0; 7];
    let mut out = vec![0.0; 10];
    let e = kernel.run(&[&a, &b], &mut [&mut out], 1, 10, 1).unwrap_err();
    assert_eq!(e.to_string(), "input 1 has 7 elements; expected 10 (1 rows × 10) or one row of 10");
    let e = kernel.run(&[&a], &mut [&mut out], 1, 10, 1).unwrap_err();
    assert_eq!(e.to_string(), "kernel takes 2 inputs and 1 outputs, got 1 and 1");
    let mut short = vec![0.0; 9];
    let e = kernel.run(&[&a, &a], &mut [&mut short], 1, 10, 1).unwrap_err();
    assert_eq!(e.to_string(), "output 0 has 9 elements, expected 10");
}

#[test]
fn streaming_stores_give_the_same_results_at_any_alignment() {
    let registry = ScalarOpRegistry::global();
    let mut rng = Rng(21);
    for profile in profiles() {
        for kind in [OpKind::Silu, OpKind::Add, OpKind::RmsNorm, OpKind::Softmax, OpKind::LayerNorm] {
            let op = registry.get(kind).unwrap();
            let prog = LoopProgram::from_trace(&op.trace().unwrap(), params_for(op)).unwrap();
            let plain = LoopKernel::compile(&prog, &profile).unwrap();
            let nt = LoopKernel::compile(&prog.clone().with_streaming_stores(true), &profile).unwrap();
            let rows = if op.signature().form() == FnForm::PerElement { 1 } else { 3 };
            for n in [0, 1, 5, 16, 17, 33, 100, 257] {
                let inputs = random_inputs(op, &mut rng, rows, n, false);
                let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
                let mut want = vec![0.0; rows * n];
                plain.run(&ins, &mut [&mut want], rows, n, 1).unwrap();
                for offset in 0..16 {
                    let mut buf = vec![f32::NAN; rows * n + 16];
                    nt.run(&ins, &mut [&mut buf[offset..offset + rows * n]], rows, n, 1).unwrap();
                    let got = &buf[offset..offset + rows * n];
                    assert!(
                        got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{kind} {} n={n} offset={offset}",
                        profile.isa
                    );
                    assert!(
                        buf[..offset].iter().chain(&buf[offset + rows * n..]).all(|v| v.is_nan()),
                        "wrote outside"
                    );
                }
            }
        }
    }
}
