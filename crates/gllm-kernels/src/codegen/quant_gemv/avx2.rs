//! The stored-format GEMV kernels in AVX2 encodings (256-bit integer
//! multiply-adds: `vpmaddubsw` + `vpmaddwd`), which every x86 host this
//! project targets runs.

use super::frame::*;
use super::layout::*;
use super::*;
use crate::quant::QuantFormat;
use iced_x86::code_asm::*;

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
pub(super) fn emit_group_row(
    a: &mut CodeAssembler,
    regs: &Regs,
    i: usize,
    wr: AsmRegister64,
) -> Result<(), IcedError> {
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
                // The load's low nibbles are activation vector
                // 4·(l / 2) + l % 2, its high ones two vectors on (`nibble_at`).
                let low_vector = 4 * (l / 2) + l % 2;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        let (sum, at) = (regs.sum(d, x), d as i32 * parts.digit + 32 * low_vector);
                        if l == 0 {
                            a.vpmaddubsw(sum, lo, ymmword_ptr(xr + at))?;
                        } else {
                            a.vpmaddubsw(t, lo, ymmword_ptr(xr + at))?;
                            a.vpaddw(sum, sum, t)?;
                        }
                        a.vpmaddubsw(t, hi, ymmword_ptr(xr + at + 64))?;
                        a.vpaddw(sum, sum, t)?;
                    }
                }
            }
            let offset = group_scales_4bit(a, format, wr, lo, hi, t)?;
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
pub(super) fn emit_record_row(
    a: &mut CodeAssembler,
    regs: &Regs,
    i: usize,
    wr: AsmRegister64,
) -> Result<(), IcedError> {
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
