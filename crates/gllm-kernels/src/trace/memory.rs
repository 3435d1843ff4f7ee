//! Read-only views of the memory the analysed code lives in.

use std::sync::RwLock;

/// Read access to code and constant data at virtual addresses.
pub trait CodeMemory {
    /// Copies `buf.len()` bytes from `addr`; false (and nothing read) unless
    /// every byte is readable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;

    /// Up to `max` bytes from `addr`, fewer where readable memory ends.
    fn read_up_to(&self, addr: u64, max: usize) -> Vec<u8>;

    fn read_u32(&self, addr: u64) -> Option<u32> {
        let mut b = [0; 4];
        self.read(addr, &mut b).then(|| u32::from_le_bytes(b))
    }

    fn read_u64(&self, addr: u64) -> Option<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b).then(|| u64::from_le_bytes(b))
    }
}

/// A byte buffer placed at a base address (for analysing arbitrary bytes).
#[derive(Debug, Clone)]
pub struct BufferMemory {
    pub base: u64,
    pub bytes: Vec<u8>,
}

impl CodeMemory for BufferMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(start) = addr.checked_sub(self.base) else { return false };
        let Some(end) = start.checked_add(buf.len() as u64) else { return false };
        if end > self.bytes.len() as u64 {
            return false;
        }
        buf.copy_from_slice(&self.bytes[start as usize..end as usize]);
        true
    }

    fn read_up_to(&self, addr: u64, max: usize) -> Vec<u8> {
        match addr.checked_sub(self.base) {
            Some(start) if start < self.bytes.len() as u64 => {
                let start = start as usize;
                self.bytes[start..(start + max).min(self.bytes.len())].to_vec()
            }
            _ => Vec::new(),
        }
    }
}

/// This process's memory, limited to the readable mappings listed in
/// `/proc/self/maps` (re-read when an address is not found, e.g. after a
/// library was loaded).
///
/// The caller must keep analysed code mapped while it is being read (a
/// function pointer of a loaded library stays valid while the library is).
#[derive(Debug, Default)]
pub struct ProcessMemory {
    _private: (),
}

static READABLE: RwLock<Vec<(u64, u64)>> = RwLock::new(Vec::new());

impl ProcessMemory {
    pub fn new() -> ProcessMemory {
        ProcessMemory { _private: () }
    }

    /// The readable range containing `[addr, addr + len)`, refreshing the
    /// cached map once on a miss.
    fn readable(&self, addr: u64, len: u64) -> Option<(u64, u64)> {
        let find = |regions: &[(u64, u64)]| {
            regions
                .iter()
                .copied()
                .find(|&(lo, hi)| lo <= addr && addr.checked_add(len).is_some_and(|e| e <= hi))
        };
        if let Some(r) = find(&READABLE.read().unwrap_or_else(|e| e.into_inner())) {
            return Some(r);
        }
        let fresh = read_maps();
        let hit = find(&fresh);
        *READABLE.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        hit
    }
}

fn read_maps() -> Vec<(u64, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/maps") else { return Vec::new() };
    let mut out: Vec<(u64, u64)> = Vec::new();
    for line in text.lines() {
        let mut cols = line.split_whitespace();
        let (Some(range), Some(perms)) = (cols.next(), cols.next()) else { continue };
        // Skip unreadable and device-backed special mappings ([vvar] can fault).
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vvar_vclock]") {
            continue;
        }
        let Some((lo, hi)) = range.split_once('-') else { continue };
        let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16)) else { continue };
        // Merge adjacent readable mappings so reads may cross them.
        match out.last_mut() {
            Some(last) if last.1 == lo => last.1 = hi,
            _ => out.push((lo, hi)),
        }
    }
    out
}

impl CodeMemory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() || self.readable(addr, buf.len() as u64).is_none() {
            return false;
        }
        // SAFETY: /proc/self/maps lists [addr, addr+len) as a readable mapping
        // of this process, and the caller keeps it mapped during analysis.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        true
    }

    fn read_up_to(&self, addr: u64, max: usize) -> Vec<u8> {
        let Some((_, hi)) = self.readable(addr, 1) else { return Vec::new() };
        let len = ((hi - addr) as usize).min(max);
        let mut buf = vec![0; len];
        if self.read(addr, &mut buf) {
            buf
        } else {
            Vec::new()
        }
    }
}
