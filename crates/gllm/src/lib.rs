//! gllm: the inference front end. Model knowledge lives here (configurations,
//! how a layer expands into atomic operators); machine code does not — the
//! graphs built here are compiled by `gllm-kernels`.

pub mod config;
pub mod gguf;
pub mod layer_graph;
pub mod safetensors_model;
pub mod synthetic;

pub use config::{LlamaConfig, MODEL_NAMES};
pub use gguf::{GgmlType, GgufError, GgufFile, GgufWriter, MetaValue, TensorInfo};
pub use safetensors_model::{HfLlamaConfig, SafetensorsError, SafetensorsFile, SafetensorsModel};
