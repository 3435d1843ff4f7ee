//! The built-in default model: a tiny LLaMA-shaped model with deterministic
//! weights and a byte-level BPE tokenizer, written as a real GGUF file that
//! is then loaded through the same path as any downloaded model.
//!
//! It exists so that `gllm run` works offline, at once, with nothing to
//! fetch, and exercises everything a real file does: metadata, Q4_1 / Q8_0 /
//! F32 tensors, GGUF's permuted Q/K rows, a tokenizer with merges and control
//! tokens, a chat template. Its weights are random, so its text is not.

use crate::config::LlamaConfig;
use crate::gguf::{GgmlType, GgufWriteError, GgufWriter};
use crate::synthetic::model_weights;
use crate::weights::transpose;
use std::collections::HashMap;

/// The text the tokenizer's merges are learned from.
const CORPUS: &str = "the quick brown fox jumps over the lazy dog. a model runs on the cpu and \
the compiler emits machine code for each kernel of the layer. tokens are read, the cache grows, \
and the next token is chosen. this is the default model of gllm: small, fast, and made here.";

/// Control tokens, ids 0, 1, 2 (as in SmolLM2).
pub const CONTROL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// ChatML, like the test model's template.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// GPT-2's byte → printable character map (bytes that are printable
/// Latin-1 map to themselves; the rest to U+0100 onwards).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).expect("Latin-1")
            } else {
                extra += 1;
                char::from_u32(255 + extra).expect("U+0100 onwards")
            }
        })
        .collect()
}

/// Tokens (control, 256 bytes, merged) and merges, learned greedily from
/// a built-in English paragraph until the vocabulary has `vocab` entries.
pub fn tokenizer_vocab(vocab: usize) -> (Vec<String>, Vec<String>, Vec<i32>) {
    let map = byte_chars();
    let mut tokens: Vec<String> = CONTROL_TOKENS.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; CONTROL_TOKENS.len()];
    tokens.extend(map.iter().map(|c| c.to_string()));
    types.extend(std::iter::repeat_n(1, 256));
    // Words as GPT-2 pre-tokenises them: a leading space belongs to the word.
    let mut words: Vec<Vec<String>> = CORPUS
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            let w = if i == 0 { w.to_string() } else { format!(" {w}") };
            w.bytes().map(|b| map[b as usize].to_string()).collect()
        })
        .collect();
    let mut merges = Vec::new();
    while tokens.len() < vocab {
        let mut counts: HashMap<(String, String), usize> = HashMap::new();
        for w in &words {
            for p in w.windows(2) {
                *counts.entry((p[0].clone(), p[1].clone())).or_default() += 1;
            }
        }
        // Most frequent pair; ties by the pair itself, for determinism.
        let Some((pair, _)) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))) else {
            break;
        };
        let merged = format!("{}{}", pair.0, pair.1);
        for w in &mut words {
            let mut i = 0;
            while i + 1 < w.len() {
                if w[i] == pair.0 && w[i + 1] == pair.1 {
                    w[i] = merged.clone();
                    w.remove(i + 1);
                }
                i += 1;
            }
        }
        merges.push(format!("{} {}", pair.0, pair.1));
        tokens.push(merged);
        types.push(1);
    }
    (tokens, merges, types)
}

/// The default model's configuration.
pub fn config() -> LlamaConfig {
    LlamaConfig { name: "gllm-tiny (built-in, random weights)".into(), ..LlamaConfig::tiny() }
}

/// Rows of each head of Q or K into GGUF's adjacent-pair order: HF row
/// `s·d/2 + i` becomes row `2i + s` (what llama.cpp's converter does).
fn permute_for_gguf(w_out_in: &[f32], rows: usize, cols: usize, head_dim: usize) -> Vec<f32> {
    let half = head_dim / 2;
    let mut out = vec![0.0f32; w_out_in.len()];
    for r in 0..rows {
        let (head, j) = (r / head_dim, r % head_dim);
        let (s, i) = (j / half, j % half);
        let to = head * head_dim + 2 * i + s;
        out[to * cols..(to + 1) * cols].copy_from_slice(&w_out_in[r * cols..(r + 1) * cols]);
    }
    out
}

/// The default model as GGUF bytes.
pub fn gguf_bytes() -> Result<Vec<u8>, GgufWriteError> {
    gguf_bytes_for(&config(), GgmlType::Q4_1)
}

/// A model of shape `cfg` with the default model's tokenizer (`cfg`'s
/// vocabulary size) and deterministic weights, its projections stored as
/// `projections` (e.g. Q4_K, whose rows need a multiple of 256 columns),
/// the embedding and head as Q8_0: test models for each stored format.
pub fn gguf_bytes_for(cfg: &LlamaConfig, projections: GgmlType) -> Result<Vec<u8>, GgufWriteError> {
    let cfg = cfg.clone();
    let weights = model_weights(&cfg, 0x6c6c_6d21);
    let (tokens, merges, types) = tokenizer_vocab(cfg.vocab_size);
    let mut w = GgufWriter::new();
    w.add("general.architecture", "llama")?;
    w.add("general.name", cfg.name.as_str())?;
    w.add("llama.context_length", cfg.context_length as u32)?;
    w.add("llama.embedding_length", cfg.hidden_size as u32)?;
    w.add("llama.feed_forward_length", cfg.intermediate_size as u32)?;
    w.add("llama.block_count", cfg.num_layers as u32)?;
    w.add("llama.attention.head_count", cfg.num_heads as u32)?;
    w.add("llama.attention.head_count_kv", cfg.num_kv_heads as u32)?;
    w.add("llama.rope.dimension_count", cfg.head_dim as u32)?;
    w.add("llama.rope.freq_base", cfg.rope_theta)?;
    w.add("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)?;
    w.add("tokenizer.ggml.model", "gpt2")?;
    w.add("tokenizer.ggml.pre", "smollm")?;
    w.add("tokenizer.ggml.tokens", tokens.iter().map(String::as_str).collect::<Vec<&str>>())?;
    w.add("tokenizer.ggml.token_type", types)?;
    w.add("tokenizer.ggml.merges", merges.iter().map(String::as_str).collect::<Vec<&str>>())?;
    w.add("tokenizer.ggml.bos_token_id", 1u32)?;
    w.add("tokenizer.ggml.eos_token_id", 2u32)?;
    w.add("tokenizer.ggml.unknown_token_id", 0u32)?;
    w.add("tokenizer.ggml.add_bos_token", false)?;
    w.add("tokenizer.chat_template", CHAT_TEMPLATE)?;
    let (h, v) = (cfg.hidden_size as u64, cfg.vocab_size as u64);
    let get = |name: &str| weights.get(name).expect("synthetic weights are complete");
    w.add_tensor_f32("token_embd.weight", &[h, v], GgmlType::Q8_0, get("token_embd.weight"))?;
    w.add_tensor_f32("output_norm.weight", &[h], GgmlType::F32, get("output_norm.weight"))?;
    let head = transpose(get("output.weight"), cfg.hidden_size, cfg.vocab_size);
    w.add_tensor_f32("output.weight", &[h, v], GgmlType::Q8_0, &head)?;
    for l in 0..cfg.num_layers {
        for (name, shape) in crate::layer_graph::layer_weight_shapes(&cfg) {
            let data = weights.layer(l, name).expect("synthetic weights are complete");
            let file_name = format!("blk.{l}.{name}");
            if shape.len() == 1 {
                w.add_tensor_f32(file_name, &[shape[0] as u64], GgmlType::F32, data)?;
                continue;
            }
            let (k, n) = (shape[0], shape[1]);
            let mut rows = transpose(data, k, n);
            if name == "attn_q.weight" || name == "attn_k.weight" {
                rows = permute_for_gguf(&rows, n, k, cfg.head_dim);
            }
            w.add_tensor_f32(file_name, &[k as u64, n as u64], projections, &rows)?;
        }
    }
    Ok(w.to_bytes())
}
