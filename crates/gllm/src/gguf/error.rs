//! Errors of the GGUF reader and writer. Every message starts with the file's
//! source name and names the key or tensor concerned, so a user can find what
//! is wrong without a debugger.

use super::ggml_type::GgmlType;
use super::quant::QuantError;

/// Why a GGUF file could not be read, or a value or tensor could not be had
/// from it.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or mapped.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// Source name of the file.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("{file}: not a GGUF file: magic is {found:?}, expected \"GGUF\"")]
    BadMagic {
        /// Source name of the file.
        file: String,
        /// The bytes found (fewer than 4 if the file is that short).
        found: String,
    },
    /// A version other than 2 or 3 (1 had 32-bit counts and is not read).
    #[error("{file}: unsupported GGUF version {version}: only versions 2 and 3 are read")]
    UnsupportedVersion {
        /// Source name of the file.
        file: String,
        /// The version field.
        version: u32,
    },
    /// The version field reads as a byte-swapped small number.
    #[error("{file}: version field {raw:#010x} looks byte-swapped: big-endian GGUF files are not supported")]
    BigEndian {
        /// Source name of the file.
        file: String,
        /// The version field read as little-endian.
        raw: u32,
    },
    /// The file ends before a field it must contain.
    #[error(
        "{file}: file ends inside {context}: {needed} bytes needed at offset {offset}, {available} left"
    )]
    Truncated {
        /// Source name of the file.
        file: String,
        /// What was being read (e.g. `value of metadata key "general.name"`).
        context: String,
        /// Byte offset of the read.
        offset: usize,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
        available: usize,
    },
    /// A header field has a value the format does not allow.
    #[error("{file}: {context} at offset {offset}: {problem}")]
    Malformed {
        /// Source name of the file.
        file: String,
        /// What was being read.
        context: String,
        /// Byte offset of the field.
        offset: usize,
        /// What is wrong with it.
        problem: String,
    },
    /// `general.alignment` is not a non-zero power of two stored as u32.
    #[error("{file}: metadata key \"general.alignment\": {problem}")]
    BadAlignment {
        /// Source name of the file.
        file: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A tensor info is inconsistent (dims, type, offset or size).
    #[error("{file}: tensor {tensor:?}: {problem}")]
    BadTensor {
        /// Source name of the file.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A metadata key that was asked for is absent.
    #[error("{file}: metadata key {key:?} is missing")]
    MissingKey {
        /// Source name of the file.
        file: String,
        /// The key asked for.
        key: String,
    },
    /// A metadata key holds a value of another type than asked for.
    #[error("{file}: metadata key {key:?} has type {found}, expected {expected}")]
    WrongType {
        /// Source name of the file.
        file: String,
        /// The key asked for.
        key: String,
        /// The type asked for.
        expected: &'static str,
        /// The type stored.
        found: String,
    },
    /// An integer value does not fit the type asked for.
    #[error("{file}: metadata key {key:?}: value {value} does not fit in {target}")]
    OutOfRange {
        /// Source name of the file.
        file: String,
        /// The key asked for.
        key: String,
        /// The stored value.
        value: i128,
        /// The type asked for.
        target: &'static str,
    },
    /// A tensor that was asked for is absent.
    #[error("{file}: tensor {tensor:?} is missing")]
    MissingTensor {
        /// Source name of the file.
        file: String,
        /// The tensor asked for.
        tensor: String,
    },
    /// The tensor's type has no dequantiser.
    #[error("{file}: unsupported tensor type {ty} for tensor {tensor:?}")]
    UnsupportedTensorType {
        /// Source name of the file.
        file: String,
        /// The tensor asked for.
        tensor: String,
        /// Its type.
        ty: GgmlType,
    },
    /// Dequantising the tensor failed for another reason.
    #[error("{file}: tensor {tensor:?}: {source}")]
    Quant {
        /// Source name of the file.
        file: String,
        /// The tensor asked for.
        tensor: String,
        /// The block-level error.
        source: QuantError,
    },
}

/// Why the writer could not add a value or tensor, or write the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufWriteError {
    /// The key was added twice.
    #[error("metadata key {0:?} added twice")]
    DuplicateKey(String),
    /// The tensor name was added twice.
    #[error("tensor {0:?} added twice")]
    DuplicateTensor(String),
    /// The tensor's dims or data do not fit its type.
    #[error("tensor {tensor:?}: {problem}")]
    BadTensor {
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        problem: String,
    },
    /// Quantising the tensor's values failed.
    #[error("tensor {tensor:?}: {source}")]
    Quant {
        /// The tensor's name.
        tensor: String,
        /// The block-level error.
        source: QuantError,
    },
    /// Alignment must be a non-zero power of two.
    #[error("alignment {0} is not a non-zero power of two")]
    BadAlignment(u32),
    /// Writing the file failed.
    #[error("{path}: cannot write: {source}")]
    Io {
        /// Where the file was being written.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}
