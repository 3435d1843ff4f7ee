// Arbitrary bytes → the front end's readers, shared by the suite
// (tests/fuzz_regressions.rs) and the cargo-fuzz targets (fuzz/, which
// include this file by path). Whatever the bytes: a value or an error,
// never a panic, an abort or a hang.
#![allow(dead_code)]

use gllm::gguf::GgufFile;
use gllm::model::{gguf_tokenizer, hf_tokenizer_from_json};
use gllm::safetensors_model::SafetensorsFile;
use gllm::tokenizer::Tokenizer;
use std::sync::OnceLock;

/// A GGUF file from arbitrary bytes: parsed, every metadata value and
/// tensor touched (each tensor's bytes in bounds and aligned). Returns
/// whether it parsed.
pub fn check_gguf_bytes(data: &[u8]) -> bool {
    let len = data.len();
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return false };
    for (key, _) in file.metadata() {
        let _ = file.get_usize(key);
        let _ = file.get_str_array(key);
    }
    for info in file.tensors() {
        let data = file.tensor_data(info);
        assert_eq!(data.len() as u64, info.n_bytes(), "{}", info.name());
        let start = file.data_offset() as u64 + info.offset();
        assert!(start + info.n_bytes() <= len as u64, "{} ends past the buffer", info.name());
        assert_eq!(info.offset() % file.alignment(), 0);
        if let Ok(values) = file.tensor_f32(info.name()) {
            assert_eq!(values.len() as u64, info.n_elements());
        }
    }
    true
}

/// The tokenizer of a GGUF file from arbitrary bytes, if it parses and
/// has one: built, then used.
pub fn check_gguf_tokenizer(data: &[u8]) {
    let Ok(file) = GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else { return };
    if let Ok(tok) = gguf_tokenizer(&file) {
        let ids = tok.encode("Hello, world! 123", true, true);
        let _ = tok.decode(&ids);
    }
}

/// A safetensors file from arbitrary bytes: parsed, every tensor touched.
pub fn check_safetensors_bytes(data: &[u8]) {
    let len = data.len();
    let Ok(file) = SafetensorsFile::from_bytes("fuzz.safetensors", data.to_vec()) else { return };
    for tensor in file.tensors() {
        let bytes = file.tensor_data(tensor);
        assert!(bytes.len() <= len);
        assert_eq!(bytes.len(), tensor.n_bytes());
        if let Ok(values) = file.tensor_f32(tensor.name()) {
            assert_eq!(values.len(), tensor.n_elements());
        }
    }
}

/// An HF `tokenizer.json` from arbitrary text (the first byte says how much
/// of the rest is `tokenizer_config.json`): built or refused; if built, it
/// encodes and decodes.
pub fn check_tokenizer_json(data: &[u8]) {
    let Some((&split, rest)) = data.split_first() else { return };
    let at = (usize::from(split) * rest.len() / 255).min(rest.len());
    let (tok, cfg) = rest.split_at(at);
    let (Ok(tok), Ok(cfg)) = (std::str::from_utf8(tok), std::str::from_utf8(cfg)) else { return };
    let cfg = (!cfg.is_empty()).then_some(cfg);
    if let Ok(t) = hf_tokenizer_from_json("fuzz/tokenizer.json", tok, cfg) {
        let ids = t.encode("a b  ab\n€ 12345 <|endoftext|>", true, true);
        let _ = t.decode(&ids);
    }
}

/// The built-in model's tokenizer (byte-level BPE with merges and specials).
fn builtin_tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::from_bytes("builtin.gguf", gllm::builtin::gguf_bytes().unwrap()).unwrap();
        gguf_tokenizer(&file).unwrap()
    })
}

/// Arbitrary text encoded (specials parsed or not) and arbitrary ids
/// decoded; text round-trips through encode and decode.
pub fn check_tokenizer_text(data: &[u8]) {
    let tok = builtin_tokenizer();
    let text = String::from_utf8_lossy(data);
    for parse_special in [false, true] {
        let ids = tok.encode(&text, false, parse_special);
        if !parse_special {
            assert_eq!(tok.decode(&ids), text, "encode/decode round trip");
        }
    }
    let ids: Vec<u32> = data.chunks(4).map(|c| c.iter().fold(0u32, |a, &b| a << 8 | u32::from(b))).collect();
    let _ = tok.decode(&ids);
}
