//! GGUF metadata values: the thirteen on-disk value types, a typed value enum
//! and homogeneous arrays (which may nest).

use std::fmt;

/// The on-disk type tag of a metadata value (`gguf_type` in ggml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetaType {
    /// Tag 0: unsigned 8-bit.
    U8,
    /// Tag 1: signed 8-bit.
    I8,
    /// Tag 2: unsigned 16-bit.
    U16,
    /// Tag 3: signed 16-bit.
    I16,
    /// Tag 4: unsigned 32-bit.
    U32,
    /// Tag 5: signed 32-bit.
    I32,
    /// Tag 6: IEEE binary32.
    F32,
    /// Tag 7: one byte, 0 or 1.
    Bool,
    /// Tag 8: u64 byte length + UTF-8.
    String,
    /// Tag 9: u32 element type + u64 count + elements.
    Array,
    /// Tag 10: unsigned 64-bit.
    U64,
    /// Tag 11: signed 64-bit.
    I64,
    /// Tag 12: IEEE binary64.
    F64,
}

const TYPES_BY_ID: [MetaType; 13] = [
    MetaType::U8,
    MetaType::I8,
    MetaType::U16,
    MetaType::I16,
    MetaType::U32,
    MetaType::I32,
    MetaType::F32,
    MetaType::Bool,
    MetaType::String,
    MetaType::Array,
    MetaType::U64,
    MetaType::I64,
    MetaType::F64,
];

impl MetaType {
    /// The type with on-disk tag `id`, or `None` for an unknown tag.
    pub fn from_id(id: u32) -> Option<MetaType> {
        TYPES_BY_ID.get(usize::try_from(id).ok()?).copied()
    }

    /// The on-disk tag.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// A short name for messages (`"u32"`, `"string"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            MetaType::U8 => "u8",
            MetaType::I8 => "i8",
            MetaType::U16 => "u16",
            MetaType::I16 => "i16",
            MetaType::U32 => "u32",
            MetaType::I32 => "i32",
            MetaType::F32 => "f32",
            MetaType::Bool => "bool",
            MetaType::String => "string",
            MetaType::Array => "array",
            MetaType::U64 => "u64",
            MetaType::I64 => "i64",
            MetaType::F64 => "f64",
        }
    }

    /// The fewest bytes one value of this type occupies on disk: the reader
    /// uses it to reject an array length the rest of the file cannot hold
    /// before allocating for it.
    pub fn min_encoded_size(self) -> usize {
        match self {
            MetaType::U8 | MetaType::I8 | MetaType::Bool => 1,
            MetaType::U16 | MetaType::I16 => 2,
            MetaType::U32 | MetaType::I32 | MetaType::F32 => 4,
            MetaType::U64 | MetaType::I64 | MetaType::F64 => 8,
            // u64 length (an empty string has no bytes after it).
            MetaType::String => 8,
            // u32 element type + u64 length.
            MetaType::Array => 12,
        }
    }
}

impl fmt::Display for MetaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One metadata value, typed as it is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// An unsigned 8-bit value.
    U8(u8),
    /// A signed 8-bit value.
    I8(i8),
    /// An unsigned 16-bit value.
    U16(u16),
    /// A signed 16-bit value.
    I16(i16),
    /// An unsigned 32-bit value.
    U32(u32),
    /// A signed 32-bit value.
    I32(i32),
    /// An IEEE binary32 value.
    F32(f32),
    /// A boolean (stored as one byte, 0 or 1).
    Bool(bool),
    /// A string.
    String(String),
    /// An array (possibly of arrays).
    Array(MetaArray),
    /// An unsigned 64-bit value.
    U64(u64),
    /// A signed 64-bit value.
    I64(i64),
    /// An IEEE binary64 value.
    F64(f64),
}

/// A homogeneous metadata array. Arrays of arrays may hold inner arrays of
/// different element types (each inner array carries its own type tag).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaArray {
    /// Elements of type u8.
    U8(Vec<u8>),
    /// Elements of type i8.
    I8(Vec<i8>),
    /// Elements of type u16.
    U16(Vec<u16>),
    /// Elements of type i16.
    I16(Vec<i16>),
    /// Elements of type u32.
    U32(Vec<u32>),
    /// Elements of type i32.
    I32(Vec<i32>),
    /// Elements of type f32.
    F32(Vec<f32>),
    /// Elements of type bool.
    Bool(Vec<bool>),
    /// Elements of type string.
    String(Vec<String>),
    /// Arrays, each with its own element type.
    Array(Vec<MetaArray>),
    /// Elements of type u64.
    U64(Vec<u64>),
    /// Elements of type i64.
    I64(Vec<i64>),
    /// Elements of type f64.
    F64(Vec<f64>),
}

impl MetaValue {
    /// The on-disk type of this value.
    pub fn meta_type(&self) -> MetaType {
        match self {
            MetaValue::U8(_) => MetaType::U8,
            MetaValue::I8(_) => MetaType::I8,
            MetaValue::U16(_) => MetaType::U16,
            MetaValue::I16(_) => MetaType::I16,
            MetaValue::U32(_) => MetaType::U32,
            MetaValue::I32(_) => MetaType::I32,
            MetaValue::F32(_) => MetaType::F32,
            MetaValue::Bool(_) => MetaType::Bool,
            MetaValue::String(_) => MetaType::String,
            MetaValue::Array(_) => MetaType::Array,
            MetaValue::U64(_) => MetaType::U64,
            MetaValue::I64(_) => MetaType::I64,
            MetaValue::F64(_) => MetaType::F64,
        }
    }

    /// The type as a message would name it: `"u32"`, or `"array of string"`
    /// for arrays, so a type mismatch in an array is visible.
    pub fn type_description(&self) -> String {
        match self {
            MetaValue::Array(array) => array.type_description(),
            other => other.meta_type().name().to_string(),
        }
    }

    /// The value as an integer if it is of an integer type (not bool).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }
}

impl MetaArray {
    /// The type of the elements.
    pub fn element_type(&self) -> MetaType {
        match self {
            MetaArray::U8(_) => MetaType::U8,
            MetaArray::I8(_) => MetaType::I8,
            MetaArray::U16(_) => MetaType::U16,
            MetaArray::I16(_) => MetaType::I16,
            MetaArray::U32(_) => MetaType::U32,
            MetaArray::I32(_) => MetaType::I32,
            MetaArray::F32(_) => MetaType::F32,
            MetaArray::Bool(_) => MetaType::Bool,
            MetaArray::String(_) => MetaType::String,
            MetaArray::Array(_) => MetaType::Array,
            MetaArray::U64(_) => MetaType::U64,
            MetaArray::I64(_) => MetaType::I64,
            MetaArray::F64(_) => MetaType::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            MetaArray::U8(v) => v.len(),
            MetaArray::I8(v) => v.len(),
            MetaArray::U16(v) => v.len(),
            MetaArray::I16(v) => v.len(),
            MetaArray::U32(v) => v.len(),
            MetaArray::I32(v) => v.len(),
            MetaArray::F32(v) => v.len(),
            MetaArray::Bool(v) => v.len(),
            MetaArray::String(v) => v.len(),
            MetaArray::Array(v) => v.len(),
            MetaArray::U64(v) => v.len(),
            MetaArray::I64(v) => v.len(),
            MetaArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `"array of <element type>"`.
    pub fn type_description(&self) -> String {
        format!("array of {}", self.element_type())
    }
}

macro_rules! conversions {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(
            impl From<$ty> for MetaValue {
                fn from(value: $ty) -> MetaValue {
                    MetaValue::$variant(value)
                }
            }
            impl From<Vec<$ty>> for MetaArray {
                fn from(values: Vec<$ty>) -> MetaArray {
                    MetaArray::$variant(values)
                }
            }
            impl From<Vec<$ty>> for MetaValue {
                fn from(values: Vec<$ty>) -> MetaValue {
                    MetaValue::Array(MetaArray::$variant(values))
                }
            }
        )*
    };
}

conversions!(
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    U64(u64),
    I64(i64),
    F64(f64),
);

impl From<&str> for MetaValue {
    fn from(value: &str) -> MetaValue {
        MetaValue::String(value.to_string())
    }
}

impl From<Vec<&str>> for MetaValue {
    fn from(values: Vec<&str>) -> MetaValue {
        MetaValue::Array(MetaArray::String(values.into_iter().map(str::to_string).collect()))
    }
}

impl From<MetaArray> for MetaValue {
    fn from(array: MetaArray) -> MetaValue {
        MetaValue::Array(array)
    }
}

impl From<Vec<MetaArray>> for MetaValue {
    fn from(arrays: Vec<MetaArray>) -> MetaValue {
        MetaValue::Array(MetaArray::Array(arrays))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (id, ty) in TYPES_BY_ID.iter().enumerate() {
            assert_eq!(ty.id(), id as u32);
            assert_eq!(MetaType::from_id(id as u32), Some(*ty));
        }
        assert_eq!(MetaType::from_id(13), None);
    }
}
