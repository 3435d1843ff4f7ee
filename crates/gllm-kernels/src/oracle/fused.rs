//! Kernels that exist only inside a compiled graph: RMSNorm computed tile
//! by tile inside the GEMM's row-block loop (tile-level fusion).
//!
//! ```text
//!   x ──[rms_norm(w)]──> h ──[matmul(W)]──> y      compile_graph → one TileLevelFusion group
//!   want: the two reference functions one after the other
//! ```

use super::{GuardedBuffer, KernelKind, OpReport, Placement, Rng, Sweep, UNWRITTEN};
use crate::codegen::layer::compile_graph;
use crate::device::DeviceProfile;
use crate::graph::{CompilerGraph, CompilerOp, MatMulParams, TensorDesc};
use crate::reference;
use crate::runtime::LayerWorkspace;
use crate::scalar::{OpKind, ScalarOpRegistry};

/// Row length just past three quarters of `profile`'s L1d: the planner
/// tiles such a norm into the GEMM.
fn tiled_row_len(profile: &DeviceProfile) -> usize {
    profile.caches.l1d.size_bytes * 3 / 4 / 4 + 1
}

/// `rms_norm → matmul` through `compile_graph` at K tails (a norm row of
/// `K₀ + 0..=63`) and N tails (0..=64 columns), operands against guard pages.
pub fn test_tile_fused_norm_gemm(
    registry: &ScalarOpRegistry,
    profile: &DeviceProfile,
    sweep: Sweep,
) -> OpReport {
    let mut report = OpReport::new("rms_norm→matmul", profile.isa, KernelKind::TileFusedNormGemm);
    let k0 = tiled_row_len(profile);
    let mut shapes: Vec<(usize, usize, usize)> = match sweep {
        Sweep::Quick => vec![(3, 19, k0), (1, 7, k0 + 5)],
        Sweep::Full => (0..64).map(|t| (3, 19, k0 + t)).chain((0..=64).map(|n| (5, n, k0 + 7))).collect(),
    };
    shapes.push((1, 33, k0 + 3)); // one row: the GEMV path
    let eps = f32::EPSILON;
    report.tolerance = "≤ 2·(8 + 4√K)·ε · (|h|·|W|)".into();
    let mut rng = Rng(0x711e_d000 ^ profile.isa as u64);
    for (m, n, k) in shapes {
        for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
            let case = format!("m={m} n={n} k={k}, operands {placement}");
            match run_case(registry, profile, (m, n, k), placement, &mut rng) {
                Ok(CaseResult { got, want, scale }) => {
                    let bound = 2.0 * (8.0 + 4.0 * (k as f32).sqrt()) * eps;
                    let mut stats = super::ErrorStats::default();
                    for (i, ((g, w), s)) in got.iter().zip(&want).zip(&scale).enumerate() {
                        stats.add(*g, *w);
                        if !((g - w).abs() <= bound * s || g.to_bits() == w.to_bits()) {
                            report.fail(format!(
                                "{case}: y[{i}] = {g:e}, reference {w:e} (bound {:e})",
                                bound * s
                            ));
                            return report;
                        }
                    }
                    report.record(&stats);
                }
                Err(e) => {
                    report.fail(format!("{case}: {e}"));
                    return report;
                }
            }
        }
    }
    report
}

/// A case's kernel output, reference output and per-element |h|·|W|.
struct CaseResult {
    got: Vec<f32>,
    want: Vec<f32>,
    scale: Vec<f32>,
}

/// One case.
fn run_case(
    registry: &ScalarOpRegistry,
    profile: &DeviceProfile,
    (m, n, k): (usize, usize, usize),
    placement: Placement,
    rng: &mut Rng,
) -> Result<CaseResult, String> {
    let mut g = CompilerGraph::new();
    let x = g.input("x", TensorDesc::f32([m, k]));
    let nw = g.weight("norm", TensorDesc::f32([k]));
    let w = g.weight("w", TensorDesc::f32([k, n]));
    let h = g.node("norm", CompilerOp::rms_norm(1e-5), vec![x, nw], TensorDesc::f32([m, k]));
    let y =
        g.node("proj", CompilerOp::matmul(MatMulParams::new(m, n, k)), vec![h, w], TensorDesc::f32([m, n]));
    g.output(y);
    let layer = compile_graph(&g, profile, registry).map_err(|e| format!("does not compile: {e}"))?;
    let strategy = layer.plan().groups.iter().map(|gr| gr.strategy.name()).collect::<Vec<_>>();
    if m > 1 && !strategy.contains(&"TileLevelFusion") {
        return Err(format!("the planner did not tile the norm (groups: {strategy:?})"));
    }
    let xv: Vec<f32> = (0..m * k).map(|_| rng.row_value()).collect();
    let nv: Vec<f32> = (0..k).map(|_| rng.uniform(0.5, 1.5)).collect();
    let wv: Vec<f32> = (0..k * n).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let lookup = |name: &str| match name {
        "norm" => Some(&nv[..]),
        "w" => Some(&wv[..]),
        _ => None,
    };
    let prepared = layer.prepare_weights(&lookup).map_err(|e| e.to_string())?;
    let gx = GuardedBuffer::new(&xv, placement).map_err(|e| e.to_string())?;
    let mut gy = GuardedBuffer::filled(m * n, UNWRITTEN, placement).map_err(|e| e.to_string())?;
    layer
        .run_into(&prepared, &[gx.as_slice()], &mut [gy.as_mut_slice()], &mut LayerWorkspace::new())
        .map_err(|e| format!("run failed: {e}"))?;
    if !gx.canary_intact() || !gy.canary_intact() {
        return Err("wrote outside its operands".into());
    }
    // The references, one after the other; the scale from |h|·|W|.
    let norm = registry.get(OpKind::RmsNorm).map_err(|e| e.to_string())?;
    let mm = registry.get(OpKind::MatMul).map_err(|e| e.to_string())?;
    let mut hv = vec![0.0; m * k];
    reference::rows(norm, &[&xv, &nv], &[1e-5], m, k, &mut [&mut hv])?;
    let p = MatMulParams::new(m, n, k);
    let mut want = vec![0.0; m * n];
    reference::matmul(mm, &p, &[&hv, &wv], &mut want)?;
    let (ha, wa): (Vec<f32>, Vec<f32>) =
        (hv.iter().map(|v| v.abs()).collect(), wv.iter().map(|v| v.abs()).collect());
    let mut scale = vec![0.0; m * n];
    reference::matmul(mm, &p, &[&ha, &wa], &mut scale)?;
    Ok(CaseResult { got: gy.as_slice().to_vec(), want, scale })
}
