//! SSE / AVX / AVX-512 semantics on symbolic lanes.

use super::{Flags, IntVal, Machine, Res};
use crate::trace::error::TraceErrorKind;
use crate::trace::expr::{BinOp, BitOp, ExprId, UnOp};
use crate::trace::{CmpPred, MathOp};
use iced_x86::{Mnemonic, OpKind, Register};

#[derive(Clone, Copy)]
enum Arith {
    Bin(BinOp),
    Sqrt,
}

fn arith(mn: Mnemonic) -> Option<(Arith, bool)> {
    use Mnemonic::*;
    Some(match mn {
        Addss | Vaddss => (Arith::Bin(BinOp::Add), true),
        Subss | Vsubss => (Arith::Bin(BinOp::Sub), true),
        Mulss | Vmulss => (Arith::Bin(BinOp::Mul), true),
        Divss | Vdivss => (Arith::Bin(BinOp::Div), true),
        Maxss | Vmaxss => (Arith::Bin(BinOp::Max), true),
        Minss | Vminss => (Arith::Bin(BinOp::Min), true),
        Sqrtss | Vsqrtss => (Arith::Sqrt, true),
        Addps | Vaddps => (Arith::Bin(BinOp::Add), false),
        Subps | Vsubps => (Arith::Bin(BinOp::Sub), false),
        Mulps | Vmulps => (Arith::Bin(BinOp::Mul), false),
        Divps | Vdivps => (Arith::Bin(BinOp::Div), false),
        Maxps | Vmaxps => (Arith::Bin(BinOp::Max), false),
        Minps | Vminps => (Arith::Bin(BinOp::Min), false),
        Sqrtps | Vsqrtps => (Arith::Sqrt, false),
        _ => return None,
    })
}

/// `Some(scalar?)` for the round-to-integral instructions.
fn rounding(mn: Mnemonic) -> Option<bool> {
    use Mnemonic::*;
    match mn {
        Roundss | Vroundss | Vrndscaless => Some(true),
        Roundps | Vroundps | Vrndscaleps => Some(false),
        _ => None,
    }
}

fn bitop(mn: Mnemonic) -> Option<BitOp> {
    use Mnemonic::*;
    Some(match mn {
        Andps | Vandps | Pand | Vpand | Vpandd | Andpd | Vandpd | Vpandq => BitOp::And,
        Andnps | Vandnps | Pandn | Vpandn | Vpandnd | Andnpd | Vandnpd | Vpandnq => BitOp::AndNot,
        Orps | Vorps | Por | Vpor | Vpord | Orpd | Vorpd | Vporq => BitOp::Or,
        Xorps | Vxorps | Pxor | Vpxor | Vpxord | Xorpd | Vxorpd | Vpxorq => BitOp::Xor,
        _ => return None,
    })
}

/// `vpternlog`'s three operands as truth tables: bit `4a + 2b + c` of the
/// immediate is the result for bits `a` (destination), `b`, `c` (sources).
const TERNLOG_OPERANDS: [u8; 3] = [0xF0, 0xCC, 0xAA];

/// A `vpternlog` immediate as at most two of the two-operand bit
/// operations the expression pool knows ([`BitOp`]); operands are 0
/// (destination), 1 and 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TernaryLogic {
    /// All zeros or all ones whatever the operands.
    Const(u32),
    /// One operand unchanged.
    Operand(usize),
    /// `op(x, y)`.
    One(BitOp, usize, usize),
    /// `outer(inner(x, y), z)`, or `outer(z, inner(x, y))` when `inner_second`.
    Two { inner: (BitOp, usize, usize), outer: BitOp, z: usize, inner_second: bool },
}

impl TernaryLogic {
    /// The plan's function of the three operands as a `vpternlog`
    /// immediate (its truth table).
    fn table(self) -> u8 {
        let t = TERNLOG_OPERANDS.map(u32::from);
        let bits = match self {
            TernaryLogic::Const(bits) => bits,
            TernaryLogic::Operand(i) => t[i],
            TernaryLogic::One(op, x, y) => op.apply(t[x], t[y]),
            TernaryLogic::Two { inner: (op, x, y), outer, z, inner_second } => {
                let inner = op.apply(t[x], t[y]);
                if inner_second {
                    outer.apply(t[z], inner)
                } else {
                    outer.apply(inner, t[z])
                }
            }
        };
        bits as u8
    }
}

/// The first decomposition of `imm` found, trying the simplest forms first
/// and, among two-operation forms, inner operations on operand 2 first (a
/// compiler puts its constant — a sign mask, say — in the memory operand,
/// and the pool recognises a constant mask applied to a value).
fn ternary_logic(imm: u8) -> Option<TernaryLogic> {
    use TernaryLogic::*;
    const OPS: [BitOp; 4] = [BitOp::And, BitOp::Or, BitOp::Xor, BitOp::AndNot];
    const PAIRS: [(usize, usize); 6] = [(1, 2), (2, 1), (0, 2), (2, 0), (0, 1), (1, 0)];
    let ones = OPS.into_iter().flat_map(|op| PAIRS.map(|(x, y)| One(op, x, y)));
    let twos = OPS.into_iter().flat_map(|op| {
        PAIRS.into_iter().flat_map(move |(x, y)| {
            OPS.into_iter().flat_map(move |outer| {
                (0..3).flat_map(move |z| {
                    [false, true].map(move |inner_second| Two { inner: (op, x, y), outer, z, inner_second })
                })
            })
        })
    });
    [Const(0), Const(u32::MAX)]
        .into_iter()
        .chain((0..3).map(Operand))
        .chain(ones)
        .chain(twos)
        .find(|plan| plan.table() == imm)
}

/// (scalar?, 132/213/231 form, negate product?, negate addend?)
fn fma_form(mn: Mnemonic) -> Option<(bool, u16, bool, bool)> {
    use Mnemonic::*;
    Some(match mn {
        Vfmadd132ss => (true, 132, false, false),
        Vfmadd213ss => (true, 213, false, false),
        Vfmadd231ss => (true, 231, false, false),
        Vfmadd132ps => (false, 132, false, false),
        Vfmadd213ps => (false, 213, false, false),
        Vfmadd231ps => (false, 231, false, false),
        Vfmsub132ss => (true, 132, false, true),
        Vfmsub213ss => (true, 213, false, true),
        Vfmsub231ss => (true, 231, false, true),
        Vfmsub132ps => (false, 132, false, true),
        Vfmsub213ps => (false, 213, false, true),
        Vfmsub231ps => (false, 231, false, true),
        Vfnmadd132ss => (true, 132, true, false),
        Vfnmadd213ss => (true, 213, true, false),
        Vfnmadd231ss => (true, 231, true, false),
        Vfnmadd132ps => (false, 132, true, false),
        Vfnmadd213ps => (false, 213, true, false),
        Vfnmadd231ps => (false, 231, true, false),
        Vfnmsub132ss => (true, 132, true, true),
        Vfnmsub213ss => (true, 213, true, true),
        Vfnmsub231ss => (true, 231, true, true),
        Vfnmsub132ps => (false, 132, true, true),
        Vfnmsub213ps => (false, 213, true, true),
        Vfnmsub231ps => (false, 231, true, true),
        _ => return None,
    })
}

/// The comparison an SSE/AVX `cmp` immediate asks for, as (pred, swap operands).
fn cmp_pred(imm: u64) -> Option<(CmpPred, bool)> {
    Some(match imm & 0xF {
        0 => (CmpPred::Eq, false),
        1 => (CmpPred::Lt, false),
        2 => (CmpPred::Le, false),
        3 => (CmpPred::Unord, false),
        4 => (CmpPred::Ne, false),
        5 => (CmpPred::Nlt, false),
        6 => (CmpPred::Nle, false),
        7 => (CmpPred::Ord, false),
        9 => (CmpPred::Nle, true),
        10 => (CmpPred::Nlt, true),
        13 => (CmpPred::Le, true),
        14 => (CmpPred::Lt, true),
        _ => return None,
    })
}

impl Machine<'_> {
    /// Sources for a 2-operand legacy or 3-operand VEX/EVEX instruction:
    /// (destination register, first source lanes, second source operand index).
    fn two_sources(&mut self, lanes: usize) -> Res<(usize, Vec<ExprId>, u32)> {
        let dst = self.vreg(0)?;
        if self.evex_or_vex() && self.ins.op_count() >= 3 {
            let a = self.vec_op(1, lanes)?;
            Ok((dst, a, 2))
        } else {
            Ok((dst, self.vec[dst][..lanes].to_vec(), 1))
        }
    }

    fn apply(&mut self, op: Arith, a: ExprId, b: ExprId) -> ExprId {
        match op {
            Arith::Bin(op) => self.pool.bin(op, a, b),
            Arith::Sqrt => self.pool.un(UnOp::Sqrt, b),
        }
    }

    /// `roundss`/`roundps`/`vrndscale*` with scale 0: floor, ceil, trunc or
    /// nearest-even per the immediate (the MXCSR mode is taken to be the
    /// default, nearest-even).
    fn round(&mut self, scalar: bool) -> Res<()> {
        let imm = self.imm();
        if imm >> 4 != 0 || self.ins.op_mask() != Register::None {
            return Err(self.unsupported());
        }
        let op = match if imm & 4 != 0 { 0 } else { imm & 3 } {
            0 => MathOp::RoundEven,
            1 => MathOp::Floor,
            2 => MathOp::Ceil,
            _ => MathOp::Trunc,
        };
        if scalar {
            let (dst, mut out, src) = self.two_sources(4)?;
            let x = self.vec_op(src, 1)?[0];
            out[0] = self.pool.un(UnOp::Math(op), x);
            return self.write_lanes_scalar(dst, out);
        }
        let w = self.width();
        let dst = self.vreg(0)?;
        let x = self.vec_op(1, w)?;
        let out: Vec<ExprId> = x.iter().map(|&v| self.pool.un(UnOp::Math(op), v)).collect();
        self.write_vec(dst, &out)
    }

    fn bit(&mut self, op: BitOp, a: ExprId, b: ExprId) -> Res<ExprId> {
        Ok(self.pool.bitwise(op, a, b).unwrap_or_else(|| self.pool.opaque(self.ins.ip())))
    }

    /// `vpternlogd`/`vpternlogq` (unmasked): the immediate's function of
    /// the three operands built from the pool's two-operand bit operations
    /// (e.g. `0xF8`, `a | (b & c)`: a compiler's copysign with the sign
    /// mask as `c`). Bitwise, so the element size does not matter except
    /// for a broadcast operand (the caller sends `q` broadcasts elsewhere).
    fn ternary_logic(&mut self) -> Res<()> {
        if self.ins.op_mask() != Register::None {
            return Err(self.unsupported());
        }
        let plan = ternary_logic(self.imm() as u8).ok_or_else(|| self.unsupported())?;
        let w = self.width();
        let dst = self.vreg(0)?;
        let ops = [self.vec[dst][..w].to_vec(), self.vec_op(1, w)?, self.vec_op(2, w)?];
        let mut out = Vec::with_capacity(w);
        for ((&a, &b), &c) in ops[0].iter().zip(&ops[1]).zip(&ops[2]) {
            let v = |i: usize| [a, b, c][i];
            out.push(match plan {
                TernaryLogic::Const(bits) => self.pool.konst(bits),
                TernaryLogic::Operand(i) => v(i),
                TernaryLogic::One(op, x, y) => self.bit(op, v(x), v(y))?,
                TernaryLogic::Two { inner: (op, x, y), outer, z, inner_second } => {
                    let inner = self.bit(op, v(x), v(y))?;
                    if inner_second {
                        self.bit(outer, v(z), inner)?
                    } else {
                        self.bit(outer, inner, v(z))?
                    }
                }
            });
        }
        self.write_vec(dst, &out)
    }

    /// `kor`/`kand`/`kandn`/`kxor`/`knot` on opmask lanes (comparison masks,
    /// combined as the pool combines vector masks); the byte forms clear
    /// lanes 8–15.
    fn kmask_logic(&mut self, mn: Mnemonic) -> Res<()> {
        use Mnemonic::*;
        let reg = |i: u32| self.ins.op_register(i).number();
        let (k, a) = (reg(0), reg(1));
        let ones = self.pool.konst(u32::MAX);
        let (op, b) = match mn {
            Knotb | Knotw | Knotd | Knotq => (BitOp::Xor, None),
            Korb | Korw | Kord | Korq => (BitOp::Or, Some(reg(2))),
            Kandb | Kandw | Kandd | Kandq => (BitOp::And, Some(reg(2))),
            Kandnb | Kandnw | Kandnd | Kandnq => (BitOp::AndNot, Some(reg(2))),
            _ => (BitOp::Xor, Some(reg(2))),
        };
        let byte_form = matches!(mn, Knotb | Korb | Kandb | Kandnb | Kxorb);
        let zero = self.pool.konst(0);
        let mut lanes = [zero; 16];
        for (l, lane) in lanes.iter_mut().enumerate().take(if byte_form { 8 } else { 16 }) {
            let y = b.map_or(ones, |b| self.kmask[b][l]);
            *lane = self.bit(op, self.kmask[a][l], y)?;
        }
        self.kmask[k] = lanes;
        Ok(())
    }

    fn imm(&self) -> u64 {
        let ins = &self.ins;
        for i in 0..ins.op_count() {
            if matches!(ins.op_kind(i), OpKind::Immediate8 | OpKind::Immediate8_2nd) {
                return ins.immediate(i);
            }
        }
        0
    }

    fn konst_int(&mut self, v: IntVal) -> Res<ExprId> {
        let bits = self.need(v)?;
        Ok(self.pool.konst(bits as u32))
    }

    pub(super) fn step_vector(&mut self) -> Res<()> {
        use Mnemonic::*;
        let ins = self.ins;
        let mn = ins.mnemonic();

        if let Some((op, scalar)) = arith(mn) {
            let sqrt_unary = matches!(op, Arith::Sqrt) && (!self.evex_or_vex() || ins.op_count() == 2);
            if scalar {
                let (dst, first, src) = if sqrt_unary {
                    let d = self.vreg(0)?;
                    (d, self.vec[d][..4].to_vec(), 1)
                } else {
                    self.two_sources(4)?
                };
                let b = self.vec_op(src, 1)?[0];
                let mut out = first;
                out[0] = self.apply(op, out[0], b);
                return self.write_lanes_scalar(dst, out);
            }
            let w = self.width();
            let dst = self.vreg(0)?;
            let (a, b) = if sqrt_unary {
                (self.vec_op(1, w)?, self.vec_op(1, w)?)
            } else {
                let (_, a, src) = self.two_sources(w)?;
                (a, self.vec_op(src, w)?)
            };
            let out: Vec<ExprId> = a.iter().zip(&b).map(|(&x, &y)| self.apply(op, x, y)).collect();
            return self.write_vec(dst, &out);
        }

        if let Some(scalar) = rounding(mn) {
            return self.round(scalar);
        }

        if matches!(mn, Movmskps | Vmovmskps) {
            // The sign bits of a mask as an integer: data, unless every lane
            // is a NaN test of the inputs (LLVM's vectorised f32::max folds
            // leave their vector loop when a NaN appears). Then the value is
            // 0 for inputs without NaN — taken as such and recorded, so that
            // the trace is checked on NaN inputs before it is trusted.
            let lanes = self.vec_op(1, self.width())?;
            if !lanes.iter().all(|&l| self.pool.false_unless_input_nan(l)) {
                return Err(self.err(TraceErrorKind::DataDependentBranch));
            }
            self.assumed_no_nan = true;
            return self.set_int_dest(IntVal::known(0));
        }

        if let Some(op) = bitop(mn) {
            if ins.op_mask() != Register::None
                && matches!(mn, Vpandq | Vpandnq | Vporq | Vpxorq | Vandpd | Vandnpd | Vorpd | Vxorpd)
            {
                return Err(self.unsupported());
            }
            let w = self.width();
            let (dst, a, src) = self.two_sources(w)?;
            // `xorps x, x` and friends: a known value whatever x holds.
            let same_register = src == 1
                && ins.op1_kind() == OpKind::Register
                && ins.op1_register() == ins.op0_register()
                || src == 2 && ins.op2_kind() == OpKind::Register && ins.op2_register() == ins.op1_register();
            if same_register && matches!(op, BitOp::Xor | BitOp::AndNot) {
                let zero = self.pool.konst(0);
                return self.write_vec(dst, &vec![zero; w]);
            }
            let b = self.vec_op(src, w)?;
            let out = a.iter().zip(&b).map(|(&x, &y)| self.bit(op, x, y)).collect::<Res<Vec<_>>>()?;
            return self.write_vec(dst, &out);
        }

        if matches!(mn, Vpternlogd) || mn == Vpternlogq && !ins.is_broadcast() {
            return self.ternary_logic();
        }

        if let Some((scalar, form, neg_prod, neg_add)) = fma_form(mn) {
            let lanes = if scalar { 1 } else { self.width() };
            let dst = self.vreg(0)?;
            let d = self.vec[dst][..lanes].to_vec();
            let s2 = self.vec_op(1, lanes)?;
            let s3 = self.vec_op(2, lanes)?;
            let mut out = Vec::with_capacity(lanes);
            for l in 0..lanes {
                let (mut a, b, mut c) = match form {
                    132 => (d[l], s3[l], s2[l]),
                    213 => (s2[l], d[l], s3[l]),
                    _ => (s2[l], s3[l], d[l]),
                };
                if neg_prod {
                    a = self.pool.un(UnOp::Neg, a);
                }
                if neg_add {
                    c = self.pool.un(UnOp::Neg, c);
                }
                out.push(self.pool.fma(a, b, c));
            }
            if scalar {
                let mut full = self.vec[dst][..4].to_vec();
                full[0] = out[0];
                return self.write_lanes_scalar(dst, full);
            }
            return self.write_vec(dst, &out);
        }

        match mn {
            Movss | Vmovss | Movd | Vmovd | Movq | Vmovq | Movsd | Vmovsd => self.mov_scalar(mn),
            Movaps | Movups | Vmovaps | Vmovups | Movdqa | Movdqu | Vmovdqa | Vmovdqu | Vmovdqa32
            | Vmovdqa64 | Vmovdqu32 | Vmovdqu64 | Vmovdqu8 | Vmovdqu16 | Movapd | Movupd | Vmovapd
            | Vmovupd | Lddqu | Vlddqu | Movntps | Vmovntps => self.mov_full(),
            Vbroadcastss | Vpbroadcastd => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let v = if ins.op1_kind() == OpKind::Register && ins.op1_register().is_gpr() {
                    let i = self.int_op(1)?;
                    self.konst_int(i)?
                } else if ins.op1_kind() == OpKind::Memory {
                    let a = self.address()?;
                    self.load_lanes(a, 1)?[0]
                } else {
                    self.vec_op(1, 1)?[0]
                };
                self.write_vec(dst, &vec![v; w])
            }
            Vzeroupper | Vzeroall => {
                let zero = self.pool.konst(0);
                for v in self.vec.iter_mut().take(16) {
                    let from = if mn == Vzeroall { 0 } else { 4 };
                    for l in v[from..].iter_mut() {
                        *l = zero;
                    }
                }
                Ok(())
            }
            Cmpss | Vcmpss | Cmpps | Vcmpps => self.compare(mn == Cmpss || mn == Vcmpss),
            Ucomiss | Comiss | Vucomiss | Vcomiss => {
                let a = self.vec_op(0, 1)?[0];
                let b = self.vec_op(1, 1)?[0];
                self.flags = match (self.pool.const_bits(a), self.pool.const_bits(b)) {
                    (Some(x), Some(y)) => {
                        let (x, y) = (f32::from_bits(x), f32::from_bits(y));
                        let un = x.is_nan() || y.is_nan();
                        Flags::Known { zf: un || x == y, pf: un, cf: Some(un || x < y), of: false, sf: false }
                    }
                    _ => Flags::Float { a, b },
                };
                Ok(())
            }
            Blendvps | Vblendvps => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let mask = if mn == Blendvps { self.vec[0][..w].to_vec() } else { self.vec_op(3, w)? };
                // A lane whose "mask" is data (the upper lanes after a scalar
                // `cmpss`, which keep the first source) picks by a data sign
                // bit: undefined here, an error only if that lane is used.
                let out: Vec<ExprId> =
                    (0..w).map(|l| self.pool.select(mask[l], b[l], a[l]).unwrap_or(0)).collect();
                self.write_vec(dst, &out)
            }
            Blendps | Vblendps => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let imm = self.imm();
                let out: Vec<ExprId> =
                    (0..w).map(|l| if imm >> (l % 8) & 1 == 1 { b[l] } else { a[l] }).collect();
                self.write_vec(dst, &out)
            }
            Vblendmps => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let a = self.vec_op(1, w)?;
                let b = self.vec_op(2, w)?;
                let k = ins.op_mask();
                let out = if k == Register::None {
                    b
                } else {
                    let k = k.number();
                    let zeroing = ins.zeroing_masking();
                    let zero = self.pool.konst(0);
                    (0..w)
                        .map(|l| {
                            let other = if zeroing { zero } else { a[l] };
                            self.pool
                                .select(self.kmask[k][l], b[l], other)
                                .ok_or_else(|| self.err(TraceErrorKind::OpaqueBitOperation))
                        })
                        .collect::<Res<Vec<_>>>()?
                };
                let dst_lanes = out.len();
                for (l, v) in out.into_iter().enumerate() {
                    self.vec[dst][l] = v;
                }
                let zero = self.pool.konst(0);
                for l in dst_lanes..16 {
                    self.vec[dst][l] = zero;
                }
                Ok(())
            }
            Cvtsi2ss | Vcvtsi2ss | Vcvtusi2ss => {
                let (dst, first, src) = self.two_sources(4)?;
                let v = self.int_op(src)?;
                let bits = if ins.op_kind(src) == OpKind::Register {
                    ins.op_register(src).size() as u32 * 8
                } else {
                    64
                };
                let f = match v.dim {
                    Some(d) => self.pool.dim(d),
                    None => {
                        let x = self.need(v)?;
                        let f = if mn == Vcvtusi2ss {
                            super::mask_bits(x, bits) as f32
                        } else if bits == 32 {
                            x as u32 as i32 as f32
                        } else {
                            x as i64 as f32
                        };
                        self.pool.konst(f.to_bits())
                    }
                };
                let mut out = first;
                out[0] = f;
                self.write_lanes_scalar(dst, out)
            }
            Cvttss2si | Vcvttss2si | Cvtss2si | Vcvtss2si => {
                let v = self.vec_op(1, 1)?[0];
                let x = self.pool.const_bits(v).ok_or_else(|| {
                    self.err(TraceErrorKind::UnsupportedOperand("float to integer conversion of data".into()))
                })?;
                let f = f32::from_bits(x);
                let r =
                    if mn == Cvtss2si || mn == Vcvtss2si { f.round_ties_even() } else { f.trunc() } as i64;
                self.set_int_dest(IntVal::known(r as u64))
            }
            Shufps | Vshufps => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let imm = self.imm() as usize;
                let mut out = Vec::with_capacity(w);
                for blk in (0..w).step_by(4) {
                    for (l, from_b) in [(0, false), (1, false), (2, true), (3, true)] {
                        let sel = (imm >> (2 * l)) & 3;
                        out.push(if from_b { b[blk + sel] } else { a[blk + sel] });
                    }
                }
                self.write_vec(dst, &out)
            }
            Shufpd | Vshufpd => {
                // Pairs of f32 as one f64: per 128-bit block, the low pair
                // from a and the high pair from b, each chosen by one bit.
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let imm = self.imm() as usize;
                let mut out = Vec::with_capacity(w);
                for (q, blk) in (0..w).step_by(4).enumerate() {
                    let lo = blk + 2 * ((imm >> (2 * q)) & 1);
                    let hi = blk + 2 * ((imm >> (2 * q + 1)) & 1);
                    out.extend([a[lo], a[lo + 1], b[hi], b[hi + 1]]);
                }
                self.write_vec(dst, &out)
            }
            Movshdup | Vmovshdup | Movsldup | Vmovsldup | Movddup | Vmovddup => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let a = self.vec_op(1, w)?;
                let out: Vec<ExprId> = (0..w)
                    .map(|l| match mn {
                        Movshdup | Vmovshdup => a[l | 1],
                        Movsldup | Vmovsldup => a[l & !1],
                        // Duplicates the low f64 (two f32) of each block.
                        _ => a[l / 4 * 4 + (l % 2)],
                    })
                    .collect();
                self.write_vec(dst, &out)
            }
            Pshufd | Vpshufd | Vpermilps if ins.op_count() >= 3 || mn == Pshufd => {
                if mn == Vpermilps && ins.op2_kind() != OpKind::Immediate8 {
                    return Err(self.unsupported());
                }
                let w = self.width();
                let dst = self.vreg(0)?;
                let a = self.vec_op(1, w)?;
                let imm = self.imm() as usize;
                let out: Vec<ExprId> = (0..w).map(|l| a[l / 4 * 4 + ((imm >> (2 * (l % 4))) & 3)]).collect();
                self.write_vec(dst, &out)
            }
            Punpcklqdq | Vpunpcklqdq | Punpckhqdq | Vpunpckhqdq | Unpcklpd | Vunpcklpd | Unpckhpd
            | Vunpckhpd => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let hi = matches!(mn, Punpckhqdq | Vpunpckhqdq | Unpckhpd | Vunpckhpd) as usize * 2;
                let mut out = Vec::with_capacity(w);
                for blk in (0..w).step_by(4) {
                    out.extend([a[blk + hi], a[blk + hi + 1], b[blk + hi], b[blk + hi + 1]]);
                }
                self.write_vec(dst, &out)
            }
            Unpcklps | Vunpcklps | Unpckhps | Vunpckhps | Punpckldq | Vpunpckldq | Punpckhdq | Vpunpckhdq => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let hi = matches!(mn, Unpckhps | Vunpckhps | Punpckhdq | Vpunpckhdq) as usize * 2;
                let mut out = Vec::with_capacity(w);
                for blk in (0..w).step_by(4) {
                    out.extend([a[blk + hi], b[blk + hi], a[blk + hi + 1], b[blk + hi + 1]]);
                }
                self.write_vec(dst, &out)
            }
            Movlhps | Vmovlhps | Movhlps | Vmovhlps => {
                let (dst, a, src) = self.two_sources(4)?;
                let b = self.vec_op(src, 4)?;
                let out = if matches!(mn, Movlhps | Vmovlhps) {
                    vec![a[0], a[1], b[0], b[1]]
                } else {
                    vec![b[2], b[3], a[2], a[3]]
                };
                self.write_vec(dst, &out)
            }
            Insertps | Vinsertps => {
                let (dst, a, src) = self.two_sources(4)?;
                let imm = self.imm() as usize;
                let s = if ins.op_kind(src) == OpKind::Memory {
                    self.vec_op(src, 1)?[0]
                } else {
                    self.vec_op(src, 4)?[(imm >> 6) & 3]
                };
                let mut out = a;
                out[(imm >> 4) & 3] = s;
                let zero = self.pool.konst(0);
                for (l, slot) in out.iter_mut().enumerate() {
                    if imm >> l & 1 == 1 {
                        *slot = zero;
                    }
                }
                self.write_vec(dst, &out)
            }
            Vextractf128 | Vextracti128 | Vextractf32x4 | Vextracti32x4 | Vextractf64x4 | Vextracti64x4
            | Vextractf32x8 => {
                let block = if matches!(mn, Vextractf64x4 | Vextracti64x4 | Vextractf32x8) { 8 } else { 4 };
                let src_lanes = lanes_of_reg(ins.op1_register());
                let all = self.vec_op(1, src_lanes)?;
                let start = (self.imm() as usize * block) % src_lanes;
                let part = all[start..start + block].to_vec();
                if ins.op0_kind() == OpKind::Memory {
                    let a = self.address()?;
                    self.store_lanes(a, &part)
                } else {
                    let dst = self.vreg(0)?;
                    self.write_vec(dst, &part)
                }
            }
            Vinsertf128 | Vinserti128 | Vinsertf32x4 | Vinserti32x4 | Vinsertf64x4 | Vinserti64x4
            | Vinsertf32x8 => {
                let block = if matches!(mn, Vinsertf64x4 | Vinserti64x4 | Vinsertf32x8) { 8 } else { 4 };
                let w = self.width();
                let dst = self.vreg(0)?;
                let mut out = self.vec_op(1, w)?;
                let part = self.vec_op(2, block)?;
                let start = (self.imm() as usize * block) % w;
                out[start..start + block].copy_from_slice(&part);
                self.write_vec(dst, &out)
            }
            Vpermq | Vpermpd if ins.op_count() == 3 && ins.op2_kind() == OpKind::Immediate8 => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let src = self.vec_op(1, w)?;
                let imm = self.imm() as usize;
                let mut out = Vec::with_capacity(w);
                for q in 0..w / 2 {
                    let from = (q / 4) * 4 + ((imm >> (2 * (q % 4))) & 3);
                    out.extend([src[2 * from], src[2 * from + 1]]);
                }
                self.write_vec(dst, &out)
            }
            Vpermq | Vpermpd | Vpermd | Vpermps => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let idx = self.vec_op(1, w)?;
                let table = self.vec_op(2, w)?;
                let out = self.permute(&idx, &[&table], matches!(mn, Vpermq | Vpermpd))?;
                self.write_vec(dst, &out)
            }
            Vpermt2ps | Vpermt2d | Vpermt2q | Vpermt2pd | Vpermi2ps | Vpermi2d | Vpermi2q | Vpermi2pd => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let d = self.vec[dst][..w].to_vec();
                let mid = self.vec_op(1, w)?;
                let last = self.vec_op(2, w)?;
                let qword = matches!(mn, Vpermt2q | Vpermt2pd | Vpermi2q | Vpermi2pd);
                let out = if matches!(mn, Vpermt2ps | Vpermt2d | Vpermt2q | Vpermt2pd) {
                    self.permute(&mid, &[&d, &last], qword)?
                } else {
                    self.permute(&d, &[&mid, &last], qword)?
                };
                self.write_vec(dst, &out)
            }
            Vpsubq | Psubq | Vpaddq | Paddq | Vpsubd | Psubd | Vpaddd | Paddd => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let qword = matches!(mn, Vpsubq | Psubq | Vpaddq | Paddq);
                let (x, y) = (self.const_units(&a, qword)?, self.const_units(&b, qword)?);
                let sub = matches!(mn, Vpsubq | Psubq | Vpsubd | Psubd);
                let r: Vec<u64> = x
                    .iter()
                    .zip(&y)
                    .map(|(&p, &q)| {
                        let v = if sub { p.wrapping_sub(q) } else { p.wrapping_add(q) };
                        if qword {
                            v
                        } else {
                            v & 0xFFFF_FFFF
                        }
                    })
                    .collect();
                let out = self.units_to_lanes(&r, qword);
                self.write_vec(dst, &out)
            }
            Vpbroadcastq => {
                let w = self.width();
                let dst = self.vreg(0)?;
                let v = if ins.op1_kind() == OpKind::Register && ins.op1_register().is_gpr() {
                    let i = self.int_op(1)?;
                    self.need(i)?
                } else {
                    let lanes = self.vec_op(1, 2)?;
                    self.const_units(&lanes, true)?[0]
                };
                let out = self.units_to_lanes(&vec![v; w / 2], true);
                self.write_vec(dst, &out)
            }
            Vpcmpuq | Vpcmpq | Vpcmpud | Vpcmpd => {
                let w = self.width();
                let qword = matches!(mn, Vpcmpuq | Vpcmpq);
                let signed = matches!(mn, Vpcmpq | Vpcmpd);
                let a = self.vec_op(1, w)?;
                let b = self.vec_op(2, w)?;
                let (x, y) = (self.const_units(&a, qword)?, self.const_units(&b, qword)?);
                let bits = if qword { 64 } else { 32 };
                let key = |v: u64| {
                    if signed {
                        (((v << (64 - bits)) as i64) >> (64 - bits)) as i128
                    } else {
                        v as i128
                    }
                };
                let imm = self.imm() & 7;
                let k = ins.op0_register().number();
                let (ones, zero) = (self.pool.konst(u32::MAX), self.pool.konst(0));
                let mut lanes = [zero; 16];
                for (e, (&p, &q)) in x.iter().zip(&y).enumerate() {
                    let (p, q) = (key(p), key(q));
                    let holds = match imm {
                        0 => p == q,
                        1 => p < q,
                        2 => p <= q,
                        3 => false,
                        4 => p != q,
                        5 => p >= q,
                        6 => p > q,
                        _ => true,
                    };
                    lanes[e] = if holds { ones } else { zero };
                }
                if ins.op_mask() != Register::None {
                    let m = ins.op_mask().number();
                    for (l, lane) in lanes.iter_mut().enumerate() {
                        if self.pool.const_bits(self.kmask[m][l]) == Some(0) {
                            *lane = zero;
                        }
                    }
                }
                self.kmask[k] = lanes;
                Ok(())
            }
            // AVX2 integer compares, packs and tests on known lanes: what a
            // vectorised runtime alias check of pointer differences uses.
            Vpcmpgtq | Pcmpgtq | Vpcmpeqq | Pcmpeqq | Vpcmpgtd | Pcmpgtd | Vpcmpeqd | Pcmpeqd => {
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let qword = matches!(mn, Vpcmpgtq | Pcmpgtq | Vpcmpeqq | Pcmpeqq);
                let (x, y) = (self.const_units(&a, qword)?, self.const_units(&b, qword)?);
                let bits = if qword { 64 } else { 32 };
                let signed = |v: u64| ((v << (64 - bits)) as i64) >> (64 - bits);
                let gt = matches!(mn, Vpcmpgtq | Pcmpgtq | Vpcmpgtd | Pcmpgtd);
                let ones = if qword { u64::MAX } else { 0xFFFF_FFFF };
                let r: Vec<u64> = x
                    .iter()
                    .zip(&y)
                    .map(|(&p, &q)| {
                        let holds = if gt { signed(p) > signed(q) } else { p == q };
                        if holds {
                            ones
                        } else {
                            0
                        }
                    })
                    .collect();
                let out = self.units_to_lanes(&r, qword);
                self.write_vec(dst, &out)
            }
            Vpackssdw | Packssdw => {
                // Signed dwords to saturated words, per 128-bit half: a's four
                // then b's four.
                let w = self.width();
                let (dst, a, src) = self.two_sources(w)?;
                let b = self.vec_op(src, w)?;
                let (x, y) = (self.const_units(&a, false)?, self.const_units(&b, false)?);
                let sat =
                    |v: u64| ((v as u32 as i32).clamp(i16::MIN as i32, i16::MAX as i32) as i16 as u16) as u64;
                let mut words = Vec::with_capacity(2 * x.len());
                for half in 0..x.len() / 4 {
                    words.extend(x[half * 4..half * 4 + 4].iter().map(|&v| sat(v)));
                    words.extend(y[half * 4..half * 4 + 4].iter().map(|&v| sat(v)));
                }
                let dwords: Vec<u64> = words.chunks(2).map(|p| p[0] | (p[1] << 16)).collect();
                let out = self.units_to_lanes(&dwords, false);
                self.write_vec(dst, &out)
            }
            Vtestps | Vptest | Ptest => {
                // ZF: no bit of a AND b is set; CF: no bit of b AND NOT a.
                // vtestps looks only at each dword's sign bit.
                let w = self.width();
                let a = self.vec_op(0, w)?;
                let b = self.vec_op(1, w)?;
                let (x, y) = (self.const_units(&a, false)?, self.const_units(&b, false)?);
                let mask = if mn == Vtestps { 0x8000_0000u64 } else { 0xFFFF_FFFF };
                let zf = x.iter().zip(&y).all(|(&p, &q)| p & q & mask == 0);
                let cf = x.iter().zip(&y).all(|(&p, &q)| !p & q & mask == 0);
                self.flags = Flags::Known { zf, cf: Some(cf), of: false, sf: false, pf: false };
                Ok(())
            }
            Kortestb | Kortestw | Kortestd | Kortestq => {
                let bits = match mn {
                    Kortestb => 8,
                    Kortestw => 16,
                    _ => 16,
                };
                let (a, b) = (ins.op0_register().number(), ins.op1_register().number());
                let mut any = false;
                let mut all = true;
                for l in 0..bits {
                    let (x, y) =
                        (self.mask_lane_bits(self.kmask[a][l]), self.mask_lane_bits(self.kmask[b][l]));
                    let (Some(x), Some(y)) = (x, y) else {
                        return Err(self.err(TraceErrorKind::DataDependentBranch));
                    };
                    let set = x != 0 || y != 0;
                    any |= set;
                    all &= set;
                }
                self.flags = Flags::Known { zf: !any, cf: Some(all), of: false, sf: false, pf: false };
                Ok(())
            }
            Kmovw | Kmovb | Kmovd | Kmovq => self.kmov(),
            Korb | Korw | Kord | Korq | Kandb | Kandw | Kandd | Kandq | Kandnb | Kandnw | Kandnd | Kandnq
            | Kxorb | Kxorw | Kxord | Kxorq | Knotb | Knotw | Knotd | Knotq => self.kmask_logic(mn),
            Kxnorw | Kxnorb | Kxnord | Kxnorq if ins.op1_register() == ins.op2_register() => {
                let k = ins.op0_register().number();
                let ones = self.pool.konst(u32::MAX);
                self.kmask[k] = [ones; 16];
                Ok(())
            }
            _ => Err(self.unsupported()),
        }
    }

    /// Writes a scalar result: legacy encodings keep the register's other
    /// lanes; VEX/EVEX take lanes 1..3 from the first source and zero the rest.
    fn write_lanes_scalar(&mut self, dst: usize, lanes4: Vec<ExprId>) -> Res<()> {
        if self.evex_or_vex() {
            let mut v = lanes4;
            if self.ins.op_mask() != Register::None {
                let k = self.ins.op_mask().number();
                let keep = if self.ins.zeroing_masking() { self.pool.konst(0) } else { self.vec[dst][0] };
                v[0] = self
                    .pool
                    .select(self.kmask[k][0], v[0], keep)
                    .ok_or_else(|| self.err(TraceErrorKind::OpaqueBitOperation))?;
            }
            let zero = self.pool.konst(0);
            self.vec[dst] = [zero; 16];
            self.vec[dst][..4].copy_from_slice(&v);
        } else {
            self.vec[dst][..4].copy_from_slice(&lanes4);
        }
        Ok(())
    }

    fn mov_full(&mut self) -> Res<()> {
        let ins = self.ins;
        let w = self.width();
        if ins.op0_kind() == OpKind::Memory {
            let vals = self.vec_op(1, w)?;
            let a = self.address()?;
            if ins.op_mask() != Register::None {
                let k = ins.op_mask().number();
                for (l, &v) in vals.iter().enumerate() {
                    match self.pool.const_bits(self.kmask[k][l]) {
                        Some(0) => {}
                        Some(_) => self.store_lanes(a + 4 * l as u64, &[v])?,
                        None => {
                            return Err(self.err(TraceErrorKind::UnsupportedOperand(
                                "data-dependent masked store".into(),
                            )))
                        }
                    }
                }
                return Ok(());
            }
            return self.store_lanes(a, &vals);
        }
        let dst = self.vreg(0)?;
        let vals = if ins.op1_kind() == OpKind::Memory && ins.op_mask() != Register::None {
            // Masked load: lanes whose mask bit is clear are not read.
            let a = self.address()?;
            let k = ins.op_mask().number();
            let mut vals = Vec::with_capacity(w);
            for l in 0..w {
                vals.push(match self.pool.const_bits(self.kmask[k][l]) {
                    Some(0) => self.vec[dst][l],
                    Some(_) => self.load_lanes(a + 4 * l as u64, 1)?[0],
                    None => {
                        return Err(
                            self.err(TraceErrorKind::UnsupportedOperand("data-dependent masked load".into()))
                        )
                    }
                });
            }
            vals
        } else {
            self.vec_op(1, w)?
        };
        self.write_vec(dst, &vals)
    }

    fn mov_scalar(&mut self, mn: Mnemonic) -> Res<()> {
        use Mnemonic::*;
        let ins = self.ins;
        let lanes = if matches!(mn, Movss | Vmovss | Movd | Vmovd) { 1 } else { 2 };
        // Store forms.
        if ins.op0_kind() == OpKind::Memory {
            let vals = self.vec_op(1, lanes)?;
            let a = self.address()?;
            if ins.op_mask() != Register::None {
                let k = ins.op_mask().number();
                return match self.pool.const_bits(self.kmask[k][0]) {
                    Some(0) => Ok(()),
                    Some(_) => self.store_lanes(a, &vals[..1]),
                    None => {
                        Err(self
                            .err(TraceErrorKind::UnsupportedOperand("data-dependent masked store".into())))
                    }
                };
            }
            return self.store_lanes(a, &vals);
        }
        // To a general-purpose register.
        if ins.op0_register().is_gpr() {
            let vals = self.vec_op(1, lanes)?;
            let mut v = 0u64;
            for (l, &e) in vals.iter().enumerate() {
                let b = self.pool.const_bits(e).ok_or_else(|| {
                    self.err(TraceErrorKind::UnsupportedOperand(
                        "moving floating-point data to an integer register".into(),
                    ))
                })?;
                v |= (b as u64) << (32 * l);
            }
            return self.write_gpr(ins.op0_register(), IntVal::known(v));
        }
        let dst = self.vreg(0)?;
        // From a general-purpose register.
        if ins.op1_kind() == OpKind::Register && ins.op1_register().is_gpr() {
            let v = self.int_op(1)?;
            let x = self.need(v)?;
            let lo = self.pool.konst(x as u32);
            let hi = self.pool.konst((x >> 32) as u32);
            let zero = self.pool.konst(0);
            let vals = if lanes == 1 { vec![lo, zero, zero, zero] } else { vec![lo, hi, zero, zero] };
            return self.write_lanes_scalar(dst, vals);
        }
        // Register-to-register merges the low lanes into the destination.
        let three_op = self.evex_or_vex() && ins.op_count() == 3;
        if three_op || (ins.op1_kind() == OpKind::Register && matches!(mn, Movss | Movsd)) {
            let (_, mut base, src) = self.two_sources(4)?;
            let low = self.vec_op(src, lanes)?;
            base[..lanes].copy_from_slice(&low);
            return self.write_lanes_scalar(dst, base);
        }
        // Loads (and movq/movd register forms) zero the rest of the register.
        let low = self.vec_op(1, lanes)?;
        let zero = self.pool.konst(0);
        let mut vals = vec![zero; 4];
        vals[..lanes].copy_from_slice(&low);
        if self.evex_or_vex() || matches!(mn, Movq | Movd) && ins.op1_kind() == OpKind::Register {
            self.write_lanes_scalar(dst, vals)
        } else {
            // Legacy movss/movsd from memory zero lanes up to 127 and keep the upper half.
            self.vec[dst][..4].copy_from_slice(&vals);
            Ok(())
        }
    }

    fn compare(&mut self, scalar: bool) -> Res<()> {
        let ins = self.ins;
        let (pred, swap) = cmp_pred(self.imm()).ok_or_else(|| self.unsupported())?;
        let w = if scalar { 1 } else { self.width() };
        let to_k = ins.op0_register().is_k();
        let (a, src) = if to_k || (self.evex_or_vex() && ins.op_count() >= 4) {
            (self.vec_op(1, w)?, 2)
        } else {
            let d = self.vreg(0)?;
            (self.vec[d][..w].to_vec(), 1)
        };
        let b = self.vec_op(src, w)?;
        let out: Vec<ExprId> = (0..w)
            .map(|l| if swap { self.pool.cmp(pred, b[l], a[l]) } else { self.pool.cmp(pred, a[l], b[l]) })
            .collect();
        if to_k {
            let k = ins.op0_register().number();
            let zero = self.pool.konst(0);
            let mut lanes = [zero; 16];
            lanes[..w].copy_from_slice(&out);
            if ins.op_mask() != Register::None {
                let m = ins.op_mask().number();
                for (l, lane) in lanes.iter_mut().enumerate().take(w) {
                    *lane = self
                        .pool
                        .select(self.kmask[m][l], *lane, zero)
                        .ok_or_else(|| self.err(TraceErrorKind::OpaqueBitOperation))?;
                }
            }
            self.kmask[k] = lanes;
            return Ok(());
        }
        let dst = self.vreg(0)?;
        if scalar {
            let mut full = if self.evex_or_vex() { self.vec_op(1, 4)? } else { self.vec[dst][..4].to_vec() };
            full[0] = out[0];
            return self.write_lanes_scalar(dst, full);
        }
        self.write_vec(dst, &out)
    }

    /// Table permute with a constant index vector: element `i` of the result
    /// is element `idx[i]` of the concatenated tables (dwords, or qwords = lane pairs).
    fn permute(&mut self, idx: &[ExprId], tables: &[&[ExprId]], qword: bool) -> Res<Vec<ExprId>> {
        let w = idx.len();
        let unit = if qword { 2 } else { 1 };
        let per_table = w / unit;
        let mut out = Vec::with_capacity(w);
        for e in 0..w / unit {
            let raw = self.pool.const_bits(idx[e * unit]).ok_or_else(|| {
                self.err(TraceErrorKind::UnsupportedOperand("permute with a data-dependent index".into()))
            })? as usize;
            let sel = raw % (per_table * tables.len());
            let (t, at) = (sel / per_table, sel % per_table);
            for u in 0..unit {
                out.push(tables[t][at * unit + u]);
            }
        }
        Ok(out)
    }

    /// Lanes as concrete dwords or qwords (pairs of lanes), or an error.
    fn const_units(&self, lanes: &[ExprId], qword: bool) -> Res<Vec<u64>> {
        let bits: Option<Vec<u64>> = lanes.iter().map(|&l| self.pool.const_bits(l).map(u64::from)).collect();
        let bits = bits.ok_or_else(|| {
            self.err(TraceErrorKind::UnsupportedOperand("integer vector arithmetic on data".into()))
        })?;
        Ok(if qword {
            bits.chunks(2).map(|c| c[0] | c.get(1).copied().unwrap_or(0) << 32).collect()
        } else {
            bits
        })
    }

    fn units_to_lanes(&mut self, units: &[u64], qword: bool) -> Vec<ExprId> {
        let mut out = Vec::new();
        for &u in units {
            out.push(self.pool.konst(u as u32));
            if qword {
                out.push(self.pool.konst((u >> 32) as u32));
            }
        }
        out
    }

    /// An opmask lane's bits when the branch or integer that reads it can
    /// know them: a constant, or a NaN test of the inputs, counted as clear
    /// as for `movmskps` (LLVM's AVX-512 f32::max folds `kortest` or `kmov`
    /// their compare masks to leave the loop on a NaN); the trace is then
    /// checked on NaN inputs before it is trusted.
    fn mask_lane_bits(&mut self, m: ExprId) -> Option<u32> {
        self.pool.const_bits(m).or_else(|| {
            let nan_test = self.pool.false_unless_input_nan(m);
            self.assumed_no_nan |= nan_test;
            nan_test.then_some(0)
        })
    }

    fn kmov(&mut self) -> Res<()> {
        let ins = self.ins;
        let dst = ins.op0_register();
        if dst.is_k() {
            let k = dst.number();
            if ins.op1_kind() == OpKind::Register && ins.op1_register().is_k() {
                self.kmask[k] = self.kmask[ins.op1_register().number()];
                return Ok(());
            }
            let v = self.int_op(1)?;
            let bits = self.need(v)?;
            let ones = self.pool.konst(u32::MAX);
            let zero = self.pool.konst(0);
            for l in 0..16 {
                self.kmask[k][l] = if bits >> l & 1 == 1 { ones } else { zero };
            }
            return Ok(());
        }
        let k = ins.op1_register().number();
        let mut v = 0u64;
        for l in 0..16 {
            match self.mask_lane_bits(self.kmask[k][l]) {
                Some(0) => {}
                Some(_) => v |= 1 << l,
                None => {
                    return Err(self.err(TraceErrorKind::UnsupportedOperand(
                        "moving a data-dependent mask to an integer register".into(),
                    )))
                }
            }
        }
        self.set_int_dest(IntVal::known(v))
    }
}

fn lanes_of_reg(r: Register) -> usize {
    super::lanes_of(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operands' truth tables follow the immediate's bit order (bit
    /// `4a + 2b + c`), and the forms compilers emit decompose.
    #[test]
    fn ternary_logic_decompositions_compute_their_immediates() {
        for (i, &table) in TERNLOG_OPERANDS.iter().enumerate() {
            for bit in 0..8 {
                assert_eq!(table >> bit & 1, (bit >> (2 - i)) & 1, "operand {i}, bit {bit}");
            }
        }
        let found = (0..=255u8).filter_map(ternary_logic).count();
        // a | (b & c) (copysign with the sign mask in c), b ^ c, a & b, and
        // the all-ones idiom.
        for imm in [0xF8, 0x3C, 0x66, 0xC0, 0x80, 0xFF, 0x00] {
            let plan = ternary_logic(imm).unwrap_or_else(|| panic!("{imm:#x}"));
            assert_eq!(plan.table(), imm, "{plan:?}");
        }
        assert_eq!(
            ternary_logic(0xF8),
            Some(TernaryLogic::Two {
                inner: (BitOp::And, 1, 2),
                outer: BitOp::Or,
                z: 0,
                inner_second: false
            })
        );
        assert!(found > 60, "{found}");
    }
}
