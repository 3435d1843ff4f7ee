//! The one-argument math functions Phase 0 recognises beyond exp/log/tanh.

/// A one-argument function a reference may call (or, for the roundings, an
/// instruction it may use): its meaning is the libm function of that name,
/// and `OpTrace::eval` calls that very function, so evaluation is bit-exact
/// with the reference. The roundings are exact IEEE operations (`roundss`
/// computes the same bits as `floorf` & co.).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MathOp {
    /// `erff`: the error function (exact GELU is `x/2·(1 + erf(x/√2))`).
    Erf,
    /// `expm1f`: eˣ − 1, accurate near 0.
    Expm1,
    /// `log1pf`: ln(1 + x), accurate near 0.
    Log1p,
    /// `sinf`.
    Sin,
    /// `cosf`.
    Cos,
    /// `floorf`, `roundss` imm 1/9.
    Floor,
    /// `ceilf`, `roundss` imm 2/10.
    Ceil,
    /// `truncf`, `roundss` imm 3/11.
    Trunc,
    /// `roundf`: nearest, ties away from zero.
    Round,
    /// `rintf`/`nearbyintf`, `roundss` imm 0/8: nearest, ties to even.
    RoundEven,
}

impl MathOp {
    pub const ALL: [MathOp; 10] = [
        MathOp::Erf,
        MathOp::Expm1,
        MathOp::Log1p,
        MathOp::Sin,
        MathOp::Cos,
        MathOp::Floor,
        MathOp::Ceil,
        MathOp::Trunc,
        MathOp::Round,
        MathOp::RoundEven,
    ];

    /// The name in traces, `explain` output and errors.
    pub fn name(self) -> &'static str {
        match self {
            MathOp::Erf => "erf",
            MathOp::Expm1 => "expm1",
            MathOp::Log1p => "log1p",
            MathOp::Sin => "sin",
            MathOp::Cos => "cos",
            MathOp::Floor => "floor",
            MathOp::Ceil => "ceil",
            MathOp::Trunc => "trunc",
            MathOp::Round => "round",
            MathOp::RoundEven => "roundeven",
        }
    }

    /// True for the roundings: every implementation gives the same bits, so
    /// constants fold and kernels must match exactly.
    pub fn is_exact(self) -> bool {
        matches!(self, MathOp::Floor | MathOp::Ceil | MathOp::Trunc | MathOp::Round | MathOp::RoundEven)
    }

    /// The value the reference computes (libm's, for the inexact functions).
    pub fn eval(self, x: f32) -> f32 {
        match self {
            MathOp::Floor => x.floor(),
            MathOp::Ceil => x.ceil(),
            MathOp::Trunc => x.trunc(),
            MathOp::Round => x.round(),
            MathOp::RoundEven => x.round_ties_even(),
            _ => super::cfg::libm_unary(self, x),
        }
    }

    /// The `roundss`/`vroundps` immediate (precision exception suppressed)
    /// for the roundings one instruction computes.
    pub fn round_imm(self) -> Option<i32> {
        match self {
            MathOp::RoundEven => Some(8),
            MathOp::Floor => Some(9),
            MathOp::Ceil => Some(10),
            MathOp::Trunc => Some(11),
            _ => None,
        }
    }
}

impl MathOp {
    /// Address of the libm function the reference calls for this op, for
    /// kernels that call it lane by lane.
    pub fn libm_address(self) -> u64 {
        super::cfg::libm_address(Some(self))
    }
}

/// Address of libm's `powf` in this process.
pub fn powf_address() -> u64 {
    super::cfg::libm_address(None)
}
