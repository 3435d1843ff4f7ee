//! Runs a function's machine code with concrete control and symbolic data.
//!
//! Integer registers hold concrete values (pointers are fake addresses in
//! far-apart per-argument regions; lengths are the run's chosen values), so
//! every branch rustc emits around the math is decided exactly as it would be
//! for real. Vector registers hold one [`ExprId`] per 32-bit lane. Loads from
//! an input region yield `Load { input, index }`; stores into an output
//! region are recorded; constants are read from the real process memory.
//! A branch on floating-point data (a `ucomiss` then `ja`, `jbe`, `je`, …)
//! runs both arms from the same state up to where they re-join and merges
//! them: every vector lane or stack value that differs becomes a select on
//! the comparison, with the branch's NaN behaviour. Arms that store to an
//! output or loop are refused. An unknown call, or an access outside the
//! regions, is an error — never a guess.

use super::cfg::{format_instr, Callee, CodeMap, MathFn};
use super::error::{TraceError, TraceErrorKind};
use super::expr::{BinOp, ExprId, ExprPool, UnOp};
use super::memory::CodeMemory;

use crate::scalar::{Arg, OpSignature};
use iced_x86::{ConditionCode, EncodingKind, Instruction, Mnemonic, OpKind, Register};
use std::collections::{HashMap, HashSet};

const REGION_BASE: u64 = 0x1000_0000_0000;
const REGION_STRIDE: u64 = 0x10_0000_0000;
const STACK_TOP: u64 = 0x7ff0_0000_0000;
const STACK_SIZE: u64 = 1 << 20;
const RETURN_SENTINEL: u64 = 0x5e47_1ae1_0000_0000;
/// Steps before giving up on termination.
pub const STEP_LIMIT: usize = 100_000;

/// What one execution produced.
pub struct RunResult {
    /// Final value of each output tensor element, per output (signature order).
    pub outputs: Vec<Vec<Option<ExprId>>>,
    /// Lane 0 of xmm0 at return, for functions returning f32.
    pub ret: Option<ExprId>,
    /// A whole-vector NaN test (`movmskps` of unord masks) was decided as
    /// "no NaN": the result holds for inputs without NaN, and the caller
    /// must check the function on NaN inputs before trusting it.
    pub assumed_no_nan: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IntVal {
    v: u64,
    known: bool,
    /// Unchanged copy of dimension argument `k`.
    dim: Option<u8>,
}

impl IntVal {
    fn known(v: u64) -> IntVal {
        IntVal { v, known: true, dim: None }
    }
    const UNKNOWN: IntVal = IntVal { v: 0, known: false, dim: None };
}

#[derive(Debug, Clone, Copy)]
enum Flags {
    Known {
        /// None: undefined (INC/DEC keep a CF that was never set).
        cf: Option<bool>,
        zf: bool,
        sf: bool,
        of: bool,
        pf: bool,
    },
    /// Set by `ucomiss a, b` (or `comiss`) on symbolic floats.
    Float {
        a: ExprId,
        b: ExprId,
    },
    Unknown,
}

impl Flags {
    /// Flags after an integer result `r` of `bits` width: ZF, SF and PF come
    /// from the result, CF and OF from the instruction's own rule.
    fn of_result(r: u64, bits: u32, cf: Option<bool>, of: bool) -> Flags {
        Flags::Known { cf, of, zf: r == 0, sf: sign_bit(r, bits), pf: parity(r) }
    }
}

#[derive(Debug, Clone, Copy)]
enum Cell {
    Lane(ExprId),
    Int(IntVal, u8),
    IntTail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RegionKind {
    Input(u8),
    Output(u8),
}

#[derive(Debug, Clone)]
struct Region {
    base: u64,
    len: usize,
    kind: RegionKind,
    name: &'static str,
}

enum Place {
    Tensor(usize, u64),
    Stack,
    Other,
}

struct Machine<'a> {
    code: &'a CodeMap,
    memory: &'a dyn CodeMemory,
    pool: &'a mut ExprPool,
    gpr: [IntVal; 16],
    vec: [[ExprId; 16]; 32],
    kmask: [[ExprId; 16]; 8],
    flags: Flags,
    cells: HashMap<u64, Cell>,
    regions: Vec<Region>,
    ins: Instruction,
    /// Branches whose arms are being run (innermost last): meeting one of
    /// them again means an arm went round a loop past its join.
    active_branches: Vec<u64>,
    /// See [`RunResult::assumed_no_nan`].
    assumed_no_nan: bool,
}

type Res<T> = Result<T, TraceError>;

/// Executes the function once with `dims` as the dimension arguments.
pub fn run(
    code: &CodeMap,
    sig: &OpSignature,
    memory: &dyn CodeMemory,
    pool: &mut ExprPool,
    dims: &[usize],
) -> Res<RunResult> {
    let undef = pool.undef();
    let mut m = Machine {
        code,
        memory,
        pool,
        gpr: [IntVal::UNKNOWN; 16],
        vec: [[undef; 16]; 32],
        kmask: [[undef; 16]; 8],
        flags: Flags::Unknown,
        cells: HashMap::new(),
        regions: Vec::new(),
        ins: Instruction::default(),
        active_branches: Vec::new(),
        assumed_no_nan: false,
    };
    // Callee-saved registers hold the caller's values: defined, not meaningful.
    for (i, g) in m.gpr.iter_mut().enumerate() {
        *g = IntVal::known(0x0bad_0000_0000_0000 + i as u64 * 0x1000);
    }
    let (mut next_int, mut next_float) = (0, 0);
    let (mut inputs, mut outputs, mut params, mut ndim) = (0u8, 0u8, 0u8, 0u8);
    let sig_err = |c: &CodeMap, msg: String| c.error(c.entry, TraceErrorKind::Signature(msg));
    for arg in sig.args() {
        match *arg {
            Arg::Element { .. } => {
                let v = m.pool.load(inputs, 0);
                m.vec[next_float][0] = v;
                next_float += 1;
                inputs += 1;
            }
            Arg::Scalar { .. } => {
                let v = m.pool.param(params);
                m.vec[next_float][0] = v;
                next_float += 1;
                params += 1;
            }
            Arg::Input { name, len, .. } | Arg::Output { name, len } => {
                let len = len
                    .eval(dims)
                    .ok_or_else(|| sig_err(code, format!("length of `{name}` is undefined")))?;
                let base = REGION_BASE + m.regions.len() as u64 * REGION_STRIDE;
                let kind = if matches!(arg, Arg::Input { .. }) {
                    inputs += 1;
                    RegionKind::Input(inputs - 1)
                } else {
                    outputs += 1;
                    RegionKind::Output(outputs - 1)
                };
                m.regions.push(Region { base, len, kind, name });
                m.int_arg(next_int, IntVal::known(base));
                next_int += 1;
            }
            Arg::Dim { .. } => {
                let v = dims
                    .get(ndim as usize)
                    .copied()
                    .ok_or_else(|| sig_err(code, "too few dimension values".into()))?;
                m.int_arg(next_int, IntVal { v: v as u64, known: true, dim: Some(ndim) });
                next_int += 1;
                ndim += 1;
            }
        }
    }
    let rsp = STACK_TOP - 8;
    m.gpr[4] = IntVal::known(rsp);
    m.cells.insert(rsp, Cell::Int(IntVal::known(RETURN_SENTINEL), 8));
    m.cells.insert(rsp + 4, Cell::IntTail);

    let mut steps = 0;
    drive(&mut m, code.entry, &mut steps, &mut |_| Ok(false))?;
    let ret = match sig.returns() {
        crate::scalar::Returns::Nothing => None,
        _ => Some(m.vec[0][0]),
    };
    let mut outs = Vec::new();
    for r in m.regions.iter().filter(|r| matches!(r.kind, RegionKind::Output(_))) {
        outs.push(
            (0..r.len)
                .map(|i| match m.cells.get(&(r.base + 4 * i as u64)) {
                    Some(Cell::Lane(e)) => Some(*e),
                    _ => None,
                })
                .collect(),
        );
    }
    Ok(RunResult { outputs: outs, ret, assumed_no_nan: m.assumed_no_nan })
}

enum Flow {
    Next,
    Jump(u64),
    Return,
    /// A conditional jump on floating-point flags: `cond` says when it is
    /// taken (to `taken`); otherwise execution falls through.
    Fork {
        cond: FloatCond,
        taken: u64,
    },
}

/// When a branch on `ucomiss a, b` flags is taken: when any of `any_of`
/// (comparison masks) holds — or, `negated`, when none does.
#[derive(Debug, Clone)]
struct FloatCond {
    any_of: Vec<ExprId>,
    negated: bool,
}

/// Where a run of instructions ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Return,
    At(u64),
}

/// The machine state two branch arms start from and are merged into.
#[derive(Clone)]
struct Snapshot {
    gpr: [IntVal; 16],
    vec: [[ExprId; 16]; 32],
    kmask: [[ExprId; 16]; 8],
    flags: Flags,
    cells: HashMap<u64, Cell>,
}

/// Instructions one branch arm may run before it must have re-joined.
const ARM_LIMIT: usize = 4096;

/// Runs from `rip` until `stop(rip)` says so (before executing that
/// instruction) or the function returns; branches on floating-point data
/// are forked and merged on the way.
fn drive(
    m: &mut Machine,
    mut rip: u64,
    steps: &mut usize,
    stop: &mut dyn FnMut(u64) -> Res<bool>,
) -> Res<End> {
    loop {
        if stop(rip)? {
            return Ok(End::At(rip));
        }
        *steps += 1;
        if *steps > STEP_LIMIT {
            return Err(m.code.error(rip, TraceErrorKind::StepLimit { steps: STEP_LIMIT }));
        }
        m.ins = *m.code.at(rip)?;
        m.pool.site = rip;
        match m.step()? {
            Flow::Next => rip = m.ins.next_ip(),
            Flow::Jump(t) => rip = t,
            Flow::Return => return Ok(End::Return),
            // The same branch again (the next iteration of a loop around
            // it): this run has gone past the join it was looking for.
            Flow::Fork { .. } if m.active_branches.contains(&rip) => return Ok(End::At(rip)),
            Flow::Fork { cond, taken } => {
                m.active_branches.push(rip);
                let merged = merge_arms(m, &cond, taken, m.ins.next_ip(), steps);
                m.active_branches.pop();
                match merged? {
                    End::Return => return Ok(End::Return),
                    End::At(join) => rip = join,
                }
            }
        }
    }
}

/// Runs both arms of a branch on floating-point data from the current
/// state to where they re-join (the first instruction of the not-taken arm
/// that the taken arm also reaches, or the function's return) and merges
/// their states into the machine. Returns where execution continues.
fn merge_arms(m: &mut Machine, cond: &FloatCond, taken: u64, not_taken: u64, steps: &mut usize) -> Res<End> {
    let branch = m.ins;
    let start = m.snapshot();
    // The taken arm's path, up to its first revisit (a loop around the
    // join) or return.
    let mut on_path: HashSet<u64> = HashSet::new();
    let recorded = drive(m, taken, steps, &mut |rip| Ok(on_path.len() >= ARM_LIMIT || !on_path.insert(rip)))?;
    // The other arm: to the first instruction on that path.
    m.restore(start.clone());
    let mut seen: HashSet<u64> = HashSet::new();
    let function = m.code.name.clone();
    let arm_err = |what: &str| TraceError {
        function: function.clone(),
        address: branch.ip(),
        instruction: Some(format_instr(&branch)),
        kind: TraceErrorKind::Unrecognised(format!(
            "an arm of this branch on floating-point data {what}; only arms that re-join without \
             looping or storing to an output can be merged into a select"
        )),
    };
    let end_not_taken = drive(m, not_taken, steps, &mut |rip| {
        if on_path.contains(&rip) {
            return Ok(true);
        }
        if !seen.insert(rip) || seen.len() > ARM_LIMIT {
            return Err(arm_err("loops"));
        }
        Ok(false)
    })?;
    let join = match (end_not_taken, recorded) {
        (End::At(j), _) => End::At(j),
        (End::Return, End::Return) => End::Return,
        (End::Return, End::At(_)) => return Err(arm_err("returns while the other does not")),
    };
    let not_taken_state = m.snapshot();
    // The taken arm again, now only to the join.
    m.restore(start.clone());
    let mut revisit: HashSet<u64> = HashSet::new();
    let end_taken = drive(m, taken, steps, &mut |rip| {
        if End::At(rip) == join {
            return Ok(true);
        }
        Ok(!revisit.insert(rip))
    })?;
    if end_taken != join {
        return Err(arm_err("loops before re-joining"));
    }
    let taken_state = m.snapshot();
    for state in [&taken_state, &not_taken_state] {
        if m.regions.iter().filter(|r| matches!(r.kind, RegionKind::Output(_))).any(|r| {
            (0..r.len as u64).any(|i| {
                let at = r.base + 4 * i;
                !same_cell(start.cells.get(&at), state.cells.get(&at))
            })
        }) {
            return Err(arm_err("stores to an output"));
        }
    }
    let merged = m
        .merge(cond, &taken_state, &not_taken_state)
        .ok_or_else(|| arm_err("leaves a value that cannot be selected"))?;
    m.restore(merged);
    Ok(join)
}

fn same_cell(a: Option<&Cell>, b: Option<&Cell>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(Cell::Lane(x)), Some(Cell::Lane(y))) => x == y,
        (Some(Cell::Int(x, w)), Some(Cell::Int(y, v))) => x == y && w == v,
        (Some(Cell::IntTail), Some(Cell::IntTail)) => true,
        _ => false,
    }
}

fn gpr_index(r: Register) -> Option<usize> {
    let full = r.full_register();
    if full.is_gpr64() {
        Some(full.number())
    } else {
        None
    }
}

fn vec_index(r: Register) -> Option<usize> {
    if r.is_xmm() || r.is_ymm() || r.is_zmm() {
        Some(r.number())
    } else {
        None
    }
}

fn lanes_of(r: Register) -> usize {
    if r.is_zmm() {
        16
    } else if r.is_ymm() {
        8
    } else {
        4
    }
}

fn mask_bits(v: u64, bits: u32) -> u64 {
    if bits >= 64 {
        v
    } else {
        v & ((1u64 << bits) - 1)
    }
}

fn sign_bit(v: u64, bits: u32) -> bool {
    (v >> (bits - 1)) & 1 == 1
}

fn parity(v: u64) -> bool {
    (v as u8).count_ones() % 2 == 0
}

impl Machine<'_> {
    /// Places integer argument `i`: rdi, rsi, rdx, rcx, r8, r9, then the
    /// stack above the return address.
    fn int_arg(&mut self, i: usize, v: IntVal) {
        const INT_ARGS: [usize; 6] = [7, 6, 2, 1, 8, 9];
        match INT_ARGS.get(i) {
            Some(&r) => self.gpr[r] = v,
            None => {
                let addr = STACK_TOP + 8 * (i as u64 - 6);
                self.cells.insert(addr, Cell::Int(v, 8));
                self.cells.insert(addr + 4, Cell::IntTail);
            }
        }
    }

    fn err(&self, kind: TraceErrorKind) -> TraceError {
        TraceError {
            function: self.code.name.clone(),
            address: self.ins.ip(),
            instruction: Some(format_instr(&self.ins)),
            kind,
        }
    }

    fn unsupported(&self) -> TraceError {
        self.err(TraceErrorKind::UnsupportedInstruction)
    }

    fn evex_or_vex(&self) -> bool {
        matches!(self.ins.encoding(), EncodingKind::VEX | EncodingKind::EVEX)
    }

    // ---------- integer registers ----------

    fn read_gpr(&self, r: Register) -> Res<IntVal> {
        if matches!(r, Register::AH | Register::BH | Register::CH | Register::DH) {
            return Err(self.unsupported());
        }
        let i = gpr_index(r).ok_or_else(|| self.err(TraceErrorKind::UnsupportedOperand(format!("{r:?}"))))?;
        let g = self.gpr[i];
        let bits = r.size() as u32 * 8;
        let v = mask_bits(g.v, bits);
        Ok(IntVal { v, known: g.known, dim: if v == g.v { g.dim } else { None } })
    }

    fn write_gpr(&mut self, r: Register, val: IntVal) -> Res<()> {
        if matches!(r, Register::AH | Register::BH | Register::CH | Register::DH) {
            return Err(self.unsupported());
        }
        let i = gpr_index(r).ok_or_else(|| self.err(TraceErrorKind::UnsupportedOperand(format!("{r:?}"))))?;
        let size = r.size();
        self.gpr[i] = match size {
            8 => val,
            4 => IntVal {
                v: val.v & 0xFFFF_FFFF,
                known: val.known,
                dim: val.dim.filter(|_| val.v <= 0xFFFF_FFFF),
            },
            _ => {
                let bits = size as u32 * 8;
                let old = self.gpr[i];
                let m = (1u64 << bits) - 1;
                IntVal { v: (old.v & !m) | (val.v & m), known: old.known && val.known, dim: None }
            }
        };
        Ok(())
    }

    fn need(&self, v: IntVal) -> Res<u64> {
        if v.known {
            Ok(v.v)
        } else {
            Err(self.err(TraceErrorKind::Undefined("integer register".into())))
        }
    }

    // ---------- memory ----------

    fn address(&self) -> Res<u64> {
        let ins = &self.ins;
        if ins.memory_segment() == Register::FS || ins.memory_segment() == Register::GS {
            return Err(self.err(TraceErrorKind::UnsupportedOperand("fs/gs segment".into())));
        }
        if ins.is_ip_rel_memory_operand() {
            return Ok(ins.ip_rel_memory_address());
        }
        let mut a = ins.memory_displacement64();
        if ins.memory_base() != Register::None {
            let b = self.read_gpr(ins.memory_base())?;
            a = a.wrapping_add(self.need(b)?);
        }
        if ins.memory_index() != Register::None {
            if !ins.memory_index().is_gpr() {
                return Err(
                    self.err(TraceErrorKind::UnsupportedOperand("vector index (gather/scatter)".into()))
                );
            }
            let x = self.read_gpr(ins.memory_index())?;
            a = a.wrapping_add(self.need(x)?.wrapping_mul(ins.memory_index_scale() as u64));
        }
        Ok(a)
    }

    fn place(&self, addr: u64) -> Place {
        for (i, r) in self.regions.iter().enumerate() {
            if addr >= r.base && addr < r.base + REGION_STRIDE {
                return Place::Tensor(i, addr - r.base);
            }
        }
        if (STACK_TOP - STACK_SIZE..STACK_TOP + 64).contains(&addr) {
            Place::Stack
        } else {
            Place::Other
        }
    }

    fn tensor_lane(&self, region: usize, offset: u64, lanes: usize) -> Res<u32> {
        let r = &self.regions[region];
        if offset % 4 != 0 {
            return Err(
                self.err(TraceErrorKind::MisalignedAccess { arg: r.name.into(), offset: offset as i64 })
            );
        }
        let index = offset / 4;
        if index as usize + lanes > r.len {
            return Err(self.err(TraceErrorKind::OutOfBounds {
                arg: r.name.into(),
                index: (index as usize + lanes - 1) as i64,
                len: r.len,
            }));
        }
        Ok(index as u32)
    }

    fn load_lanes(&mut self, addr: u64, lanes: usize) -> Res<Vec<ExprId>> {
        match self.place(addr) {
            Place::Tensor(ri, off) => {
                let index = self.tensor_lane(ri, off, lanes)?;
                let r = self.regions[ri].clone();
                (0..lanes as u64)
                    .map(|l| match (self.cells.get(&(addr + 4 * l)), r.kind) {
                        (Some(Cell::Lane(e)), _) => Ok(*e),
                        (_, RegionKind::Input(k)) => {
                            Ok(self.pool.load_at(k, index + l as u32, self.ins.ip()))
                        }
                        (_, RegionKind::Output(_)) => {
                            Err(self.err(TraceErrorKind::ReadsOutput { arg: r.name.into() }))
                        }
                    })
                    .collect()
            }
            Place::Stack => Ok((0..lanes as u64)
                .map(|l| match self.cells.get(&(addr + 4 * l)) {
                    Some(Cell::Lane(e)) => *e,
                    Some(Cell::Int(v, _)) if v.known => {
                        let bits = v.v as u32;
                        self.pool.konst(bits)
                    }
                    Some(Cell::IntTail) => {
                        let lo = self.cells.get(&(addr + 4 * l - 4));
                        match lo {
                            Some(Cell::Int(v, 8)) if v.known => self.pool.konst((v.v >> 32) as u32),
                            _ => self.pool.undef(),
                        }
                    }
                    _ => self.pool.undef(),
                })
                .collect()),
            Place::Other => {
                let mut bytes = vec![0u8; lanes * 4];
                if !self.memory.read(addr, &mut bytes) {
                    return Err(self.err(TraceErrorKind::WildMemoryAccess { addr }));
                }
                Ok(bytes
                    .chunks(4)
                    .map(|c| self.pool.konst(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect())
            }
        }
    }

    fn store_lanes(&mut self, addr: u64, values: &[ExprId]) -> Res<()> {
        match self.place(addr) {
            Place::Tensor(ri, off) => {
                self.tensor_lane(ri, off, values.len())?;
                if let RegionKind::Input(_) = self.regions[ri].kind {
                    return Err(self.err(TraceErrorKind::WritesInput { arg: self.regions[ri].name.into() }));
                }
            }
            Place::Stack => {}
            Place::Other => return Err(self.err(TraceErrorKind::WildMemoryAccess { addr })),
        }
        for (l, &v) in values.iter().enumerate() {
            self.cells.insert(addr + 4 * l as u64, Cell::Lane(v));
        }
        Ok(())
    }

    fn load_int(&mut self, addr: u64, size: usize) -> Res<IntVal> {
        match self.place(addr) {
            Place::Tensor(..) => {
                Err(self.err(TraceErrorKind::UnsupportedOperand("integer load from tensor data".into())))
            }
            Place::Stack => Ok(match self.cells.get(&addr) {
                Some(Cell::Int(v, s)) if *s as usize == size => *v,
                Some(Cell::Int(v, 8)) if v.known => IntVal::known(mask_bits(v.v, size as u32 * 8)),
                Some(Cell::Lane(e)) if size == 4 => match self.pool.const_bits(*e) {
                    Some(b) => IntVal::known(b as u64),
                    None => IntVal::UNKNOWN,
                },
                _ => IntVal::UNKNOWN,
            }),
            Place::Other => {
                let mut b = [0u8; 8];
                if !self.memory.read(addr, &mut b[..size]) {
                    return Err(self.err(TraceErrorKind::WildMemoryAccess { addr }));
                }
                Ok(IntVal::known(u64::from_le_bytes(b)))
            }
        }
    }

    fn store_int(&mut self, addr: u64, v: IntVal, size: usize) -> Res<()> {
        match self.place(addr) {
            Place::Stack => {
                let v = IntVal { v: mask_bits(v.v, size as u32 * 8), ..v };
                self.cells.insert(addr, Cell::Int(v, size as u8));
                if size == 8 {
                    self.cells.insert(addr + 4, Cell::IntTail);
                }
                Ok(())
            }
            Place::Tensor(..) => {
                Err(self.err(TraceErrorKind::UnsupportedOperand("integer store to tensor data".into())))
            }
            Place::Other => Err(self.err(TraceErrorKind::WildMemoryAccess { addr })),
        }
    }

    fn push(&mut self, v: IntVal) -> Res<()> {
        // Wrapping: analysed code may point rsp anywhere; the store rejects
        // addresses outside the known regions.
        let sp = self.need(self.gpr[4])?.wrapping_sub(8);
        self.gpr[4] = IntVal::known(sp);
        self.store_int(sp, v, 8)
    }

    fn pop(&mut self) -> Res<IntVal> {
        let sp = self.need(self.gpr[4])?;
        let v = self.load_int(sp, 8)?;
        self.gpr[4] = IntVal::known(sp.wrapping_add(8));
        Ok(v)
    }

    // ---------- operands ----------

    fn int_op(&mut self, i: u32) -> Res<IntVal> {
        let ins = self.ins;
        match ins.op_kind(i) {
            OpKind::Register => self.read_gpr(ins.op_register(i)),
            OpKind::Memory => {
                let a = self.address()?;
                self.load_int(a, ins.memory_size().size())
            }
            OpKind::Immediate8
            | OpKind::Immediate16
            | OpKind::Immediate32
            | OpKind::Immediate64
            | OpKind::Immediate8to16
            | OpKind::Immediate8to32
            | OpKind::Immediate8to64
            | OpKind::Immediate32to64 => Ok(IntVal::known(ins.immediate(i))),
            k => Err(self.err(TraceErrorKind::UnsupportedOperand(format!("{k:?}")))),
        }
    }

    fn set_int_dest(&mut self, v: IntVal) -> Res<()> {
        let ins = self.ins;
        match ins.op0_kind() {
            OpKind::Register => self.write_gpr(ins.op0_register(), v),
            OpKind::Memory => {
                let a = self.address()?;
                self.store_int(a, v, ins.memory_size().size())
            }
            k => Err(self.err(TraceErrorKind::UnsupportedOperand(format!("{k:?}")))),
        }
    }

    fn op_bits(&self) -> u32 {
        let ins = &self.ins;
        if ins.op0_kind() == OpKind::Register {
            ins.op0_register().size() as u32 * 8
        } else {
            ins.memory_size().size() as u32 * 8
        }
    }

    /// `lanes` lanes of a vector operand (register, memory or broadcast).
    fn vec_op(&mut self, i: u32, lanes: usize) -> Res<Vec<ExprId>> {
        let ins = self.ins;
        match ins.op_kind(i) {
            OpKind::Register => {
                let r = ins.op_register(i);
                let v = vec_index(r)
                    .ok_or_else(|| self.err(TraceErrorKind::UnsupportedOperand(format!("{r:?}"))))?;
                Ok(self.vec[v][..lanes].to_vec())
            }
            OpKind::Memory => {
                let a = self.address()?;
                if ins.is_broadcast() {
                    let unit = ins.memory_size().element_size() / 4;
                    if unit == 0 {
                        return Err(
                            self.err(TraceErrorKind::UnsupportedOperand("sub-dword broadcast".into()))
                        );
                    }
                    let one = self.load_lanes(a, unit)?;
                    Ok((0..lanes).map(|l| one[l % unit]).collect())
                } else {
                    self.load_lanes(a, lanes)
                }
            }
            k => Err(self.err(TraceErrorKind::UnsupportedOperand(format!("{k:?}")))),
        }
    }

    fn vreg(&self, i: u32) -> Res<usize> {
        let r = self.ins.op_register(i);
        vec_index(r).ok_or_else(|| self.err(TraceErrorKind::UnsupportedOperand(format!("{r:?}"))))
    }

    /// Writes `values` to the destination register (operand 0), applying EVEX
    /// masking and zeroing the lanes above for VEX/EVEX encodings.
    fn write_vec(&mut self, dst: usize, values: &[ExprId]) -> Res<()> {
        let mut values = values.to_vec();
        let mask = self.ins.op_mask();
        if mask != Register::None {
            let k = mask.number();
            for (l, v) in values.iter_mut().enumerate() {
                let keep = if self.ins.zeroing_masking() { self.pool.konst(0) } else { self.vec[dst][l] };
                *v = self
                    .pool
                    .select(self.kmask[k][l], *v, keep)
                    .ok_or_else(|| self.err(TraceErrorKind::OpaqueBitOperation))?;
            }
        }
        let vex = self.evex_or_vex();
        for (l, slot) in self.vec[dst].iter_mut().enumerate() {
            if l < values.len() {
                *slot = values[l];
            } else if vex {
                *slot = 0;
            }
        }
        if vex {
            let zero = self.pool.konst(0);
            for slot in self.vec[dst][values.len()..].iter_mut() {
                *slot = zero;
            }
        }
        Ok(())
    }

    /// Register width (lanes) of operand 0, or of the register operand for stores.
    fn width(&self) -> usize {
        for i in 0..self.ins.op_count() {
            if self.ins.op_kind(i) == OpKind::Register && vec_index(self.ins.op_register(i)).is_some() {
                return lanes_of(self.ins.op_register(i));
            }
        }
        4
    }

    // ---------- branches on floating-point data ----------

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            gpr: self.gpr,
            vec: self.vec,
            kmask: self.kmask,
            flags: self.flags,
            cells: self.cells.clone(),
        }
    }

    fn restore(&mut self, s: Snapshot) {
        self.gpr = s.gpr;
        self.vec = s.vec;
        self.kmask = s.kmask;
        self.flags = s.flags;
        self.cells = s.cells;
    }

    /// When a jump on the flags of `ucomiss a, b` is taken: ZF, PF and CF
    /// are all set when unordered, so e.g. `ja` (CF = ZF = 0) is `b < a`
    /// and false on NaN, `jb` (CF) is `!(b ≤ a)` and true on NaN.
    fn float_cond(&mut self, cc: ConditionCode) -> Res<FloatCond> {
        use crate::trace::CmpPred::*;
        let Flags::Float { a, b } = self.flags else {
            return Err(self.err(TraceErrorKind::DataDependentBranch));
        };
        let p = &mut *self.pool;
        let (any_of, negated) = match cc {
            ConditionCode::a => (vec![p.cmp(Lt, b, a)], false),
            ConditionCode::ae => (vec![p.cmp(Le, b, a)], false),
            ConditionCode::b => (vec![p.cmp(Nle, b, a)], false),
            ConditionCode::be => (vec![p.cmp(Nlt, b, a)], false),
            ConditionCode::p => (vec![p.cmp(Unord, a, b)], false),
            ConditionCode::np => (vec![p.cmp(Unord, a, b)], true),
            ConditionCode::e => (vec![p.cmp(Unord, a, b), p.cmp(Eq, a, b)], false),
            ConditionCode::ne => (vec![p.cmp(Unord, a, b), p.cmp(Eq, a, b)], true),
            _ => return Err(self.err(TraceErrorKind::DataDependentBranch)),
        };
        Ok(FloatCond { any_of, negated })
    }

    /// `cond ? taken : not_taken` for one value.
    fn select_on(&mut self, cond: &FloatCond, taken: ExprId, not_taken: ExprId) -> Option<ExprId> {
        if taken == not_taken {
            return Some(taken);
        }
        let (yes, no) = if cond.negated { (not_taken, taken) } else { (taken, not_taken) };
        let mut r = no;
        for &m in cond.any_of.iter().rev() {
            r = self.pool.select(m, yes, r)?;
        }
        Some(r)
    }

    /// The state after a branch whose arms ended in `t` (taken) and `f`:
    /// lanes and stack values that differ are selected on the condition;
    /// integer values that differ are unknown from here on (reading one is
    /// an error), as are the flags.
    fn merge(&mut self, cond: &FloatCond, t: &Snapshot, f: &Snapshot) -> Option<Snapshot> {
        let mut out = t.clone();
        for (g, (x, y)) in out.gpr.iter_mut().zip(t.gpr.iter().zip(&f.gpr)) {
            if x != y {
                *g = IntVal::UNKNOWN;
            }
        }
        for r in 0..32 {
            for l in 0..16 {
                out.vec[r][l] = self.select_on(cond, t.vec[r][l], f.vec[r][l])?;
            }
        }
        for r in 0..8 {
            for l in 0..16 {
                out.kmask[r][l] = self.select_on(cond, t.kmask[r][l], f.kmask[r][l])?;
            }
        }
        out.flags = Flags::Unknown;
        let addrs: Vec<u64> = t.cells.keys().chain(f.cells.keys()).copied().collect();
        for at in addrs {
            let merged = match (t.cells.get(&at), f.cells.get(&at)) {
                (Some(Cell::Lane(x)), Some(Cell::Lane(y))) => Some(Cell::Lane(self.select_on(cond, *x, *y)?)),
                (Some(a), Some(b)) if same_cell(Some(a), Some(b)) => Some(*a),
                // Written by one arm only, or differently typed: unknown.
                _ => None,
            };
            match merged {
                Some(c) => {
                    out.cells.insert(at, c);
                }
                None => {
                    out.cells.remove(&at);
                }
            }
        }
        Some(out)
    }

    // ---------- flags ----------

    fn set_flags_logic(&mut self, r: u64, bits: u32) {
        self.flags = Flags::of_result(r, bits, Some(false), false);
    }

    fn cond(&self, cc: ConditionCode) -> Res<bool> {
        let (cf, zf, sf, of, pf) = match self.flags {
            Flags::Known { cf, zf, sf, of, pf } => (cf, zf, sf, of, pf),
            Flags::Float { .. } => return Err(self.err(TraceErrorKind::DataDependentBranch)),
            Flags::Unknown => return Err(self.err(TraceErrorKind::Undefined("flags".into()))),
        };
        let cf = || cf.ok_or_else(|| self.err(TraceErrorKind::Undefined("carry flag".into())));
        Ok(match cc {
            ConditionCode::o => of,
            ConditionCode::no => !of,
            ConditionCode::b => cf()?,
            ConditionCode::ae => !cf()?,
            ConditionCode::e => zf,
            ConditionCode::ne => !zf,
            ConditionCode::be => cf()? || zf,
            ConditionCode::a => !cf()? && !zf,
            ConditionCode::s => sf,
            ConditionCode::ns => !sf,
            ConditionCode::p => pf,
            ConditionCode::np => !pf,
            ConditionCode::l => sf != of,
            ConditionCode::ge => sf == of,
            ConditionCode::le => zf || sf != of,
            ConditionCode::g => !zf && sf == of,
            ConditionCode::None => return Err(self.unsupported()),
        })
    }

    // ---------- the instruction ----------

    fn step(&mut self) -> Res<Flow> {
        use Mnemonic::*;
        let ins = self.ins;
        let mn = ins.mnemonic();
        match mn {
            Nop | Endbr64 | Prefetcht0 | Prefetcht1 | Prefetcht2 | Prefetchnta | Lfence | Sfence | Mfence
            | Pause => {}
            Ret => {
                let t = self.pop()?;
                if t.known && t.v == RETURN_SENTINEL {
                    return Ok(Flow::Return);
                }
                return Err(self
                    .err(TraceErrorKind::Unrecognised("return to an address other than the caller".into())));
            }
            Jmp => {
                if ins.op0_kind() == OpKind::NearBranch64 {
                    return Ok(Flow::Jump(ins.near_branch_target()));
                }
                return match self.code.callee(ins.ip()).cloned() {
                    Some(Callee::Math(f)) => {
                        self.call_math(f)?;
                        let t = self.pop()?;
                        if t.known && t.v == RETURN_SENTINEL {
                            Ok(Flow::Return)
                        } else {
                            Err(self
                                .err(TraceErrorKind::Unrecognised("tail call from a nested frame".into())))
                        }
                    }
                    Some(Callee::Unknown { target, symbol }) => {
                        Err(self.err(TraceErrorKind::UnknownCall { target, symbol }))
                    }
                    None => Err(self.err(TraceErrorKind::IndirectBranch)),
                };
            }
            Call => {
                let callee = match self.code.callee(ins.ip()).cloned() {
                    None if ins.op0_kind() == OpKind::Register => {
                        let t = self.read_gpr(ins.op0_register())?;
                        Some(super::cfg::resolve_target(self.need(t)?, self.memory))
                    }
                    c => c,
                };
                return match callee {
                    Some(Callee::Math(f)) => {
                        self.call_math(f)?;
                        Ok(Flow::Next)
                    }
                    Some(Callee::Unknown { target, symbol }) => {
                        Err(self.err(TraceErrorKind::UnknownCall { target, symbol }))
                    }
                    None => Err(self.err(TraceErrorKind::IndirectBranch)),
                };
            }
            _ if ins.is_jcc_short_or_near() && matches!(self.flags, Flags::Float { .. }) => {
                let cond = self.float_cond(ins.condition_code())?;
                return Ok(Flow::Fork { cond, taken: ins.near_branch_target() });
            }
            _ if ins.is_jcc_short_or_near() => {
                return Ok(if self.cond(ins.condition_code())? {
                    Flow::Jump(ins.near_branch_target())
                } else {
                    Flow::Next
                });
            }
            Push => {
                let v = self.int_op(0)?;
                self.push(v)?;
            }
            Pop => {
                let v = self.pop()?;
                self.set_int_dest(v)?;
            }
            Mov | Movzx => {
                let v = self.int_op(1)?;
                self.set_int_dest(v)?;
            }
            Movsx | Movsxd => {
                let src_bits = if ins.op1_kind() == OpKind::Register {
                    ins.op1_register().size() as u32 * 8
                } else {
                    ins.memory_size().size() as u32 * 8
                };
                let v = self.int_op(1)?;
                let ext = ((v.v << (64 - src_bits)) as i64 >> (64 - src_bits)) as u64;
                let dim = v.dim.filter(|_| !sign_bit(v.v, src_bits));
                self.set_int_dest(IntVal { v: ext, known: v.known, dim })?;
            }
            Cdqe => {
                let v = self.read_gpr(Register::EAX)?;
                self.write_gpr(
                    Register::RAX,
                    IntVal { v: v.v as u32 as i32 as i64 as u64, known: v.known, dim: None },
                )?;
            }
            Lea => {
                let a = self.address()?;
                let bits = ins.op0_register().size() as u32 * 8;
                self.write_gpr(ins.op0_register(), IntVal::known(mask_bits(a, bits)))?;
            }
            Xchg => {
                let a = self.int_op(0)?;
                let b = self.int_op(1)?;
                self.set_int_dest(b)?;
                if ins.op1_kind() != OpKind::Register {
                    return Err(self.unsupported());
                }
                self.write_gpr(ins.op1_register(), a)?;
            }
            Add | Sub | Cmp | And | Or | Xor | Test | Adc | Sbb => self.alu(mn)?,
            Inc | Dec | Neg | Not => self.unary_alu(mn)?,
            Imul if ins.op_count() > 1 => self.imul()?,
            Mul | Imul => {
                let bits = self.op_bits();
                let src = self.int_op(0)?;
                let acc = self.read_gpr(Register::RAX)?;
                let (x, y) = (mask_bits(self.need(acc)?, bits), mask_bits(self.need(src)?, bits));
                if bits != 64 {
                    return Err(self.unsupported());
                }
                let (lo, hi) = if mn == Mul {
                    let w = (x as u128) * (y as u128);
                    (w as u64, (w >> 64) as u64)
                } else {
                    let w = (x as i64 as i128) * (y as i64 as i128);
                    (w as u64, (w >> 64) as u64)
                };
                let overflow = if mn == Mul { hi != 0 } else { (lo as i64 >> 63) as u64 != hi };
                self.write_gpr(Register::RAX, IntVal::known(lo))?;
                self.write_gpr(Register::RDX, IntVal::known(hi))?;
                self.flags = Flags::Known {
                    cf: Some(overflow),
                    of: overflow,
                    zf: false,
                    sf: sign_bit(lo, 64),
                    pf: parity(lo),
                };
            }
            Shl | Sal | Shr | Sar | Shlx | Shrx | Sarx => self.shift(mn)?,
            Bzhi => {
                let src = self.int_op(1)?;
                let idx = self.int_op(2)?;
                let bits = self.op_bits();
                let (s, n) = (self.need(src)?, self.need(idx)? & 0xff);
                let r = if n >= bits as u64 { s } else { s & ((1u64 << n) - 1) };
                self.set_flags_logic(r, bits);
                self.set_int_dest(IntVal::known(r))?;
            }
            Andn => {
                let a = self.int_op(1)?;
                let b = self.int_op(2)?;
                let bits = self.op_bits();
                let r = mask_bits(!self.need(a)? & self.need(b)?, bits);
                self.set_flags_logic(r, bits);
                self.set_int_dest(IntVal::known(r))?;
            }
            Setb | Setae | Sete | Setne | Setbe | Seta | Sets | Setns | Setp | Setnp | Setl | Setge
            | Setle | Setg | Seto | Setno => {
                let c = self.cond(ins.condition_code())?;
                self.set_int_dest(IntVal::known(c as u64))?;
            }
            Cmovb | Cmovae | Cmove | Cmovne | Cmovbe | Cmova | Cmovs | Cmovns | Cmovp | Cmovnp | Cmovl
            | Cmovge | Cmovle | Cmovg | Cmovo | Cmovno => {
                let c = self.cond(ins.condition_code())?;
                let v = if c { self.int_op(1)? } else { self.read_gpr(ins.op0_register())? };
                self.write_gpr(ins.op0_register(), v)?;
            }
            _ => return self.step_vector().map(|_| Flow::Next),
        }
        Ok(Flow::Next)
    }

    fn alu(&mut self, mn: Mnemonic) -> Res<()> {
        use Mnemonic::*;
        let bits = self.op_bits();
        // Zeroing idioms are defined whatever the register held.
        if matches!(mn, Xor | Sub)
            && self.ins.op0_kind() == OpKind::Register
            && self.ins.op1_kind() == OpKind::Register
            && self.ins.op0_register() == self.ins.op1_register()
        {
            self.set_flags_logic(0, bits);
            return self.set_int_dest(IntVal::known(0));
        }
        let a = self.int_op(0)?;
        let b = self.int_op(1)?;
        let (x, y) = (mask_bits(self.need(a)?, bits), mask_bits(self.need(b)?, bits));
        let carry_in = match (mn, self.flags) {
            (Adc | Sbb, Flags::Known { cf: Some(cf), .. }) => cf as u64,
            (Adc | Sbb, _) => return Err(self.err(TraceErrorKind::Undefined("carry flag".into()))),
            _ => 0,
        };
        let (r, cf, of) = match mn {
            Add | Adc => {
                let r = mask_bits(x.wrapping_add(y).wrapping_add(carry_in), bits);
                let wide = (x as u128) + (y as u128) + carry_in as u128;
                (r, wide >> bits != 0, sign_bit((x ^ r) & (y ^ r), bits))
            }
            Sub | Cmp | Sbb => {
                let r = mask_bits(x.wrapping_sub(y).wrapping_sub(carry_in), bits);
                (r, (x as u128) < (y as u128) + carry_in as u128, sign_bit((x ^ y) & (x ^ r), bits))
            }
            And | Test => (x & y, false, false),
            Or => (x | y, false, false),
            Xor => (x ^ y, false, false),
            _ => return Err(self.unsupported()),
        };
        self.flags = Flags::of_result(r, bits, Some(cf), of);
        if !matches!(mn, Cmp | Test) {
            self.set_int_dest(IntVal::known(r))?;
        }
        Ok(())
    }

    fn unary_alu(&mut self, mn: Mnemonic) -> Res<()> {
        use Mnemonic::*;
        let bits = self.op_bits();
        let a = self.int_op(0)?;
        let x = mask_bits(self.need(a)?, bits);
        // INC and DEC leave CF as it was, which may be undefined.
        let old_cf = match self.flags {
            Flags::Known { cf, .. } => cf,
            _ => None,
        };
        let r = match mn {
            Inc => mask_bits(x.wrapping_add(1), bits),
            Dec => mask_bits(x.wrapping_sub(1), bits),
            Neg => mask_bits(x.wrapping_neg(), bits),
            Not => mask_bits(!x, bits),
            _ => return Err(self.unsupported()),
        };
        let min = 1 << (bits - 1);
        let (cf, of) = match mn {
            Inc => (old_cf, r == min),
            Dec => (old_cf, x == min),
            Neg => (Some(x != 0), x == min),
            _ => return self.set_int_dest(IntVal::known(r)), // NOT leaves the flags alone
        };
        self.flags = Flags::of_result(r, bits, cf, of);
        self.set_int_dest(IntVal::known(r))
    }

    fn imul(&mut self) -> Res<()> {
        let ins = self.ins;
        let bits = self.op_bits();
        let (a, b) = match ins.op_count() {
            2 => (self.int_op(0)?, self.int_op(1)?),
            3 => (self.int_op(1)?, self.int_op(2)?),
            _ => return Err(self.unsupported()),
        };
        let (x, y) = (self.need(a)?, self.need(b)?);
        let r = mask_bits(x.wrapping_mul(y), bits);
        self.flags = Flags::Unknown;
        self.set_int_dest(IntVal::known(r))
    }

    fn shift(&mut self, mn: Mnemonic) -> Res<()> {
        use Mnemonic::*;
        let bits = self.op_bits();
        let (src, count) = match mn {
            Shlx | Shrx | Sarx => (self.int_op(1)?, self.int_op(2)?),
            _ if self.ins.op_count() == 1 => (self.int_op(0)?, IntVal::known(1)),
            _ => (self.int_op(0)?, self.int_op(1)?),
        };
        let x = mask_bits(self.need(src)?, bits);
        let n = self.need(count)? & if bits == 64 { 63 } else { 31 };
        let r = match mn {
            Shl | Sal | Shlx => mask_bits(x.checked_shl(n as u32).unwrap_or(0), bits),
            Shr | Shrx => x.checked_shr(n as u32).unwrap_or(0),
            Sar | Sarx => {
                let s = ((x << (64 - bits)) as i64) >> (64 - bits);
                mask_bits((s >> n.min(63)) as u64, bits)
            }
            _ => return Err(self.unsupported()),
        };
        if !matches!(mn, Shlx | Shrx | Sarx) && n != 0 {
            let cf = match mn {
                Shl | Sal => n <= bits as u64 && (x >> (bits as u64 - n)) & 1 == 1,
                _ => (x >> (n - 1)) & 1 == 1,
            };
            self.flags = Flags::of_result(r, bits, Some(cf), false);
        }
        self.set_int_dest(IntVal::known(r))
    }

    fn call_math(&mut self, f: MathFn) -> Res<()> {
        let args: Vec<ExprId> = (0..f.arity()).map(|i| self.vec[i][0]).collect();
        let r = match f {
            MathFn::Exp => self.pool.un(UnOp::Exp, args[0]),
            MathFn::Log => self.pool.un(UnOp::Log, args[0]),
            MathFn::Tanh => self.pool.un(UnOp::Tanh, args[0]),
            MathFn::Sqrt => self.pool.un(UnOp::Sqrt, args[0]),
            MathFn::Fma => self.pool.fma(args[0], args[1], args[2]),
            MathFn::Pow => self.pool.bin(BinOp::Pow, args[0], args[1]),
            MathFn::Fabs => self.pool.un(UnOp::Abs, args[0]),
            MathFn::Unary(m) => self.pool.un(UnOp::Math(m), args[0]),
        };
        // The System V ABI: every vector register and the scratch GPRs are clobbered.
        let undef = self.pool.undef();
        self.vec = [[undef; 16]; 32];
        self.vec[0][0] = r;
        for g in [0, 1, 2, 6, 7, 8, 9, 10, 11] {
            self.gpr[g] = IntVal::UNKNOWN;
        }
        self.kmask = [[undef; 16]; 8];
        self.flags = Flags::Unknown;
        Ok(())
    }
}

mod vector;
