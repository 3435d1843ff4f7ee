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
