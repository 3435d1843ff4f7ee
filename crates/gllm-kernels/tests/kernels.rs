//! Phase 3a: every non-GEMM JIT kernel against its scalar reference
//! function, on random data, all lengths 0..=300 and a few large ones, under
//! both ISAs; MathApprox on a sample (the exhaustive check is
//! `cargo run --release --example math_accuracy`).

mod support;

use gllm_kernels::oracle::ulps;
use support::profiles;

use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::scalar::{AbiValue, Arg, FnForm, OpKind, RegisteredOp, Returns, ScalarOpRegistry};
use support::Rng;

/// Scalar parameters used for ops that take them (eps, scale factor).
fn params_for(op: &RegisteredOp) -> Vec<f32> {
    op.signature().scalars().map(|(_, a)| if a.name() == "eps" { 1e-5 } else { 0.75 }).collect()
}

/// Runs the scalar reference over `rows` rows of `n`: inputs are full
/// (`rows·n`) or one broadcast row (`n`).
fn reference(op: &RegisteredOp, inputs: &[Vec<f32>], params: &[f32], rows: usize, n: usize) -> Vec<Vec<f32>> {
    let sig = op.signature();
    let f = op.func();
    match sig.form() {
        FnForm::PerElement => {
            let mut out = vec![0.0; rows * n];
            for (i, o) in out.iter_mut().enumerate() {
                let mut k = 0;
                let mut p = 0;
                let args: Vec<AbiValue> = sig
                    .args()
                    .iter()
                    .map(|a| match a {
                        Arg::Element { .. } => {
                            let v = &inputs[k];
                            k += 1;
                            AbiValue::F32(v[i % v.len()])
                        }
                        _ => {
                            p += 1;
                            AbiValue::F32(params[p - 1])
                        }
                    })
                    .collect();
                // SAFETY: per-element functions take only f32 values.
                *o = unsafe { f.call(&args) }.expect("argument types match").expect("returns f32");
            }
            vec![out]
        }
        FnForm::Slices => {
            let num_out = sig.num_outputs();
            let per_row = sig.returns() == Returns::RowScalar;
            let mut outs: Vec<Vec<f32>> = vec![vec![0.0; if per_row { rows } else { rows * n }]; num_out];
            for r in 0..rows {
                let (mut k, mut j, mut p) = (0, 0, 0);
                let mut args = Vec::new();
                for a in sig.args() {
                    args.push(match a {
                        Arg::Input { .. } => {
                            let v = &inputs[k];
                            k += 1;
                            let off = if v.len() == n { 0 } else { r * n };
                            AbiValue::ConstPtr(v[off..].as_ptr())
                        }
                        Arg::Output { .. } => {
                            let o = &mut outs[j];
                            j += 1;
                            AbiValue::MutPtr(o[r * n..].as_mut_ptr())
                        }
                        Arg::Dim { .. } => AbiValue::Usize(n),
                        Arg::Scalar { .. } => {
                            p += 1;
                            AbiValue::F32(params[p - 1])
                        }
                        Arg::Element { .. } => unreachable!("slice functions take no elements"),
                    });
                }
                // SAFETY: every pointer covers one row of n elements (or the broadcast row).
                let ret = unsafe { f.call(&args) }.expect("argument types match");
                if per_row {
                    outs[0][r] = ret.expect("reductions return f32");
                }
            }
            outs
        }
    }
}

/// The stated accuracy bound of each built-in op's kernel vs its reference.
fn within(kind: OpKind, got: f32, want: f32, x_scale: f32, n: usize) -> bool {
    if got.is_nan() || want.is_nan() {
        return got.is_nan() && want.is_nan();
    }
    let u = ulps(got, want);
    let diff = (got - want).abs();
    match kind.name() {
        // Pure IEEE arithmetic: bit-exact.
        "relu" | "mul" | "add" | "bias_add" | "scale" | "reduce_max" | "rope" | "squared_relu" => u == 0,
        "exp" => u <= 3,
        "sigmoid" | "silu" | "swiglu" | "tanh" | "hard_swish" => u <= 4 || diff <= 1e-37,
        // 1 + tanh(u) cancels for negative x: bound relative to |x|.
        "gelu" | "mish" | "softplus" => u <= 4 || diff <= 2e-7 * x_scale.max(1.0),
        // Normalised outputs: a sum of n terms in another order differs by
        // ~√n·ε relative (layer norm's x − mean by that much absolute).
        "rms_norm" | "layer_norm" | "softmax" => {
            u <= 8 || diff <= (8.0 + (n as f32).sqrt()) * f32::EPSILON * want.abs().max(1.0)
        }
        // Reordered sums (sum, dot, mean): relative to Σ|x| (≤ max|x|·n).
        _ => u <= 8 || diff <= 1e-6 * x_scale.max(1.0),
    }
}

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

fn check_op(op: &RegisteredOp, profile: &DeviceProfile, lengths: &[usize], rows: usize, rng: &mut Rng) {
    let trace = op.trace().unwrap();
    let params = params_for(op);
    let prog = LoopProgram::from_trace(&trace, params.clone()).unwrap();
    let kernel = LoopKernel::compile(&prog, profile)
        .unwrap_or_else(|e| panic!("{} on {}: {e}", op.kind(), profile.isa));
    for &n in lengths {
        let rows = if op.signature().form() == FnForm::PerElement { 1 } else { rows };
        let inputs = random_inputs(op, rng, rows, n, true);
        let want = reference(op, &inputs, &params, rows, n);
        let mut got: Vec<Vec<f32>> = want.iter().map(|w| vec![f32::NAN; w.len()]).collect();
        {
            let ins: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
            let mut outs: Vec<&mut [f32]> = got.iter_mut().map(|v| v.as_mut_slice()).collect();
            kernel.run(&ins, &mut outs, rows, n, 1).unwrap_or_else(|e| panic!("{} n={n}: {e}", op.kind()));
        }
        // Per-row magnitude (max |x| · n) for the row ops' reordered sums.
        let row_scale: Vec<f32> = (0..rows)
            .map(|r| {
                let m = inputs
                    .iter()
                    .filter(|v| v.len() == rows * n)
                    .flat_map(|v| v[r * n..(r + 1) * n].iter())
                    .fold(0.0f32, |m, x| if x.is_finite() { m.max(x.abs()) } else { m });
                m * (n as f32).max(1.0)
            })
            .collect();
        for (j, (g, w)) in got.iter().zip(&want).enumerate() {
            for i in 0..w.len() {
                let row = if w.len() == rows { i } else { i / n.max(1) };
                let scale = if op.signature().form() == FnForm::PerElement {
                    inputs.iter().map(|v| v[i % v.len()].abs()).fold(0.0, f32::max)
                } else {
                    row_scale[row]
                };
                assert!(
                    within(op.kind(), g[i], w[i], scale, n),
                    "{} ({}) n={n} rows={rows} output {j}[{i}]: got {:e}, reference {:e} ({} ulps); inputs {:?}",
                    op.kind(),
                    profile.isa,
                    g[i],
                    w[i],
                    ulps(g[i], w[i]),
                    inputs.iter().map(|v| v[i % v.len()]).collect::<Vec<_>>()
                );
            }
        }
    }
}

fn lengths() -> Vec<usize> {
    let mut v: Vec<usize> = (0..=300).collect();
    v.extend([1021, 4099, 65_537]);
    v
}

#[test]
fn every_builtin_non_gemm_op_matches_its_reference() {
    let registry = ScalarOpRegistry::global();
    let mut rng = Rng(0x5eed_0001);
    for profile in profiles() {
        for op in registry.iter().filter(|o| o.kind() != OpKind::MatMul) {
            check_op(op, &profile, &lengths(), 3, &mut rng);
        }
    }
}

#[test]
fn unseen_ops_compile_with_no_emitter_change() {
    let (registry, kinds) = support::unseen_registry();
    let mut rng = Rng(0x5eed_0002);
    for profile in profiles() {
        for &k in &kinds {
            check_op(registry.get(k).unwrap(), &profile, &lengths(), 4, &mut rng);
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
