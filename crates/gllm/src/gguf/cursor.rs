//! A bounds-checked little-endian reader over a byte slice: every read either
//! returns the bytes it needs or says how many were missing, so the parser
//! never slices out of range and never trusts a length before checking it
//! against what is left.

use super::error::GgufError;

/// What went wrong at the byte level, before the parser adds the file name
/// and what it was reading.
#[derive(Debug)]
pub(super) enum ReadProblem {
    /// Fewer bytes are left than the field needs.
    Truncated { offset: usize, needed: u64, available: usize },
    /// The bytes are there but their value is not allowed.
    Invalid { offset: usize, problem: String },
}

impl ReadProblem {
    /// The user-facing error: `file`, what was being read, and the problem.
    pub(super) fn into_error(self, file: &str, context: impl FnOnce() -> String) -> GgufError {
        match self {
            ReadProblem::Truncated { offset, needed, available } => {
                GgufError::Truncated { file: file.to_string(), context: context(), offset, needed, available }
            }
            ReadProblem::Invalid { offset, problem } => {
                GgufError::Malformed { file: file.to_string(), context: context(), offset, problem }
            }
        }
    }
}

/// A read position in a byte slice.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    position: usize,
}

macro_rules! read_le {
    ($($name:ident -> $ty:ty),* $(,)?) => {
        $(
            pub(super) fn $name(&mut self) -> Result<$ty, ReadProblem> {
                Ok(<$ty>::from_le_bytes(self.array()?))
            }
        )*
    };
}

impl<'a> Cursor<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Cursor<'a> {
        Cursor { bytes, position: 0 }
    }

    /// Offset of the next byte to read.
    pub(super) fn position(&self) -> usize {
        self.position
    }

    /// Bytes left after the read position.
    pub(super) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.position)
    }

    /// A problem report for the field at the current position.
    pub(super) fn invalid(&self, problem: String) -> ReadProblem {
        ReadProblem::Invalid { offset: self.position, problem }
    }

    /// The next `n` bytes.
    pub(super) fn take(&mut self, n: u64) -> Result<&'a [u8], ReadProblem> {
        let available = self.remaining();
        let truncated = ReadProblem::Truncated { offset: self.position, needed: n, available };
        if n > available as u64 {
            return Err(truncated);
        }
        // n <= available, so the sum stays within the slice length.
        let end = self.position + n as usize;
        let bytes = self.bytes.get(self.position..end).ok_or(truncated)?;
        self.position = end;
        Ok(bytes)
    }

    /// The next `N` bytes as an array.
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ReadProblem> {
        let offset = self.position;
        let bytes = self.take(N as u64)?;
        <[u8; N]>::try_from(bytes).map_err(|_| ReadProblem::Truncated {
            offset,
            needed: N as u64,
            available: 0,
        })
    }

    read_le!(
        u8 -> u8, i8 -> i8, u16 -> u16, i16 -> i16, u32 -> u32, i32 -> i32,
        u64 -> u64, i64 -> i64, f32 -> f32, f64 -> f64,
    );

    /// A GGUF bool: one byte, 0 or 1 (anything else is invalid).
    pub(super) fn bool(&mut self) -> Result<bool, ReadProblem> {
        let offset = self.position;
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ReadProblem::Invalid {
                offset,
                problem: format!("bool value {other} is neither 0 nor 1"),
            }),
        }
    }

    /// A GGUF string: u64 byte length, then that many bytes of UTF-8. The
    /// length is checked against the bytes left before anything is copied.
    pub(super) fn string(&mut self) -> Result<String, ReadProblem> {
        let offset = self.position;
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(ReadProblem::Invalid {
                offset,
                problem: format!(
                    "string length {len} exceeds the {} bytes left in the file",
                    self.remaining()
                ),
            });
        }
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| ReadProblem::Invalid { offset, problem: format!("string is not valid UTF-8: {e}") })
    }
}
