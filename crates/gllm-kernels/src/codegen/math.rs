//! MathApprox: vector exp, log, tanh and sigmoid as range reduction plus a
//! polynomial, emitted inline for either ISA.
//!
//! Coefficients come from `tools/fit_math.py` (relative-error least squares
//! on Chebyshev nodes, rounded to f32). Measured accuracy against a
//! correctly rounded f64 reference over every finite f32 input is recorded in
//! `docs/codegen.md` (`cargo run --release --example math_accuracy`).
//!
//! Register contract (see `fusion::pressure::math_temps`): each routine
//! writes `d`, may overwrite `x` only when `d == x`, and uses only the
//! temporaries it is given — 2 for exp, 4 for log, tanh and sigmoid.

use super::pool::ConstPool;
use super::vasm::{cmp, Mask, Src, VecAsm, K, V};
use super::CodegenError;
use crate::device::Isa;

type R = Result<(), CodegenError>;

/// exp(r) ≈ Σ c_k r^k on |r| ≤ ln2/2, highest degree first (max 1.0 half-ulp in f32 Horner).
const EXP_POLY: [f32; 8] =
    [0.000_198_264_94, 0.001_394_603, 0.008_333_43, 0.041_666_27, 0.166_666_66, 0.5, 1.0, 1.0];
/// log(1+f) = f − f²/2 + f³·P(f) on f ∈ [−0.25, 0.5), P highest degree first.
const LOG_POLY: [f32; 9] = [
    0.035_627_518,
    -0.088_661_66,
    0.116_360_07,
    -0.127_538_59,
    0.142_877_15,
    -0.166_546_36,
    0.199_990_59,
    -0.250_001_67,
    0.333_333_46,
];
/// tanh(x) = x + x³·Q(x²) on |x| < 0.625, Q highest degree first.
const TANH_POLY: [f32; 6] =
    [0.002_148_991, -0.008_184_67, 0.021_704_003, -0.053_947_456, 0.133_332_12, -0.333_333_3];

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that n·LN2_HI is exact for |n| < 2^9.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Below this exp(x) rounds to +0; above the upper bound it overflows to +inf.
const EXP_LO: f32 = -104.0;
const EXP_HI: f32 = 89.0;
const TANH_SMALL: f32 = 0.625;

const SIGN: u32 = 0x8000_0000;
const ABS: u32 = 0x7fff_ffff;

/// Emits a Horner evaluation `d = poly(r)` (d ≠ r).
fn horner(asm: &mut VecAsm, pool: &mut ConstPool, d: V, r: V, coeffs: &[f32]) -> R {
    asm.load(d, Src::Mem(pool.splat(coeffs[0])))?;
    for &c in &coeffs[1..] {
        asm.fmadd213(d, r, Src::Mem(pool.splat(c)))?;
    }
    Ok(())
}

/// `d = exp(x)`. Temporaries: `t[0]`, `t[1]`. `x` may be `d`.
pub fn exp(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 2]) -> R {
    let [t1, t2] = t;
    // Clamp with the constant first so a NaN x survives (x86 max/min return
    // their second operand when either is NaN).
    asm.load(t1, Src::Mem(pool.splat(EXP_LO)))?;
    asm.max(t1, t1, Src::Reg(x))?;
    asm.load(t2, Src::Mem(pool.splat(EXP_HI)))?;
    asm.min(t2, t2, Src::Reg(t1))?;
    // n = round(x·log2 e); r = x − n·ln2 (two steps, FMA-exact).
    asm.mul(t1, t2, Src::Mem(pool.splat(LOG2E)))?;
    asm.round_nearest(t1, t1)?;
    asm.fnmadd231(t2, t1, Src::Mem(pool.splat(LN2_HI)))?;
    asm.fnmadd231(t2, t1, Src::Mem(pool.splat(LN2_LO)))?;
    horner(asm, pool, d, t2, &EXP_POLY)?;
    scale_by_pow2(asm, pool, d, t1, t2)
}

/// `d = d · 2^n` for integral-valued f32 `n` in [−150, 128], correctly
/// rounded including overflow to inf and underflow to subnormals/zero.
/// Clobbers `n` and `t`.
fn scale_by_pow2(asm: &mut VecAsm, pool: &mut ConstPool, d: V, n: V, t: V) -> R {
    match asm.isa {
        Isa::Avx512 => asm.scalef(d, d, n),
        Isa::Avx2 => {
            // Two factors 2^(n>>1) and 2^(n − n>>1), each a normal float, so
            // only the last multiplication rounds.
            let bias = Src::Mem(pool.splat_bits(127));
            asm.cvtps2dq(n, Src::Reg(n))?;
            asm.psrad(t, n, 1)?;
            asm.psubd(n, n, Src::Reg(t))?;
            asm.paddd(t, t, bias)?;
            asm.pslld(t, t, 23)?;
            asm.mul(d, d, Src::Reg(t))?;
            asm.paddd(n, n, bias)?;
            asm.pslld(n, n, 23)?;
            asm.mul(d, d, Src::Reg(n))
        }
    }
}

/// `x`, or a copy of it in `spare` when `d` would overwrite it.
fn preserve(asm: &mut VecAsm, d: V, x: V, spare: V) -> Result<V, CodegenError> {
    if d == x {
        asm.mov(spare, x)?;
        Ok(spare)
    } else {
        Ok(x)
    }
}

/// A mask register for a comparison result: k2 on AVX-512, else `fallback`.
fn mask_reg(asm: &VecAsm, fallback: V) -> Mask {
    match asm.isa {
        Isa::Avx512 => Mask::K(K(2)),
        Isa::Avx2 => Mask::V(fallback),
    }
}

/// `d = ln(x)`. Temporaries: `t[0..4]`. `x` may be `d`.
pub fn log(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 4]) -> R {
    let [t0, t1, t2, t3] = t;
    let x = preserve(asm, d, x, t3)?;
    let one = pool.splat(1.0);
    match asm.isa {
        Isa::Avx512 => {
            // e = floor(log2 x), m in [0.75, 1.5); when m < 1 the mantissa was
            // halved, so e + 1 (getexp does not know the interval).
            asm.getexp(t0, x)?;
            asm.getmant_075_15(t1, x)?;
            asm.cmp(Mask::K(K(3)), t1, Src::Mem(one), cmp::LT_OS)?;
            asm.add_masked(t0, t0, Src::Mem(one), K(3))?;
        }
        Isa::Avx2 => {
            let tiny = Mask::V(t0);
            asm.cmp(tiny, x, Src::Mem(pool.splat(f32::MIN_POSITIVE)), cmp::LT_OS)?;
            asm.mul(t1, x, Src::Mem(pool.splat(8_388_608.0)))?; // 2^23
            asm.blend(t1, x, Src::Reg(t1), tiny)?;
            asm.and(t0, t0, Src::Mem(pool.splat(-23.0)))?;
            asm.psrld(t2, t1, 23)?;
            asm.psubd(t2, t2, Src::Mem(pool.splat_bits(127)))?;
            asm.cvtdq2ps(t2, Src::Reg(t2))?;
            asm.add(t0, t0, Src::Reg(t2))?;
            asm.and(t1, t1, Src::Mem(pool.splat_bits(0x007f_ffff)))?;
            asm.or(t1, t1, Src::Mem(pool.splat_bits(0x3f80_0000)))?;
            let big = Mask::V(t2);
            asm.cmp(big, t1, Src::Mem(pool.splat(1.5)), cmp::GE_OS)?;
            asm.and(d, t2, Src::Mem(one))?;
            asm.add(t0, t0, Src::Reg(d))?;
            asm.mul(d, t1, Src::Mem(pool.splat(0.5)))?;
            asm.blend(t1, t1, Src::Reg(d), big)?;
        }
    }
    log_tail(asm, pool, d, x, t0, t1, t2)
}

/// From `e` (t0) and `m` (t1) in [0.75, 1.5): `d = e·ln2 + ln(m)`, then the
/// special inputs (x < 0 → NaN, ±0 → −inf, +inf → +inf, NaN → NaN).
fn log_tail(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t0: V, t1: V, t2: V) -> R {
    asm.sub(t1, t1, Src::Mem(pool.splat(1.0)))?;
    asm.mul(t2, t1, Src::Reg(t1))?;
    horner(asm, pool, d, t1, &LOG_POLY)?;
    asm.mul(d, d, Src::Reg(t1))?;
    asm.mul(d, d, Src::Reg(t2))?;
    asm.fmadd231(d, t2, Src::Mem(pool.splat(-0.5)))?;
    asm.add(d, d, Src::Reg(t1))?;
    asm.fmadd231(d, t0, Src::Mem(pool.splat(LN2_LO)))?;
    asm.fmadd231(d, t0, Src::Mem(pool.splat(LN2_HI)))?;
    let zero = pool.splat(0.0);
    let m = mask_reg(asm, t1);
    asm.cmp(m, x, Src::Mem(zero), cmp::LT_OS)?;
    asm.blend(d, d, Src::Mem(pool.splat(f32::NAN)), m)?;
    asm.cmp(m, x, Src::Mem(zero), cmp::EQ_OQ)?;
    asm.blend(d, d, Src::Mem(pool.splat(f32::NEG_INFINITY)), m)?;
    asm.cmp(m, x, Src::Mem(pool.splat(f32::INFINITY)), cmp::EQ_OQ)?;
    asm.blend(d, d, Src::Mem(pool.splat(f32::INFINITY)), m)?;
    asm.cmp(m, x, Src::Reg(x), cmp::UNORD_Q)?;
    asm.blend(d, d, Src::Reg(x), m)
}

/// `d = tanh(x)`. Temporaries: `t[0..4]`. `x` may be `d`.
pub fn tanh(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 4]) -> R {
    let [t0, t1, t2, t3] = t;
    let x = preserve(asm, d, x, t3)?;
    asm.and(t0, x, Src::Mem(pool.splat_bits(ABS)))?;
    // |x| ≥ 0.625: 1 − 2/(exp(2|x|) + 1).
    asm.add(d, t0, Src::Reg(t0))?;
    exp(asm, pool, d, d, [t1, t2])?;
    asm.add(d, d, Src::Mem(pool.splat(1.0)))?;
    asm.load(t1, Src::Mem(pool.splat(2.0)))?;
    asm.div(d, t1, Src::Reg(d))?;
    asm.load(t1, Src::Mem(pool.splat(1.0)))?;
    asm.sub(d, t1, Src::Reg(d))?;
    // |x| < 0.625: |x| + |x|³·Q(x²).
    asm.mul(t1, t0, Src::Reg(t0))?;
    horner(asm, pool, t2, t1, &TANH_POLY)?;
    asm.mul(t2, t2, Src::Reg(t1))?;
    asm.fmadd213(t2, t0, Src::Reg(t0))?;
    let small = mask_reg(asm, t1);
    asm.cmp(small, t0, Src::Mem(pool.splat(TANH_SMALL)), cmp::LT_OS)?;
    asm.blend(d, d, Src::Reg(t2), small)?;
    // Restore the sign.
    asm.and(t1, x, Src::Mem(pool.splat_bits(SIGN)))?;
    asm.or(d, d, Src::Reg(t1))
}

/// `d = 1/(1 + exp(−x))`, computed as `t/(1+t)` with `t = exp(x)` for x < 0
/// so that it underflows gracefully. Temporaries: `t[0..4]`. `x` may be `d`.
pub fn sigmoid(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 4]) -> R {
    let [t0, t1, t2, t3] = t;
    let x = preserve(asm, d, x, t3)?;
    asm.and(t0, x, Src::Mem(pool.splat_bits(ABS)))?;
    asm.xor(d, t0, Src::Mem(pool.splat_bits(SIGN)))?;
    exp(asm, pool, d, d, [t1, t2])?; // e^(−|x|) in (0, 1]
    asm.add(t1, d, Src::Mem(pool.splat(1.0)))?;
    asm.load(t2, Src::Mem(pool.splat(1.0)))?;
    asm.div(t2, t2, Src::Reg(t1))?; // 1/(1+t)
    asm.mul(t1, d, Src::Reg(t2))?; // t/(1+t)
    let negative = mask_reg(asm, t0);
    asm.cmp(negative, x, Src::Mem(pool.splat(0.0)), cmp::LT_OS)?;
    asm.blend(d, t2, Src::Reg(t1), negative)
}
