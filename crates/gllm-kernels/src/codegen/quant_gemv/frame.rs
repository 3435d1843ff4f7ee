//! The frame every stored-format kernel shares, whatever its ISA: the
//! register plan, the loops over a call's rows, groups and tail records
//! (with prefetch), and the horizontal sums that write the outputs. The
//! ISA modules emit the bodies: one group of 256 weights of one row
//! ([`super::avx2`], [`super::avx512`]) and one tail record (the AVX2 body
//! on every ISA: records hold only the at most 7 blocks after a row's last
//! whole group).

use super::layout::*;
use super::*;
use crate::quant::{ActivationPrecision, QuantFormat};
use iced_x86::code_asm::*;

pub(super) const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
pub(super) const XMM: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// What a kernel is generated for, and its registers: two constants,
/// temporaries, then per digit and activation row an integer sum (groups),
/// and the W·R f32 accumulators at the top.
pub(super) struct Regs {
    pub(super) format: QuantFormat,
    pub(super) precision: ActivationPrecision,
    /// The activation rows' cursors (the first `r`).
    pub(super) xp: [AsmRegister64; MAX_ACT_ROWS],
    pub(super) w: usize,
    pub(super) r: usize,
    /// Integer digits per activation (2 for `Int16`).
    pub(super) digits: usize,
}

impl Regs {
    pub(super) const MASK: AsmRegisterYmm = ymm0;
    pub(super) const ONES: AsmRegisterYmm = ymm1;
    /// Group temporaries.
    pub(super) const LO: AsmRegisterYmm = ymm2;
    pub(super) const HI: AsmRegisterYmm = ymm3;
    pub(super) const T: AsmRegisterYmm = ymm4;
    pub(super) const T2: AsmRegisterYmm = ymm5;
    pub(super) const HB: AsmRegisterYmm = ymm6;

    /// The integer sums of digit `d` of activation row `x` over one group.
    pub(super) fn sum(&self, d: usize, x: usize) -> AsmRegisterYmm {
        YMM[7 + d * self.r + x]
    }

    /// The f32 accumulator of weight row `i` × activation row `x`.
    pub(super) fn acc(&self, i: usize, x: usize) -> AsmRegisterYmm {
        YMM[self.acc_index(i, x)]
    }

    pub(super) fn acc_index(&self, i: usize, x: usize) -> usize {
        16 - self.w * self.r + i * self.r + x
    }

    /// Widens the i16 sums of digit `d` of row `x` to i32 (`vpmaddwd` by 1).
    pub(super) fn widen(&self, a: &mut CodeAssembler, d: usize, x: usize) -> Result<(), IcedError> {
        a.vpmaddwd(self.sum(d, x), self.sum(d, x), Regs::ONES)
    }

    /// Folds row `x`'s i32 digit sums into `sum(0, x)`: `255·hi + lo`.
    pub(super) fn combine(&self, a: &mut CodeAssembler, x: usize) -> Result<(), IcedError> {
        combine_digits(a, self.digits, self.sum(0, x), self.sum(1, x), Regs::T)
    }
}

/// `acc += f32(sum) · (scale · x_scale)`: an integer dot product per lane,
/// scaled by the weight's and the activation's scales (`sum` is converted
/// in place; `t` is scratch).
pub(super) fn accumulate_scaled(
    a: &mut CodeAssembler,
    acc: AsmRegisterYmm,
    sum: AsmRegisterYmm,
    scale: AsmRegisterYmm,
    x_scale: AsmMemoryOperand,
    t: AsmRegisterYmm,
) -> Result<(), IcedError> {
    a.vcvtdq2ps(sum, sum)?;
    a.vmulps(t, scale, x_scale)?;
    a.vfmadd231ps(acc, sum, t)
}

/// `hi ← 255·hi + lo` in i32 lanes (exact), using `t`; nothing for one digit.
pub(super) fn combine_digits(
    a: &mut CodeAssembler,
    digits: usize,
    hi: AsmRegisterYmm,
    lo: AsmRegisterYmm,
    t: AsmRegisterYmm,
) -> Result<(), IcedError> {
    if digits == 2 {
        a.vpslld(t, hi, 8)?;
        a.vpsubd(hi, t, hi)?;
        a.vpaddd(hi, hi, lo)?;
    }
    Ok(())
}

/// Generates the kernel for `w` weight rows × `r` activation rows: a loop
/// over the rows' groups, then one over their tail records, then one
/// horizontal sum per output.
pub(super) fn generate(
    isa: QuantKernelIsa,
    format: QuantFormat,
    precision: ActivationPrecision,
    w: usize,
    r: usize,
) -> Result<Vec<u8>, CodegenError> {
    let digits = if is_float(format) { 1 } else { digits(precision) };
    let regs = Regs { format, precision, xp: [rsi, r12, r13, r14], w, r, digits };
    // Group sums below the accumulators; Int16 tail records use ymm10–11.
    let first_acc = 16 - w * r;
    assert!((1..=4).contains(&w) && (1..=MAX_ACT_ROWS).contains(&r) && w * r <= 6);
    assert!(7 + digits * r <= first_acc && (digits == 1 || first_acc >= 12));
    let mut a = CodeAssembler::new(64)?;
    // AVX-512 kernels: an instruction both encodings have is EVEX-encoded
    // (`vpdpbusd` on ymm registers is AVX-VNNI when VEX-encoded, which
    // AVX-512 VNNI hosts need not have).
    a.set_prefer_vex(isa == QuantKernelIsa::Avx2);
    let wp = [r10, r11, rbx, r15];
    let (wp, xp) = (&wp[..w], &regs.xp[..r]);
    for reg in [rbx, r12, r13, r14, r15] {
        a.push(reg)?;
    }
    // The calls' cursors on the stack: [rsp] rows, [rsp + 8] outputs,
    // [rsp + 16] calls left.
    a.sub(rsp, 24)?;
    a.mov(rax, qword_ptr(rdi))?;
    a.mov(qword_ptr(rsp), rax)?;
    a.mov(rax, qword_ptr(rdi + 16))?;
    a.mov(qword_ptr(rsp + 8), rax)?;
    a.mov(rax, qword_ptr(rdi + 88))?;
    a.mov(qword_ptr(rsp + 16), rax)?;
    let mut next_call = a.create_label();
    a.set_label(&mut next_call)?;
    a.mov(r10, qword_ptr(rsp))?;
    a.mov(rsi, qword_ptr(rdi + 8))?;
    a.mov(rcx, qword_ptr(rdi + 24))?;
    a.mov(r8, qword_ptr(rdi + 32))?;
    a.mov(r9, qword_ptr(rdi + 40))?;
    a.mov(rax, qword_ptr(rdi + 56))?;
    for i in 1..w {
        a.lea(wp[i], qword_ptr(wp[i - 1] + r8))?;
    }
    for i in 1..r {
        a.lea(xp[i], qword_ptr(xp[i - 1] + r9))?;
    }
    if !is_float(format) {
        a.vmovdqa(Regs::MASK, ymmword_ptr(rax + C_MASK))?;
        a.vmovdqa(Regs::ONES, ymmword_ptr(rax + C_ONES))?;
        if isa == QuantKernelIsa::Avx512Vnni {
            avx512::prologue(&mut a)?;
        }
    }
    for i in 0..w {
        for x in 0..r {
            a.vxorps(regs.acc(i, x), regs.acc(i, x), regs.acc(i, x))?;
        }
    }
    let mut loops: Vec<(i32, i32, bool)> = Vec::new();
    if group_bytes(format) > 0 {
        loops.push((group_bytes(format) as i32, act_group_bytes(format, precision) as i32, true));
    }
    if record_bytes(format) > 0 {
        loops.push((record_bytes(format) as i32, ActParts::record(format, precision).bytes as i32, false));
    }
    for (step, xstep, groups) in loops {
        let mut body = a.create_label();
        let mut done = a.create_label();
        if !groups {
            a.mov(rcx, qword_ptr(rdi + 64))?;
            if format == QuantFormat::Q8_0 {
                a.vmovdqa(YMM[3], ymmword_ptr(rax + C_IDX_Q8))?;
            } else if !is_float(format) {
                a.vmovdqa(YMM[2], ymmword_ptr(rax + C_IDX_D))?;
                a.vmovdqa(YMM[3], ymmword_ptr(rax + C_IDX_M))?;
            }
        }
        a.test(rcx, rcx)?;
        a.jz(done)?;
        a.set_label(&mut body)?;
        for (i, &wr) in wp.iter().enumerate() {
            // Each row's prefetches just before its body, not all rows'
            // at the top of the iteration (see `PREFETCH_AHEAD`).
            for line in (0..step).step_by(64) {
                a.prefetcht1(byte_ptr(wr + PREFETCH_AHEAD + line))?;
            }
            match (groups, isa) {
                (true, QuantKernelIsa::Avx2) => avx2::emit_group_row(&mut a, &regs, i, wr)?,
                (true, QuantKernelIsa::Avx512Vnni) => avx512::emit_group_row(&mut a, &regs, i, wr)?,
                (false, _) => avx2::emit_record_row(&mut a, &regs, i, wr)?,
            }
        }
        for &wr in wp {
            a.add(wr, step)?;
        }
        for &xr in xp {
            a.add(xr, xstep)?;
        }
        a.dec(rcx)?;
        a.jnz(body)?;
        a.set_label(&mut done)?;
    }
    a.mov(rdx, qword_ptr(rsp + 8))?;
    a.mov(r8, qword_ptr(rdi + 48))?;
    a.mov(r9, qword_ptr(rdi + 72))?;
    for x in 0..r {
        a.mov(r11, rdx)?;
        for i in 0..w {
            let (v, xv) = (regs.acc(i, x), XMM[regs.acc_index(i, x)]);
            a.vextractf128(XMM[8], v, 1)?;
            a.vaddps(xv, xv, XMM[8])?;
            a.vhaddps(xv, xv, xv)?;
            a.vhaddps(xv, xv, xv)?;
            a.vmovss(dword_ptr(r11), xv)?;
            a.add(r11, r9)?;
        }
        a.add(rdx, r8)?;
    }
    a.mov(rax, qword_ptr(rdi + 80))?;
    a.add(qword_ptr(rsp), rax)?;
    a.add(qword_ptr(rsp + 8), 4)?;
    a.dec(qword_ptr(rsp + 16))?;
    a.jnz(next_call)?;
    a.add(rsp, 24)?;
    for reg in [r15, r14, r13, r12, rbx] {
        a.pop(reg)?;
    }
    a.vzeroupper()?;
    a.ret()?;
    Ok(a.assemble(0)?)
}

/// The scales of a 4-bit group (Q4_0, Q4_1, Q4_K at `wr`) as 8-lane f32
/// vectors: `lo` ← each block's weight scale; returns the register holding
/// what multiplies the activation's `c·s` — `hi` ← m (Q4_1) or −dmin·m
/// (Q4_K), or `lo` itself (Q4_0's d). `t` is scratch.
pub(super) fn group_scales_4bit(
    a: &mut CodeAssembler,
    format: QuantFormat,
    wr: AsmRegister64,
    lo: AsmRegisterYmm,
    hi: AsmRegisterYmm,
    t: AsmRegisterYmm,
) -> Result<AsmRegisterYmm, IcedError> {
    Ok(match format {
        QuantFormat::Q4K => {
            // d·sc and (−dmin)·m, exact in f32.
            for (reg, at) in [(lo, 8), (hi, 16)] {
                a.vpmovzxbd(reg, qword_ptr(wr + at))?;
                a.vcvtdq2ps(reg, reg)?;
                a.vbroadcastss(t, dword_ptr(wr + (at - 8) / 2))?;
                a.vmulps(reg, reg, t)?;
            }
            hi
        }
        QuantFormat::Q4_1 => {
            a.vcvtph2ps(lo, xmmword_ptr(wr + 128))?;
            a.vcvtph2ps(hi, xmmword_ptr(wr + 144))?;
            hi
        }
        _ => {
            a.vcvtph2ps(lo, xmmword_ptr(wr + 128))?;
            lo
        }
    })
}
