//! Buffers placed against inaccessible pages, so that a kernel reading or
//! writing one element outside its operand faults instead of silently
//! touching a neighbour.
//!
//! ```text
//!   [ PROT_NONE page ][ data pages ........ (f32 × n) ][ PROT_NONE page ]
//!                     ^ Placement::AgainstStart        ^ Placement::AgainstEnd ends here
//! ```
//!
//! A region is a whole number of pages, so only one end of the data can sit
//! on a guard; the oracle (`gllm_kernels::oracle`) runs each case with both
//! placements, and a guarded `LayerWorkspace` ends its arena on one. Whatever the
//! kernel must not write on the other side (the slack inside the data pages)
//! is filled with a canary and checked afterwards.

use std::fmt;

/// Which end of the data touches a guard page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The first element follows the leading guard page (a read before the
    /// operand faults).
    AgainstStart,
    /// The last element precedes the trailing guard page (a read or write
    /// past the end faults).
    AgainstEnd,
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Placement::AgainstStart => "against the leading guard page",
            Placement::AgainstEnd => "against the trailing guard page",
        })
    }
}

/// The canary written into the slack next to the data: a NaN payload no
/// kernel computes.
const CANARY: u32 = 0x7fa5_c0de;

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// `n` f32 values in their own mapping between two `PROT_NONE` pages.
pub struct GuardedBuffer {
    base: *mut u8,
    map_len: usize,
    data_len: usize,
    offset: usize,
    n: usize,
}

// SAFETY: the buffer owns its mapping exclusively; access goes through
// `&self` / `&mut self` like a `Vec<f32>`.
unsafe impl Send for GuardedBuffer {}
// SAFETY: as above; shared access is read-only.
unsafe impl Sync for GuardedBuffer {}

impl GuardedBuffer {
    /// A buffer holding `values`, placed as asked. Fails only if the
    /// operating system refuses the mapping.
    pub fn new(values: &[f32], placement: Placement) -> std::io::Result<GuardedBuffer> {
        let page = page_size();
        let n = values.len();
        let data_len = (n * 4).div_ceil(page).max(1) * page;
        let map_len = data_len + 2 * page;
        // SAFETY: a fresh private anonymous mapping, checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        let offset = match placement {
            Placement::AgainstStart => page,
            Placement::AgainstEnd => page + data_len - n * 4,
        };
        let buf = GuardedBuffer { base, map_len, data_len, offset, n };
        // SAFETY: both guard pages lie inside the mapping made above.
        let protected = unsafe {
            libc::mprotect(base.cast(), page, libc::PROT_NONE) == 0
                && libc::mprotect(base.add(page + data_len).cast(), page, libc::PROT_NONE) == 0
        };
        if !protected {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the data pages are mapped read-write and 4-byte aligned.
        let words = unsafe { std::slice::from_raw_parts_mut(base.add(page).cast::<u32>(), data_len / 4) };
        words.fill(CANARY);
        let mut buf = buf;
        for (d, v) in buf.as_mut_slice().iter_mut().zip(values) {
            *d = *v;
        }
        Ok(buf)
    }

    /// `n` elements of `fill`, placed as asked (an output buffer).
    pub fn filled(n: usize, fill: f32, placement: Placement) -> std::io::Result<GuardedBuffer> {
        let mut b = GuardedBuffer::new(&vec![0.0; n], placement)?;
        b.as_mut_slice().fill(fill);
        Ok(b)
    }

    pub fn as_slice(&self) -> &[f32] {
        // SAFETY: `offset .. offset + 4n` lies inside the read-write data
        // pages; the mapping lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.base.add(self.offset).cast::<f32>(), self.n) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: as in `as_slice`, borrowed mutably through `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(self.offset).cast::<f32>(), self.n) }
    }

    /// Whether the slack around the data (inside the data pages) still
    /// holds the canary: false when a kernel wrote outside its operand
    /// without reaching a guard page.
    pub fn canary_intact(&self) -> bool {
        let page = page_size();
        // SAFETY: the data pages are mapped read-write for the buffer's life.
        let words =
            unsafe { std::slice::from_raw_parts(self.base.add(page).cast::<u32>(), self.data_len / 4) };
        let first = (self.offset - page) / 4;
        words[..first].iter().chain(&words[first + self.n..]).all(|&w| w == CANARY)
    }
}

impl Drop for GuardedBuffer {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_sits_against_the_guard_and_the_canary_notices_stray_writes() {
        for placement in [Placement::AgainstStart, Placement::AgainstEnd] {
            let vals: Vec<f32> = (0..37).map(|i| i as f32).collect();
            let mut b = GuardedBuffer::new(&vals, placement).unwrap();
            assert_eq!(b.as_slice(), &vals[..]);
            assert!(b.canary_intact());
            let page = page_size();
            let addr = b.as_slice().as_ptr() as usize;
            match placement {
                Placement::AgainstStart => assert_eq!(addr % page, 0),
                Placement::AgainstEnd => assert_eq!((addr + 37 * 4) % page, 0),
            }
            // A write just outside the operand, on the side away from the guard.
            let slack = match placement {
                Placement::AgainstStart => 37,
                Placement::AgainstEnd => -1isize as usize,
            };
            // SAFETY: the element lies in the buffer's read-write data pages.
            unsafe { *b.as_mut_slice().as_mut_ptr().wrapping_add(slack) = 1.0 };
            assert!(!b.canary_intact());
        }
        let empty = GuardedBuffer::filled(0, 0.0, Placement::AgainstEnd).unwrap();
        assert!(empty.as_slice().is_empty() && empty.canary_intact());
    }
}
