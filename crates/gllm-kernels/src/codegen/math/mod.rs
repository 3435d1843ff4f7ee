//! MathApprox: vector exp, log, tanh, sigmoid and GELU as range reduction
//! plus a polynomial, emitted inline for either ISA; erf, expm1, log1p,
//! sin, cos, the roundings and powf are in `special.rs`.
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
use super::vasm::{cmp, Mask, Mem, Src, VecAsm, K, V};
use super::{BadArguments, CodegenError};
use crate::device::Isa;
use crate::trace::MathOp;

type R = Result<(), CodegenError>;

mod special;
pub use special::{pow, unary, unary_temps};

/// exp(r) ≈ Σ c_k r^k on |r| ≤ ln2/2, highest degree first (degree 6: max
/// 1.04 half-ulp in f32 Horner; degree 7 would gain 0.05).
const EXP_POLY: [f32; 7] =
    [0.001_375_138_9, 0.008_368_922, 0.041_669_533, 0.166_665_18, 0.499_999_88, 1.0, 1.0];
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

/// 2^(i/16), i = 0..16, rounded to f32 (≤ 0.4 ulp each).
const EXP2_SIXTEENTHS: [u32; 16] = [
    0x3f80_0000,
    0x3f85_aac3,
    0x3f8b_95c2,
    0x3f91_c3d3,
    0x3f98_37f0,
    0x3f9e_f532,
    0x3fa5_fed7,
    0x3fad_583f,
    0x3fb5_04f3,
    0x3fbd_08a4,
    0x3fc5_672a,
    0x3fce_248c,
    0x3fd7_44fd,
    0x3fe0_ccdf,
    0x3fea_c0c7,
    0x3ff5_257d,
];
/// exp(r) − 1 ≈ r·(1 + r·(c2 + r·c3)) on |r| ≤ ln2/32: [c3, c2] (0.06 half-ulp).
const EXPM1_SMALL: [f32; 2] = [0.166_668_53, 0.500_016_9];
/// 1.5·2^19: adding it to |t| < 2^18 rounds t to a multiple of 1/16 and
/// leaves 16·t (mod 2^k) in the low mantissa bits.
const SIXTEENTHS_SHIFTER: f32 = 786_432.0;

/// `d = exp(x)`. Temporaries: two, or on AVX-512 three or more for the
/// table form (2^(i/16) by `vpermps`, a degree-3 polynomial: 9 cycles per
/// vector here against 10 for the degree-6 form). `x` may be `d`.
pub fn exp(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: &[V]) -> R {
    if asm.caps().table16 && t.len() >= 3 {
        return exp_table(asm, pool, d, x, [t[0], t[1], t[2]]);
    }
    exp_scaled(asm, pool, d, x, t, 0)
}

/// AVX-512 exp: x = (m + i/16)·ln2 + r with |r| ≤ ln2/32, and exp(x) =
/// 2^m · T[i] · (1 + q(r)) with T a 16-entry table in one zmm line.
fn exp_table(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 3]) -> R {
    let [t0, t1, t2] = t;
    // Clamp |x| to 104 keeping its sign, then put NaN inputs back (vrangeps
    // does not propagate them): beyond ±104 the result is 0 or inf anyway,
    // and within it 16·x·log2e fits the shifter's mantissa. Two ops and no
    // constant loads.
    asm.range_min_abs(t1, x, Src::Mem(pool.splat(-EXP_LO)))?;
    asm.keep_nan(t1, x, pool)?;
    // j = x·log2e + shifter: its low 4 mantissa bits are i, and
    // s = j − shifter = m + i/16 exactly.
    asm.load(t0, Src::Mem(pool.splat(LOG2E)))?;
    asm.fmadd213(t0, t1, Src::Mem(pool.splat(SIXTEENTHS_SHIFTER)))?;
    asm.sub(t2, t0, Src::Mem(pool.splat(SIXTEENTHS_SHIFTER)))?;
    // r = x − s·ln2 (two steps, the first exact).
    asm.fnmadd231(t1, t2, Src::Mem(pool.splat(LN2_HI)))?;
    asm.fnmadd231(t1, t2, Src::Mem(pool.splat(LN2_LO)))?;
    // T[i]: vpermps reads the low 4 bits of each index lane.
    asm.permps(t0, t0, Src::Mem(pool.table(EXP2_SIXTEENTHS)))?;
    // q = r·(1 + r·(c2 + r·c3)); d = T + T·q; d·2^floor(s) = d·2^m.
    asm.load(d, Src::Mem(pool.splat(EXPM1_SMALL[0])))?;
    asm.fmadd213(d, t1, Src::Mem(pool.splat(EXPM1_SMALL[1])))?;
    asm.fmadd213(d, t1, Src::Mem(pool.splat(1.0)))?;
    asm.mul(d, d, Src::Reg(t1))?;
    asm.fmadd213(d, t0, Src::Reg(t0))?;
    asm.scalef(d, d, t2)
}

/// `d = exp(x)·2^extra` with a single rounding, for `x ≤ 0` and
/// `0 ≤ extra ≤ 64` (so a tiny result keeps full precision until the caller
/// scales it back).
fn exp_scaled(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: &[V], extra: i32) -> R {
    let (t1, t2) = (t[0], t[1]);
    // Clamp with the constant first so a NaN x survives (x86 max/min return
    // their second operand when either is NaN).
    // With the result scaled by 2^extra, underflow to zero happens that much later.
    let lo = EXP_LO - extra as f32 * std::f32::consts::LN_2;
    asm.load(t1, Src::Mem(pool.splat(lo)))?;
    asm.max(t1, t1, Src::Reg(x))?;
    asm.load(t2, Src::Mem(pool.splat(EXP_HI)))?;
    asm.min(t2, t2, Src::Reg(t1))?;
    // n = round(x·log2 e); r = x − n·ln2 (two steps, FMA-exact).
    asm.mul(t1, t2, Src::Mem(pool.splat(LOG2E)))?;
    asm.round_nearest(t1, t1)?;
    asm.fnmadd231(t2, t1, Src::Mem(pool.splat(LN2_HI)))?;
    asm.fnmadd231(t2, t1, Src::Mem(pool.splat(LN2_LO)))?;
    if let [_, _, r2, q, ..] = *t {
        // Horner in r² over linear pieces: c6, (c5 r + c4), (c3 r + c2),
        // (c1 r + c0) — 3 dependent FMAs after r² instead of 6.
        asm.mul(r2, t2, Src::Reg(t2))?;
        asm.load(d, Src::Mem(pool.splat(EXP_POLY[0])))?;
        for pair in EXP_POLY[1..].chunks(2) {
            asm.load(q, Src::Mem(pool.splat(pair[0])))?;
            asm.fmadd213(q, t2, Src::Mem(pool.splat(pair[1])))?;
            asm.fmadd213(d, r2, Src::Reg(q))?;
        }
    } else {
        horner(asm, pool, d, t2, &EXP_POLY)?;
    }
    if extra != 0 {
        asm.add(t1, t1, Src::Mem(pool.splat(extra as f32)))?;
    }
    scale_by_pow2(asm, pool, d, t1, t2)
}

/// `d = d · 2^n` for integral-valued f32 `n` in [−150, 128], correctly
/// rounded including overflow to inf and underflow to subnormals/zero.
/// Clobbers `n` and `t`.
fn scale_by_pow2(asm: &mut VecAsm, pool: &mut ConstPool, d: V, n: V, t: V) -> R {
    if asm.caps().exponent_ops {
        return asm.scalef(d, d, n);
    }
    // Two factors 2^(n>>1) and 2^(n − n>>1), each a normal float, so only
    // the last multiplication rounds.
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

/// `x`, or a copy of it in `spare` when `d` would overwrite it.
fn preserve(asm: &mut VecAsm, d: V, x: V, spare: V) -> Result<V, CodegenError> {
    if d == x {
        asm.mov(spare, x)?;
        Ok(spare)
    } else {
        Ok(x)
    }
}

/// A mask register for a comparison result: k2 with opmasks, else `fallback`.
fn mask_reg(asm: &VecAsm, fallback: V) -> Mask {
    asm.mask_or(K(2), fallback)
}

/// `d = ln(x)`. Temporaries: `t[0..4]`. `x` may be `d`.
pub fn log(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 4]) -> R {
    let [t0, t1, t2, t3] = t;
    let x = preserve(asm, d, x, t3)?;
    let one = pool.splat(1.0);
    if asm.caps().exponent_ops && asm.caps().opmask {
        // e = floor(log2 x), m in [0.75, 1.5); when m < 1 the mantissa was
        // halved, so e + 1 (getexp does not know the interval).
        asm.getexp(t0, x)?;
        asm.getmant_075_15(t1, x)?;
        asm.cmp(Mask::K(K(3)), t1, Src::Mem(one), cmp::LT_OS)?;
        asm.add_masked(t0, t0, Src::Mem(one), K(3))?;
    } else {
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
    // |x| ≥ 0.625: 1 − 2/(exp(2|x|) + 1). t3 is free unless it holds x.
    asm.add(d, t0, Src::Reg(t0))?;
    if x == t3 {
        exp(asm, pool, d, d, &[t1, t2])?;
    } else {
        exp(asm, pool, d, d, &[t1, t2, t3])?;
    }
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
    // e^(−|x|) in (0, 1], in the degree-6 form: the table form is 10 %
    // faster here but its error pattern raises sigmoid's worst case from
    // 2.78 to 3.53 ulp (exhaustive check), and this is the accurate sigmoid.
    exp(asm, pool, d, d, &[t1, t2])?;
    asm.add(t1, d, Src::Mem(pool.splat(1.0)))?;
    asm.load(t2, Src::Mem(pool.splat(1.0)))?;
    asm.div(t2, t2, Src::Reg(t1))?; // 1/(1+t)
    asm.mul(t1, d, Src::Reg(t2))?; // t/(1+t)
    let negative = mask_reg(asm, t0);
    asm.cmp(negative, x, Src::Mem(pool.splat(0.0)), cmp::LT_OS)?;
    asm.blend(d, t2, Src::Reg(t1), negative)
}

/// 2·√(2/π) and 2·√(2/π)·0.044715 as f32 hi + lo pairs.
/// (Given by bit pattern: the low halves only work with the exact high halves.)
const GELU_A: (f32, f32) = (f32::from_bits(0x3fcc_422a), f32::from_bits(0xb342_bc9b));
const GELU_B: (f32, f32) = (f32::from_bits(0x3d92_2279), f32::from_bits(0x3124_d8b5));
/// |x| beyond which GELU is x·1 or x·0 exactly in f32.
const GELU_CLAMP: f32 = 40.0;

/// `d = gelu(x)` in the tanh form `0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))`,
/// computed as `x·sigmoid(y)` with `y = 2√(2/π)(x + 0.044715x³)` carried in
/// two floats, so neither the `1 + tanh` cancellation nor the rounding of
/// `y` (which `exp` would amplify by |y|) costs accuracy.
/// Temporaries: `t[0..7]`. `x` may be `d`.
pub fn gelu(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 7]) -> R {
    let [x2h, x2l, ph, pl, sh, sl, xs] = t;
    let x = preserve(asm, d, x, xs)?;
    let m = |p: &mut ConstPool, v: f32| Src::Mem(p.splat(v));
    // y is computed from x clamped to ±40 (in `d` until y is done): beyond
    // that sigmoid(y) is exactly 0 or 1 in f32, and x² cannot overflow.
    // Constant first, so NaN survives.
    let xc = d;
    asm.load(xc, m(pool, -GELU_CLAMP))?;
    asm.max(xc, xc, Src::Reg(x))?;
    asm.load(x2h, m(pool, GELU_CLAMP))?;
    asm.min(xc, x2h, Src::Reg(xc))?;
    // x² = x2h + x2l exactly.
    asm.mul(x2h, xc, Src::Reg(xc))?;
    asm.mov(x2l, x2h)?;
    asm.fmsub231(x2l, xc, xc)?; // x·x − x2h
                                // p = B·x² (two floats).
    asm.load(ph, m(pool, GELU_B.0))?;
    asm.mul(ph, ph, Src::Reg(x2h))?;
    asm.load(pl, m(pool, GELU_B.0))?;
    asm.fmsub213(pl, x2h, ph)?; // Bh·x2h − ph
    asm.fmadd231(pl, x2l, m(pool, GELU_B.0))?;
    asm.fmadd231(pl, x2h, m(pool, GELU_B.1))?;
    // s = A + p (TwoSum), low parts gathered in sl.
    asm.add(sh, ph, m(pool, GELU_A.0))?;
    asm.sub(sl, sh, m(pool, GELU_A.0))?; // bb = s − A
    asm.sub(ph, ph, Src::Reg(sl))?; // p − bb
    asm.sub(sl, sh, Src::Reg(sl))?; // s − bb
    asm.load(x2l, m(pool, GELU_A.0))?;
    asm.sub(sl, x2l, Src::Reg(sl))?; // A − (s − bb)
    asm.add(sl, sl, Src::Reg(ph))?;
    asm.add(sl, sl, Src::Reg(pl))?;
    asm.add(sl, sl, m(pool, GELU_A.1))?;
    // y = x·s (two floats): yh in ph, yl in pl.
    asm.mul(ph, xc, Src::Reg(sh))?;
    asm.mov(pl, ph)?;
    asm.fmsub231(pl, xc, sh)?; // x·sh − yh
    asm.fmadd231(pl, xc, Src::Reg(sl))?;
    // t = exp(−|yh|)·(1 − sign(yh)·yl) = e^(−|y|) to first order in yl,
    // kept scaled by 2^64 so that it stays normal down to y = −104.
    asm.and(x2h, ph, Src::Mem(pool.splat_bits(ABS)))?;
    asm.xor(d, x2h, Src::Mem(pool.splat_bits(SIGN)))?;
    exp_scaled(asm, pool, d, d, &[x2l, sh], 64)?;
    asm.and(sl, ph, Src::Mem(pool.splat_bits(SIGN)))?; // sign(yh)
    asm.xor(pl, pl, Src::Reg(sl))?; // sign·yl
    asm.fnmadd231_reg(d, pl, d)?; // t − (sign·yl)·t
                                  // gelu = y ≥ 0 ? x/(1+t) : x·t/(1+t), one division each (fewer roundings).
    asm.mul(x2h, d, Src::Mem(pool.splat(TWO_POW_M64)))?; // t
    asm.add(x2h, x2h, m(pool, 1.0))?; // 1 + t
    asm.mul(x2l, d, Src::Reg(x))?; // 2^64·x·t
    asm.div(x2l, x2l, Src::Reg(x2h))?;
    asm.mul(x2l, x2l, Src::Mem(pool.splat(TWO_POW_M64)))?; // x·t/(1+t), scaled back
    asm.div(sh, x, Src::Reg(x2h))?; // x/(1+t)
    let negative = mask_reg(asm, sl);
    asm.cmp(negative, ph, Src::Mem(pool.splat(0.0)), cmp::LT_OS)?;
    asm.blend(d, sh, Src::Reg(x2l), negative)
}

/// 2^−64, exactly.
const TWO_POW_M64: f32 = f32::from_bits((127 - 64) << 23);

/// A MathApprox routine on its own, for accuracy checks and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MathFn {
    Exp,
    Log,
    Tanh,
    Sigmoid,
    Gelu,
    /// One of the functions of `math/special.rs` (erf, expm1, log1p, sin, cos).
    Special(MathOp),
}

extern "C" {
    /// libm's double-precision erf: the reference for the f32 routine
    /// (Rust's std has no erf).
    fn erf(x: f64) -> f64;
}

impl MathFn {
    pub const ALL: [MathFn; 10] = [
        MathFn::Exp,
        MathFn::Log,
        MathFn::Tanh,
        MathFn::Sigmoid,
        MathFn::Gelu,
        MathFn::Special(MathOp::Erf),
        MathFn::Special(MathOp::Expm1),
        MathFn::Special(MathOp::Log1p),
        MathFn::Special(MathOp::Sin),
        MathFn::Special(MathOp::Cos),
    ];

    pub fn name(self) -> &'static str {
        match self {
            MathFn::Exp => "exp",
            MathFn::Log => "log",
            MathFn::Tanh => "tanh",
            MathFn::Sigmoid => "sigmoid",
            MathFn::Gelu => "gelu",
            MathFn::Special(m) => m.name(),
        }
    }

    /// The correctly rounded reference in f64 (GELU in the stable
    /// `x·sigmoid(2u)` form, equal to the tanh form mathematically).
    pub fn reference(self, x: f64) -> f64 {
        match self {
            MathFn::Exp => x.exp(),
            MathFn::Log => x.ln(),
            MathFn::Tanh => x.tanh(),
            MathFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            MathFn::Gelu => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                x / (1.0 + (-2.0 * u).exp())
            }
            MathFn::Special(MathOp::Erf) => {
                // SAFETY: libm's erf is pure and defined for every f64.
                unsafe { erf(x) }
            }
            MathFn::Special(MathOp::Expm1) => x.exp_m1(),
            MathFn::Special(MathOp::Log1p) => x.ln_1p(),
            MathFn::Special(MathOp::Sin) => x.sin(),
            MathFn::Special(MathOp::Cos) => x.cos(),
            MathFn::Special(m) => f64::from(m.eval(x as f32)),
        }
    }

    /// The documented bound, in ulps of the f32 result.
    pub fn max_ulps(self) -> f64 {
        match self {
            MathFn::Exp | MathFn::Log => 2.0,
            MathFn::Special(MathOp::Erf | MathOp::Log1p | MathOp::Sin | MathOp::Cos) => 2.0,
            MathFn::Special(MathOp::Expm1) => 3.0,
            _ => 4.0,
        }
    }
}

/// `out[i] = f(x[i])` as a compiled kernel.
#[derive(Debug)]
pub struct MathKernel {
    code: crate::runtime::ExecutableCode,
    pool: super::pool::PoolData,
    isa: Isa,
}

impl MathKernel {
    pub fn compile(f: MathFn, profile: &crate::device::DeviceProfile) -> Result<MathKernel, CodegenError> {
        use iced_x86::code_asm::*;
        let profile = &profile.for_kernels(crate::device::KernelClass::Loops);
        if !profile.runs_on_host() {
            return Err(CodegenError::IsaNotOnHost { isa: profile.isa });
        }
        let isa = profile.isa;
        let mut asm = VecAsm::new(isa)?;
        let mut pool = ConstPool::new();
        let lanes = isa.f32_lanes() as i32;
        // SysV: rdi = x, rsi = out, rdx = n, rcx = pool.
        asm.a.mov(super::pool::POOL_REG, rcx)?;
        let (x, d) = (V(0), V(1));
        let t: Vec<V> = (2..10).map(V).collect();
        let tail_mask = asm.mask_or(K(1), V(15));
        let body = |asm: &mut VecAsm, pool: &mut ConstPool| -> R {
            match f {
                MathFn::Exp => exp(asm, pool, d, x, &t[..4]),
                MathFn::Log => log(asm, pool, d, x, [t[0], t[1], t[2], t[3]]),
                MathFn::Tanh => tanh(asm, pool, d, x, [t[0], t[1], t[2], t[3]]),
                MathFn::Sigmoid => sigmoid(asm, pool, d, x, [t[0], t[1], t[2], t[3]]),
                MathFn::Gelu => gelu(asm, pool, d, x, [t[0], t[1], t[2], t[3], t[4], t[5], t[6]]),
                MathFn::Special(m) => unary(asm, pool, m, d, x, &t),
            }
        };
        let mut full = asm.a.create_label();
        let mut tail = asm.a.create_label();
        let mut done = asm.a.create_label();
        asm.a.xor(eax, eax)?;
        asm.a.mov(r8, rdx)?;
        asm.a.and(r8, -lanes)?;
        asm.a.cmp(rax, r8)?;
        asm.a.jae(tail)?;
        asm.a.set_label(&mut full)?;
        asm.load(x, Src::Mem(Mem::indexed(rdi, rax)))?;
        body(&mut asm, &mut pool)?;
        asm.store(Mem::indexed(rsi, rax), d)?;
        asm.a.add(rax, lanes)?;
        asm.a.cmp(rax, r8)?;
        asm.a.jb(full)?;
        asm.a.set_label(&mut tail)?;
        asm.a.mov(r9, rdx)?;
        asm.a.sub(r9, rax)?;
        asm.a.jz(done)?;
        asm.set_tail_mask(tail_mask, r9, r10, &mut pool)?;
        asm.load_masked(x, Mem::indexed(rdi, rax), tail_mask)?;
        body(&mut asm, &mut pool)?;
        asm.store_masked(Mem::indexed(rsi, rax), d, tail_mask)?;
        asm.a.set_label(&mut done)?;
        asm.vzeroupper()?;
        asm.a.ret()?;
        let bytes = asm.a.assemble(0)?;
        Ok(MathKernel { code: crate::runtime::ExecutableCode::new(&bytes)?, pool: pool.finish(), isa })
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// `out[i] = f(x[i])`; the slices must have the same length.
    pub fn run(&self, x: &[f32], out: &mut [f32]) -> Result<(), CodegenError> {
        if x.len() != out.len() {
            return Err(CodegenError::BadArguments(BadArguments::UnaryLengths {
                x: x.len(),
                out: out.len(),
            }));
        }
        type Entry = unsafe extern "C" fn(*const f32, *mut f32, usize, *const u8);
        // SAFETY: generated for this signature, sealed r-x, ISA checked at
        // compile time; reads and writes exactly `x.len()` elements.
        unsafe {
            let f: Entry = std::mem::transmute::<*const u8, Entry>(self.code.entry());
            f(x.as_ptr(), out.as_mut_ptr(), x.len(), self.pool.as_ptr());
        }
        Ok(())
    }
}

/// Error of `got` against the exact `reference`, in ulps of the f32 result
/// (subnormal ulps below 2^-126). 0 when both are the same NaN/infinity,
/// infinite when a NaN, infinity or overflow is wrong.
pub fn ulp_error(got: f32, reference: f64) -> f64 {
    if reference.is_nan() {
        return if got.is_nan() { 0.0 } else { f64::INFINITY };
    }
    let rounded = reference as f32;
    if rounded.is_infinite() || got.is_infinite() || got.is_nan() {
        return if got == rounded { 0.0 } else { f64::INFINITY };
    }
    let mag = reference.abs();
    let ulp = if mag < f32::MIN_POSITIVE as f64 {
        2f64.powi(-149)
    } else {
        2f64.powi(mag.log2().floor() as i32 - 23)
    };
    (got as f64 - reference).abs() / ulp
}
