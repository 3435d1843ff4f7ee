//! MathApprox on a sample of the f32 range plus every special case, on both
//! ISAs. The exhaustive run (all 4.28 billion finite inputs) is
//! `cargo run --release --example math_accuracy`; its results are in
//! docs/codegen.md.

mod support;

use support::profiles;

use gllm_kernels::codegen::math::{ulp_error, MathFn, MathKernel};
use gllm_kernels::oracle::Tolerance;

/// ~1M inputs spread over every exponent (a prime stride through the bit
/// patterns), plus dense coverage of the interesting ranges.
fn sample() -> Vec<f32> {
    let mut v: Vec<f32> = (0..1u64 << 20).map(|i| f32::from_bits((i * 4093) as u32)).collect();
    for i in 0..100_000 {
        let t = i as f32 / 100_000.0;
        v.push(-110.0 + 210.0 * t); // exp's whole range incl. overflow/underflow
        v.push(-20.0 + 40.0 * t); // tanh/sigmoid/gelu transitions
        v.push(0.5 + t); // log near 1
    }
    v.retain(|x| x.is_finite());
    v
}

#[test]
fn sampled_accuracy_within_documented_bounds() {
    let xs = sample();
    for p in profiles() {
        for f in MathFn::ALL {
            let k = MathKernel::compile(f, &p).unwrap();
            let mut out = vec![0.0; xs.len()];
            k.run(&xs, &mut out).unwrap();
            let (mut worst, mut at) = (0.0, 0.0);
            for (x, y) in xs.iter().zip(&out) {
                let e = ulp_error(*y, f.reference(*x as f64));
                if e > worst {
                    worst = e;
                    at = *x;
                }
            }
            assert!(worst <= f.max_ulps(), "{} on {}: {worst} ulp at x = {at:e}", f.name(), p.isa);
        }
    }
}

#[test]
fn special_values() {
    let inf = f32::INFINITY;
    let nan = f32::NAN;
    use gllm_kernels::trace::MathOp::{Cos, Erf, Expm1, Log1p, Sin};
    let cases: [(MathFn, &[(f32, f32)]); 10] = [
        (
            MathFn::Exp,
            &[
                (0.0, 1.0),
                (-0.0, 1.0),
                (inf, inf),
                (-inf, 0.0),
                (89.0, inf),
                (-104.0, 0.0),
                (-103.0, 1.4e-45),
            ],
        ),
        (MathFn::Log, &[(1.0, 0.0), (0.0, -inf), (-0.0, -inf), (-1.0, nan), (inf, inf), (-inf, nan)]),
        (MathFn::Tanh, &[(0.0, 0.0), (inf, 1.0), (-inf, -1.0), (20.0, 1.0), (-20.0, -1.0)]),
        (MathFn::Sigmoid, &[(0.0, 0.5), (inf, 1.0), (-inf, 0.0), (-100.0, 3.7835e-44)]),
        (MathFn::Gelu, &[(0.0, 0.0), (inf, inf), (100.0, 100.0), (-100.0, -0.0), (-1e30, -0.0)]),
        (MathFn::Special(Erf), &[(0.0, 0.0), (inf, 1.0), (-inf, -1.0), (4.0, 1.0), (-1e30, -1.0)]),
        (
            MathFn::Special(Expm1),
            &[(0.0, 0.0), (inf, inf), (-inf, -1.0), (1e-30, 1e-30), (89.0, inf), (-200.0, -1.0)],
        ),
        (
            MathFn::Special(Log1p),
            &[(0.0, 0.0), (-1.0, -inf), (-2.0, nan), (inf, inf), (1e-30, 1e-30), (-inf, nan)],
        ),
        (MathFn::Special(Sin), &[(0.0, 0.0), (inf, nan), (-inf, nan), (1e-30, 1e-30), (1e30, -0.791_163_4)]),
        (MathFn::Special(Cos), &[(0.0, 1.0), (inf, nan), (-inf, nan), (1e-30, 1.0), (1e30, -0.611_604_8)]),
    ];
    for p in profiles() {
        for (f, pairs) in cases {
            let k = MathKernel::compile(f, &p).unwrap();
            let xs: Vec<f32> = pairs.iter().map(|c| c.0).chain([nan]).collect();
            let mut out = vec![0.0; xs.len()];
            k.run(&xs, &mut out).unwrap();
            for (i, &(x, want)) in pairs.iter().enumerate() {
                let got = out[i];
                let ok = if want.is_nan() {
                    got.is_nan()
                } else if want == 0.0 || want.is_infinite() || want.abs() < 1e-37 {
                    got == want && got.is_sign_negative() == want.is_sign_negative()
                        || (want != 0.0 && ulp_error(got, want as f64) <= 1.0)
                } else {
                    ulp_error(got, want as f64) <= 1.0
                };
                assert!(ok, "{}({x:e}) on {} = {got:e}, expected {want:e}", f.name(), p.isa);
            }
            assert!(out[pairs.len()].is_nan(), "{}(NaN) on {} is not NaN", f.name(), p.isa);
            // Signs of zero are kept where the function is odd.
            if matches!(f, MathFn::Tanh | MathFn::Gelu) || matches!(f, MathFn::Special(m) if m != Cos) {
                let mut z = [0.0f32];
                k.run(&[-0.0], &mut z).unwrap();
                assert!(z[0] == 0.0 && z[0].is_sign_negative(), "{}(-0) on {} = {:e}", f.name(), p.isa, z[0]);
            }
        }
    }
}

/// Arguments beyond the vector reduction's range are recomputed by libm:
/// bit-equal to `sinf`/`cosf`, in vectors mixing them with ordinary ones.
#[test]
fn sin_cos_beyond_the_reduction_range_equal_libm() {
    use gllm_kernels::trace::MathOp;
    let mut xs: Vec<f32> = Vec::new();
    for i in 0..2000 {
        let big = 65_536.5 * 1.013f32.powi(i);
        if big.is_finite() {
            xs.extend([big, -big, 0.25 * i as f32]);
        }
    }
    for p in profiles() {
        for m in [MathOp::Sin, MathOp::Cos] {
            let k = MathKernel::compile(MathFn::Special(m), &p).unwrap();
            let mut out = vec![0.0; xs.len()];
            k.run(&xs, &mut out).unwrap();
            for (x, y) in xs.iter().zip(&out) {
                if x.abs() > 65_536.0 {
                    assert_eq!(y.to_bits(), m.eval(*x).to_bits(), "{}({x:e}) on {}", m.name(), p.isa);
                } else {
                    let e = ulp_error(*y, MathFn::Special(m).reference(f64::from(*x)));
                    assert!(e <= 2.0, "{}({x:e}) on {}: {e} ulp", m.name(), p.isa);
                }
            }
        }
    }
}

/// The roundings are exact: bit-equal to Rust's (= libm's) on a sample of
/// the whole range, ties, ±0, the largest non-integers and NaN.
#[test]
fn roundings_are_bit_exact() {
    use gllm_kernels::trace::MathOp;
    let mut xs = sample();
    xs.extend([
        0.5,
        -0.5,
        1.5,
        -1.5,
        2.5,
        -2.5,
        0.0,
        -0.0,
        0.499_999_97,
        -0.499_999_97,
        8_388_607.5,
        -8_388_607.5,
        16_777_215.0,
        1e30,
        -1e-30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    for p in profiles() {
        for m in [MathOp::Floor, MathOp::Ceil, MathOp::Trunc, MathOp::Round, MathOp::RoundEven] {
            let k = MathKernel::compile(MathFn::Special(m), &p).unwrap();
            let mut out = vec![0.0; xs.len()];
            k.run(&xs, &mut out).unwrap();
            let want: Vec<f32> = xs.iter().map(|&x| m.eval(x)).collect();
            support::assert_within(
                &format!("{} on {} ", m.name(), p.isa),
                &out,
                &want,
                &[],
                &Tolerance::EXACT,
            );
        }
    }
}
