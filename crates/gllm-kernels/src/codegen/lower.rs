//! `emit_trace_ops`: lowers a TraceOp body onto vector registers.
//!
//! There is no per-operator code here: whatever operator a body came from,
//! each TraceOp becomes one or a few vector instructions (or a MathApprox
//! routine), lanes stand for elements, and the caller says where leaf values
//! live (memory operands for streamed inputs, registers for row scalars) and
//! which registers the body may use. Register use follows the model in
//! `fusion::pressure` exactly, so a body the planner accepted as a GEMM
//! epilogue fits the registers the microkernel leaves free.

use super::math;
use super::pool::ConstPool;
use super::vasm::{Mask, Mem, Src, VecAsm, K, V};
use super::{CodegenError, MaskMisuse, RegisterUse};
use crate::fusion::pressure::math_temps;
use crate::trace::{Body, CmpPred, TraceOp};

/// Where a value lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    Reg(V),
    Mem(Mem),
    Mask(Mask),
}

/// The register being transformed in place (a GEMM accumulator, a loop's
/// data): input `input` lives in `reg`, and the body's result is written back
/// into it once the input is no longer needed.
#[derive(Debug, Clone, Copy)]
pub struct InPlace {
    pub input: u8,
    pub reg: V,
}

/// Opmask registers the lowering may use for comparisons (k1 is the tail
/// mask, k2–k3 belong to MathApprox).
const LOWERING_KREGS: [u8; 4] = [4, 5, 6, 7];

struct RegFile {
    free: Vec<V>,
    kfree: Vec<u8>,
}

impl RegFile {
    fn take(&mut self, what: &TraceOp) -> Result<V, CodegenError> {
        self.free.pop().ok_or(CodegenError::OutOfRegisters { at: RegisterUse::Op(*what) })
    }
}

/// Lowers `body`. `leaf` resolves `Input`, `Param`, `Dim`, `Acc`,
/// `FoldResult` and `RowScalar` (constants come from `pool`). Returns one
/// register per body output; they stay valid until the caller reuses them.
pub fn emit_trace_ops(
    asm: &mut VecAsm,
    pool: &mut ConstPool,
    body: &Body,
    leaf: &mut dyn FnMut(&TraceOp, &mut ConstPool) -> Result<Operand, CodegenError>,
    in_place: Option<InPlace>,
    scratch: &[V],
) -> Result<Vec<V>, CodegenError> {
    let ops = &body.ops;
    let n = ops.len();
    let mut last_use = vec![0usize; n];
    for (i, op) in ops.iter().enumerate() {
        for a in op.operands() {
            last_use[a as usize] = i;
        }
    }
    for &o in &body.outputs {
        last_use[o as usize] = usize::MAX;
    }
    let single_output = (body.outputs.len() == 1).then(|| body.outputs[0] as usize);
    let mut regs = RegFile { free: scratch.iter().rev().copied().collect(), kfree: LOWERING_KREGS.to_vec() };
    let mut val: Vec<Option<Operand>> = vec![None; n];
    let mut owned = vec![false; n];
    // Several `Input(data)` ops are one register: one of them owns it, with
    // the latest last use of all.
    let mut data_owner = None;
    if let Some(ip) = in_place {
        let data_ops: Vec<usize> = (0..n).filter(|&i| ops[i] == TraceOp::Input(ip.input)).collect();
        if let Some(&first) = data_ops.first() {
            let latest = data_ops.iter().map(|&d| last_use[d]).max().expect("non-empty");
            last_use[first] = latest;
            data_owner = Some(first);
        }
    }

    for (i, op) in ops.iter().enumerate() {
        let operand = |j: u32| val[j as usize].expect("SSA operands precede their uses");
        match *op {
            TraceOp::Input(k) if in_place.is_some_and(|ip| ip.input == k) => {
                // The data register is released like any value after its last use.
                val[i] = Some(Operand::Reg(in_place.expect("checked").reg));
                owned[i] = data_owner == Some(i);
            }
            TraceOp::Const(bits) => val[i] = Some(Operand::Mem(pool.splat_bits(bits))),
            TraceOp::Input(_)
            | TraceOp::Param(_)
            | TraceOp::Dim(_)
            | TraceOp::Acc
            | TraceOp::FoldResult(_)
            | TraceOp::RowScalar(_) => val[i] = Some(leaf(op, pool)?),
            TraceOp::Cmp(pred, a, b) => {
                let (a_id, b_id) = (a, b);
                let (a, b) = (operand(a), operand(b));
                let mask = if asm.caps().opmask {
                    let k =
                        regs.kfree.pop().ok_or(CodegenError::OutOfRegisters { at: RegisterUse::Op(*op) })?;
                    Mask::K(K(k))
                } else {
                    // The mask vector takes over a dying operand's register when it can.
                    let dying = [a_id, b_id].into_iter().find_map(|v| match val[v as usize] {
                        Some(Operand::Reg(r)) if last_use[v as usize] == i && owned[v as usize] => Some(r),
                        _ => None,
                    });
                    match dying {
                        Some(r) => Mask::V(r),
                        None => Mask::V(regs.take(op)?),
                    }
                };
                // The first comparison operand must be a register.
                let ra = match a {
                    Operand::Reg(r) => r,
                    Operand::Mem(m) => {
                        let t = regs.take(op)?;
                        asm.load(t, Src::Mem(m))?;
                        regs.free.push(t);
                        t
                    }
                    Operand::Mask(_) => return Err(CodegenError::MaskMisuse(MaskMisuse::Compared)),
                };
                asm.cmp(mask, ra, src(b)?, predicate(pred))?;
                val[i] = Some(Operand::Mask(mask));
                owned[i] = true;
            }
            _ => {
                let dying: Vec<V> = op
                    .operands()
                    .iter()
                    .filter(|&&a| last_use[a as usize] == i && owned[a as usize])
                    .filter_map(|&a| match val[a as usize] {
                        // An AVX2 mask dies into a plain register too.
                        Some(Operand::Reg(r)) | Some(Operand::Mask(Mask::V(r))) => Some(r),
                        _ => None,
                    })
                    .collect();
                // The final result goes to the data register when it can.
                let prefer = in_place.filter(|_| single_output == Some(i)).map(|ip| ip.reg);
                let dst = if let Some(&r) = dying.iter().find(|&&r| Some(r) == prefer) {
                    r
                } else if let Some(&r) = dying.first() {
                    r
                } else if let Some(pos) = prefer.and_then(|p| regs.free.iter().position(|&r| r == p)) {
                    regs.free.remove(pos)
                } else {
                    regs.take(op)?
                };
                // A constant exponent picks powf's lowering.
                let exponent = match *op {
                    TraceOp::Pow(_, b) => match ops[b as usize] {
                        TraceOp::Const(bits) => Some(f32::from_bits(bits)),
                        _ => None,
                    },
                    _ => None,
                };
                emit_op(asm, pool, &mut regs, op, dst, exponent, &|j| operand(j))?;
                val[i] = Some(Operand::Reg(dst));
                owned[i] = true;
            }
        }
        // Release operands whose last use this was (except a reused destination).
        let mut operands = op.operands();
        operands.sort_unstable();
        operands.dedup();
        for a in operands {
            let a = a as usize;
            if last_use[a] != i || !owned[a] {
                continue;
            }
            match val[a] {
                Some(Operand::Reg(r))
                    if val[i] != Some(Operand::Reg(r)) && val[i] != Some(Operand::Mask(Mask::V(r))) =>
                {
                    regs.free.push(r)
                }
                Some(Operand::Mask(Mask::K(k))) => regs.kfree.push(k.0),
                Some(Operand::Mask(Mask::V(r))) if val[i] != Some(Operand::Reg(r)) => regs.free.push(r),
                _ => {}
            }
        }
    }

    let mut out = Vec::with_capacity(body.outputs.len());
    for &o in &body.outputs {
        match val[o as usize].expect("outputs are defined") {
            Operand::Reg(r) => match in_place {
                Some(ip) if body.outputs.len() == 1 => {
                    asm.mov(ip.reg, r)?;
                    out.push(ip.reg);
                }
                _ => out.push(r),
            },
            Operand::Mem(m) => {
                let r = match in_place {
                    Some(ip) if body.outputs.len() == 1 => ip.reg,
                    _ => regs.take(&ops[o as usize])?,
                };
                asm.load(r, Src::Mem(m))?;
                out.push(r);
            }
            Operand::Mask(_) => return Err(CodegenError::MaskMisuse(MaskMisuse::AsResult)),
        }
    }
    Ok(out)
}

fn src(o: Operand) -> Result<Src, CodegenError> {
    match o {
        Operand::Reg(r) => Ok(Src::Reg(r)),
        Operand::Mem(m) => Ok(Src::Mem(m)),
        Operand::Mask(_) => Err(CodegenError::MaskMisuse(MaskMisuse::AsNumber)),
    }
}

fn predicate(p: CmpPred) -> i32 {
    match p {
        CmpPred::Eq => 0,
        CmpPred::Lt => 1,
        CmpPred::Le => 2,
        CmpPred::Unord => 3,
        CmpPred::Ne => 4,
        CmpPred::Nlt => 5,
        CmpPred::Nle => 6,
        CmpPred::Ord => 7,
    }
}

/// Emits one computed op into `dst` (a new register, a dying operand's, or
/// the in-place data register).
fn emit_op(
    asm: &mut VecAsm,
    pool: &mut ConstPool,
    regs: &mut RegFile,
    op: &TraceOp,
    dst: V,
    exponent: Option<f32>,
    operand: &dyn Fn(u32) -> Operand,
) -> Result<(), CodegenError> {
    // The vector register an operand occupies (an AVX2 mask is one too).
    let reg_of = |o: Operand| match o {
        Operand::Reg(r) | Operand::Mask(Mask::V(r)) => Some(r),
        _ => None,
    };
    // Puts operand `a` in a register: `dst` itself unless another operand
    // (`keep`) lives there, else a temporary.
    let in_reg = |asm: &mut VecAsm,
                  regs: &mut RegFile,
                  a: Operand,
                  keep: &[Operand]|
     -> Result<(V, Option<V>), CodegenError> {
        match a {
            Operand::Reg(r) => Ok((r, None)),
            Operand::Mem(m) if !keep.iter().any(|&k| reg_of(k) == Some(dst)) => {
                asm.load(dst, Src::Mem(m))?;
                Ok((dst, None))
            }
            Operand::Mem(m) => {
                let t = regs.take(op)?;
                asm.load(t, Src::Mem(m))?;
                Ok((t, Some(t)))
            }
            Operand::Mask(_) => Err(CodegenError::MaskMisuse(MaskMisuse::AsNumber)),
        }
    };
    let release = |regs: &mut RegFile, t: Option<V>| {
        if let Some(t) = t {
            regs.free.push(t);
        }
    };
    use TraceOp::*;
    match *op {
        Add(a, b) | Mul(a, b) => {
            let (mut a, mut b) = (operand(a), operand(b));
            if matches!(a, Operand::Mem(_)) && matches!(b, Operand::Reg(_)) {
                std::mem::swap(&mut a, &mut b);
            }
            let (ra, t) = in_reg(asm, regs, a, &[b])?;
            if matches!(op, Add(..)) {
                asm.add(dst, ra, src(b)?)?;
            } else {
                asm.mul(dst, ra, src(b)?)?;
            }
            release(regs, t);
        }
        Sub(a, b) | Div(a, b) | Max(a, b) | Min(a, b) => {
            let (a, b) = (operand(a), operand(b));
            let (ra, t) = in_reg(asm, regs, a, &[b])?;
            let b = src(b)?;
            match op {
                Sub(..) => asm.sub(dst, ra, b)?,
                Div(..) => asm.div(dst, ra, b)?,
                Max(..) => asm.max(dst, ra, b)?,
                _ => asm.min(dst, ra, b)?,
            }
            release(regs, t);
        }
        Fma(a, b, c) => {
            let (a, b, c) = (operand(a), operand(b), operand(c));
            if reg_of(c) == Some(dst) {
                // dst = a·b + dst (the product commutes: a register factor first)
                let (a, b) = if matches!(a, Operand::Mem(_)) { (b, a) } else { (a, b) };
                let (ra, t) = in_reg(asm, regs, a, &[b, c])?;
                asm.fmadd231(dst, ra, src(b)?)?;
                release(regs, t);
            } else if reg_of(a) == Some(dst) || reg_of(b) == Some(dst) {
                // dst holds a factor: dst = dst·other + c
                let other = if reg_of(a) == Some(dst) { b } else { a };
                if matches!(c, Operand::Mem(_)) {
                    let (ro, t) = in_reg(asm, regs, other, &[a, b, c])?;
                    asm.fmadd213(dst, ro, src(c)?)?;
                    release(regs, t);
                } else {
                    asm.fmadd132(dst, reg_of(c).expect("register"), src(other)?)?;
                }
            } else {
                // dst is unrelated: dst = c, then dst += a·b.
                let (a, b) = if matches!(a, Operand::Mem(_)) { (b, a) } else { (a, b) };
                let (ra, t) = in_reg_distinct(asm, regs, op, a, dst)?;
                match c {
                    Operand::Reg(r) => asm.mov(dst, r)?,
                    Operand::Mem(m) => asm.load(dst, Src::Mem(m))?,
                    Operand::Mask(_) => return Err(CodegenError::MaskMisuse(MaskMisuse::AsNumber)),
                }
                asm.fmadd231(dst, ra, src(b)?)?;
                release(regs, t);
            }
        }
        Neg(a) | Abs(a) => {
            let (ra, t) = in_reg(asm, regs, operand(a), &[])?;
            if matches!(op, Neg(_)) {
                asm.xor(dst, ra, Src::Mem(pool.splat_bits(0x8000_0000)))?;
            } else {
                asm.and(dst, ra, Src::Mem(pool.splat_bits(0x7fff_ffff)))?;
            }
            release(regs, t);
        }
        Sqrt(a) => asm.sqrt(dst, src(operand(a))?)?,
        Exp(a) | Log(a) | Tanh(a) | Math(_, a) => {
            let x = reg_or_load(asm, operand(a), dst)?;
            let need = math_temps(op);
            let mut temps = Vec::with_capacity(need);
            for _ in 0..need {
                temps.push(regs.take(op)?);
            }
            match op {
                Exp(_) => math::exp(asm, pool, dst, x, &temps)?,
                Log(_) => math::log(asm, pool, dst, x, [temps[0], temps[1], temps[2], temps[3]])?,
                Math(m, _) => math::unary(asm, pool, *m, dst, x, &temps)?,
                _ => math::tanh(asm, pool, dst, x, [temps[0], temps[1], temps[2], temps[3]])?,
            }
            regs.free.extend(temps.into_iter().rev());
        }
        Pow(a, b) => {
            let t = regs.take(op)?;
            let (a, b) = (operand(a), operand(b));
            // The exponent first (it may live in `dst`), then the base in
            // `dst` unless the exponent took it.
            let y = reg_or_load(asm, b, t)?;
            let x = reg_or_load(asm, a, if y != dst { dst } else { t })?;
            // A constant exponent is never read from its register, so `t`
            // may double as the routine's spare.
            math::pow(asm, pool, dst, x, y, exponent, t)?;
            regs.free.push(t);
        }
        CopySign(a, b) => {
            // The sign bits first (b may live in `dst`), then a's magnitude.
            let t = regs.take(op)?;
            let rb = reg_or_load(asm, operand(b), t)?;
            asm.and(t, rb, Src::Mem(pool.splat_bits(0x8000_0000)))?;
            let ra = reg_or_load(asm, operand(a), dst)?;
            asm.and(dst, ra, Src::Mem(pool.splat_bits(0x7fff_ffff)))?;
            asm.or(dst, dst, Src::Reg(t))?;
            regs.free.push(t);
        }
        Select(c, a, b) => {
            let mask = match operand(c) {
                Operand::Mask(m) => m,
                _ => return Err(CodegenError::MaskMisuse(MaskMisuse::NotAMask)),
            };
            let (a, b) = (operand(a), operand(b));
            // Loading b must not clobber the mask when the result takes its register.
            let (rb, t) = in_reg(asm, regs, b, &[a, Operand::Mask(mask)])?;
            asm.blend(dst, rb, src(a)?, mask)?;
            release(regs, t);
        }
        _ => unreachable!("leaves and comparisons are handled by the caller"),
    }
    Ok(())
}

/// `a`'s register, or `into` after loading `a` there from memory.
fn reg_or_load(asm: &mut VecAsm, a: Operand, into: V) -> Result<V, CodegenError> {
    match a {
        Operand::Reg(r) => Ok(r),
        Operand::Mem(m) => {
            asm.load(into, Src::Mem(m))?;
            Ok(into)
        }
        Operand::Mask(_) => Err(CodegenError::MaskMisuse(MaskMisuse::AsNumber)),
    }
}

/// `a` in a register other than `dst` (loading it into a temporary if needed).
fn in_reg_distinct(
    asm: &mut VecAsm,
    regs: &mut RegFile,
    op: &TraceOp,
    a: Operand,
    dst: V,
) -> Result<(V, Option<V>), CodegenError> {
    match a {
        Operand::Reg(r) if r != dst => Ok((r, None)),
        Operand::Reg(r) => {
            let t = regs.take(op)?;
            asm.mov(t, r)?;
            Ok((t, Some(t)))
        }
        Operand::Mem(m) => {
            let t = regs.take(op)?;
            asm.load(t, Src::Mem(m))?;
            Ok((t, Some(t)))
        }
        Operand::Mask(_) => Err(CodegenError::MaskMisuse(MaskMisuse::AsNumber)),
    }
}
