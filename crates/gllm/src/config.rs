//! Model configurations the front end knows how to build graphs for.

/// Shape hyper-parameters of a LLaMA-family decoder (RMSNorm, RoPE,
/// grouped-query attention, SwiGLU feed-forward).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub name: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    /// Longest context the model was trained for (positions).
    pub context_length: usize,
    /// The LM head is the token embedding (no separate output matrix).
    pub tie_word_embeddings: bool,
}

/// Names accepted by [`LlamaConfig::by_name`].
pub const MODEL_NAMES: [&str; 4] = ["llama-7b", "smollm2-135m", "llama-70b", "tiny"];

impl LlamaConfig {
    /// LLaMA-2-7B: 32 layers of hidden 4096, FFN 11008, 32 heads.
    pub fn llama_7b() -> LlamaConfig {
        LlamaConfig {
            name: "llama-7b".into(),
            hidden_size: 4096,
            intermediate_size: 11008,
            num_layers: 32,
            num_heads: 32,
            num_kv_heads: 32,
            head_dim: 128,
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            context_length: 4096,
            tie_word_embeddings: false,
        }
    }

    /// SmolLM2-135M (the project's test model): 30 layers of hidden 576,
    /// 9 query heads sharing 3 KV heads.
    pub fn smollm2_135m() -> LlamaConfig {
        LlamaConfig {
            name: "smollm2-135m".into(),
            hidden_size: 576,
            intermediate_size: 1536,
            num_layers: 30,
            num_heads: 9,
            num_kv_heads: 3,
            head_dim: 64,
            vocab_size: 49152,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            context_length: 8192,
            tie_word_embeddings: true,
        }
    }

    /// A tiny LLaMA-shaped model (2 layers of hidden 64, grouped-query
    /// attention 4 → 2 heads): the built-in default model and test shape.
    pub fn tiny() -> LlamaConfig {
        LlamaConfig {
            name: "tiny".into(),
            hidden_size: 64,
            intermediate_size: 192,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            vocab_size: 384,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            context_length: 1024,
            tie_word_embeddings: false,
        }
    }

    /// LLaMA-2-70B: hidden 8192 (a 32 KiB f32 row), 8 KV heads.
    pub fn llama_70b() -> LlamaConfig {
        LlamaConfig {
            name: "llama-70b".into(),
            hidden_size: 8192,
            intermediate_size: 28672,
            num_layers: 80,
            num_heads: 64,
            num_kv_heads: 8,
            head_dim: 128,
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            context_length: 4096,
            tie_word_embeddings: false,
        }
    }

    /// A built-in configuration by name (see [`MODEL_NAMES`]).
    pub fn by_name(name: &str) -> Option<LlamaConfig> {
        match name.to_ascii_lowercase().as_str() {
            "llama-7b" | "llama2-7b" => Some(Self::llama_7b()),
            "smollm2-135m" | "smollm2" => Some(Self::smollm2_135m()),
            "llama-70b" | "llama2-70b" => Some(Self::llama_70b()),
            "tiny" => Some(Self::tiny()),
            _ => None,
        }
    }

    /// Width of the concatenated query heads.
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }

    /// Width of the concatenated key (or value) heads.
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
}
