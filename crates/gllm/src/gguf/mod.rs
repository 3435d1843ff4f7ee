//! GGUF model files (the llama.cpp / ggml format): a checked reader, block
//! dequantisers and a writer.
//!
//! [`GgufFile::open`] memory-maps a file and checks its whole header before
//! returning: every metadata value is read into a typed [`MetaValue`], every
//! tensor info is checked to describe whole blocks inside the file. Reading a
//! tensor ([`GgufFile::tensor_f32`], [`GgufFile::tensor_data`]) then cannot go
//! out of bounds. Nothing read from the file is trusted before it is checked
//! against the bytes that are there, so a corrupt or hostile file gives an
//! error naming the file and what is wrong, never a panic or a huge
//! allocation.
//!
//! Files are GGUF v2 or v3, little-endian. Tensor dims are in ggml order:
//! `dims()[0]` (ne0) is the contiguous dimension.

mod cursor;
mod error;
mod file;
mod ggml_type;
mod metadata;
pub mod quant;
mod reader;
mod tensor_info;
mod writer;

pub use error::{GgufError, GgufWriteError};
pub use file::GgufFile;
pub use ggml_type::{GgmlType, QK_K};
pub use metadata::{MetaArray, MetaType, MetaValue};
pub use quant::{dequantize, QuantError};
pub use reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_DEPTH};
pub use tensor_info::{TensorInfo, MAX_DIMS};
pub use writer::GgufWriter;
