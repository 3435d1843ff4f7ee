//! Phase 0: every registered op's trace is right (checked by running it
//! against the scalar function), patterns are recognised, unseen ops work
//! without analyser changes, every opt-level is understood, and bad code is
//! a clear error — never a panic or a wrong trace.

mod support;

use gllm_kernels::scalar::{
    AbiReturn, AbiType, Arg, OpKind, OpSignature, Returns, ScalarOpRegistry, TensorRole,
};
use gllm_kernels::trace::{analyse_in, BufferMemory, ComputePattern, OpClass, ProcessMemory, TraceErrorKind};
use std::sync::Arc;
use support::{check_against_reference, unseen, Rng};

#[test]
fn every_builtin_trace_matches_its_reference() {
    let registry = ScalarOpRegistry::global();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for op in registry.iter() {
        let trace = op.trace().unwrap_or_else(|e| panic!("{e}"));
        let compared = check_against_reference(op.kind().name(), op.func(), op.signature(), &trace, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(compared >= 1000 || op.signature().num_dims() > 0, "{}: only {compared} values", op.kind());
    }
}

#[test]
fn patterns_are_recognised_from_structure() {
    use ComputePattern::*;
    let expected: &[(OpKind, ComputePattern, OpClass)] = &[
        (OpKind::Silu, Elementwise, OpClass::ElemWise),
        (OpKind::Gelu, Elementwise, OpClass::ElemWise),
        (OpKind::Relu, Elementwise, OpClass::ElemWise),
        (OpKind::Sigmoid, Elementwise, OpClass::ElemWise),
        (OpKind::Tanh, Elementwise, OpClass::ElemWise),
        (OpKind::Exp, Elementwise, OpClass::ElemWise),
        (OpKind::Scale, Elementwise, OpClass::ElemWise),
        (OpKind::Mul, BinaryElementwise, OpClass::ElemWise),
        (OpKind::Add, BinaryElementwise, OpClass::ElemWise),
        (OpKind::BiasAdd, BinaryElementwise, OpClass::ElemWise),
        (OpKind::SwiGlu, BinaryElementwise, OpClass::ElemWise),
        (OpKind::Rope, Injective { num_inputs: 4, num_outputs: 2 }, OpClass::Injective),
        (OpKind::ReduceSum, Reduction, OpClass::Reduction),
        (OpKind::ReduceMax, Reduction, OpClass::Reduction),
        (OpKind::Dot, Reduction, OpClass::Reduction),
        (OpKind::RmsNorm, NormLike, OpClass::Reduction),
        (OpKind::LayerNorm, NormLike, OpClass::Reduction),
        (OpKind::Softmax, NormLike, OpClass::Reduction),
        (OpKind::Top2Softmax, NormLike, OpClass::Reduction),
        (OpKind::MatMul, Gemm { m: 0, n: 1, k: 2, layout: Default::default() }, OpClass::Gemm),
    ];
    let registry = ScalarOpRegistry::global();
    assert_eq!(expected.len(), registry.len(), "every registered op is in this table");
    for &(kind, pattern, class) in expected {
        let t = registry.trace(kind).unwrap();
        assert_eq!((t.pattern, t.class()), (pattern, class), "{kind}");
    }
    // Structure the patterns come from.
    let fold_counts = [
        (OpKind::RmsNorm, 1),
        (OpKind::LayerNorm, 2),
        (OpKind::Softmax, 2),
        (OpKind::Top2Softmax, 3),
        (OpKind::Dot, 1),
        (OpKind::Silu, 0),
    ];
    for (kind, folds) in fold_counts {
        assert_eq!(registry.trace(kind).unwrap().folds.len(), folds, "{kind}");
    }
    assert!(registry.trace(OpKind::MatMul).unwrap().loop_depth() >= 3, "matmul is a triple loop");
    assert_eq!(registry.trace(OpKind::Silu).unwrap().loop_depth(), 0, "silu is straight-line");
    assert_eq!(
        f32::from_bits(registry.trace(OpKind::ReduceMax).unwrap().folds[0].identity),
        f32::NEG_INFINITY
    );
}

#[test]
fn traces_are_cached() {
    let registry = ScalarOpRegistry::with_builtins();
    let a = registry.trace(OpKind::Softmax).unwrap();
    let b = registry.trace(OpKind::Softmax).unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn unknown_names_and_bad_signatures_are_errors() {
    let registry = ScalarOpRegistry::global();
    let err = registry.lookup("swish9").unwrap_err().to_string();
    assert!(err.contains("unknown operator `swish9`") && err.contains("silu"), "{err}");
    let mut r = ScalarOpRegistry::empty();
    let sig =
        OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
            .unwrap();
    let wrong = r.register(
        OpKind::Silu,
        unseen::gk_mean as unsafe extern "C" fn(*const f32, usize) -> f32,
        sig.clone(),
    );
    assert!(wrong.unwrap_err().to_string().contains("operator `silu`"), "signature must match the function");
    r.register(OpKind::Silu, gllm_kernels::scalar::ops::gk_silu as extern "C" fn(f32) -> f32, sig.clone())
        .unwrap();
    assert!(r
        .register(OpKind::Silu, gllm_kernels::scalar::ops::gk_silu as extern "C" fn(f32) -> f32, sig)
        .is_err());
    assert!(OpSignature::new(vec![Arg::Dim { name: "n" }], Returns::RowScalar).is_err(), "no input");
}

#[test]
fn unseen_ops_are_analysed_with_no_analyser_change() {
    let (registry, kinds) = support::unseen_registry();
    let mut rng = Rng(42);
    for kind in kinds {
        let op = registry.get(kind).unwrap();
        let trace = op.trace().unwrap_or_else(|e| panic!("{e}"));
        let want = match kind.name() {
            "mean" | "max_abs" | "logsumexp" => ComputePattern::Reduction,
            "rms_norm_plain" => ComputePattern::NormLike,
            "axpy2" => ComputePattern::BinaryElementwise,
            _ => ComputePattern::Elementwise,
        };
        assert_eq!(trace.pattern, want, "{kind}");
        check_against_reference(kind.name(), op.func(), op.signature(), &trace, &mut rng)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(registry.lookup("mish").unwrap().kind(), OpKind::Custom("mish"));
}

/// Registers the fixture library's copy of every op (same signatures) so the
/// same checks run on code compiled at another opt-level / target-cpu.
fn fixture_registry(lib: &libloading::Library) -> ScalarOpRegistry {
    let (unseen, _) = support::unseen_registry();
    let builtins = ScalarOpRegistry::global();
    let mut r = ScalarOpRegistry::empty();
    for op in builtins.iter().chain(unseen.iter()) {
        let name = format!("gk_{}", op.kind().name());
        let sig = op.signature().clone();
        let kind = op.kind();
        macro_rules! reg {
            ($t:ty) => {{
                // SAFETY: the fixture exports this symbol with exactly this type
                // (it is the same source file as the registered function).
                let f: $t =
                    unsafe { *lib.get::<$t>(name.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}")) };
                r.register(kind, f, sig).unwrap();
            }};
        }
        use AbiType::*;
        match (op.func().params(), op.func().returns()) {
            ([F32], AbiReturn::F32) => reg!(extern "C" fn(f32) -> f32),
            ([F32, F32], AbiReturn::F32) => reg!(extern "C" fn(f32, f32) -> f32),
            ([ConstPtr, Usize], AbiReturn::F32) => reg!(unsafe extern "C" fn(*const f32, usize) -> f32),
            ([ConstPtr, ConstPtr, Usize], AbiReturn::F32) => {
                reg!(unsafe extern "C" fn(*const f32, *const f32, usize) -> f32)
            }
            ([ConstPtr, ConstPtr, MutPtr, Usize, F32], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, f32))
            }
            ([ConstPtr, ConstPtr, ConstPtr, MutPtr, Usize, F32], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, usize, f32))
            }
            ([ConstPtr, MutPtr, Usize], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *mut f32, usize))
            }
            ([ConstPtr, ConstPtr, MutPtr, Usize], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize))
            }
            ([ConstPtr, MutPtr, Usize, F32], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *mut f32, usize, f32))
            }
            ([ConstPtr, ConstPtr, ConstPtr, ConstPtr, MutPtr, MutPtr, Usize], AbiReturn::Unit) => {
                reg!(
                    unsafe extern "C" fn(
                        *const f32,
                        *const f32,
                        *const f32,
                        *const f32,
                        *mut f32,
                        *mut f32,
                        usize,
                    )
                )
            }
            ([ConstPtr, ConstPtr, MutPtr, Usize, Usize, Usize], AbiReturn::Unit) => {
                reg!(unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize))
            }
            other => panic!("{name}: add a fixture type for {other:?}"),
        }
    }
    r
}

#[test]
fn analyser_copes_with_opt_levels_1_2_3_with_and_without_native() {
    let builtins = ScalarOpRegistry::global();
    let (unseen, _) = support::unseen_registry();
    let mut rng = Rng(7);
    assert_eq!(trace_fixtures::FIXTURES.len(), 6);
    for &(opt, native, path) in trace_fixtures::FIXTURES {
        if native && !std::is_x86_feature_detected!("avx512f") && !std::is_x86_feature_detected!("avx2") {
            continue;
        }
        // SAFETY: a library this workspace built from its own source.
        let lib = unsafe { libloading::Library::new(path) }.unwrap();
        let registry = fixture_registry(&lib);
        for op in registry.iter() {
            let label = format!("{} at -O{opt}{}", op.kind(), if native { " native" } else { "" });
            // At -O2/-O3 LLVM vectorises `f32::max`'s fold with per-lane
            // accumulators merged in a tree, and leaves the vector loop when
            // a whole-vector NaN test fires: analysed as the same fold,
            // assuming no NaN, then checked on NaN inputs (OpTrace::assumed_no_nan).
            if op.kind().name() == "max_abs" && opt >= 2 {
                let trace = op.trace().unwrap_or_else(|e| panic!("{label}: {e}"));
                let home = unseen.get(op.kind()).unwrap().trace().unwrap();
                assert!(trace.assumed_no_nan, "{label}: the NaN exit is an assumption");
                assert_eq!(
                    (&trace.folds, &trace.row, &trace.body),
                    (&home.folds, &home.row, &home.body),
                    "{label}"
                );
                // And its JIT kernel matches this very function, NaNs included.
                let this = op.kind();
                let reports = gllm_kernels::oracle::test_ops(
                    &registry,
                    &support::profiles(),
                    &[],
                    gllm_kernels::oracle::Sweep::Quick,
                    &|o| o.kind() == this,
                    &mut |_| {},
                );
                assert!(reports.iter().any(|r| r.cases > 0), "{label}: not run");
                for r in &reports {
                    assert!(r.passed(), "{label}: {} {}: {:?}", r.kernel, r.isa, r.failure);
                }
            }
            let trace = op.trace().unwrap_or_else(|e| panic!("{label}: {e}"));
            let home = builtins.get(op.kind()).or_else(|_| unseen.get(op.kind())).unwrap().trace().unwrap();
            assert_eq!(trace.pattern, home.pattern, "{label}");
            check_against_reference(&label, op.func(), op.signature(), &trace, &mut rng)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

// ---------- code it cannot analyse ----------

const BASE: u64 = 0x7000_0000;

fn analyse_bytes(bytes: &[u8]) -> Result<gllm_kernels::trace::OpTrace, gllm_kernels::trace::TraceError> {
    let sig =
        OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
            .unwrap();
    analyse_in("fixture_fn", BASE, &sig, &BufferMemory { base: BASE, bytes: bytes.to_vec() })
}

/// `vpternlogd` with the sign mask as a broadcast memory operand is how
/// compilers targeting AVX-512 write copysign (`0xF8`: a | (b & c)); the
/// analyser lifts it whatever host runs the test (nothing is executed).
#[test]
fn ternary_logic_copysign_is_lifted() {
    use iced_x86::code_asm::*;
    let mut a = CodeAssembler::new(64).unwrap();
    let (mut two, mut sign) = (a.create_label(), a.create_label());
    a.vmovss(xmm1, dword_ptr(two)).unwrap();
    a.vpternlogd(xmm1, xmm0, dword_bcst(sign), 0xF8).unwrap();
    a.vmovaps(xmm0, xmm1).unwrap();
    a.ret().unwrap();
    a.set_label(&mut two).unwrap();
    a.dd(&[2.0f32.to_bits()]).unwrap();
    a.set_label(&mut sign).unwrap();
    a.dd(&[0x8000_0000]).unwrap();
    let bytes = a.assemble(BASE).unwrap();
    let trace = analyse_bytes(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let x = [-3.0f32, 0.0, 5.5, -0.0, f32::INFINITY, -1e-40];
    let mut y = [0.0f32; 6];
    trace.eval(&[&x], &[], &[], &mut [&mut y]).unwrap();
    let want: Vec<u32> = x.iter().map(|v| 2.0f32.copysign(*v).to_bits()).collect();
    assert_eq!(y.map(f32::to_bits).to_vec(), want, "{y:?}");
}

#[test]
fn unanalysable_code_is_a_clear_error_naming_function_address_and_instruction() {
    let cases: &[(&str, &[u8], u64, &str)] = &[
        // jmp rax
        ("indirect jump", &[0xff, 0xe0], 0, "jmp rax"),
        // call rel32 to an address outside any library
        ("unknown call", &[0xe8, 0x00, 0x10, 0x00, 0x00, 0xc3], 0, "call"),
        // cpuid
        ("unsupported instruction", &[0x0f, 0xa2, 0xc3], 0, "cpuid"),
        // jmp $ (a loop that never ends)
        ("unbounded loop", &[0xeb, 0xfe], 0, "jmp"),
        // ucomiss xmm0, xmm0; js +0; ret (a branch on float flags with no
        // comparison meaning: ja/jb/je/jp and friends become selects)
        ("data-dependent branch", &[0x0f, 0x2e, 0xc0, 0x78, 0x00, 0xc3], 3, "js"),
        // movss xmm0, [0x1234] (absolute address nobody mapped)
        ("wild load", &[0xf3, 0x0f, 0x10, 0x04, 0x25, 0x34, 0x12, 0, 0, 0xc3], 0, "movss"),
        // invalid opcode bytes
        ("invalid bytes", &[0x06], 0, ""),
        // ret without touching xmm0? fine — but movd eax, xmm0; ret leaves xmm0 = x: use a bit op on data
        ("opaque bit trick", &[0x66, 0x0f, 0xdb, 0xc0 + 1, 0xc3], 0, "pand"),
        // xor eax, eax; imul eax, eax (CF undefined); inc eax (keeps it); jb +0; ret
        (
            "branch on an undefined carry",
            &[0x31, 0xc0, 0x0f, 0xaf, 0xc0, 0xff, 0xc0, 0x72, 0x00, 0xc3],
            7,
            "jb",
        ),
    ];
    for (what, bytes, offset, text) in cases {
        let err = analyse_bytes(bytes).expect_err(what);
        assert_eq!(err.function, "fixture_fn", "{what}");
        assert_eq!(err.address, BASE + offset, "{what}: {err}");
        let shown = err.to_string();
        assert!(
            shown.contains("fixture_fn") && shown.contains(&format!("{:#x}", BASE + offset)),
            "{what}: {shown}"
        );
        assert!(err.instruction.as_deref().unwrap_or("").contains(text), "{what}: {shown}");
    }
    let err = analyse_bytes(&[0xeb, 0xfe]).unwrap_err();
    assert!(matches!(err.kind, TraceErrorKind::StepLimit { .. }));
    let err = analyse_bytes(&[0xff, 0xe0]).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::IndirectBranch);
    let err = analyse_bytes(&[0x31, 0xc0, 0x0f, 0xaf, 0xc0, 0xff, 0xc0, 0x72, 0x00, 0xc3]).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::Undefined("carry flag".into()));
}

#[test]
fn code_outside_memory_is_an_error() {
    let sig =
        OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
            .unwrap();
    let err = analyse_in("nowhere", 0x10, &sig, &ProcessMemory::new()).unwrap_err();
    assert_eq!(err.kind, TraceErrorKind::UnreadableCode);
    assert_eq!(err.address, 0x10);
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn real_function_bytes(kind: OpKind) -> (u64, Vec<u8>) {
        let op = ScalarOpRegistry::global().get(kind).unwrap();
        let entry = op.func().address() as u64;
        let code = gllm_kernels::trace::CodeMap::discover("x", entry, &ProcessMemory::new()).unwrap();
        let end = code.instructions().map(|i| i.next_ip()).max().unwrap();
        let mem = ProcessMemory::new();
        let bytes = gllm_kernels::trace::CodeMemory::read_up_to(&mem, entry, (end - entry) as usize);
        (entry, bytes)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 1..96)) {
            let _ = analyse_bytes(&bytes);
        }

        #[test]
        fn mutated_real_functions_never_panic(
            which in 0usize..4,
            edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            let kind = [OpKind::Silu, OpKind::RmsNorm, OpKind::Softmax, OpKind::MatMul][which];
            let op = ScalarOpRegistry::global().get(kind).unwrap();
            let (entry, mut bytes) = real_function_bytes(kind);
            for (at, value) in edits {
                let i = at % bytes.len();
                bytes[i] = value;
            }
            // The mutated copy lives at the real address, so rip-relative
            // constants and GOT slots outside it are not readable: errors, not panics.
            let _ = analyse_in("mutant", entry, op.signature(), &BufferMemory { base: entry, bytes });
        }
    }
}

/// GEMM-shaped functions whose fold is not `acc + a·b`: the GEMM kernels
/// compute only Σ A·B, so these must be refused, naming what differs —
/// never compiled into a plain product (issue: "never a silent wrong kernel").
mod not_plain_products {
    pub unsafe extern "C" fn l1_distance(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: A is m×k, B is k×n, C is m×n (the signature).
                    acc += unsafe { (*a.add(i * k + p) - *b.add(p * n + j)).abs() };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn max_plus(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = f32::NEG_INFINITY;
                for p in 0..k {
                    // SAFETY: as above.
                    acc = acc.max(unsafe { *a.add(i * k + p) + *b.add(p * n + j) });
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn scaled_product(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: as above.
                    acc += unsafe { *a.add(i * k + p) * *b.add(p * n + j) };
                }
                unsafe { *c.add(i * n + j) = 0.5 * acc };
            }
        }
    }

    pub unsafe extern "C" fn transposed_b(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: A is m×k, B is n×k, C is m×n.
                    acc += unsafe { *a.add(i * k + p) * *b.add(j * k + p) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn transposed_a(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: A is k×m, B is k×n, C is m×n.
                    acc += unsafe { *a.add(p * m + i) * *b.add(p * n + j) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn both_transposed(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: A is k×m, B is n×k, C is m×n.
                    acc += unsafe { *a.add(p * m + i) * *b.add(j * k + p) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    /// Reads B's mirrored column: no layout explains it.
    pub unsafe extern "C" fn shifted_b(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: A is m×k, B is k×n, C is m×n; n − 1 − j < n.
                    acc += unsafe { *a.add(i * k + p) * *b.add(p * n + (n - 1 - j)) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn offset_product(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 1.0f32;
                for p in 0..k {
                    // SAFETY: as above.
                    acc += unsafe { *a.add(i * k + p) * *b.add(p * n + j) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }

    pub unsafe extern "C" fn fused_product(
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        m: usize,
        n: usize,
        k: usize,
    ) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    // SAFETY: as above.
                    acc = unsafe { (*a.add(i * k + p)).mul_add(*b.add(p * n + j), acc) };
                }
                unsafe { *c.add(i * n + j) = acc };
            }
        }
    }
}

/// `(a: m×k, b: k×n, c: m×n, m, n, k)`, as the built-in matmul.
fn gemm_signature() -> OpSignature {
    use gllm_kernels::scalar::{Len, TensorRole::*};
    OpSignature::new(
        vec![
            Arg::Input { name: "a", role: Activation, len: Len::Product(0, 2) },
            Arg::Input { name: "b", role: Weight, len: Len::Product(2, 1) },
            Arg::Output { name: "c", len: Len::Product(0, 1) },
            Arg::Dim { name: "m" },
            Arg::Dim { name: "n" },
            Arg::Dim { name: "k" },
        ],
        Returns::Nothing,
    )
    .unwrap()
}

#[test]
fn gemm_shaped_functions_that_are_not_plain_products_are_refused() {
    type GemmFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize);
    let sig = gemm_signature;
    let mut r = ScalarOpRegistry::with_builtins();
    let cases: [(&str, GemmFn, Option<&str>); 5] = [
        ("offset_product", not_plain_products::offset_product, Some("fold does not start from 0")),
        ("l1_distance", not_plain_products::l1_distance, Some("fold is not a multiply-add of A and B")),
        // (f32::max's NaN handling is refused earlier, by the fold analysis;
        // either way it is an error, not a product.)
        ("max_plus", not_plain_products::max_plus, Some("")),
        (
            "scaled_product",
            not_plain_products::scaled_product,
            Some("element is not the fold's result as is"),
        ),
        ("fused_product", not_plain_products::fused_product, None),
    ];
    for (name, f, refusal) in cases {
        let kind = r.register_custom(name, f, sig()).unwrap();
        let result = r.get(kind).unwrap().trace();
        match refusal {
            Some(why) => {
                let e = result.expect_err(name).to_string();
                assert!(
                    why.is_empty() || e.contains(why) && e.contains("GEMM kernels compute only"),
                    "{name}: {e}"
                );
                assert!(e.contains(name), "{name}: the error names the op: {e}");
                // It points at the instruction that computed the offending
                // value, not at the function's first instruction.
                let at = e.rsplit("(instruction `").next().unwrap_or_default();
                assert!(
                    !at.starts_with("push") && !at.starts_with("endbr"),
                    "{name}: error at the entry: {e}"
                );
            }
            None => {
                let t = result.unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(t.class(), OpClass::Gemm, "{name}");
            }
        }
    }
}

#[test]
fn an_unrecognised_read_names_the_instruction_that_made_it() {
    // B's mirrored column: no operand layout explains that read; the error must
    // point at the load of B, not at the function's first instruction.
    let sig = gemm_signature();
    let mut r = ScalarOpRegistry::with_builtins();
    type GemmFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize);
    let f: GemmFn = not_plain_products::shifted_b;
    let kind = r.register_custom("shifted_b", f, sig).unwrap();
    let e = r.get(kind).unwrap().trace().expect_err("a mirrored column is not a product");
    let text = e.to_string();
    assert!(text.contains("outside what this output may depend on"), "{text}");
    let at = text.rsplit("(instruction `").next().unwrap_or_default();
    assert!(!at.starts_with("push") && at.contains('['), "the instruction is a memory read: {text}");
}

/// Transposed operands are recognised from the addresses read, recorded in
/// the pattern, evaluated bit-exactly against the function, and compiled:
/// the function's layout is used to call it, the graph's `transpose_b` says
/// how the tensor is stored, and both combine.
#[test]
fn transposed_gemm_operands_are_recognised_and_compile() {
    use gllm_kernels::codegen::layer::compile_graph;
    use gllm_kernels::device::DeviceProfile;
    use gllm_kernels::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc};
    use gllm_kernels::trace::GemmLayout;
    type GemmFn = unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize, usize, usize);
    let mut r = ScalarOpRegistry::with_builtins();
    let cases: [(&str, GemmFn, GemmLayout); 3] = [
        (
            "transposed_b",
            not_plain_products::transposed_b,
            GemmLayout { a_transposed: false, b_transposed: true },
        ),
        (
            "transposed_a",
            not_plain_products::transposed_a,
            GemmLayout { a_transposed: true, b_transposed: false },
        ),
        (
            "both_transposed",
            not_plain_products::both_transposed,
            GemmLayout { a_transposed: true, b_transposed: true },
        ),
    ];
    let mut rng = Rng(0x7a05);
    for (name, f, want) in cases {
        let kind = r.register_custom(name, f, gemm_signature()).unwrap();
        let op = r.get(kind).unwrap();
        let t = op.trace().unwrap_or_else(|e| panic!("{name}: {e}"));
        match t.pattern {
            ComputePattern::Gemm { layout, .. } => assert_eq!(layout, want, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        check_against_reference(name, op.func(), op.signature(), &t, &mut rng).unwrap();
        // In a graph, against node-by-node reference evaluation, with B
        // stored either way.
        for transpose_b in [false, true] {
            let (m, n, k) = (7, 19, 33);
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([m, k]));
            let w = g.weight("w", TensorDesc::f32(if transpose_b { [n, k] } else { [k, n] }));
            let y = g.node(
                "proj",
                CompilerOp::with_params(
                    kind,
                    gllm_kernels::graph::OpParams::MatMul(MatMulParams {
                        transpose_b,
                        ..MatMulParams::new(m, n, k)
                    }),
                ),
                vec![x, w],
                TensorDesc::f32([m, n]),
            );
            g.output(y);
            let layer = compile_graph(&g, &DeviceProfile::detect().unwrap(), &r)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let xv: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let wv: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let weights = layer.prepare_weights(&|_: &str| Some(&wv[..])).unwrap();
            let got = layer.run(&weights, &[&xv]).unwrap();
            let sem = g.analyse(&r).unwrap();
            let want = gllm_kernels::reference::evaluate(&sem, &r, &[&xv], &|_: &str| Some(&wv[..])).unwrap();
            for (a, b) in got[0].iter().zip(&want[0]) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{name} transpose_b={transpose_b}: {a} vs {b}"
                );
            }
        }
    }
}
