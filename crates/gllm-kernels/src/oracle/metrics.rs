//! How far a kernel's output is from its reference, and how far it may be.
//!
//! Two measures, as `test-backend-ops` reports them: the largest distance in
//! units in the last place (ULPs) over the elements, and the normalised
//! mean squared error `Σ(got − want)² / Σ want²` over the case. The bound an
//! element must meet is a [`Tolerance`]; every op's is chosen in one place,
//! [`Tolerance::for_op`].

use crate::scalar::{FnForm, RegisteredOp, Returns};
use crate::trace::{ComputePattern, OpTrace, TraceOp};
use std::fmt;

/// Distance between two f32 values in representable steps; 0 when both are
/// NaN or they compare equal (so `-0.0` and `0.0` are 0 apart). Correct
/// across a sign change: the floats are mapped onto one monotonic integer
/// line first (`-MIN_POSITIVE_SUBNORMAL` and `+MIN_POSITIVE_SUBNORMAL` are
/// 2 apart).
pub fn ulps(a: f32, b: f32) -> u64 {
    if (a.is_nan() && b.is_nan()) || a == b {
        return 0;
    }
    if a.is_nan() || b.is_nan() {
        return u64::MAX;
    }
    let line = |x: f32| {
        let bits = i64::from(x.to_bits());
        if bits < 0x8000_0000 {
            bits
        } else {
            0x8000_0000 - bits
        }
    };
    (line(a) - line(b)).unsigned_abs()
}

/// What a kernel's element may differ from the reference's by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Always accepted at or under this many ULPs.
    pub max_ulps: u64,
    /// Otherwise accepted when `|got − want| ≤ rel · scale`, where `scale`
    /// is the case's magnitude for that element (see [`Scale`]).
    pub rel: f32,
    /// How the magnitude is measured.
    pub scale: Scale,
    /// The case fails when its NMSE exceeds this.
    pub max_nmse: f64,
}

/// The magnitude an absolute error is measured against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// `|want|`: a relative bound (softmax, a norm without weights).
    Output,
    /// `max(|want|, |each input at this element|)`: a normalised row
    /// scaled and shifted by weights (layer norm's `γ·z + β` cancels).
    OutputAndInputs,
    /// `max(max |input| at this element, 1)`: per-element functions whose
    /// formula cancels (1 + tanh(x) for very negative x).
    Inputs,
    /// The reference evaluated on the absolute values of the inputs
    /// (`Σ|x|` for a sum, `Σ|a||b|` for a dot or a matrix product): the
    /// condition of a sum computed in another order.
    AbsoluteReference,
    /// `max(max |want| over the case, 1)`: a graph of several kernels,
    /// whose rounding differences propagate and are bounded relative to
    /// the output's size, not each element's.
    OutputPeak,
}

impl Tolerance {
    /// Bit-exact: IEEE arithmetic done in the same order.
    pub const EXACT: Tolerance = Tolerance { max_ulps: 0, rel: 0.0, scale: Scale::Output, max_nmse: 0.0 };

    /// A compiled graph (several kernels, fused or not) against the scalar
    /// evaluation of the same graph: each element within `rel` of the
    /// output's peak, and the NMSE — measured against the peak's energy,
    /// like the element bound — at most (rel/2)²: the errors' RMS is at
    /// most half the element bound (random fused graphs: up to ~1e-10 at
    /// rel 2e-4, against a bound of 1e-8), so a kernel that is off
    /// everywhere by just under the bound still fails.
    pub fn composed(rel: f32) -> Tolerance {
        let max_nmse = (f64::from(rel) / 2.0).powi(2);
        Tolerance { max_ulps: 8, rel, scale: Scale::OutputPeak, max_nmse }
    }

    /// Within `n` ULPs element by element (an elementwise formula whose
    /// approximated calls each add a few ULPs).
    pub fn ulps(n: u64) -> Tolerance {
        Tolerance { max_ulps: n, rel: 0.0, scale: Scale::Output, max_nmse: 1e-10 }
    }

    /// A matrix product of depth `k` on random data (sums in another order):
    /// the bound `for_op` gives every GEMM-pattern op, for tests that hold a
    /// product but not its registered op.
    pub fn reordered_product(k: usize) -> Tolerance {
        let rel = (8.0 + 4.0 * (k as f32).sqrt()) * f32::EPSILON;
        Tolerance { max_ulps: 8, rel, scale: Scale::AbsoluteReference, max_nmse: nmse_of(rel) }
    }

    /// The bound for `op`'s JIT kernel on data whose sums are exact in any
    /// order (`exact_data`: small integers) or on random data. This is the
    /// one table of per-op bounds: built-in ops whose formula needs a
    /// looser bound are named; everything else (runtime-registered ops
    /// included) gets the bound its trace's structure implies.
    pub fn for_op(op: &RegisteredOp, trace: &OpTrace, n: usize, exact_data: bool) -> Tolerance {
        let eps = f32::EPSILON;
        let math = approximated_calls(trace);
        let folds = !trace.folds.is_empty();
        // The reference's own sequential sum is off by a few √n·ε on
        // random data (measured: 1.9·√n·ε for softmax at n = 65 537, where
        // the JIT's lane-parallel sum is 30× closer to the exact value).
        let reordered_sum = (8.0 + 4.0 * (n as f32).sqrt()) * eps;
        match op.kind().name() {
            // 1 + tanh(u), log(1 + e^x) and x·Φ(x) cancel for negative x:
            // bounded relative to the input.
            "gelu" | "mish" | "softplus" => {
                return Tolerance { max_ulps: 4, rel: 2e-7, scale: Scale::Inputs, max_nmse: 1e-10 }
            }
            "exp" => return Tolerance { max_ulps: 3, rel: 0.0, scale: Scale::Output, max_nmse: 1e-12 },
            _ => {}
        }
        // Any op (runtime-registered ones included) that adds to or
        // subtracts from an approximated function's result can cancel
        // (eˣ − 1 near 0): bounded relative to the input, like the above.
        if trace.folds.is_empty() && math > 0 && cancels_after_call(&trace.body) {
            return Tolerance { max_ulps: 4 * math as u64, rel: 2e-7, scale: Scale::Inputs, max_nmse: 1e-10 };
        }
        match (trace.pattern, folds) {
            (ComputePattern::Gemm { .. }, _) if exact_data => Tolerance::EXACT,
            (ComputePattern::Gemm { .. }, _) => Tolerance {
                max_ulps: 8,
                rel: reordered_sum,
                scale: Scale::AbsoluteReference,
                max_nmse: nmse_of(reordered_sum),
            },
            // Per-element arithmetic without approximated functions: the
            // kernel does the same IEEE operations in the same order.
            (_, false) if math == 0 => Tolerance::EXACT,
            (_, false) => Tolerance {
                max_ulps: 4 * math as u64,
                // Subnormal results: an absolute floor.
                rel: 1e-37,
                scale: Scale::Inputs,
                max_nmse: 1e-10,
            },
            // Sums over rows of small integers are exact in any order: only
            // what follows the fold (a division, a square root) rounds, once.
            (ComputePattern::Reduction, true)
                if exact_data && math == 0 && folds_exact_on_integers(trace) =>
            {
                Tolerance { max_ulps: 1, rel: 0.0, scale: Scale::Output, max_nmse: 1e-12 }
            }
            (ComputePattern::Reduction, true) => Tolerance {
                max_ulps: 8,
                rel: reordered_sum,
                scale: Scale::AbsoluteReference,
                max_nmse: nmse_of(reordered_sum),
            },
            // Normalised rows: each output is O(1) relative to the row; a
            // sum in another order moves it by ~√n·ε (layer norm's
            // x − mean by that much absolute). Folds of integers that use
            // nothing computed from the row are exact, so then only the
            // rounding after them remains.
            (_, true) => Tolerance {
                max_ulps: 8 + 4 * math as u64,
                rel: if exact_data && math == 0 && folds_exact_on_integers(trace) {
                    4.0 * eps
                } else {
                    reordered_sum
                },
                scale: if trace.body.inputs_used().len() > 1 {
                    Scale::OutputAndInputs
                } else {
                    Scale::Output
                },
                max_nmse: nmse_of(reordered_sum),
            },
        }
    }

    /// Whether one element is within the bound; `scale` is its magnitude
    /// as [`Tolerance::scale`] asks.
    pub fn accepts(&self, got: f32, want: f32, scale: f32) -> bool {
        if got.is_nan() || want.is_nan() {
            return got.is_nan() && want.is_nan();
        }
        if ulps(got, want) <= self.max_ulps {
            return true;
        }
        let diff = (f64::from(got) - f64::from(want)).abs();
        diff <= f64::from(self.rel) * f64::from(scale.abs()) && self.rel > 0.0
    }
}

impl fmt::Display for Tolerance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Tolerance::EXACT {
            return f.write_str("bit-exact");
        }
        write!(f, "≤{} ulp", self.max_ulps)?;
        if self.rel > 0.0 {
            let scale = match self.scale {
                Scale::Output => "|y|",
                Scale::OutputAndInputs => "max(|y|,|x|)",
                Scale::Inputs => "max(|x|,1)",
                Scale::AbsoluteReference => "f(|x|)",
                Scale::OutputPeak => "max|y|",
            };
            write!(f, " or ≤{:.1e}·{scale}", self.rel)?;
        }
        write!(f, "; NMSE ≤{:.0e}", self.max_nmse)
    }
}

/// The NMSE of a case whose every element is off by the relative error
/// `rel` (a sum in another order), doubled for slack; at least 1e-9.
fn nmse_of(rel: f32) -> f64 {
    (2.0 * f64::from(rel)).powi(2).max(1e-9)
}

/// Whether every fold only adds, multiplies, takes maxima of or negates the
/// position's inputs (no row scalars, no division or roots): on small
/// integers such a fold is exact in any order.
pub(crate) fn folds_exact_on_integers(trace: &OpTrace) -> bool {
    trace.folds.iter().all(|f| {
        f.combine.ops.iter().all(|op| {
            matches!(
                op,
                TraceOp::Input(_)
                    | TraceOp::Acc
                    | TraceOp::Const(_)
                    | TraceOp::Add(..)
                    | TraceOp::Sub(..)
                    | TraceOp::Mul(..)
                    | TraceOp::Fma(..)
                    | TraceOp::Max(..)
                    | TraceOp::Min(..)
                    | TraceOp::Neg(_)
                    | TraceOp::Abs(_)
            )
        })
    })
}

/// Whether a value computed from an approximated libm call (directly or
/// through products, quotients, negations …) is added to or subtracted from
/// something that can cancel it: anything but a positive constant added to
/// an `exp` itself (which is ≥ 0, so `1 + eˣ` cannot cancel). In x + sin²(x)
/// the sine's few ulps survive the squaring and then the cancellation.
fn cancels_after_call(body: &crate::trace::Body) -> bool {
    use TraceOp::*;
    let mut from_call = vec![false; body.ops.len()];
    for (i, op) in body.ops.iter().enumerate() {
        from_call[i] = op.is_libm_call() || op.operands().iter().any(|&a| from_call[a as usize]);
    }
    let tainted = |v: crate::trace::ValueId| from_call[v as usize];
    let positive_const =
        |v: crate::trace::ValueId| matches!(body.ops[v as usize], Const(bits) if f32::from_bits(bits) > 0.0);
    let is_exp = |v: crate::trace::ValueId| matches!(body.ops[v as usize], Exp(_));
    body.ops.iter().any(|op| match *op {
        Add(a, b) => {
            (tainted(a) && !(is_exp(a) && positive_const(b)))
                || (tainted(b) && !(is_exp(b) && positive_const(a)))
        }
        Sub(a, b) => tainted(a) || tainted(b),
        Fma(_, _, c) => tainted(c),
        _ => false,
    })
}

/// Transcendental functions the JIT approximates (MathApprox) in a trace:
/// each may add a few ULPs.
fn approximated_calls(trace: &OpTrace) -> usize {
    let bodies = trace.folds.iter().map(|f| &f.combine).chain([&trace.row, &trace.body]);
    bodies.flat_map(|b| b.ops.iter()).filter(|op| op.is_libm_call()).count()
}

/// Whether `op` returns one value per row (a reduction) — its output has
/// `rows` elements rather than `rows × n`.
pub fn returns_row_scalar(op: &RegisteredOp) -> bool {
    op.signature().form() == FnForm::Slices && op.signature().returns() == Returns::RowScalar
}

/// Accumulates the worst ULP distance and the NMSE over one case.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorStats {
    pub max_ulps: u64,
    pub sq_err: f64,
    pub sq_ref: f64,
    pub elements: usize,
}

impl ErrorStats {
    pub fn add(&mut self, got: f32, want: f32) {
        self.add_scaled(got, want, 0.0);
    }

    /// Like [`ErrorStats::add`], with the element's energy taken as at
    /// least `scale`² — for bounds relative to the inputs (a cancelling op
    /// such as x·(1 + erf x) is accurate relative to x, not to its tiny
    /// result, so its NMSE is too).
    pub fn add_scaled(&mut self, got: f32, want: f32, scale: f32) {
        self.elements += 1;
        self.max_ulps = self.max_ulps.max(ulps(got, want));
        if got.is_finite() && want.is_finite() {
            let d = f64::from(got) - f64::from(want);
            let m = f64::from(want).abs().max(f64::from(scale).abs());
            self.sq_err += d * d;
            self.sq_ref += m * m;
        }
    }

    pub fn merge(&mut self, other: &ErrorStats) {
        self.max_ulps = self.max_ulps.max(other.max_ulps);
        self.sq_err += other.sq_err;
        self.sq_ref += other.sq_ref;
        self.elements += other.elements;
    }

    /// Normalised mean squared error (0 when the reference is all zeros
    /// and the output equals it).
    pub fn nmse(&self) -> f64 {
        if self.sq_err == 0.0 {
            0.0
        } else {
            self.sq_err / self.sq_ref.max(f64::MIN_POSITIVE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulps_across_zero_and_sign_change() {
        let tiny = f32::from_bits(1);
        assert_eq!(ulps(tiny, -tiny), 2);
        assert_eq!(ulps(0.0, -0.0), 0);
        assert_eq!(ulps(-tiny, 0.0), 1);
        assert_eq!(ulps(1.0, f32::from_bits(1.0f32.to_bits() + 3)), 3);
        assert_eq!(ulps(-1.0, -f32::from_bits(1.0f32.to_bits() + 3)), 3);
        assert_eq!(ulps(f32::MIN_POSITIVE, -f32::MIN_POSITIVE), 2 * 0x0080_0000);
        assert_eq!(ulps(f32::NAN, f32::NAN), 0);
        assert_eq!(ulps(f32::NAN, 1.0), u64::MAX);
        assert_eq!(ulps(f32::INFINITY, f32::MAX), 1);
    }

    #[test]
    fn nmse_measures_relative_energy() {
        let mut s = ErrorStats::default();
        s.add(1.1, 1.0);
        s.add(-2.0, -2.0);
        assert!((s.nmse() - 0.01 / 5.0).abs() < 1e-9);
    }
}
