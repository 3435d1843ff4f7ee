//! The stored-format GEMV kernels in AVX2 encodings (256-bit integer
//! multiply-adds: `vpmaddubsw` + `vpmaddwd`), which every x86 host this
//! project targets runs.

use super::layout::*;
use super::*;
use crate::quant::{ActivationPrecision, QuantFormat};
use iced_x86::code_asm::*;

const YMM: [AsmRegisterYmm; 16] =
    [ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14, ymm15];
const XMM: [AsmRegisterXmm; 16] =
    [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5, xmm6, xmm7, xmm8, xmm9, xmm10, xmm11, xmm12, xmm13, xmm14, xmm15];

/// What a kernel is generated for, and its registers: two constants,
/// temporaries, then per digit and activation row an integer sum (groups),
/// and the W·R f32 accumulators at the top.
struct Regs {
    format: QuantFormat,
    precision: ActivationPrecision,
    /// The activation rows' cursors (the first `r`).
    xp: [AsmRegister64; MAX_ACT_ROWS],
    w: usize,
    r: usize,
    /// Integer digits per activation (2 for `Int16`).
    digits: usize,
}

impl Regs {
    const MASK: AsmRegisterYmm = ymm0;
    const ONES: AsmRegisterYmm = ymm1;
    /// Group temporaries.
    const LO: AsmRegisterYmm = ymm2;
    const HI: AsmRegisterYmm = ymm3;
    const T: AsmRegisterYmm = ymm4;
    const T2: AsmRegisterYmm = ymm5;
    const HB: AsmRegisterYmm = ymm6;

    /// The integer sums of digit `d` of activation row `x` over one group.
    fn sum(&self, d: usize, x: usize) -> AsmRegisterYmm {
        YMM[7 + d * self.r + x]
    }

    /// The f32 accumulator of weight row `i` × activation row `x`.
    fn acc(&self, i: usize, x: usize) -> AsmRegisterYmm {
        YMM[self.acc_index(i, x)]
    }

    fn acc_index(&self, i: usize, x: usize) -> usize {
        16 - self.w * self.r + i * self.r + x
    }

    /// Widens the i16 sums of digit `d` of row `x` to i32 (`vpmaddwd` by 1).
    fn widen(&self, a: &mut CodeAssembler, d: usize, x: usize) -> Result<(), IcedError> {
        a.vpmaddwd(self.sum(d, x), self.sum(d, x), Regs::ONES)
    }

    /// Folds row `x`'s i32 digit sums into `sum(0, x)`: `255·hi + lo`.
    fn combine(&self, a: &mut CodeAssembler, x: usize) -> Result<(), IcedError> {
        combine_digits(a, self.digits, self.sum(0, x), self.sum(1, x), Regs::T)
    }
}

/// `acc += f32(sum) · (scale · x_scale)`: an integer dot product per lane,
/// scaled by the weight's and the activation's scales (`sum` is converted
/// in place; `t` is scratch).
fn accumulate_scaled(
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
fn combine_digits(
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

/// One group (256 weights) of weight row `wr` against the activation rows,
/// accumulated into `acc(i, ·)`.
///
/// The 4-bit formats unpack each 32-byte load into two vectors of codes and
/// sum all eight `vpmaddubsw` products per activation row and digit in i16
/// (at most 8·2·15·127 = 30 480), so one `vpmaddwd` leaves each block's
/// integer dot product in its own i32 lane: the scales are applied once per
/// group, as 8-lane vectors. Q8_0 (products up to 2·128·127) widens every
/// vector with `vpmaddwd`; Q6_K (2·63·127) every two, per half of 128
/// weights whose eight 16-element sub-blocks are the lanes.
fn emit_group_row(a: &mut CodeAssembler, regs: &Regs, i: usize, wr: AsmRegister64) -> Result<(), IcedError> {
    let (format, precision, xp) = (regs.format, regs.precision, &regs.xp[..regs.r]);
    let (lo, hi, t, t2, hb) = (Regs::LO, Regs::HI, Regs::T, Regs::T2, Regs::HB);
    let (mask, ones) = (Regs::MASK, Regs::ONES);
    let parts = ActParts::group(format, precision);
    let digits = regs.digits;
    match format {
        QuantFormat::Q8_0 => {
            for v in 0..8 {
                a.vpabsb(lo, ymmword_ptr(wr + 32 * v))?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        // |w| (unsigned) × x·sign(w) (signed).
                        let at = d as i32 * parts.digit + 32 * v;
                        a.vmovdqu(t, ymmword_ptr(xr + at))?;
                        a.vpsignb(t, t, ymmword_ptr(wr + 32 * v))?;
                        a.vpmaddubsw(t, lo, t)?;
                        if v == 0 {
                            a.vpmaddwd(regs.sum(d, x), t, ones)?;
                        } else {
                            a.vpmaddwd(t, t, ones)?;
                            a.vpaddd(regs.sum(d, x), regs.sum(d, x), t)?;
                        }
                    }
                }
            }
            a.vcvtph2ps(lo, xmmword_ptr(wr + 256))?;
            for (x, &xr) in xp.iter().enumerate() {
                regs.combine(a, x)?;
                accumulate_scaled(a, regs.acc(i, x), regs.sum(0, x), lo, ymmword_ptr(xr + parts.dx), t)?;
            }
        }
        QuantFormat::Q6K => {
            for half in 0..2i32 {
                let base = half * parts.bytes as i32;
                let xyz = 20 + 96 * half;
                // Vectors 0 and 1 from X and Y; vector 3's code collects
                // in `hb` from bits 6–7 of X, Y and Z (see `q6_k_at`).
                a.vmovdqu(lo, ymmword_ptr(wr + xyz))?;
                a.vpsrlw(hb, lo, 6)?;
                a.vpand(hb, hb, ymmword_ptr(rax + C_Q6K_FROM_X))?;
                a.vpand(lo, lo, ymmword_ptr(rax + C_Q6K_CODE))?;
                a.vmovdqu(hi, ymmword_ptr(wr + xyz + 32))?;
                a.vpsrlw(t, hi, 4)?;
                a.vpand(t, t, ymmword_ptr(rax + C_Q6K_FROM_Y))?;
                a.vpor(hb, hb, t)?;
                a.vpand(hi, hi, ymmword_ptr(rax + C_Q6K_CODE))?;
                for p in 0..2i32 {
                    if p == 1 {
                        // Vector 2 from Z, and the last two bits of vector 3.
                        a.vmovdqu(lo, ymmword_ptr(wr + xyz + 64))?;
                        a.vpsrlw(t, lo, 2)?;
                        a.vpand(t, t, ymmword_ptr(rax + C_Q6K_FROM_Z))?;
                        a.vpor(hi, hb, t)?;
                        a.vpand(lo, lo, ymmword_ptr(rax + C_Q6K_CODE))?;
                    }
                    for (x, &xr) in xp.iter().enumerate() {
                        for d in 0..digits {
                            let at = base + d as i32 * parts.digit + 64 * p;
                            a.vpmaddubsw(t, lo, ymmword_ptr(xr + at))?;
                            a.vpmaddubsw(t2, hi, ymmword_ptr(xr + at + 32))?;
                            a.vpaddw(t, t, t2)?;
                            if p == 0 {
                                a.vpmaddwd(regs.sum(d, x), t, ones)?;
                            } else {
                                a.vpmaddwd(t, t, ones)?;
                                a.vpaddd(regs.sum(d, x), regs.sum(d, x), t)?;
                            }
                        }
                    }
                }
                // d·sc per sub-block, exact in f32.
                a.vpmovsxbd(lo, qword_ptr(wr + 4 + 8 * half))?;
                a.vcvtdq2ps(lo, lo)?;
                a.vbroadcastss(t, dword_ptr(wr))?;
                a.vmulps(lo, lo, t)?;
                for (x, &xr) in xp.iter().enumerate() {
                    // Σ code·q − 32·Σq per sub-block, exact in i32.
                    regs.combine(a, x)?;
                    a.vpaddd(regs.sum(0, x), regs.sum(0, x), ymmword_ptr(xr + base + parts.extra))?;
                    accumulate_scaled(
                        a,
                        regs.acc(i, x),
                        regs.sum(0, x),
                        lo,
                        ymmword_ptr(xr + base + parts.dx),
                        t,
                    )?;
                }
            }
        }
        _ => {
            let codes = if format == QuantFormat::Q4K { 24 } else { 0 };
            for l in 0..4i32 {
                a.vmovdqu(lo, ymmword_ptr(wr + codes + 32 * l))?;
                a.vpsrlw(hi, lo, 4)?;
                a.vpand(lo, lo, mask)?;
                a.vpand(hi, hi, mask)?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        let (sum, at) = (regs.sum(d, x), d as i32 * parts.digit + 64 * l);
                        if l == 0 {
                            a.vpmaddubsw(sum, lo, ymmword_ptr(xr + at))?;
                        } else {
                            a.vpmaddubsw(t, lo, ymmword_ptr(xr + at))?;
                            a.vpaddw(sum, sum, t)?;
                        }
                        a.vpmaddubsw(t, hi, ymmword_ptr(xr + at + 32))?;
                        a.vpaddw(sum, sum, t)?;
                    }
                }
            }
            // `lo` ← the weight scale per block, `hi` ← what multiplies
            // the activation's c·s: m (Q4_1), −dmin·m (Q4_K), d (Q4_0).
            let offset = match format {
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
            };
            for (x, &xr) in xp.iter().enumerate() {
                for d in 0..digits {
                    regs.widen(a, d, x)?;
                }
                regs.combine(a, x)?;
                accumulate_scaled(a, regs.acc(i, x), regs.sum(0, x), lo, ymmword_ptr(xr + parts.dx), t)?;
                a.vfmadd231ps(regs.acc(i, x), offset, ymmword_ptr(xr + parts.extra))?;
            }
        }
    }
    Ok(())
}

/// One tail record (a block pair, or 8 F16/BF16 weights) of weight row `wr`
/// against the activation rows. Registers: ymm0–3 constants, ymm4–9
/// temporaries (and ymm10–11 for `Int16`).
fn emit_record_row(a: &mut CodeAssembler, regs: &Regs, i: usize, wr: AsmRegister64) -> Result<(), IcedError> {
    let (format, precision, xp) = (regs.format, regs.precision, &regs.xp[..regs.r]);
    let (t0, t1) = (YMM[8], YMM[9]);
    // Each digit's sums: the first in t0 (t1 its second half), the second
    // in ymm10 (ymm11).
    let dsum = [(t0, t1), (YMM[10], YMM[11])];
    let (mask, ones, idx_d, idx_m) = (YMM[0], YMM[1], YMM[2], YMM[3]);
    let parts = ActParts::record(format, precision);
    let digits = regs.digits;
    if is_float(format) {
        let wv = YMM[4];
        if format == QuantFormat::F16 {
            a.vcvtph2ps(wv, xmmword_ptr(wr))?;
        } else {
            // bf16 is the upper half of an f32.
            a.vpmovzxwd(wv, xmmword_ptr(wr))?;
            a.vpslld(wv, wv, 16)?;
        }
        for (x, &xr) in xp.iter().enumerate() {
            a.vfmadd231ps(regs.acc(i, x), wv, ymmword_ptr(xr))?;
        }
    } else if format == QuantFormat::Q8_0 {
        let (w0, w1, a0, a1) = (YMM[4], YMM[5], YMM[6], YMM[7]);
        let d = YMM[2];
        a.vmovdqu(w0, ymmword_ptr(wr))?;
        a.vmovdqu(w1, ymmword_ptr(wr + 32))?;
        a.vpabsb(a0, w0)?;
        a.vpabsb(a1, w1)?;
        a.vcvtph2ps(XMM[2], qword_ptr(wr + 64))?;
        a.vpermps(d, idx_m, d)?; // idx_q8 lives in ymm3
        for (x, &xr) in xp.iter().enumerate() {
            for (dg, &(s0, s1)) in dsum.iter().enumerate().take(digits) {
                let at = dg as i32 * parts.digit;
                a.vmovdqu(s0, ymmword_ptr(xr + at))?;
                a.vpsignb(s0, s0, w0)?;
                a.vpmaddubsw(s0, a0, s0)?;
                a.vpmaddwd(s0, s0, ones)?;
                a.vmovdqu(s1, ymmword_ptr(xr + at + 32))?;
                a.vpsignb(s1, s1, w1)?;
                a.vpmaddubsw(s1, a1, s1)?;
                a.vpmaddwd(s1, s1, ones)?;
                a.vphaddd(s0, s0, s1)?;
            }
            combine_digits(a, digits, t0, dsum[1].0, t1)?;
            accumulate_scaled(a, regs.acc(i, x), t0, d, ymmword_ptr(xr + parts.dx), t1)?;
        }
    } else {
        let (lo, hi, d, m) = (YMM[4], YMM[5], YMM[6], YMM[7]);
        a.vmovdqu(lo, ymmword_ptr(wr))?;
        a.vpsrlw(hi, lo, 4)?;
        a.vpand(lo, lo, mask)?;
        a.vpand(hi, hi, mask)?;
        a.vcvtph2ps(XMM[6], qword_ptr(wr + 32))?;
        let m = if format == QuantFormat::Q4_1 {
            a.vpermps(m, idx_m, d)?;
            m
        } else {
            d
        };
        a.vpermps(d, idx_d, d)?;
        for (x, &xr) in xp.iter().enumerate() {
            for (dg, &(s0, s1)) in dsum.iter().enumerate().take(digits) {
                let at = dg as i32 * parts.digit;
                a.vpmaddubsw(s0, lo, ymmword_ptr(xr + at))?;
                a.vpmaddubsw(s1, hi, ymmword_ptr(xr + at + 32))?;
                a.vpaddw(s0, s0, s1)?;
                a.vpmaddwd(s0, s0, ones)?;
            }
            combine_digits(a, digits, t0, dsum[1].0, t1)?;
            accumulate_scaled(a, regs.acc(i, x), t0, d, ymmword_ptr(xr + parts.dx), t1)?;
            a.vfmadd231ps(regs.acc(i, x), m, ymmword_ptr(xr + parts.extra))?;
        }
    }
    Ok(())
}

/// Generates the kernel for `w` weight rows × `r` activation rows: a loop
/// over the rows' groups, then one over their tail records, then one
/// horizontal sum per output.
pub(super) fn generate(
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
        for &wr in wp {
            for line in (0..step).step_by(64) {
                a.prefetcht0(byte_ptr(wr + PREFETCH_AHEAD + line))?;
            }
        }
        for (i, &wr) in wp.iter().enumerate() {
            if groups {
                emit_group_row(&mut a, &regs, i, wr)?;
            } else {
                emit_record_row(&mut a, &regs, i, wr)?;
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
