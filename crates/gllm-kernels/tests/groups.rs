//! Fused non-GEMM groups against the composition of their ops' scalar
//! reference functions.

mod support;

use gllm_kernels::oracle::{Scale, Tolerance};
use support::assert_within;
use support::profiles;

use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{fuse, FusionPlan, FusionStrategy};
use gllm_kernels::graph::{CompilerGraph, CompilerOp, TensorDesc};
use gllm_kernels::scalar::ops::*;
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use support::Rng;

fn compile_only_group(g: &CompilerGraph, profile: &DeviceProfile) -> (FusionPlan, CompiledGroup) {
    let plan = fuse(g, profile).unwrap();
    assert_eq!(plan.groups.len(), 1, "{}", plan.explain(g));
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let cg = CompiledGroup::compile(&sem, &plan.groups[0], profile).unwrap();
    (plan, cg)
}

fn rand_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(-4.0, 4.0)).collect()
}

#[test]
fn silu_mul_add_chain_is_one_pass_and_matches_the_references() {
    let mut rng = Rng(11);
    for profile in profiles() {
        for (rows, n) in [(1, 0), (1, 1), (1, 17), (3, 31), (5, 300), (2, 4099)] {
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([rows, n]));
            let res = g.input("res", TensorDesc::f32([rows, n]));
            let w = g.weight("w", TensorDesc::f32([n]));
            let a = g.node("silu", CompilerOp::new(OpKind::Silu), vec![x], TensorDesc::f32([rows, n]));
            let b = g.node("mul", CompilerOp::new(OpKind::Mul), vec![a, w], TensorDesc::f32([rows, n]));
            let c = g.node("add", CompilerOp::new(OpKind::Add), vec![b, res], TensorDesc::f32([rows, n]));
            g.output(c);
            let (plan, cg) = compile_only_group(&g, &profile);
            assert!(matches!(plan.groups[0].strategy, FusionStrategy::LoopFusion));
            let (xv, rv, wv) =
                (rand_vec(&mut rng, rows * n), rand_vec(&mut rng, rows * n), rand_vec(&mut rng, n));
            let by_id = |t: usize| -> &[f32] {
                match plan.tensor_names[t].split(' ').next().unwrap() {
                    "x" => &xv,
                    "res" => &rv,
                    _ => &wv,
                }
            };
            let ins: Vec<&[f32]> = cg.inputs().iter().map(|&t| by_id(t)).collect();
            let mut out = vec![f32::NAN; rows * n];
            cg.run(&ins, &mut out).unwrap();
            let terms: Vec<f32> = (0..rows * n).map(|i| gk_mul(gk_silu(xv[i]), wv[i % n])).collect();
            let want: Vec<f32> = (0..rows * n).map(|i| gk_add(terms[i], rv[i])).collect();
            // 4 ulps of the larger addend: SiLU's error survives the add's cancellation.
            let scale: Vec<f32> = (0..rows * n).map(|i| terms[i].abs().max(rv[i].abs())).collect();
            let tol = Tolerance {
                max_ulps: 4,
                rel: 4.0 * f32::EPSILON,
                scale: Scale::OutputAndInputs,
                max_nmse: 1e-10,
            };
            assert_within(&format!("{} rows={rows} n={n} ", profile.isa), &out, &want, &scale, &tol);
        }
    }
}

#[test]
fn rms_norm_with_elementwise_consumer_fuses_before_the_store() {
    let mut rng = Rng(12);
    for profile in profiles() {
        for (rows, n) in [(1, 1), (3, 7), (4, 64), (2, 1000), (7, 4096)] {
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([rows, n]));
            let w = g.weight("w", TensorDesc::f32([n]));
            let a = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, w], TensorDesc::f32([rows, n]));
            let b = g.node("act", CompilerOp::new(OpKind::Silu), vec![a], TensorDesc::f32([rows, n]));
            g.output(b);
            let (plan, cg) = compile_only_group(&g, &profile);
            assert!(matches!(plan.groups[0].strategy, FusionStrategy::RowFusion { .. }));
            let (xv, wv) = (rand_vec(&mut rng, rows * n), rand_vec(&mut rng, n));
            let ins: Vec<&[f32]> = cg
                .inputs()
                .iter()
                .map(|&t| if plan.tensor_names[t].starts_with("x ") { &xv[..] } else { &wv[..] })
                .collect();
            let mut out = vec![f32::NAN; rows * n];
            cg.run(&ins, &mut out).unwrap();
            let mut normed = vec![0.0; rows * n];
            for r in 0..rows {
                // SAFETY: one row of n elements in, one out.
                unsafe {
                    gk_rms_norm(xv[r * n..].as_ptr(), wv.as_ptr(), normed[r * n..].as_mut_ptr(), n, 1e-5)
                };
            }
            let want: Vec<f32> = normed.iter().map(|&v| gk_silu(v)).collect();
            // Sums in a different order: 1e-5 relative (1.4e-6 measured at n = 4096).
            let scale: Vec<f32> = want.iter().map(|w| w.abs().max(1e-3)).collect();
            let tol = Tolerance { max_ulps: 8, rel: 1e-5, scale: Scale::OutputAndInputs, max_nmse: 1e-9 };
            assert_within(&format!("{} rows={rows} n={n} ", profile.isa), &out, &want, &scale, &tol);
        }
    }
}

#[test]
fn rope_on_head_halves_matches_the_reference() {
    let mut rng = Rng(13);
    for profile in profiles() {
        for (tokens, heads, hd) in [(1, 1, 2), (3, 2, 8), (5, 9, 64), (2, 4, 128)] {
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([tokens, heads * hd]));
            let cos = g.input("cos", TensorDesc::f32([tokens, hd / 2]));
            let sin = g.input("sin", TensorDesc::f32([tokens, hd / 2]));
            let r = g.node(
                "rope",
                CompilerOp::rope(hd),
                vec![x, cos, sin],
                TensorDesc::f32([tokens, heads * hd]),
            );
            g.output(r);
            let (_, cg) = compile_only_group(&g, &profile);
            let xv = rand_vec(&mut rng, tokens * heads * hd);
            let cv = rand_vec(&mut rng, tokens * hd / 2);
            let sv = rand_vec(&mut rng, tokens * hd / 2);
            let mut out = vec![f32::NAN; xv.len()];
            cg.run(&[&xv, &cv, &sv], &mut out).unwrap();
            let half = hd / 2;
            let mut want = vec![0.0; xv.len()];
            for t in 0..tokens {
                for h in 0..heads {
                    let b = (t * heads + h) * hd;
                    let (lo, hi) = want[b..b + hd].split_at_mut(half);
                    // SAFETY: each slice has `half` elements.
                    unsafe {
                        gk_rope(
                            xv[b..].as_ptr(),
                            xv[b + half..].as_ptr(),
                            cv[t * half..].as_ptr(),
                            sv[t * half..].as_ptr(),
                            lo.as_mut_ptr(),
                            hi.as_mut_ptr(),
                            half,
                        )
                    };
                }
            }
            assert_within(
                &format!("{} {tokens}×{heads}×{hd} ", profile.isa),
                &out,
                &want,
                &[],
                &Tolerance::EXACT,
            );
        }
    }
}

/// Not RoPE: a function of two halves and one table, registered at run
/// time. Paired halves are a graph-level binding any such function can use.
unsafe extern "C" fn pair_mix(
    x0: *const f32,
    x1: *const f32,
    t: *const f32,
    o0: *mut f32,
    o1: *mut f32,
    n: usize,
) {
    for i in 0..n {
        // SAFETY: the caller passes n elements behind every pointer.
        unsafe {
            let (a, b, w) = (*x0.add(i), *x1.add(i), *t.add(i));
            *o0.add(i) = a + b * w;
            *o1.add(i) = b - a * w;
        }
    }
}

#[test]
fn a_custom_paired_halves_op_runs_through_the_same_path_as_rope() {
    use gllm_kernels::codegen::layer::compile_graph;
    use gllm_kernels::graph::OpParams;
    use gllm_kernels::scalar::{Arg, Len, OpSignature, Returns, TensorRole};
    let mut registry = ScalarOpRegistry::with_builtins();
    let half = |name| Arg::Input { name, role: TensorRole::Activation, len: Len::Dim(0) };
    let sig = OpSignature::new(
        vec![
            half("x0"),
            half("x1"),
            Arg::Input { name: "t", role: TensorRole::Table, len: Len::Dim(0) },
            Arg::Output { name: "o0", len: Len::Dim(0) },
            Arg::Output { name: "o1", len: Len::Dim(0) },
            Arg::Dim { name: "n" },
        ],
        Returns::Nothing,
    )
    .unwrap();
    type PairFn = unsafe extern "C" fn(*const f32, *const f32, *const f32, *mut f32, *mut f32, usize);
    let kind = registry.register_custom("pair_mix", pair_mix as PairFn, sig).unwrap();
    let mut rng = Rng(0x9a1);
    for profile in profiles() {
        for (rows, blocks, period) in [(1, 1, 2), (3, 3, 6), (4, 5, 34)] {
            let mut g = CompilerGraph::new();
            let x = g.input("x", TensorDesc::f32([rows, blocks * period]));
            let t = g.weight("t", TensorDesc::f32([rows, period / 2]));
            let op = CompilerOp::with_params(kind, OpParams::PairedHalves { period });
            let y = g.node("mix", op, vec![x, t], TensorDesc::f32([rows, blocks * period]));
            g.output(y);
            let layer = compile_graph(&g, &profile, &registry).unwrap();
            let xv = rand_vec(&mut rng, rows * blocks * period);
            let tv = rand_vec(&mut rng, rows * period / 2);
            let weights = layer.prepare_weights(&|_: &str| Some(&tv[..])).unwrap();
            let got = layer.run(&weights, &[&xv]).unwrap().remove(0);
            let h = period / 2;
            let mut direct = vec![f32::NAN; got.len()];
            for r in 0..rows {
                for b in 0..blocks {
                    for i in 0..h {
                        let at = r * blocks * period + b * period + i;
                        let (a, c, w) = (xv[at], xv[at + h], tv[r * h + i]);
                        (direct[at], direct[at + h]) = (a + c * w, c - a * w);
                    }
                }
            }
            let case = format!("{} {rows}×{blocks}×{period} ", profile.isa);
            assert_within(&case, &got, &direct, &[], &Tolerance::EXACT);
            // The scalar reference evaluates the same binding.
            let sem = g.analyse(&registry).unwrap();
            let want = gllm_kernels::reference::evaluate(&sem, &registry, &[&xv], &|_: &str| Some(&tv[..]))
                .unwrap()
                .remove(0);
            assert_within(&format!("{case}vs reference::evaluate "), &got, &want, &[], &Tolerance::EXACT);
        }
    }
}

#[test]
fn gemm_groups_are_refused_with_a_clear_error() {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([4, 8]));
    let w = g.weight("w", TensorDesc::f32([8, 2]));
    let y = g.node(
        "mm",
        CompilerOp::matmul(gllm_kernels::graph::MatMulParams::new(4, 2, 8)),
        vec![x, w],
        TensorDesc::f32([4, 2]),
    );
    g.output(y);
    let profile = profiles().remove(0);
    let plan = fuse(&g, &profile).unwrap();
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let e = CompiledGroup::compile(&sem, &plan.groups[0], &profile).unwrap_err();
    assert_eq!(e.to_string(), "cannot generate code for GEMM groups (they have their own generator)");
}
