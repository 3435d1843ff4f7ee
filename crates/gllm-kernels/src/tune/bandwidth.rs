//! This machine's read bandwidth, measured: the ceiling that decode (and
//! every bandwidth-bound kernel) is compared with in benchmarks and in
//! `gllm bench`.
//!
//! A JIT load-only loop reads a buffer far larger than any cache as eight
//! interleaved streams per thread — the quantised GEMV's access pattern
//! with nothing but loads and adds — split over the requested threads.

use crate::codegen::vasm::{Mem, Src, VecAsm, V};
use crate::codegen::CodegenError;
use crate::device::DeviceProfile;
use crate::runtime::ExecutableCode;

/// The buffer the probe reads: beyond the L3 of any machine this targets.
const PROBE_BYTES: usize = 192 << 20;

/// A compiled read loop and its buffer.
pub struct ReadProbe {
    code: ExecutableCode,
    buf: Vec<f32>,
    /// The loop's step per stream: each stream's length is a multiple of it.
    vector_bytes: usize,
}

impl ReadProbe {
    /// Compiles the loop for `profile`'s ISA and allocates (and touches)
    /// the 192 MiB buffer.
    pub fn new(profile: &DeviceProfile) -> Result<ReadProbe, CodegenError> {
        use iced_x86::code_asm::*;
        let vb = profile.isa.vector_bytes() as i32;
        let mut asm = VecAsm::new(profile.isa)?;
        // SysV: rdi = base, rsi = bytes per stream (a multiple of the vector size).
        let streams = [rdi, rax, rcx, rdx, r8, r9, r10, r11];
        for s in 1..8 {
            asm.a.lea(streams[s], ptr(streams[s - 1] + rsi))?;
        }
        for r in 0..8u8 {
            asm.xor(V(r), V(r), Src::Reg(V(r)))?;
        }
        let mut top = asm.a.create_label();
        asm.a.set_label(&mut top)?;
        for (r, &sreg) in streams.iter().enumerate() {
            asm.add(V(r as u8), V(r as u8), Src::Mem(Mem::base(sreg, 0)))?;
            asm.a.add(sreg, vb)?;
        }
        asm.a.sub(rsi, vb)?;
        asm.a.jnz(top)?;
        asm.vzeroupper()?;
        asm.a.ret()?;
        let code = ExecutableCode::new(&asm.a.assemble(0)?)?;
        Ok(ReadProbe { code, buf: vec![1.0f32; PROBE_BYTES / 4], vector_bytes: vb as usize })
    }

    /// Reads the whole buffer once, split over `threads` threads.
    pub fn run(&self, threads: usize) {
        let vb = self.vector_bytes;
        // SAFETY: the probe's code is an `extern "C" fn(*const f32, usize)`
        // reading 8 streams of that many bytes from the pointer, sealed r-x.
        let f: extern "C" fn(*const f32, usize) = unsafe { std::mem::transmute(self.code.entry()) };
        std::thread::scope(|sc| {
            for part in self.buf.chunks(self.buf.len() / threads.max(1)) {
                let addr = part.as_ptr() as usize;
                // Each part's 8 streams lie inside the part.
                let bytes = part.len() * 4 / 8 / vb * vb;
                sc.spawn(move || f(addr as *const f32, bytes));
            }
        });
    }

    /// Bytes one [`ReadProbe::run`] reads.
    pub fn bytes(&self) -> f64 {
        (self.buf.len() * 4) as f64
    }

    /// Median GB/s of `runs` reads on `threads` threads, after one warm-up.
    pub fn gb_per_s(&self, threads: usize, runs: usize) -> f64 {
        self.run(threads);
        let read = || {
            self.run(threads);
            Ok::<(), std::convert::Infallible>(())
        };
        let Ok(secs) = super::median_secs(runs.max(1), read);
        self.bytes() / secs / 1e9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_reads_at_a_plausible_rate() {
        let probe = ReadProbe::new(&DeviceProfile::detect().unwrap()).unwrap();
        // Any machine this runs on reads DRAM faster than 0.1 GB/s and no
        // DRAM reads 10 TB/s: the loop ran, and over the whole buffer.
        for threads in [1, 2] {
            let gbs = probe.gb_per_s(threads, 1);
            assert!(gbs > 0.1 && gbs < 10_000.0, "{threads} thread(s): {gbs} GB/s");
        }
    }
}
