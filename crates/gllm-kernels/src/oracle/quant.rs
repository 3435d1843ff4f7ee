//! The quantised-weight GEMV kernels against their scalar references.
//!
//! ```text
//!   random stored blocks ──[QuantPanels::gemv]─────────────────────> y
//!        │ (scales zero, subnormal f16, extreme; random codes)
//!        ├──[quant::row_dot_quantized: the integer path, exact]──> bound: f32 rounding only
//!        └──[quant::row_dot: what the weights mean, f64]────────> bound: + activation rounding
//! ```
//!
//! F16/BF16 have no activation rounding: only the f32 summation rounds.

use super::{guard_all, GuardedBuffer, KernelKind, OpReport, Placement, Rng, Sweep, UNWRITTEN};
use crate::codegen::quant_gemv::{QuantKernelIsa, QuantPanels};
use crate::quant::{
    activation_quantisation_bound, dequantize_row, quantize_activation_block_at, row_dot, row_dot_quantized,
    ActivationPrecision, QuantFormat, QuantMatrix, ACT_BLOCK,
};
use half::{bf16, f16};

/// An f16 scale: mostly ordinary, sometimes zero, subnormal or extreme.
fn random_scale(rng: &mut Rng) -> [u8; 2] {
    let v = match rng.next_u64() % 16 {
        0 => f16::ZERO,
        1 => f16::from_bits(1 + (rng.next_u64() % 1023) as u16),
        2 => f16::from_f32(if rng.next_u64() % 2 == 0 { 60000.0 } else { -60000.0 }),
        3 => f16::from_f32(rng.uniform(-1e-4, 1e-4)),
        _ => f16::from_f32(rng.uniform(-0.05, 0.05)),
    };
    v.to_le_bytes()
}

/// `rows × cols` random stored bytes of `format` (`cols` whole blocks):
/// random codes, and scales that are ordinary, zero, subnormal or extreme.
pub fn random_stored_matrix(format: QuantFormat, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let blocks = rows * cols / format.block_elems();
    let mut out = Vec::with_capacity(blocks * format.block_bytes());
    for _ in 0..blocks {
        match format {
            QuantFormat::F16 | QuantFormat::Bf16 => {
                let v = f16::from_le_bytes(random_scale(rng)).to_f32() * rng.uniform(-1.0, 1.0);
                if format == QuantFormat::F16 {
                    out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
                } else {
                    out.extend_from_slice(&bf16::from_f32(v * 1e3).to_le_bytes());
                }
            }
            // Random codes and i8 scales, then `d` at the end.
            QuantFormat::Q6K => {
                out.extend((0..format.block_bytes() - 2).map(|_| rng.next_u64() as u8));
                out.extend_from_slice(&random_scale(rng));
            }
            // Q4_1: d, m; Q4_K: d, dmin (its 6-bit scales are random bytes).
            _ => {
                let head = if matches!(format, QuantFormat::Q4_1 | QuantFormat::Q4K) { 4 } else { 2 };
                out.extend_from_slice(&random_scale(rng));
                if head == 4 {
                    out.extend_from_slice(&random_scale(rng));
                }
                out.extend((head..format.block_bytes()).map(|_| rng.next_u64() as u8));
            }
        }
    }
    out
}

/// Activations as a model feeds them: mostly small, every 97th zero or an
/// outlier a hundred times larger.
pub fn random_activations(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .map(|i| match i % 97 {
            0 => 0.0,
            1 => rng.uniform(-300.0, 300.0),
            _ => rng.uniform(-2.0, 2.0),
        })
        .collect()
}

/// Checks `y` (`m × rows`) = `x · Wᵀ` against the scalar references with
/// the stated bounds; returns the worst distance in ULPs from the integer
/// reference (F16/BF16: from the f64 dot).
pub fn check_gemv(w: &QuantMatrix, x: &[f32], m: usize, y: &[f32]) -> Result<u64, String> {
    check_gemv_at(w, ActivationPrecision::Int8, x, m, y)
}

/// [`check_gemv`] for a GEMV that quantises activations at `precision`.
pub fn check_gemv_at(
    w: &QuantMatrix,
    precision: ActivationPrecision,
    x: &[f32],
    m: usize,
    y: &[f32],
) -> Result<u64, String> {
    let (format, rows, cols) = (w.format(), w.rows(), w.cols());
    let eps = f64::from(f32::EPSILON);
    let tiny = f64::from(f32::MIN_POSITIVE);
    let mut worst = 0;
    for r in 0..m {
        let xr = &x[r * cols..(r + 1) * cols];
        let acts: Vec<_> = xr.chunks(ACT_BLOCK).map(|b| quantize_activation_block_at(b, precision)).collect();
        for i in 0..rows {
            let got = f64::from(y[r * rows + i]);
            if matches!(format, QuantFormat::F16 | QuantFormat::Bf16) {
                // f32 products of exact values: only the summation rounds
                // (eight lanes of cols/8 fused multiply-adds, then their sum).
                let exact = row_dot(format, w.row(i), xr);
                let mut wi = vec![0.0f32; cols];
                dequantize_row(format, w.row(i), &mut wi);
                let magnitude: f64 =
                    wi.iter().zip(xr).map(|(a, b)| (f64::from(*a) * f64::from(*b)).abs()).sum();
                let bound = (cols / 8 + 16) as f64 * 2.0 * eps * magnitude + tiny;
                worst = worst.max(super::ulps(got as f32, exact as f32));
                if (got - exact).abs() > bound {
                    return Err(format!("y[{r},{i}] = {got} vs {exact} (bound {bound:e})"));
                }
                continue;
            }
            // f32 rounding of per-block scale products and the running sums.
            let exact = row_dot_quantized(format, w.row(i), &acts);
            let rounding = (cols / ACT_BLOCK + 16) as f64 * 2.0 * eps * exact.magnitude + tiny;
            worst = worst.max(super::ulps(got as f32, exact.value as f32));
            if (got - exact.value).abs() > rounding {
                return Err(format!(
                    "y[{r},{i}] = {got} vs integer reference {} (bound {rounding:e})",
                    exact.value
                ));
            }
            // And what the weights mean: within the activation rounding.
            let meaning = row_dot(format, w.row(i), xr);
            let bound = activation_quantisation_bound(format, w.row(i), &acts) + rounding;
            if (got - meaning).abs() > bound * (1.0 + 1e-6) {
                return Err(format!("y[{r},{i}] = {got} vs dequantised dot {meaning} (bound {bound:e})"));
            }
        }
    }
    Ok(worst)
}

/// `format`'s GEMV over the sweep: row counts around the kernel's 4-row
/// step, rows of whole groups of 256 and of blocks left over, 1..=5
/// activation rows, int8 and int16 activations, 1 and 2 threads, x and y
/// against guard pages.
pub fn test_quant_format(format: QuantFormat, kernel_isa: QuantKernelIsa, sweep: Sweep) -> OpReport {
    let mut report = OpReport::new(format.name(), kernel_isa.isa(), KernelKind::QuantGemv);
    let float = matches!(format, QuantFormat::F16 | QuantFormat::Bf16);
    report.tolerance = if float {
        "f32 summation rounding of the f64 dot".into()
    } else {
        "f32 rounding of the integer-path dot (int8 and int16 activations)".into()
    };
    let precisions: &[ActivationPrecision] = if float {
        &[ActivationPrecision::Int8]
    } else {
        &[ActivationPrecision::Int8, ActivationPrecision::Int16]
    };
    let mut rng = Rng(0x9a11_7000 ^ format as u64);
    let rows_list: &[usize] = match sweep {
        Sweep::Quick => &[1, 3, 4, 9],
        Sweep::Full => &[0, 1, 2, 3, 4, 5, 7, 8, 9, 13, 37],
    };
    // Blocks per row (K-quants: super-blocks); 11 and 18 blocks of 32 are a
    // group of 256 and 3, two groups and 2.
    let blocks_list: &[usize] = match sweep {
        Sweep::Quick => &[1, 3, 11],
        Sweep::Full => &[1, 2, 3, 11, 18],
    };
    for &rows in rows_list {
        for &blocks in blocks_list {
            let cols = blocks * format.block_elems();
            let bytes = random_stored_matrix(format, rows, cols, &mut rng);
            let w = match QuantMatrix::new(format, rows, cols, &bytes) {
                Ok(w) => w,
                Err(e) => {
                    report.fail(format!("{rows}×{cols}: {e}"));
                    return report;
                }
            };
            let packed = match QuantPanels::pack(&w).and_then(|p| p.with_kernel_isa(kernel_isa)) {
                Ok(p) => p,
                Err(e) => {
                    report.fail(format!("does not pack: {e}"));
                    return report;
                }
            };
            for (&precision, m) in precisions.iter().flat_map(|p| [(p, 1), (p, 2), (p, 5)]) {
                let panels = packed.clone().with_activations(precision);
                for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
                    let case = format!("{rows}×{cols}, m={m}, {precision} activations, operands {placement}");
                    let x = random_activations(m * cols, &mut rng);
                    let result = guard_all(&[&x], placement).and_then(|gx| {
                        let mut y = GuardedBuffer::filled(m * rows, UNWRITTEN, placement)
                            .map_err(|e| format!("guarded buffer: {e}"))?;
                        panels
                            .gemv(gx[0].as_slice(), m, y.as_mut_slice(), 1 + m % 2)
                            .map_err(|e| format!("run failed: {e}"))?;
                        if !y.canary_intact() || !gx[0].canary_intact() {
                            return Err("wrote outside its operands".to_string());
                        }
                        check_gemv_at(&w, precision, &x, m, y.as_slice())
                    });
                    match result {
                        Ok(worst) => {
                            report.cases += 1;
                            report.max_ulps = report.max_ulps.max(worst);
                        }
                        Err(e) => {
                            report.fail(format!("{case}: {e}"));
                            return report;
                        }
                    }
                }
            }
        }
    }
    report
}
