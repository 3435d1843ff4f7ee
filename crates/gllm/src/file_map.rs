//! Read-only memory maps of model files, shared by the GGUF and safetensors
//! readers.

use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// Opens `path` and maps it read-only. Callers wrap the error with the file
/// name in their own error type.
pub(crate) fn map_read_only(path: &Path) -> std::io::Result<Mmap> {
    let file = File::open(path)?;
    // SAFETY: the map is read-only and lives as long as the value holding
    // it. The one hazard of file maps remains: if another process truncates
    // or rewrites the file while it is mapped, reads may see the new bytes or
    // fault (SIGBUS). Model files are not modified in place while loaded;
    // like every mmap-based model loader we accept that hazard.
    unsafe { Mmap::map(&file) }
}
