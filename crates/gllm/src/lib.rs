//! gllm: the inference front end. Model knowledge lives here (configurations,
//! model files, the tokenizer, how a layer expands into atomic operators, the
//! KV cache and generation); machine code does not — the graphs built here
//! are compiled by `gllm-kernels`.

pub mod builtin;
pub mod config;
pub mod demo;
pub mod engine;
mod file_map;
pub mod fused;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod layer_graph;
pub mod model;
pub mod perplexity;
pub mod safetensors_model;
pub mod sampling;
pub mod synthetic;
pub mod tokenizer;
pub mod weights;

pub use config::{LlamaConfig, MODEL_NAMES};
pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, TensorInfo};
pub use safetensors_model::{HfLlamaConfig, SafetensorsError, SafetensorsFile, SafetensorsModel};
pub use tokenizer::{ChatMessage, ChatTemplate, StreamDecoder, Tokenizer, TokenizerError, TokenizerSpec};
