//! The constant pool: every broadcast constant a kernel uses, one 64-byte
//! line each (a full zmm or ymm memory operand), deduplicated.

use super::vasm::Mem;
use iced_x86::code_asm::{r11, AsmRegister64};

/// The register generated code keeps the pool's address in.
pub const POOL_REG: AsmRegister64 = r11;

#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([u32; 16]);

/// Constants referenced by generated code through [`POOL_REG`].
#[derive(Debug, Default)]
pub struct ConstPool {
    lines: Vec<Line>,
}

impl ConstPool {
    pub fn new() -> ConstPool {
        ConstPool::default()
    }

    /// A vector of `bits` in every lane, as a memory operand.
    pub fn splat_bits(&mut self, bits: u32) -> Mem {
        let line = Line([bits; 16]);
        Mem { splat: true, ..self.line(line) }
    }

    pub fn splat(&mut self, value: f32) -> Mem {
        self.splat_bits(value.to_bits())
    }

    /// An arbitrary 16-lane line (e.g. a tail-mask table), as a memory operand.
    pub fn table(&mut self, lanes: [u32; 16]) -> Mem {
        self.line(Line(lanes))
    }

    fn line(&mut self, line: Line) -> Mem {
        let idx = match self.lines.iter().position(|l| l.0 == line.0) {
            Some(i) => i,
            None => {
                self.lines.push(line);
                self.lines.len() - 1
            }
        };
        Mem::base(POOL_REG, (idx * 64) as i32)
    }

    /// The pool's storage, to keep alive as long as the code and pass to it.
    pub fn finish(self) -> PoolData {
        PoolData { lines: self.lines.into_boxed_slice() }
    }
}

/// A finished pool: 64-byte aligned lines the kernel reads.
#[derive(Debug)]
pub struct PoolData {
    lines: Box<[Line]>,
}

impl PoolData {
    /// Address generated code expects in [`POOL_REG`].
    pub fn as_ptr(&self) -> *const u8 {
        self.lines.as_ptr().cast()
    }

    pub fn len_bytes(&self) -> usize {
        self.lines.len() * 64
    }
}
