// The scalar reference functions: one per operator, written the plain
// mathematical way. They are the single source of truth for what an operator
// computes: callable as the correctness reference for every kernel, and the
// input the Phase 0 analyser reads (their compiled machine code).
//
// This file is also compiled on its own (by the `trace-fixtures` crate, at
// several opt-levels, with `--cfg gk_fixture` to export the symbols), so it
// must not refer to anything outside itself.
//
// Conventions:
// * Ops whose math is per element are `fn(f32, ...) -> f32` with no loop;
//   extra f32 arguments are either further element inputs or scalar params,
//   as the registry's signature says.
// * Row ops take pointers first (inputs, then outputs), then lengths, then
//   f32 params. Each must only touch the elements its signature declares.

use std::slice::{from_raw_parts, from_raw_parts_mut};

/// SiLU (swish): x·σ(x).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// GELU, tanh approximation.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + (0.797_884_6 * (x + 0.044_715 * x * x * x)).tanh())
}

/// ReLU: max(x, 0) (NaN stays NaN).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// Logistic sigmoid.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Hyperbolic tangent.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_tanh(x: f32) -> f32 {
    x.tanh()
}

/// Natural exponential.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_exp(x: f32) -> f32 {
    x.exp()
}

/// Elementwise product (VecMul: x · weight).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_mul(a: f32, b: f32) -> f32 {
    a * b
}

/// Elementwise sum (VecAdd: x + residual).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_add(a: f32, b: f32) -> f32 {
    a + b
}

/// Bias addition (x + bias[column]).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_bias_add(x: f32, bias: f32) -> f32 {
    x + bias
}

/// Multiplication by a scalar parameter.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_scale(x: f32, scale: f32) -> f32 {
    x * scale
}

/// SwiGLU's gate: silu(gate) · up.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_swiglu(gate: f32, up: f32) -> f32 {
    gate / (1.0 + (-gate).exp()) * up
}

/// Sum of a row.
///
/// # Safety
/// `x` must point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_reduce_sum(x: *const f32, n: usize) -> f32 {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let x = unsafe { from_raw_parts(x, n) };
    let mut sum = 0.0;
    for &v in x {
        sum += v;
    }
    sum
}

/// Maximum of a row (−∞ for an empty row).
///
/// # Safety
/// `x` must point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_reduce_max(x: *const f32, n: usize) -> f32 {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let x = unsafe { from_raw_parts(x, n) };
    let mut max = f32::NEG_INFINITY;
    for &v in x {
        if v > max {
            max = v;
        }
    }
    max
}

/// Dot product of two rows.
///
/// # Safety
/// `a` and `b` must each point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_dot(a: *const f32, b: *const f32, n: usize) -> f32 {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (a, b) = unsafe { (from_raw_parts(a, n), from_raw_parts(b, n)) };
    let mut acc = 0.0;
    for i in 0..n {
        acc += a[i] * b[i];
    }
    acc
}

/// RMSNorm of one row: out = x / sqrt(mean(x²) + eps) · weight.
///
/// # Safety
/// `x`, `weight` readable and `out` writable for `n` f32; `out` must not overlap the inputs.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_rms_norm(x: *const f32, weight: *const f32, out: *mut f32, n: usize, eps: f32) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (x, weight, out) =
        unsafe { (from_raw_parts(x, n), from_raw_parts(weight, n), from_raw_parts_mut(out, n)) };
    let mut sum_sq = 0.0;
    for &v in x {
        sum_sq += v * v;
    }
    let inv_rms = 1.0 / (sum_sq / n as f32 + eps).sqrt();
    for i in 0..n {
        out[i] = x[i] * inv_rms * weight[i];
    }
}

/// LayerNorm of one row: out = (x − mean) / sqrt(var + eps) · gamma + beta.
///
/// # Safety
/// `x`, `gamma`, `beta` readable and `out` writable for `n` f32; no overlap with `out`.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_layer_norm(
    x: *const f32,
    gamma: *const f32,
    beta: *const f32,
    out: *mut f32,
    n: usize,
    eps: f32,
) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (x, gamma, beta, out) = unsafe {
        (from_raw_parts(x, n), from_raw_parts(gamma, n), from_raw_parts(beta, n), from_raw_parts_mut(out, n))
    };
    let mut sum = 0.0;
    for &v in x {
        sum += v;
    }
    let mean = sum / n as f32;
    let mut sum_sq_dev = 0.0;
    for &v in x {
        let d = v - mean;
        sum_sq_dev += d * d;
    }
    let inv_std = 1.0 / (sum_sq_dev / n as f32 + eps).sqrt();
    for i in 0..n {
        out[i] = (x[i] - mean) * inv_std * gamma[i] + beta[i];
    }
}

/// Numerically safe softmax of one row.
///
/// # Safety
/// `x` readable and `out` writable for `n` f32; no overlap.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_softmax(x: *const f32, out: *mut f32, n: usize) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (x, out) = unsafe { (from_raw_parts(x, n), from_raw_parts_mut(out, n)) };
    let mut max = f32::NEG_INFINITY;
    for &v in x {
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0;
    for i in 0..n {
        let e = (x[i] - max).exp();
        out[i] = e;
        sum += e;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Mixture-of-experts routing weights: softmax over the two largest entries
/// of a row (the chosen experts), zero elsewhere. The second-largest value
/// is the largest strictly below the maximum, so with ties for the maximum
/// every tied entry is kept (and weighted equally).
///
/// # Safety
/// `x` readable and `out` writable for `n` f32; no overlap.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_top2_softmax(x: *const f32, out: *mut f32, n: usize) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (x, out) = unsafe { (from_raw_parts(x, n), from_raw_parts_mut(out, n)) };
    let mut first = f32::NEG_INFINITY;
    for &v in x {
        if v > first {
            first = v;
        }
    }
    let mut second = f32::NEG_INFINITY;
    for &v in x {
        let below = if v < first { v } else { f32::NEG_INFINITY };
        if below > second {
            second = below;
        }
    }
    let mut sum = 0.0;
    for i in 0..n {
        let keep = if x[i] >= second { 1.0 } else { 0.0 };
        let e = keep * (x[i] - first).exp();
        out[i] = e;
        sum += e;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// Rotary position embedding on pairs: (x0, x1) rotated by the angle whose
/// cosine and sine are given. Four inputs, two outputs (the caller passes the
/// two halves of a head, or the even and odd elements, as it lays them out).
///
/// # Safety
/// The four inputs readable and both outputs writable for `n` f32; outputs must not overlap inputs.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_rope(
    x0: *const f32,
    x1: *const f32,
    cos: *const f32,
    sin: *const f32,
    out0: *mut f32,
    out1: *mut f32,
    n: usize,
) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (x0, x1, cos, sin) = unsafe {
        (from_raw_parts(x0, n), from_raw_parts(x1, n), from_raw_parts(cos, n), from_raw_parts(sin, n))
    };
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (out0, out1) = unsafe { (from_raw_parts_mut(out0, n), from_raw_parts_mut(out1, n)) };
    for i in 0..n {
        out0[i] = x0[i] * cos[i] - x1[i] * sin[i];
        out1[i] = x0[i] * sin[i] + x1[i] * cos[i];
    }
}

/// C = A · B for row-major A (m × k), B (k × n), C (m × n).
///
/// # Safety
/// `a` readable for m·k, `b` for k·n, `c` writable for m·n f32; `c` must not overlap.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_matmul(a: *const f32, b: *const f32, c: *mut f32, m: usize, n: usize, k: usize) {
    // SAFETY: the lengths and non-overlap the `# Safety` section above requires of the caller.
    let (a, b, c) =
        unsafe { (from_raw_parts(a, m * k), from_raw_parts(b, k * n), from_raw_parts_mut(c, m * n)) };
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0;
            for p in 0..k {
                acc += a[i * k + p] * b[p * n + j];
            }
            c[i * n + j] = acc;
        }
    }
}
