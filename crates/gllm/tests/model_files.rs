//! Loading models: the built-in model's GGUF, the same weights as an HF
//! safetensors checkpoint (rotate-half RoPE, `[out, in]` rows, config.json,
//! tokenizer.json) giving the same logits, and files that disagree with
//! their own configuration.

use gllm::engine::{Engine, EngineOptions};
use gllm::gguf::{GgufFile, GgufWriter, MetaValue};
use gllm::model::Model;
use gllm::weights::transpose;
use gllm_kernels::device::DeviceProfile;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::path::{Path, PathBuf};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("gllm-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_builtin(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, gllm::builtin::gguf_bytes().unwrap()).unwrap();
    p
}

fn logits(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut o = EngineOptions::new(DeviceProfile::detect().unwrap());
    o.max_context = 64;
    let mut e = Engine::new(model.config.clone(), model.weights.clone(), o).unwrap();
    e.forward(ids, true).unwrap()
}

#[test]
fn the_builtin_gguf_loads_with_its_tokenizer_and_config() {
    let dir = temp_dir("builtin");
    let m = Model::load(&write_builtin(&dir), &|_, _| {}).unwrap();
    assert_eq!(m.config.hidden_size, 64);
    assert_eq!(m.config.num_kv_heads, 2);
    assert!(!m.config.tie_word_embeddings);
    assert_eq!(m.tokenizer.vocab_size(), m.config.vocab_size);
    let ids = m.tokenizer.encode("the quick brown fox", true, true);
    assert!(ids.len() < "the quick brown fox".len(), "merges apply: {ids:?}");
    assert_eq!(m.tokenizer.decode(&ids), "the quick brown fox");
    assert!(m.info.format.contains("Q4_1") && m.info.format.contains("Q8_0"), "{}", m.info.format);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn gguf_and_safetensors_of_the_same_weights_give_the_same_logits() {
    let dir = temp_dir("hf");
    // Both as f32: the comparison is bit for bit.
    let f32_weights = gllm::model::LoadOptions { weights: gllm::model::WeightStorage::F32 };
    let gguf = Model::load_with(&write_builtin(&dir), &f32_weights, &|_, _| {}).unwrap();
    let cfg = &gguf.config;
    let w = &gguf.weights;
    let (h, v) = (cfg.hidden_size, cfg.vocab_size);
    // The canonical weights are HF-ordered (Q/K un-permuted at load), `[in, out]`.
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h], w.get("token_embd.weight").unwrap().to_vec()),
        ("model.norm.weight".into(), vec![h], w.get("output_norm.weight").unwrap().to_vec()),
        ("lm_head.weight".into(), vec![v, h], transpose(w.get("output.weight").unwrap(), h, v)),
    ];
    for l in 0..cfg.num_layers {
        for (ours, hf) in [
            ("attn_norm.weight", "input_layernorm.weight"),
            ("attn_q.weight", "self_attn.q_proj.weight"),
            ("attn_k.weight", "self_attn.k_proj.weight"),
            ("attn_v.weight", "self_attn.v_proj.weight"),
            ("attn_output.weight", "self_attn.o_proj.weight"),
            ("ffn_norm.weight", "post_attention_layernorm.weight"),
            ("ffn_gate.weight", "mlp.gate_proj.weight"),
            ("ffn_up.weight", "mlp.up_proj.weight"),
            ("ffn_down.weight", "mlp.down_proj.weight"),
        ] {
            let shape =
                gllm::layer_graph::layer_weight_shapes(cfg).into_iter().find(|(n, _)| *n == ours).unwrap().1;
            let data = w.layer(l, ours).unwrap();
            let (shape, data) = match shape[..] {
                [k, n] => (vec![n, k], transpose(data, k, n)),
                _ => (shape, data.to_vec()),
            };
            tensors.push((format!("model.layers.{l}.{hf}"), shape, data));
        }
    }
    let bytes: Vec<Vec<u8>> =
        tensors.iter().map(|t| t.2.iter().flat_map(|x| x.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| (t.0.clone(), TensorView::new(Dtype::F32, t.1.clone(), b).unwrap()))
        .collect();
    let hf_dir = dir.join("hf");
    std::fs::create_dir_all(&hf_dir).unwrap();
    std::fs::write(hf_dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": h, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "vocab_size": v,
        "max_position_embeddings": cfg.context_length, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": false
    });
    std::fs::write(hf_dir.join("config.json"), config.to_string()).unwrap();
    let (tokens, merges, types) = gllm::builtin::tokenizer_vocab(v);
    let vocab: serde_json::Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] != 3)
        .map(|(i, t)| (t.clone(), (i as u64).into()))
        .collect();
    let added: Vec<serde_json::Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| types[*i] == 3)
        .map(|(i, t)| serde_json::json!({"id": i, "content": t, "special": true}))
        .collect();
    let tokenizer = serde_json::json!({
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": merges}
    });
    std::fs::write(hf_dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::write(
        hf_dir.join("tokenizer_config.json"),
        serde_json::json!({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": gllm::builtin::CHAT_TEMPLATE}).to_string(),
    )
    .unwrap();

    let hf = Model::load(&hf_dir, &|_, _| {}).unwrap();
    assert_eq!(hf.config.num_layers, cfg.num_layers);
    let text = "the next token is chosen, 42 times!";
    let ids = gguf.tokenizer.encode(text, true, true);
    assert_eq!(hf.tokenizer.encode(text, true, true), ids);
    assert_eq!(hf.tokenizer.eos(), gguf.tokenizer.eos());
    let (a, b) = (logits(&gguf, &ids), logits(&hf, &ids));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "GGUF and safetensors logits differ");

    // The same weights as BF16 (as most HF checkpoints ship): matrices kept
    // as stored and read by the BF16 GEMV, with the prompt's logits those of
    // the same file loaded as f32, bit for bit (prompt processing runs the
    // f32 GEMM on panels dequantised from the stored rows).
    let bf16: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.2.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bf16)
        .map(|(t, b)| (t.0.clone(), TensorView::new(Dtype::BF16, t.1.clone(), b).unwrap()))
        .collect();
    std::fs::write(hf_dir.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let stored = Model::load(&hf_dir, &|_, _| {}).unwrap();
    let f32_weights = gllm::model::LoadOptions { weights: gllm::model::WeightStorage::F32 };
    let widened = Model::load_with(&hf_dir, &f32_weights, &|_, _| {}).unwrap();
    assert_eq!(stored.weights.quant_formats(), vec![gllm_kernels::quant::QuantFormat::Bf16]);
    assert!(
        stored.weights.size_bytes() * 10 < widened.weights.size_bytes() * 6,
        "BF16 matrices held as stored"
    );
    let ids: Vec<u32> = ids.iter().copied().cycle().take(12).collect();
    let (a, b) = (logits(&stored, &ids), logits(&widened, &ids));
    assert!(
        a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
        "BF16 as stored vs as f32: logits differ"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `(name, dims) -> Some(new dims) | None (drop the tensor)`.
type EditTensor = dyn Fn(&str, &[u64]) -> Option<Vec<u64>>;

/// Rewrites the built-in GGUF through `edit(name, dims) -> Some(new dims) | None (drop)`.
fn rewrite(edit_meta: &dyn Fn(&str, &MetaValue) -> Option<MetaValue>, edit: &EditTensor) -> Vec<u8> {
    let src = GgufFile::from_bytes("builtin", gllm::builtin::gguf_bytes().unwrap()).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        if let Some(v) = edit_meta(k, v) {
            w.add(k.clone(), v).unwrap();
        }
    }
    for t in src.tensors() {
        let Some(dims) = edit(t.name(), t.dims()) else { continue };
        if dims == t.dims() {
            w.add_tensor_bytes(t.name(), &dims, t.ggml_type(), src.tensor_data(t).to_vec()).unwrap();
        } else {
            let n: u64 = dims.iter().product();
            w.add_tensor_f32(t.name(), &dims, gllm::GgmlType::F32, &vec![0.0; n as usize]).unwrap();
        }
    }
    w.to_bytes()
}

fn load_err(name: &str, bytes: Vec<u8>) -> String {
    let dir = temp_dir(name);
    let p = dir.join(format!("{name}.gguf"));
    std::fs::write(&p, bytes).unwrap();
    let e = Model::load(&p, &|_, _| {}).err().expect("the file must be refused").to_string();
    let _ = std::fs::remove_dir_all(dir);
    assert!(e.contains(&format!("{name}.gguf")), "the error names the file: {e}");
    e
}

#[test]
fn a_missing_tensor_is_named() {
    let e = load_err(
        "missing",
        rewrite(&|_, v| Some(v.clone()), &|n, d| (n != "blk.1.ffn_up.weight").then(|| d.to_vec())),
    );
    assert!(e.contains("tensor `blk.1.ffn_up.weight` is missing"), "{e}");
}

#[test]
fn a_shape_that_disagrees_with_the_config_is_named() {
    let e = load_err(
        "shape",
        rewrite(&|_, v| Some(v.clone()), &|n, d| {
            Some(if n == "blk.0.attn_k.weight" { vec![64, 64] } else { d.to_vec() })
        }),
    );
    assert!(
        e.contains("tensor `blk.0.attn_k.weight` has shape [64, 64]; the configuration needs [32, 64]"),
        "{e}"
    );
}

#[test]
fn an_unsupported_architecture_or_missing_key_is_named() {
    let e = load_err(
        "arch",
        rewrite(
            &|k, v| Some(if k == "general.architecture" { MetaValue::from("mamba") } else { v.clone() }),
            &|_, d| Some(d.to_vec()),
        ),
    );
    assert!(e.contains("architecture `mamba` is not supported"), "{e}");
    let e = load_err(
        "nokey",
        rewrite(&|k, v| (k != "llama.block_count").then(|| v.clone()), &|_, d| Some(d.to_vec())),
    );
    assert!(e.contains("llama.block_count"), "{e}");
    let e = load_err(
        "heads",
        rewrite(
            &|k, v| Some(if k == "llama.attention.head_count_kv" { MetaValue::U32(3) } else { v.clone() }),
            &|_, d| Some(d.to_vec()),
        ),
    );
    assert!(e.contains("4 attention heads cannot share 3 KV heads"), "{e}");
}

#[test]
fn not_a_model_file_is_refused_clearly() {
    let dir = temp_dir("notmodel");
    let p = dir.join("notes.txt");
    std::fs::write(&p, "hello").unwrap();
    let e = Model::load(&p, &|_, _| {}).err().unwrap().to_string();
    assert!(e.contains("notes.txt: not a GGUF file"), "{e}");
    let e = Model::load(&dir.join("absent.gguf"), &|_, _| {}).err().unwrap().to_string();
    assert!(e.contains("absent.gguf: cannot read"), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}
