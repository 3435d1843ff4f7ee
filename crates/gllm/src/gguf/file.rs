//! [`GgufFile`]: an opened GGUF file (memory-mapped, or a buffer), its checked
//! header, typed metadata look-ups and tensor access.

use super::error::GgufError;
use super::metadata::{MetaArray, MetaValue};
use super::quant::{self, QuantError};
use super::reader::{parse_header, Header};
use super::tensor_info::TensorInfo;
use memmap2::Mmap;
use std::path::Path;

/// Where the file's bytes live.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// A GGUF model file whose header has been parsed and checked: every tensor
/// info describes bytes inside the file, so tensor access cannot go out of
/// bounds. Tensor bytes are not copied until asked for.
pub struct GgufFile {
    source_name: String,
    storage: Storage,
    header: Header,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("source_name", &self.source_name)
            .field("version", &self.header.version)
            .field("metadata_entries", &self.header.metadata.len())
            .field("tensors", &self.header.tensors.len())
            .finish()
    }
}

macro_rules! typed_accessors {
    ($($get:ident, $opt:ident -> $ty:ty, $expected:literal, |$value:ident| $extract:expr;)*) => {
        $(
            #[doc = concat!("The value of `key` as ", $expected, "; an error names the key if it is ")]
            #[doc = "missing or of another type."]
            pub fn $get(&self, key: &str) -> Result<$ty, GgufError> {
                let value = self.$opt(key)?;
                value.ok_or_else(|| self.missing_key(key))
            }

            #[doc = concat!("Like [`Self::", stringify!($get), "`], but `Ok(None)` if `key` is absent.")]
            pub fn $opt(&self, key: &str) -> Result<Option<$ty>, GgufError> {
                self.typed(key, $expected, |$value| $extract)
            }
        )*
    };
}

impl GgufFile {
    /// Opens and memory-maps `path`, and parses its header. Errors name the
    /// path.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let io = |source| GgufError::Io { file: source_name.clone(), source };
        let map = crate::file_map::map_read_only(path).map_err(io)?;
        let header = parse_header(&source_name, &map)?;
        Ok(GgufFile { source_name, storage: Storage::Mapped(map), header })
    }

    /// Parses a GGUF file held in memory; `name` stands for the file in
    /// errors. Used by tests, fuzzing and files made on the fly.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        let header = parse_header(name, &bytes)?;
        Ok(GgufFile { source_name: name.to_string(), storage: Storage::Owned(bytes), header })
    }

    /// The path or name the file was opened under (starts every error).
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// Alignment of the data section and tensor offsets (`general.alignment`,
    /// default 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Absolute byte offset of the data section in the file.
    pub fn data_offset(&self) -> usize {
        self.header.data_start
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.header.metadata
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        let index = *self.header.metadata_index.get(key)?;
        self.header.metadata.get(index).map(|(_, value)| value)
    }

    fn missing_key(&self, key: &str) -> GgufError {
        GgufError::MissingKey { file: self.source_name.clone(), key: key.to_string() }
    }

    /// `Ok(None)` if `key` is absent, the extracted value if `extract` accepts
    /// it, and a type error naming `expected` and the stored type otherwise.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        extract: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        extract(value).map(Some).ok_or_else(|| GgufError::WrongType {
            file: self.source_name.clone(),
            key: key.to_string(),
            expected,
            found: value.type_description(),
        })
    }

    typed_accessors! {
        get_u32, opt_u32 -> u32, "u32", |v| match v { MetaValue::U32(x) => Some(*x), _ => None };
        get_i32, opt_i32 -> i32, "i32", |v| match v { MetaValue::I32(x) => Some(*x), _ => None };
        get_u64, opt_u64 -> u64, "u64", |v| match v { MetaValue::U64(x) => Some(*x), _ => None };
        get_f32, opt_f32 -> f32, "f32", |v| match v { MetaValue::F32(x) => Some(*x), _ => None };
        get_bool, opt_bool -> bool, "bool", |v| match v { MetaValue::Bool(x) => Some(*x), _ => None };
        get_str, opt_str -> &str, "string", |v| match v { MetaValue::String(x) => Some(x.as_str()), _ => None };
        get_array, opt_array -> &MetaArray, "array", |v| match v { MetaValue::Array(x) => Some(x), _ => None };
        get_str_array, opt_str_array -> &[String], "array of string",
            |v| match v { MetaValue::Array(MetaArray::String(x)) => Some(x.as_slice()), _ => None };
        get_i32_array, opt_i32_array -> &[i32], "array of i32",
            |v| match v { MetaValue::Array(MetaArray::I32(x)) => Some(x.as_slice()), _ => None };
        get_f32_array, opt_f32_array -> &[f32], "array of f32",
            |v| match v { MetaValue::Array(MetaArray::F32(x)) => Some(x.as_slice()), _ => None };
    }

    /// The value of `key` as a usize, accepting any integer type whose value
    /// fits (converters disagree on u32/i32/u64 for counts and sizes).
    pub fn get_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.opt_usize(key)?.ok_or_else(|| self.missing_key(key))
    }

    /// Like [`Self::get_usize`], but `Ok(None)` if `key` is absent.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        let Some(integer) = self.typed(key, "an integer type", MetaValue::as_i128)? else {
            return Ok(None);
        };
        usize::try_from(integer).map(Some).map_err(|_| GgufError::OutOfRange {
            file: self.source_name.clone(),
            key: key.to_string(),
            value: integer,
            target: "usize",
        })
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.header.tensor_index.contains_key(name)
    }

    /// The info of tensor `name`, or an error naming it.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.header.tensor_index.get(name).and_then(|&index| self.header.tensors.get(index)).ok_or_else(
            || GgufError::MissingTensor { file: self.source_name.clone(), tensor: name.to_string() },
        )
    }

    /// The stored bytes of a tensor of this file (for kernels that read
    /// quantised blocks directly). An info from another file that does not
    /// fit this one gives an empty slice.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.header.data_start as u64).checked_add(info.offset());
        let end = start.and_then(|start| start.checked_add(info.n_bytes()));
        match (start.map(usize::try_from), end.map(usize::try_from)) {
            (Some(Ok(start)), Some(Ok(end))) => self.storage.bytes().get(start..end).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Tensor `name` dequantised to f32, in storage order: ne0 (the first
    /// dim) contiguous, i.e. row-major with rows of `dims()[0]` elements.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, GgufError> {
        let info = self.tensor_info(name)?;
        quant::dequantize(info.ggml_type(), self.tensor_data(info), info.n_elements()).map_err(|source| {
            match source {
                QuantError::Unsupported { ty, .. } => GgufError::UnsupportedTensorType {
                    file: self.source_name.clone(),
                    tensor: name.to_string(),
                    ty,
                },
                source => {
                    GgufError::Quant { file: self.source_name.clone(), tensor: name.to_string(), source }
                }
            }
        })
    }
}
