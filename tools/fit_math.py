"""Fits the polynomial coefficients of codegen/math.rs (MathApprox).

Design-time tool, not run by CI: `pip install numpy mpmath; python3 tools/fit_math.py`.
Each fit is a relative-error weighted least-squares fit on Chebyshev nodes (close
to minimax), rounded to f32, then checked by evaluating the f32 Horner scheme
(each FMA rounded once) against mpmath on a dense grid.
"""
import numpy as np
import mpmath as mp

mp.mp.prec = 100


def f32(x):
    return np.float32(x)


def fma32(a, b, c):
    # a*b exact in f64 for f32 inputs; one rounding to f32 (f64 double rounding is negligible here).
    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def cheb(lo, hi, n):
    k = np.arange(n)
    return (lo + hi) / 2 + (hi - lo) / 2 * np.cos(np.pi * (k + 0.5) / n)


def lsq(xs, basis, target, weight):
    A = np.array([[b(x) * weight(x) for b in basis] for x in xs])
    y = np.array([target(x) * weight(x) for x in xs])
    return np.linalg.lstsq(A, y, rcond=None)[0]


def horner(coeffs, x):
    # coeffs highest degree first
    acc = f32(coeffs[0])
    for c in coeffs[1:]:
        acc = fma32(acc, x, f32(c))
    return acc


def report(name, coeffs):
    print(f"{name}: [" + ", ".join(repr(float(f32(c))) for c in coeffs) + "]")


# exp(r) on |r| <= ln2/2: p(r) = 1 + r + c2 r^2 + ... + c6 r^6 (c0 = c1 = 1 fixed).
lo, hi = -0.3466, 0.3466
xs = cheb(lo, hi, 400)
deg = 6
basis = [lambda x, k=k: x ** k for k in range(2, deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.exp(x)) - 1 - x, lambda x: 1 / float(mp.exp(x)))
exp_coeffs = list(reversed([1.0, 1.0] + list(c)))
report("exp (c7..c0)", exp_coeffs)
grid = np.linspace(lo, hi, 20001).astype(np.float32)
err = max(abs(float(horner(exp_coeffs, r)) - float(mp.exp(float(r)))) / float(mp.exp(float(r))) for r in grid)
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# log(1+f), f in [-0.25, 0.5): f - f^2/2 + f^3 * P(f).
lo, hi = -0.25, 0.5
xs = cheb(lo, hi, 600)
deg = 8
basis = [lambda x, k=k: x ** (k + 3) for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.log1p(x)) - x + x * x / 2, lambda x: 1 / abs(float(mp.log1p(x))) if x != 0 else 1)
log_coeffs = list(reversed(list(c)))
report("log P (p8..p0)", log_coeffs)

def log_eval(fv):
    fv = f32(fv)
    p = horner(log_coeffs, fv)
    f2 = f32(fv * fv)
    p = f32(p * f32(f2 * fv))  # f^3 P
    p = fma32(f32(-0.5), f2, p)  # - f^2/2 + f^3 P
    return f32(p + fv)

grid = np.linspace(lo, hi, 20001).astype(np.float32)
err = 0
for fv in grid:
    if fv == 0:
        continue
    ref = float(mp.log1p(float(fv)))
    e = abs(float(log_eval(fv)) - ref) / abs(ref)
    err = max(err, e)
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps (of log(1+f) alone)")

# tanh(x) = x + x^3 Q(x^2), |x| < 0.625.
lo, hi = 0.0, 0.625
xs = cheb(1e-4, hi, 400)
deg = 5
basis = [lambda x, k=k: x ** (2 * k + 3) for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.tanh(x)) - x, lambda x: 1 / float(mp.tanh(x)))
tanh_coeffs = list(reversed(list(c)))
report("tanh Q (q5..q0)", tanh_coeffs)
grid = np.linspace(1e-3, hi, 20001).astype(np.float32)
err = 0
for xv in grid:
    x2 = f32(xv * xv)
    q = horner(tanh_coeffs, x2)
    q = f32(q * x2)
    y = fma32(q, xv, xv)
    ref = float(mp.tanh(float(xv)))
    err = max(err, abs(float(y) - ref) / ref)
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# AVX-512 table exp: exp(x) = 2^m * T[i] * (1 + q(r)), |r| <= ln2/32 (2 % slack),
# q(r) = r*(1 + r*(c2 + r*c3)); fitted on the error of 1 + q relative to e^r.
R = float(mp.log(2)) / 32 * 1.02
xs = cheb(-R, R, 400)
A = np.array([[x ** 2 / np.exp(x), x ** 3 / np.exp(x)] for x in xs])
y = np.array([(float(mp.exp(x)) - 1 - x) / np.exp(x) for x in xs])
c2, c3 = (f32(c) for c in np.linalg.lstsq(A, y, rcond=None)[0])
report("expm1 small (c3, c2)", [c3, c2])
err = 0
for r in np.linspace(-R, R, 20001).astype(np.float32):
    q = f32(fma32(fma32(fma32(c3, r, c2), r, f32(1.0)), r, f32(0.0)))
    err = max(err, abs(1 + float(q) - float(mp.exp(float(r)))) / float(mp.exp(float(r))))
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")
table = [f32(2 ** (i / 16)) for i in range(16)]
print("2^(i/16) bits:", ", ".join(hex(np.float32(t).view(np.uint32)) for t in table))

# expm1(x) on |x| <= ln2 (covers |expm1| < 1/2; outside, exp(x) - 1 loses at most
# one exp ulp): x + x^2 * P(x), P of degree 7 in x (8 gains nothing). Evaluated as p = P(x); t = x*x;
# y = fma(p, t, x). On the narrower |x| <= ln2/2 with degree 5, the exp(x) - 1 branch
# just outside reached 4.5 ulp (measured exhaustively): the result's binade is 4x
# smaller than exp's there.
lo, hi = -0.6932, 0.6932
for deg in (7,):
    xs = cheb(lo, hi, 600)
    basis = [lambda x, k=k: x ** (k + 2) for k in range(deg + 1)]
    c = lsq(xs, basis, lambda x: float(mp.expm1(x) - x), lambda x: 1 / abs(float(mp.expm1(x))))
    expm1_coeffs = list(reversed(list(c)))
    report(f"expm1 P (degree {deg}, highest first)", expm1_coeffs)
    err = 0
    for xv in np.linspace(lo, hi, 100001).astype(np.float32):
        if xv == 0:
            continue
        p = horner(expm1_coeffs, xv)
        t = f32(xv * xv)
        y = fma32(p, t, xv)
        ref = float(mp.expm1(float(xv)))
        err = max(err, abs(float(y) - ref) / abs(ref))
    print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# erf(x) = x + x * P(x^2), |x| < 0.921875. Degree 6 in x^2: degree 5 cannot do better
# than ~0.26 half-ulps of approximation error (minimax), 1.32-1.37 half-ulps overall.
hi = 0.921875
xs = cheb(0.0, hi, 400)
deg = 6
basis = [lambda x, k=k: x ** (2 * k + 1) for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.erf(x) - x), lambda x: 1 / float(mp.erf(x)))
erf_small_coeffs = list(reversed(list(c)))
report("erf small P (p6..p0)", erf_small_coeffs)
err = 0
for xv in np.linspace(-hi, hi, 100001).astype(np.float32):
    if xv == 0 or abs(xv) >= hi:
        continue
    x2 = f32(xv * xv)
    p = horner(erf_small_coeffs, x2)
    y = fma32(p, xv, xv)
    ref = float(mp.erf(float(xv)))
    err = max(err, abs(float(y) - ref) / abs(ref))
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# erf(a) = 1 - exp(Q(a - A0)), a in [0.921875, 4]; Q fitted to log(erfc(a)) with weight
# erfc/erf (the relative error of erf). A0 = 1: a - A0 is exact in f32 for every a in the
# range and |t| is small where the weight is large. (The midpoint 2.4609375 makes a - A0
# inexact for a < 1 and gives 2.0-2.9 half-ulps for degrees 8-12.) Degree 4: ~5.9 half-ulps.
lo, hi = 0.921875, 4.0
A0 = float(f32(1.0))
xs = cheb(lo, hi, 800)
deg = 5
basis = [lambda x, k=k: (x - A0) ** k for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.log(mp.erfc(x))), lambda x: float(mp.erfc(x) / mp.erf(x)))
erf_large_coeffs = list(reversed(list(c)))
print(f"erf large A0 = {A0!r}")
report("erf large Q (q5..q0)", erf_large_coeffs)
print(f"  Q(4 - A0) = {float(horner(erf_large_coeffs, f32(4.0 - A0))):.4f}, log erfc(4) = {float(mp.log(mp.erfc(4))):.4f}")
err = 0
for a in np.linspace(lo, hi, 200001).astype(np.float32):
    if a < lo or a > hi:
        continue
    t = f32(a - f32(A0))
    q = horner(erf_large_coeffs, t)
    e = f32(np.exp(np.float64(q)))  # stand-in for a ~1 ulp f32 exp
    y = f32(f32(1.0) - e)
    ref = float(mp.erf(float(a)))
    err = max(err, abs(float(y) - ref) / ref)
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# sin(r) = r + r^3 * S(r^2), |r| <= (pi/4)*1.02.
R = float(mp.pi / 4) * 1.02
xs = cheb(0.0, R, 400)
deg = 3
basis = [lambda x, k=k: x ** (2 * k + 3) for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.sin(x) - x), lambda x: 1 / float(mp.sin(x)))
sin_coeffs = list(reversed(list(c)))
report("sin S (s3..s0)", sin_coeffs)
err = 0
for r in np.linspace(-R, R, 100001).astype(np.float32):
    if r == 0:
        continue
    r2 = f32(r * r)
    s = horner(sin_coeffs, r2)
    r3 = f32(r2 * r)
    y = fma32(s, r3, r)
    ref = float(mp.sin(float(r)))
    err = max(err, abs(float(y) - ref) / abs(ref))
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# cos(r) = 1 - r^2/2 + r^4 * C(r^2), same interval. The max error is set by the f32
# roundings of r2, t and y (with C exact it is ~1.170 half-ulps); degree 4 gives no gain.
xs = cheb(0.0, R, 400)
deg = 3
basis = [lambda x, k=k: x ** (2 * k + 4) for k in range(deg + 1)]
c = lsq(xs, basis, lambda x: float(mp.cos(x) - 1 + x * x / 2), lambda x: 1 / float(mp.cos(x)))
cos_coeffs = list(reversed(list(c)))
report("cos C (c3..c0)", cos_coeffs)
err = 0
for r in np.linspace(-R, R, 100001).astype(np.float32):
    r2 = f32(r * r)
    cc = horner(cos_coeffs, r2)
    t = fma32(cc, r2, f32(-0.5))
    y = fma32(t, r2, f32(1.0))
    ref = float(mp.cos(float(r)))
    err = max(err, abs(float(y) - ref) / ref)
print(f"  max rel err {err:.3e} = {err / 2**-24:.3f} half-ulps")

# Cody-Waite split of pi/2 for an FMA reduction r = x - k*C1 - k*C2 - k*C3, and 2/pi.
C1 = f32(mp.pi / 2)
C2 = f32(mp.pi / 2 - float(C1))
C3 = f32(mp.pi / 2 - float(C1) - float(C2))
for name, v in (("C1", C1), ("C2", C2), ("C3", C3), ("2/pi", f32(2 / mp.pi))):
    print(f"{name} = {float(v)!r} ({hex(np.float32(v).view(np.uint32))})")
