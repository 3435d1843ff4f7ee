//! The scratchpad arena a compiled graph's intermediates live in.
//!
//! ```text
//!   FusionPlan.buffers (offsets, lifetimes) ──> one 64-byte-aligned f32 block per run,
//!   reused run after run (grown when a larger graph uses it; optionally against a PROT_NONE page)
//! ```

use crate::codegen::loops::RawSlice;
use crate::fusion;

/// Memory for one run of a [`CompiledLayer`](crate::codegen::layer::CompiledLayer): the plan's scratchpad arena,
/// aligned to 64 bytes. Reused across runs (and across layers compiled from
/// the same graph); grown when a larger graph uses it.
#[derive(Default)]
pub struct LayerWorkspace {
    buf: Vec<f32>,
    /// With [`LayerWorkspace::guarded`]: the arena in its own mapping, its
    /// end against a `PROT_NONE` page (a write past the arena faults).
    guarded: Option<super::GuardedBuffer>,
    want_guard: bool,
}

impl std::fmt::Debug for LayerWorkspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerWorkspace")
            .field("len", &self.buf.len())
            .field("guarded", &self.want_guard)
            .finish()
    }
}

impl LayerWorkspace {
    pub fn new() -> LayerWorkspace {
        LayerWorkspace::default()
    }

    /// A workspace whose arena ends against an inaccessible page (for
    /// testing generated code; slower to grow).
    pub fn guarded() -> LayerWorkspace {
        LayerWorkspace { want_guard: true, ..LayerWorkspace::default() }
    }

    /// `len` f32 starting at a 64-byte boundary.
    pub(crate) fn arena(&mut self, len: usize) -> RawSlice {
        const ALIGN_F32: usize = fusion::BUFFER_ALIGN / 4;
        if self.want_guard {
            use super::{GuardedBuffer, Placement};
            // Arena sizes are whole 64-byte buffers, so the data, ending on a
            // page boundary, starts 64-byte aligned.
            let len = len.div_ceil(ALIGN_F32) * ALIGN_F32;
            if self.guarded.as_ref().is_none_or(|g| g.as_slice().len() != len) {
                self.guarded = Some(
                    GuardedBuffer::filled(len, 0.0, Placement::AgainstEnd).expect("mapping a guarded arena"),
                );
            }
            let g = self.guarded.as_mut().expect("just made");
            return RawSlice { addr: g.as_mut_slice().as_mut_ptr() as usize, len };
        }
        if self.buf.len() < len + ALIGN_F32 {
            self.buf = vec![0.0; len + ALIGN_F32];
        }
        let skip = self.buf.as_ptr().align_offset(fusion::BUFFER_ALIGN).min(ALIGN_F32);
        RawSlice { addr: self.buf[skip..].as_mut_ptr() as usize, len }
    }
}
