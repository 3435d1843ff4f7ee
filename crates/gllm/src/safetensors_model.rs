//! Hugging Face model directories: safetensors weights (one file, or shards
//! listed by `model.safetensors.index.json`) and the `config.json` of a
//! LLaMA-family model.
//!
//! Files are memory-mapped; the `safetensors` crate checks each header (tensor
//! offsets contiguous, sizes matching shapes, the buffer exactly as long as
//! the header says), and this module adds file and tensor names to its errors.
//! Shapes are in safetensors order: row-major, the last dim contiguous.

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::SafeTensors;
/// The safetensors element types and header errors, re-exported so callers
/// can match on [`SafetensorsTensor::dtype`] and [`SafetensorsError::Header`].
pub use safetensors::tensor::{Dtype, SafeTensorError};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The single-file weights name in a model directory.
pub const SINGLE_FILE_NAME: &str = "model.safetensors";
/// The shard index name in a model directory.
pub const INDEX_FILE_NAME: &str = "model.safetensors.index.json";
/// The model configuration name in a model directory.
pub const CONFIG_FILE_NAME: &str = "config.json";

/// Why a safetensors model, tensor or config could not be read. Each message
/// starts with the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file could not be opened, mapped or read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file's path or name.
        file: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The safetensors header is invalid (the crate's check failed).
    #[error("{file}: invalid safetensors file: {source}")]
    Header {
        /// The file's path or name.
        file: String,
        /// What the `safetensors` crate found.
        source: SafeTensorError,
    },
    /// A tensor that was asked for is absent.
    #[error("{file}: tensor {tensor:?} is missing")]
    MissingTensor {
        /// The file or directory searched.
        file: String,
        /// The tensor asked for.
        tensor: String,
    },
    /// The tensor's dtype cannot be converted to f32 here.
    #[error("{file}: unsupported dtype {dtype} for tensor {tensor:?} (F32, F16 and BF16 are read)")]
    UnsupportedDtype {
        /// The file holding the tensor.
        file: String,
        /// The tensor asked for.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
    /// The shard index is unreadable or disagrees with the shards.
    #[error("{file}: {problem}")]
    Index {
        /// The index file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// `config.json` is unreadable or lacks a field (serde names it).
    #[error("{file}: {problem}")]
    Config {
        /// The config file.
        file: String,
        /// What is wrong.
        problem: String,
    },
    /// The directory has neither `model.safetensors` nor an index.
    #[error("{directory}: no {SINGLE_FILE_NAME} or {INDEX_FILE_NAME} in this directory")]
    NoWeights {
        /// The directory searched.
        directory: String,
    },
}

/// Where a file's bytes live.
enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(map) => map,
            Storage::Owned(bytes) => bytes,
        }
    }
}

/// One tensor of a safetensors file: dtype, shape and where its bytes are.
/// Only [`SafetensorsFile`] makes these, from a checked header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

impl SafetensorsTensor {
    /// The tensor's name (`"model.layers.0.self_attn.q_proj.weight"`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stored element type.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// Shape in safetensors order: row-major, the last dim contiguous.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Elements: the product of the shape.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes the tensor occupies.
    pub fn n_bytes(&self) -> usize {
        self.end - self.start
    }
}

/// One safetensors file with a checked header.
pub struct SafetensorsFile {
    source_name: String,
    storage: Storage,
    tensors: Vec<SafetensorsTensor>,
    index: HashMap<String, usize>,
    metadata: HashMap<String, String>,
}

impl std::fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("source_name", &self.source_name)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    /// Opens and memory-maps `path` and checks its header.
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsFile, SafetensorsError> {
        let path = path.as_ref();
        let source_name = path.display().to_string();
        let io = |source| SafetensorsError::Io { file: source_name.clone(), source };
        let map = crate::file_map::map_read_only(path).map_err(io)?;
        SafetensorsFile::new(source_name, Storage::Mapped(map))
    }

    /// Checks and wraps a safetensors file held in memory; `name` stands for
    /// it in errors.
    pub fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<SafetensorsFile, SafetensorsError> {
        SafetensorsFile::new(name.to_string(), Storage::Owned(bytes))
    }

    fn new(source_name: String, storage: Storage) -> Result<SafetensorsFile, SafetensorsError> {
        let bytes = storage.bytes();
        let (header_len, header) = SafeTensors::read_metadata(bytes)
            .map_err(|source| SafetensorsError::Header { file: source_name.clone(), source })?;
        let data_start = header_len.checked_add(8);
        let mut tensors = Vec::new();
        for (name, info) in header.tensors() {
            let (begin, end) = info.data_offsets;
            let range = data_start.and_then(|s| Some((s.checked_add(begin)?, s.checked_add(end)?)));
            // read_metadata has checked the offsets against the buffer; check
            // again here so the slicing below can never fail.
            let Some((start, end)) = range.filter(|&(s, e)| s <= e && e <= bytes.len()) else {
                return Err(SafetensorsError::Header {
                    file: source_name,
                    source: SafeTensorError::InvalidOffset(name),
                });
            };
            tensors.push(SafetensorsTensor {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start,
                end,
            });
        }
        tensors.sort_by_key(|t| t.start);
        let index = tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let metadata = header.metadata().clone().unwrap_or_default();
        Ok(SafetensorsFile { source_name, storage, tensors, index, metadata })
    }

    /// The path or name the file was opened under.
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The header's free-form `__metadata__` strings.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[SafetensorsTensor] {
        &self.tensors
    }

    /// Whether the file has a tensor called `name`.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor `name`, or an error naming it and the file.
    pub fn tensor_info(&self, name: &str) -> Result<&SafetensorsTensor, SafetensorsError> {
        self.index.get(name).and_then(|&i| self.tensors.get(i)).ok_or_else(|| {
            SafetensorsError::MissingTensor { file: self.source_name.clone(), tensor: name.to_string() }
        })
    }

    /// The stored bytes of a tensor of this file (empty for a tensor of a
    /// file whose ranges do not fit this one).
    pub fn tensor_data(&self, tensor: &SafetensorsTensor) -> &[u8] {
        self.storage.bytes().get(tensor.start..tensor.end).unwrap_or(&[])
    }

    /// Tensor `name` converted to f32 (F32, F16, BF16), row-major in
    /// safetensors order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        let tensor = self.tensor_info(name)?;
        let bytes = self.tensor_data(tensor);
        let values = match tensor.dtype {
            Dtype::F32 => {
                bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            Dtype::F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => {
                bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => {
                return Err(SafetensorsError::UnsupportedDtype {
                    file: self.source_name.clone(),
                    tensor: name.to_string(),
                    dtype: other.to_string(),
                })
            }
        };
        Ok(values)
    }
}

/// The part of `model.safetensors.index.json` that matters: which shard holds
/// each tensor.
#[derive(Debug, Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

/// A Hugging Face model: its weights (one file or shards) and the directory
/// they are in (where `config.json` is looked for).
#[derive(Debug)]
pub struct SafetensorsModel {
    directory: PathBuf,
    shards: Vec<SafetensorsFile>,
    tensor_shard: HashMap<String, usize>,
}

impl SafetensorsModel {
    /// Opens a model: a directory with `model.safetensors` or with
    /// `model.safetensors.index.json` and its shards, or a single
    /// `.safetensors` file (its directory then holds `config.json`).
    pub fn open(path: impl AsRef<Path>) -> Result<SafetensorsModel, SafetensorsError> {
        let path = path.as_ref();
        if path.is_file() {
            let directory = path.parent().map(Path::to_path_buf).unwrap_or_default();
            return SafetensorsModel::from_shards(directory, vec![SafetensorsFile::open(path)?]);
        }
        let index_path = path.join(INDEX_FILE_NAME);
        if index_path.is_file() {
            return SafetensorsModel::open_sharded(path, &index_path);
        }
        let single = path.join(SINGLE_FILE_NAME);
        if single.is_file() {
            return SafetensorsModel::from_shards(path.to_path_buf(), vec![SafetensorsFile::open(single)?]);
        }
        Err(SafetensorsError::NoWeights { directory: path.display().to_string() })
    }

    fn open_sharded(directory: &Path, index_path: &Path) -> Result<SafetensorsModel, SafetensorsError> {
        let index_name = index_path.display().to_string();
        let index_error = |problem: String| SafetensorsError::Index { file: index_name.clone(), problem };
        let text = std::fs::read_to_string(index_path)
            .map_err(|source| SafetensorsError::Io { file: index_name.clone(), source })?;
        let index: ShardIndex = serde_json::from_str(&text).map_err(|e| index_error(e.to_string()))?;
        let shard_names: BTreeSet<&String> = index.weight_map.values().collect();
        let mut shards = Vec::with_capacity(shard_names.len());
        for shard_name in shard_names {
            // Shards are plain file names next to the index, never paths.
            let plain = Path::new(shard_name).file_name().is_some_and(|f| f == shard_name.as_str());
            if !plain {
                return Err(index_error(format!("shard name {shard_name:?} is not a plain file name")));
            }
            shards.push(SafetensorsFile::open(directory.join(shard_name))?);
        }
        let model = SafetensorsModel::from_shards(directory.to_path_buf(), shards)?;
        for (tensor, shard_name) in &index.weight_map {
            let found = model.tensor_shard.get(tensor).and_then(|&i| model.shards.get(i));
            let in_named_shard = found.is_some_and(|shard| {
                Path::new(shard.source_name()).file_name().is_some_and(|f| f == shard_name.as_str())
            });
            if !in_named_shard {
                return Err(index_error(format!(
                    "tensor {tensor:?} is listed in {shard_name:?} but is not there"
                )));
            }
        }
        Ok(model)
    }

    fn from_shards(
        directory: PathBuf,
        shards: Vec<SafetensorsFile>,
    ) -> Result<SafetensorsModel, SafetensorsError> {
        let mut tensor_shard = HashMap::new();
        for (i, shard) in shards.iter().enumerate() {
            for tensor in shard.tensors() {
                if let Some(first) = tensor_shard.insert(tensor.name.clone(), i) {
                    let first = shards.get(first).map_or("", |s| s.source_name());
                    return Err(SafetensorsError::Index {
                        file: shard.source_name().to_string(),
                        problem: format!("tensor {:?} is also in {first}", tensor.name),
                    });
                }
            }
        }
        Ok(SafetensorsModel { directory, shards, tensor_shard })
    }

    /// The directory the model was opened from.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The weight files (one, or the shards in name order).
    pub fn shards(&self) -> &[SafetensorsFile] {
        &self.shards
    }

    /// Names of all tensors, in no particular order.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensor_shard.keys().map(String::as_str)
    }

    /// The shard holding tensor `name`.
    fn shard_of(&self, name: &str) -> Result<&SafetensorsFile, SafetensorsError> {
        self.tensor_shard.get(name).and_then(|&i| self.shards.get(i)).ok_or_else(|| {
            SafetensorsError::MissingTensor {
                file: self.directory.display().to_string(),
                tensor: name.to_string(),
            }
        })
    }

    /// The tensor `name` (dtype, shape), from whichever shard holds it.
    pub fn tensor_info(&self, name: &str) -> Result<&SafetensorsTensor, SafetensorsError> {
        self.shard_of(name)?.tensor_info(name)
    }

    /// Tensor `name` converted to f32, row-major in safetensors order.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, SafetensorsError> {
        self.shard_of(name)?.tensor_f32(name)
    }

    /// Tensor `name`'s stored bytes (little-endian, row-major).
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8], SafetensorsError> {
        let shard = self.shard_of(name)?;
        Ok(shard.tensor_data(shard.tensor_info(name)?))
    }

    /// The model's `config.json` (in [`Self::directory`]) as a LLaMA config.
    pub fn hf_config(&self) -> Result<HfLlamaConfig, SafetensorsError> {
        HfLlamaConfig::load(self.directory.join(CONFIG_FILE_NAME))
    }
}

/// The fields of a Hugging Face `config.json` that a LLaMA-family decoder
/// needs, with the defaults `transformers` applies when they are absent.
#[derive(Debug, Clone, PartialEq)]
pub struct HfLlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward layer.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); `num_attention_heads` if
    /// the config does not say.
    pub num_key_value_heads: usize,
    /// Per-head width if the config sets it; see [`Self::head_dim`].
    pub head_dim: Option<usize>,
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Longest context the model was trained for.
    pub max_position_embeddings: usize,
    /// RoPE base frequency (default 10000).
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether the output projection reuses the token embedding (default false).
    pub tie_word_embeddings: bool,
    /// `architectures`, e.g. `["LlamaForCausalLM"]` (empty if absent).
    pub architectures: Vec<String>,
    /// `model_type`, e.g. `"llama"`.
    pub model_type: Option<String>,
}

/// `config.json` as written, before defaults are applied.
#[derive(Debug, Deserialize)]
struct RawHfLlamaConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    architectures: Vec<String>,
    model_type: Option<String>,
}

fn default_rope_theta() -> f64 {
    10000.0
}

impl HfLlamaConfig {
    /// Reads and parses `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<HfLlamaConfig, SafetensorsError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|source| SafetensorsError::Io { file: file.clone(), source })?;
        HfLlamaConfig::from_json_str(&file, &text)
    }

    /// Parses the JSON text of a `config.json`; `source_name` names it in
    /// errors (serde's message names a missing or mistyped field).
    pub fn from_json_str(source_name: &str, json: &str) -> Result<HfLlamaConfig, SafetensorsError> {
        let raw: RawHfLlamaConfig = serde_json::from_str(json).map_err(|e| SafetensorsError::Config {
            file: source_name.to_string(),
            problem: e.to_string(),
        })?;
        let config = HfLlamaConfig {
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw.head_dim,
            vocab_size: raw.vocab_size,
            max_position_embeddings: raw.max_position_embeddings,
            rope_theta: raw.rope_theta,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings,
            architectures: raw.architectures,
            model_type: raw.model_type,
        };
        let bad = |problem: String| SafetensorsError::Config { file: source_name.to_string(), problem };
        if config.num_attention_heads == 0 || config.num_key_value_heads == 0 {
            return Err(bad("num_attention_heads and num_key_value_heads must be non-zero".to_string()));
        }
        if config.num_attention_heads % config.num_key_value_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads = {} is not a multiple of num_key_value_heads = {}",
                config.num_attention_heads, config.num_key_value_heads
            )));
        }
        if config.head_dim.is_none() && config.hidden_size % config.num_attention_heads != 0 {
            return Err(bad(format!(
                "hidden_size = {} is not a multiple of num_attention_heads = {} (and head_dim is not set)",
                config.hidden_size, config.num_attention_heads
            )));
        }
        Ok(config)
    }

    /// Per-head width: `head_dim` if set, else `hidden_size / num_attention_heads`.
    pub fn effective_head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}
