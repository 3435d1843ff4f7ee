//! [`GgufWriter`]: builds a GGUF v3 file from metadata and f32 tensors, for the
//! project's built-in test models and for making (bad) files in tests. Its
//! output is read back through the same reader as any other file.

use super::error::GgufWriteError;
use super::ggml_type::GgmlType;
use super::metadata::{MetaArray, MetaValue};
use super::quant;
use super::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC};
use super::tensor_info::MAX_DIMS;
use std::collections::HashSet;
use std::path::Path;

/// One tensor waiting to be written.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    bytes: Vec<u8>,
}

/// Collects metadata and tensors, then writes them as one GGUF v3 file.
///
/// Tensors are laid out in the order they were added, each at an offset that
/// is a multiple of the alignment and padded with zeros to the next one. The
/// alignment is `general.alignment` if that is set to a valid value (see
/// [`GgufWriter::set_alignment`]), else 32.
#[derive(Debug, Clone, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<PendingTensor>,
    tensor_names: HashSet<String>,
}

impl GgufWriter {
    /// An empty file: no metadata, no tensors.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds metadata entry `key` (in order). Any value is accepted, even a
    /// nonsensical `general.alignment`, so tests can make bad files.
    pub fn add(&mut self, key: impl Into<String>, value: impl Into<MetaValue>) -> Result<(), GgufWriteError> {
        let key = key.into();
        if !self.keys.insert(key.clone()) {
            return Err(GgufWriteError::DuplicateKey(key));
        }
        self.metadata.push((key, value.into()));
        Ok(())
    }

    /// Sets the alignment of the data section and tensor offsets by writing
    /// `general.alignment` (replacing an earlier value).
    pub fn set_alignment(&mut self, alignment: u32) -> Result<(), GgufWriteError> {
        if !alignment.is_power_of_two() {
            return Err(GgufWriteError::BadAlignment(alignment));
        }
        match self.metadata.iter_mut().find(|(key, _)| key == ALIGNMENT_KEY) {
            Some((_, value)) => *value = MetaValue::U32(alignment),
            None => self.add(ALIGNMENT_KEY, alignment)?,
        }
        Ok(())
    }

    /// The alignment the file will be written with.
    pub fn alignment(&self) -> u32 {
        match self.metadata.iter().find(|(key, _)| key == ALIGNMENT_KEY) {
            Some((_, MetaValue::U32(a))) if a.is_power_of_two() => *a,
            _ => DEFAULT_ALIGNMENT,
        }
    }

    /// Adds tensor `name` of `dims` (ggml order: ne0 contiguous) from f32
    /// `values` (row-major with rows of ne0), stored as `ggml_type`: F32, F16,
    /// BF16, Q8_0, Q4_1, Q4_K or Q6_K (see [`quant::quantize`]).
    pub fn add_tensor_f32(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        values: &[f32],
    ) -> Result<(), GgufWriteError> {
        let name = name.into();
        let n_elements = check_dims(&name, dims, ggml_type)?;
        if n_elements != values.len() as u64 {
            return Err(GgufWriteError::BadTensor {
                problem: format!(
                    "dims {dims:?} hold {n_elements} elements, but {} values were given",
                    values.len()
                ),
                tensor: name,
            });
        }
        let bytes = quant::quantize(ggml_type, values)
            .map_err(|source| GgufWriteError::Quant { tensor: name.clone(), source })?;
        self.push_tensor(PendingTensor { name, dims: dims.to_vec(), ggml_type, bytes })
    }

    /// Adds tensor `name` whose bytes are already in `ggml_type`'s storage
    /// format (any type; e.g. hand-made Q4_K blocks in tests).
    pub fn add_tensor_bytes(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        bytes: Vec<u8>,
    ) -> Result<(), GgufWriteError> {
        let name = name.into();
        let n_elements = check_dims(&name, dims, ggml_type)?;
        let expected = ggml_type.storage_bytes(n_elements);
        if expected != Some(bytes.len() as u64) {
            return Err(GgufWriteError::BadTensor {
                problem: format!(
                    "{n_elements} elements of {ggml_type} take {expected:?} bytes, but {} were given",
                    bytes.len()
                ),
                tensor: name,
            });
        }
        self.push_tensor(PendingTensor { name, dims: dims.to_vec(), ggml_type, bytes })
    }

    fn push_tensor(&mut self, tensor: PendingTensor) -> Result<(), GgufWriteError> {
        if !self.tensor_names.insert(tensor.name.clone()) {
            return Err(GgufWriteError::DuplicateTensor(tensor.name));
        }
        self.tensors.push(tensor);
        Ok(())
    }

    /// The whole file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alignment = self.alignment() as usize;
        let mut out = Vec::new();
        out.extend_from_slice(&GGUF_MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.meta_type().id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offset = 0usize;
        for tensor in &self.tensors {
            write_string(&mut out, &tensor.name);
            out.extend_from_slice(&(tensor.dims.len() as u32).to_le_bytes());
            for dim in &tensor.dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&tensor.ggml_type.id().to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offset = (offset + tensor.bytes.len()).next_multiple_of(alignment);
        }
        let data_start = out.len().next_multiple_of(alignment);
        out.resize(data_start, 0);
        for tensor in &self.tensors {
            out.extend_from_slice(&tensor.bytes);
            out.resize(out.len().next_multiple_of(alignment), 0);
        }
        out
    }

    /// Writes the file to `path`.
    pub fn write_to_path(&self, path: impl AsRef<Path>) -> Result<(), GgufWriteError> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes())
            .map_err(|source| GgufWriteError::Io { path: path.display().to_string(), source })
    }
}

/// The element count of `dims` after checking the rank, overflow and that ne0
/// is a whole number of `ggml_type` blocks.
fn check_dims(name: &str, dims: &[u64], ggml_type: GgmlType) -> Result<u64, GgufWriteError> {
    let bad = |problem: String| GgufWriteError::BadTensor { tensor: name.to_string(), problem };
    if dims.len() > MAX_DIMS {
        return Err(bad(format!("{} dims exceed the maximum of {MAX_DIMS}", dims.len())));
    }
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad(format!("dims {dims:?}: element count overflows u64")))?;
    let ne0 = dims.first().copied().unwrap_or(1);
    if ne0 % ggml_type.block_size() as u64 != 0 {
        return Err(bad(format!(
            "ne0 = {ne0} is not a multiple of the {ggml_type} block size {}",
            ggml_type.block_size()
        )));
    }
    Ok(n_elements)
}

fn write_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(u8::from(*v)),
        MetaValue::String(v) => write_string(out, v),
        MetaValue::Array(array) => write_array(out, array),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}

/// Element type, count and elements of `array` (its `Array` tag is written by
/// the caller).
fn write_array(out: &mut Vec<u8>, array: &MetaArray) {
    out.extend_from_slice(&array.element_type().id().to_le_bytes());
    out.extend_from_slice(&(array.len() as u64).to_le_bytes());
    macro_rules! le {
        ($values:expr) => {
            $values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()))
        };
    }
    match array {
        MetaArray::U8(values) => out.extend_from_slice(values),
        MetaArray::I8(values) => le!(values),
        MetaArray::U16(values) => le!(values),
        MetaArray::I16(values) => le!(values),
        MetaArray::U32(values) => le!(values),
        MetaArray::I32(values) => le!(values),
        MetaArray::F32(values) => le!(values),
        MetaArray::Bool(values) => out.extend(values.iter().map(|&b| u8::from(b))),
        MetaArray::String(values) => values.iter().for_each(|s| write_string(out, s)),
        MetaArray::Array(arrays) => arrays.iter().for_each(|inner| write_array(out, inner)),
        MetaArray::U64(values) => le!(values),
        MetaArray::I64(values) => le!(values),
        MetaArray::F64(values) => le!(values),
    }
}
