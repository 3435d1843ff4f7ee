//! The safetensors model reader: single files, model directories (single and
//! sharded), `config.json`, error messages, and mutation fuzzing of headers.

use gllm::safetensors_model::{Dtype, HfLlamaConfig, SafetensorsFile, SafetensorsModel};
use half::{bf16, f16};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use safetensors::tensor::TensorView;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("gllm-safetensors-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bytes of `values` stored as `dtype` (F32, F16, BF16 or I32).
fn encode(dtype: Dtype, values: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        Dtype::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
        Dtype::I32 => values.iter().flat_map(|&v| (v as i32).to_le_bytes()).collect(),
        other => panic!("no encoder for {other}"),
    }
}

/// A safetensors file of `tensors` (name, dtype, shape, values).
fn safetensors_bytes(tensors: &[(&str, Dtype, Vec<usize>, Vec<f32>)]) -> Vec<u8> {
    let encoded: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, dtype, shape, values)| (name.to_string(), *dtype, shape.clone(), encode(*dtype, values)))
        .collect();
    let views: Vec<(String, TensorView<'_>)> = encoded
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            (name.clone(), TensorView::new(*dtype, shape.clone(), bytes).unwrap())
        })
        .collect();
    let mut info = HashMap::new();
    info.insert("format".to_string(), "pt".to_string());
    safetensors::serialize(views, Some(info)).unwrap()
}

fn small_file() -> Vec<u8> {
    safetensors_bytes(&[
        ("w.f32", Dtype::F32, vec![2, 3], vec![1.0, -2.0, 3.5, 0.25, 1e-3, -7.0]),
        ("w.f16", Dtype::F16, vec![4], vec![1.0, -0.5, 65504.0, 1e-4]),
        ("w.bf16", Dtype::BF16, vec![2, 1], vec![3.0, -1.5]),
        ("w.i32", Dtype::I32, vec![2], vec![7.0, -9.0]),
    ])
}

const SMOLLM2_CONFIG: &str = r#"{
  "architectures": ["LlamaForCausalLM"],
  "attention_bias": false,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 576,
  "initializer_range": 0.041666666666666664,
  "intermediate_size": 1536,
  "max_position_embeddings": 8192,
  "model_type": "llama",
  "num_attention_heads": 9,
  "num_hidden_layers": 30,
  "num_key_value_heads": 3,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 100000,
  "tie_word_embeddings": true,
  "torch_dtype": "bfloat16",
  "vocab_size": 49152
}"#;

#[test]
fn single_file_tensors_convert_to_f32() {
    let file = SafetensorsFile::from_bytes("small.safetensors", small_file()).unwrap();
    assert_eq!(file.tensors().len(), 4);
    assert_eq!(file.metadata().get("format").map(String::as_str), Some("pt"));
    let info = file.tensor_info("w.f32").unwrap();
    assert_eq!(info.shape(), [2, 3]);
    assert_eq!(info.dtype(), Dtype::F32);
    assert_eq!(info.n_elements(), 6);
    assert_eq!(info.n_bytes(), 24);
    assert_eq!(file.tensor_data(info).len(), 24);
    assert_eq!(file.tensor_f32("w.f32").unwrap(), [1.0, -2.0, 3.5, 0.25, 1e-3, -7.0]);
    let f16s = file.tensor_f32("w.f16").unwrap();
    assert_eq!(&f16s[..3], [1.0, -0.5, 65504.0]);
    assert!((f16s[3] - 1e-4).abs() < 1e-7);
    assert_eq!(file.tensor_f32("w.bf16").unwrap(), [3.0, -1.5]);
    assert_eq!(
        file.tensor_f32("w.i32").unwrap_err().to_string(),
        "small.safetensors: unsupported dtype I32 for tensor \"w.i32\" (F32, F16 and BF16 are read)"
    );
    assert_eq!(
        file.tensor_f32("nope").unwrap_err().to_string(),
        "small.safetensors: tensor \"nope\" is missing"
    );
}

#[test]
fn model_directory_with_one_file_and_config() {
    let dir = TempDir::new("single");
    std::fs::write(dir.path().join("model.safetensors"), small_file()).unwrap();
    std::fs::write(dir.path().join("config.json"), SMOLLM2_CONFIG).unwrap();
    let model = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(model.shards().len(), 1);
    let mut names: Vec<&str> = model.tensor_names().collect();
    names.sort();
    assert_eq!(names, ["w.bf16", "w.f16", "w.f32", "w.i32"]);
    assert_eq!(model.tensor_f32("w.bf16").unwrap(), [3.0, -1.5]);
    assert_eq!(model.tensor_info("w.f32").unwrap().shape(), [2, 3]);
    let config = model.hf_config().unwrap();
    assert_eq!(
        config,
        HfLlamaConfig {
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: None,
            vocab_size: 49152,
            max_position_embeddings: 8192,
            rope_theta: 100000.0,
            rms_norm_eps: 1e-5,
            tie_word_embeddings: true,
            architectures: vec!["LlamaForCausalLM".to_string()],
            model_type: Some("llama".to_string()),
        }
    );
    assert_eq!(config.effective_head_dim(), 64);

    // The file itself opens too, with config.json looked for beside it.
    let model = SafetensorsModel::open(dir.path().join("model.safetensors")).unwrap();
    assert_eq!(model.hf_config().unwrap().num_hidden_layers, 30);
    let message = model.tensor_f32("nope").unwrap_err().to_string();
    assert_eq!(message, format!("{}: tensor \"nope\" is missing", dir.path().display()));
}

fn write_sharded(dir: &Path, index: &str) {
    let shard1 = safetensors_bytes(&[("a", Dtype::F32, vec![2], vec![1.0, 2.0])]);
    let shard2 =
        safetensors_bytes(&[("b", Dtype::F16, vec![1], vec![4.0]), ("c", Dtype::F32, vec![1], vec![5.0])]);
    std::fs::write(dir.join("model-00001-of-00002.safetensors"), shard1).unwrap();
    std::fs::write(dir.join("model-00002-of-00002.safetensors"), shard2).unwrap();
    std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
}

#[test]
fn sharded_model_directory() {
    let dir = TempDir::new("sharded");
    write_sharded(
        dir.path(),
        r#"{"metadata": {"total_size": 14}, "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors"}}"#,
    );
    let model = SafetensorsModel::open(dir.path()).unwrap();
    assert_eq!(model.shards().len(), 2);
    assert_eq!(model.tensor_f32("a").unwrap(), [1.0, 2.0]);
    assert_eq!(model.tensor_f32("b").unwrap(), [4.0]);
    assert_eq!(model.tensor_f32("c").unwrap(), [5.0]);
}

#[test]
fn sharded_index_that_disagrees_with_the_shards() {
    let dir = TempDir::new("sharded-wrong");
    write_sharded(
        dir.path(),
        r#"{"weight_map": {"a": "model-00002-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
    );
    let index = dir.path().join("model.safetensors.index.json");
    assert_eq!(
        SafetensorsModel::open(dir.path()).unwrap_err().to_string(),
        format!(
            "{}: tensor \"a\" is listed in \"model-00002-of-00002.safetensors\" but is not there",
            index.display()
        )
    );
    std::fs::write(&index, r#"{"weight_map": {"a": "model-00003-of-00002.safetensors"}}"#).unwrap();
    let message = SafetensorsModel::open(dir.path()).unwrap_err().to_string();
    assert!(
        message.starts_with(&format!(
            "{}: cannot read: ",
            dir.path().join("model-00003-of-00002.safetensors").display()
        )),
        "{message}"
    );
    std::fs::write(&index, r#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#).unwrap();
    assert_eq!(
        SafetensorsModel::open(dir.path()).unwrap_err().to_string(),
        format!("{}: shard name \"../elsewhere.safetensors\" is not a plain file name", index.display())
    );
    std::fs::write(&index, r#"{"weights": {}}"#).unwrap();
    assert_eq!(
        SafetensorsModel::open(dir.path()).unwrap_err().to_string(),
        format!("{}: missing field `weight_map` at line 1 column 15", index.display())
    );
}

#[test]
fn a_tensor_in_two_shards_is_an_error() {
    let dir = TempDir::new("sharded-duplicate");
    let shard = safetensors_bytes(&[("a", Dtype::F32, vec![1], vec![1.0])]);
    std::fs::write(dir.path().join("s1.safetensors"), &shard).unwrap();
    std::fs::write(dir.path().join("s2.safetensors"), &shard).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}}"#,
    )
    .unwrap();
    assert_eq!(
        SafetensorsModel::open(dir.path()).unwrap_err().to_string(),
        format!(
            "{}: tensor \"a\" is also in {}",
            dir.path().join("s2.safetensors").display(),
            dir.path().join("s1.safetensors").display()
        )
    );
}

#[test]
fn a_directory_without_weights() {
    let dir = TempDir::new("empty");
    assert_eq!(
        SafetensorsModel::open(dir.path()).unwrap_err().to_string(),
        format!(
            "{}: no model.safetensors or model.safetensors.index.json in this directory",
            dir.path().display()
        )
    );
}

#[test]
fn corrupt_headers_give_errors_naming_the_file() {
    let error =
        |bytes: Vec<u8>| SafetensorsFile::from_bytes("bad.safetensors", bytes).unwrap_err().to_string();
    assert_eq!(error(vec![1, 2, 3]), "bad.safetensors: invalid safetensors file: header too small");
    let mut too_long = small_file();
    too_long[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(error(too_long), "bad.safetensors: invalid safetensors file: header too large");
    let mut past_end = small_file();
    past_end[..8].copy_from_slice(&1000u64.to_le_bytes());
    assert_eq!(error(past_end), "bad.safetensors: invalid safetensors file: invalid header length");
    let mut cut = small_file();
    cut.pop();
    assert_eq!(
        error(cut),
        "bad.safetensors: invalid safetensors file: incomplete metadata, file not fully covered"
    );
    let mut not_json = small_file();
    not_json[8] = b'[';
    assert!(
        error(not_json).starts_with("bad.safetensors: invalid safetensors file: invalid JSON in header: ")
    );
    let message = SafetensorsFile::open("/nonexistent/model.safetensors").unwrap_err().to_string();
    assert!(message.starts_with("/nonexistent/model.safetensors: cannot read: "), "{message}");
}

#[test]
fn config_defaults_and_errors() {
    let minimal = r#"{"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "vocab_size": 100, "max_position_embeddings": 256, "rms_norm_eps": 1e-6}"#;
    let config = HfLlamaConfig::from_json_str("config.json", minimal).unwrap();
    assert_eq!(config.num_key_value_heads, 4, "defaults to num_attention_heads");
    assert_eq!(config.rope_theta, 10000.0);
    assert!(!config.tie_word_embeddings);
    assert!(config.architectures.is_empty());
    assert_eq!(config.model_type, None);
    assert_eq!(config.effective_head_dim(), 16);
    let with_head_dim = minimal.replace("\"vocab_size\"", "\"head_dim\": 32, \"vocab_size\"");
    assert_eq!(HfLlamaConfig::from_json_str("config.json", &with_head_dim).unwrap().effective_head_dim(), 32);

    let missing = minimal.replace("\"hidden_size\": 64, ", "");
    let message = HfLlamaConfig::from_json_str("config.json", &missing).unwrap_err().to_string();
    assert!(message.starts_with("config.json: missing field `hidden_size`"), "{message}");
    let mistyped = minimal.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": \"two\"");
    let message = HfLlamaConfig::from_json_str("config.json", &mistyped).unwrap_err().to_string();
    assert!(message.starts_with("config.json: invalid type: string \"two\", expected usize"), "{message}");
    let bad_gqa = minimal.replace("\"vocab_size\"", "\"num_key_value_heads\": 3, \"vocab_size\"");
    assert_eq!(
        HfLlamaConfig::from_json_str("config.json", &bad_gqa).unwrap_err().to_string(),
        "config.json: num_attention_heads = 4 is not a multiple of num_key_value_heads = 3"
    );
    let message = HfLlamaConfig::load("/nonexistent/config.json").unwrap_err().to_string();
    assert!(message.starts_with("/nonexistent/config.json: cannot read: "), "{message}");
}

// ---------------------------------------------------------------------------
// Mutation fuzzing

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(prop::sample::Index, u8),
    SetByte(prop::sample::Index, u8),
    Truncate(prop::sample::Index),
    /// Overwrite the u64 header length.
    SetHeaderLength(u64),
    /// Replace a byte of the JSON header with a JSON-significant character.
    JsonByte(prop::sample::Index, u8),
    /// Replace a run of the header with a digit string (offsets, shapes).
    Number(prop::sample::Index, u64),
    Delete(prop::sample::Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    use prop::sample::Index;
    let json_bytes = prop::sample::select(b"{}[]\":,0123456789-eE.tfn \\".to_vec());
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit(at, bit)),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, v)| Mutation::SetByte(at, v)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => prop_oneof![0u64..400, any::<u64>()].prop_map(Mutation::SetHeaderLength),
        3 => (any::<Index>(), json_bytes).prop_map(|(at, b)| Mutation::JsonByte(at, b)),
        2 => (any::<Index>(), prop_oneof![0u64..100, any::<u64>()]).prop_map(|(at, n)| Mutation::Number(at, n)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(at, n)| Mutation::Delete(at, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation, header_end: usize) {
    // Positions are drawn in the header (length prefix + JSON).
    let span = bytes.len().min(header_end);
    if span == 0 {
        return;
    }
    match mutation {
        Mutation::FlipBit(at, bit) => bytes[at.index(span)] ^= 1 << bit,
        Mutation::SetByte(at, v) => bytes[at.index(span)] = *v,
        Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len().max(1))),
        Mutation::SetHeaderLength(n) => {
            let end = bytes.len().min(8);
            bytes[..end].copy_from_slice(&n.to_le_bytes()[..end]);
        }
        Mutation::JsonByte(at, b) => bytes[at.index(span)] = *b,
        Mutation::Number(at, n) => {
            let at = at.index(span);
            let digits = n.to_string().into_bytes();
            let end = (at + digits.len()).min(bytes.len());
            bytes[at..end].copy_from_slice(&digits[..end - at]);
        }
        Mutation::Delete(at, n) => {
            let at = at.index(span);
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

#[test]
fn fuzz_mutated_headers_never_panic() {
    let base = small_file();
    let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
    let config = ProptestConfig { cases: 100_000, failure_persistence: None, ..Default::default() };
    let mut runner = TestRunner::new(config);
    let start = Instant::now();
    let (run, parsed) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let result = runner.run(&prop::collection::vec(mutation(), 1..4), |mutations| {
        let mut bytes = base.clone();
        for m in &mutations {
            apply(&mut bytes, m, header_end);
        }
        let len = bytes.len();
        run.set(run.get() + 1);
        if let Ok(file) = SafetensorsFile::from_bytes("fuzz.safetensors", bytes) {
            parsed.set(parsed.get() + 1);
            for tensor in file.tensors() {
                let data = file.tensor_data(tensor);
                prop_assert!(data.len() <= len);
                prop_assert_eq!(data.len(), tensor.n_bytes());
                if let Ok(values) = file.tensor_f32(tensor.name()) {
                    prop_assert_eq!(values.len(), tensor.n_elements());
                }
            }
        }
        Ok(())
    });
    eprintln!(
        "{} mutated safetensors headers: {:.2?}, {} still parsed",
        run.get(),
        start.elapsed(),
        parsed.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(run.get() >= 100_000);
}
