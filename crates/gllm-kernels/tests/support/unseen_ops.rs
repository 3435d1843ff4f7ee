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
