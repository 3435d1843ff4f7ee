// Operators that exist only in tests: the analyser has no knowledge of them.
// Shared by the tests (compiled into the test binary) and by the
// trace-fixtures libraries (compiled at every opt-level).

/// softplus: ln(1 + eˣ).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_softplus(x: f32) -> f32 {
    (1.0 + x.exp()).ln()
}

/// hard-swish: x · min(max(x + 3, 0), 6) / 6 (written with max/min on purpose:
/// their NaN-handling lowering is part of what the analyser must understand).
#[allow(clippy::manual_clamp)]
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_hard_swish(x: f32) -> f32 {
    x * (x + 3.0).max(0.0).min(6.0) / 6.0
}

/// mish: x · tanh(softplus(x)).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_mish(x: f32) -> f32 {
    x * (1.0 + x.exp()).ln().tanh()
}

/// squared ReLU: max(x, 0)².
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_squared_relu(x: f32) -> f32 {
    let r = if x > 0.0 { x } else { 0.0 };
    r * r
}

/// Mean of a row (a reduction with a finishing division).
///
/// # Safety
/// `x` must point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_mean(x: *const f32, n: usize) -> f32 {
    // SAFETY: the caller guarantees `n` readable f32 at `x` (# Safety above).
    let x = unsafe { std::slice::from_raw_parts(x, n) };
    let mut s = 0.0;
    for &v in x {
        s += v;
    }
    s / n as f32
}

// Activations written with `if` on the value (branches on floating-point
// data that Phase 0 merges into selects).

/// ELU: x for x > 0, eˣ − 1 otherwise.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_elu(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        x.exp() - 1.0
    }
}

/// Leaky ReLU with slope 0.01.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_leaky_relu(x: f32) -> f32 {
    if x >= 0.0 {
        x
    } else {
        0.01 * x
    }
}

/// Hard sigmoid: clamp(0.2·x + 0.5, 0, 1), written as nested ifs.
#[allow(clippy::manual_clamp)]
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_hard_sigmoid(x: f32) -> f32 {
    let y = 0.2 * x + 0.5;
    if y < 0.0 {
        0.0
    } else if y > 1.0 {
        1.0
    } else {
        y
    }
}

/// NaN → 0 (`is_nan` is a self-comparison's parity flag).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_nan_to_zero(x: f32) -> f32 {
    if x.is_nan() {
        0.0
    } else {
        x
    }
}

/// An equality test: 1 at ±0, x² elsewhere.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_zero_is_one(x: f32) -> f32 {
    if x == 0.0 {
        1.0
    } else {
        x * x
    }
}

/// An inequality test: −x unless x is exactly 1.5.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_not_equal(x: f32) -> f32 {
    if x != 1.5 {
        -x
    } else {
        x
    }
}

/// An early `return` on a compare.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_clipped_exp(x: f32) -> f32 {
    if x > 10.0 {
        return f32::INFINITY;
    }
    x.exp()
}

/// Largest magnitude of a row with `f32::max` (NaN-ignoring `maxnum`): at
/// -O3 LLVM vectorises it, folding lanes out of order with NaN checks.
///
/// # Safety
/// `x` must point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_max_abs(x: *const f32, n: usize) -> f32 {
    // SAFETY: the caller guarantees `n` readable f32 at `x` (# Safety above).
    let x = unsafe { std::slice::from_raw_parts(x, n) };
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// `out = x + 2·y` over two input pointers: rustc checks at run time that
/// `out` does not overlap them before taking its vectorised loop.
///
/// # Safety
/// `x`, `y` and `out` hold `n` f32; `out` overlaps neither input.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_axpy2(x: *const f32, y: *const f32, out: *mut f32, n: usize) {
    for i in 0..n {
        // SAFETY: i < n for all three (# Safety above).
        unsafe { *out.add(i) = *x.add(i) + 2.0 * *y.add(i) };
    }
}

/// softsign: x / (1 + |x|).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_softsign(x: f32) -> f32 {
    x / (1.0 + x.abs())
}

/// PReLU with its slope as a scalar parameter.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_prelu(x: f32, alpha: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        alpha * x
    }
}

/// Swish with a β parameter: x · σ(βx).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_swish_beta(x: f32, beta: f32) -> f32 {
    x / (1.0 + (-beta * x).exp())
}

/// `f32::clamp` to [-1, 1] (NaN stays NaN).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_clamp_unit(x: f32) -> f32 {
    x.clamp(-1.0, 1.0)
}

/// RMS normalisation without a weight.
///
/// # Safety
/// `x` and `out` hold `n` f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_rms_norm_plain(x: *const f32, out: *mut f32, n: usize, eps: f32) {
    // SAFETY: the caller guarantees `n` f32 at each (# Safety above).
    let (x, out) = unsafe { (std::slice::from_raw_parts(x, n), std::slice::from_raw_parts_mut(out, n)) };
    let mut ss = 0.0f32;
    for &v in x {
        ss += v * v;
    }
    let inv = 1.0 / (ss / n as f32 + eps).sqrt();
    for i in 0..n {
        out[i] = x[i] * inv;
    }
}

/// log Σ eˣ over a row, stabilised by the row's maximum: a reduction with
/// a max fold and a sum fold that uses it.
///
/// # Safety
/// `x` must point to `n` readable f32.
#[cfg_attr(gk_fixture, no_mangle)]
pub unsafe extern "C" fn gk_logsumexp(x: *const f32, n: usize) -> f32 {
    // SAFETY: the caller guarantees `n` readable f32 at `x` (# Safety above).
    let x = unsafe { std::slice::from_raw_parts(x, n) };
    let mut m = f32::NEG_INFINITY;
    for &v in x {
        if v > m {
            m = v;
        }
    }
    let mut s = 0.0f32;
    for &v in x {
        s += (v - m).exp();
    }
    s.ln() + m
}

// Activations that call libm functions beyond exp/log/tanh (recognised by
// symbol or address; `floor`/`trunc` become `roundss` under target-cpu=native).

extern "C" {
    fn erff(x: f32) -> f32;
}

/// Exact GELU: x/2 · (1 + erf(x/√2)).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_gelu_erf(x: f32) -> f32 {
    // SAFETY: erff is a pure libm function defined for every f32.
    0.5 * x * (1.0 + unsafe { erff(x * std::f32::consts::FRAC_1_SQRT_2) })
}

/// ELU written with expm1 (accurate for small negative x).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_elu_expm1(x: f32) -> f32 {
    if x > 0.0 {
        x
    } else {
        x.exp_m1()
    }
}

/// μ-law companding: sign(x) · ln(1 + 255|x|) / ln 256.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_mu_law(x: f32) -> f32 {
    let v = (255.0 * x.abs()).ln_1p() / 256f32.ln();
    if x < 0.0 {
        -v
    } else {
        v
    }
}

/// Snake activation: x + sin²(αx)/α.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_snake(x: f32, alpha: f32) -> f32 {
    let s = (alpha * x).sin();
    x + s * s / alpha
}

/// Raised cosine window over x ∈ [−1, 1]: (1 + cos πx)/2, zero outside.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_raised_cosine(x: f32) -> f32 {
    if x.abs() > 1.0 {
        return 0.0;
    }
    0.5 * (1.0 + (std::f32::consts::PI * x).cos())
}

/// Fake quantisation to a 1/16 grid, clamped to [−8, 8] (round half away).
#[allow(clippy::manual_clamp)]
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_fake_quant(x: f32) -> f32 {
    ((x * 16.0).round() / 16.0).max(-8.0).min(8.0)
}

/// Fractional part: x − ⌊x⌋.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_frac(x: f32) -> f32 {
    x - x.floor()
}

/// Gamma correction |x|^2.2 (a non-integer constant exponent).
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_gamma(x: f32) -> f32 {
    x.abs().powf(2.2)
}

/// Cube through powf with a constant integer exponent.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_cube(x: f32) -> f32 {
    x.powf(3.0)
}

/// Truncation toward zero after scaling, plus a ceiling: a staircase.
#[cfg_attr(gk_fixture, no_mangle)]
pub extern "C" fn gk_staircase(x: f32) -> f32 {
    (4.0 * x).trunc() * 0.25 + (x * 0.5).ceil()
}
