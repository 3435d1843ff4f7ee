//! Shared test helpers: deterministic random data, the one
//! reference-vs-trace checker every Phase 0 test uses, and random-graph glue.
#![allow(dead_code)]

use gllm_kernels::graph::{CompilerGraph, TensorRef};
use gllm_kernels::scalar::{
    AbiValue, Arg, FnForm, Len, OpKind, OpSignature, Returns, ScalarFn, ScalarOpRegistry, TensorRole,
};
use gllm_kernels::trace::{ComputePattern, OpTrace};

pub mod unseen {
    include!("unseen_ops.rs");
}

/// The oracle's deterministic random data and special values, shared by
/// every test.
pub use gllm_kernels::oracle::{special_values, Rng};

/// Every ISA this host runs, as profiles of the host; says loudly on
/// stderr which ISA it could not test, so a green run on a host without
/// AVX-512 does not read as AVX-512 tested.
pub fn profiles() -> Vec<gllm_kernels::device::DeviceProfile> {
    let (profiles, skipped) = gllm_kernels::oracle::host_profiles().expect("x86-64 with AVX2");
    for isa in skipped {
        eprintln!("SKIPPED: {isa} kernels are not tested on this host (the CPU lacks {isa})");
    }
    profiles
}

/// The oracle's comparison as an assertion: `got` against the reference
/// `want` under `tol` (see `gllm_kernels::oracle::check`); panics naming
/// `what` and the first element outside the bound.
pub fn assert_within(
    what: &str,
    got: &[f32],
    want: &[f32],
    scale: &[f32],
    tol: &gllm_kernels::oracle::Tolerance,
) -> gllm_kernels::oracle::ErrorStats {
    gllm_kernels::oracle::check(got, want, scale, tol).unwrap_or_else(|e| panic!("{what}{e}"))
}

/// Bitwise equal, or both NaN.
pub fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Dimension sets to test: awkward lengths for rows, odd shapes for GEMM.
pub fn dim_sets(sig: &OpSignature, trace: &OpTrace) -> Vec<Vec<usize>> {
    match (sig.num_dims(), trace.pattern) {
        (0, _) => vec![vec![]],
        (1, _) => [0, 1, 7, 64, 1000].iter().map(|&n| vec![n]).collect(),
        (3, ComputePattern::Gemm { m, n, k, .. }) => {
            [(1, 1, 1), (2, 3, 5), (7, 1, 13), (16, 17, 15), (3, 33, 65), (0, 4, 3)]
                .iter()
                .map(|&(mv, nv, kv)| {
                    let mut d = vec![0; 3];
                    d[m as usize] = mv;
                    d[n as usize] = nv;
                    d[k as usize] = kv;
                    d
                })
                .collect()
        }
        (d, _) => vec![vec![5; d], vec![17; d]],
    }
}

/// Compares `trace.eval` with calling the reference function, bit for bit,
/// on random and special data of every awkward size. Returns the number of
/// values compared, or a description of the first mismatch.
pub fn check_against_reference(
    name: &str,
    func: &ScalarFn,
    sig: &OpSignature,
    trace: &OpTrace,
    rng: &mut Rng,
) -> Result<usize, String> {
    match sig.form() {
        FnForm::PerElement => check_per_element(name, func, sig, trace, rng),
        FnForm::Slices => {
            let mut compared = 0;
            for dims in dim_sets(sig, trace) {
                for _ in 0..3 {
                    compared += check_slices(name, func, sig, trace, rng, &dims)?;
                }
            }
            Ok(compared)
        }
    }
}

fn check_per_element(
    name: &str,
    func: &ScalarFn,
    sig: &OpSignature,
    trace: &OpTrace,
    rng: &mut Rng,
) -> Result<usize, String> {
    let specials = special_values();
    let n_inputs = sig.num_inputs();
    let len = 12_000;
    let mut inputs: Vec<Vec<f32>> = vec![Vec::with_capacity(len); n_inputs];
    for (k, input) in inputs.iter_mut().enumerate() {
        for j in 0..len {
            input.push(match j {
                // Every pair of specials across the first two inputs.
                _ if j < specials.len() * specials.len() => {
                    let idx = if k == 0 { j / specials.len() } else { j % specials.len() };
                    specials[idx]
                }
                _ if j % 2 == 0 => rng.any_bits(),
                _ => rng.uniform(-12.0, 12.0),
            });
        }
    }
    let params: Vec<f32> = sig.scalars().map(|_| rng.uniform(-3.0, 3.0)).collect();
    let mut out = vec![f32::NAN; len];
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    trace.eval(&refs, &params, &[], &mut [&mut out]).map_err(|e| format!("{name}: eval failed: {e}"))?;
    for j in 0..len {
        let (mut k, mut p) = (0, 0);
        let args: Vec<AbiValue> = sig
            .args()
            .iter()
            .map(|a| match a {
                Arg::Element { .. } => {
                    k += 1;
                    AbiValue::F32(inputs[k - 1][j])
                }
                _ => {
                    p += 1;
                    AbiValue::F32(params[p - 1])
                }
            })
            .collect();
        // SAFETY: per-element functions take no pointers.
        let want = unsafe { func.call(&args) }.flatten().ok_or(format!("{name}: reference call failed"))?;
        if !same(want, out[j]) {
            let xs: Vec<f32> = inputs.iter().map(|i| i[j]).collect();
            return Err(format!(
                "{name}: inputs {xs:?} params {params:?}: reference {want:e}, trace {:e}",
                out[j]
            ));
        }
    }
    Ok(len)
}

fn check_slices(
    name: &str,
    func: &ScalarFn,
    sig: &OpSignature,
    trace: &OpTrace,
    rng: &mut Rng,
    dims: &[usize],
) -> Result<usize, String> {
    let mut inputs: Vec<Vec<f32>> = Vec::new();
    let mut ref_outputs: Vec<Vec<f32>> = Vec::new();
    for a in sig.args() {
        match a {
            Arg::Input { len, .. } => {
                inputs.push((0..len.eval(dims).unwrap()).map(|_| rng.row_value()).collect())
            }
            Arg::Output { len, .. } => ref_outputs.push(vec![f32::NAN; len.eval(dims).unwrap()]),
            _ => {}
        }
    }
    let params: Vec<f32> = sig.scalars().map(|_| rng.uniform(1e-6, 1e-2)).collect();
    let (mut i, mut o, mut p, mut d) = (0, 0, 0, 0);
    let mut args = Vec::new();
    for a in sig.args() {
        args.push(match a {
            Arg::Input { .. } => {
                i += 1;
                AbiValue::ConstPtr(inputs[i - 1].as_ptr())
            }
            Arg::Output { .. } => {
                o += 1;
                AbiValue::MutPtr(ref_outputs[o - 1].as_mut_ptr())
            }
            Arg::Scalar { .. } => {
                p += 1;
                AbiValue::F32(params[p - 1])
            }
            Arg::Dim { .. } => {
                d += 1;
                AbiValue::Usize(dims[d - 1])
            }
            Arg::Element { .. } => unreachable!("slice-form signature"),
        });
    }
    // SAFETY: every buffer has the length its signature declares for `dims`.
    let ret = unsafe { func.call(&args) }.ok_or(format!("{name}: reference call failed"))?;
    let refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut compared = 0;
    if sig.returns() == Returns::RowScalar {
        let mut out = [f32::NAN];
        trace
            .eval(&refs, &params, dims, &mut [&mut out])
            .map_err(|e| format!("{name} {dims:?}: eval failed: {e}"))?;
        let want = ret.ok_or("no return value")?;
        if !same(want, out[0]) {
            return Err(format!("{name} {dims:?}: reference {want:e}, trace {:e}", out[0]));
        }
        compared += 1;
    } else {
        let mut ours: Vec<Vec<f32>> = ref_outputs.iter().map(|v| vec![f32::NAN; v.len()]).collect();
        let mut slices: Vec<&mut [f32]> = ours.iter_mut().map(|v| v.as_mut_slice()).collect();
        trace
            .eval(&refs, &params, dims, &mut slices)
            .map_err(|e| format!("{name} {dims:?}: eval failed: {e}"))?;
        for (o, (want, got)) in ref_outputs.iter().zip(&ours).enumerate() {
            for (j, (&w, &g)) in want.iter().zip(got).enumerate() {
                if !same(w, g) {
                    return Err(format!("{name} {dims:?}: output {o}[{j}]: reference {w:e}, trace {g:e}"));
                }
            }
            compared += want.len();
        }
    }
    Ok(compared)
}

/// A registry holding only the five unseen ops (softplus, hard-swish, mish,
/// squared ReLU, mean), and their kinds.
pub fn unseen_registry() -> (ScalarOpRegistry, Vec<OpKind>) {
    let mut r = ScalarOpRegistry::empty();
    let kinds = register_unseen(&mut r);
    (r, kinds)
}

/// The unseen unary ops written with `if` on the value.
pub const BRANCHY: [(&str, extern "C" fn(f32) -> f32); 7] = [
    ("elu", unseen::gk_elu),
    ("leaky_relu", unseen::gk_leaky_relu),
    ("hard_sigmoid", unseen::gk_hard_sigmoid),
    ("nan_to_zero", unseen::gk_nan_to_zero),
    ("zero_is_one", unseen::gk_zero_is_one),
    ("not_equal", unseen::gk_not_equal),
    ("clipped_exp", unseen::gk_clipped_exp),
];

/// The built-ins and the unseen ops together (so GEMMs can take the unseen
/// elementwise ops as epilogues).
pub fn builtins_and_unseen() -> (ScalarOpRegistry, Vec<OpKind>) {
    let mut r = ScalarOpRegistry::with_builtins();
    let kinds = register_unseen(&mut r);
    (r, kinds)
}

/// Registers every op of `unseen_ops.rs` in `r`; returns their kinds.
pub fn register_unseen(r: &mut ScalarOpRegistry) -> Vec<OpKind> {
    let unary =
        OpSignature::new(vec![Arg::Element { name: "x", role: TensorRole::Activation }], Returns::Element)
            .unwrap();
    let f: [(&str, extern "C" fn(f32) -> f32); 4] = [
        ("softplus", unseen::gk_softplus),
        ("hard_swish", unseen::gk_hard_swish),
        ("mish", unseen::gk_mish),
        ("squared_relu", unseen::gk_squared_relu),
    ];
    let mut kinds: Vec<OpKind> =
        f.iter().chain(&BRANCHY).map(|(n, f)| r.register_custom(n, *f, unary.clone()).unwrap()).collect();
    let mean = OpSignature::new(
        vec![
            Arg::Input { name: "x", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Dim { name: "n" },
        ],
        Returns::RowScalar,
    )
    .unwrap();
    kinds.push(
        r.register_custom(
            "mean",
            unseen::gk_mean as unsafe extern "C" fn(*const f32, usize) -> f32,
            mean.clone(),
        )
        .unwrap(),
    );
    kinds.push(
        r.register_custom(
            "max_abs",
            unseen::gk_max_abs as unsafe extern "C" fn(*const f32, usize) -> f32,
            mean,
        )
        .unwrap(),
    );
    let two_in = OpSignature::new(
        vec![
            Arg::Input { name: "x", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Input { name: "y", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Output { name: "out", len: Len::Dim(0) },
            Arg::Dim { name: "n" },
        ],
        Returns::Nothing,
    )
    .unwrap();
    let axpy2: unsafe extern "C" fn(*const f32, *const f32, *mut f32, usize) = unseen::gk_axpy2;
    kinds.push(r.register_custom("axpy2", axpy2, two_in).unwrap());
    kinds.push(
        r.register_custom("softsign", unseen::gk_softsign as extern "C" fn(f32) -> f32, unary.clone())
            .unwrap(),
    );
    kinds.push(
        r.register_custom("clamp_unit", unseen::gk_clamp_unit as extern "C" fn(f32) -> f32, unary.clone())
            .unwrap(),
    );
    let with_param = OpSignature::new(
        vec![Arg::Element { name: "x", role: TensorRole::Activation }, Arg::Scalar { name: "alpha" }],
        Returns::Element,
    )
    .unwrap();
    for (name, f) in [
        ("prelu", unseen::gk_prelu as extern "C" fn(f32, f32) -> f32),
        ("swish_beta", unseen::gk_swish_beta as extern "C" fn(f32, f32) -> f32),
    ] {
        kinds.push(r.register_custom(name, f, with_param.clone()).unwrap());
    }
    let norm = OpSignature::new(
        vec![
            Arg::Input { name: "x", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Output { name: "out", len: Len::Dim(0) },
            Arg::Dim { name: "n" },
            Arg::Scalar { name: "eps" },
        ],
        Returns::Nothing,
    )
    .unwrap();
    let rms_plain: unsafe extern "C" fn(*const f32, *mut f32, usize, f32) = unseen::gk_rms_norm_plain;
    kinds.push(r.register_custom("rms_norm_plain", rms_plain, norm).unwrap());
    let row = OpSignature::new(
        vec![
            Arg::Input { name: "x", role: TensorRole::Activation, len: Len::Dim(0) },
            Arg::Dim { name: "n" },
        ],
        Returns::RowScalar,
    )
    .unwrap();
    let lse: unsafe extern "C" fn(*const f32, usize) -> f32 = unseen::gk_logsumexp;
    kinds.push(r.register_custom("logsumexp", lse, row).unwrap());
    kinds.extend(LIBM.iter().map(|(n, f)| r.register_custom(n, *f, unary.clone()).unwrap()));
    kinds.push(
        r.register_custom("snake", unseen::gk_snake as extern "C" fn(f32, f32) -> f32, with_param.clone())
            .unwrap(),
    );
    kinds
}

/// The unseen one-argument ops that call libm beyond exp/log/tanh.
pub const LIBM: [(&str, extern "C" fn(f32) -> f32); 9] = [
    ("gelu_erf", unseen::gk_gelu_erf),
    ("elu_expm1", unseen::gk_elu_expm1),
    ("mu_law", unseen::gk_mu_law),
    ("raised_cosine", unseen::gk_raised_cosine),
    ("fake_quant", unseen::gk_fake_quant),
    ("frac", unseen::gk_frac),
    ("gamma", unseen::gk_gamma),
    ("cube", unseen::gk_cube),
    ("staircase", unseen::gk_staircase),
];

/// Makes every node output nobody reads a graph output (the validator
/// rejects dead code), plus every `also_every`-th node's, so random graphs
/// also have outputs that are read inside the graph.
pub fn output_unread_nodes(g: &mut CompilerGraph, also_every: usize) {
    let mut read = vec![false; g.nodes.len()];
    for node in &g.nodes {
        for r in &node.inputs {
            if let TensorRef::Node { node, .. } = r {
                read[*node] = true;
            }
        }
    }
    for (i, r) in read.iter().enumerate() {
        if (!r || i % also_every == 0) && !g.outputs.contains(&TensorRef::node(i)) {
            g.output(TensorRef::node(i));
        }
    }
}
