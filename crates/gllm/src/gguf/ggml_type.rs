//! The ggml tensor element types a GGUF file can name, with their numeric ids
//! and storage geometry (elements per block, bytes per block).
//!
//! The ids are the on-disk `ggml_type` values (`enum ggml_type` in ggml.h);
//! ids and block geometry are checked against the `GGMLQuantizationType` /
//! `GGML_QUANT_SIZES` tables of the `gguf` Python package (gguf-py 0.19.0)
//! and ggml's `ggml-common.h` block structs. Two differences from gguf-py
//! 0.19.0, both following ggml: Q8_1 is 36 bytes per block (`f16 d, f16 s,
//! i8 qs[32]`, asserted in ggml-common.h; gguf-py still lists the old 40-byte
//! f32 layout), and Q2_0 (id 42, newer than that gguf-py) is known. Ids that
//! ggml has retired (4 and 5, the old Q4_2/Q4_3; 31–33 and 36–38, repacked
//! layouts no longer stored in files) are not types here: a file naming them
//! is rejected.

use std::fmt;

/// Elements in one "K-quant" super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// One ggml tensor element type, as stored in a GGUF tensor info.
///
/// Quantised types store elements in fixed-size blocks: `block_size` elements
/// packed into `bytes_per_block` bytes. Plain types have a block size of 1.
#[allow(non_camel_case_types)] // the names are ggml's, so they can be grepped for
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// 4-bit codes, 32 per block, one f16 scale.
    Q4_0,
    /// 4-bit codes, 32 per block, an f16 scale and an f16 minimum.
    Q4_1,
    /// 5-bit codes, 32 per block, one f16 scale.
    Q5_0,
    /// 5-bit codes, 32 per block, an f16 scale and an f16 minimum.
    Q5_1,
    /// 8-bit codes, 32 per block, one f16 scale.
    Q8_0,
    /// 8-bit codes, 32 per block, an f32 scale and the f32 sum (an activation format).
    Q8_1,
    /// 2-bit K-quant: super-blocks of 256 with 4-bit sub-block scales.
    Q2_K,
    /// 3-bit K-quant: super-blocks of 256 with 6-bit sub-block scales.
    Q3_K,
    /// 4-bit K-quant: super-blocks of 256 with 6-bit sub-block scales and mins.
    Q4_K,
    /// 5-bit K-quant: super-blocks of 256 with 6-bit sub-block scales and mins.
    Q5_K,
    /// 6-bit K-quant: super-blocks of 256 with 8-bit sub-block scales.
    Q6_K,
    /// 8-bit K-quant with block sums (an activation format).
    Q8_K,
    /// 2.06 bits per weight, lattice codebook.
    IQ2_XXS,
    /// 2.31 bits per weight, lattice codebook.
    IQ2_XS,
    /// 3.06 bits per weight, lattice codebook.
    IQ3_XXS,
    /// 1.56 bits per weight.
    IQ1_S,
    /// 4-bit non-linear codebook, 32 per block.
    IQ4_NL,
    /// 3.44 bits per weight, lattice codebook.
    IQ3_S,
    /// 2.56 bits per weight, lattice codebook.
    IQ2_S,
    /// 4.25 bits per weight, non-linear codebook, super-blocks of 256.
    IQ4_XS,
    /// Signed 8-bit integers.
    I8,
    /// Signed 16-bit integers.
    I16,
    /// Signed 32-bit integers.
    I32,
    /// Signed 64-bit integers.
    I64,
    /// IEEE binary64.
    F64,
    /// 1.75 bits per weight.
    IQ1_M,
    /// bfloat16: the upper 16 bits of a binary32.
    BF16,
    /// Ternary, 1.69 bits per weight.
    TQ1_0,
    /// Ternary, 2.06 bits per weight.
    TQ2_0,
    /// OCP microscaling FP4 (E2M1) with an E8M0 scale per 32.
    MXFP4,
    /// NVIDIA FP4 with FP8 scales, 64 per block.
    NVFP4,
    /// 1-bit codes, 128 per block, one f16 scale.
    Q1_0,
    /// 2-bit codes, 64 per block, one f16 scale.
    Q2_0,
}

/// (type, id, elements per block, bytes per block) for every known type.
const TABLE: [(GgmlType, u32, usize, usize); 35] = {
    use GgmlType::*;
    [
        (F32, 0, 1, 4),
        (F16, 1, 1, 2),
        (Q4_0, 2, 32, 2 + 16),
        (Q4_1, 3, 32, 2 + 2 + 16),
        (Q5_0, 6, 32, 2 + 4 + 16),
        (Q5_1, 7, 32, 2 + 2 + 4 + 16),
        (Q8_0, 8, 32, 2 + 32),
        (Q8_1, 9, 32, 2 + 2 + 32),
        (Q2_K, 10, QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),
        (Q3_K, 11, QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),
        (Q4_K, 12, QK_K, 2 + 2 + QK_K / 2 + 12),
        (Q5_K, 13, QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),
        (Q6_K, 14, QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),
        (Q8_K, 15, QK_K, 4 + QK_K + QK_K / 8),
        (IQ2_XXS, 16, QK_K, 2 + QK_K / 4),
        (IQ2_XS, 17, QK_K, 2 + QK_K / 4 + QK_K / 32),
        (IQ3_XXS, 18, QK_K, 2 + QK_K / 4 + QK_K / 8),
        (IQ1_S, 19, QK_K, 2 + QK_K / 8 + QK_K / 16),
        (IQ4_NL, 20, 32, 2 + 16),
        (IQ3_S, 21, QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
        (IQ2_S, 22, QK_K, 2 + QK_K / 4 + QK_K / 16),
        (IQ4_XS, 23, QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
        (I8, 24, 1, 1),
        (I16, 25, 1, 2),
        (I32, 26, 1, 4),
        (I64, 27, 1, 8),
        (F64, 28, 1, 8),
        (IQ1_M, 29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
        (BF16, 30, 1, 2),
        (TQ1_0, 34, QK_K, 2 + 4 * 13),
        (TQ2_0, 35, QK_K, 2 + 64),
        (MXFP4, 39, 32, 1 + 16),
        (NVFP4, 40, 64, 4 + 32),
        (Q1_0, 41, 128, 2 + 16),
        (Q2_0, 42, 64, 2 + 16),
    ]
};

impl GgmlType {
    /// The block format the compiler knows this type as, for the types it
    /// can dequantise (and, for some, read in place).
    pub fn quant_format(self) -> Option<gllm_kernels::quant::QuantFormat> {
        use gllm_kernels::quant::QuantFormat;
        Some(match self {
            GgmlType::F16 => QuantFormat::F16,
            GgmlType::BF16 => QuantFormat::Bf16,
            GgmlType::Q8_0 => QuantFormat::Q8_0,
            GgmlType::Q4_0 => QuantFormat::Q4_0,
            GgmlType::Q4_1 => QuantFormat::Q4_1,
            GgmlType::Q4_K => QuantFormat::Q4K,
            GgmlType::Q6_K => QuantFormat::Q6K,
            _ => return None,
        })
    }

    /// Every known type, in id order (for tests and listings).
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TABLE.iter().map(|row| row.0)
    }

    /// The type with on-disk id `id`, or `None` for an unknown or retired id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|row| row.1 == id).map(|row| row.0)
    }

    fn row(self) -> &'static (GgmlType, u32, usize, usize) {
        // The table lists the variants in declaration order, one row each
        // (checked by a unit test), so the discriminant is the row index.
        &TABLE[self as usize]
    }

    /// The on-disk id written into GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.row().1
    }

    /// Elements per storage block (1 for plain types, 32 or 256 for most
    /// quantised ones). A tensor's first dimension must be a multiple of it.
    pub fn block_size(self) -> usize {
        self.row().2
    }

    /// Bytes one block occupies in the file.
    pub fn bytes_per_block(self) -> usize {
        self.row().3
    }

    /// ggml's name for the type (`"Q4_1"`, `"BF16"`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "F32",
            F16 => "F16",
            Q4_0 => "Q4_0",
            Q4_1 => "Q4_1",
            Q5_0 => "Q5_0",
            Q5_1 => "Q5_1",
            Q8_0 => "Q8_0",
            Q8_1 => "Q8_1",
            Q2_K => "Q2_K",
            Q3_K => "Q3_K",
            Q4_K => "Q4_K",
            Q5_K => "Q5_K",
            Q6_K => "Q6_K",
            Q8_K => "Q8_K",
            IQ2_XXS => "IQ2_XXS",
            IQ2_XS => "IQ2_XS",
            IQ3_XXS => "IQ3_XXS",
            IQ1_S => "IQ1_S",
            IQ4_NL => "IQ4_NL",
            IQ3_S => "IQ3_S",
            IQ2_S => "IQ2_S",
            IQ4_XS => "IQ4_XS",
            I8 => "I8",
            I16 => "I16",
            I32 => "I32",
            I64 => "I64",
            F64 => "F64",
            IQ1_M => "IQ1_M",
            BF16 => "BF16",
            TQ1_0 => "TQ1_0",
            TQ2_0 => "TQ2_0",
            MXFP4 => "MXFP4",
            NVFP4 => "NVFP4",
            Q1_0 => "Q1_0",
            Q2_0 => "Q2_0",
        }
    }

    /// Bytes that `n_elements` elements occupy, or `None` when `n_elements`
    /// is not a whole number of blocks or the size overflows `u64`.
    pub fn storage_bytes(self, n_elements: u64) -> Option<u64> {
        let block = self.block_size() as u64;
        if n_elements % block != 0 {
            return None;
        }
        (n_elements / block).checked_mul(self.bytes_per_block() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_has_one_row_and_ids_round_trip() {
        for (index, ty) in GgmlType::all().enumerate() {
            assert_eq!(ty as usize, index, "{ty}: table out of declaration order");
            assert_eq!(GgmlType::from_id(ty.id()), Some(ty));
        }
        for retired in [4, 5, 31, 32, 33, 36, 37, 38, 43, u32::MAX] {
            assert_eq!(GgmlType::from_id(retired), None, "{retired}");
        }
    }

    #[test]
    fn geometry_of_the_common_types() {
        assert_eq!((GgmlType::Q4_1.block_size(), GgmlType::Q4_1.bytes_per_block()), (32, 20));
        assert_eq!((GgmlType::Q8_0.block_size(), GgmlType::Q8_0.bytes_per_block()), (32, 34));
        assert_eq!((GgmlType::Q4_K.block_size(), GgmlType::Q4_K.bytes_per_block()), (256, 144));
        assert_eq!((GgmlType::Q6_K.block_size(), GgmlType::Q6_K.bytes_per_block()), (256, 210));
        assert_eq!(GgmlType::BF16.id(), 30);
        assert_eq!(GgmlType::Q8_1.bytes_per_block(), 36, "ggml's block_q8_1: f16 d, f16 s, 32 x i8");
    }
}
