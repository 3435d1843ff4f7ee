//! A vector assembler over iced-x86 that is written once for both x86 ISAs:
//! operands are register numbers and memory references, and each instruction
//! is encoded as zmm (AVX-512) or ymm (AVX2) from the profile's ISA.
//!
//! Everything ISA-specific about vector instructions lives here; the lowering
//! and the kernels above it never name zmm or ymm.

use super::CodegenError;
use crate::device::{Isa, IsaCaps};
use iced_x86::code_asm::*;

/// A vector register by number (zmm0–31 on AVX-512, ymm0–15 on AVX2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct V(pub u8);

/// An AVX-512 opmask register (k1–k7). On AVX2 masks live in vector registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct K(pub u8);

/// `[base + index·4 + disp]`: a full vector at an f32 element address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mem {
    pub base: AsmRegister64,
    pub index: Option<AsmRegister64>,
    pub disp: i32,
    /// The address holds one f32 repeated over a full vector line (a
    /// constant-pool splat). AVX-512 reads it as a 4-byte embedded broadcast:
    /// this machine class loads only one full zmm per cycle but two
    /// broadcasts, so constants as full-width operands starve the FP pipes.
    pub splat: bool,
}

impl Mem {
    pub fn base(base: AsmRegister64, disp: i32) -> Mem {
        Mem { base, index: None, disp, splat: false }
    }

    pub fn indexed(base: AsmRegister64, index: AsmRegister64) -> Mem {
        Mem { base, index: Some(index), disp: 0, splat: false }
    }

    /// The same address `bytes` further on.
    pub fn offset(self, bytes: i32) -> Mem {
        Mem { disp: self.disp + bytes, ..self }
    }

    fn op(self) -> AsmMemoryOperand {
        match self.index {
            Some(i) => self.base + i * 4 + self.disp,
            None => self.base + self.disp,
        }
    }

    /// As a zmm source operand: an embedded broadcast for splats.
    fn zmm_src(self) -> AsmMemoryOperand {
        if self.splat {
            dword_bcst(self.op())
        } else {
            zmmword_ptr(self.op())
        }
    }

    /// As a zmm destination or a whole-vector load (no broadcast form).
    fn zmm(self) -> AsmMemoryOperand {
        debug_assert!(!self.splat, "a constant-pool splat used as a vector address");
        zmmword_ptr(self.op())
    }
}

/// A second source operand: register or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    Reg(V),
    Mem(Mem),
}

const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14, zmm15,
    zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30,
    zmm31,
];
const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
const KREG: [AsmRegisterK; 8] = [k0, k1, k2, k3, k4, k5, k6, k7];

fn z(v: V) -> AsmRegisterZmm {
    ZMM[v.0 as usize]
}
fn y(v: V) -> AsmRegisterYmm {
    YMM[v.0 as usize]
}
fn k(m: K) -> AsmRegisterK {
    KREG[m.0 as usize]
}

type R = Result<(), CodegenError>;

/// Comparison predicates (the `vcmpps` immediate).
pub mod cmp {
    pub const EQ_OQ: i32 = 0;
    pub const LT_OS: i32 = 1;
    pub const LE_OS: i32 = 2;
    pub const UNORD_Q: i32 = 3;
    pub const NEQ_UQ: i32 = 4;
    pub const NLT_US: i32 = 5;
    pub const NLE_US: i32 = 6;
    pub const ORD_Q: i32 = 7;
    pub const GE_OS: i32 = 13;
    pub const GT_OQ: i32 = 30;
}

/// A mask as each ISA holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mask {
    K(K),
    V(V),
}

/// Generates `d = a OP b` for both ISAs and both kinds of `b`.
macro_rules! ternary {
    ($($name:ident => $ins:ident),* $(,)?) => {$(
        pub fn $name(&mut self, d: V, a: V, b: Src) -> R {
            match (self.isa, b) {
                (Isa::Avx512, Src::Reg(b)) => self.a.$ins(z(d), z(a), z(b))?,
                (Isa::Avx512, Src::Mem(m)) => self.a.$ins(z(d), z(a), m.zmm_src())?,
                (Isa::Avx2, Src::Reg(b)) => self.a.$ins(y(d), y(a), y(b))?,
                (Isa::Avx2, Src::Mem(m)) => self.a.$ins(y(d), y(a), ymmword_ptr(m.op()))?,
            }
            Ok(())
        }
    )*};
}

/// Generates `d = OP(a)` for both ISAs and both kinds of `a`.
macro_rules! unary {
    ($($name:ident => $ins:ident),* $(,)?) => {$(
        pub fn $name(&mut self, d: V, a: Src) -> R {
            match (self.isa, a) {
                (Isa::Avx512, Src::Reg(a)) => self.a.$ins(z(d), z(a))?,
                (Isa::Avx512, Src::Mem(m)) => self.a.$ins(z(d), m.zmm_src())?,
                (Isa::Avx2, Src::Reg(a)) => self.a.$ins(y(d), y(a))?,
                (Isa::Avx2, Src::Mem(m)) => self.a.$ins(y(d), ymmword_ptr(m.op()))?,
            }
            Ok(())
        }
    )*};
}

/// Generates `d = OP(a, imm)` for both ISAs.
macro_rules! with_imm {
    ($($name:ident => $ins:ident),* $(,)?) => {$(
        pub fn $name(&mut self, d: V, a: V, imm: i32) -> R {
            match self.isa {
                Isa::Avx512 => self.a.$ins(z(d), z(a), imm)?,
                Isa::Avx2 => self.a.$ins(y(d), y(a), imm)?,
            }
            Ok(())
        }
    )*};
}

/// The assembler plus the ISA it encodes for.
pub struct VecAsm {
    pub a: CodeAssembler,
    pub isa: Isa,
}

impl VecAsm {
    pub fn new(isa: Isa) -> Result<VecAsm, CodegenError> {
        Ok(VecAsm { a: CodeAssembler::new(64)?, isa })
    }

    /// What this ISA offers (the questions generic lowering may ask).
    pub fn caps(&self) -> IsaCaps {
        self.isa.caps()
    }

    /// Where a comparison result goes: opmask `k` if the ISA has opmasks,
    /// else the mask vector `v`.
    pub fn mask_or(&self, k: K, v: V) -> Mask {
        if self.caps().opmask {
            Mask::K(k)
        } else {
            Mask::V(v)
        }
    }

    /// Bytes in one vector.
    pub fn vector_bytes(&self) -> i32 {
        self.isa.vector_bytes() as i32
    }

    /// f32 lanes in one vector.
    pub fn lanes(&self) -> usize {
        self.isa.f32_lanes()
    }

    ternary! {
        add => vaddps, sub => vsubps, mul => vmulps, div => vdivps,
        max => vmaxps, min => vminps,
        and => vandps, or => vorps, xor => vxorps, andn => vandnps,
        fmadd213 => vfmadd213ps, fmadd231 => vfmadd231ps, fmadd132 => vfmadd132ps,
        fnmadd231 => vfnmadd231ps,
        paddd => vpaddd, psubd => vpsubd,
        permps => vpermps,
    }

    unary! { sqrt => vsqrtps, cvtps2dq => vcvtps2dq, cvtdq2ps => vcvtdq2ps }

    with_imm! { psrad => vpsrad, psrld => vpsrld, pslld => vpslld, permilps => vpermilps }

    /// `d = a·b − d` (`vfmsub231ps`): with `d` = round(a·b), the exact
    /// rounding error of the product.
    pub fn fmsub231(&mut self, d: V, a: V, b: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vfmsub231ps(z(d), z(a), z(b))?,
            Isa::Avx2 => self.a.vfmsub231ps(y(d), y(a), y(b))?,
        }
        Ok(())
    }

    /// `d = d·a − b` (`vfmsub213ps`).
    pub fn fmsub213(&mut self, d: V, a: V, b: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vfmsub213ps(z(d), z(a), z(b))?,
            Isa::Avx2 => self.a.vfmsub213ps(y(d), y(a), y(b))?,
        }
        Ok(())
    }

    /// `d = d − a·b` (`vfnmadd231ps`, all registers).
    pub fn fnmadd231_reg(&mut self, d: V, a: V, b: V) -> R {
        self.fnmadd231(d, a, Src::Reg(b))
    }

    /// `d = a` from a register or memory (a splat: broadcast on AVX-512).
    pub fn load(&mut self, d: V, a: Src) -> R {
        match (self.isa, a) {
            (Isa::Avx512, Src::Reg(a)) => self.a.vmovups(z(d), z(a))?,
            (Isa::Avx512, Src::Mem(m)) if m.splat => self.a.vbroadcastss(z(d), dword_ptr(m.op()))?,
            (Isa::Avx512, Src::Mem(m)) => self.a.vmovups(z(d), m.zmm())?,
            (Isa::Avx2, Src::Reg(a)) => self.a.vmovups(y(d), y(a))?,
            (Isa::Avx2, Src::Mem(m)) => self.a.vmovups(y(d), ymmword_ptr(m.op()))?,
        }
        Ok(())
    }

    /// AVX-512 only: `d = sign(a)·min(|a|, |b|)` by `vrangeps`, a symmetric
    /// clamp in one instruction. NaN inputs do not survive it (see `keep_nan`).
    pub fn range_min_abs(&mut self, d: V, a: V, b: Src) -> R {
        match b {
            Src::Reg(b) => self.a.vrangeps(z(d), z(a), z(b), 0b0010)?,
            Src::Mem(m) => self.a.vrangeps(z(d), z(a), m.zmm_src(), 0b0010)?,
        }
        Ok(())
    }

    /// AVX-512 only: `d = isnan(a) ? quiet(a) : d` in one `vfixupimmps`.
    pub fn keep_nan(&mut self, d: V, a: V, pool: &mut super::pool::ConstPool) -> R {
        // One response nibble per input class: QNaN and SNaN → QNaN(a)
        // (token 2), every other class keeps d (token 0).
        let table = pool.splat_bits(0x22);
        self.a.vfixupimmps(z(d), z(a), table.zmm_src(), 0)?;
        Ok(())
    }

    /// `d = a` (register copy; nothing if the same register).
    pub fn mov(&mut self, d: V, a: V) -> R {
        if d != a {
            self.load(d, Src::Reg(a))?;
        }
        Ok(())
    }

    pub fn store(&mut self, m: Mem, v: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vmovups(m.zmm(), z(v))?,
            Isa::Avx2 => self.a.vmovups(ymmword_ptr(m.op()), y(v))?,
        }
        Ok(())
    }

    /// AVX-512: `d += a · broadcast(f32 at m)` with an embedded broadcast.
    pub fn fmadd231_bcst(&mut self, d: V, a: V, m: Mem) -> R {
        self.a.vfmadd231ps(z(d), z(a), dword_bcst(m.op()))?;
        Ok(())
    }

    /// `d = broadcast(f32 at m)`.
    pub fn broadcast_mem(&mut self, d: V, m: Mem) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vbroadcastss(z(d), dword_ptr(m.op()))?,
            Isa::Avx2 => self.a.vbroadcastss(y(d), dword_ptr(m.op()))?,
        }
        Ok(())
    }

    /// Non-temporal store (the address must be vector-aligned).
    pub fn store_nt(&mut self, m: Mem, v: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vmovntps(m.zmm(), z(v))?,
            Isa::Avx2 => self.a.vmovntps(ymmword_ptr(m.op()), y(v))?,
        }
        Ok(())
    }

    /// Stores lane 0 as one f32.
    pub fn store_low(&mut self, m: Mem, v: V) -> R {
        self.evex_if_high(v, |a| a.vmovss(dword_ptr(m.op()), xmm_of(v)))
    }

    /// xmm16–31 only have EVEX encodings; the assembler prefers VEX otherwise.
    fn evex_if_high(&mut self, v: V, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> R {
        let high = v.0 >= 16;
        if high {
            self.a.set_prefer_vex(false);
        }
        let r = f(&mut self.a);
        if high {
            self.a.set_prefer_vex(true);
        }
        Ok(r?)
    }

    /// Loads the active lanes of `m` and zeroes the rest.
    pub fn load_masked(&mut self, d: V, m: Mem, mask: Mask) -> R {
        match mask {
            Mask::K(km) => self.a.vmovups(masked(z(d), km).z(), m.zmm())?,
            Mask::V(mv) => self.a.vmaskmovps(y(d), y(mv), ymmword_ptr(m.op()))?,
        }
        Ok(())
    }

    /// Stores only the active lanes.
    pub fn store_masked(&mut self, m: Mem, v: V, mask: Mask) -> R {
        match mask {
            Mask::K(km) => self.a.vmovups(masked_mem(m.zmm(), km), z(v))?,
            Mask::V(mv) => self.a.vmaskmovps(ymmword_ptr(m.op()), y(mv), y(v))?,
        }
        Ok(())
    }

    /// Rounds to the nearest integer value (ties to even), as f32.
    pub fn round_nearest(&mut self, d: V, a: V) -> R {
        self.round(d, a, 0)
    }

    /// Rounds to an integral value as the `roundps` immediate says (bits
    /// 1:0 the direction, bit 3 suppressing the precision exception).
    pub fn round(&mut self, d: V, a: V, imm: i32) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vrndscaleps(z(d), z(a), imm)?,
            Isa::Avx2 => self.a.vroundps(y(d), y(a), imm)?,
        }
        Ok(())
    }

    /// `d = f(args…)` lane by lane, calling the System V function at
    /// `target` (`f32 → f32` or `(f32, f32) → f32`) once per lane. Every
    /// vector, opmask and caller-saved general register is preserved, so this
    /// fits anywhere a body is lowered: the exact fallback for inputs a
    /// MathApprox routine does not cover, and the whole implementation of
    /// functions nobody has approximated yet. Slow (a call per lane).
    pub fn call_per_lane(&mut self, d: V, args: &[V], target: u64) -> R {
        const GPRS: [AsmRegister64; 9] = [rax, rcx, rdx, rsi, rdi, r8, r9, r10, r11];
        let (count, width) = match self.isa {
            Isa::Avx512 => (32, 64),
            Isa::Avx2 => (16, 32),
        };
        let kregs = if self.isa == Isa::Avx512 { 8 } else { 0 };
        let gpr_at = count * width;
        let k_at = gpr_at + 8 * GPRS.len() as i32;
        let frame = (k_at + 8 * kregs + 63) & !63;
        self.a.push(rbp)?;
        self.a.mov(rbp, rsp)?;
        self.a.and(rsp, -64)?;
        self.a.sub(rsp, frame)?;
        for (i, &g) in GPRS.iter().enumerate() {
            self.a.mov(qword_ptr(rsp + gpr_at + 8 * i as i32), g)?;
        }
        for i in 0..count {
            let slot = rsp + i * width;
            match self.isa {
                Isa::Avx512 => self.a.vmovups(zmmword_ptr(slot), z(V(i as u8)))?,
                Isa::Avx2 => self.a.vmovups(ymmword_ptr(slot), y(V(i as u8)))?,
            }
        }
        for i in 1..kregs {
            self.a.kmovq(qword_ptr(rsp + k_at + 8 * i), k(K(i as u8)))?;
        }
        for lane in 0..self.lanes() as i32 {
            for (j, a) in args.iter().enumerate() {
                let x = if j == 0 { xmm0 } else { xmm1 };
                self.a.vmovss(x, dword_ptr(rsp + a.0 as i32 * width + 4 * lane))?;
            }
            self.a.vzeroupper()?;
            self.a.mov(rax, target)?;
            self.a.call(rax)?;
            self.a.vmovss(dword_ptr(rsp + d.0 as i32 * width + 4 * lane), xmm0)?;
        }
        for i in 1..kregs {
            self.a.kmovq(k(K(i as u8)), qword_ptr(rsp + k_at + 8 * i))?;
        }
        for i in 0..count {
            let slot = rsp + i * width;
            match self.isa {
                Isa::Avx512 => self.a.vmovups(z(V(i as u8)), zmmword_ptr(slot))?,
                Isa::Avx2 => self.a.vmovups(y(V(i as u8)), ymmword_ptr(slot))?,
            }
        }
        for (i, &g) in GPRS.iter().enumerate() {
            self.a.mov(g, qword_ptr(rsp + gpr_at + 8 * i as i32))?;
        }
        self.a.mov(rsp, rbp)?;
        self.a.pop(rbp)?;
        Ok(())
    }

    /// [`VecAsm::call_per_lane`] only when some lane of `mask` is set (a
    /// rare-input fallback costs one test and a not-taken branch).
    pub fn call_per_lane_if(&mut self, mask: Mask, d: V, args: &[V], target: u64) -> R {
        let mut skip = self.a.create_label();
        match mask {
            Mask::K(m) => self.a.kortestw(k(m), k(m))?,
            Mask::V(v) => self.a.vtestps(y(v), y(v))?,
        }
        self.a.jz(skip)?;
        self.call_per_lane(d, args, target)?;
        // The label binds to the next instruction emitted: one that leaves
        // every register alone keeps it independent of what follows.
        self.a.set_label(&mut skip)?;
        self.a.nop()?;
        Ok(())
    }

    /// AVX-512 only: `d = a · 2^floor(b)` with IEEE overflow/underflow.
    pub fn scalef(&mut self, d: V, a: V, b: V) -> R {
        self.a.vscalefps(z(d), z(a), z(b))?;
        Ok(())
    }

    /// AVX-512 only: the unbiased exponent of `a` as f32 (subnormals normalised).
    pub fn getexp(&mut self, d: V, a: V) -> R {
        self.a.vgetexpps(z(d), z(a))?;
        Ok(())
    }

    /// AVX-512 only: the mantissa of `a` normalised into [0.75, 1.5).
    pub fn getmant_075_15(&mut self, d: V, a: V) -> R {
        // imm[1:0] = 3: interval [0.75, 1.5); imm[3:2] = 0: sign of the source.
        self.a.vgetmantps(z(d), z(a), 3)?;
        Ok(())
    }

    /// Compares into a mask: a K register on AVX-512, a vector on AVX2.
    pub fn cmp(&mut self, d: Mask, a: V, b: Src, pred: i32) -> R {
        match (d, b) {
            (Mask::K(m), Src::Reg(b)) => self.a.vcmpps(k(m), z(a), z(b), pred)?,
            (Mask::K(m), Src::Mem(mb)) => self.a.vcmpps(k(m), z(a), mb.zmm_src(), pred)?,
            (Mask::V(v), Src::Reg(b)) => self.a.vcmpps(y(v), y(a), y(b), pred)?,
            (Mask::V(v), Src::Mem(mb)) => self.a.vcmpps(y(v), y(a), ymmword_ptr(mb.op()), pred)?,
        }
        Ok(())
    }

    /// `d = mask ? b : a`.
    pub fn blend(&mut self, d: V, a: V, b: Src, mask: Mask) -> R {
        match (mask, b) {
            (Mask::K(m), Src::Reg(b)) => self.a.vblendmps(masked(z(d), m), z(a), z(b))?,
            (Mask::K(m), Src::Mem(mb)) => self.a.vblendmps(masked(z(d), m), z(a), mb.zmm_src())?,
            (Mask::V(v), Src::Reg(b)) => self.a.vblendvps(y(d), y(a), y(b), y(v))?,
            (Mask::V(v), Src::Mem(mb)) => self.a.vblendvps(y(d), y(a), ymmword_ptr(mb.op()), y(v))?,
        }
        Ok(())
    }

    /// AVX-512 only: `d = k ? a + b : d` (merge masking).
    pub fn add_masked(&mut self, d: V, a: V, b: Src, m: K) -> R {
        match b {
            Src::Reg(b) => self.a.vaddps(masked(z(d), m), z(a), z(b))?,
            Src::Mem(mb) => self.a.vaddps(masked(z(d), m), z(a), mb.zmm_src())?,
        }
        Ok(())
    }

    /// Swaps the two 256-bit halves (AVX-512) or 128-bit halves (AVX2) of `a`.
    pub fn swap_halves(&mut self, d: V, a: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vshuff32x4(z(d), z(a), z(a), 0x4E)?,
            Isa::Avx2 => self.a.vperm2f128(y(d), y(a), y(a), 0x01)?,
        }
        Ok(())
    }

    /// AVX-512 only: swaps adjacent 128-bit blocks of `a`.
    pub fn swap_quarters(&mut self, d: V, a: V) -> R {
        self.a.vshuff32x4(z(d), z(a), z(a), 0xB1)?;
        Ok(())
    }

    /// Broadcasts the low f32 of `a` to every lane.
    pub fn broadcast_low(&mut self, d: V, a: V) -> R {
        match self.isa {
            Isa::Avx512 => self.a.vbroadcastss(z(d), xmm_of(a))?,
            Isa::Avx2 => self.a.vbroadcastss(y(d), xmm_of(a))?,
        }
        Ok(())
    }

    /// `d.lane0 = (f32) gpr` (other lanes unspecified), for run-time dimensions.
    pub fn cvt_gpr_to_low(&mut self, d: V, gpr: AsmRegister64) -> R {
        let x = xmm_of(d);
        self.evex_if_high(d, |a| {
            a.vxorps(x, x, x)?;
            a.vcvtsi2ss(x, x, gpr)
        })
    }

    /// Loads the AVX-512 tail mask: `k1 = (1 << count) - 1`, `count` in a GPR (clobbers `scratch`).
    pub fn set_k1_from_count(&mut self, count: AsmRegister64, scratch: AsmRegister32) -> R {
        // Every AVX-512 CPU has BMI2.
        self.a.mov(scratch, 1)?;
        self.a.shlx(scratch, scratch, gpr32_of(count))?;
        self.a.dec(scratch)?;
        self.a.kmovw(k1, scratch)?;
        Ok(())
    }

    /// Sets `mask` to its first `count` lanes (`count` in a GPR; clobbers
    /// `scratch`): k1 on AVX-512, a vector from a pool table on AVX2.
    pub fn set_tail_mask(
        &mut self,
        mask: Mask,
        count: AsmRegister64,
        scratch: AsmRegister64,
        pool: &mut super::pool::ConstPool,
    ) -> R {
        match mask {
            Mask::K(_) => self.set_k1_from_count(count, gpr32_of(scratch)),
            Mask::V(m) => {
                // mask = table[8 − count ..]: `count` all-ones lanes, then zeros.
                let mut lanes = [0u32; 16];
                lanes[..8].fill(u32::MAX);
                let tbl = pool.table(lanes);
                self.a.mov(scratch, count)?;
                self.a.neg(scratch)?;
                self.a.add(scratch, 8)?;
                self.load(m, Src::Mem(Mem { index: Some(scratch), ..tbl }))
            }
        }
    }

    pub fn vzeroupper(&mut self) -> R {
        self.a.vzeroupper()?;
        Ok(())
    }
}

/// `reg{k}`.
fn masked(reg: AsmRegisterZmm, m: K) -> AsmRegisterZmm {
    match m.0 {
        1 => reg.k1(),
        2 => reg.k2(),
        3 => reg.k3(),
        4 => reg.k4(),
        5 => reg.k5(),
        6 => reg.k6(),
        _ => reg.k7(),
    }
}

/// `[mem]{k}`.
fn masked_mem(mem: AsmMemoryOperand, m: K) -> AsmMemoryOperand {
    match m.0 {
        1 => mem.k1(),
        2 => mem.k2(),
        3 => mem.k3(),
        4 => mem.k4(),
        5 => mem.k5(),
        6 => mem.k6(),
        _ => mem.k7(),
    }
}

fn register(n: u32) -> iced_x86::Register {
    iced_x86::Register::try_from(n as usize).expect("register number in range")
}

/// The xmm view of a vector register (for scalar moves and conversions).
fn xmm_of(v: V) -> AsmRegisterXmm {
    iced_x86::code_asm::registers::xmm::get_xmm(register(iced_x86::Register::XMM0 as u32 + v.0 as u32))
        .expect("xmm register in range")
}

fn gpr32_of(r: AsmRegister64) -> AsmRegister32 {
    let full: iced_x86::Register = r.into();
    let n = full as u32 - iced_x86::Register::RAX as u32;
    iced_x86::code_asm::registers::gpr32::get_gpr32(register(iced_x86::Register::EAX as u32 + n))
        .expect("gpr in range")
}
