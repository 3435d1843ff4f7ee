//! The stored-format kernels' data layouts: how a weight row is reordered
//! into groups of 256 and tail records at load time, how an activation row
//! is quantised to match, and how the records dequantise back to f32. Every
//! kernel ISA reads these same layouts.

use crate::quant::{
    quantize_activation_block_at, ActivationBlock, ActivationPrecision, QuantFormat, ACT_BLOCK,
};

/// Blocks of 32 one group holds (a K-quant super-block is one group).
pub(super) const GROUP_BLOCKS: usize = 8;

/// Bytes of one tail record (a pair of blocks, or 8 F16/BF16 elements);
/// the K-quants have none (their rows are whole super-blocks).
pub(super) fn record_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_0 => 36,
        QuantFormat::Q4_1 => 40,
        QuantFormat::Q8_0 => 68,
        QuantFormat::F16 | QuantFormat::Bf16 => 16,
        QuantFormat::Q4K | QuantFormat::Q6K => 0,
    }
}

/// Whether `format` runs the float path (f32 activations).
pub(super) fn is_float(format: QuantFormat) -> bool {
    matches!(format, QuantFormat::F16 | QuantFormat::Bf16)
}

/// Elements of one tail record.
pub(super) fn record_elems(format: QuantFormat) -> usize {
    if is_float(format) {
        8
    } else {
        2 * ACT_BLOCK
    }
}

/// Bytes of one group of 256 weights (the file's bytes, reordered; Q4_K
/// and Q6_K keep their f16 super-block scales as f32).
pub(super) fn group_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q4_0 => 144,
        QuantFormat::Q4_1 => 160,
        QuantFormat::Q8_0 => 272,
        QuantFormat::Q4K => 152,
        QuantFormat::Q6K => 212,
        QuantFormat::F16 | QuantFormat::Bf16 => 0,
    }
}

/// Integer digits per activation: `Int16` values are two base-255 digits.
pub(super) fn digits(precision: ActivationPrecision) -> usize {
    match precision {
        ActivationPrecision::Int8 => 1,
        ActivationPrecision::Int16 => 2,
    }
}

/// Where the parts of one unit of quantised activations lie: a group of
/// 256 (a half group of 128 for Q6_K) or a tail record. The integer
/// values come first, one copy per digit (`Int16`: the high digits, then
/// the low ones `digit` bytes later), then the `dx` vector, and for the
/// 4-bit formats `c·s` (Q6_K: `−32·Σq` as i32, before `dx`; Q8_0 groups:
/// `−128·Σq` as i32, after it).
#[derive(Debug, Clone, Copy)]
pub(super) struct ActParts {
    pub(super) digit: i32,
    pub(super) dx: i32,
    pub(super) extra: i32,
    pub(super) bytes: usize,
}

impl ActParts {
    pub(super) fn group(format: QuantFormat, precision: ActivationPrecision) -> ActParts {
        let n = digits(precision) as i32;
        match format {
            QuantFormat::Q6K => {
                ActParts { digit: 128, extra: 128 * n, dx: 128 * n + 32, bytes: 128 * n as usize + 64 }
            }
            QuantFormat::Q8_0 => {
                ActParts { digit: 256, dx: 256 * n, extra: 256 * n + 32, bytes: 256 * n as usize + 64 }
            }
            QuantFormat::F16 | QuantFormat::Bf16 => ActParts { digit: 0, dx: 0, extra: 0, bytes: 0 },
            _ => ActParts { digit: 256, dx: 256 * n, extra: 256 * n + 32, bytes: 256 * n as usize + 64 },
        }
    }

    pub(super) fn record(format: QuantFormat, precision: ActivationPrecision) -> ActParts {
        let n = digits(precision) as i32;
        match format {
            QuantFormat::Q8_0 => ActParts { digit: 64, dx: 64 * n, extra: 0, bytes: 64 * n as usize + 32 },
            QuantFormat::F16 | QuantFormat::Bf16 => ActParts { digit: 0, dx: 0, extra: 0, bytes: 32 },
            QuantFormat::Q4K | QuantFormat::Q6K => ActParts { digit: 0, dx: 0, extra: 0, bytes: 0 },
            _ => ActParts { digit: 64, dx: 64 * n, extra: 64 * n + 32, bytes: 64 * n as usize + 64 },
        }
    }
}

/// Bytes of one group of 256 quantised activations.
pub(super) fn act_group_bytes(format: QuantFormat, precision: ActivationPrecision) -> usize {
    let parts = ActParts::group(format, precision).bytes;
    if format == QuantFormat::Q6K {
        2 * parts
    } else {
        parts
    }
}

/// Byte of element `k` of block `j` in a group's 256 int8 codes (Q8_0
/// weights, every activation group): vector `k / 4`, lane `j`, so that a
/// `vpmaddubsw` + `vpmaddwd` leaves block `j`'s partial sum in i32 lane `j`.
pub(super) fn lane_byte(j: usize, k: usize) -> usize {
    32 * (k / 4) + 4 * j + k % 4
}

/// Byte and shift of element `k` of block `j` in a group's 128 bytes of
/// 4-bit codes. With `v = k / 4` the activation vector ([`lane_byte`]),
/// each 64 bytes hold vectors `4c .. 4c + 4`: 32-byte half `h` keeps vector
/// `4c + h` in its low nibbles and `4c + 2 + h` in its high ones. A 256-bit
/// load's two vectors are then 64 bytes apart in the activations, and a
/// 512-bit load's low nibbles are vectors `4c, 4c + 1` and its high
/// nibbles `4c + 2, 4c + 3` — each pair adjacent, one 512-bit operand.
pub(super) fn nibble_at(j: usize, k: usize) -> (usize, u32) {
    let v = k / 4;
    let (c, h, high) = (v / 4, v % 2, (v / 2) % 2);
    (64 * c + 32 * h + 4 * j + k % 4, 4 * high as u32)
}

/// How a row of `cols` elements is stored: whole groups of 256 first, then
/// tail records for the blocks left over (a pair padded with a zero block
/// when their count is odd); F16/BF16 rows are all tail records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowShape {
    pub(super) groups: usize,
    pub(super) tail: usize,
}

impl RowShape {
    pub(super) fn new(format: QuantFormat, cols: usize) -> RowShape {
        if is_float(format) {
            return RowShape { groups: 0, tail: cols.div_ceil(record_elems(format)) };
        }
        let blocks = cols.div_ceil(ACT_BLOCK);
        let groups = blocks / GROUP_BLOCKS;
        let tail = if record_bytes(format) == 0 { 0 } else { (blocks - GROUP_BLOCKS * groups).div_ceil(2) };
        RowShape { groups, tail }
    }

    pub(super) fn weight_bytes(self, format: QuantFormat) -> usize {
        self.groups * group_bytes(format) + self.tail * record_bytes(format)
    }

    pub(super) fn act_bytes(self, format: QuantFormat, precision: ActivationPrecision) -> usize {
        self.groups * act_group_bytes(format, precision)
            + self.tail * ActParts::record(format, precision).bytes
    }
}

/// Where element `e` (0..256) of a Q6_K super-block lives in its group:
/// its lane byte `at` and vector `v` (0..4). Half `H` of the super-block is
/// three 32-byte vectors X, Y, Z at `20 + 96·H`; byte `4j + t` of each is
/// lane `t` of sub-block `8H + j`. Vectors 0–2 keep their 6-bit codes in
/// bits 0–5 of X, Y, Z; vector 3's code is split two bits at a time into
/// bits 6–7 of X, Y and Z. The kernel then needs one mask per vector for
/// vectors 0–2 and three shift-and-masks for vector 3, where a nibble plus
/// 2-bit-high layout needed a shift and two masks per vector.
pub(super) fn q6_k_at(e: usize) -> (usize, usize) {
    let sub = e / 16;
    let (half, j, k) = (sub / 8, sub % 8, e % 16);
    (20 + 96 * half + 4 * j + k % 4, k / 4)
}

/// Stores Q6_K code `code` (0..64) of element `e` into group `g` ([`q6_k_at`]).
pub(super) fn q6_k_put(g: &mut [u8], e: usize, code: u8) {
    let (at, v) = q6_k_at(e);
    if v < 3 {
        g[at + 32 * v] |= code & 0x3F;
    } else {
        for p in 0..3 {
            g[at + 32 * p] |= ((code >> (2 * p)) & 3) << 6;
        }
    }
}

/// The Q6_K code (0..64) of element `e` of group `g` ([`q6_k_at`]).
pub(super) fn q6_k_get(g: &[u8], e: usize) -> u8 {
    let (at, v) = q6_k_at(e);
    if v < 3 {
        g[at + 32 * v] & 0x3F
    } else {
        (0..3).fold(0, |code, p| code | ((g[at + 32 * p] >> 6) << (2 * p)))
    }
}

/// One stored row in the kernel's layout (`out` zeroed): F16/BF16 as
/// stored; otherwise each 256 weights as a group, then the blocks left over
/// as pair records `qs0 qs1 d0 d1 (m0 m1)`.
///
/// Groups: Q4_0/Q4_1 `codes[128] d[8] (m[8])` (f16 scales), Q8_0
/// `codes[256] d[8]`, Q4_K `f32 d, f32 −dmin, sc[8], m[8], codes[128]`
/// (the 6-bit scales unpacked), Q6_K `f32 d, sc[16] (i8), codes[192]`;
/// codes in the orders of [`lane_byte`], [`nibble_at`] and [`q6_k_at`].
pub(super) fn pack_row(format: QuantFormat, shape: RowShape, row: &[u8], out: &mut [u8]) {
    if is_float(format) {
        out[..row.len()].copy_from_slice(row);
        return;
    }
    let f16_at = |b: &[u8], i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let (groups, tail) = out.split_at_mut(shape.groups * group_bytes(format));
    let group_src = GROUP_BLOCKS * ACT_BLOCK / format.block_elems() * format.block_bytes();
    for (src, g) in row.chunks_exact(group_src).zip(groups.chunks_exact_mut(group_bytes(format))) {
        match format {
            QuantFormat::Q4K => {
                g[..4].copy_from_slice(&f16_at(src, 0).to_le_bytes());
                g[4..8].copy_from_slice(&(-f16_at(src, 2)).to_le_bytes());
                let (scales, mins) = crate::quant::q4_k_scales_and_mins(&src[4..16]);
                g[8..16].copy_from_slice(&scales);
                g[16..24].copy_from_slice(&mins);
                // Sub-block j: the low (even j) or high nibbles of the
                // file's 32 bytes at 16 + 32·(j / 2).
                for j in 0..8 {
                    for k in 0..32 {
                        let q = (src[16 + 32 * (j / 2) + k] >> (4 * (j % 2))) & 0x0F;
                        let (byte, shift) = nibble_at(j, k);
                        g[24 + byte] |= q << shift;
                    }
                }
            }
            QuantFormat::Q6K => {
                g[..4].copy_from_slice(&f16_at(src, 208).to_le_bytes());
                g[4..20].copy_from_slice(&src[192..208]);
                for e in 0..256 {
                    q6_k_put(g, e, crate::quant::q6_k_code(src, e));
                }
            }
            _ => {
                let bb = format.block_bytes();
                for (j, block) in src.chunks_exact(bb).enumerate() {
                    if format == QuantFormat::Q8_0 {
                        for k in 0..32 {
                            g[lane_byte(j, k)] = block[2 + k];
                        }
                        g[256 + 2 * j..258 + 2 * j].copy_from_slice(&block[..2]);
                        continue;
                    }
                    // The file's byte i: element i low, i + 16 high.
                    let codes = &block[bb - 16..];
                    for k in 0..32 {
                        let q = if k < 16 { codes[k] & 0x0F } else { codes[k - 16] >> 4 };
                        let (byte, shift) = nibble_at(j, k);
                        g[byte] |= q << shift;
                    }
                    g[128 + 2 * j..130 + 2 * j].copy_from_slice(&block[..2]);
                    if format == QuantFormat::Q4_1 {
                        g[144 + 2 * j..146 + 2 * j].copy_from_slice(&block[2..4]);
                    }
                }
            }
        }
    }
    // Tail records: the blocks after the groups, two per record.
    let (bb, rec) = (format.block_bytes(), record_bytes(format));
    let (head, codes) = match format {
        QuantFormat::Q4_1 => (4, 16),
        QuantFormat::Q4_0 => (2, 16),
        _ => (2, 32),
    };
    let left = &row[shape.groups * group_src..];
    for (b, block) in left.chunks_exact(bb).enumerate() {
        let (p, half) = (b / 2, b % 2);
        let rec = &mut tail[p * rec..(p + 1) * rec];
        rec[half * codes..(half + 1) * codes].copy_from_slice(&block[head..head + codes]);
        let scales = 2 * codes;
        rec[scales + 2 * half..scales + 2 * half + 2].copy_from_slice(&block[..2]);
        if format == QuantFormat::Q4_1 {
            rec[scales + 4 + 2 * half..scales + 6 + 2 * half].copy_from_slice(&block[2..4]);
        }
    }
}

/// One group of 256 weights back to f32, with the reference dequantiser's
/// operations (so prompt processing sees the file's values bit for bit).
pub(super) fn dequantize_group(format: QuantFormat, g: &[u8], out: &mut [f32]) {
    let f16_at = |i: usize| half::f16::from_le_bytes([g[i], g[i + 1]]).to_f32();
    let f32_at = |i: usize| f32::from_le_bytes([g[i], g[i + 1], g[i + 2], g[i + 3]]);
    // Block j's 32 codes from the group's 4-bit code bytes at `at`.
    let nibbles = |at: usize, j: usize| -> [u8; ACT_BLOCK] {
        std::array::from_fn(|k| {
            let (byte, shift) = nibble_at(j, k);
            (g[at + byte] >> shift) & 0x0F
        })
    };
    if format == QuantFormat::Q6K {
        for (sub, out) in out.chunks_exact_mut(16).enumerate() {
            let scale = f32_at(0) * f32::from(g[4 + sub] as i8);
            for (k, o) in out.iter_mut().enumerate() {
                *o = scale * f32::from(q6_k_get(g, 16 * sub + k) as i8 - 32);
            }
        }
        return;
    }
    for (j, out) in out.chunks_exact_mut(ACT_BLOCK).enumerate() {
        match format {
            QuantFormat::Q8_0 => {
                let d = f16_at(256 + 2 * j);
                for (k, o) in out.iter_mut().enumerate() {
                    *o = f32::from(g[32 * (k / 4) + 4 * j + k % 4] as i8) * d;
                }
            }
            QuantFormat::Q4_1 => {
                let (d, m) = (f16_at(128 + 2 * j), f16_at(144 + 2 * j));
                for (o, q) in out.iter_mut().zip(nibbles(0, j)) {
                    *o = d * f32::from(q) + m;
                }
            }
            QuantFormat::Q4K => {
                // The reference's `d·sc·q − dmin·m`, bit for bit:
                // (−dmin)·m is −(dmin·m) exactly.
                let (scale, min) = (f32_at(0) * f32::from(g[8 + j]), f32_at(4) * f32::from(g[16 + j]));
                for (o, q) in out.iter_mut().zip(nibbles(24, j)) {
                    *o = scale * f32::from(q) + min;
                }
            }
            _ => {
                let d = f16_at(128 + 2 * j);
                for (o, q) in out.iter_mut().zip(nibbles(0, j)) {
                    *o = d * f32::from(q as i8 - 8);
                }
            }
        }
    }
}

/// `−offset·Σq` as little-endian i32 bytes: what a kernel subtracts when it
/// multiplies codes stored as `w + offset` (Q6_K's `+32`, AVX-512 Q8_0's
/// `+128`) by the activations `q`, so the integer dot product is `Σw·q`
/// exactly.
fn code_offset_correction(q: &[i16], offset: i32) -> [u8; 4] {
    let sum: i32 = q.iter().map(|&v| i32::from(v)).sum();
    (-offset * sum).to_le_bytes()
}

/// Writes `x` (one activation row) as the kernel's activations at
/// `precision`, in the [`ActParts`] layouts: groups of 256 with the values
/// in [`lane_byte`] order, `dx[8]` and, for the 4-bit formats, `c·s[8]`
/// (`c = −8` for Q4_0's offset, 1 for the `m` terms) or, for Q8_0,
/// `−128·Σq[8]` (i32); Q6_K per half of a
/// group its eight 16-element sub-blocks as the lanes, `−32·Σq[8]` (i32)
/// and `dx[8]`. Then tail records: Q4 formats' values in their nibble order
/// (block pair's elements 0–15 of both blocks, then 16–31 of both),
/// `[d0×4, d1×4]` `[c·s0/4 ×4, c·s1/4 ×4]`; Q8_0's in natural order and
/// `[d0, d0, d1, d1, d0, d0, d1, d1]`.
pub(super) fn quantize_activations(
    format: QuantFormat,
    precision: ActivationPrecision,
    x: &[f32],
    out: &mut [u8],
) {
    if is_float(format) {
        // f32 as is, zero padded to whole records.
        out.fill(0);
        for (o, v) in out.chunks_exact_mut(4).zip(x) {
            o.copy_from_slice(&v.to_le_bytes());
        }
        return;
    }
    let block = |b: usize| {
        let start = b * ACT_BLOCK;
        let end = (start + ACT_BLOCK).min(x.len());
        quantize_activation_block_at(if start < end { &x[start..end] } else { &[] }, precision)
    };
    let put_f32 = |rec: &mut [u8], at: i32, v: [f32; 8]| {
        for (i, v) in v.iter().enumerate() {
            let at = at as usize + 4 * i;
            rec[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    };
    // Element k of `b` at byte `at` of each digit's copy.
    let put_q = |out: &mut [u8], digit: i32, at: usize, b: &ActivationBlock, k: usize| match precision {
        ActivationPrecision::Int8 => out[at] = b.q[k] as i8 as u8,
        ActivationPrecision::Int16 => {
            let (hi, lo) = b.digits(k);
            out[at] = hi as u8;
            out[digit as usize + at] = lo as u8;
        }
    };
    let c = if format == QuantFormat::Q4_0 { -8.0 } else { 1.0 };
    let shape = RowShape::new(format, x.len());
    let gp = ActParts::group(format, precision);
    let (groups, tail) = out.split_at_mut(shape.groups * act_group_bytes(format, precision));
    for (g, out) in groups.chunks_exact_mut(act_group_bytes(format, precision)).enumerate() {
        let blocks: [_; GROUP_BLOCKS] = std::array::from_fn(|j| block(GROUP_BLOCKS * g + j));
        if format == QuantFormat::Q6K {
            for (half, out) in out.chunks_exact_mut(gp.bytes).enumerate() {
                for j in 0..8 {
                    let sub = 8 * half + j;
                    let (b, first) = (&blocks[sub / 2], 16 * (sub % 2));
                    for k in 0..16 {
                        put_q(out, gp.digit, 32 * (k / 4) + 4 * j + k % 4, b, first + k);
                    }
                    let at = gp.extra as usize + 4 * j;
                    out[at..at + 4].copy_from_slice(&code_offset_correction(&b.q[first..first + 16], 32));
                    let at = gp.dx as usize + 4 * j;
                    out[at..at + 4].copy_from_slice(&b.d.to_le_bytes());
                }
            }
            continue;
        }
        for (j, b) in blocks.iter().enumerate() {
            if precision == ActivationPrecision::Int8 {
                // `lane_byte` four bytes at a time: vector v, lane j.
                for (v, q) in b.q.chunks_exact(4).enumerate() {
                    let lane = &mut out[32 * v + 4 * j..32 * v + 4 * j + 4];
                    lane.iter_mut().zip(q).for_each(|(o, &q)| *o = q as i8 as u8);
                }
                continue;
            }
            for k in 0..ACT_BLOCK {
                put_q(out, gp.digit, lane_byte(j, k), b, k);
            }
        }
        put_f32(out, gp.dx, std::array::from_fn(|j| blocks[j].d));
        if format == QuantFormat::Q8_0 {
            // What the AVX-512 body's `w + 128` codes add, per block (the
            // AVX2 body does not read it).
            for (j, b) in blocks.iter().enumerate() {
                let at = gp.extra as usize + 4 * j;
                out[at..at + 4].copy_from_slice(&code_offset_correction(&b.q, 128));
            }
        } else {
            put_f32(out, gp.extra, std::array::from_fn(|j| c * blocks[j].s));
        }
    }
    let rp = ActParts::record(format, precision);
    let first = shape.groups * GROUP_BLOCKS;
    for (p, rec) in tail.chunks_exact_mut(rp.bytes.max(1)).enumerate() {
        let (b0, b1) = (block(first + 2 * p), block(first + 2 * p + 1));
        if format == QuantFormat::Q8_0 {
            for k in 0..ACT_BLOCK {
                put_q(rec, rp.digit, k, &b0, k);
                put_q(rec, rp.digit, 32 + k, &b1, k);
            }
            let (a, b) = (b0.d, b1.d);
            put_f32(rec, rp.dx, [a, a, b, b, a, a, b, b]);
            continue;
        }
        // The 4-bit formats' nibble order: both blocks' elements 0–15, then
        // both blocks' 16–31.
        for j in 0..16 {
            put_q(rec, rp.digit, j, &b0, j);
            put_q(rec, rp.digit, 16 + j, &b1, j);
            put_q(rec, rp.digit, 32 + j, &b0, 16 + j);
            put_q(rec, rp.digit, 48 + j, &b1, 16 + j);
        }
        let (a, b) = (b0.d, b1.d);
        put_f32(rec, rp.dx, [a, a, a, a, b, b, b, b]);
        let (a, b) = (c / 4.0 * b0.s, c / 4.0 * b1.s);
        put_f32(rec, rp.extra, [a, a, a, a, b, b, b, b]);
    }
}
