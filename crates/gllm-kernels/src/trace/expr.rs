//! Symbolic f32 values: a hash-consed expression DAG.
//!
//! Identical computations intern to the same node, whichever code path (scalar
//! loop, vector body, remainder) produced them: commutative operands are put in
//! a structural order, so `a*b` and `b*a` are one node. Simplification is
//! limited to what is exact in IEEE arithmetic (constant folding, bit idioms
//! for neg/abs/select), so a node always means exactly what the code computed.

use super::{CmpPred, MathOp};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub type ExprId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnOp {
    Neg,
    Abs,
    Sqrt,
    Exp,
    Log,
    Tanh,
    Math(MathOp),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    /// `a > b ? a : b` (x86 `maxss`).
    Max,
    /// `a < b ? a : b` (x86 `minss`).
    Min,
    /// libm `powf(a, b)`.
    Pow,
    /// `a` with the sign bit of `b` (what `andps`/`orps` with the sign mask compute).
    CopySign,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BitOp {
    And,
    /// `!a & b`
    AndNot,
    Or,
    Xor,
}

impl BitOp {
    /// The operation on known bits.
    pub fn apply(self, a: u32, b: u32) -> u32 {
        match self {
            BitOp::And => a & b,
            BitOp::AndNot => !a & b,
            BitOp::Or => a | b,
            BitOp::Xor => a ^ b,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expr {
    /// Bits nobody defined (upper lanes after a call, uninitialised stack).
    Undef,
    /// The result of a bit operation on float data with no float meaning,
    /// made by the instruction at this address: harmless in a lane nobody
    /// reads (the upper lanes after `cmpss`), an error if an output uses it.
    Opaque(u64),
    Const(u32),
    /// Element `index` of tensor input `input`, as it was on entry.
    Load {
        input: u8,
        index: u32,
    },
    Param(u8),
    Dim(u8),
    Un(UnOp, ExprId),
    Bin(BinOp, ExprId, ExprId),
    Fma(ExprId, ExprId, ExprId),
    /// All-ones when the comparison holds, else zero.
    Cmp(CmpPred, ExprId, ExprId),
    Select(ExprId, ExprId, ExprId),
}

const SIGN: u32 = 0x8000_0000;
const ALL_ONES: u32 = 0xFFFF_FFFF;

/// The expression DAG of one execution.
#[derive(Debug, Default, Clone)]
pub struct ExprPool {
    nodes: Vec<Expr>,
    /// Structural hash per node (independent of node numbering).
    shash: Vec<u64>,
    index: HashMap<Expr, ExprId>,
    /// The instruction being executed: new nodes are attributed to it.
    pub site: u64,
    /// The first instruction that computed (or loaded) each node: where an
    /// error about that value points.
    sites: HashMap<ExprId, u64>,
}

impl ExprPool {
    pub fn new() -> ExprPool {
        let mut p = ExprPool::default();
        p.intern(Expr::Undef);
        p
    }

    pub fn get(&self, id: ExprId) -> Expr {
        self.nodes[id as usize]
    }

    fn intern(&mut self, e: Expr) -> ExprId {
        if let Some(&id) = self.index.get(&e) {
            return id;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        std::mem::discriminant(&e).hash(&mut h);
        match e {
            Expr::Undef => {}
            Expr::Opaque(site) => site.hash(&mut h),
            Expr::Const(b) => b.hash(&mut h),
            Expr::Load { input, index } => (input, index).hash(&mut h),
            Expr::Param(k) | Expr::Dim(k) => k.hash(&mut h),
            Expr::Un(op, a) => (op, self.shash[a as usize]).hash(&mut h),
            Expr::Bin(op, a, b) => (op, self.shash[a as usize], self.shash[b as usize]).hash(&mut h),
            Expr::Cmp(p, a, b) => (p, self.shash[a as usize], self.shash[b as usize]).hash(&mut h),
            Expr::Fma(a, b, c) | Expr::Select(a, b, c) => {
                (self.shash[a as usize], self.shash[b as usize], self.shash[c as usize]).hash(&mut h)
            }
        }
        let id = self.nodes.len() as ExprId;
        if self.site != 0 {
            self.sites.insert(id, self.site);
        }
        self.nodes.push(e);
        self.shash.push(h.finish());
        self.index.insert(e, id);
        id
    }

    pub fn undef(&mut self) -> ExprId {
        0
    }

    /// See [`Expr::Opaque`].
    pub fn opaque(&mut self, site: u64) -> ExprId {
        self.intern(Expr::Opaque(site))
    }

    pub fn konst(&mut self, bits: u32) -> ExprId {
        self.intern(Expr::Const(bits))
    }

    pub fn load(&mut self, input: u8, index: u32) -> ExprId {
        self.intern(Expr::Load { input, index })
    }

    /// [`ExprPool::load`] by the instruction at `site`.
    pub fn load_at(&mut self, input: u8, index: u32, site: u64) -> ExprId {
        let id = self.load(input, index);
        self.sites.entry(id).or_insert(site);
        id
    }

    /// The first instruction that computed or loaded `id`, if it was made
    /// while executing code.
    pub fn site(&self, id: ExprId) -> Option<u64> {
        self.sites.get(&id).copied()
    }

    pub fn param(&mut self, k: u8) -> ExprId {
        self.intern(Expr::Param(k))
    }

    pub fn dim(&mut self, k: u8) -> ExprId {
        self.intern(Expr::Dim(k))
    }

    pub fn const_bits(&self, id: ExprId) -> Option<u32> {
        match self.get(id) {
            Expr::Const(b) => Some(b),
            _ => None,
        }
    }

    fn is_undef(&self, id: ExprId) -> bool {
        matches!(self.get(id), Expr::Undef)
    }

    pub fn un(&mut self, op: UnOp, a: ExprId) -> ExprId {
        if self.is_undef(a) {
            return 0;
        }
        if let Some(b) = self.const_bits(a) {
            let folded = match op {
                UnOp::Neg => Some(b ^ SIGN),
                UnOp::Abs => Some(b & !SIGN),
                UnOp::Sqrt => Some(f32::from_bits(b).sqrt().to_bits()),
                UnOp::Math(m) if m.is_exact() => Some(m.eval(f32::from_bits(b)).to_bits()),
                // libm results are left symbolic: folding would bake in one libm's rounding.
                _ => None,
            };
            if let Some(bits) = folded {
                return self.konst(bits);
            }
        }
        if op == UnOp::Neg {
            if let Expr::Un(UnOp::Neg, inner) = self.get(a) {
                return inner;
            }
        }
        self.intern(Expr::Un(op, a))
    }

    /// Puts commutative operands in structural order.
    fn ordered(&self, a: ExprId, b: ExprId) -> (ExprId, ExprId) {
        if self.shash[b as usize] < self.shash[a as usize] {
            (b, a)
        } else {
            (a, b)
        }
    }

    pub fn bin(&mut self, op: BinOp, a: ExprId, b: ExprId) -> ExprId {
        if self.is_undef(a) || self.is_undef(b) {
            return 0;
        }
        if let (Some(x), Some(y)) = (self.const_bits(a), self.const_bits(b)) {
            let (x, y) = (f32::from_bits(x), f32::from_bits(y));
            let r = match op {
                // libm results stay symbolic (see `un`).
                BinOp::Pow => return self.intern(Expr::Bin(op, a, b)),
                BinOp::CopySign => x.copysign(y),
                BinOp::Add => x + y,
                BinOp::Sub => x - y,
                BinOp::Mul => x * y,
                BinOp::Div => x / y,
                BinOp::Max => {
                    if x > y {
                        x
                    } else {
                        y
                    }
                }
                BinOp::Min => {
                    if x < y {
                        x
                    } else {
                        y
                    }
                }
            };
            return self.konst(r.to_bits());
        }
        let (a, b) = if matches!(op, BinOp::Add | BinOp::Mul) { self.ordered(a, b) } else { (a, b) };
        self.intern(Expr::Bin(op, a, b))
    }

    pub fn fma(&mut self, a: ExprId, b: ExprId, c: ExprId) -> ExprId {
        if self.is_undef(a) || self.is_undef(b) || self.is_undef(c) {
            return 0;
        }
        if let (Some(x), Some(y), Some(z)) = (self.const_bits(a), self.const_bits(b), self.const_bits(c)) {
            return self.konst(f32::from_bits(x).mul_add(f32::from_bits(y), f32::from_bits(z)).to_bits());
        }
        let (a, b) = self.ordered(a, b);
        self.intern(Expr::Fma(a, b, c))
    }

    pub fn cmp(&mut self, pred: CmpPred, a: ExprId, b: ExprId) -> ExprId {
        if self.is_undef(a) || self.is_undef(b) {
            return 0;
        }
        if let (Some(x), Some(y)) = (self.const_bits(a), self.const_bits(b)) {
            let holds = pred.eval(f32::from_bits(x), f32::from_bits(y));
            return self.konst(if holds { ALL_ONES } else { 0 });
        }
        self.intern(Expr::Cmp(pred, a, b))
    }

    /// `cond ? a : b` where `cond` is a mask (Cmp or all-ones/zero constant).
    pub fn select(&mut self, cond: ExprId, a: ExprId, b: ExprId) -> Option<ExprId> {
        match self.get(cond) {
            Expr::Const(ALL_ONES) => return Some(a),
            Expr::Const(0) => return Some(b),
            Expr::Cmp(..) => {}
            Expr::Undef => return Some(0),
            _ => return None,
        }
        if a == b {
            return Some(a);
        }
        Some(self.intern(Expr::Select(cond, a, b)))
    }

    fn invert_mask(&mut self, m: ExprId) -> Option<ExprId> {
        match self.get(m) {
            Expr::Const(b) => Some(self.konst(!b)),
            Expr::Cmp(p, a, b) => {
                let inv = match p {
                    CmpPred::Eq => CmpPred::Ne,
                    CmpPred::Ne => CmpPred::Eq,
                    CmpPred::Lt => CmpPred::Nlt,
                    CmpPred::Nlt => CmpPred::Lt,
                    CmpPred::Le => CmpPred::Nle,
                    CmpPred::Nle => CmpPred::Le,
                    CmpPred::Unord => CmpPred::Ord,
                    CmpPred::Ord => CmpPred::Unord,
                };
                Some(self.intern(Expr::Cmp(inv, a, b)))
            }
            _ => None,
        }
    }

    /// `copysign(+0, s) | y` with y's sign bit known clear is `copysign(y, s)`.
    fn copysign_of(&mut self, a: ExprId, b: ExprId) -> Option<ExprId> {
        let sign_clear = |p: &Self, y: ExprId| match p.get(y) {
            Expr::Const(bits) => bits & SIGN == 0,
            Expr::Un(UnOp::Abs, _) => true,
            _ => false,
        };
        for (p, q) in [(a, b), (b, a)] {
            if let Expr::Bin(BinOp::CopySign, z, s) = self.get(p) {
                if self.const_bits(z) == Some(0) && sign_clear(self, q) {
                    return Some(self.bin(BinOp::CopySign, q, s));
                }
            }
        }
        None
    }

    /// A bitwise operation on two 32-bit lanes; `None` when it is not an
    /// idiom with an exact floating-point meaning.
    pub fn bitwise(&mut self, op: BitOp, a: ExprId, b: ExprId) -> Option<ExprId> {
        if let (Some(x), Some(y)) = (self.const_bits(a), self.const_bits(b)) {
            return Some(self.konst(op.apply(x, y)));
        }
        match op {
            BitOp::Xor if a == b => return Some(self.konst(0)),
            BitOp::AndNot if a == b => return Some(self.konst(0)),
            _ => {}
        }
        if self.is_undef(a) || self.is_undef(b) {
            return Some(0);
        }
        let is_mask = |p: &Self, x: ExprId| matches!(p.get(x), Expr::Cmp(..));
        match op {
            BitOp::And | BitOp::Xor if is_mask(self, a) || is_mask(self, b) => {
                let (m, x) = if is_mask(self, a) { (a, b) } else { (b, a) };
                match op {
                    // mask & x = mask ? x : +0
                    BitOp::And => {
                        let zero = self.konst(0);
                        self.select(m, x, zero)
                    }
                    _ if self.const_bits(x) == Some(ALL_ONES) => self.invert_mask(m),
                    _ => None,
                }
            }
            BitOp::And | BitOp::Or | BitOp::Xor => {
                // Put the constant operand first.
                let (c, x) = if self.const_bits(b).is_some() { (b, a) } else { (a, b) };
                match (op, self.const_bits(c)) {
                    (BitOp::And, Some(0)) => Some(self.konst(0)),
                    (BitOp::And, Some(ALL_ONES)) | (BitOp::Or | BitOp::Xor, Some(0)) => Some(x),
                    (BitOp::And, Some(0x7FFF_FFFF)) => Some(self.un(UnOp::Abs, x)),
                    // x's sign bit alone: copysign(+0, x).
                    (BitOp::And, Some(SIGN)) => {
                        let zero = self.konst(0);
                        Some(self.bin(BinOp::CopySign, zero, x))
                    }
                    (BitOp::Xor, Some(SIGN)) => Some(self.un(UnOp::Neg, x)),
                    (BitOp::Or, Some(SIGN)) => {
                        let abs = self.un(UnOp::Abs, x);
                        Some(self.un(UnOp::Neg, abs))
                    }
                    (BitOp::Or, Some(_)) => self.copysign_of(c, x),
                    (_, Some(_)) => None,
                    (BitOp::Or, None) => self
                        .copysign_of(a, b)
                        .or_else(|| self.merge_selects(a, b))
                        .or_else(|| self.mask_or(a, b)),
                    _ => None,
                }
            }
            BitOp::AndNot => {
                if let Some(x) = self.const_bits(a) {
                    let inv = self.konst(!x);
                    return self.bitwise(BitOp::And, inv, b);
                }
                if is_mask(self, a) {
                    let zero = self.konst(0);
                    return self.select(a, zero, b);
                }
                None
            }
        }
    }

    /// Whether `id` is a comparison mask, or masks OR-ed together.
    pub fn is_mask(&self, id: ExprId) -> bool {
        match self.get(id) {
            Expr::Cmp(..) => true,
            Expr::Select(m, t, f) => {
                self.const_bits(t) == Some(ALL_ONES) && self.is_mask(m) && self.is_mask(f)
            }
            _ => false,
        }
    }

    /// `a | b` of two masks: `a ? all-ones : b` (what LLVM's vectorised
    /// NaN tests OR together before one `movmskps`).
    fn mask_or(&mut self, a: ExprId, b: ExprId) -> Option<ExprId> {
        if !self.is_mask(a) || !self.is_mask(b) {
            return None;
        }
        let (m, rest) = if matches!(self.get(a), Expr::Cmp(..)) { (a, b) } else { (b, a) };
        if !matches!(self.get(m), Expr::Cmp(..)) {
            return None;
        }
        let ones = self.konst(ALL_ONES);
        Some(self.intern(Expr::Select(m, ones, rest)))
    }

    /// Whether the mask `id` is all-zero whenever no input element is NaN:
    /// `unord` tests (OR-ed together) of values that can be NaN only if an
    /// input is (loads, constants, abs, neg, max, min, selects of those).
    pub fn false_unless_input_nan(&self, id: ExprId) -> bool {
        match self.get(id) {
            Expr::Const(0) => true,
            Expr::Cmp(super::CmpPred::Unord, a, b) => {
                self.nan_only_from_inputs(a) && self.nan_only_from_inputs(b)
            }
            Expr::Select(m, t, f) if self.const_bits(t) == Some(ALL_ONES) => {
                self.false_unless_input_nan(m) && self.false_unless_input_nan(f)
            }
            _ => false,
        }
    }

    fn nan_only_from_inputs(&self, id: ExprId) -> bool {
        match self.get(id) {
            Expr::Load { .. } | Expr::Param(_) => true,
            Expr::Const(bits) => !f32::from_bits(bits).is_nan(),
            Expr::Un(UnOp::Abs | UnOp::Neg, a) => self.nan_only_from_inputs(a),
            Expr::Bin(BinOp::Max | BinOp::Min, a, b) => {
                self.nan_only_from_inputs(a) && self.nan_only_from_inputs(b)
            }
            Expr::Select(_, a, b) => self.nan_only_from_inputs(a) && self.nan_only_from_inputs(b),
            _ => false,
        }
    }

    /// `(m ? x : 0) | (m ? 0 : y)` → `m ? x : y` (the and/andn/or select idiom).
    fn merge_selects(&mut self, a: ExprId, b: ExprId) -> Option<ExprId> {
        let (Expr::Select(m1, x1, y1), Expr::Select(m2, x2, y2)) = (self.get(a), self.get(b)) else {
            return None;
        };
        if m1 != m2 {
            return None;
        }
        let zero = |p: &Self, v| p.const_bits(v) == Some(0);
        if zero(self, y1) && zero(self, x2) {
            self.select(m1, x1, y2)
        } else if zero(self, x1) && zero(self, y2) {
            self.select(m1, x2, y1)
        } else {
            None
        }
    }

    /// Operand nodes of `id`.
    pub fn children(&self, id: ExprId) -> Vec<ExprId> {
        match self.get(id) {
            Expr::Undef
            | Expr::Opaque(_)
            | Expr::Const(_)
            | Expr::Load { .. }
            | Expr::Param(_)
            | Expr::Dim(_) => vec![],
            Expr::Un(_, a) => vec![a],
            Expr::Bin(_, a, b) | Expr::Cmp(_, a, b) => vec![a, b],
            Expr::Fma(a, b, c) | Expr::Select(a, b, c) => vec![a, b, c],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commutative_operands_intern_once() {
        let mut p = ExprPool::new();
        let (x, y) = (p.load(0, 0), p.load(1, 0));
        assert_eq!(p.bin(BinOp::Mul, x, y), p.bin(BinOp::Mul, y, x));
        assert_ne!(p.bin(BinOp::Sub, x, y), p.bin(BinOp::Sub, y, x));
        assert_ne!(p.bin(BinOp::Max, x, y), p.bin(BinOp::Max, y, x));
    }

    #[test]
    fn bit_idioms() {
        let mut p = ExprPool::new();
        let x = p.load(0, 0);
        let sign = p.konst(SIGN);
        let neg = p.bitwise(BitOp::Xor, x, sign).unwrap();
        assert_eq!(p.get(neg), Expr::Un(UnOp::Neg, x));
        let zero = p.konst(0);
        let m = p.cmp(CmpPred::Lt, x, zero);
        let one = p.konst(1.0f32.to_bits());
        let a = p.bitwise(BitOp::And, m, one).unwrap();
        let b = p.bitwise(BitOp::AndNot, m, x).unwrap();
        let sel = p.bitwise(BitOp::Or, a, b).unwrap();
        assert_eq!(p.get(sel), Expr::Select(m, one, x));
        let y = p.load(1, 0);
        assert!(p.bitwise(BitOp::And, x, y).is_none());
    }
}
