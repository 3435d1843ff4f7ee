//! The GGUF header parser, over a byte slice (a memory map or a buffer).
//!
//! Layout (GGUF v2/v3, little-endian):
//!
//! ```text
//! "GGUF" | u32 version | u64 tensor_count | u64 metadata_count
//! metadata_count × ( string key | u32 value_type | value )
//! tensor_count   × ( string name | u32 n_dims | u64 dims[n_dims] | u32 ggml_type | u64 offset )
//! padding to `general.alignment` (default 32)
//! data section: tensor bytes at their offsets (each a multiple of the alignment)
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes; an array is a u32 element
//! type, a u64 count and the elements. Every length is checked against the
//! bytes left before anything is allocated for it.

use super::cursor::{Cursor, ReadProblem};
use super::error::GgufError;
use super::ggml_type::GgmlType;
use super::metadata::{MetaArray, MetaType, MetaValue};
use super::tensor_info::{TensorInfo, MAX_DIMS};
use std::collections::HashMap;

/// The file magic, "GGUF".
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";

/// Alignment of the data section and of tensor offsets when the file does not
/// set `general.alignment`.
pub const DEFAULT_ALIGNMENT: u32 = 32;

/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// How deeply arrays may nest. GGUF allows arrays of arrays but real files use
/// at most one level; the limit keeps a hostile file from exhausting the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

/// Fewest bytes of one metadata entry: an empty key (8), the type (4) and a
/// one-byte value.
const MIN_METADATA_ENTRY: u64 = 8 + 4 + 1;

/// Fewest bytes of one tensor info: an empty name (8), n_dims (4), no dims,
/// the type (4) and the offset (8).
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;

/// Everything the header says, with offsets checked against the file.
#[derive(Debug)]
pub(super) struct Header {
    pub(super) version: u32,
    pub(super) alignment: u64,
    pub(super) metadata: Vec<(String, MetaValue)>,
    pub(super) metadata_index: HashMap<String, usize>,
    pub(super) tensors: Vec<TensorInfo>,
    pub(super) tensor_index: HashMap<String, usize>,
    /// Absolute offset of the data section (may equal the file length).
    pub(super) data_start: usize,
}

/// Parses and checks the header of the GGUF file `bytes`; `file` names it in
/// errors.
pub(super) fn parse_header(file: &str, bytes: &[u8]) -> Result<Header, GgufError> {
    let mut cursor = Cursor::new(bytes);
    let at =
        |context: &'static str| move |problem: ReadProblem| problem.into_error(file, || context.to_string());

    let magic_prefix = bytes.get(..4).unwrap_or(bytes);
    if !GGUF_MAGIC.starts_with(magic_prefix) {
        return Err(GgufError::BadMagic {
            file: file.to_string(),
            found: String::from_utf8_lossy(magic_prefix).into_owned(),
        });
    }
    cursor.array::<4>().map_err(at("the magic"))?;

    let version = cursor.u32().map_err(at("the version"))?;
    match version {
        2 | 3 => {}
        // A byte-swapped 2 or 3 has its low 16 bits zero.
        v if v & 0xFFFF == 0 && v != 0 => {
            return Err(GgufError::BigEndian { file: file.to_string(), raw: v });
        }
        v => return Err(GgufError::UnsupportedVersion { file: file.to_string(), version: v }),
    }
    let tensor_count = cursor.u64().map_err(at("the tensor count"))?;
    let metadata_count = cursor.u64().map_err(at("the metadata count"))?;

    // The counts are not trusted for allocation: the capacity reserved is at
    // most what the rest of the file could hold. A count larger than that
    // fails where the file runs out, naming the entry that is cut.
    let mut metadata = Vec::with_capacity(bounded_capacity(metadata_count, MIN_METADATA_ENTRY, &cursor));
    let mut metadata_index = HashMap::with_capacity(metadata.capacity());
    for entry in 0..metadata_count {
        let key_offset = cursor.position();
        let key = cursor
            .string()
            .map_err(|p| p.into_error(file, || format!("the key of metadata entry #{entry}")))?;
        let value = read_tagged_value(&mut cursor, 0)
            .map_err(|p| p.into_error(file, || format!("the value of metadata key {key:?}")))?;
        if metadata_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::Malformed {
                file: file.to_string(),
                context: format!("metadata entry #{entry}"),
                offset: key_offset,
                problem: format!("duplicate metadata key {key:?}"),
            });
        }
        metadata.push((key, value));
    }

    let alignment = alignment(file, &metadata, &metadata_index)?;

    let mut raw_tensors = Vec::with_capacity(bounded_capacity(tensor_count, MIN_TENSOR_INFO, &cursor));
    let mut tensor_index = HashMap::with_capacity(raw_tensors.capacity());
    for _ in 0..tensor_count {
        let index = raw_tensors.len();
        let name = cursor
            .string()
            .map_err(|p| p.into_error(file, || format!("the name of tensor info #{index}")))?;
        let raw = read_tensor_info(file, &mut cursor, &name)?;
        if let Some(first) = tensor_index.insert(name.clone(), index) {
            return Err(GgufError::BadTensor {
                file: file.to_string(),
                tensor: name,
                problem: format!("duplicate tensor name (tensor infos #{first} and #{index})"),
            });
        }
        raw_tensors.push((name, raw));
    }

    // The data section starts at the header's end rounded up to the alignment.
    let header_end = cursor.position() as u64;
    let data_start = header_end.div_ceil(alignment).saturating_mul(alignment);
    let data_len = (bytes.len() as u64).saturating_sub(data_start);
    let mut tensors = Vec::with_capacity(raw_tensors.len());
    for (name, (dims, ggml_type, offset)) in raw_tensors {
        tensors.push(TensorInfo::checked(file, name, dims, ggml_type, offset, alignment, data_len)?);
    }
    Ok(Header {
        version,
        alignment,
        metadata,
        metadata_index,
        tensors,
        tensor_index,
        data_start: usize::try_from(data_start).unwrap_or(usize::MAX).min(bytes.len()),
    })
}

/// Most elements reserved up front for a count read from the file. Larger
/// collections grow as their elements are actually read, so memory follows
/// the bytes parsed, not a claimed count (which, in a large file with a
/// corrupt header, could pass the bytes-left check and still be huge).
const MAX_PREALLOCATED: u64 = 1 << 16;

/// Room to reserve for `count` items of at least `min_size` bytes each: no
/// more than the bytes left after `cursor` could hold, and at most
/// [`MAX_PREALLOCATED`].
fn bounded_capacity(count: u64, min_size: u64, cursor: &Cursor<'_>) -> usize {
    let most = cursor.remaining() as u64 / min_size;
    count.min(most).min(MAX_PREALLOCATED) as usize
}

/// The `general.alignment` value: u32, a non-zero power of two, 32 if absent.
fn alignment(
    file: &str,
    metadata: &[(String, MetaValue)],
    index: &HashMap<String, usize>,
) -> Result<u64, GgufError> {
    let bad = |problem: String| GgufError::BadAlignment { file: file.to_string(), problem };
    let Some(value) = index.get(ALIGNMENT_KEY).and_then(|&i| metadata.get(i)).map(|(_, v)| v) else {
        return Ok(DEFAULT_ALIGNMENT.into());
    };
    match *value {
        MetaValue::U32(a) if a.is_power_of_two() => Ok(a.into()),
        MetaValue::U32(a) => Err(bad(format!("{a} is not a non-zero power of two"))),
        ref other => Err(bad(format!("has type {}, expected u32", other.type_description()))),
    }
}

/// Dims, type and offset of one tensor info (after its name); n_dims and the
/// type id are checked here, the rest once the data section is known.
fn read_tensor_info(
    file: &str,
    cursor: &mut Cursor<'_>,
    name: &str,
) -> Result<(Vec<u64>, GgmlType, u64), GgufError> {
    let context = || format!("tensor info {name:?}");
    let bad =
        |problem: String| GgufError::BadTensor { file: file.to_string(), tensor: name.to_string(), problem };
    let n_dims = cursor.u32().map_err(|p| p.into_error(file, context))?;
    if n_dims as usize > MAX_DIMS {
        return Err(bad(format!("n_dims = {n_dims} exceeds the maximum of {MAX_DIMS}")));
    }
    let dims = (0..n_dims).map(|_| cursor.u64()).collect::<Result<Vec<_>, _>>();
    let dims = dims.map_err(|p| p.into_error(file, context))?;
    let type_id = cursor.u32().map_err(|p| p.into_error(file, context))?;
    let ggml_type =
        GgmlType::from_id(type_id).ok_or_else(|| bad(format!("unknown ggml type id {type_id}")))?;
    let offset = cursor.u64().map_err(|p| p.into_error(file, context))?;
    Ok((dims, ggml_type, offset))
}

/// A metadata value preceded by its u32 type tag.
fn read_tagged_value(cursor: &mut Cursor<'_>, depth: usize) -> Result<MetaValue, ReadProblem> {
    let tag_offset = cursor.position();
    let tag = cursor.u32()?;
    let ty = MetaType::from_id(tag).ok_or_else(|| ReadProblem::Invalid {
        offset: tag_offset,
        problem: format!("unknown value type id {tag}"),
    })?;
    read_value(cursor, ty, depth)
}

fn read_value(cursor: &mut Cursor<'_>, ty: MetaType, depth: usize) -> Result<MetaValue, ReadProblem> {
    Ok(match ty {
        MetaType::U8 => MetaValue::U8(cursor.u8()?),
        MetaType::I8 => MetaValue::I8(cursor.i8()?),
        MetaType::U16 => MetaValue::U16(cursor.u16()?),
        MetaType::I16 => MetaValue::I16(cursor.i16()?),
        MetaType::U32 => MetaValue::U32(cursor.u32()?),
        MetaType::I32 => MetaValue::I32(cursor.i32()?),
        MetaType::F32 => MetaValue::F32(cursor.f32()?),
        MetaType::Bool => MetaValue::Bool(cursor.bool()?),
        MetaType::String => MetaValue::String(cursor.string()?),
        MetaType::Array => MetaValue::Array(read_array(cursor, depth + 1)?),
        MetaType::U64 => MetaValue::U64(cursor.u64()?),
        MetaType::I64 => MetaValue::I64(cursor.i64()?),
        MetaType::F64 => MetaValue::F64(cursor.f64()?),
    })
}

/// `count` elements read by `read`. The caller has checked that the rest of
/// the file can hold `count` elements; the reservation is also capped at
/// [`MAX_PREALLOCATED`], so memory grows only with elements actually read.
fn read_elements<'a, T>(
    cursor: &mut Cursor<'a>,
    count: usize,
    mut read: impl FnMut(&mut Cursor<'a>) -> Result<T, ReadProblem>,
) -> Result<Vec<T>, ReadProblem> {
    let mut values = Vec::with_capacity(count.min(MAX_PREALLOCATED as usize));
    for _ in 0..count {
        values.push(read(cursor)?);
    }
    Ok(values)
}

/// An array (after its `Array` tag): element type, count, elements.
fn read_array(cursor: &mut Cursor<'_>, depth: usize) -> Result<MetaArray, ReadProblem> {
    if depth > MAX_ARRAY_DEPTH {
        return Err(cursor.invalid(format!("arrays nested deeper than {MAX_ARRAY_DEPTH} levels")));
    }
    let tag_offset = cursor.position();
    let tag = cursor.u32()?;
    let ty = MetaType::from_id(tag).ok_or_else(|| ReadProblem::Invalid {
        offset: tag_offset,
        problem: format!("unknown array element type id {tag}"),
    })?;
    let count_offset = cursor.position();
    let count = cursor.u64()?;
    let min_bytes = count.checked_mul(ty.min_encoded_size() as u64);
    let remaining = cursor.remaining();
    let count = match min_bytes {
        Some(min_bytes) if min_bytes <= remaining as u64 => count as usize,
        _ => {
            return Err(ReadProblem::Invalid {
                offset: count_offset,
                problem: format!(
                    "array length {count} of {ty} needs at least {} bytes, but only {remaining} bytes are \
                     left in the file",
                    min_bytes.map_or_else(|| "2^64 or more".to_string(), |b| b.to_string())
                ),
            })
        }
    };
    Ok(match ty {
        MetaType::U8 => MetaArray::U8(cursor.take(count as u64)?.to_vec()),
        MetaType::I8 => MetaArray::I8(read_elements(cursor, count, Cursor::i8)?),
        MetaType::U16 => MetaArray::U16(read_elements(cursor, count, Cursor::u16)?),
        MetaType::I16 => MetaArray::I16(read_elements(cursor, count, Cursor::i16)?),
        MetaType::U32 => MetaArray::U32(read_elements(cursor, count, Cursor::u32)?),
        MetaType::I32 => MetaArray::I32(read_elements(cursor, count, Cursor::i32)?),
        MetaType::F32 => MetaArray::F32(read_elements(cursor, count, Cursor::f32)?),
        MetaType::Bool => MetaArray::Bool(read_elements(cursor, count, Cursor::bool)?),
        MetaType::String => MetaArray::String(read_elements(cursor, count, Cursor::string)?),
        MetaType::Array => MetaArray::Array(read_elements(cursor, count, |c| read_array(c, depth + 1))?),
        MetaType::U64 => MetaArray::U64(read_elements(cursor, count, Cursor::u64)?),
        MetaType::I64 => MetaArray::I64(read_elements(cursor, count, Cursor::i64)?),
        MetaType::F64 => MetaArray::F64(read_elements(cursor, count, Cursor::f64)?),
    })
}
