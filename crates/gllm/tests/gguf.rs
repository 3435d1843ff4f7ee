//! The GGUF reader, writer and dequantisers: round trips through the writer,
//! hand-built blocks of every dequantised format, a cross-check against the
//! `gguf` Python package, the real SmolLM2 model, one test per kind of bad
//! file, and mutation fuzzing of the header parser.

#[path = "support/fuzz_inputs.rs"]
mod fuzz_inputs;

use gllm::gguf::quant::{quantize_q4_1, quantize_q8_0};
use gllm::gguf::{dequantize, GgmlType, GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, QuantError};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use std::cell::Cell;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

// ---------------------------------------------------------------------------
// Helpers

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn real_model_path() -> PathBuf {
    workspace_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The real model, or a failure telling how to get it (no silent skip).
fn real_model() -> GgufFile {
    let path = real_model_path();
    assert!(path.is_file(), "{} is missing: run scripts/fetch-smollm2.sh", path.display());
    GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Deterministic values in [-1, 1).
fn pseudo_random(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pseudo_random_bytes(seed: u64, n: usize) -> Vec<u8> {
    pseudo_random(seed, n).iter().map(|v| ((v + 1.0) * 127.9) as u8).collect()
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes("test.gguf", bytes)
}

/// The error message of parsing `bytes` as "test.gguf" (which must fail).
fn parse_error(bytes: Vec<u8>) -> String {
    match parse(bytes) {
        Ok(_) => panic!("the file parsed, but an error was expected"),
        Err(e) => e.to_string(),
    }
}

/// Offset just after the GGUF string `s` (u64 length + bytes) in `bytes`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut needle = (s.len() as u64).to_le_bytes().to_vec();
    needle.extend_from_slice(s.as_bytes());
    let at = bytes.windows(needle.len()).position(|w| w == needle.as_slice());
    at.unwrap_or_else(|| panic!("string {s:?} not in file")) + needle.len()
}

fn put_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, value: u64) {
    bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Where the fields of tensor info `name` are: n_dims, first dim, type, offset.
struct TensorInfoFields {
    n_dims: usize,
    dims: usize,
    ggml_type: usize,
    offset: usize,
}

fn tensor_info_fields(bytes: &[u8], name: &str) -> TensorInfoFields {
    let n_dims_at = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[n_dims_at..n_dims_at + 4].try_into().unwrap()) as usize;
    let ggml_type = n_dims_at + 4 + 8 * n_dims;
    TensorInfoFields { n_dims: n_dims_at, dims: n_dims_at + 4, ggml_type, offset: ggml_type + 4 }
}

/// A small file with two tensors: "a" (F32, 32 values) and "b" (Q8_0, 64).
fn two_tensor_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama").unwrap();
    w.add("general.languages", vec!["en", "fr"]).unwrap();
    w.add_tensor_f32("a", &[32], GgmlType::F32, &pseudo_random(1, 32)).unwrap();
    w.add_tensor_f32("b", &[32, 2], GgmlType::Q8_0, &pseudo_random(2, 64)).unwrap();
    w.to_bytes()
}

/// Every metadata value type, arrays of every element type, nested arrays and
/// empty ones.
fn every_metadata_type() -> Vec<(String, MetaValue)> {
    let entries: Vec<(&str, MetaValue)> = vec![
        ("t.u8", 200u8.into()),
        ("t.i8", (-100i8).into()),
        ("t.u16", 60000u16.into()),
        ("t.i16", (-30000i16).into()),
        ("t.u32", 4_000_000_000u32.into()),
        ("t.i32", (-2_000_000_000i32).into()),
        ("t.f32", 1.5e-7f32.into()),
        ("t.bool.true", true.into()),
        ("t.bool.false", false.into()),
        ("t.string", "héllo, wörld ✓".into()),
        ("t.string.empty", "".into()),
        ("t.u64", u64::MAX.into()),
        ("t.i64", i64::MIN.into()),
        ("t.f64", std::f64::consts::PI.into()),
        ("a.u8", vec![0u8, 1, 255].into()),
        ("a.i8", vec![-128i8, 0, 127].into()),
        ("a.u16", vec![1u16, 65535].into()),
        ("a.i16", vec![-32768i16, 32767].into()),
        ("a.u32", vec![7u32, 8, 9].into()),
        ("a.i32", vec![-1i32, 0, 1].into()),
        ("a.f32", vec![0.25f32, -1e30, f32::MIN_POSITIVE].into()),
        ("a.bool", vec![true, false, true].into()),
        ("a.string", vec!["", "a", "bc", "日本"].into()),
        ("a.u64", vec![u64::MAX, 0].into()),
        ("a.i64", vec![i64::MIN, i64::MAX].into()),
        ("a.f64", vec![1e300f64, -0.0].into()),
        ("a.empty", MetaValue::Array(MetaArray::U32(vec![]))),
        (
            "a.nested",
            vec![MetaArray::I32(vec![1, 2]), MetaArray::String(vec!["x".into()]), MetaArray::Array(vec![])]
                .into(),
        ),
        ("a.nested.deeper", vec![MetaArray::Array(vec![MetaArray::F64(vec![2.5])])].into()),
        ("count.as_i64", 12i64.into()),
        ("count.negative", (-3i32).into()),
    ];
    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

// ---------------------------------------------------------------------------
// Round trips

#[test]
fn every_metadata_type_round_trips() {
    let entries = every_metadata_type();
    let mut w = GgufWriter::new();
    for (key, value) in &entries {
        w.add(key.clone(), value.clone()).unwrap();
    }
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.version(), 3);
    assert_eq!(file.alignment(), 32);
    assert_eq!(file.metadata(), entries.as_slice());
    assert!(file.tensors().is_empty());
}

#[test]
fn typed_accessors_return_values_or_name_the_key_and_types() {
    let mut w = GgufWriter::new();
    for (key, value) in every_metadata_type() {
        w.add(key, value).unwrap();
    }
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_i32("t.i32").unwrap(), -2_000_000_000);
    assert_eq!(file.get_u64("t.u64").unwrap(), u64::MAX);
    assert_eq!(file.get_f32("t.f32").unwrap(), 1.5e-7);
    assert!(file.get_bool("t.bool.true").unwrap());
    assert_eq!(file.get_str("t.string").unwrap(), "héllo, wörld ✓");
    assert_eq!(file.get_str_array("a.string").unwrap(), ["", "a", "bc", "日本"]);
    assert_eq!(file.get_i32_array("a.i32").unwrap(), [-1, 0, 1]);
    assert_eq!(file.get_f32_array("a.f32").unwrap(), [0.25, -1e30, f32::MIN_POSITIVE]);
    assert_eq!(file.get_array("a.u8").unwrap().len(), 3);
    // get_usize takes any integer type whose value fits.
    assert_eq!(file.get_usize("t.u8").unwrap(), 200);
    assert_eq!(file.get_usize("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(file.get_usize("count.as_i64").unwrap(), 12);
    assert_eq!(
        file.get_usize("count.negative").unwrap_err().to_string(),
        "test.gguf: metadata key \"count.negative\": value -3 does not fit in usize"
    );
    assert_eq!(
        file.get_usize("t.f32").unwrap_err().to_string(),
        "test.gguf: metadata key \"t.f32\" has type f32, expected an integer type"
    );
    assert_eq!(
        file.get_u32("t.i32").unwrap_err().to_string(),
        "test.gguf: metadata key \"t.i32\" has type i32, expected u32"
    );
    assert_eq!(
        file.get_str_array("a.i32").unwrap_err().to_string(),
        "test.gguf: metadata key \"a.i32\" has type array of i32, expected array of string"
    );
    assert_eq!(
        file.get_f32("no.such.key").unwrap_err().to_string(),
        "test.gguf: metadata key \"no.such.key\" is missing"
    );
    assert_eq!(file.opt_f32("no.such.key").unwrap(), None);
    assert_eq!(file.opt_usize("no.such.key").unwrap(), None);
    assert_eq!(file.opt_str("t.string").unwrap(), Some("héllo, wörld ✓"));
    assert!(file.opt_bool("t.string").is_err(), "a present key of another type is an error, not None");
}

/// Largest |decoded − original| a Q8_0/Q4_1 block may show: half a step of the
/// stored scale, plus what rounding the scale (and Q4_1's min) to f16 moves
/// the largest code by.
fn block_tolerance(ty: GgmlType, block: &[f32]) -> f32 {
    let max = block.iter().fold(f32::MIN, |a, &b| a.max(b));
    let min = block.iter().fold(f32::MAX, |a, &b| a.min(b));
    let f16_error = |x: f32| (f16::from_f32(x).to_f32() - x).abs();
    match ty {
        GgmlType::Q8_0 => {
            let d = max.abs().max(min.abs()) / 127.0;
            0.5 * d + 127.0 * f16_error(d) + 1e-7
        }
        GgmlType::Q4_1 => {
            let d = (max - min) / 15.0;
            0.5 * d + 15.0 * f16_error(d) + f16_error(min) + 1e-7
        }
        _ => unreachable!(),
    }
}

#[test]
fn tensors_of_every_writable_type_round_trip() {
    let dims = [64u64, 3, 2];
    let values: Vec<f32> = pseudo_random(7, 384).iter().map(|v| v * 3.0).collect();
    let mut w = GgufWriter::new();
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_1] {
        w.add_tensor_f32(format!("w.{ty}"), &dims, ty, &values).unwrap();
    }
    // A vector tensor and a 4-d one too.
    w.add_tensor_f32("v", &[5], GgmlType::F32, &[1.0, 2.0, 3.0, 4.0, 5.0]).unwrap();
    w.add_tensor_f32("x4", &[32, 1, 2, 1], GgmlType::Q8_0, &values[..64]).unwrap();
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.tensors().len(), 7);
    for info in file.tensors() {
        assert_eq!(info.offset() % 32, 0, "{}", info.name());
        assert_eq!(file.tensor_data(info).len() as u64, info.n_bytes());
    }
    assert_eq!(file.data_offset() % 32, 0);

    let f32s = file.tensor_f32("w.F32").unwrap();
    assert_eq!(f32s, values, "F32 is exact");
    let info = file.tensor_info("w.F16").unwrap();
    assert_eq!(info.dims(), dims);
    assert_eq!(info.ggml_type(), GgmlType::F16);
    assert_eq!(info.n_elements(), 384);
    assert_eq!(info.n_bytes(), 768);
    for (a, b) in values.iter().zip(file.tensor_f32("w.F16").unwrap()) {
        assert!((a - b).abs() <= a.abs() * 1e-3, "F16 {a} vs {b}");
    }
    for (a, b) in values.iter().zip(file.tensor_f32("w.BF16").unwrap()) {
        assert!((a - b).abs() <= a.abs() * 4e-3, "BF16 {a} vs {b}");
    }
    for ty in [GgmlType::Q8_0, GgmlType::Q4_1] {
        let decoded = file.tensor_f32(&format!("w.{ty}")).unwrap();
        assert_eq!(file.tensor_info(&format!("w.{ty}")).unwrap().n_bytes(), 12 * ty.bytes_per_block() as u64);
        for (block, got) in values.chunks(32).zip(decoded.chunks(32)) {
            let tolerance = block_tolerance(ty, block);
            for (a, b) in block.iter().zip(got) {
                assert!((a - b).abs() <= tolerance, "{ty}: {a} vs {b}, tolerance {tolerance}");
            }
        }
    }
    assert_eq!(file.tensor_f32("v").unwrap(), [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(file.tensor_info("x4").unwrap().dims(), [32, 1, 2, 1]);
}

#[test]
fn alignment_is_honoured_by_writer_and_reader() {
    let mut w = GgufWriter::new();
    w.set_alignment(256).unwrap();
    w.add_tensor_f32("a", &[3], GgmlType::F32, &[1.0, 2.0, 3.0]).unwrap();
    w.add_tensor_f32("b", &[32], GgmlType::Q4_1, &pseudo_random(3, 32)).unwrap();
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(file.alignment(), 256);
    assert_eq!(file.get_u32("general.alignment").unwrap(), 256);
    assert_eq!(file.data_offset() % 256, 0);
    assert_eq!(file.tensor_info("b").unwrap().offset(), 256);
    assert_eq!(file.tensor_f32("a").unwrap(), [1.0, 2.0, 3.0]);
}

#[test]
fn writer_rejects_inconsistent_input() {
    let mut w = GgufWriter::new();
    w.add("k", 1u32).unwrap();
    assert_eq!(w.add("k", 2u32).unwrap_err().to_string(), "metadata key \"k\" added twice");
    w.add_tensor_f32("t", &[2], GgmlType::F32, &[1.0, 2.0]).unwrap();
    assert_eq!(
        w.add_tensor_f32("t", &[2], GgmlType::F32, &[1.0, 2.0]).unwrap_err().to_string(),
        "tensor \"t\" added twice"
    );
    assert_eq!(
        w.add_tensor_f32("u", &[2, 2], GgmlType::F32, &[1.0]).unwrap_err().to_string(),
        "tensor \"u\": dims [2, 2] hold 4 elements, but 1 values were given"
    );
    assert_eq!(
        w.add_tensor_f32("u", &[16, 2], GgmlType::Q8_0, &[0.0; 32]).unwrap_err().to_string(),
        "tensor \"u\": ne0 = 16 is not a multiple of the Q8_0 block size 32"
    );
    assert_eq!(
        w.add_tensor_f32("u", &[32], GgmlType::Q4_0, &[0.0; 32]).unwrap_err().to_string(),
        "tensor \"u\": unsupported tensor type Q4_0 for quantisation"
    );
    assert_eq!(
        w.add_tensor_bytes("u", &[32], GgmlType::Q4_0, vec![0; 17]).unwrap_err().to_string(),
        "tensor \"u\": 32 elements of Q4_0 take Some(18) bytes, but 17 were given"
    );
    assert_eq!(w.set_alignment(24).unwrap_err().to_string(), "alignment 24 is not a non-zero power of two");
}

#[test]
fn quantisers_follow_the_reference_rounding() {
    // Q8_0: d = 127/127 = 1, codes round half away from zero.
    let mut block = [0.0f32; 32];
    block[0] = 127.0;
    block[1] = 2.5;
    block[2] = -2.5;
    block[3] = 0.49;
    let q = quantize_q8_0(&block);
    assert_eq!(f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
    assert_eq!(&q[2..6], &[127, 3, (-3i8) as u8, 0]);
    // Q4_1: min 0, max 15 → d = 1, m = 0; codes are trunc(x + 0.5), capped at 15.
    let mut block = [7.0f32; 32];
    block[..5].copy_from_slice(&[0.0, 0.4, 0.5, 1.49, 1.5]);
    block[16] = 14.6;
    block[31] = 15.0;
    let q = quantize_q4_1(&block);
    assert_eq!(f16::from_le_bytes([q[0], q[1]]).to_f32(), 1.0);
    assert_eq!(f16::from_le_bytes([q[2], q[3]]).to_f32(), 0.0);
    // Byte j holds element j (low nibble) and element j + 16 (high nibble).
    assert_eq!(&q[4..9], &[0xF0, 0x70, 0x71, 0x71, 0x72]);
    assert_eq!(q[19], 0xF7);
}

// ---------------------------------------------------------------------------
// Hand-built blocks of the dequantised formats

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_le_bytes()
}

#[test]
fn q4_0_hand_built_block() {
    // d = 0.5; byte j holds code j (element j) and code 15 − j (element j + 16).
    let mut block = f16_bytes(0.5).to_vec();
    block.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let got = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
    let want: Vec<f32> = (0..16)
        .map(|j| 0.5 * (j as f32 - 8.0))
        .chain((0..16).map(|j| 0.5 * ((15 - j) as f32 - 8.0)))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn q4_1_and_q8_0_hand_built_blocks() {
    let mut q4_1 = f16_bytes(0.25).to_vec();
    q4_1.extend(f16_bytes(-1.0));
    q4_1.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let got = dequantize(GgmlType::Q4_1, &q4_1, 32).unwrap();
    let want: Vec<f32> =
        (0..16).map(|j| 0.25 * j as f32 - 1.0).chain((0..16).map(|j| 0.25 * (15 - j) as f32 - 1.0)).collect();
    assert_eq!(got, want);

    let mut q8_0 = f16_bytes(0.125).to_vec();
    q8_0.extend((0..32i32).map(|j| (j * 8 - 128) as i8 as u8));
    let got = dequantize(GgmlType::Q8_0, &q8_0, 32).unwrap();
    let want: Vec<f32> = (0..32).map(|j| (j * 8 - 128) as f32 * 0.125).collect();
    assert_eq!(got, want);
}

#[test]
fn q4_k_hand_built_super_block() {
    // Scales and mins above 15 for sub-blocks 4..8 exercise the packed high bits.
    let sc: [u8; 8] = [1, 2, 3, 4, 33, 45, 50, 63];
    let m: [u8; 8] = [0, 5, 10, 20, 17, 31, 40, 62];
    let (d, dmin) = (1.0f32, 0.5f32);
    let mut packed = [0u8; 12];
    for i in 0..4 {
        packed[i] = sc[i] | ((sc[i + 4] >> 4) << 6);
        packed[i + 4] = m[i] | ((m[i + 4] >> 4) << 6);
        packed[i + 8] = (sc[i + 4] & 15) | ((m[i + 4] & 15) << 4);
    }
    let code = |sub: usize, l: usize| ((sub * 3 + l) % 16) as u8;
    let mut qs = [0u8; 128];
    for pair in 0..4 {
        for l in 0..32 {
            qs[32 * pair + l] = code(2 * pair, l) | (code(2 * pair + 1, l) << 4);
        }
    }
    let mut block = f16_bytes(d).to_vec();
    block.extend(f16_bytes(dmin));
    block.extend(packed);
    block.extend(qs);
    assert_eq!(block.len(), 144);
    let got = dequantize(GgmlType::Q4_K, &block, 256).unwrap();
    assert_eq!(got.len(), 256);
    for (e, &value) in got.iter().enumerate() {
        let (sub, l) = (e / 32, e % 32);
        let want = (d * sc[sub] as f32) * code(sub, l) as f32 - dmin * m[sub] as f32;
        assert_eq!(value, want, "element {e}");
    }
}

#[test]
fn q6_k_hand_built_super_block() {
    // 6-bit codes u(e) = 7e mod 64, signed scales −8..7 per 16 weights, d = 0.25.
    let d = 0.25f32;
    let code = |e: usize| ((e * 7) % 64) as u8;
    let scales: [i8; 16] = std::array::from_fn(|g| g as i8 - 8);
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for e in 0..256 {
        let (h, r) = (e / 128, e % 128);
        ql[64 * h + r % 64] |= (code(e) & 15) << (4 * (r / 64));
        qh[32 * h + r % 32] |= (code(e) >> 4) << (2 * (r / 32));
    }
    let mut block = ql.to_vec();
    block.extend(qh);
    block.extend(scales.map(|s| s as u8));
    block.extend(f16_bytes(d));
    assert_eq!(block.len(), 210);
    let got = dequantize(GgmlType::Q6_K, &block, 256).unwrap();
    assert_eq!(got.len(), 256);
    for (e, &value) in got.iter().enumerate() {
        let want = (d * scales[e / 16] as f32) * (code(e) as f32 - 32.0);
        assert_eq!(value, want, "element {e}");
    }
}

#[test]
fn bf16_and_f16_hand_built_values() {
    let bf16_bits: [u16; 5] = [0x3F80, 0xC020, 0x4049, 0x0000, 0x8000];
    let bytes: Vec<u8> = bf16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let got = dequantize(GgmlType::BF16, &bytes, 5).unwrap();
    assert_eq!(got, [1.0, -2.5, 3.140625, 0.0, -0.0]);
    assert!(got[4].is_sign_negative());
    let f16_bits: [u16; 3] = [0x3C00, 0xC100, 0x7BFF];
    let bytes: Vec<u8> = f16_bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    assert_eq!(dequantize(GgmlType::F16, &bytes, 3).unwrap(), [1.0, -2.5, 65504.0]);
    assert_eq!(bf16::from_f32(1.0).to_bits(), 0x3F80);
}

#[test]
fn dequantize_rejects_wrong_sizes_and_unsupported_types() {
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0; 34], 31).unwrap_err(),
        QuantError::NotWholeBlocks { ty: GgmlType::Q8_0, n_elements: 31, block_size: 32 }
    );
    assert_eq!(
        dequantize(GgmlType::Q8_0, &[0; 33], 32).unwrap_err().to_string(),
        "32 elements of Q8_0 take 34 bytes, but 33 bytes were given"
    );
    assert_eq!(
        dequantize(GgmlType::Q5_K, &[0; 176], 256).unwrap_err().to_string(),
        "unsupported tensor type Q5_K for dequantisation"
    );
    let mut w = GgufWriter::new();
    w.add_tensor_bytes("q5", &[256], GgmlType::Q5_K, vec![0; 176]).unwrap();
    let file = parse(w.to_bytes()).unwrap();
    assert_eq!(
        file.tensor_f32("q5").unwrap_err().to_string(),
        "test.gguf: unsupported tensor type Q5_K for tensor \"q5\""
    );
    assert_eq!(file.tensor_data(file.tensor_info("q5").unwrap()).len(), 176);
    assert_eq!(file.tensor_f32("nope").unwrap_err().to_string(), "test.gguf: tensor \"nope\" is missing");
}

// ---------------------------------------------------------------------------
// Cross-check against the `gguf` Python package

/// Runs tools/gguf_dump_reference.py on `file` with `specs`; its JSON output.
fn python_reference(file: &Path, specs: &[&str]) -> serde_json::Value {
    let script = workspace_root().join("tools/gguf_dump_reference.py");
    let output = Command::new("python3").arg(&script).arg(file).args(specs).output().unwrap_or_else(|e| {
        panic!("cannot run python3 {}: {e} (needs: pip install numpy gguf)", script.display())
    });
    assert!(
        output.status.success(),
        "{} failed (needs: pip install numpy gguf):\n{}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the reference script prints JSON")
}

fn json_f32s(value: &serde_json::Value) -> Vec<f32> {
    value.as_array().expect("an array").iter().map(|v| v.as_f64().expect("a number") as f32).collect()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("gllm-gguf-test-{}-{name}", std::process::id()))
}

/// Random block bytes whose f16 scale fields (at `scale_offsets` within each
/// block) are set to finite values, so every decoded value is finite.
fn random_blocks(ty: GgmlType, n_blocks: usize, scale_offsets: &[usize], seed: u64) -> Vec<u8> {
    let size = ty.bytes_per_block();
    let mut bytes = pseudo_random_bytes(seed, size * n_blocks);
    let scales = pseudo_random(seed + 1, n_blocks * scale_offsets.len());
    for (b, block) in bytes.chunks_mut(size).enumerate() {
        for (k, &at) in scale_offsets.iter().enumerate() {
            block[at..at + 2].copy_from_slice(&f16_bytes(scales[b * scale_offsets.len() + k] * 0.1));
        }
    }
    bytes
}

#[test]
fn dequantisers_and_quantisers_match_the_gguf_python_package() {
    let values: Vec<f32> = pseudo_random(11, 256).iter().map(|v| v * 2.0).collect();
    let mut w = GgufWriter::new();
    w.add_tensor_f32("orig", &[64, 4], GgmlType::F32, &values).unwrap();
    for ty in [GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_1] {
        w.add_tensor_f32(format!("w.{ty}"), &[64, 4], ty, &values).unwrap();
    }
    w.add_tensor_bytes("w.Q4_0", &[64, 2], GgmlType::Q4_0, random_blocks(GgmlType::Q4_0, 4, &[0], 21))
        .unwrap();
    w.add_tensor_bytes("w.Q4_K", &[256, 2], GgmlType::Q4_K, random_blocks(GgmlType::Q4_K, 2, &[0, 2], 22))
        .unwrap();
    w.add_tensor_bytes("w.Q6_K", &[256, 2], GgmlType::Q6_K, random_blocks(GgmlType::Q6_K, 2, &[208], 23))
        .unwrap();
    let path = temp_path("python-cross-check.gguf");
    w.write_to_path(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();

    let names = ["w.F16", "w.BF16", "w.Q8_0", "w.Q4_1", "w.Q4_0", "w.Q4_K", "w.Q6_K"];
    let mut specs: Vec<String> = names.iter().map(|n| format!("all:{n}")).collect();
    specs.push("quantize:Q8_0:orig".into());
    specs.push("quantize:Q4_1:orig".into());
    let spec_refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let reference = python_reference(&path, &spec_refs);
    std::fs::remove_file(&path).ok();
    let results = reference["results"].as_array().unwrap();

    for (name, result) in names.iter().zip(results) {
        let ours = file.tensor_f32(name).unwrap();
        let theirs = json_f32s(&result["values"]);
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: ours {a}, gguf-py {b}");
        }
    }
    for (name, result) in ["w.Q8_0", "w.Q4_1"].iter().zip(&results[names.len()..]) {
        let ours: String =
            file.tensor_data(file.tensor_info(name).unwrap()).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            ours,
            result["bytes_hex"].as_str().unwrap(),
            "{name}: quantised bytes differ from gguf-py"
        );
    }
}

// ---------------------------------------------------------------------------
// The real model

#[test]
fn real_model_header() {
    let start = Instant::now();
    let file = real_model();
    eprintln!("real model opened and its header checked in {:.2?}", start.elapsed());
    assert_eq!(file.version(), 3);
    assert_eq!(file.tensors().len(), 272);
    assert_eq!(file.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(file.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(file.get_usize("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(file.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(file.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(file.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(file.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    let embd = file.tensor_info("token_embd.weight").unwrap();
    assert_eq!(embd.dims(), [576, 49152]);
    assert_eq!(embd.ggml_type(), GgmlType::Q8_0);
    let q = file.tensor_info("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dims(), [576, 576]);
    assert_eq!(q.ggml_type(), GgmlType::Q4_1);
    assert!(!file.has_tensor("output.weight"), "the output projection is tied to token_embd");
    let tokens = file.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(file.get_str_array("tokenizer.ggml.merges").unwrap().len(), 48900);
    assert_eq!(file.get_i32_array("tokenizer.ggml.token_type").unwrap().len(), 49152);
    assert_eq!(file.get_str_array("general.languages").unwrap(), ["en"]);
    for info in file.tensors() {
        assert_eq!(file.tensor_data(info).len() as u64, info.n_bytes(), "{}", info.name());
    }
}

fn assert_close(what: &str, ours: f64, theirs: f64, scale: f64) {
    assert!((ours - theirs).abs() <= 1e-6 * scale.max(theirs.abs()), "{what}: ours {ours}, gguf-py {theirs}");
}

/// Compares our values with a reference result: the first 64 within 1e-6
/// relative, the sums within 1e-6 of the sum of magnitudes.
fn compare_with_reference(what: &str, ours: &[f32], reference: &serde_json::Value) {
    assert_eq!(ours.len() as u64, reference["n"].as_u64().unwrap(), "{what}: element count");
    for (i, (a, b)) in ours.iter().zip(json_f32s(&reference["first"])).enumerate() {
        assert_close(&format!("{what}[{i}]"), f64::from(*a), f64::from(b), 0.0);
    }
    let sum: f64 = ours.iter().map(|&v| f64::from(v)).sum();
    let sum_abs: f64 = ours.iter().map(|&v| f64::from(v).abs()).sum();
    let reference_sum_abs = reference["sum_abs"].as_f64().unwrap();
    assert_close(&format!("{what} sum"), sum, reference["sum"].as_f64().unwrap(), reference_sum_abs);
    assert_close(&format!("{what} sum of |x|"), sum_abs, reference_sum_abs, 0.0);
}

#[test]
fn real_model_values_match_the_gguf_python_package() {
    let file = real_model();
    let reference = python_reference(
        &real_model_path(),
        &["blk.0.attn_q.weight", "token_embd.weight@0", "token_embd.weight@49151", "blk.0.attn_norm.weight"],
    );
    assert_eq!(reference["version"], 3);
    assert_eq!(reference["tensor_count"], 272);
    let results = reference["results"].as_array().unwrap();

    let attn_q = file.tensor_f32("blk.0.attn_q.weight").unwrap();
    compare_with_reference("blk.0.attn_q.weight", &attn_q, &results[0]);
    let embd = file.tensor_f32("token_embd.weight").unwrap();
    assert_eq!(embd.len(), 576 * 49152);
    compare_with_reference("token_embd.weight row 0", &embd[..576], &results[1]);
    compare_with_reference("token_embd.weight row 49151", &embd[576 * 49151..], &results[2]);
    let norm = file.tensor_f32("blk.0.attn_norm.weight").unwrap();
    compare_with_reference("blk.0.attn_norm.weight", &norm, &results[3]);
}

// ---------------------------------------------------------------------------
// Bad files: one test per problem, each checking the whole message.

#[test]
fn truncated_in_the_magic() {
    assert_eq!(
        parse_error(b"GG".to_vec()),
        "test.gguf: file ends inside the magic: 4 bytes needed at offset 0, 2 left"
    );
    assert_eq!(
        parse_error(vec![]),
        "test.gguf: file ends inside the magic: 4 bytes needed at offset 0, 0 left"
    );
}

#[test]
fn truncated_in_the_version() {
    assert_eq!(
        parse_error(b"GGUF\x03\x00".to_vec()),
        "test.gguf: file ends inside the version: 4 bytes needed at offset 4, 2 left"
    );
}

#[test]
fn truncated_in_the_counts() {
    let bytes = two_tensor_file();
    assert_eq!(
        parse_error(bytes[..12].to_vec()),
        "test.gguf: file ends inside the tensor count: 8 bytes needed at offset 8, 4 left"
    );
    assert_eq!(
        parse_error(bytes[..20].to_vec()),
        "test.gguf: file ends inside the metadata count: 8 bytes needed at offset 16, 4 left"
    );
}

#[test]
fn truncated_in_a_key() {
    let bytes = two_tensor_file();
    // The first key's length is at 24, its 20 bytes ("general.architecture") at 32.
    assert_eq!(
        parse_error(bytes[..40].to_vec()),
        "test.gguf: the key of metadata entry #0 at offset 24: string length 20 exceeds the 8 bytes left in the file"
    );
    // Inside the length itself.
    assert_eq!(
        parse_error(bytes[..28].to_vec()),
        "test.gguf: file ends inside the key of metadata entry #0: 8 bytes needed at offset 24, 4 left"
    );
}

#[test]
fn truncated_in_a_value() {
    let bytes = two_tensor_file();
    let value_at = after_string(&bytes, "general.architecture") + 4; // after the type tag
    assert_eq!(
        parse_error(bytes[..value_at + 10].to_vec()),
        format!(
            "test.gguf: the value of metadata key \"general.architecture\" at offset {value_at}: \
             string length 5 exceeds the 2 bytes left in the file"
        )
    );
    // Inside the string array: "en" is complete, "fr" is cut.
    let fr = after_string(&bytes, "fr");
    assert_eq!(
        parse_error(bytes[..fr - 1].to_vec()),
        format!(
            "test.gguf: the value of metadata key \"general.languages\" at offset {}: \
             string length 2 exceeds the 1 bytes left in the file",
            fr - 10
        )
    );
}

#[test]
fn truncated_in_a_tensor_info() {
    let bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    assert_eq!(
        parse_error(bytes[..fields.offset + 3].to_vec()),
        format!(
            "test.gguf: file ends inside tensor info \"b\": 8 bytes needed at offset {}, 3 left",
            fields.offset
        )
    );
    assert_eq!(
        parse_error(bytes[..fields.dims + 12].to_vec()),
        format!(
            "test.gguf: file ends inside tensor info \"b\": 8 bytes needed at offset {}, 4 left",
            fields.dims + 8
        )
    );
}

#[test]
fn truncated_in_the_data_section() {
    let bytes = two_tensor_file();
    let full = parse(bytes.clone()).unwrap();
    let data_start = full.data_offset();
    // "a" is 128 bytes at 0; "b" is 68 bytes at 128. Cut 10 bytes into "b".
    assert_eq!(
        parse_error(bytes[..data_start + 138].to_vec()),
        "test.gguf: tensor \"b\": data of 68 bytes at offset 128 runs past the end of the data section \
         (138 bytes, 10 left)"
    );
}

#[test]
fn wrong_magic() {
    let mut bytes = two_tensor_file();
    bytes[..4].copy_from_slice(b"GGML");
    assert_eq!(parse_error(bytes), "test.gguf: not a GGUF file: magic is \"GGML\", expected \"GGUF\"");
    assert_eq!(
        parse_error(b"\x89PNG\r\n".to_vec()),
        "test.gguf: not a GGUF file: magic is \"\u{fffd}PNG\", expected \"GGUF\""
    );
}

#[test]
fn unsupported_versions() {
    for version in [1u32, 4, 0] {
        let mut bytes = two_tensor_file();
        put_u32(&mut bytes, 4, version);
        assert_eq!(
            parse_error(bytes),
            format!("test.gguf: unsupported GGUF version {version}: only versions 2 and 3 are read")
        );
    }
    let mut bytes = two_tensor_file();
    bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert_eq!(
        parse_error(bytes),
        "test.gguf: version field 0x03000000 looks byte-swapped: big-endian GGUF files are not supported"
    );
}

#[test]
fn version_2_is_read() {
    let mut bytes = two_tensor_file();
    put_u32(&mut bytes, 4, 2);
    assert_eq!(parse(bytes).unwrap().version(), 2);
}

#[test]
fn tensor_offset_past_the_end() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.offset, 1 << 40);
    assert_eq!(
        parse_error(bytes),
        "test.gguf: tensor \"b\": data offset 1099511627776 lies past the end of the data section (224 bytes)"
    );
}

#[test]
fn tensor_size_past_the_end() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.dims + 8, 3); // 3 rows of 32 instead of 2
    assert_eq!(
        parse_error(bytes),
        "test.gguf: tensor \"b\": data of 102 bytes at offset 128 runs past the end of the data section \
         (224 bytes, 96 left)"
    );
    // A size that overflows when added to the offset is the same error, not a wrap-around.
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.dims + 8, u64::MAX / 32 / 34 * 32);
    put_u64(&mut bytes, fields.dims, 32);
    let message = parse_error(bytes);
    assert!(message.starts_with("test.gguf: tensor \"b\": data of "), "{message}");
    assert!(message.ends_with("runs past the end of the data section (224 bytes, 96 left)"), "{message}");
}

#[test]
fn misaligned_tensor_offset() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.offset, 130);
    assert_eq!(
        parse_error(bytes),
        "test.gguf: tensor \"b\": data offset 130 is not a multiple of the alignment 32"
    );
}

#[test]
fn unknown_ggml_type_id() {
    for id in [4u32, 31, 43, 0xFFFF_FFFF] {
        let mut bytes = two_tensor_file();
        let fields = tensor_info_fields(&bytes, "b");
        put_u32(&mut bytes, fields.ggml_type, id);
        assert_eq!(parse_error(bytes), format!("test.gguf: tensor \"b\": unknown ggml type id {id}"));
    }
}

#[test]
fn dims_whose_product_overflows() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.dims, 1 << 32);
    put_u64(&mut bytes, fields.dims + 8, 1 << 32);
    assert_eq!(
        parse_error(bytes),
        "test.gguf: tensor \"b\": dims [4294967296, 4294967296]: element count overflows u64"
    );
}

#[test]
fn first_dim_not_a_whole_number_of_blocks() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u64(&mut bytes, fields.dims, 16);
    put_u64(&mut bytes, fields.dims + 8, 4);
    assert_eq!(
        parse_error(bytes),
        "test.gguf: tensor \"b\": ne0 = 16 is not a multiple of the Q8_0 block size 32"
    );
}

#[test]
fn more_than_four_dims() {
    let mut bytes = two_tensor_file();
    let fields = tensor_info_fields(&bytes, "b");
    put_u32(&mut bytes, fields.n_dims, 5);
    assert_eq!(parse_error(bytes), "test.gguf: tensor \"b\": n_dims = 5 exceeds the maximum of 4");
}

#[test]
fn array_length_larger_than_the_file() {
    let mut bytes = two_tensor_file();
    let count_at = after_string(&bytes, "general.languages") + 8; // after type tag and element type
    put_u64(&mut bytes, count_at, 1 << 50);
    assert_eq!(
        parse_error(bytes.clone()),
        format!(
            "test.gguf: the value of metadata key \"general.languages\" at offset {count_at}: array length \
             1125899906842624 of string needs at least 9007199254740992 bytes, but only {} bytes are left in the \
             file",
            bytes.len() - count_at - 8
        )
    );
    put_u64(&mut bytes, count_at, u64::MAX);
    let message = parse_error(bytes);
    assert!(message.contains("array length 18446744073709551615 of string needs at least 2^64 or more bytes"));
}

#[test]
fn string_length_larger_than_the_file() {
    let mut bytes = two_tensor_file();
    let length_at = after_string(&bytes, "general.architecture") + 4;
    put_u64(&mut bytes, length_at, u64::MAX);
    assert_eq!(
        parse_error(bytes.clone()),
        format!(
            "test.gguf: the value of metadata key \"general.architecture\" at offset {length_at}: string length \
             18446744073709551615 exceeds the {} bytes left in the file",
            bytes.len() - length_at - 8
        )
    );
}

#[test]
fn counts_larger_than_the_file() {
    // Counts are not used to allocate: parsing goes on until the file runs out
    // and names the entry that is cut.
    let mut w = GgufWriter::new();
    w.add("only", 1u8).unwrap();
    let mut bytes = w.to_bytes();
    bytes.truncate(24 + 8 + 4 + 4 + 1); // the header ends after the one entry
    put_u64(&mut bytes, 16, 1 << 40);
    assert_eq!(
        parse_error(bytes.clone()),
        "test.gguf: file ends inside the key of metadata entry #1: 8 bytes needed at offset 41, 0 left"
    );
    put_u64(&mut bytes, 16, 1);
    put_u64(&mut bytes, 8, u64::MAX);
    assert_eq!(
        parse_error(bytes),
        "test.gguf: file ends inside the name of tensor info #0: 8 bytes needed at offset 41, 0 left"
    );
}

#[test]
fn duplicate_tensor_name() {
    let mut bytes = two_tensor_file();
    let b_name = after_string(&bytes, "b") - 1;
    bytes[b_name] = b'a';
    assert_eq!(parse_error(bytes), "test.gguf: tensor \"a\": duplicate tensor name (tensor infos #0 and #1)");
}

#[test]
fn duplicate_metadata_key() {
    let mut w = GgufWriter::new();
    w.add("key.one", 1u8).unwrap();
    w.add("key.two", 2u8).unwrap();
    let mut bytes = w.to_bytes();
    let second = after_string(&bytes, "key.two") - 3;
    bytes[second..second + 3].copy_from_slice(b"one");
    assert_eq!(
        parse_error(bytes),
        "test.gguf: metadata entry #1 at offset 44: duplicate metadata key \"key.one\""
    );
}

#[test]
fn bad_alignment_values() {
    for (value, problem) in [
        (MetaValue::U32(3), "3 is not a non-zero power of two"),
        (MetaValue::U32(0), "0 is not a non-zero power of two"),
        (MetaValue::U64(32), "has type u64, expected u32"),
    ] {
        let mut w = GgufWriter::new();
        w.add("general.alignment", value).unwrap();
        assert_eq!(
            parse_error(w.to_bytes()),
            format!("test.gguf: metadata key \"general.alignment\": {problem}")
        );
    }
}

#[test]
fn invalid_value_tags_bools_and_nesting() {
    let mut w = GgufWriter::new();
    w.add("flag", true).unwrap();
    let bytes = w.to_bytes();
    let tag_at = after_string(&bytes, "flag");
    let mut bad_tag = bytes.clone();
    put_u32(&mut bad_tag, tag_at, 13);
    assert_eq!(
        parse_error(bad_tag),
        format!("test.gguf: the value of metadata key \"flag\" at offset {tag_at}: unknown value type id 13")
    );
    let mut bad_bool = bytes;
    bad_bool[tag_at + 4] = 2;
    assert_eq!(
        parse_error(bad_bool),
        format!(
            "test.gguf: the value of metadata key \"flag\" at offset {}: bool value 2 is neither 0 nor 1",
            tag_at + 4
        )
    );
    // Arrays nested 9 deep are refused before they can exhaust the stack.
    let mut deep = MetaArray::U8(vec![1]);
    for _ in 0..8 {
        deep = MetaArray::Array(vec![deep]);
    }
    let mut w = GgufWriter::new();
    w.add("deep", deep).unwrap();
    let message = parse_error(w.to_bytes());
    assert!(message.ends_with("arrays nested deeper than 8 levels"), "{message}");
    let mut ok = MetaArray::U8(vec![1]);
    for _ in 0..7 {
        ok = MetaArray::Array(vec![ok]);
    }
    let mut w = GgufWriter::new();
    w.add("deep", ok.clone()).unwrap();
    assert_eq!(parse(w.to_bytes()).unwrap().get_array("deep").unwrap(), &ok);
}

#[test]
fn invalid_utf8_in_a_key() {
    let mut w = GgufWriter::new();
    w.add("key", 1u8).unwrap();
    let mut bytes = w.to_bytes();
    let key_end = after_string(&bytes, "key");
    bytes[key_end - 1] = 0xFF;
    let message = parse_error(bytes);
    assert!(
        message
            .starts_with("test.gguf: the key of metadata entry #0 at offset 24: string is not valid UTF-8"),
        "{message}"
    );
}

#[test]
fn open_an_empty_file() {
    let path = temp_path("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let message = GgufFile::open(&path).unwrap_err().to_string();
    std::fs::remove_file(&path).ok();
    assert_eq!(
        message,
        format!("{}: file ends inside the magic: 4 bytes needed at offset 0, 0 left", path.display())
    );
}

#[test]
fn open_names_the_path_of_a_missing_file() {
    let message = GgufFile::open("/nonexistent/model.gguf").unwrap_err().to_string();
    assert!(message.starts_with("/nonexistent/model.gguf: cannot read: "), "{message}");
}

// ---------------------------------------------------------------------------
// Mutation fuzzing

/// One corruption of a file.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    /// Copy a run of the file over another place in it.
    Splice {
        from: prop::sample::Index,
        to: prop::sample::Index,
        len: usize,
    },
    /// Overwrite 8 bytes with a length-like value (most GGUF lengths are u64).
    SetU64(prop::sample::Index, u64),
    /// Overwrite 4 bytes with a tag/count-like value.
    SetU32(prop::sample::Index, u32),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    let interesting_u64 = prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(4),
        Just(31),
        Just(32),
        Just(u64::MAX),
        Just(u64::MAX / 2),
        Just(1 << 32),
        0u64..2048,
        any::<u64>(),
    ];
    let interesting_u32 = prop_oneof![Just(0u32), Just(5), Just(9), Just(13), 0u32..64, any::<u32>()];
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(at, v)| Mutation::SetByte(at, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        3 => (any::<Index>(), interesting_u64).prop_map(|(at, v)| Mutation::SetU64(at, v)),
        2 => (any::<Index>(), interesting_u32).prop_map(|(at, v)| Mutation::SetU32(at, v)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(at, b)| Mutation::Insert(at, b)),
        1 => (any::<Index>(), 1usize..32).prop_map(|(at, n)| Mutation::Delete(at, n)),
    ]
}

/// Applies `mutation` to the first `limit` bytes of `bytes` (positions are
/// drawn inside that prefix, so a large file's header is what gets hit).
fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, limit: usize) {
    let span = bytes.len().min(limit);
    if span == 0 {
        return;
    }
    match mutation {
        Mutation::FlipBit(at, bit) => bytes[at.index(span)] ^= 1 << bit,
        Mutation::SetByte(at, v) => bytes[at.index(span)] = *v,
        Mutation::Truncate(at) => bytes.truncate(at.index(span)),
        Mutation::Splice { from, to, len } => {
            let (from, to) = (from.index(span), to.index(span));
            let len = (*len).min(span - from).min(span - to);
            bytes.copy_within(from..from + len, to);
        }
        Mutation::SetU64(at, v) => {
            let at = at.index(span);
            let end = (at + 8).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        Mutation::SetU32(at, v) => {
            let at = at.index(span);
            let end = (at + 4).min(bytes.len());
            bytes[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
        }
        Mutation::Insert(at, new) => {
            let at = at.index(span);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Delete(at, n) => {
            let at = at.index(span);
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

/// The fuzzing base: every metadata type, and tensors of every type the
/// reader dequantises, in a small file.
fn fuzz_base_file() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama").unwrap();
    w.add("llama.block_count", 2u32).unwrap();
    w.add("general.alignment", 32u32).unwrap();
    w.add("tokens", vec!["<s>", "a", "bc"]).unwrap();
    w.add("nested", vec![MetaArray::I32(vec![1, 2]), MetaArray::String(vec!["x".into()])]).unwrap();
    w.add("f", 0.5f32).unwrap();
    w.add("b", true).unwrap();
    w.add("i64", -5i64).unwrap();
    w.add_tensor_f32("f32", &[4, 2], GgmlType::F32, &pseudo_random(1, 8)).unwrap();
    w.add_tensor_f32("f16", &[4], GgmlType::F16, &pseudo_random(2, 4)).unwrap();
    w.add_tensor_f32("q8", &[32], GgmlType::Q8_0, &pseudo_random(3, 32)).unwrap();
    w.add_tensor_f32("q41", &[32], GgmlType::Q4_1, &pseudo_random(4, 32)).unwrap();
    w.add_tensor_bytes("q40", &[32], GgmlType::Q4_0, random_blocks(GgmlType::Q4_0, 1, &[0], 5)).unwrap();
    w.add_tensor_bytes("q4k", &[256], GgmlType::Q4_K, random_blocks(GgmlType::Q4_K, 1, &[0, 2], 6)).unwrap();
    w.add_tensor_bytes("q6k", &[256], GgmlType::Q6_K, random_blocks(GgmlType::Q6_K, 1, &[208], 7)).unwrap();
    w.to_bytes()
}

/// Runs `cases` mutated copies of `base` through the parser (mutations at
/// positions below `limit`); panics on the first failure, after shrinking it.
/// Returns (cases run, cases that still parsed).
fn fuzz(base: Vec<u8>, cases: u32, limit: usize) -> (u32, u32) {
    let config =
        ProptestConfig { cases, failure_persistence: None, max_shrink_iters: 2000, ..Default::default() };
    let mut runner = TestRunner::new(config);
    let (run, parsed) = (Cell::new(0u32), Cell::new(0u32));
    let result = runner.run(&prop::collection::vec(mutation(), 1..5), |mutations| {
        let mut bytes = base.clone();
        for m in &mutations {
            apply(&mut bytes, m, limit);
        }
        run.set(run.get() + 1);
        if fuzz_inputs::check_gguf_bytes(&bytes) {
            parsed.set(parsed.get() + 1);
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    (run.get(), parsed.get())
}

#[test]
fn fuzz_mutated_small_files_never_panic() {
    let base = fuzz_base_file();
    parse(base.clone()).expect("the fuzzing base parses");
    let start = Instant::now();
    let (run, parsed) = fuzz(base, 100_000, usize::MAX);
    eprintln!("{run} mutated small GGUF files: {:.2?}, {parsed} still parsed", start.elapsed());
    assert!(run >= 100_000);
}

#[test]
fn fuzz_mutated_real_model_header_never_panics() {
    let path = real_model_path();
    let file = real_model();
    let header_len = file.data_offset();
    drop(file);
    // The header (1.7 MB: metadata with the 49152-token vocabulary, then the
    // tensor infos) without the tensor data, mutated in its first 64 KiB.
    let mut base = Vec::with_capacity(header_len);
    std::fs::File::open(&path).unwrap().take(header_len as u64).read_to_end(&mut base).unwrap();
    let start = Instant::now();
    let (run, _) = fuzz(base, 2_000, 64 * 1024);
    eprintln!("{run} mutated real-model headers: {:.2?}", start.elapsed());
    assert!(run >= 2_000);
}
