//! MathApprox for the libm functions Phase 0 recognises beyond exp/log/tanh
//! (erf, expm1, log1p, sin, cos), the exact roundings, and powf.
//!
//! Same contract as the parent module: each routine writes `d`, may
//! overwrite `x` only when `d == x`, and uses only the temporaries it is
//! given ([`unary_temps`] of them). Coefficients come from
//! `tools/fit_math.py`; the exhaustive error over every finite f32 is in
//! `docs/codegen.md` (`cargo run --release --example math_accuracy`).
//! Inputs a routine does not cover (sin/cos beyond ±[`TRIG_LIMIT`]) are
//! recomputed by calling libm lane by lane: never a wrong answer, only a
//! slow one, and only for vectors that hold such an input.

use super::super::pool::ConstPool;
use super::super::vasm::{cmp, Mask, Src, VecAsm, K, V};
use super::{exp, horner, log, mask_reg, preserve, ABS, R, SIGN};
use crate::trace::MathOp;

/// expm1(x) = x + x²·P(x) on |x| ≤ ln 2, P highest degree first.
const EXPM1_POLY: [f32; 8] = [
    2.758_939_2e-6,
    2.509_883_6e-5,
    0.000_198_425_04,
    0.001_388_782_6,
    0.008_333_328,
    0.041_666_68,
    0.166_666_67,
    0.5,
];
/// Beyond ln 2, |eˣ − 1| ≥ ½ and the subtraction costs at most one exp ulp.
const EXPM1_SMALL: f32 = 0.693_2;
/// erf(x) = x + x·P(x²) on |x| < ERF_SMALL, P highest degree first.
const ERF_SMALL_POLY: [f32; 7] = [
    8.411_064e-5,
    -0.000_815_379_1,
    0.005_202_177,
    -0.026_859_958,
    0.112_837_08,
    -0.376_126_35,
    0.128_379_17,
];
const ERF_SMALL: f32 = 0.921_875;
/// erf(a) = 1 − exp(Q(a − 1)) on a ∈ [ERF_SMALL, 4], Q highest first (a − 1
/// is exact there).
const ERF_LARGE_POLY: [f32; 6] =
    [-0.001_243_726_9, 0.009_293_625, -0.041_278_638, -0.843_135_65, -2.638_969_4, -1.849_605_4];
const ERF_CENTRE: f32 = 1.0;
/// erf(4) rounds to 1 in f32: larger |x| are clamped to 4.
const ERF_CLAMP: f32 = 4.0;
/// sin(r) = r + r³·S(r²), cos(r) = 1 − r²/2 + r⁴·C(r²) on |r| ≤ 1.02·π/4.
const SIN_POLY: [f32; 4] = [2.716_947_6e-6, -0.000_198_391_95, 0.008_333_329, -0.166_666_67];
const COS_POLY: [f32; 4] = [-2.719_164e-7, 2.479_928_5e-5, -0.001_388_888_2, 0.041_666_668];
const TWO_OVER_PI: f32 = std::f32::consts::FRAC_2_PI;
/// π/2 = C1 + C2 + C3 (72 bits): x − k·C1 is exact (fma) for |x| ≤ TRIG_LIMIT.
const PIO2_1: f32 = std::f32::consts::FRAC_PI_2;
const PIO2_2: f32 = f32::from_bits(0xb33b_bd2e);
const PIO2_3: f32 = f32::from_bits(0xa6f7_2ced);
/// Below 2⁻¹², sin x rounds to x (x³/6 is under half an ulp).
const TINY_SIN: f32 = 1.0 / 4096.0;
/// Largest |x| the vector sin/cos reduce accurately (see the module docs).
pub const TRIG_LIMIT: f32 = 65_536.0;

/// `d = m(x)` for the [`MathOp`]s: roundings exact (one `vroundps` /
/// `vrndscaleps`, or four more ops for ties away from zero), the libm
/// functions by their MathApprox routine. `x` may be `d`; `t` holds at least
/// [`unary_temps`]`(m)` registers.
pub fn unary(asm: &mut VecAsm, pool: &mut ConstPool, m: MathOp, d: V, x: V, t: &[V]) -> R {
    if let Some(imm) = m.round_imm() {
        return asm.round(d, x, imm);
    }
    match m {
        MathOp::Round => round_half_away(asm, pool, d, x, [t[0], t[1]]),
        MathOp::Expm1 => expm1(asm, pool, d, x, [t[0], t[1], t[2], t[3]]),
        MathOp::Log1p => log1p(asm, pool, d, x, [t[0], t[1], t[2], t[3], t[4]]),
        MathOp::Erf => erf(asm, pool, d, x, [t[0], t[1], t[2], t[3], t[4]]),
        MathOp::Sin | MathOp::Cos => sin_cos(asm, pool, m, d, x, [t[0], t[1], t[2], t[3], t[4], t[5]]),
        MathOp::Floor | MathOp::Ceil | MathOp::Trunc | MathOp::RoundEven => {
            unreachable!("one-instruction roundings are handled above")
        }
    }
}

/// Temporaries [`unary`] needs for `m` (the register contract with
/// `fusion::pressure`).
pub fn unary_temps(m: MathOp) -> usize {
    match m {
        MathOp::Floor | MathOp::Ceil | MathOp::Trunc | MathOp::RoundEven => 0,
        MathOp::Round => 2,
        MathOp::Expm1 => 4,
        MathOp::Log1p | MathOp::Erf => 5,
        MathOp::Sin | MathOp::Cos => 6,
    }
}

/// `roundf`: trunc(|x|), plus one where the dropped fraction (exact) is at
/// least ½, with x's sign.
fn round_half_away(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 2]) -> R {
    let [t0, t1] = t;
    asm.and(t0, x, Src::Mem(pool.splat_bits(ABS)))?;
    asm.round(t1, t0, 11)?;
    asm.sub(t0, t0, Src::Reg(t1))?;
    if asm.caps().opmask {
        asm.cmp(Mask::K(K(2)), t0, Src::Mem(pool.splat(0.5)), cmp::GE_OS)?;
        asm.add_masked(t1, t1, Src::Mem(pool.splat(1.0)), K(2))?;
    } else {
        asm.cmp(Mask::V(t0), t0, Src::Mem(pool.splat(0.5)), cmp::GE_OS)?;
        asm.and(t0, t0, Src::Mem(pool.splat(1.0)))?;
        asm.add(t1, t1, Src::Reg(t0))?;
    }
    asm.and(d, x, Src::Mem(pool.splat_bits(SIGN)))?;
    asm.or(d, d, Src::Reg(t1))
}

/// expm1: x + x²·P(x) for |x| ≤ ln 2, else exp(x) − 1 (|result| ≥ ½, so
/// exp's error grows by at most 2×).
fn expm1(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 4]) -> R {
    let [t0, t1, t2, t3] = t;
    let x = preserve(asm, d, x, t3)?;
    if x == t3 {
        exp(asm, pool, d, x, &[t0, t1, t2])?;
    } else {
        exp(asm, pool, d, x, &[t0, t1, t2, t3])?;
    }
    asm.sub(d, d, Src::Mem(pool.splat(1.0)))?;
    horner(asm, pool, t0, x, &EXPM1_POLY)?;
    asm.mul(t1, x, Src::Reg(x))?;
    asm.fmadd213(t0, t1, Src::Reg(x))?;
    asm.and(t1, x, Src::Mem(pool.splat_bits(ABS)))?;
    let small = mask_reg(asm, t2);
    asm.cmp(small, t1, Src::Mem(pool.splat(EXPM1_SMALL)), cmp::LE_OS)?;
    asm.blend(d, d, Src::Reg(t0), small)?;
    // expm1 has x's sign; the sum above makes expm1(−0) +0 without this.
    asm.and(t1, x, Src::Mem(pool.splat_bits(SIGN)))?;
    asm.or(d, d, Src::Reg(t1))
}

/// log1p: with u = 1 + x rounded, ln(u) + (x − (u − 1))/u — the second
/// term restores what rounding u dropped. It is NaN only where u is 0 or
/// ±inf (x = −1, x = inf), where ln(u) alone is the answer.
fn log1p(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 5]) -> R {
    let [t0, t1, t2, t3, t4] = t;
    asm.add(t0, x, Src::Mem(pool.splat(1.0)))?; // u
    asm.sub(t1, t0, Src::Mem(pool.splat(1.0)))?;
    asm.sub(t1, x, Src::Reg(t1))?; // x − (u − 1)
    asm.div(t1, t1, Src::Reg(t0))?; // correction
    asm.mov(d, t0)?;
    log(asm, pool, d, d, [t0, t2, t3, t4])?;
    // Zero the correction where it is NaN (x itself NaN leaves ln(u) NaN).
    if asm.caps().opmask {
        asm.cmp(Mask::K(K(2)), t1, Src::Reg(t1), cmp::UNORD_Q)?;
        asm.blend(t1, t1, Src::Mem(pool.splat(0.0)), Mask::K(K(2)))?;
    } else {
        asm.cmp(Mask::V(t2), t1, Src::Reg(t1), cmp::UNORD_Q)?;
        asm.andn(t1, t2, Src::Reg(t1))?;
    }
    // Where ln(u) is 0 (|x| < 2⁻²⁴) the correction is x itself: take it
    // as is, so that log1p(−0) is −0.
    let zero = mask_reg(asm, t2);
    asm.cmp(zero, d, Src::Mem(pool.splat(0.0)), cmp::EQ_OQ)?;
    asm.add(d, d, Src::Reg(t1))?;
    asm.blend(d, d, Src::Reg(t1), zero)
}

/// erf: x + x·P(x²) for |x| < 0.921875, else sign(x)·(1 − exp(Q(|x| − c)))
/// with |x| clamped to 4 (erf(4) rounds to 1).
fn erf(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, t: [V; 5]) -> R {
    let [t0, t1, t2, t3, t4] = t;
    let x = preserve(asm, d, x, t4)?;
    asm.and(t0, x, Src::Mem(pool.splat_bits(ABS)))?;
    // min(4, |x|) keeps a NaN (the second operand).
    asm.load(d, Src::Mem(pool.splat(ERF_CLAMP)))?;
    asm.min(d, d, Src::Reg(t0))?;
    asm.sub(d, d, Src::Mem(pool.splat(ERF_CENTRE)))?;
    horner(asm, pool, t1, d, &ERF_LARGE_POLY)?;
    exp(asm, pool, d, t1, &[t0, t2, t3])?;
    asm.load(t1, Src::Mem(pool.splat(1.0)))?;
    asm.sub(d, t1, Src::Reg(d))?;
    asm.and(t1, x, Src::Mem(pool.splat_bits(SIGN)))?;
    asm.or(d, d, Src::Reg(t1))?;
    asm.mul(t1, x, Src::Reg(x))?;
    horner(asm, pool, t2, t1, &ERF_SMALL_POLY)?;
    asm.fmadd213(t2, x, Src::Reg(x))?;
    asm.and(t1, x, Src::Mem(pool.splat_bits(ABS)))?;
    let small = mask_reg(asm, t3);
    asm.cmp(small, t1, Src::Mem(pool.splat(ERF_SMALL)), cmp::LT_OS)?;
    asm.blend(d, d, Src::Reg(t2), small)
}

/// sin/cos: k = rint(x·2/π), r = x − k·π/2 in three FMA steps, then the
/// sin or cos polynomial on r by the quadrant k (+1 for cos) mod 4. Lanes
/// with |x| > TRIG_LIMIT (finite) make the whole vector call libm.
fn sin_cos(asm: &mut VecAsm, pool: &mut ConstPool, m: MathOp, d: V, x: V, t: [V; 6]) -> R {
    let [t0, t1, t2, t3, t4, t5] = t;
    let x = preserve(asm, d, x, t5)?;
    asm.mul(t0, x, Src::Mem(pool.splat(TWO_OVER_PI)))?;
    asm.round_nearest(t0, t0)?; // k
    asm.mov(t1, x)?;
    asm.fnmadd231(t1, t0, Src::Mem(pool.splat(PIO2_1)))?;
    asm.fnmadd231(t1, t0, Src::Mem(pool.splat(PIO2_2)))?;
    asm.fnmadd231(t1, t0, Src::Mem(pool.splat(PIO2_3)))?; // r
    asm.cvtps2dq(t0, Src::Reg(t0))?; // quadrant
    if m == MathOp::Cos {
        asm.paddd(t0, t0, Src::Mem(pool.splat_bits(1)))?;
    }
    asm.mul(t2, t1, Src::Reg(t1))?; // r²
    horner(asm, pool, t3, t2, &SIN_POLY)?;
    asm.mul(t4, t2, Src::Reg(t1))?; // r³
    asm.fmadd213(t3, t4, Src::Reg(t1))?; // sin r
    horner(asm, pool, t4, t2, &COS_POLY)?;
    asm.fmadd213(t4, t2, Src::Mem(pool.splat(-0.5)))?;
    asm.fmadd213(t4, t2, Src::Mem(pool.splat(1.0)))?; // cos r
                                                      // Odd quadrants take the cos polynomial: bit 0 of the quadrant as a mask.
    asm.pslld(t1, t0, 31)?;
    let odd = if asm.caps().opmask {
        asm.psrad(t1, t1, 31)?;
        asm.cmp(Mask::K(K(2)), t1, Src::Reg(t1), cmp::UNORD_Q)?;
        Mask::K(K(2))
    } else {
        Mask::V(t1)
    };
    asm.blend(d, t3, Src::Reg(t4), odd)?;
    // Quadrants 2 and 3 negate: bit 1 of the quadrant into the sign bit.
    asm.pslld(t0, t0, 30)?;
    asm.and(t0, t0, Src::Mem(pool.splat_bits(SIGN)))?;
    asm.xor(d, d, Src::Reg(t0))?;
    asm.and(t1, x, Src::Mem(pool.splat_bits(ABS)))?;
    if m == MathOp::Sin {
        // sin x rounds to x below 2⁻¹²; this also keeps sin(−0) = −0,
        // which the reduction's x − 0·π/2 turns into +0.
        let tiny = mask_reg(asm, t2);
        asm.cmp(tiny, t1, Src::Mem(pool.splat(TINY_SIN)), cmp::LT_OS)?;
        asm.blend(d, d, Src::Reg(x), tiny)?;
    }
    // Beyond the reduction's range: libm, lane by lane.
    let far = mask_reg(asm, t2);
    // Ordered: NaN lanes (whose result is already NaN) stay out.
    asm.cmp(far, t1, Src::Mem(pool.splat(TRIG_LIMIT)), cmp::GT_OQ)?;
    asm.call_per_lane_if(far, d, &[x], m.libm_address())
}

/// `d = powf(x, y)`, `y` the constant `exponent` when the trace says so.
/// Exponents 1, 2, 3, 4 and −1 are multiplications or a division (≤ 2 ulp
/// from libm); any other exponent calls libm's powf lane by lane (exact,
/// slow — no MathApprox routine for general powers yet). `x` and `y` may be
/// `d`; `t` is one spare register.
pub fn pow(asm: &mut VecAsm, pool: &mut ConstPool, d: V, x: V, y: V, exponent: Option<f32>, t: V) -> R {
    match exponent {
        Some(1.0) => {
            if d != x {
                asm.mov(d, x)?;
            }
            Ok(())
        }
        Some(2.0) => asm.mul(d, x, Src::Reg(x)),
        Some(3.0) => {
            asm.mul(t, x, Src::Reg(x))?;
            asm.mul(d, t, Src::Reg(x))
        }
        Some(4.0) => {
            asm.mul(d, x, Src::Reg(x))?;
            asm.mul(d, d, Src::Reg(d))
        }
        Some(-1.0) => {
            asm.load(t, Src::Mem(pool.splat(1.0)))?;
            asm.div(d, t, Src::Reg(x))
        }
        _ => asm.call_per_lane(d, &[x, y], crate::trace::powf_address()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Isa;

    /// Every routine assembles for both ISAs with the temporaries it
    /// declares (the AVX-512 forms included, which only an AVX-512 host
    /// can run: this at least proves them encodable everywhere).
    #[test]
    fn every_routine_assembles_on_both_isas() {
        for isa in Isa::ALL {
            for m in MathOp::ALL {
                for in_place in [false, true] {
                    let mut asm = VecAsm::new(isa).unwrap();
                    let mut pool = ConstPool::new();
                    let (x, d) = (V(0), if in_place { V(0) } else { V(1) });
                    let t: Vec<V> = (2..2 + unary_temps(m) as u8).map(V).collect();
                    unary(&mut asm, &mut pool, m, d, x, &t)
                        .unwrap_or_else(|e| panic!("{} {isa}: {e}", m.name()));
                    asm.a.ret().unwrap();
                    asm.a.assemble(0).unwrap_or_else(|e| panic!("{} {isa}: {e}", m.name()));
                }
            }
            for e in [Some(2.0), Some(3.0), Some(-1.0), Some(0.5), None] {
                let mut asm = VecAsm::new(isa).unwrap();
                let mut pool = ConstPool::new();
                pow(&mut asm, &mut pool, V(0), V(0), V(1), e, V(2)).unwrap();
                asm.a.ret().unwrap();
                asm.a.assemble(0).unwrap();
            }
        }
    }
}
