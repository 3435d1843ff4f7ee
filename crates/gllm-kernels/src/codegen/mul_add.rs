//! `out[i] = fma(a[i], b[i], out[i])`: the smallest kernel that exercises the
//! whole generate → seal → call path, with a masked AVX-512 tail and a scalar
//! AVX2 tail.

use super::CodegenError;
use crate::device::{DeviceProfile, Isa};
use crate::runtime::ExecutableCode;
use iced_x86::code_asm::*;

type MulAddFn = unsafe extern "C" fn(a: *const f32, b: *const f32, out: *mut f32, n: usize);

/// A JIT-compiled `out[i] = a[i]·b[i] + out[i]` (fused, one rounding).
#[derive(Debug)]
pub struct MulAddKernel {
    code: ExecutableCode,
    isa: Isa,
}

impl MulAddKernel {
    /// Generates the kernel for the profile's ISA. Fails if that ISA cannot
    /// run here, since the only use of this kernel is to be called.
    pub fn compile(profile: &DeviceProfile) -> Result<MulAddKernel, CodegenError> {
        if !profile.runs_on_host() {
            return Err(CodegenError::IsaNotOnHost { isa: profile.isa });
        }
        let bytes = match profile.isa {
            Isa::Avx512 => assemble_avx512()?,
            Isa::Avx2 => assemble_avx2()?,
        };
        Ok(MulAddKernel { code: ExecutableCode::new(&bytes)?, isa: profile.isa })
    }

    /// The ISA the code was generated for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The generated machine code.
    pub fn code(&self) -> &ExecutableCode {
        &self.code
    }

    /// Runs the kernel; all three slices must have the same length.
    pub fn run(&self, a: &[f32], b: &[f32], out: &mut [f32]) -> Result<(), CodegenError> {
        if a.len() != out.len() || b.len() != out.len() {
            return Err(CodegenError::LengthMismatch { a: a.len(), b: b.len(), out: out.len() });
        }
        // SAFETY: the code was assembled above for this signature and sealed
        // r-x; `compile` checked the CPU supports its ISA; it reads exactly
        // `n` elements of a and b and reads/writes `n` of out (masked tail),
        // and the three lengths were checked equal to n.
        unsafe {
            let f: MulAddFn = std::mem::transmute::<*const u8, MulAddFn>(self.code.entry());
            f(a.as_ptr(), b.as_ptr(), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }
}

/// SysV: rdi = a, rsi = b, rdx = out, rcx = n. 16 lanes per step, then one
/// masked step for the 0..=15 remaining elements.
fn assemble_avx512() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut main = a.create_label();
    let mut tail = a.create_label();
    let mut done = a.create_label();
    a.xor(eax, eax)?;
    a.mov(r8, rcx)?;
    a.and(r8, -16)?;
    a.jz(tail)?;
    a.set_label(&mut main)?;
    a.vmovups(zmm0, zmmword_ptr(rdi + rax * 4))?;
    a.vmovups(zmm1, zmmword_ptr(rdx + rax * 4))?;
    a.vfmadd231ps(zmm1, zmm0, zmmword_ptr(rsi + rax * 4))?;
    a.vmovups(zmmword_ptr(rdx + rax * 4), zmm1)?;
    a.add(rax, 16)?;
    a.cmp(rax, r8)?;
    a.jb(main)?;
    a.set_label(&mut tail)?;
    a.sub(rcx, rax)?;
    a.jz(done)?;
    a.mov(r9d, 1)?;
    a.shl(r9d, cl)?;
    a.dec(r9d)?;
    a.kmovw(k1, r9d)?;
    a.vmovups(zmm0.k1().z(), zmmword_ptr(rdi + rax * 4))?;
    a.vmovups(zmm1.k1().z(), zmmword_ptr(rdx + rax * 4))?;
    a.vmovups(zmm2.k1().z(), zmmword_ptr(rsi + rax * 4))?;
    a.vfmadd231ps(zmm1, zmm0, zmm2)?;
    a.vmovups(zmmword_ptr(rdx + rax * 4).k1(), zmm1)?;
    a.set_label(&mut done)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}

/// SysV as above. 8 lanes per step, then a scalar FMA loop for the tail.
fn assemble_avx2() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(64)?;
    let mut main = a.create_label();
    let mut tail = a.create_label();
    let mut scalar = a.create_label();
    let mut done = a.create_label();
    a.xor(eax, eax)?;
    a.mov(r8, rcx)?;
    a.and(r8, -8)?;
    a.jz(tail)?;
    a.set_label(&mut main)?;
    a.vmovups(ymm0, ymmword_ptr(rdi + rax * 4))?;
    a.vmovups(ymm1, ymmword_ptr(rdx + rax * 4))?;
    a.vfmadd231ps(ymm1, ymm0, ymmword_ptr(rsi + rax * 4))?;
    a.vmovups(ymmword_ptr(rdx + rax * 4), ymm1)?;
    a.add(rax, 8)?;
    a.cmp(rax, r8)?;
    a.jb(main)?;
    a.set_label(&mut tail)?;
    a.cmp(rax, rcx)?;
    a.jae(done)?;
    a.set_label(&mut scalar)?;
    a.vmovss(xmm0, dword_ptr(rdi + rax * 4))?;
    a.vmovss(xmm1, dword_ptr(rdx + rax * 4))?;
    a.vfmadd231ss(xmm1, xmm0, dword_ptr(rsi + rax * 4))?;
    a.vmovss(dword_ptr(rdx + rax * 4), xmm1)?;
    a.inc(rax)?;
    a.cmp(rax, rcx)?;
    a.jb(scalar)?;
    a.set_label(&mut done)?;
    a.vzeroupper()?;
    a.ret()?;
    a.assemble(0)
}
