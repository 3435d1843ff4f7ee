//! Loading a LLaMA-family model from a file: configuration, weights in the
//! engine's canonical layouts, and the tokenizer.
//!
//! ```text
//!   GGUF (llama.* keys, tokenizer.ggml.*)          ─┐
//!   safetensors + config.json (+ tokenizer.json)   ─┴─[check every tensor against the config]──> Model
//! ```
//!
//! Every tensor is checked (presence, shape) against the configuration in
//! one table before anything is converted, and every error names the file
//! and the tensor or key. Matrices stay in their stored format (as
//! `[out, in]` rows) unless [`WeightStorage::F32`] is asked for; f32 weights
//! are converted here (in parallel), projections transposed to `[in, out]`.
//!
//! RoPE layouts: GGUF's converter permutes the rows of each head of Q and K
//! so that rotating adjacent pairs (2i, 2i+1) is right for the stored
//! weights; HF checkpoints rotate halves (i, i + d/2). The graphs rotate
//! halves, so GGUF Q/K rows are permuted back at load: row `2i + s` of a
//! head goes to row `s·d/2 + i`. Attention scores are the same either way
//! (q·k is invariant under the same permutation of both), which the tests
//! check against an independent numpy forward pass that rotates pairs.

use crate::config::LlamaConfig;
use crate::gguf::{GgufError, GgufFile};
use crate::safetensors_model::{SafetensorsError, SafetensorsModel};
use crate::tokenizer::{Tokenizer, TokenizerError, TokenizerSpec};
use crate::weights::{transpose, ModelWeights, QuantTensor, Tensor};
use gllm_kernels::quant::{QuantFormat, QuantMatrix};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use thiserror::Error;

/// Why a model could not be loaded.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    #[error("{file}: {problem}")]
    Config { file: String, problem: String },
    #[error("{file}: tensor `{tensor}` is missing")]
    MissingTensor { file: String, tensor: String },
    #[error("{file}: tensor `{tensor}` has shape {got:?}; the configuration needs {want:?}")]
    Shape { file: String, tensor: String, got: Vec<usize>, want: Vec<usize> },
    #[error("{file}: tokenizer: {source}")]
    Tokenizer {
        file: String,
        #[source]
        source: TokenizerError,
    },
    #[error("{file}: cannot read: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: not a GGUF file, a .safetensors file or a directory holding one")]
    UnknownFormat(String),
}

/// What a model file is, for reports and bench rows.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    /// e.g. `GGUF v3, Q4_1` or `safetensors, BF16`.
    pub format: String,
    /// `general.name` or the directory name.
    pub name: String,
    /// Bytes of tensor data in the file(s).
    pub file_bytes: u64,
    pub params: usize,
}

/// A loaded model.
pub struct Model {
    pub config: LlamaConfig,
    pub weights: Arc<ModelWeights>,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
}

/// How to load a model's weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Quantised weights as stored (the default) or dequantised to f32.
    pub weights: WeightStorage,
}

/// How quantised weights are held after loading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightStorage {
    /// Matrices stay in their stored format — every GGUF block format
    /// (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and F16/BF16, in GGUF or safetensors
    /// — and the JIT reads them as stored: decode reads 2–8× fewer bytes
    /// per token. Block formats run with activations quantised to int8 per
    /// block as llama.cpp does (the same greedy text as llama.cpp on the
    /// same file; docs/quantised.md); F16/BF16 with f32 activations. F32
    /// tensors stay f32.
    #[default]
    AsStored,
    /// Every weight dequantised to f32 at load (`--f32-weights`): exact
    /// arithmetic on the file's values, the accuracy baseline.
    F32,
}

/// Called as tensors are converted: (done, total).
pub type Progress<'a> = &'a (dyn Fn(usize, usize) + Sync);

/// How a tensor in the file becomes a canonical weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convert {
    /// Vectors and `[rows, cols]` kept as they are.
    AsIs,
    /// `[out, in]` rows → `[in, out]`.
    Transpose,
    /// Q/K in GGUF's adjacent-pair order: rows permuted per head of
    /// `head_dim`, then transposed.
    UnpermuteTranspose { head_dim: usize },
}

/// One row of the loading table: canonical name, file name, the shape the
/// file must hold (row-major, outer first), conversion.
struct Wanted {
    name: String,
    file_name: String,
    shape: Vec<usize>,
    convert: Convert,
}

/// The table of every tensor a LLaMA model needs, for file names given by
/// `file_name(canonical layer-free name, layer)`. Shapes are row-major
/// `[out, in]` for projections (both GGUF and HF store them so).
fn wanted(
    cfg: &LlamaConfig,
    gguf_layout: bool,
    file_name: &dyn Fn(&str, Option<usize>) -> String,
) -> Vec<Wanted> {
    let (h, q, kv, f, v) =
        (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size, cfg.vocab_size);
    let mut t = vec![
        Wanted {
            name: "token_embd.weight".into(),
            file_name: file_name("token_embd.weight", None),
            shape: vec![v, h],
            convert: Convert::AsIs,
        },
        Wanted {
            name: "output_norm.weight".into(),
            file_name: file_name("output_norm.weight", None),
            shape: vec![h],
            convert: Convert::AsIs,
        },
    ];
    if !cfg.tie_word_embeddings {
        t.push(Wanted {
            name: "output.weight".into(),
            file_name: file_name("output.weight", None),
            shape: vec![v, h],
            convert: Convert::Transpose,
        });
    }
    let qk =
        if gguf_layout { Convert::UnpermuteTranspose { head_dim: cfg.head_dim } } else { Convert::Transpose };
    for l in 0..cfg.num_layers {
        for (name, shape, convert) in [
            ("attn_norm.weight", vec![h], Convert::AsIs),
            ("attn_q.weight", vec![q, h], qk),
            ("attn_k.weight", vec![kv, h], qk),
            ("attn_v.weight", vec![kv, h], Convert::Transpose),
            ("attn_output.weight", vec![h, q], Convert::Transpose),
            ("ffn_norm.weight", vec![h], Convert::AsIs),
            ("ffn_gate.weight", vec![f, h], Convert::Transpose),
            ("ffn_up.weight", vec![f, h], Convert::Transpose),
            ("ffn_down.weight", vec![h, f], Convert::Transpose),
        ] {
            t.push(Wanted {
                name: format!("blk.{l}.{name}"),
                file_name: file_name(name, Some(l)),
                shape,
                convert,
            });
        }
    }
    t
}

fn convert(data: Vec<f32>, shape: &[usize], how: Convert) -> Vec<f32> {
    match how {
        Convert::AsIs => data,
        Convert::Transpose => transpose(&data, shape[0], shape[1]),
        Convert::UnpermuteTranspose { head_dim } => {
            let (rows, cols) = (shape[0], shape[1]);
            let mut hf = vec![0.0f32; data.len()];
            for r in 0..rows {
                let to = unpermuted_row(r, head_dim);
                hf[to * cols..(to + 1) * cols].copy_from_slice(&data[r * cols..(r + 1) * cols]);
            }
            transpose(&hf, rows, cols)
        }
    }
}

impl Model {
    /// Loads a GGUF file, a `.safetensors` file, or a directory holding
    /// safetensors shards with `config.json` and `tokenizer.json`.
    pub fn load(path: &Path, progress: Progress) -> Result<Model, ModelError> {
        Model::load_with(path, &LoadOptions::default(), progress)
    }

    /// [`Model::load`] with options (e.g. every weight dequantised to f32).
    pub fn load_with(path: &Path, options: &LoadOptions, progress: Progress) -> Result<Model, ModelError> {
        let shown = path.display().to_string();
        if path.is_dir() || path.extension().is_some_and(|e| e == "safetensors") {
            return Model::from_safetensors_with(path, options, progress);
        }
        let mut magic = [0u8; 4];
        use std::io::Read;
        let mut f =
            std::fs::File::open(path).map_err(|source| ModelError::Io { file: shown.clone(), source })?;
        let n = f.read(&mut magic).map_err(|source| ModelError::Io { file: shown.clone(), source })?;
        if n == 4 && &magic == b"GGUF" {
            let file = GgufFile::open(path)?;
            return Model::from_gguf_with(&file, path, options, progress);
        }
        Err(ModelError::UnknownFormat(shown))
    }

    /// A model from an opened GGUF file (`path` for reports).
    pub fn from_gguf(file: &GgufFile, path: &Path, progress: Progress) -> Result<Model, ModelError> {
        Model::from_gguf_with(file, path, &LoadOptions::default(), progress)
    }

    /// [`Model::from_gguf`] with options.
    pub fn from_gguf_with(
        file: &GgufFile,
        path: &Path,
        options: &LoadOptions,
        progress: Progress,
    ) -> Result<Model, ModelError> {
        let config = gguf_config(file)?;
        let src = file.source_name().to_string();
        let table = wanted(&config, true, &|name, layer| match layer {
            Some(l) => format!("blk.{l}.{name}"),
            None => name.to_string(),
        });
        // Check every tensor before converting any.
        for w in &table {
            let info = file
                .tensor_info(&w.file_name)
                .map_err(|_| ModelError::MissingTensor { file: src.clone(), tensor: w.file_name.clone() })?;
            // ggml dims are innermost first: [in, out] for `[out, in]` rows.
            let got: Vec<usize> = info.dims().iter().rev().map(|&d| d as usize).collect();
            if got != w.shape {
                return Err(ModelError::Shape {
                    file: src.clone(),
                    tensor: w.file_name.clone(),
                    got,
                    want: w.shape.clone(),
                });
            }
        }
        let keep = |w: &Wanted| -> Result<Option<QuantTensor>, ModelError> {
            let info = file.tensor_info(&w.file_name)?;
            let format = info.ggml_type().quant_format();
            let Some(format) =
                format.filter(|f| options.weights == WeightStorage::AsStored && f.has_kernel())
            else {
                return Ok(None);
            };
            if w.shape.len() != 2 {
                return Ok(None);
            }
            let rows = w.shape[0];
            let stored = file.tensor_data(info);
            let bytes = match w.convert {
                Convert::UnpermuteTranspose { head_dim } => {
                    let row_bytes = stored.len() / rows.max(1);
                    let mut out = vec![0u8; stored.len()];
                    for r in 0..rows {
                        let to = unpermuted_row(r, head_dim);
                        out[to * row_bytes..(to + 1) * row_bytes]
                            .copy_from_slice(&stored[r * row_bytes..(r + 1) * row_bytes]);
                    }
                    out
                }
                _ => stored.to_vec(),
            };
            kept_as_stored(w, format, bytes, &src).map(Some)
        };
        let mut weights = convert_all(&table, &|name| Ok(file.tensor_f32(name)?), &keep, progress)?;
        tie_head(&mut weights, &config);
        let tokenizer = gguf_tokenizer(file)?;
        if tokenizer.vocab_size() != config.vocab_size {
            return Err(ModelError::Config {
                file: src,
                problem: format!(
                    "the tokenizer has {} tokens but token_embd.weight has {} rows",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
            });
        }
        let mut types: Vec<&str> = file.tensors().iter().map(|t| t.ggml_type().name()).collect();
        types.sort_unstable();
        types.dedup();
        let info = ModelInfo {
            path: path.to_path_buf(),
            format: format!("GGUF v{}, {}", file.version(), types.join("+")),
            name: file.opt_str("general.name")?.unwrap_or(&config.name).to_string(),
            file_bytes: file.tensors().iter().map(|t| t.n_bytes()).sum(),
            params: weights.num_params(&config),
        };
        Ok(Model { config, weights: Arc::new(weights), tokenizer, info })
    }

    /// A model from HF safetensors with `config.json` (and `tokenizer.json`).
    pub fn from_safetensors(path: &Path, progress: Progress) -> Result<Model, ModelError> {
        Model::from_safetensors_with(path, &LoadOptions::default(), progress)
    }

    /// [`Model::from_safetensors`] with options: F16 and BF16 projections
    /// and embeddings are kept as stored unless f32 weights are asked for.
    pub fn from_safetensors_with(
        path: &Path,
        options: &LoadOptions,
        progress: Progress,
    ) -> Result<Model, ModelError> {
        let st = SafetensorsModel::open(path)?;
        let dir = st.directory().to_path_buf();
        let shown = dir.display().to_string();
        let config = safetensors_config(&st)?;
        let hf_name = |name: &str, layer: Option<usize>| -> String {
            let part = match name {
                "token_embd.weight" => return "model.embed_tokens.weight".into(),
                "output_norm.weight" => return "model.norm.weight".into(),
                "output.weight" => return "lm_head.weight".into(),
                "attn_norm.weight" => "input_layernorm.weight",
                "attn_q.weight" => "self_attn.q_proj.weight",
                "attn_k.weight" => "self_attn.k_proj.weight",
                "attn_v.weight" => "self_attn.v_proj.weight",
                "attn_output.weight" => "self_attn.o_proj.weight",
                "ffn_norm.weight" => "post_attention_layernorm.weight",
                "ffn_gate.weight" => "mlp.gate_proj.weight",
                "ffn_up.weight" => "mlp.up_proj.weight",
                "ffn_down.weight" => "mlp.down_proj.weight",
                other => other,
            };
            format!("model.layers.{}.{part}", layer.unwrap_or(0))
        };
        let table = wanted(&config, false, &hf_name);
        for w in &table {
            let info = st.tensor_info(&w.file_name).map_err(|_| ModelError::MissingTensor {
                file: shown.clone(),
                tensor: w.file_name.clone(),
            })?;
            if info.shape() != w.shape.as_slice() {
                return Err(ModelError::Shape {
                    file: shown.clone(),
                    tensor: w.file_name.clone(),
                    got: info.shape().to_vec(),
                    want: w.shape.clone(),
                });
            }
        }
        let keep = |w: &Wanted| -> Result<Option<QuantTensor>, ModelError> {
            if options.weights != WeightStorage::AsStored || w.shape.len() != 2 {
                return Ok(None);
            }
            let format = match st.tensor_info(&w.file_name)?.dtype() {
                safetensors::Dtype::F16 => QuantFormat::F16,
                safetensors::Dtype::BF16 => QuantFormat::Bf16,
                _ => return Ok(None),
            };
            kept_as_stored(w, format, st.tensor_bytes(&w.file_name)?.to_vec(), &shown).map(Some)
        };
        let mut weights = convert_all(&table, &|name| Ok(st.tensor_f32(name)?), &keep, progress)?;
        tie_head(&mut weights, &config);
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = hf_tokenizer(&tok_path)?;
        let mut dtypes: Vec<String> =
            st.shards().iter().flat_map(|s| s.tensors().iter().map(|t| format!("{:?}", t.dtype()))).collect();
        dtypes.sort_unstable();
        dtypes.dedup();
        let info = ModelInfo {
            path: path.to_path_buf(),
            format: format!("safetensors, {}", dtypes.join("+")),
            name: config.name.clone(),
            file_bytes: st.shards().iter().flat_map(|s| s.tensors().iter().map(|t| t.n_bytes() as u64)).sum(),
            params: weights.num_params(&config),
        };
        Ok(Model { config, weights: Arc::new(weights), tokenizer, info })
    }
}

/// A 2-D table entry kept in its stored `format` (`bytes` as `[out, in]`
/// rows), its byte count checked against the shape.
fn kept_as_stored(
    w: &Wanted,
    format: QuantFormat,
    bytes: Vec<u8>,
    file: &str,
) -> Result<QuantTensor, ModelError> {
    let (rows, cols) = (w.shape[0], w.shape[1]);
    QuantMatrix::new(format, rows, cols, &bytes).map_err(|e| ModelError::Config {
        file: file.to_string(),
        problem: format!("tensor `{}`: {e}", w.file_name),
    })?;
    let transposed = w.convert != Convert::AsIs;
    Ok(QuantTensor { format, rows, cols, bytes: Arc::new(bytes), transposed })
}

/// Reads (`fetch` by file name) and converts every tensor of the table, in
/// parallel, reporting progress. `keep` may return a tensor kept in its
/// stored format instead (quantised weights the kernels read as stored).
fn convert_all(
    table: &[Wanted],
    fetch: &(dyn Fn(&str) -> Result<Vec<f32>, ModelError> + Sync),
    keep: &(dyn Fn(&Wanted) -> Result<Option<QuantTensor>, ModelError> + Sync),
    progress: Progress,
) -> Result<ModelWeights, ModelError> {
    let done = AtomicUsize::new(0);
    let converted: Vec<(String, Tensor)> = table
        .par_iter()
        .map(|w| {
            let out = match keep(w)? {
                Some(q) => Tensor::Quant(q),
                None => Tensor::F32(convert(fetch(&w.file_name)?, &w.shape, w.convert)),
            };
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, table.len());
            Ok((w.name.clone(), out))
        })
        .collect::<Result<_, ModelError>>()?;
    let mut weights = ModelWeights::new();
    for (name, data) in converted {
        match data {
            Tensor::F32(v) => weights.insert(name, v),
            Tensor::Quant(q) => weights.insert_quant(name, q),
        }
    }
    Ok(weights)
}

/// With tied embeddings the LM head is the embedding, transposed to
/// `[hidden, vocab]` (a quantised embedding is shared, read as Bᵀ).
fn tie_head(weights: &mut ModelWeights, cfg: &LlamaConfig) {
    if cfg.tie_word_embeddings {
        match weights.tensor("token_embd.weight").expect("loaded above").clone() {
            Tensor::F32(e) => {
                let head = transpose(&e, cfg.vocab_size, cfg.hidden_size);
                weights.insert("output.weight", head);
            }
            Tensor::Quant(q) => weights.insert_quant("output.weight", QuantTensor { transposed: true, ..q }),
        }
    }
}

/// Where GGUF's Q/K row `r` (adjacent-pair order within each head of
/// `head_dim`) goes in rotate-half order.
fn unpermuted_row(r: usize, head_dim: usize) -> usize {
    let (head, j, half) = (r / head_dim, r % head_dim, head_dim / 2);
    head * head_dim + (j % 2) * half + j / 2
}

fn check_config(cfg: &LlamaConfig, file: &str) -> Result<(), ModelError> {
    let bad = |problem: String| Err(ModelError::Config { file: file.to_string(), problem });
    if cfg.hidden_size == 0
        || cfg.num_layers == 0
        || cfg.num_heads == 0
        || cfg.vocab_size == 0
        || cfg.intermediate_size == 0
    {
        return bad(format!(
            "hidden {}, layers {}, heads {}, vocab {}, FFN {}: none may be zero",
            cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.vocab_size, cfg.intermediate_size
        ));
    }
    if cfg.num_kv_heads == 0 || cfg.num_heads % cfg.num_kv_heads != 0 {
        return bad(format!("{} attention heads cannot share {} KV heads", cfg.num_heads, cfg.num_kv_heads));
    }
    if cfg.head_dim == 0 || cfg.head_dim % 2 != 0 {
        return bad(format!("head dimension {} is not a positive even number", cfg.head_dim));
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if !positive(cfg.rms_norm_eps) || !positive(cfg.rope_theta) {
        return bad(format!(
            "RMS eps {} and RoPE base {} must be positive",
            cfg.rms_norm_eps, cfg.rope_theta
        ));
    }
    Ok(())
}

/// The configuration from `llama.*` metadata (and tensor shapes).
pub fn gguf_config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let src = file.source_name().to_string();
    let arch = file.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(ModelError::Config {
            file: src,
            problem: format!("architecture `{arch}` is not supported (only `llama`)"),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = file.get_usize(&key("embedding_length"))?;
    let heads = file.get_usize(&key("attention.head_count"))?;
    let head_dim = match file.opt_usize(&key("attention.key_length"))? {
        Some(d) => d,
        None => hidden / heads.max(1),
    };
    if let Some(rot) = file.opt_usize(&key("rope.dimension_count"))? {
        if rot != head_dim {
            return Err(ModelError::Config {
                file: src,
                problem: format!(
                    "{} = {rot}: partial rotary embedding (head dim {head_dim}) is not supported",
                    key("rope.dimension_count")
                ),
            });
        }
    }
    if let Some(kind) = file.opt_str(&key("rope.scaling.type"))? {
        if kind != "none" {
            return Err(ModelError::Config {
                file: src,
                problem: format!("{} = `{kind}`: RoPE scaling is not supported", key("rope.scaling.type")),
            });
        }
    }
    let vocab = match file.opt_usize(&key("vocab_size"))? {
        Some(v) => v,
        None => file.tensor_info("token_embd.weight")?.dims().get(1).copied().unwrap_or(0) as usize,
    };
    let cfg = LlamaConfig {
        name: file.opt_str("general.name")?.unwrap_or(arch).to_string(),
        hidden_size: hidden,
        intermediate_size: file.get_usize(&key("feed_forward_length"))?,
        num_layers: file.get_usize(&key("block_count"))?,
        num_heads: heads,
        num_kv_heads: file.opt_usize(&key("attention.head_count_kv"))?.unwrap_or(heads),
        head_dim,
        vocab_size: vocab,
        rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0),
        context_length: file.get_usize(&key("context_length"))?,
        tie_word_embeddings: !file.has_tensor("output.weight"),
    };
    check_config(&cfg, &src)?;
    Ok(cfg)
}

/// The configuration from an HF checkpoint's `config.json` (and whether it
/// has an `lm_head.weight`); the name is the checkpoint's directory name.
pub fn safetensors_config(st: &SafetensorsModel) -> Result<LlamaConfig, ModelError> {
    let dir = st.directory();
    let hf = st.hf_config()?;
    let config = LlamaConfig {
        name: dir.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()),
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads,
        head_dim: hf.effective_head_dim(),
        vocab_size: hf.vocab_size,
        rms_norm_eps: hf.rms_norm_eps as f32,
        rope_theta: hf.rope_theta as f32,
        context_length: hf.max_position_embeddings,
        tie_word_embeddings: hf.tie_word_embeddings || !st.tensor_names().any(|n| n == "lm_head.weight"),
    };
    check_config(&config, &dir.display().to_string())?;
    Ok(config)
}

/// The tokenizer from `tokenizer.ggml.*` metadata.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<Tokenizer, ModelError> {
    let src = file.source_name().to_string();
    let id = |k: &str| -> Result<Option<u32>, ModelError> {
        Ok(file.opt_usize(k)?.map(|v| u32::try_from(v).unwrap_or(u32::MAX)))
    };
    let spec = TokenizerSpec {
        model: file.get_str("tokenizer.ggml.model")?.to_string(),
        pre: file.opt_str("tokenizer.ggml.pre")?.map(str::to_string),
        tokens: file.get_str_array("tokenizer.ggml.tokens")?.to_vec(),
        merges: file.opt_str_array("tokenizer.ggml.merges")?.map(<[String]>::to_vec).unwrap_or_default(),
        token_types: file
            .opt_i32_array("tokenizer.ggml.token_type")?
            .map(<[i32]>::to_vec)
            .unwrap_or_default(),
        bos: id("tokenizer.ggml.bos_token_id")?,
        eos: id("tokenizer.ggml.eos_token_id")?,
        eot: id("tokenizer.ggml.eot_token_id")?,
        pad: id("tokenizer.ggml.padding_token_id")?,
        unk: id("tokenizer.ggml.unknown_token_id")?,
        add_bos: file.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false),
        add_eos: file.opt_bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        chat_template: file.opt_str("tokenizer.chat_template")?.map(str::to_string),
    };
    Tokenizer::new(spec).map_err(|source| ModelError::Tokenizer { file: src, source })
}

/// A byte-level BPE tokenizer from an HF `tokenizer.json` (vocabulary,
/// merges, added tokens), with `tokenizer_config.json`'s chat template and
/// special tokens when present.
pub fn hf_tokenizer(path: &Path) -> Result<Tokenizer, ModelError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| ModelError::Io { file: p.display().to_string(), source })
    };
    let config = std::fs::read_to_string(path.with_file_name("tokenizer_config.json")).ok();
    hf_tokenizer_from_json(&path.display().to_string(), &read(path)?, config.as_deref())
}

/// [`hf_tokenizer`] on the texts of `tokenizer.json` and (if any)
/// `tokenizer_config.json`; `shown` names the source in errors.
pub fn hf_tokenizer_from_json(
    shown: &str,
    tokenizer_json: &str,
    config_json: Option<&str>,
) -> Result<Tokenizer, ModelError> {
    let bad = |problem: &str| ModelError::Config { file: shown.to_string(), problem: problem.to_string() };
    let json: serde_json::Value =
        serde_json::from_str(tokenizer_json).map_err(|e| bad(&format!("invalid JSON: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(bad("only BPE tokenizers are supported"));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object"))?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut put = |id: usize, text: &str, ty: i32, tokens: &mut Vec<Option<String>>| {
        if id >= tokens.len() {
            tokens.resize(id + 1, None);
            types.resize(id + 1, 1);
        }
        tokens[id] = Some(text.to_string());
        types[id] = ty;
    };
    // Ids number the entries densely: one beyond the entries' count cannot
    // be filled (checked before anything is sized from it).
    let added = json["added_tokens"].as_array().map_or(0, Vec::len);
    let entries = vocab.len() + added;
    let checked_id = |id: u64| -> Result<usize, ModelError> {
        usize::try_from(id).ok().filter(|&i| i < entries).ok_or_else(|| {
            bad(&format!("token id {id} is beyond the {entries} vocabulary and added-token entries"))
        })
    };
    for (text, id) in vocab {
        let id = checked_id(id.as_u64().ok_or_else(|| bad("a vocabulary id is not an integer"))?)?;
        put(id, text, 1, &mut tokens);
    }
    let mut specials: Vec<(String, u32)> = Vec::new();
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(bad("an added token lacks id or content"));
        };
        let id = checked_id(id)? as u64;
        let special = t["special"].as_bool().unwrap_or(false);
        put(id as usize, text, if special { 3 } else { 4 }, &mut tokens);
        specials.push((text.to_string(), id as u32));
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| bad(&format!("token id {i} is missing from the vocabulary"))))
        .collect::<Result<_, _>>()?;
    let merges: Vec<String> = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is not an array"))?
        .iter()
        .map(|m| match m {
            serde_json::Value::String(s) => Ok(s.clone()),
            serde_json::Value::Array(p) if p.len() == 2 => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()))
            }
            _ => Err(bad("a merge is neither \"a b\" nor [a, b]")),
        })
        .collect::<Result<_, _>>()?;
    let config: serde_json::Value = match config_json {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| bad(&format!("tokenizer_config.json: invalid JSON: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    let special_id = |key: &str| -> Option<u32> {
        let text = match &config[key] {
            serde_json::Value::String(s) => s.clone(),
            v => v["content"].as_str()?.to_string(),
        };
        specials.iter().find(|(t, _)| *t == text).map(|(_, id)| *id)
    };
    let spec = TokenizerSpec {
        model: "gpt2".into(),
        pre: Some(hf_pre_tokenizer(&json["pre_tokenizer"]).to_string()),
        tokens,
        merges,
        token_types: types,
        bos: special_id("bos_token"),
        eos: special_id("eos_token"),
        eot: None,
        pad: special_id("pad_token"),
        unk: special_id("unk_token"),
        add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
        add_eos: config["add_eos_token"].as_bool().unwrap_or(false),
        chat_template: config["chat_template"].as_str().map(str::to_string),
    };
    Tokenizer::new(spec).map_err(|source| ModelError::Tokenizer { file: shown.to_string(), source })
}

/// The llama.cpp pre-tokenizer name matching an HF `pre_tokenizer` config:
/// digits split one by one before byte-level splitting (SmolLM, StarCoder),
/// a `Split` on LLaMA 3's regex (numbers in runs of up to three), or plain
/// GPT-2 byte-level.
fn hf_pre_tokenizer(pre: &serde_json::Value) -> &'static str {
    let text = pre.to_string();
    if text.contains("\\p{N}{1,3}") {
        "llama-bpe"
    } else if text.contains("\"individual_digits\":true") {
        "smollm"
    } else {
        "gpt2"
    }
}
