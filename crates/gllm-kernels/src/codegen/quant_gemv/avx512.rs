//! The stored-format GEMV group bodies in AVX-512 VNNI encodings.
//!
//! `vpdpbusd` multiplies 4 unsigned weight bytes by 4 signed activation
//! bytes per i32 lane and adds them into the lane: one instruction where
//! AVX2 needs `vpmaddubsw` + `vpaddw` and a `vpmaddwd` widening, with no
//! i16 intermediate that could saturate. The 4-bit formats and Q8_0 read
//! 64 weight bytes per load (the layouts of [`super::layout`] put the two
//! activation vectors a 512-bit load of codes meets side by side), so a
//! group of 256 weights costs about half the instructions of the AVX2 body;
//! the two 256-bit halves of each sum hold the same eight blocks and are
//! added once per group. Q6_K, whose codes are assembled from three 32-byte
//! vectors, keeps 256-bit vectors and gains the `vpdpbusd` accumulation.
//!
//! Registers: the frame's ymm0–15 (constants, record temporaries and the
//! f32 accumulators) are left alone; these bodies use zmm16–31.

use super::frame::*;
use super::layout::*;
use super::*;
use crate::quant::QuantFormat;
use iced_x86::code_asm::*;

const ZMM_HI: [AsmRegisterZmm; 16] = [
    zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27, zmm28, zmm29, zmm30,
    zmm31,
];
const YMM_HI: [AsmRegisterYmm; 16] = [
    ymm16, ymm17, ymm18, ymm19, ymm20, ymm21, ymm22, ymm23, ymm24, ymm25, ymm26, ymm27, ymm28, ymm29, ymm30,
    ymm31,
];

/// Temporaries (as zmm or their ymm halves).
const LO: usize = 0;
const HI: usize = 1;
const T: usize = 2;
/// 0x0F in every byte, and 0x80 in every byte.
const MASK: usize = 4;
const SIGN_BIT: usize = 5;
/// Q6_K: vector 3's code as it is collected.
const HB: usize = 6;
/// The integer sums: digit `d` of activation row `x` at `SUMS + d·r + x`
/// (at most 2·3).
const SUMS: usize = 7;
/// Q4_K's `vpermps` indices for `[d, −dmin]` (after the sums).
const D_DMIN: usize = 15;

fn sum_index(regs: &Regs, d: usize, x: usize) -> usize {
    SUMS + d * regs.r + x
}

/// Sets up the constants the group bodies keep in registers (once per call).
pub(super) fn prologue(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.vpbroadcastd(ZMM_HI[MASK], dword_ptr(rax + C_MASK))?;
    a.vmovdqu32(ZMM_HI[D_DMIN], zmmword_ptr(rax + C_Q4K_D_DMIN))?;
    a.vpbroadcastd(ZMM_HI[SIGN_BIT], dword_ptr(rax + C_SIGN_BIT))
}

/// One group (256 weights) of weight row `wr` against the activation rows,
/// accumulated into `acc(i, ·)` — the same arithmetic as the AVX2 body
/// (exact integer block sums, scales applied once per group as 8-lane
/// vectors), in fewer instructions.
pub(super) fn emit_group_row(
    a: &mut CodeAssembler,
    regs: &Regs,
    i: usize,
    wr: AsmRegister64,
) -> Result<(), IcedError> {
    let (format, precision, xp) = (regs.format, regs.precision, &regs.xp[..regs.r]);
    let parts = ActParts::group(format, precision);
    let digits = regs.digits;
    let (z, y) = (ZMM_HI, YMM_HI);
    let zero_sums = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        for x in 0..regs.r {
            for d in 0..digits {
                let s = sum_index(regs, d, x);
                a.vpxord(z[s], z[s], z[s])?;
            }
        }
        Ok(())
    };
    // Adds each 512-bit sum's upper half into its lower: both halves hold
    // the same eight blocks.
    let fold_sums = |a: &mut CodeAssembler| -> Result<(), IcedError> {
        for x in 0..regs.r {
            for d in 0..digits {
                let s = sum_index(regs, d, x);
                a.vextracti64x4(y[T], z[s], 1)?;
                a.vpaddd(y[s], y[s], y[T])?;
            }
        }
        Ok(())
    };
    match format {
        QuantFormat::Q8_0 => {
            // `vpdpbusd` wants unsigned × signed: the codes become w + 128
            // (their sign bit flipped), which adds 128·Σx per block — the
            // activations' `−128·Σq` takes it away again, exactly in i32.
            // Per 64 weights and activation row: `vpxord` + `vpdpbusd`,
            // where negating x by the weights' signs (AVX-512 has no
            // `vpsignb`) took six: two loads, `vpmovb2m`, `vpabsb`, a
            // masked `vpsubb` and the `vpdpbusd`.
            zero_sums(a)?;
            for c in 0..4i32 {
                a.vpxord(z[LO], z[SIGN_BIT], zmmword_ptr(wr + 64 * c))?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        let at = d as i32 * parts.digit + 64 * c;
                        a.vpdpbusd(z[sum_index(regs, d, x)], z[LO], zmmword_ptr(xr + at))?;
                    }
                }
            }
            fold_sums(a)?;
            a.vcvtph2ps(y[LO], xmmword_ptr(wr + 256))?;
            for (x, &xr) in xp.iter().enumerate() {
                let s = y[sum_index(regs, 0, x)];
                combine_digits(a, digits, s, y[sum_index(regs, 1, x)], y[T])?;
                a.vpaddd(s, s, ymmword_ptr(xr + parts.extra))?;
                accumulate_scaled(a, regs.acc(i, x), s, y[LO], ymmword_ptr(xr + parts.dx), y[T])?;
            }
        }
        QuantFormat::Q6K => {
            for half in 0..2i32 {
                let base = half * parts.bytes as i32;
                let xyz = 20 + 96 * half;
                // As the AVX2 body: vectors 0 and 1 from X and Y; vector
                // 3's code collects in HB from bits 6–7 of X, Y and Z.
                a.vmovdqu8(y[LO], ymmword_ptr(wr + xyz))?;
                a.vpsrlw(y[HB], y[LO], 6)?;
                a.vpandd(y[HB], y[HB], ymmword_ptr(rax + C_Q6K_FROM_X))?;
                a.vpandd(y[LO], y[LO], ymmword_ptr(rax + C_Q6K_CODE))?;
                a.vmovdqu8(y[HI], ymmword_ptr(wr + xyz + 32))?;
                a.vpsrlw(y[T], y[HI], 4)?;
                a.vpandd(y[T], y[T], ymmword_ptr(rax + C_Q6K_FROM_Y))?;
                a.vpord(y[HB], y[HB], y[T])?;
                a.vpandd(y[HI], y[HI], ymmword_ptr(rax + C_Q6K_CODE))?;
                zero_sums(a)?;
                for p in 0..2i32 {
                    if p == 1 {
                        // Vector 2 from Z, and the last two bits of vector 3.
                        a.vmovdqu8(y[LO], ymmword_ptr(wr + xyz + 64))?;
                        a.vpsrlw(y[T], y[LO], 2)?;
                        a.vpandd(y[T], y[T], ymmword_ptr(rax + C_Q6K_FROM_Z))?;
                        a.vpord(y[HI], y[HB], y[T])?;
                        a.vpandd(y[LO], y[LO], ymmword_ptr(rax + C_Q6K_CODE))?;
                    }
                    for (x, &xr) in xp.iter().enumerate() {
                        for d in 0..digits {
                            let at = base + d as i32 * parts.digit + 64 * p;
                            let s = y[sum_index(regs, d, x)];
                            a.vpdpbusd(s, y[LO], ymmword_ptr(xr + at))?;
                            a.vpdpbusd(s, y[HI], ymmword_ptr(xr + at + 32))?;
                        }
                    }
                }
                // d·sc per sub-block, exact in f32.
                a.vpmovsxbd(y[LO], qword_ptr(wr + 4 + 8 * half))?;
                a.vcvtdq2ps(y[LO], y[LO])?;
                a.vbroadcastss(y[T], dword_ptr(wr))?;
                a.vmulps(y[LO], y[LO], y[T])?;
                for (x, &xr) in xp.iter().enumerate() {
                    // Σ code·q − 32·Σq per sub-block, exact in i32.
                    let s = y[sum_index(regs, 0, x)];
                    combine_digits(a, digits, s, y[sum_index(regs, 1, x)], y[T])?;
                    a.vpaddd(s, s, ymmword_ptr(xr + base + parts.extra))?;
                    accumulate_scaled(a, regs.acc(i, x), s, y[LO], ymmword_ptr(xr + base + parts.dx), y[T])?;
                }
            }
        }
        _ => {
            let codes = if format == QuantFormat::Q4K { 24 } else { 0 };
            zero_sums(a)?;
            for c in 0..2i32 {
                // Low nibbles: activation vectors 4c, 4c + 1; high: 4c + 2,
                // 4c + 3 (`nibble_at`).
                a.vmovdqu8(z[LO], zmmword_ptr(wr + codes + 64 * c))?;
                a.vpsrlw(z[HI], z[LO], 4)?;
                a.vpandd(z[LO], z[LO], z[MASK])?;
                a.vpandd(z[HI], z[HI], z[MASK])?;
                for (x, &xr) in xp.iter().enumerate() {
                    for d in 0..digits {
                        let (s, at) = (z[sum_index(regs, d, x)], d as i32 * parts.digit + 128 * c);
                        a.vpdpbusd(s, z[LO], zmmword_ptr(xr + at))?;
                        a.vpdpbusd(s, z[HI], zmmword_ptr(xr + at + 64))?;
                    }
                }
            }
            fold_sums(a)?;
            let offset = if format == QuantFormat::Q4K {
                // [sc, m] as 16 f32 lanes times [d ×8, −dmin ×8]: the same
                // products as the AVX2 body's two 8-lane ones, in 5
                // instructions instead of 8.
                a.vpmovzxbd(z[LO], xmmword_ptr(wr + 8))?;
                a.vcvtdq2ps(z[LO], z[LO])?;
                a.vpermps(z[T], z[D_DMIN], zmmword_ptr(wr))?;
                a.vmulps(z[LO], z[LO], z[T])?;
                a.vextractf32x8(y[HI], z[LO], 1)?;
                y[HI]
            } else {
                group_scales_4bit(a, format, wr, y[LO], y[HI], y[T])?
            };
            for (x, &xr) in xp.iter().enumerate() {
                let s = y[sum_index(regs, 0, x)];
                combine_digits(a, digits, s, y[sum_index(regs, 1, x)], y[T])?;
                accumulate_scaled(a, regs.acc(i, x), s, y[LO], ymmword_ptr(xr + parts.dx), y[T])?;
                a.vfmadd231ps(regs.acc(i, x), offset, ymmword_ptr(xr + parts.extra))?;
            }
        }
    }
    Ok(())
}
