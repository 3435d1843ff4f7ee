//! JIT GEMM against the scalar MatMul reference on awkward shapes, both ISAs,
//! prepacked B, and 1 vs 2 threads.

mod support;

use gllm_kernels::oracle::{self, Tolerance};
use support::profiles;

use gllm_kernels::codegen::gemm::GemmKernel;
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::scalar::ops::gk_matmul;
use support::Rng;

fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut c = vec![0.0; m * n];
    // SAFETY: a is m·k, b is k·n, c is m·n.
    unsafe { gk_matmul(a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), m, n, k) };
    c
}

/// The oracle's product bound: |c − ref| relative to Σₚ|a_ip·b_pj|.
fn check(got: &[f32], want: &[f32], a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), what: &str) {
    oracle::check_matmul(got, want, a, b, (m, n, k)).unwrap_or_else(|e| panic!("{what} {m}×{n}×{k} C{e}"));
}

fn shapes() -> Vec<(usize, usize, usize)> {
    let small = [1usize, 2, 3, 15, 16, 17, 31, 33, 63, 65];
    let mut v = Vec::new();
    for (i, &m) in small.iter().enumerate() {
        for (j, &n) in small.iter().enumerate() {
            // Every (m, n) pair with three depths, cycling through the set.
            for d in 0..3 {
                v.push((m, n, small[(i + j + 3 * d) % small.len()]));
            }
        }
    }
    v.extend([
        (127, 257, 65),
        (257, 33, 127),
        (1000, 17, 31),
        (31, 1000, 65),
        (65, 31, 1000),
        (257, 257, 257),
        (1, 1000, 257),
        (0, 5, 3),
        (4, 0, 3),
        (4, 5, 0),
    ]);
    v
}

#[test]
fn gemm_matches_the_scalar_reference() {
    let mut rng = Rng(31);
    for profile in profiles() {
        let g = GemmKernel::compile(&profile).unwrap();
        for (m, n, k) in shapes() {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let want = reference(&a, &b, m, n, k);
            let mut c = vec![f32::NAN; m * n];
            g.gemm(&a, &b, &mut c, (m, n, k), 1).unwrap();
            check(&c, &want, &a, &b, (m, n, k), &format!("{}", profile.isa));
            let packed = g.pack_b(&b, k, n).unwrap();
            let mut c2 = vec![f32::NAN; m * n];
            g.gemm_prepacked(&a, &packed, &mut c2, m, 1).unwrap();
            assert!(
                c.iter().zip(&c2).all(|(x, y)| x.to_bits() == y.to_bits()),
                "prepacked differs {m}×{n}×{k}"
            );
        }
    }
}

#[test]
fn one_and_two_threads_agree_bit_for_bit() {
    let mut rng = Rng(32);
    for profile in profiles() {
        let g = GemmKernel::compile(&profile).unwrap();
        let bl = *g.blocking();
        // The last shape has several row blocks and K blocks per thread's
        // columns: B is packed per thread part, once, at a column offset.
        let several_blocks = (2 * bl.mc + 5, 6 * bl.nr + 3, bl.kc + 37);
        for (m, n, k) in [(128, 512, 300), (300, 16, 200), (7, 1000, 513), several_blocks] {
            let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
            let mut one = vec![0.0; m * n];
            let mut two = vec![1.0; m * n];
            g.gemm(&a, &b, &mut one, (m, n, k), 1).unwrap();
            g.gemm(&a, &b, &mut two, (m, n, k), 2).unwrap();
            assert!(one.iter().zip(&two).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}×{n}×{k}");
            let want = reference(&a, &b, m, n, k);
            check(&one, &want, &a, &b, (m, n, k), "threads");
        }
    }
}

#[test]
fn wrong_lengths_are_errors() {
    let g = GemmKernel::compile(&profiles()[0]).unwrap();
    let mut c = vec![0.0; 6];
    let e = g.gemm(&[0.0; 5], &[0.0; 12], &mut c, (2, 3, 4), 1).unwrap_err();
    assert_eq!(e.to_string(), "A has 5 elements, expected 8");
    let e = g.gemm(&[0.0; 8], &[0.0; 12], &mut c[..5], (2, 3, 4), 1).unwrap_err();
    assert_eq!(e.to_string(), "C has 5 elements, expected 6");
}

mod epilogue {
    use super::*;
    use gllm_kernels::codegen::gemm::GemmEpilogue;
    use gllm_kernels::scalar::ops::*;
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

    fn body(kind: OpKind) -> gllm_kernels::trace::Body {
        ScalarOpRegistry::global().trace(kind).unwrap().body.clone()
    }

    /// (epilogue, extras as (is_full_matrix), scalar composition, ulp bound, fits AVX2)
    type Case = (&'static str, GemmEpilogue, Vec<bool>, fn(f32, &[f32]) -> f32, u32, bool);

    fn cases() -> Vec<Case> {
        vec![
            (
                "bias",
                GemmEpilogue::new().then(&body(OpKind::BiasAdd), 0, &[]).unwrap(),
                vec![false],
                |c, e| gk_bias_add(c, e[0]),
                0,
                true,
            ),
            (
                "residual",
                GemmEpilogue::new().then(&body(OpKind::Add), 0, &[]).unwrap(),
                vec![true],
                |c, e| gk_add(c, e[0]),
                0,
                true,
            ),
            (
                "scale",
                GemmEpilogue::new().then(&body(OpKind::Scale), 0, &[0.125]).unwrap(),
                vec![],
                |c, _| gk_scale(c, 0.125),
                0,
                true,
            ),
            (
                "relu",
                GemmEpilogue::new().then(&body(OpKind::Relu), 0, &[]).unwrap(),
                vec![],
                |c, _| gk_relu(c),
                0,
                true,
            ),
            (
                "bias·silu·mul(up)",
                GemmEpilogue::new()
                    .then(&body(OpKind::BiasAdd), 0, &[])
                    .unwrap()
                    .then(&body(OpKind::Silu), 0, &[])
                    .unwrap()
                    .then(&body(OpKind::Mul), 0, &[])
                    .unwrap(),
                vec![false, true],
                |c, e| gk_mul(gk_silu(gk_bias_add(c, e[0])), e[1]),
                4,
                false,
            ),
        ]
    }

    #[test]
    fn epilogues_match_the_composed_references() {
        let mut rng = Rng(33);
        for profile in profiles() {
            let plain = GemmKernel::compile(&profile).unwrap();
            for (name, epi, full, reference, bound, fits_avx2) in cases() {
                let fused = match GemmKernel::compile_with_epilogue(&profile, &epi) {
                    Ok(g) => g,
                    Err(e) => {
                        assert!(profile.isa == Isa::Avx2 && !fits_avx2, "{name} on {}: {e}", profile.isa);
                        assert_eq!(
                            e.to_string(),
                            "cannot generate code for an epilogue needing 5 scratch registers: the 6×16 microkernel leaves 4"
                        );
                        continue;
                    }
                };
                for (m, n, k) in
                    [(1, 1, 1), (13, 33, 17), (24, 64, 300), (12, 32, 128), (100, 70, 257), (5, 3, 0)]
                {
                    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
                    let extras: Vec<Vec<f32>> = full
                        .iter()
                        .map(|&f| (0..if f { m * n } else { n }).map(|_| rng.uniform(-2.0, 2.0)).collect())
                        .collect();
                    let ex: Vec<&[f32]> = extras.iter().map(|v| v.as_slice()).collect();
                    let mut raw = vec![0.0; m * n];
                    plain.gemm(&a, &b, &mut raw, (m, n, k), 1).unwrap();
                    for threads in [1, 2] {
                        let mut c = vec![f32::NAN; m * n];
                        fused.gemm_with(&a, &b, &mut c, (m, n, k), &ex, threads).unwrap();
                        let packed = fused.pack_b(&b, k, n).unwrap();
                        let mut c2 = vec![f32::NAN; m * n];
                        fused.gemm_prepacked_with(&a, &packed, &mut c2, m, &ex, threads).unwrap();
                        let want: Vec<f32> = (0..m * n)
                            .map(|ij| {
                                let e: Vec<f32> = extras
                                    .iter()
                                    .map(|v| if v.len() == n { v[ij % n] } else { v[ij] })
                                    .collect();
                                reference(raw[ij], &e)
                            })
                            .collect();
                        for (what, got) in [("gemm", &c), ("prepacked", &c2)] {
                            let case = format!("{name} {what} on {} {m}×{n}×{k} t={threads}", profile.isa);
                            support::assert_within(
                                &case,
                                got,
                                &want,
                                &[],
                                &Tolerance::ulps(u64::from(bound)),
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn extra_operands_are_checked() {
        let profile = profiles().remove(0);
        let g = GemmKernel::compile_with_epilogue(
            &profile,
            &GemmEpilogue::new().then(&body(OpKind::BiasAdd), 0, &[]).unwrap(),
        )
        .unwrap();
        let mut c = vec![0.0; 6];
        let e = g.gemm_with(&[0.0; 8], &[0.0; 12], &mut c, (2, 3, 4), &[], 1).unwrap_err();
        assert_eq!(e.to_string(), "the epilogue reads 1 extra operand(s), 0 given");
        let e = g.gemm_with(&[0.0; 8], &[0.0; 12], &mut c, (2, 3, 4), &[&[0.0; 4]], 1).unwrap_err();
        assert_eq!(e.to_string(), "extra operand 0 has 4 elements; expected 3 (one row) or 6 (2×3)");
    }
}

mod group {
    use super::*;
    use gllm_kernels::codegen::gemm::{gemm_group, GemmEpilogue, GroupMember, TileProducer};
    use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};

    fn rms_kernel(profile: &DeviceProfile) -> LoopKernel {
        let t = ScalarOpRegistry::global().trace(OpKind::RmsNorm).unwrap();
        LoopKernel::compile(&LoopProgram::from_trace(&t, vec![1e-5]).unwrap(), profile).unwrap()
    }

    #[test]
    fn tile_level_norm_and_shared_input_equal_the_unfused_sequence() {
        let mut rng = Rng(34);
        for profile in profiles() {
            let rms = rms_kernel(&profile);
            let plain = GemmKernel::compile(&profile).unwrap();
            let bias = GemmEpilogue::new()
                .then(&ScalarOpRegistry::global().trace(OpKind::BiasAdd).unwrap().body, 0, &[])
                .unwrap();
            let with_bias = GemmKernel::compile_with_epilogue(&profile, &bias).unwrap();
            let mc = plain.blocking().mc;
            for (m, k) in [(1, 1), (5, 17), (13, 300), (100, 64), (mc + 7, 33), (7, 0)] {
                let ns = [33usize, 1, 100];
                let x: Vec<f32> = (0..m * k).map(|_| rng.uniform(-2.0, 2.0)).collect();
                let w: Vec<f32> = (0..k).map(|_| rng.uniform(0.5, 1.5)).collect();
                let bs: Vec<Vec<f32>> =
                    ns.iter().map(|&n| (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect()).collect();
                let packed: Vec<_> =
                    bs.iter().zip(&ns).map(|(b, &n)| plain.pack_b(b, k, n).unwrap()).collect();
                let bias_v: Vec<f32> = (0..ns[2]).map(|_| rng.uniform(-1.0, 1.0)).collect();
                // Unfused: the norm over all rows, then each GEMM.
                let mut normed = vec![0.0; m * k];
                rms.run(&[&x, &w], &mut [&mut normed], m, k, 1).unwrap();
                let mut want: Vec<Vec<f32>> = ns.iter().map(|&n| vec![0.0; m * n]).collect();
                plain.gemm_prepacked(&normed, &packed[0], &mut want[0], m, 1).unwrap();
                plain.gemm_prepacked(&normed, &packed[1], &mut want[1], m, 1).unwrap();
                with_bias.gemm_prepacked_with(&normed, &packed[2], &mut want[2], m, &[&bias_v], 1).unwrap();
                for threads in [1, 2] {
                    let mut got: Vec<Vec<f32>> = ns.iter().map(|&n| vec![f32::NAN; m * n]).collect();
                    {
                        let (g0, rest) = got.split_at_mut(1);
                        let (g1, g2) = rest.split_at_mut(1);
                        let no_extras: [&[f32]; 0] = [];
                        let bias_extra = [&bias_v[..]];
                        let mut members = [
                            GroupMember {
                                gemm: &plain,
                                b: &packed[0],
                                c: &mut g0[0],
                                extras: &no_extras,
                                from_members: &[],
                            },
                            GroupMember {
                                gemm: &plain,
                                b: &packed[1],
                                c: &mut g1[0],
                                extras: &no_extras,
                                from_members: &[],
                            },
                            GroupMember {
                                gemm: &with_bias,
                                b: &packed[2],
                                c: &mut g2[0],
                                extras: &bias_extra,
                                from_members: &[],
                            },
                        ];
                        let weight = [&w[..]];
                        let producer = TileProducer { kernel: &rms, inputs: &weight };
                        gemm_group(&x, m, Some(producer), &mut members, threads).unwrap();
                    }
                    for (i, (g, wv)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            g.iter().zip(wv).all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{} member {i} m={m} k={k} threads={threads}",
                            profile.isa
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn group_members_must_agree() {
        let profile = profiles().remove(0);
        let g = GemmKernel::compile(&profile).unwrap();
        let b1 = g.pack_b(&[0.0; 8], 4, 2).unwrap();
        let b2 = g.pack_b(&[0.0; 6], 3, 2).unwrap();
        let (mut c1, mut c2) = (vec![0.0; 2], vec![0.0; 2]);
        let none: [&[f32]; 0] = [];
        let mut members = [
            GroupMember { gemm: &g, b: &b1, c: &mut c1, extras: &none, from_members: &[] },
            GroupMember { gemm: &g, b: &b2, c: &mut c2, extras: &none, from_members: &[] },
        ];
        let e = gemm_group(&[0.0; 4], 1, None, &mut members, 1).unwrap_err();
        assert_eq!(e.to_string(), "member 1 does not share K = 4 and the blocking of member 0");
    }
}

#[test]
fn the_planned_epilogue_runs_as_planned() {
    use gllm_kernels::codegen::gemm::GemmEpilogue;
    use gllm_kernels::fusion::{fuse, FusionStrategy};
    use gllm_kernels::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc};
    use gllm_kernels::scalar::ops::{gk_bias_add, gk_silu};
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
    let host = DeviceProfile::detect().unwrap();
    if !host.features.supports(Isa::Avx512) {
        return; // SiLU does not fit the AVX2 microkernel's free registers.
    }
    let profile = host.with_isa(Isa::Avx512).unwrap();
    let (m, n, k) = (37, 70, 50);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let w = g.weight("w", TensorDesc::f32([k, n]));
    let bias = g.weight("bias", TensorDesc::f32([n]));
    let y =
        g.node("proj", CompilerOp::matmul(MatMulParams::new(m, n, k)), vec![x, w], TensorDesc::f32([m, n]));
    let z = g.node("bias", CompilerOp::new(OpKind::BiasAdd), vec![y, bias], TensorDesc::f32([m, n]));
    let s = g.node("act", CompilerOp::new(OpKind::Silu), vec![z], TensorDesc::f32([m, n]));
    g.output(s);
    let plan = fuse(&g, &profile).unwrap();
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let FusionStrategy::Gemm(f) = &plan.groups[0].strategy else { panic!("not a GEMM group") };
    assert_eq!(f.members[0].epilogue.len(), 2);
    let (epi, extras) = GemmEpilogue::from_plan(&sem, &f.members[0].epilogue).unwrap();
    assert_eq!(extras.len(), 1);
    let kernel = GemmKernel::compile_with_epilogue(&profile, &epi).unwrap();
    let mut rng = Rng(35);
    let a: Vec<f32> = (0..m * k).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let b: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let bv: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut c = vec![0.0; m * n];
    kernel.gemm_with(&a, &b, &mut c, (m, n, k), &[&bv], 2).unwrap();
    let mut raw = vec![0.0; m * n];
    GemmKernel::compile(&profile).unwrap().gemm(&a, &b, &mut raw, (m, n, k), 1).unwrap();
    for i in 0..m * n {
        let want = gk_silu(gk_bias_add(raw[i], bv[i % n]));
        assert!(
            (c[i] - want).abs() <= 4.0 * f32::EPSILON * want.abs().max(f32::MIN_POSITIVE),
            "[{i}] {} vs {want}",
            c[i]
        );
    }
}

/// A plan's GEMM group compiled and run as planned — tile-level fusion on a
/// small-L1 profile, compute root on the normal one — equals the unfused
/// sequence bit for bit.
#[test]
fn planned_gemm_groups_run_as_planned() {
    use gllm_kernels::codegen::gemm::{CompiledGemmGroup, PreparedB};
    use gllm_kernels::codegen::group::CompiledGroup;
    use gllm_kernels::fusion::{fuse, FusionStrategy, ProducerPlacement};
    use gllm_kernels::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc};
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
    let (m, k, nq, nk) = (29, 300, 70, 33);
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let nw = g.weight("norm", TensorDesc::f32([k]));
    let wq = g.weight("wq", TensorDesc::f32([k, nq]));
    let wk = g.weight("wk", TensorDesc::f32([k, nk]));
    let bk = g.weight("bk", TensorDesc::f32([nk]));
    let normed = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, nw], TensorDesc::f32([m, k]));
    let q = g.node(
        "q",
        CompilerOp::matmul(MatMulParams::new(m, nq, k)),
        vec![normed.clone(), wq],
        TensorDesc::f32([m, nq]),
    );
    let kk = g.node(
        "k",
        CompilerOp::matmul(MatMulParams::new(m, nk, k)),
        vec![normed, wk],
        TensorDesc::f32([m, nk]),
    );
    let kb = g.node("k_bias", CompilerOp::new(OpKind::BiasAdd), vec![kk, bk], TensorDesc::f32([m, nk]));
    g.output(q);
    g.output(kb);
    let sem = g.analyse(ScalarOpRegistry::global()).unwrap();
    let mut rng = Rng(36);
    let mut values: std::collections::HashMap<usize, Vec<f32>> = std::collections::HashMap::new();
    for t in sem.tensors.iter().filter(|t| t.producer.is_none()) {
        values.insert(t.id, (0..t.desc.numel()).map(|_| rng.uniform(-1.0, 1.0)).collect());
    }
    let mut results: Vec<Vec<Vec<f32>>> = Vec::new();
    for small_l1 in [false, true] {
        let mut profile = profiles().pop().unwrap();
        if small_l1 {
            profile.caches.l1d.size_bytes = 1024; // a 1200-byte row no longer fits
        }
        let plan = fuse(&g, &profile).unwrap();
        let mut store = values.clone();
        let mut outs = Vec::new();
        for group in &plan.groups {
            match &group.strategy {
                FusionStrategy::Gemm(f) => {
                    let tiled =
                        matches!(f.producer.unwrap().placement, ProducerPlacement::TileLevelFusion { .. });
                    assert_eq!(tiled, small_l1);
                    let cg = CompiledGemmGroup::compile(&sem, group, &profile).unwrap();
                    let kernel = cg.member_kernel(0).unwrap();
                    let packed: Vec<_> = f
                        .members
                        .iter()
                        .map(|mb| {
                            let w = sem.nodes[mb.node].inputs[1];
                            let n = sem.tensors[w].desc.shape[1];
                            PreparedB::Packed(kernel.pack_b(&store[&w], k, n).unwrap())
                        })
                        .collect();
                    let packed_refs: Vec<_> = packed.iter().collect();
                    let mut bufs: Vec<Vec<f32>> =
                        cg.outputs().iter().map(|&t| vec![f32::NAN; sem.tensors[t].desc.numel()]).collect();
                    {
                        let mut out_refs: Vec<&mut [f32]> =
                            bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                        let lookup = |t: usize| store[&t].as_slice();
                        cg.run(&lookup, &packed_refs, &mut out_refs).unwrap();
                    }
                    for (t, b) in cg.outputs().into_iter().zip(bufs) {
                        store.insert(t, b);
                    }
                }
                _ => {
                    let cg = CompiledGroup::compile(&sem, group, &profile).unwrap();
                    let ins: Vec<&[f32]> = cg.inputs().iter().map(|t| store[t].as_slice()).collect();
                    let mut out = vec![f32::NAN; sem.tensors[cg.output()].desc.numel()];
                    cg.run(&ins, &mut out).unwrap();
                    store.insert(cg.output(), out);
                }
            }
        }
        for t in sem.tensors.iter().filter(|t| t.is_graph_output) {
            outs.push(store[&t.id].clone());
        }
        results.push(outs);
    }
    for (a, b) in results[0].iter().zip(&results[1]) {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "tile-fused and compute-root plans differ"
        );
        assert!(a.iter().all(|v| v.is_finite()));
    }
    // And against the scalar references: norm, then matmul (+ bias).
    let mut normed_ref = vec![0.0; m * k];
    let (xv, wv) = (&values[&0], &values[&1]);
    for r in 0..m {
        // SAFETY: one row of k elements in and out.
        unsafe {
            gllm_kernels::scalar::ops::gk_rms_norm(
                xv[r * k..].as_ptr(),
                wv.as_ptr(),
                normed_ref[r * k..].as_mut_ptr(),
                k,
                1e-5,
            )
        };
    }
    let q_ref = reference(&normed_ref, &values[&sem.nodes[1].inputs[1]], m, nq, k);
    for (got, want) in results[0][0].iter().zip(&q_ref) {
        assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
    }
}

/// Attention-shaped batched GEMMs (heads as column blocks, grouped-query
/// sharing, transposed K, a shared mask in the epilogue) against loops over
/// the scalar definition.
#[test]
fn batched_attention_gemms_match_the_definition() {
    // Small; several row and column tiles with edges (and K^T panels wider
    // than one NR); one token (decode).
    for (seq, heads, kv, hd) in [(7, 4, 2, 16), (45, 6, 2, 80), (1, 3, 3, 5)] {
        batched_attention_case(seq, heads, kv, hd);
    }
}

fn batched_attention_case(seq: usize, heads: usize, kv: usize, hd: usize) {
    use gllm_kernels::codegen::gemm::GemmEpilogue;
    use gllm_kernels::graph::{BatchLayout, MatMulParams};
    use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
    let g_size = heads / kv;
    let scale = 0.25f32;
    let mut rng = Rng(37);
    let q: Vec<f32> = (0..seq * heads * hd).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let k: Vec<f32> = (0..seq * kv * hd).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let v: Vec<f32> = (0..seq * kv * hd).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mask: Vec<f32> = (0..seq * seq).map(|x| if x % seq > x / seq { -1e9 } else { 0.0 }).collect();
    let reg = ScalarOpRegistry::global();
    let epi = GemmEpilogue::new()
        .then(&reg.trace(OpKind::Scale).unwrap().body, 0, &[scale])
        .unwrap()
        .then(&reg.trace(OpKind::Add).unwrap().body, 0, &[])
        .unwrap();
    for profile in profiles() {
        let scores_k = GemmKernel::compile_with_epilogue(&profile, &epi).unwrap();
        let p = MatMulParams {
            batch: heads,
            b_shared_by: g_size,
            transpose_b: true,
            a_layout: BatchLayout::Interleaved,
            b_layout: BatchLayout::Interleaved,
            c_layout: BatchLayout::Stacked,
            ..MatMulParams::new(seq, seq, hd)
        };
        for threads in [1, 2] {
            let mut scores = vec![f32::NAN; heads * seq * seq];
            scores_k.gemm_batched(&q, &k, &mut scores, &p, &[&mask], threads).unwrap();
            for h in 0..heads {
                for i in 0..seq {
                    for j in 0..seq {
                        let dot: f32 = (0..hd)
                            .map(|x| q[i * heads * hd + h * hd + x] * k[j * kv * hd + (h / g_size) * hd + x])
                            .sum();
                        let want = dot * scale + mask[i * seq + j];
                        let got = scores[(h * seq + i) * seq + j];
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{} seq {seq}: scores[{h},{i},{j}] {got} vs {want}",
                            profile.isa
                        );
                    }
                }
            }
            // P·V back into the heads' column blocks.
            let pv = GemmKernel::compile(&profile).unwrap();
            let p2 = MatMulParams {
                batch: heads,
                b_shared_by: g_size,
                a_layout: BatchLayout::Stacked,
                b_layout: BatchLayout::Interleaved,
                c_layout: BatchLayout::Interleaved,
                ..MatMulParams::new(seq, hd, seq)
            };
            let probs: Vec<f32> = (0..heads * seq * seq).map(|_| rng.uniform(0.0, 1.0)).collect();
            let mut out = vec![f32::NAN; seq * heads * hd];
            pv.gemm_batched(&probs, &v, &mut out, &p2, &[], threads).unwrap();
            for h in 0..heads {
                for i in 0..seq {
                    for d in 0..hd {
                        let want: f32 = (0..seq)
                            .map(|j| probs[(h * seq + i) * seq + j] * v[j * kv * hd + (h / g_size) * hd + d])
                            .sum();
                        let got = out[i * heads * hd + h * hd + d];
                        assert!(
                            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                            "{} seq {seq}: out[{i},{h},{d}] {got} vs {want}",
                            profile.isa
                        );
                    }
                }
            }
        }
    }
}
