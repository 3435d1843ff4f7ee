//! Tensor infos: where each tensor's bytes are and how to read them, checked
//! against the file before anyone can ask for the bytes.

use super::error::GgufError;
use super::ggml_type::GgmlType;

/// The most dimensions a ggml tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// One tensor's description from the header. Only the reader makes these, after
/// checking them, so a `TensorInfo` of a file always describes bytes inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    offset: u64,
    n_elements: u64,
    n_bytes: u64,
}

impl TensorInfo {
    /// The tensor's name (`"blk.0.attn_q.weight"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `dims()[0]` (ne0) is the contiguous,
    /// fastest-varying one. A `[576, 49152]` matrix has 49152 rows of 576.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// The element type the bytes are stored in.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the tensor's bytes from the start of the data section (a
    /// multiple of the file's alignment).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Elements: the product of the dims.
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Bytes the tensor occupies in the data section.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// Checks one tensor info against the format and the data section, and
    /// makes it. The checks: the element count does not overflow, ne0 is a
    /// whole number of blocks of the type (ggml quantises along rows), the
    /// offset is aligned, and the bytes lie inside the data section.
    pub(super) fn checked(
        file: &str,
        name: String,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        offset: u64,
        alignment: u64,
        data_len: u64,
    ) -> Result<TensorInfo, GgufError> {
        let bad =
            |problem: String| GgufError::BadTensor { file: file.to_string(), tensor: name.clone(), problem };
        let Some(n_elements) = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)) else {
            return Err(bad(format!("dims {dims:?}: element count overflows u64")));
        };
        let block_size = ggml_type.block_size() as u64;
        let ne0 = dims.first().copied().unwrap_or(1);
        if ne0 % block_size != 0 {
            return Err(bad(format!(
                "ne0 = {ne0} is not a multiple of the {ggml_type} block size {block_size}"
            )));
        }
        let Some(n_bytes) = ggml_type.storage_bytes(n_elements) else {
            return Err(bad(format!("{n_elements} elements of {ggml_type}: byte size overflows u64")));
        };
        if offset % alignment != 0 {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        if offset > data_len {
            return Err(bad(format!(
                "data offset {offset} lies past the end of the data section ({data_len} bytes)"
            )));
        }
        if n_bytes > data_len - offset {
            return Err(bad(format!(
                "data of {n_bytes} bytes at offset {offset} runs past the end of the data section \
                 ({data_len} bytes, {} left)",
                data_len - offset
            )));
        }
        Ok(TensorInfo { name, dims, ggml_type, offset, n_elements, n_bytes })
    }
}
