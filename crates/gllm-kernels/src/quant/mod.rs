//! Block-quantised weight matrices, as the compiler sees them.
//!
//! ```text
//!  stored bytes (ggml block formats, one matrix row after another)
//!     │  QuantMatrix::new      (shape and byte count checked)
//!     ▼
//!  QuantMatrix ──► dequantize_row / row_dot    (scalar references)
//!     │  codegen::quant_gemv::QuantPanels::pack   (kernel layout, once)
//!     ▼
//!  JIT GEMV / dequantising GEMM                 (codegen::quant_gemv)
//! ```
//!
//! A quantised matrix is stored the way model files store a projection:
//! `rows` output features, each a row of `cols` input weights cut into
//! independent blocks along the row. The compiler knows these formats as
//! data layouts only; which file a matrix came from is the front end's
//! business.
//!
//! The scalar functions here are the references every quantised kernel is
//! tested against: [`dequantize_row`] says what a stored row means, and
//! [`row_dot_quantized`] what a kernel computes once the activation vector
//! has been quantised per block of 32 with [`quantize_activation_block`]
//! (the integer path; see `docs/quantised.md`).

use half::{bf16, f16};

/// A block format of stored weights. Multi-byte fields are little-endian;
/// "f16" is IEEE binary16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuantFormat {
    /// IEEE binary16 per element.
    F16,
    /// bfloat16 (the upper half of a binary32) per element.
    Bf16,
    /// 32 weights in 34 bytes: `f16 d | i8 q[32]`; `w = d·q`.
    Q8_0,
    /// 32 weights in 18 bytes: `f16 d | u8 qs[16]`; byte `j` holds element
    /// `j` in its low nibble and `j + 16` in its high nibble; `w = d·(q − 8)`.
    Q4_0,
    /// 32 weights in 20 bytes: `f16 d | f16 m | u8 qs[16]` (nibbles as Q4_0);
    /// `w = d·q + m`.
    Q4_1,
    /// A super-block of 256 weights in 144 bytes: `f16 d | f16 dmin |
    /// u8 scales[12] | u8 qs[128]`; 8 sub-blocks of 32 with 6-bit scales and
    /// mins; `w = (d·sc)·q − dmin·m`.
    Q4K,
    /// A super-block of 256 weights in 210 bytes: `u8 ql[128] | u8 qh[64] |
    /// i8 scales[16] | f16 d`; 6-bit codes; `w = (d·sc)·(q − 32)`.
    Q6K,
}

impl QuantFormat {
    /// Every format, in a fixed order (for tables and tests).
    pub const ALL: [QuantFormat; 7] = [
        QuantFormat::F16,
        QuantFormat::Bf16,
        QuantFormat::Q8_0,
        QuantFormat::Q4_0,
        QuantFormat::Q4_1,
        QuantFormat::Q4K,
        QuantFormat::Q6K,
    ];

    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            QuantFormat::F16 | QuantFormat::Bf16 => 1,
            QuantFormat::Q8_0 | QuantFormat::Q4_0 | QuantFormat::Q4_1 => 32,
            QuantFormat::Q4K | QuantFormat::Q6K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            QuantFormat::F16 | QuantFormat::Bf16 => 2,
            QuantFormat::Q8_0 => 34,
            QuantFormat::Q4_0 => 18,
            QuantFormat::Q4_1 => 20,
            QuantFormat::Q4K => 144,
            QuantFormat::Q6K => 210,
        }
    }

    /// The name model files and llama.cpp use.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::F16 => "F16",
            QuantFormat::Bf16 => "BF16",
            QuantFormat::Q8_0 => "Q8_0",
            QuantFormat::Q4_0 => "Q4_0",
            QuantFormat::Q4_1 => "Q4_1",
            QuantFormat::Q4K => "Q4_K",
            QuantFormat::Q6K => "Q6_K",
        }
    }

    /// Whether the JIT has a kernel that reads this format as stored
    /// (otherwise callers dequantise to f32 once, at load time). Every
    /// format here has one; a format added later may not at first.
    pub fn has_kernel(self) -> bool {
        match self {
            QuantFormat::F16
            | QuantFormat::Bf16
            | QuantFormat::Q8_0
            | QuantFormat::Q4_0
            | QuantFormat::Q4_1
            | QuantFormat::Q4K
            | QuantFormat::Q6K => true,
        }
    }

    /// Bytes of one row of `cols` elements, if `cols` is a whole number of
    /// blocks (and the size fits in memory).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if cols % self.block_elems() != 0 {
            return None;
        }
        (cols / self.block_elems()).checked_mul(self.block_bytes())
    }
}

impl std::fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why stored bytes cannot be read as a quantised matrix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// A row is not a whole number of blocks.
    #[error("a row of {cols} elements is not a whole number of {format} blocks of {block}")]
    NotWholeBlocks { format: QuantFormat, cols: usize, block: usize },
    /// The byte count does not match the shape.
    #[error("{rows}×{cols} {format} takes {expected} bytes, but {actual} were given")]
    WrongByteCount { format: QuantFormat, rows: usize, cols: usize, expected: usize, actual: usize },
}

/// A borrowed quantised matrix: `rows` rows of `cols` elements, each row a
/// run of blocks, rows one after another.
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    format: QuantFormat,
    rows: usize,
    cols: usize,
    bytes: &'a [u8],
}

impl<'a> QuantMatrix<'a> {
    /// Checks that `bytes` holds exactly `rows × cols` elements of `format`.
    pub fn new(format: QuantFormat, rows: usize, cols: usize, bytes: &'a [u8]) -> Result<Self, QuantError> {
        let row = format.row_bytes(cols).ok_or(QuantError::NotWholeBlocks {
            format,
            cols,
            block: format.block_elems(),
        })?;
        let expected = row.saturating_mul(rows);
        if expected != bytes.len() {
            return Err(QuantError::WrongByteCount { format, rows, cols, expected, actual: bytes.len() });
        }
        Ok(QuantMatrix { format, rows, cols, bytes })
    }

    pub fn format(&self) -> QuantFormat {
        self.format
    }

    /// Rows (output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Elements per row (input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The stored bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let len = self.row_bytes();
        &self.bytes[r * len..(r + 1) * len]
    }

    fn row_bytes(&self) -> usize {
        self.bytes.len() / self.rows.max(1)
    }

    /// Row `r` as f32 into `out` (`cols` elements).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        self.dequantize_rows(r, 1, out);
    }

    /// Rows `r0..r0 + count` as f32 into `out` (`count × cols`, row-major).
    pub fn dequantize_rows(&self, r0: usize, count: usize, out: &mut [f32]) {
        let len = self.row_bytes();
        dequantize_row(self.format, &self.bytes[r0 * len..(r0 + count) * len], out);
    }

    /// The whole matrix as f32 (`rows × cols`, row-major).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.dequantize_rows(0, self.rows, &mut out);
        out
    }
}

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Dequantises whole blocks of `format` from `bytes` into `out` (which holds
/// exactly their elements). Each value is computed with the same f32
/// operations in the same order as ggml's reference dequantisers, so the
/// results are bit-identical to them.
pub fn dequantize_row(format: QuantFormat, bytes: &[u8], out: &mut [f32]) {
    let (be, bb) = (format.block_elems(), format.block_bytes());
    debug_assert_eq!(bytes.len() / bb * be, out.len());
    for (block, out) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(be)) {
        match format {
            QuantFormat::F16 => out[0] = f16_at(block),
            QuantFormat::Bf16 => out[0] = bf16::from_le_bytes([block[0], block[1]]).to_f32(),
            QuantFormat::Q8_0 => {
                let d = f16_at(block);
                for (o, &q) in out.iter_mut().zip(&block[2..34]) {
                    *o = f32::from(q as i8) * d;
                }
            }
            QuantFormat::Q4_0 => {
                let d = f16_at(block);
                for (j, &q) in block[2..18].iter().enumerate() {
                    out[j] = d * f32::from((q & 0x0F) as i8 - 8);
                    out[j + 16] = d * f32::from((q >> 4) as i8 - 8);
                }
            }
            QuantFormat::Q4_1 => {
                let (d, m) = (f16_at(block), f16_at(&block[2..]));
                for (j, &q) in block[4..20].iter().enumerate() {
                    out[j] = d * f32::from(q & 0x0F) + m;
                    out[j + 16] = d * f32::from(q >> 4) + m;
                }
            }
            QuantFormat::Q4K => dequantize_q4_k(block, out),
            QuantFormat::Q6K => dequantize_q6_k(block, out),
        }
    }
}

/// Unpacks the 8 six-bit scales and 8 six-bit mins of a Q4_K super-block:
/// for `i < 4`, `sc[i] = p[i] & 63`, `m[i] = p[i + 4] & 63`; for `i ≥ 4`,
/// `sc[i] = (p[i + 4] & 15) | (p[i − 4] >> 6) << 4` and
/// `m[i] = (p[i + 4] >> 4) | (p[i] >> 6) << 4`.
pub fn q4_k_scales_and_mins(packed: &[u8]) -> ([u8; 8], [u8; 8]) {
    let mut scales = [0u8; 8];
    let mut mins = [0u8; 8];
    for i in 0..4 {
        scales[i] = packed[i] & 63;
        mins[i] = packed[i + 4] & 63;
        scales[i + 4] = (packed[i + 8] & 15) | ((packed[i] >> 6) << 4);
        mins[i + 4] = (packed[i + 8] >> 4) | ((packed[i + 4] >> 6) << 4);
    }
    (scales, mins)
}

/// Sub-blocks come in pairs sharing 32 bytes of codes: sub-block `2p` takes
/// the low nibbles of `qs[32p..32p + 32]`, `2p + 1` the high ones.
fn dequantize_q4_k(block: &[u8], out: &mut [f32]) {
    let (d, dmin) = (f16_at(block), f16_at(&block[2..]));
    let (scales, mins) = q4_k_scales_and_mins(&block[4..16]);
    for (pair, codes) in block[16..144].chunks_exact(32).enumerate() {
        for (half, shift) in [(0, 0), (1, 4)] {
            let sub = 2 * pair + half;
            let scale = d * f32::from(scales[sub]);
            let min = dmin * f32::from(mins[sub]);
            for (o, &q) in out[sub * 32..sub * 32 + 32].iter_mut().zip(codes) {
                *o = scale * f32::from((q >> shift) & 0x0F) - min;
            }
        }
    }
}

/// For weight `e`: `h = e / 128`, `r = e % 128`; low bits are nibble `r / 64`
/// of `ql[64h + r % 64]`, high bits are bits `2·(r / 32)`.. of
/// `qh[32h + r % 32]`; `q = (low | high << 4) − 32`.
fn dequantize_q6_k(block: &[u8], out: &mut [f32]) {
    let d = f16_at(&block[208..]);
    for (e, o) in out.iter_mut().enumerate() {
        let q = q6_k_code(block, e) as i8 - 32;
        let scale = d * f32::from(block[192 + e / 16] as i8);
        *o = scale * f32::from(q);
    }
}

/// The stored 6-bit code (0..=63, before the −32 offset) of element `e` of
/// a Q6_K super-block, as the dequantiser above reads it.
pub fn q6_k_code(block: &[u8], e: usize) -> u8 {
    let (ql, qh) = (&block[..128], &block[128..192]);
    let (h, r) = (e / 128, e % 128);
    let low = (ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0F;
    let high = (qh[32 * h + r % 32] >> (2 * (r / 32))) & 0x03;
    low | (high << 4)
}

/// Elements per block of a quantised activation vector (the integer path).
pub const ACT_BLOCK: usize = 32;

/// How finely the integer path quantises activations (per block of 32).
///
/// `Int8` is what llama.cpp does (`q8_1`): fastest, and the same rounding
/// as llama.cpp on the same file — but it moves SmolLM2's logits by up to
/// ~1 against exact arithmetic, enough to change greedy text at near ties.
/// `Int16` quantises to 16 bits (`d = max|x| / 32512`), 256× finer, and
/// feeds `vpmaddubsw` the value as two signed base-255 digits
/// (`q = 255·hi + lo`, both in −127..=127), so every product stays an exact
/// integer: the decode logits follow exact arithmetic's to ~1e-3, for about
/// 1.4× the kernel instructions per weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ActivationPrecision {
    /// `d = max|x| / 127`, one signed byte per value: llama.cpp's `q8_1`.
    #[default]
    Int8,
    /// `d = max|x| / 32512`, two signed base-255 digits per value.
    Int16,
}

impl ActivationPrecision {
    /// The largest quantised magnitude: `d = max|x| / this`.
    pub fn levels(self) -> f32 {
        match self {
            ActivationPrecision::Int8 => 127.0,
            ActivationPrecision::Int16 => 32512.0,
        }
    }

    /// The name the CLI and docs use.
    pub fn name(self) -> &'static str {
        match self {
            ActivationPrecision::Int8 => "int8",
            ActivationPrecision::Int16 => "int16",
        }
    }
}

impl std::fmt::Display for ActivationPrecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ActivationPrecision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "int8" => Ok(ActivationPrecision::Int8),
            "int16" => Ok(ActivationPrecision::Int16),
            other => Err(format!("unknown activation precision {other:?} (int8 or int16)")),
        }
    }
}

/// One block of 32 activations quantised to integers. At
/// [`ActivationPrecision::Int8`] as ggml's `quantize_row_q8_1` does:
/// `d = max|x| / 127`, `q = round(x / d)` (halves to even, as its AVX2
/// version rounds; with the reciprocal of the unrounded `d`), `s = d·Σq`;
/// at `Int16` the same with `d = max|x| / 32512`.
/// Non-finite input is the caller's business (the result is then undefined
/// but memory-safe).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActivationBlock {
    pub d: f32,
    pub q: [i16; ACT_BLOCK],
    /// `d · Σ q`: what the block's elements sum to after quantisation.
    pub s: f32,
}

impl ActivationBlock {
    /// Element `k` as the `Int16` kernels' two base-255 digits `(hi, lo)`:
    /// `q = 255·hi + lo`, both in −127..=127 (an `Int8` block's `hi` is 0).
    pub fn digits(&self, k: usize) -> (i8, i8) {
        let q = i32::from(self.q[k]);
        // hi = q / 255 rounded to nearest, so lo = q − 255·hi is in
        // −127..=127; |q| ≤ 32512 = 255·127 + 127 keeps hi in range too.
        let hi = (q + 127 * q.signum()) / 255;
        (hi as i8, (q - 255 * hi) as i8)
    }
}

/// Quantises `x` (at most 32 values; a short tail is padded with zeros) at
/// [`ActivationPrecision::Int8`].
pub fn quantize_activation_block(x: &[f32]) -> ActivationBlock {
    quantize_activation_block_at(x, ActivationPrecision::Int8)
}

/// Quantises `x` (at most 32 values; a short tail is padded with zeros).
pub fn quantize_activation_block_at(x: &[f32], precision: ActivationPrecision) -> ActivationBlock {
    #[cfg(target_arch = "x86_64")]
    if let Ok(full) = <&[f32; ACT_BLOCK]>::try_from(x) {
        if simd::available() {
            // SAFETY: the CPU has AVX2 (checked just above).
            return unsafe { simd::quantize_block(full, precision.levels()) };
        }
    }
    quantize_block_scalar(x, precision)
}

/// [`quantize_activation_block_at`] in scalar code (any CPU, short blocks).
fn quantize_block_scalar(x: &[f32], precision: ActivationPrecision) -> ActivationBlock {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / precision.levels();
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut q = [0i16; ACT_BLOCK];
    let mut sum = 0i32;
    // Round half to even by adding and subtracting 1.5·2²³ (exact for
    // |v·inverse| ≤ 2²²): what ggml's AVX2 path does with
    // `_mm256_round_ps`, and it vectorises, where `f32::round` is a libm
    // call per element (3 % of a decode step when it was). The clamp only
    // catches a product that rounds a hair past the top level.
    const ROUNDER: f32 = 12_582_912.0;
    let top = precision.levels();
    for (q, &v) in q.iter_mut().zip(x) {
        *q = ((v * inverse + ROUNDER) - ROUNDER).clamp(-top, top) as i16;
        sum += i32::from(*q);
    }
    ActivationBlock { d, q, s: d * sum as f32 }
}

/// [`quantize_activation_block_at`] for a whole block in AVX2: the same
/// operations on eight lanes (`vroundps` to nearest-even is the scalar
/// path's add-and-subtract of 1.5·2²³), so the same block for finite input.
/// Decode quantises every activation row with it (~4 ns per value in
/// scalar SSE2 code, the crate's baseline).
#[cfg(target_arch = "x86_64")]
mod simd {
    use super::{ActivationBlock, ACT_BLOCK};
    use std::arch::x86_64::*;

    pub fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2"))
    }

    /// # Safety
    /// The CPU has AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_block(x: &[f32; ACT_BLOCK], top: f32) -> ActivationBlock {
        // SAFETY: four loads of eight values inside the 32-value block; the
        // stores fill local arrays of the same sizes.
        unsafe {
            let v = [0, 8, 16, 24].map(|i| _mm256_loadu_ps(x.as_ptr().add(i)));
            let sign = _mm256_set1_ps(-0.0);
            // max(|v|, m) returns m when |v| is NaN: NaN is skipped, as
            // `f32::max` skips it.
            let mut m = _mm256_setzero_ps();
            for &v in &v {
                m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
            }
            let mut lanes = [0.0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), m);
            let amax = lanes.iter().fold(0.0f32, |a, &l| a.max(l));
            let d = amax / top;
            let inverse = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
            let (hi, lo) = (_mm256_set1_ps(top), _mm256_set1_ps(-top));
            let mut ints = [0i32; ACT_BLOCK];
            let mut sum = _mm256_setzero_si256();
            for (i, &v) in v.iter().enumerate() {
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                    v, inverse,
                ));
                let q = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(r, hi), lo));
                sum = _mm256_add_epi32(sum, q);
                _mm256_storeu_si256(ints.as_mut_ptr().add(8 * i).cast(), q);
            }
            let mut sums = [0i32; 8];
            _mm256_storeu_si256(sums.as_mut_ptr().cast(), sum);
            let sum: i32 = sums.iter().sum();
            ActivationBlock { d, q: ints.map(|q| q as i16), s: d * sum as f32 }
        }
    }
}

/// What a stored row means, dotted with `x`: `Σ dequantised(w)ᵢ·xᵢ`,
/// accumulated in f64 (the reference for the f32-activation meaning).
pub fn row_dot(format: QuantFormat, row: &[u8], x: &[f32]) -> f64 {
    let mut w = vec![0.0f32; x.len()];
    dequantize_row(format, row, &mut w);
    w.iter().zip(x).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum()
}

/// The integer path's exact result for one stored row and a quantised
/// activation vector (`cols / 32` blocks), in f64: per block
/// `d_w·d_x·Σ q_w·q_x` plus the format's offset term (`m·s_x` for Q4_1,
/// `−8·d_w·s_x` for Q4_0; per sub-block `d·sc·d_x·Σ q_w·q_x − dmin·m·s_x`
/// for Q4_K; per sub-block of 16 `d·sc·d_x·Σ (q_w − 32)·q_x` for Q6_K). A
/// kernel differs from `value` only by the f32
/// rounding of its per-block products and of its running sum, which is at
/// most a few ε·`magnitude` (the sum of the products' absolute values).
pub fn row_dot_quantized(format: QuantFormat, row: &[u8], x: &[ActivationBlock]) -> QuantizedDot {
    let bb = format.block_bytes();
    let mut dot = QuantizedDot { value: 0.0, magnitude: 0.0 };
    if format == QuantFormat::Q4K {
        // Per sub-block of 32: `d·sc·Σ q_w·q_x·d_x − dmin·m·s_x`.
        for (block, x) in row.chunks_exact(bb).zip(x.chunks(8)) {
            let (d, dmin) = (f64::from(f16_at(block)), f64::from(f16_at(&block[2..])));
            let (scales, mins) = q4_k_scales_and_mins(&block[4..16]);
            for (sub, a) in x.iter().enumerate() {
                let codes = &block[16 + 32 * (sub / 2)..16 + 32 * (sub / 2) + 32];
                let shift = 4 * (sub % 2);
                let (sum, abs) = codes.iter().zip(a.q.iter()).fold((0.0, 0.0), |(s, m), (&w, &q)| {
                    let p = f64::from(i32::from((w >> shift) & 15) * i32::from(q));
                    (s + p, m + p.abs())
                });
                let scale = d * f64::from(scales[sub]) * f64::from(a.d);
                let offset = -dmin * f64::from(mins[sub]) * f64::from(a.s);
                dot.value += scale * sum + offset;
                dot.magnitude += scale.abs() * abs + offset.abs();
            }
        }
        return dot;
    }
    if format == QuantFormat::Q6K {
        // Per sub-block of 16: `d·sc·d_x·Σ (code − 32)·q_x`.
        for (block, x) in row.chunks_exact(bb).zip(x.chunks(8)) {
            let (scales, d) = (&block[192..208], f64::from(f16_at(&block[208..])));
            let code = |e: usize| i32::from(q6_k_code(block, e)) - 32;
            for (blk, a) in x.iter().enumerate() {
                for sub in 0..2 {
                    let e0 = 32 * blk + 16 * sub;
                    let (sum, abs) = (0..16).fold((0.0, 0.0), |(s, m), l| {
                        let p = f64::from(code(e0 + l) * i32::from(a.q[16 * sub + l]));
                        (s + p, m + p.abs())
                    });
                    let scale = d * f64::from(scales[e0 / 16] as i8) * f64::from(a.d);
                    dot.value += scale * sum;
                    dot.magnitude += scale.abs() * abs;
                }
            }
        }
        return dot;
    }
    for (block, a) in row.chunks_exact(bb).zip(x) {
        // (Σ q_w·q_x, Σ |q_w·q_x|): a kernel's lanes hold partial sums,
        // whose rounding scales with the second.
        let isum = |codes: &mut dyn Iterator<Item = i32>| -> (f64, f64) {
            codes.zip(a.q.iter()).fold((0.0, 0.0), |(s, m), (w, &q)| {
                let p = f64::from(w * i32::from(q));
                (s + p, m + p.abs())
            })
        };
        let (d, dx) = (f64::from(f16_at(block)), f64::from(a.d));
        let ((sum, abs), offset) = match format {
            QuantFormat::Q8_0 => (isum(&mut block[2..34].iter().map(|&q| i32::from(q as i8))), 0.0),
            QuantFormat::Q4_0 | QuantFormat::Q4_1 => {
                let codes = if format == QuantFormat::Q4_0 { &block[2..18] } else { &block[4..20] };
                let mut nibbles =
                    codes.iter().map(|&q| i32::from(q & 15)).chain(codes.iter().map(|&q| i32::from(q >> 4)));
                let offset = if format == QuantFormat::Q4_0 {
                    -8.0 * d * f64::from(a.s)
                } else {
                    f64::from(f16_at(&block[2..])) * f64::from(a.s)
                };
                (isum(&mut nibbles), offset)
            }
            other => panic!("row_dot_quantized: {other} has no integer path"),
        };
        dot.value += d * dx * sum + offset;
        dot.magnitude += (d * dx).abs() * abs + offset.abs();
    }
    dot
}

/// [`row_dot_quantized`]'s result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizedDot {
    pub value: f64,
    /// Σ |term|: the scale of the rounding error an f32 kernel may add.
    pub magnitude: f64,
}

/// A bound on how far the integer path may land from [`row_dot`] because the
/// activations were quantised: each `xᵢ` moves by at most `d_x/2`, so the
/// dot moves by at most `Σ_blocks (d_x/2)·Σᵢ|wᵢ|` (plus f32 rounding, which
/// callers add).
pub fn activation_quantisation_bound(format: QuantFormat, row: &[u8], x: &[ActivationBlock]) -> f64 {
    let mut w = vec![0.0f32; x.len() * ACT_BLOCK];
    dequantize_row(format, row, &mut w);
    w.chunks_exact(ACT_BLOCK)
        .zip(x)
        .map(|(w, a)| f64::from(a.d) * 0.5 * w.iter().map(|v| f64::from(v.abs())).sum::<f64>())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int16_digits_cover_every_level_exactly() {
        let mut block = quantize_activation_block_at(&[], ActivationPrecision::Int16);
        for q in -32512..=32512i32 {
            block.q[0] = q as i16;
            let (hi, lo) = block.digits(0);
            assert!(hi != i8::MIN && lo != i8::MIN, "{q}: digits {hi}, {lo} (−128 breaks vpsignb)");
            assert_eq!(255 * i32::from(hi) + i32::from(lo), q);
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx2_block_quantiser_equals_the_scalar_one() {
        if !simd::available() {
            eprintln!("SKIPPED: the AVX2 block quantiser (the CPU lacks AVX2)");
            return;
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut blocks: Vec<[f32; ACT_BLOCK]> = Vec::new();
        for scale in [1.0f32, 1e-3, 3e-39, 1e-44, 6e4, 1e30] {
            for _ in 0..200 {
                blocks.push(std::array::from_fn(|_| scale * ((next() % 20001) as f32 / 10000.0 - 1.0)));
            }
        }
        // Exact ties (k + ½ levels), zeros, one non-zero, a NaN among values.
        blocks.push(std::array::from_fn(|i| if i == 0 { 127.0 } else { i as f32 + 0.5 }));
        blocks.push(std::array::from_fn(|i| if i == 0 { -32512.0 } else { -(i as f32) - 0.5 }));
        blocks.push([0.0; ACT_BLOCK]);
        blocks.push(std::array::from_fn(|i| if i == 7 { -2.5 } else { 0.0 }));
        // A NaN in the last vector, in the lane of the largest value.
        blocks.push(std::array::from_fn(|i| match i {
            27 => f32::NAN,
            19 => 100.0,
            _ => i as f32,
        }));
        for x in &blocks {
            for precision in [ActivationPrecision::Int8, ActivationPrecision::Int16] {
                let want = quantize_block_scalar(x, precision);
                // SAFETY: the CPU has AVX2 (checked above).
                let got = unsafe { simd::quantize_block(x, precision.levels()) };
                if x.iter().all(|v| v.is_finite()) {
                    assert_eq!(got, want, "{precision} {x:?}");
                } else {
                    // Non-finite input: only the finite elements' levels are defined.
                    assert_eq!(got.d, want.d);
                    for (i, v) in x.iter().enumerate().filter(|(_, v)| v.is_finite()) {
                        assert_eq!(got.q[i], want.q[i], "{precision} element {i} = {v}");
                    }
                }
            }
        }
    }

    #[test]
    fn activation_levels_stay_in_range_and_round_to_nearest() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 15.3) * 0.37).collect();
        for precision in [ActivationPrecision::Int8, ActivationPrecision::Int16] {
            let b = quantize_activation_block_at(&x, precision);
            let top = precision.levels() as i16;
            assert!(b.q.iter().all(|q| (-top..=top).contains(q)));
            assert!(b.q.iter().any(|q| q.abs() == top), "{precision}: the largest |x| maps to the top level");
            for (q, v) in b.q.iter().zip(&x) {
                assert!((f32::from(*q) * b.d - v).abs() <= 0.5001 * b.d, "{precision}: {v} → {q}");
            }
        }
    }
}
