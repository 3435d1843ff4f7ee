//! The differential tester (`gllm test-ops`) over every registered op —
//! built-in and registered at run time — every stored weight format and
//! every ISA this host runs; and proof that it catches broken kernels: an
//! off-by-one tail, and a read one element past an input (which faults on
//! the guard page).

mod support;

use gllm_kernels::codegen::loops::LoopKernel;
use gllm_kernels::codegen::CodegenError;
use gllm_kernels::oracle::{self, GuardedBuffer, Placement, Sweep};
use gllm_kernels::quant::QuantFormat;
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

use support::profiles as host;

fn assert_all_pass(reports: &[oracle::OpReport]) {
    let failures: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{} {} ({}): {}", r.op, r.kernel, r.isa, r.failure.as_deref().unwrap_or("")))
        .collect();
    assert!(failures.is_empty(), "{} failure(s):\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn every_builtin_op_and_weight_format_passes_on_every_host_isa() {
    let profiles = host();
    let reports = oracle::test_ops(
        ScalarOpRegistry::global(),
        &profiles,
        &QuantFormat::ALL,
        Sweep::Full,
        &|_| true,
        &mut |_| {},
    );
    assert_all_pass(&reports);
    // Every op got a report with cases on every ISA (nothing silently empty
    // except epilogues the GEMM cannot fuse, which say so).
    for op in ScalarOpRegistry::global().iter() {
        for p in &profiles {
            let rows: Vec<_> =
                reports.iter().filter(|r| r.op == op.kind().name() && r.isa == p.isa).collect();
            assert!(!rows.is_empty(), "{} on {}: no report", op.kind(), p.isa);
            for r in rows {
                assert!(r.cases > 0 || r.skipped.is_some(), "{} {} on {}: no cases", r.op, r.kernel, p.isa);
            }
        }
    }
    for format in QuantFormat::ALL {
        assert!(reports.iter().any(|r| r.op == format.name() && r.cases > 0), "{format}: not tested");
    }
}

#[test]
fn ops_registered_at_run_time_pass_too() {
    // With the built-ins in the same registry: the GEMM takes every unseen
    // elementwise op as an epilogue too.
    let (registry, kinds) = support::builtins_and_unseen();
    let unseen =
        |op: &gllm_kernels::scalar::RegisteredOp| kinds.contains(&op.kind()) || op.kind() == OpKind::MatMul;
    let reports = oracle::test_ops(&registry, &host(), &[], Sweep::Full, &unseen, &mut |_| {});
    assert_all_pass(&reports);
    for &k in &kinds {
        assert!(reports.iter().any(|r| r.op == k.name() && r.cases > 0), "{k}: not tested");
    }
    let fused =
        reports.iter().filter(|r| matches!(&r.kernel, oracle::KernelKind::GemmEpilogue(_)) && r.cases > 0);
    assert!(fused.count() >= 4, "unseen elementwise ops fused as GEMM epilogues");
}

/// Runs the kernel on all but the last element: the tail bug a wrong
/// remainder count in generated code would have.
fn off_by_one_tail(
    k: &LoopKernel,
    ins: &[&[f32]],
    outs: &mut [&mut [f32]],
    rows: usize,
    n: usize,
) -> Result<(), CodegenError> {
    if n == 0 {
        return k.run(ins, outs, rows, n, 1);
    }
    let ins: Vec<&[f32]> = ins.iter().map(|v| &v[..v.len() - 1]).collect();
    let mut outs: Vec<&mut [f32]> = outs
        .iter_mut()
        .map(|o| {
            let len = o.len();
            &mut o[..len - 1]
        })
        .collect();
    k.run(&ins, &mut outs, rows, n - 1, 1)
}

#[test]
fn an_off_by_one_tail_is_caught() {
    let registry = ScalarOpRegistry::global();
    for kind in [OpKind::Silu, OpKind::Add, OpKind::Relu] {
        let op = registry.get(kind).unwrap();
        let trace = op.trace().unwrap();
        for profile in host() {
            let report = oracle::test_loop_op(op, &trace, &profile, Sweep::Quick, &off_by_one_tail);
            let why = report
                .failure
                .unwrap_or_else(|| panic!("{kind} on {}: the broken kernel passed", profile.isa));
            assert!(why.contains("never written") && why.contains("n=1 "), "{kind}: {why}");
        }
    }
}

/// Set in the child process of the test below: run a kernel on a view
/// that ends one element past a guarded input.
const OVERREAD_CHILD: &str = "GK_TEST_OVERREAD_CHILD";

#[test]
fn a_kernel_reading_one_element_past_its_input_faults_on_the_guard_page() {
    use std::os::unix::process::ExitStatusExt;
    if std::env::var_os(OVERREAD_CHILD).is_some() {
        overread_one_element();
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_kernel_reading_one_element_past_its_input_faults_on_the_guard_page",
            "--nocapture",
        ])
        .env(OVERREAD_CHILD, "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("re-run the test binary");
    assert_eq!(
        status.status.signal(),
        Some(libc::SIGSEGV),
        "the over-reading kernel should have faulted; child said:\n{}",
        String::from_utf8_lossy(&status.stdout)
    );
}

fn overread_one_element() {
    let op = ScalarOpRegistry::global().get(OpKind::Relu).unwrap();
    let prog = gllm_kernels::codegen::loops::LoopProgram::from_trace(&op.trace().unwrap(), vec![]).unwrap();
    let kernel = LoopKernel::compile(&prog, &host()[0]).unwrap();
    let n = 37;
    let x = GuardedBuffer::new(&vec![1.0; n], Placement::AgainstEnd).unwrap();
    // SAFETY: deliberately not: the view covers one element of the guard
    // page after `x`, which the kernel's last read touches — the fault is
    // what this child process exists to produce.
    let past = unsafe { std::slice::from_raw_parts(x.as_slice().as_ptr().add(1), n) };
    let mut out = vec![0.0f32; n];
    kernel.run(&[past], &mut [&mut out], 1, n, 1).unwrap();
    println!("no fault: out[{}] = {}", n - 1, out[n - 1]);
}

/// `oracle::check`, the comparison every JIT test makes: one element
/// dropped (left 0) out of 65 537 fails both the per-element bound of a
/// composed graph and a product's, and so does a length mismatch.
#[test]
fn check_rejects_a_dropped_element_and_a_short_output() {
    let mut rng = support::Rng(0xd20b);
    let want: Vec<f32> = (0..65_537).map(|_| rng.uniform(-2.0, 2.0)).collect();
    let mut got = want.clone();
    assert!(oracle::check(&got, &want, &[], &oracle::Tolerance::composed(2e-4)).is_ok());
    let dropped = want.iter().position(|w| w.abs() > 0.5).unwrap();
    got[dropped] = 0.0;
    let e = oracle::check(&got, &want, &[], &oracle::Tolerance::composed(2e-4)).unwrap_err();
    assert!(e.starts_with(&format!("[{dropped}]")), "{e}");
    assert!(oracle::check(&want[1..], &want, &[], &oracle::Tolerance::EXACT).is_err());
    // A product: C = A·B with one C element dropped.
    let (m, n, k) = (3, 5, 65_537);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut c = vec![0.0f32; m * n];
    // SAFETY: a is m·k, b is k·n, c is m·n.
    unsafe { gllm_kernels::scalar::ops::gk_matmul(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), m, n, k) };
    assert!(oracle::check_matmul(&c, &c, &a, &b, (m, n, k)).is_ok());
    let mut broken = c.clone();
    broken[7] = 0.0;
    assert!(oracle::check_matmul(&broken, &c, &a, &b, (m, n, k)).is_err());
}
