//! The memory-bandwidth ceiling the GEMV benchmarks compare with.

use gllm_kernels::codegen::vasm::{Src, VecAsm, V};
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::runtime::ExecutableCode;

/// A load-only read of a 192 MiB buffer (beyond any cache) as 8 interleaved
/// streams per thread — the GEMV's access pattern with nothing but loads and
/// adds: the ceiling the GEMV is compared with.
pub struct ReadProbe {
    code: ExecutableCode,
    buf: Vec<f32>,
    /// The loop's step per stream: each stream's length is a multiple of it.
    vector_bytes: usize,
}

impl ReadProbe {
    pub fn new(profile: &DeviceProfile) -> ReadProbe {
        use iced_x86::code_asm::*;
        let isa = profile.isa;
        let vb = isa.vector_bytes() as i32;
        let mut asm = VecAsm::new(isa).unwrap();
        // SysV: rdi = base, rsi = bytes per stream (multiple of the vector size).
        let streams = [rdi, rax, rcx, rdx, r8, r9, r10, r11];
        for s in 1..8 {
            asm.a.lea(streams[s], ptr(streams[s - 1] + rsi)).unwrap();
        }
        for r in 0..8u8 {
            asm.xor(V(r), V(r), Src::Reg(V(r))).unwrap();
        }
        let mut top = asm.a.create_label();
        asm.a.set_label(&mut top).unwrap();
        for (r, &sreg) in streams.iter().enumerate() {
            asm.add(V(r as u8), V(r as u8), Src::Mem(gllm_kernels::codegen::vasm::Mem::base(sreg, 0)))
                .unwrap();
            asm.a.add(sreg, vb).unwrap();
        }
        asm.a.sub(rsi, vb).unwrap();
        asm.a.jnz(top).unwrap();
        asm.vzeroupper().unwrap();
        asm.a.ret().unwrap();
        let code = ExecutableCode::new(&asm.a.assemble(0).unwrap()).unwrap();
        ReadProbe { code, buf: vec![1.0f32; 48 << 20], vector_bytes: vb as usize }
    }

    /// Reads the whole buffer once, split over `threads` threads.
    pub fn run(&self, threads: usize) {
        let vb = self.vector_bytes;
        // SAFETY: the probe's code is an `extern "C" fn(*const f32, usize)` reading that many bytes, sealed r-x.
        let f: extern "C" fn(*const f32, usize) = unsafe { std::mem::transmute(self.code.entry()) };
        std::thread::scope(|sc| {
            for part in self.buf.chunks(self.buf.len() / threads) {
                let addr = part.as_ptr() as usize;
                let bytes = part.len() * 4 / 8 / vb * vb;
                sc.spawn(move || f(addr as *const f32, bytes));
            }
        });
    }

    pub fn bytes(&self) -> f64 {
        (self.buf.len() * 4) as f64
    }
}
