//! Activations written the way users write them — with `if` on the value —
//! registered at run time: the analyser runs both arms of a branch on
//! floating-point data and merges them into a select with the branch's NaN
//! behaviour, so `eval` matches calling the function bit for bit (NaN,
//! ±0, ±∞ included), and the JIT kernels pass the differential tester.
//! Arms that store or loop are refused with an error naming the branch.
//! (The same functions are in `support/unseen_ops.rs`, so the trace-fixture
//! test also analyses them as compiled at -O1/-O2/-O3 ± target-cpu=native.)

mod support;

use gllm_kernels::oracle::{self, Sweep};
use gllm_kernels::scalar::{Arg, OpSignature, Returns, ScalarOpRegistry, TensorRole};
use gllm_kernels::trace::ComputePattern;
use support::{check_against_reference, Rng};

fn unary() -> OpSignature {
    OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
        .unwrap()
}

/// Just the branchy unseen ops, registered at run time.
fn registry() -> ScalarOpRegistry {
    let mut r = ScalarOpRegistry::empty();
    for (name, f) in support::BRANCHY {
        r.register_custom(name, f, unary()).unwrap();
    }
    r
}

#[test]
fn branchy_activations_are_analysed_and_eval_is_bit_exact() {
    let r = registry();
    let mut rng = Rng(0xb4a1);
    for op in r.iter() {
        let name = op.kind().name();
        let t = op.trace().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(t.pattern, ComputePattern::Elementwise, "{name}");
        check_against_reference(name, op.func(), op.signature(), &t, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn branchy_activations_pass_the_differential_tester() {
    let r = registry();
    let reports = oracle::test_ops(&r, &support::profiles(), &[], Sweep::Full, &|_| true, &mut |_| {});
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.passed())
        .map(|r| format!("{}: {}", r.op, r.failure.as_deref().unwrap_or("")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    assert_eq!(reports.len(), support::BRANCHY.len() * support::profiles().len());
}

/// A store inside one arm only (the positive elements are written, the
/// others left as they were): not a select, refused naming the branch.
///
/// # Safety
/// `x` and `out` hold `n` f32.
unsafe extern "C" fn store_in_arm(x: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        // SAFETY: i < n.
        unsafe {
            let v = *x.add(i);
            if v > 0.0 {
                *out.add(i) = v;
            }
        }
    }
}

#[test]
fn arms_that_store_are_refused_naming_the_branch() {
    use gllm_kernels::scalar::Len;
    let sig = OpSignature::new(
        vec![
            Arg::Input { name: "x", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Output { name: "out", len: Len::Dim(0) },
            Arg::Dim { name: "n" },
        ],
        Returns::Nothing,
    )
    .unwrap();
    let mut r = ScalarOpRegistry::empty();
    let f: unsafe extern "C" fn(*const f32, *mut f32, usize) = store_in_arm;
    let kind = r.register_custom("store_in_arm", f, sig).unwrap();
    let text = r.get(kind).unwrap().trace().expect_err("a store in one arm").to_string();
    assert!(text.contains("stores to an output") && text.contains("store_in_arm"), "{text}");
    // The error points at the branch instruction.
    let at = text.rsplit("(instruction `").next().unwrap_or_default();
    assert!(at.starts_with('j'), "{text}");
}
