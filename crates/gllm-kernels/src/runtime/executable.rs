use memmap2::{Mmap, MmapMut};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Pieces of machine code sealed executable by this process so far.
static SEALED: AtomicU64 = AtomicU64::new(0);

/// How many pieces of machine code this process has generated and sealed.
///
/// Every JIT compilation ends in [`ExecutableCode::new`], so a caller that
/// reads this before and after some work knows whether the work compiled
/// anything (e.g. that decoding a token reused the kernels of the first one).
pub fn compiled_code_count() -> u64 {
    SEALED.load(Ordering::Relaxed)
}

/// Why generated code could not be made executable.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("refusing to map an empty code buffer")]
    EmptyCode,
    #[error("cannot map {len} bytes of memory for generated code: {source}")]
    Map {
        len: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot seal generated code read+execute: {0}")]
    Seal(#[source] std::io::Error),
}

/// Machine code in sealed read+execute pages, unmapped on drop.
#[derive(Debug)]
pub struct ExecutableCode {
    pages: Mmap,
    len: usize,
}

impl ExecutableCode {
    /// Copies `code` into new pages and seals them read+execute.
    pub fn new(code: &[u8]) -> Result<ExecutableCode, RuntimeError> {
        if code.is_empty() {
            return Err(RuntimeError::EmptyCode);
        }
        let mut rw =
            MmapMut::map_anon(code.len()).map_err(|source| RuntimeError::Map { len: code.len(), source })?;
        rw[..code.len()].copy_from_slice(code);
        // mprotect(PROT_READ | PROT_EXEC): the write permission is dropped in
        // the same call that grants execute, so no W+X window exists.
        let pages = rw.make_exec().map_err(RuntimeError::Seal)?;
        SEALED.fetch_add(1, Ordering::Relaxed);
        Ok(ExecutableCode { pages, len: code.len() })
    }

    /// Address of the first instruction.
    pub fn entry(&self) -> *const u8 {
        self.pages.as_ptr()
    }

    /// The code bytes (readable: the pages are r-x).
    pub fn bytes(&self) -> &[u8] {
        &self.pages[..self.len]
    }

    /// Size of the code in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: empty code is rejected at construction.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}
