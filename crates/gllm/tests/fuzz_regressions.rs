//! The front end's fuzz targets (`fuzz/`: GGUF, safetensors, tokenizer.json,
//! tokenizer text; run on demand with cargo-fuzz, docs/reliability.md) as
//! property tests in the normal suite, plus every saved finding and seed in
//! `fuzz/regressions/<target>/`. (The GGUF and safetensors readers also have
//! 100 000-case mutation tests in gguf.rs and safetensors.rs.)

#[path = "support/fuzz_inputs.rs"]
mod fuzz_inputs;

#[path = "../../gllm-kernels/tests/support/mutate.rs"]
mod mutate;

use mutate::mutated;
use proptest::prelude::*;
use std::path::PathBuf;

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    paths.sort();
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

#[test]
fn saved_inputs_of_every_front_end_target_still_pass() {
    let mut ran = 0;
    for bytes in regressions("gguf") {
        fuzz_inputs::check_gguf_bytes(&bytes);
        fuzz_inputs::check_gguf_tokenizer(&bytes);
        ran += 1;
    }
    for bytes in regressions("safetensors") {
        fuzz_inputs::check_safetensors_bytes(&bytes);
        ran += 1;
    }
    for bytes in regressions("tokenizer_json") {
        fuzz_inputs::check_tokenizer_json(&bytes);
        ran += 1;
    }
    for bytes in regressions("tokenizer_text") {
        fuzz_inputs::check_tokenizer_text(&bytes);
        ran += 1;
    }
    assert!(ran >= 4, "the seed inputs are missing from fuzz/regressions");
}

#[test]
fn the_seeds_are_valid_files() {
    // Mutations start from these, so they must parse as they are.
    let seed = tokenizer_json_seed();
    let at = usize::from(seed[0]) * (seed.len() - 1) / 255;
    let (tok, cfg) = seed[1..].split_at(at);
    let t = gllm::model::hf_tokenizer_from_json(
        "seed",
        std::str::from_utf8(tok).unwrap(),
        Some(std::str::from_utf8(cfg).unwrap()),
    )
    .unwrap();
    assert_eq!(t.decode(&t.encode("ab c", false, false)), "ab c");
    let gguf = gllm::GgufFile::from_bytes("seed.gguf", regressions("gguf").remove(0)).unwrap();
    gllm::model::gguf_tokenizer(&gguf).unwrap();
    gllm::SafetensorsFile::from_bytes("seed", regressions("safetensors").remove(0)).unwrap();
}

#[test]
fn a_token_id_beyond_the_vocabulary_is_an_error_not_an_allocation() {
    let json = r#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1000000000000}, "merges": []}}"#;
    let e = gllm::model::hf_tokenizer_from_json("t.json", json, None).err().unwrap();
    assert!(e.to_string().contains("token id 1000000000000 is beyond the 2 vocabulary"), "{e}");
}

/// A small valid tokenizer.json: the base the mutations start from.
fn tokenizer_json_seed() -> Vec<u8> {
    regressions("tokenizer_json").into_iter().next().expect("a tokenizer.json seed")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tokenizer_json_is_answered(edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        fuzz_inputs::check_tokenizer_json(&mutated(&tokenizer_json_seed(), &edits));
    }

    #[test]
    fn arbitrary_text_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        fuzz_inputs::check_tokenizer_text(&bytes);
    }
}
