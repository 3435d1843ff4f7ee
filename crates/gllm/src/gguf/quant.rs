//! ggml block formats: how each supported tensor type stores its values, the
//! dequantisers that turn stored bytes back into `f32`, and the quantisers the
//! writer uses.
//!
//! All multi-byte fields are little-endian. "f16" is IEEE binary16, "bf16" the
//! upper half of an IEEE binary32. Every quantised format stores a tensor as a
//! sequence of independent blocks along ne0 (the contiguous dimension), so a
//! tensor's bytes are its rows' bytes one after another.
//!
//! | type | elements / block | bytes / block | layout |
//! |------|------------------|---------------|--------|
//! | F32  | 1   | 4   | binary32 |
//! | F16  | 1   | 2   | binary16 |
//! | BF16 | 1   | 2   | bfloat16: `f32::from_bits(bits << 16)` |
//! | Q4_0 | 32  | 18  | see [`Q4_0_LAYOUT`] |
//! | Q4_1 | 32  | 20  | see [`Q4_1_LAYOUT`] |
//! | Q8_0 | 32  | 34  | see [`Q8_0_LAYOUT`] |
//! | Q4_K | 256 | 144 | see [`Q4_K_LAYOUT`] |
//! | Q6_K | 256 | 210 | see [`Q6_K_LAYOUT`] |
//!
//! The dequantisers evaluate each value with the same f32 operations in the
//! same order as the reference (`gguf` Python package, `quants.py`), so their
//! results are bit-identical to it; this is what the real-model test checks.

use super::ggml_type::GgmlType;
use half::{bf16, f16};

/// Why a block conversion could not be done. These carry no file or tensor
/// name; [`super::GgufError`] adds them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no converter here (yet): e.g. Q5_K or the IQ formats.
    #[error("unsupported tensor type {ty} for {operation}")]
    Unsupported {
        /// The type that was asked for.
        ty: GgmlType,
        /// `"dequantisation"` or `"quantisation"`.
        operation: &'static str,
    },
    /// The element count is not a whole number of blocks.
    #[error("{n_elements} elements are not a whole number of {ty} blocks of {block_size}")]
    NotWholeBlocks {
        /// The block type.
        ty: GgmlType,
        /// Elements requested.
        n_elements: u64,
        /// Elements per block of `ty`.
        block_size: usize,
    },
    /// The byte buffer does not hold exactly `n_elements` elements.
    #[error("{n_elements} elements of {ty} take {expected} bytes, but {actual} bytes were given")]
    WrongByteCount {
        /// The block type.
        ty: GgmlType,
        /// Elements requested.
        n_elements: u64,
        /// Bytes those elements occupy.
        expected: u64,
        /// Bytes supplied.
        actual: usize,
    },
}

/// Q4_0, 32 weights in 18 bytes: `f16 d`, then 16 bytes of 4-bit codes.
/// Byte `j` holds element `j` in its low nibble and element `j + 16` in its
/// high nibble. `w = d · (q − 8)`.
pub const Q4_0_LAYOUT: &str = "f16 d | u8 qs[16]; w[j] = d*((qs[j]&15)-8), w[j+16] = d*((qs[j]>>4)-8)";

/// Q4_1, 32 weights in 20 bytes: `f16 d`, `f16 m`, then 16 bytes of 4-bit
/// codes (low nibbles are elements 0–15, high nibbles 16–31). `w = d·q + m`.
pub const Q4_1_LAYOUT: &str = "f16 d | f16 m | u8 qs[16]; w[j] = d*(qs[j]&15)+m, w[j+16] = d*(qs[j]>>4)+m";

/// Q8_0, 32 weights in 34 bytes: `f16 d`, then 32 `i8` codes. `w = q · d`.
pub const Q8_0_LAYOUT: &str = "f16 d | i8 qs[32]; w[j] = qs[j]*d";

/// Q4_K, a super-block of 256 weights in 144 bytes: `f16 d`, `f16 dmin`,
/// 12 bytes of packed 6-bit scales and mins for 8 sub-blocks of 32, then
/// 128 bytes of 4-bit codes.
///
/// Scales `sc[i]` and mins `m[i]` (6 bits each) are packed in `scales[12]`:
/// for `i < 4`, `sc[i] = scales[i] & 63` and `m[i] = scales[i + 4] & 63`; for
/// `i ≥ 4`, `sc[i] = (scales[i + 4] & 15) | ((scales[i − 4] >> 6) << 4)` and
/// `m[i] = (scales[i + 4] >> 4) | ((scales[i] >> 6) << 4)`.
///
/// Codes: sub-blocks come in pairs sharing 32 bytes; sub-block `2p` takes the
/// low nibbles of `qs[32p .. 32p + 32]` and sub-block `2p + 1` the high ones.
/// Weight `l` of sub-block `i` is `(d·sc[i])·q − dmin·m[i]`.
pub const Q4_K_LAYOUT: &str =
    "f16 d | f16 dmin | u8 scales[12] (6-bit sc/m x8) | u8 qs[128]; w = (d*sc)*q - dmin*m";

/// Q6_K, a super-block of 256 weights in 210 bytes: `u8 ql[128]` (low 4
/// bits), `u8 qh[64]` (high 2 bits), `i8 scales[16]` (one per 16 weights),
/// then `f16 d`.
///
/// For weight `e` (0..256): `h = e / 128`, `r = e % 128`;
/// the low bits are nibble `r / 64` (0 = low, 1 = high) of `ql[64h + r % 64]`,
/// the high bits are bits `2·(r / 32)` and up of `qh[32h + r % 32]`;
/// `q = (low | high << 4) − 32` and `w = (d·scales[e / 16])·q`.
pub const Q6_K_LAYOUT: &str =
    "u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d; q = (ql nibble | qh 2 bits << 4) - 32; w = (d*sc)*q";

/// Splits `bytes` into blocks of `N` bytes. The callers check beforehand that
/// the length is a whole number of blocks, so nothing is dropped.
fn blocks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = &[u8; N]> {
    bytes.chunks_exact(N).filter_map(|chunk| <&[u8; N]>::try_from(chunk).ok())
}

/// The number of `f32` values `n_elements` stands for, after checking that it
/// is a whole number of blocks whose size in bytes is `actual`.
fn checked_count(ty: GgmlType, actual: usize, n_elements: u64) -> Result<usize, QuantError> {
    let expected = ty.storage_bytes(n_elements).ok_or(QuantError::NotWholeBlocks {
        ty,
        n_elements,
        block_size: ty.block_size(),
    })?;
    if expected != actual as u64 {
        return Err(QuantError::WrongByteCount { ty, n_elements, expected, actual });
    }
    // The bytes exist in memory and every supported type spends at least one
    // bit per element, so the count fits in usize.
    usize::try_from(n_elements).map_err(|_| QuantError::WrongByteCount { ty, n_elements, expected, actual })
}

/// Dequantises `n_elements` values of type `ty` stored in `bytes` (exactly
/// `ty.storage_bytes(n_elements)` bytes) into `f32`, in storage order.
///
/// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K; other types give
/// [`QuantError::Unsupported`].
pub fn dequantize(ty: GgmlType, bytes: &[u8], n_elements: u64) -> Result<Vec<f32>, QuantError> {
    let count = checked_count(ty, bytes.len(), n_elements)?;
    if ty == GgmlType::F32 {
        return Ok(blocks::<4>(bytes).map(|b| f32::from_le_bytes(*b)).collect());
    }
    let format = ty.quant_format().ok_or(QuantError::Unsupported { ty, operation: "dequantisation" })?;
    let mut out = vec![0.0f32; count];
    gllm_kernels::quant::dequantize_row(format, bytes, &mut out);
    Ok(out)
}

/// Whether [`dequantize`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    ty == GgmlType::F32 || ty.quant_format().is_some()
}

/// Quantises `values` (a whole number of blocks) into type `ty`, as ggml's
/// reference quantisers do. Supported: F32, F16, BF16 (round to nearest even),
/// Q8_0 and Q4_1 (see [`quantize_q8_0`], [`quantize_q4_1`]).
pub fn quantize(ty: GgmlType, values: &[f32]) -> Result<Vec<u8>, QuantError> {
    let n_elements = values.len() as u64;
    if ty.storage_bytes(n_elements).is_none() {
        return Err(QuantError::NotWholeBlocks { ty, n_elements, block_size: ty.block_size() });
    }
    Ok(match ty {
        GgmlType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        GgmlType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        GgmlType::Q8_0 => value_blocks(values).flat_map(quantize_q8_0).collect(),
        GgmlType::Q4_1 => value_blocks(values).flat_map(quantize_q4_1).collect(),
        GgmlType::Q4_K => values
            .chunks_exact(256)
            .filter_map(|chunk| <&[f32; 256]>::try_from(chunk).ok())
            .flat_map(quantize_q4_k)
            .collect(),
        GgmlType::Q6_K => values
            .chunks_exact(256)
            .filter_map(|chunk| <&[f32; 256]>::try_from(chunk).ok())
            .flat_map(quantize_q6_k)
            .collect(),
        _ => return Err(QuantError::Unsupported { ty, operation: "quantisation" }),
    })
}

/// Splits `values` (a whole number of blocks, checked by the caller) into
/// blocks of 32.
fn value_blocks(values: &[f32]) -> impl Iterator<Item = &[f32; 32]> {
    values.chunks_exact(32).filter_map(|chunk| <&[f32; 32]>::try_from(chunk).ok())
}

/// Quantises one block of 32 values to Q8_0: `d = max|x| / 127` (stored as
/// f16), `q = round(x / d)` rounding halves away from zero, computed with the
/// unrounded `d` as ggml's `quantize_row_q8_0_ref` does. Each value then
/// decodes to within `d/2` plus the f16 rounding of `d` times `|q|`.
pub fn quantize_q8_0(block: &[f32; 32]) -> [u8; 34] {
    let amax = block.iter().fold(0.0f32, |acc, v| acc.max(v.abs()));
    let d = amax / 127.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut out = [0u8; 34];
    let (head, codes) = out.split_at_mut(2);
    head.copy_from_slice(&f16::from_f32(d).to_le_bytes());
    for (code, &value) in codes.iter_mut().zip(block) {
        *code = ((value * inverse).round() as i8) as u8;
    }
    out
}

/// Quantises one block of 32 values to Q4_1: `d = (max − min) / 15` and
/// `m = min` (both stored as f16), `q = min(15, trunc((x − min)/d + 0.5))`,
/// as ggml's `quantize_row_q4_1_ref` does (the codes use the unrounded `d`
/// and `min`). Each value decodes to within `d/2` plus the f16 rounding of
/// `d` and `m`.
pub fn quantize_q4_1(block: &[f32; 32]) -> [u8; 20] {
    let min = block.iter().fold(f32::MAX, |acc, &v| acc.min(v));
    let max = block.iter().fold(-f32::MAX, |acc, &v| acc.max(v));
    let d = (max - min) / 15.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let code = |value: f32| -> u8 {
        // `as u8` truncates towards zero (and saturates), like ggml's (int8_t)
        // cast for the non-negative values that occur here.
        (((value - min) * inverse + 0.5) as u8).min(15)
    };
    let mut out = [0u8; 20];
    let (head, codes) = out.split_at_mut(4);
    head[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    head[2..].copy_from_slice(&f16::from_f32(min).to_le_bytes());
    let (low, high) = block.split_at(16);
    for ((byte, &lo), &hi) in codes.iter_mut().zip(low).zip(high) {
        *byte = code(lo) | (code(hi) << 4);
    }
    out
}

/// Quantises one super-block of 256 values to Q4_K, simply: each sub-block
/// of 32 gets `scale = (max − min)/15` and `min' = −min(0, min)`; the
/// super-block's `d` and `dmin` (f16) are the largest of them over 63, the
/// 6-bit `sc` and `m` the rounded ratios, and each code
/// `q = round((x + dmin·m) / (d·sc))` clamped to 0..=15. (ggml searches
/// for better scales; files it writes load the same way. This exists to
/// make test models.)
pub fn quantize_q4_k(block: &[f32; 256]) -> [u8; 144] {
    let mut scales = [0.0f32; 8];
    let mut mins = [0.0f32; 8];
    for (j, sub) in block.chunks_exact(32).enumerate() {
        let min = sub.iter().fold(0.0f32, |a, &v| a.min(v));
        let max = sub.iter().fold(0.0f32, |a, &v| a.max(v));
        scales[j] = (max - min) / 15.0;
        mins[j] = -min;
    }
    let to_f16 = |v: f32| f16::from_f32(v);
    let d = to_f16(scales.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let dmin = to_f16(mins.iter().fold(0.0f32, |a, &v| a.max(v)) / 63.0);
    let six_bits = |v: f32, unit: f32| if unit > 0.0 { (v / unit).round().clamp(0.0, 63.0) as u8 } else { 0 };
    let sc: [u8; 8] = std::array::from_fn(|j| six_bits(scales[j], d.to_f32()));
    let m: [u8; 8] = std::array::from_fn(|j| six_bits(mins[j], dmin.to_f32()));
    let mut out = [0u8; 144];
    out[..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    // The inverse of `gllm_kernels::quant::q4_k_scales_and_mins`.
    for i in 0..4 {
        out[4 + i] = sc[i] | ((sc[i + 4] >> 4) << 6);
        out[8 + i] = m[i] | ((m[i + 4] >> 4) << 6);
        out[12 + i] = (sc[i + 4] & 15) | ((m[i + 4] & 15) << 4);
    }
    for (j, sub) in block.chunks_exact(32).enumerate() {
        let step = d.to_f32() * f32::from(sc[j]);
        let offset = dmin.to_f32() * f32::from(m[j]);
        let (pair, shift) = (j / 2, 4 * (j % 2));
        for (l, &x) in sub.iter().enumerate() {
            let q = if step > 0.0 { ((x + offset) / step).round().clamp(0.0, 15.0) as u8 } else { 0 };
            out[16 + 32 * pair + l] |= q << shift;
        }
    }
    out
}

/// Quantises one super-block of 256 values to Q6_K, simply: each
/// sub-block of 16 gets `scale = max|x| / 31`; `d` (f16) is the largest
/// |scale| over 127, the `i8` scales the rounded ratios, and each code
/// `q = round(x / (d·sc))` clamped to −32..=31, stored as `q + 32` (low
/// nibbles in `ql`, high 2 bits in `qh`, as `dequantize` reads them). Exists
/// to make test models.
pub fn quantize_q6_k(block: &[f32; 256]) -> [u8; 210] {
    let scales: [f32; 16] =
        std::array::from_fn(|j| block[16 * j..16 * j + 16].iter().fold(0.0f32, |a, v| a.max(v.abs())) / 31.0);
    let d = f16::from_f32(scales.iter().fold(0.0f32, |a, &v| a.max(v)) / 127.0);
    let unit = d.to_f32();
    let sc: [i8; 16] = std::array::from_fn(|j| {
        if unit > 0.0 {
            (scales[j] / unit).round().clamp(-128.0, 127.0) as i8
        } else {
            0
        }
    });
    let mut out = [0u8; 210];
    for (e, &x) in block.iter().enumerate() {
        let step = unit * f32::from(sc[e / 16]);
        let q = if step > 0.0 { (x / step).round().clamp(-32.0, 31.0) as i32 } else { 0 };
        let code = (q + 32) as u8;
        let (h, r) = (e / 128, e % 128);
        out[64 * h + r % 64] |= (code & 0x0F) << (4 * (r / 64));
        out[128 + 32 * h + r % 32] |= (code >> 4) << (2 * (r / 32));
    }
    for (o, &v) in out[192..208].iter_mut().zip(&sc) {
        *o = v as u8;
    }
    out[208..].copy_from_slice(&d.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q6_k_round_trip_is_within_a_step_of_its_sub_block() {
        let block: [f32; 256] =
            std::array::from_fn(|i| ((i * 53 % 97) as f32 - 48.0) * 0.01 * (1 + i / 16) as f32);
        let bytes = quantize_q6_k(&block);
        let back = dequantize(GgmlType::Q6_K, &bytes, 256).unwrap();
        for (sub, (a, b)) in block.chunks_exact(16).zip(back.chunks_exact(16)).enumerate() {
            let amax = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for (x, y) in a.iter().zip(b) {
                // Half a code step (amax/31), plus the rounding of the scale.
                assert!((x - y).abs() <= amax / 31.0, "sub-block {sub}: {x} vs {y} (amax {amax})");
            }
        }
        assert_eq!(quantize(GgmlType::Q6_K, &block).unwrap(), bytes.to_vec());
    }

    #[test]
    fn q4_k_round_trip_is_within_a_step_of_its_sub_block() {
        let block: [f32; 256] =
            std::array::from_fn(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 * (1 + i / 32) as f32);
        let bytes = quantize_q4_k(&block);
        let back = dequantize(GgmlType::Q4_K, &bytes, 256).unwrap();
        for (sub, (a, b)) in block.chunks_exact(32).zip(back.chunks_exact(32)).enumerate() {
            let range = a.iter().fold(0.0f32, |m, &v| m.max(v)) - a.iter().fold(0.0f32, |m, &v| m.min(v));
            for (x, y) in a.iter().zip(b) {
                // Half a code step, plus the 6-bit rounding of the scale and min.
                assert!((x - y).abs() <= range / 15.0, "sub-block {sub}: {x} vs {y} (range {range})");
            }
        }
        assert_eq!(quantize(GgmlType::Q4_K, &block).unwrap(), bytes.to_vec());
    }

    #[test]
    fn q8_0_round_trip_is_within_half_a_step() {
        let block: [f32; 32] = std::array::from_fn(|i| (i as f32 - 13.3) * 0.37);
        let bytes = quantize_q8_0(&block);
        let back = dequantize(GgmlType::Q8_0, &bytes, 32).unwrap();
        let d = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
        for (a, b) in block.iter().zip(&back) {
            assert!((a - b).abs() <= d * 0.5 + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn q4_k_scale_unpacking_matches_the_bit_picture() {
        // scales[0..4] = EEAAAAAA.., scales[4..8] = eeaaaaaa.., scales[8..12] = eeeeEEEE.
        let packed = [0b11_000001, 2, 3, 4, 0b10_000101, 6, 7, 8, 0b1001_0110, 0, 0, 0];
        let (sc, m) = gllm_kernels::quant::q4_k_scales_and_mins(&packed);
        assert_eq!(sc, [1, 2, 3, 4, 0b11_0110, 0, 0, 0]);
        assert_eq!(m, [5, 6, 7, 8, 0b10_1001, 0, 0, 0]);
    }
}
