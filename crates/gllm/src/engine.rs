//! The forward pass: embedding, decoder layers over a KV cache, final norm
//! and LM head — through the JIT, or through the scalar reference functions.
//!
//! ```text
//!   tokens ──[embed]──> x ──┬─[pre_attention]──> q, k, v ──> KV cache
//!                           │   [attention over the cache, run-time length]
//!                           └─[post_attention]──> x' ── … N layers … ──[lm_head]──> logits
//! ```
//!
//! The JIT compiles each part once per token count (prompt chunks, then 1
//! for decoding) and caches it; attention takes the context length at run
//! time, so decoding compiles nothing after its first token. One compiled
//! part serves every layer: weights are prepared (packed) once per layer and
//! looked up by name. Intermediates live in one reused workspace arena.
//!
//! The reference backend evaluates the same expanded graphs node by node
//! with the registry's scalar functions: the oracle the JIT is tested against.

use crate::config::LlamaConfig;
use crate::kv_cache::{ContextFull, KvCache};
use crate::layer_graph;
use crate::weights::{ModelWeights, WeightsError};
use gllm_kernels::codegen::attention::{AttentionScratch, AttentionShape, CausalAttention, MASKED};
use gllm_kernels::codegen::layer::{compile_graph_with, CompiledLayer, PreparedWeights};
use gllm_kernels::codegen::CodegenError;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{FusionOptions, FusionPlan};
use gllm_kernels::graph::CompilerGraph;
use gllm_kernels::quant::ActivationPrecision;
use gllm_kernels::reference::{self, ReferenceError};
use gllm_kernels::runtime::{CompileCache, LayerWorkspace};
use gllm_kernels::scalar::ScalarOpRegistry;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a forward pass failed.
#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    ContextFull(#[from] ContextFull),
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    BadToken { id: u32, vocab: usize },
    #[error("compiling `{part}` for {seq} token(s): {source}")]
    Compile {
        part: &'static str,
        seq: usize,
        #[source]
        source: Box<CodegenError>,
    },
    #[error("running `{part}`: {source}")]
    Run {
        part: &'static str,
        #[source]
        source: Box<CodegenError>,
    },
    #[error("reference evaluation of `{part}`: {source}")]
    Reference {
        part: &'static str,
        #[source]
        source: Box<ReferenceError>,
    },
    #[error("the graph of `{part}` is invalid: {source}")]
    Graph {
        part: &'static str,
        #[source]
        source: Box<gllm_kernels::graph::GraphError>,
    },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("batched decoding: {0}")]
    Batch(String),
}

/// How layers are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// JIT-compiled fused kernels.
    Jit,
    /// The scalar reference functions, node by node (slow; the oracle).
    Reference,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub backend: Backend,
    /// Fusion on (the default) or every node its own group (`--no-fusion`).
    pub fusion: FusionOptions,
    /// The device to compile for; its `physical_cores` is the thread count.
    pub profile: DeviceProfile,
    /// KV-cache positions to allocate (at most the model's context length).
    pub max_context: usize,
    /// Prompts longer than this run in chunks of this many tokens.
    pub prefill_chunk: usize,
    /// How decode's GEMVs over quantised weights quantise activations:
    /// int8 as llama.cpp (the default), or int16 for logits that follow
    /// exact arithmetic on the file's weights (docs/quantised.md).
    pub activations: ActivationPrecision,
}

impl EngineOptions {
    /// JIT with fusion on `profile`, a 2048-position cache, 256-token chunks.
    pub fn new(profile: DeviceProfile) -> EngineOptions {
        EngineOptions {
            backend: Backend::Jit,
            fusion: FusionOptions::default(),
            profile,
            max_context: 2048,
            prefill_chunk: 256,
            activations: ActivationPrecision::Int8,
        }
    }

    pub fn threads(&self) -> usize {
        self.profile.physical_cores.max(1)
    }
}

/// Counters a caller can read between calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Wall time inside forward passes.
    pub forward: Duration,
    /// Of that, time inside compiled parts and attention (or reference evaluation).
    pub kernels: Duration,
    /// Time spent compiling parts (included in neither of the above).
    pub compile: Duration,
    /// Forward passes run.
    pub calls: u64,
}

impl EngineStats {
    /// Time in forward passes outside the kernels (embedding, KV-cache
    /// copies, dispatch, bookkeeping).
    pub fn outside_kernels(&self) -> Duration {
        self.forward.saturating_sub(self.kernels)
    }
}

/// The compiled parts for one token count.
struct Parts {
    pre: CompiledLayer,
    post: CompiledLayer,
}

/// What every sequence of one model shares: compiled parts (by token
/// count), the attention kernel and the prepared weights.
struct Shared {
    parts: CompileCache<usize, Parts>,
    heads: CompileCache<usize, CompiledLayer>,
    /// Per layer: its weights prepared for the parts.
    layers: Vec<PreparedWeights>,
    head: PreparedWeights,
    attention: CausalAttention,
}

/// A sequence's JIT state: the shared model and its own scratch memory.
struct Jit {
    shared: Arc<Shared>,
    workspace: LayerWorkspace,
    scratch: AttentionScratch,
}

impl Shared {
    /// The parts for `seq` tokens, compiled on first use; the bool says
    /// whether this call compiled them.
    fn parts(
        &self,
        cfg: &LlamaConfig,
        seq: usize,
        opts: &EngineOptions,
        registry: &ScalarOpRegistry,
    ) -> Result<(Arc<Parts>, bool), EngineError> {
        self.parts.get_or_build(seq, || compile_parts(cfg, seq, opts, registry))
    }

    /// The LM head for `rows` rows, compiled on first use.
    fn head(
        &self,
        cfg: &LlamaConfig,
        rows: usize,
        opts: &EngineOptions,
        registry: &ScalarOpRegistry,
    ) -> Result<(Arc<CompiledLayer>, bool), EngineError> {
        self.heads.get_or_build(rows, || {
            compile_part("lm_head", layer_graph::lm_head(cfg, rows), rows, opts, registry)
        })
    }
}

/// Activations of one chunk, reused across chunks.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    x_next: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Buffers {
    /// The embeddings of `tokens` and the rotation-table rows of their
    /// `positions` (one per token); the other buffers sized for that many rows.
    fn load(
        &mut self,
        cfg: &LlamaConfig,
        weights: &ModelWeights,
        tokens: &[u32],
        positions: impl Iterator<Item = usize>,
        (cos, sin): (&[f32], &[f32]),
    ) {
        let (h, qd, kvd, half) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim / 2);
        let rows = tokens.len();
        self.x.clear();
        for &t in tokens {
            weights.push_embedding(t as usize, h, &mut self.x);
        }
        for (buf, n) in [
            (&mut self.x_next, h),
            (&mut self.q, qd),
            (&mut self.k, kvd),
            (&mut self.v, kvd),
            (&mut self.attn, qd),
        ] {
            buf.resize(rows * n, 0.0);
        }
        self.cos.clear();
        self.sin.clear();
        for p in positions {
            self.cos.extend_from_slice(&cos[p * half..(p + 1) * half]);
            self.sin.extend_from_slice(&sin[p * half..(p + 1) * half]);
        }
    }
}

/// Layer `l` through the JIT for the rows in `b`, which belong to the
/// sequences of `caches` in order (`rows` each): each sequence's new keys and
/// values go into its own cache at its current length, and its rows attend
/// over that cache. Returns the time spent in kernels.
fn jit_layer(
    jit: &mut Jit,
    parts: &Parts,
    l: usize,
    b: &mut Buffers,
    caches: &mut [(&mut KvCache, usize)],
    cfg: &LlamaConfig,
    threads: usize,
) -> Result<Duration, EngineError> {
    let run = |part: &'static str| move |source| EngineError::Run { part, source: Box::new(source) };
    let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
    let w = &jit.shared.layers[l];
    let t0 = Instant::now();
    parts
        .pre
        .run_into(w, &[&b.x, &b.cos, &b.sin], &mut [&mut b.q, &mut b.k, &mut b.v], &mut jit.workspace)
        .map_err(run("pre_attention"))?;
    let mut kernels = t0.elapsed();
    let mut row = 0;
    for (kv, rows) in caches.iter_mut() {
        let (r0, r1) = (row, row + *rows);
        row = r1;
        kv.write(l, &b.k[r0 * kvd..r1 * kvd], &b.v[r0 * kvd..r1 * kvd]);
        let t = Instant::now();
        let (kc, vc) = kv.layer(l);
        jit.shared
            .attention
            .run(
                &b.q[r0 * qd..r1 * qd],
                kc,
                vc,
                kv.len(),
                &mut b.attn[r0 * qd..r1 * qd],
                &mut jit.scratch,
                threads,
            )
            .map_err(run("attention"))?;
        let spent = t.elapsed();
        gllm_kernels::runtime::profile::record("attention over the KV cache (gllm)", spent);
        kernels += spent;
    }
    let t = Instant::now();
    parts
        .post
        .run_into(w, &[&b.attn, &b.x], &mut [&mut b.x_next], &mut jit.workspace)
        .map_err(run("post_attention"))?;
    std::mem::swap(&mut b.x, &mut b.x_next);
    Ok(kernels + t.elapsed())
}

/// A model ready to run: weights, compiled parts, KV cache, position.
pub struct Engine {
    cfg: LlamaConfig,
    weights: Arc<ModelWeights>,
    opts: EngineOptions,
    registry: &'static ScalarOpRegistry,
    kv: KvCache,
    /// `cos`/`sin` of every position's rotation angles, `[max_context, head_dim/2]`.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    jit: Option<Jit>,
    bufs: Buffers,
    stats: EngineStats,
}

impl Engine {
    /// Checks the weights, allocates the cache and (for the JIT) compiles
    /// the single-token parts and prepares every layer's weights.
    pub fn new(
        cfg: LlamaConfig,
        weights: Arc<ModelWeights>,
        mut opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        weights.check(&cfg)?;
        // The scalar reference path reads f32 only.
        let weights = if opts.backend == Backend::Reference && weights.is_quantised() {
            Arc::new(weights.to_f32())
        } else {
            weights
        };
        opts.max_context = opts.max_context.clamp(1, cfg.context_length.max(1));
        opts.prefill_chunk = opts.prefill_chunk.max(1);
        let (rope_cos, rope_sin) = rope_tables(&cfg, opts.max_context);
        let registry = ScalarOpRegistry::global();
        let mut engine = Engine {
            kv: KvCache::new(cfg.num_layers, cfg.kv_dim(), opts.max_context),
            cfg,
            weights,
            opts,
            registry,
            rope_cos,
            rope_sin,
            jit: None,
            bufs: Buffers::default(),
            stats: EngineStats::default(),
        };
        if engine.opts.backend == Backend::Jit {
            engine.jit = Some(engine.build_jit()?);
        }
        Ok(engine)
    }

    fn build_jit(&mut self) -> Result<Jit, EngineError> {
        let t0 = Instant::now();
        let cfg = &self.cfg;
        let shape =
            AttentionShape { heads: cfg.num_heads, kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };
        let attention = CausalAttention::compile(shape, self.registry, &self.opts.profile)
            .map_err(|source| EngineError::Compile { part: "attention", seq: 0, source: Box::new(source) })?;
        let parts = compile_parts(cfg, 1, &self.opts, self.registry)?;
        let head = compile_part("lm_head", layer_graph::lm_head(cfg, 1), 1, &self.opts, self.registry)?;
        let w = &self.weights;
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let get = |name: &str| w.layer_data(l, name);
            let mut prepared = PreparedWeights::with_activations(self.opts.activations);
            for part in [&parts.pre, &parts.post] {
                part.prepare_more_from(&mut prepared, &get).map_err(|source| EngineError::Run {
                    part: "preparing weights",
                    source: Box::new(source),
                })?;
            }
            layers.push(prepared);
        }
        let mut head_w = PreparedWeights::with_activations(self.opts.activations);
        head.prepare_more_from(&mut head_w, &|name: &str| w.data(name))
            .map_err(|source| EngineError::Run { part: "preparing weights", source: Box::new(source) })?;
        self.stats.compile += t0.elapsed();
        let shared = Shared {
            parts: CompileCache::new(),
            heads: CompileCache::new(),
            layers,
            head: head_w,
            attention,
        };
        // The single-token parts, compiled above, are the first entries.
        shared.parts.get_or_build(1, || Ok::<_, EngineError>(parts))?;
        shared.heads.get_or_build(1, || Ok::<_, EngineError>(head))?;
        Ok(Jit {
            shared: Arc::new(shared),
            workspace: LayerWorkspace::new(),
            scratch: AttentionScratch::default(),
        })
    }

    /// A new sequence over the same model: it shares this engine's compiled
    /// parts and prepared weights (no compiling, no packing, no copies of
    /// the weights) and has its own KV cache and scratch memory. Engines may
    /// run on different threads at once.
    pub fn fork(&self) -> Engine {
        Engine {
            cfg: self.cfg.clone(),
            weights: self.weights.clone(),
            opts: self.opts.clone(),
            registry: self.registry,
            kv: KvCache::new(self.cfg.num_layers, self.cfg.kv_dim(), self.opts.max_context),
            rope_cos: self.rope_cos.clone(),
            rope_sin: self.rope_sin.clone(),
            jit: self.jit.as_ref().map(|j| Jit {
                shared: j.shared.clone(),
                workspace: LayerWorkspace::new(),
                scratch: AttentionScratch::default(),
            }),
            bufs: Buffers::default(),
            stats: EngineStats::default(),
        }
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Positions in the KV cache (tokens processed since the last reset).
    pub fn position(&self) -> usize {
        self.kv.len()
    }

    /// KV-cache capacity in positions.
    pub fn max_context(&self) -> usize {
        self.kv.capacity()
    }

    /// Starts a new sequence (the compiled parts are kept).
    pub fn reset(&mut self) {
        self.kv.clear();
    }

    /// Forgets cached positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.kv.truncate(len);
    }

    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = EngineStats::default();
    }

    /// The fusion plans of the compiled parts for `seq` tokens (pre- and
    /// post-attention), compiling them if needed; for `explain`.
    pub fn plans(&mut self, seq: usize) -> Result<Vec<(&'static str, FusionPlan)>, EngineError> {
        if self.jit.is_none() {
            return Ok(Vec::new());
        }
        let p = self.ensure_parts(seq)?;
        Ok(vec![("pre_attention", p.pre.plan().clone()), ("post_attention", p.post.plan().clone())])
    }

    /// Runs `tokens` at the next positions and returns logits: of every
    /// token (`[tokens, vocab]`) when `all_logits`, else of the last one.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Vec<f32>, EngineError> {
        let vocab = self.cfg.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadToken { id, vocab });
        }
        self.kv.check_room(tokens.len())?;
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let compile_before = self.stats.compile;
        let mut logits = Vec::with_capacity(if all_logits { tokens.len() * vocab } else { vocab });
        let chunks: Vec<&[u32]> = tokens.chunks(self.opts.prefill_chunk).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.run_chunk(chunk)?;
            if all_logits {
                let seq = chunk.len();
                logits.extend(self.head(seq)?);
            } else if last {
                logits = self.head(1)?;
            }
        }
        self.stats.calls += 1;
        self.stats.forward += t0.elapsed().saturating_sub(self.stats.compile - compile_before);
        Ok(logits)
    }

    fn ensure_parts(&mut self, seq: usize) -> Result<Arc<Parts>, EngineError> {
        let jit = self.jit.as_ref().expect("JIT backend");
        let t0 = Instant::now();
        let (parts, compiled) = jit.shared.parts(&self.cfg, seq, &self.opts, self.registry)?;
        if compiled {
            self.stats.compile += t0.elapsed();
        }
        Ok(parts)
    }

    /// The logits of the last `rows` positions of the chunk just run.
    fn head(&mut self, rows: usize) -> Result<Vec<f32>, EngineError> {
        let (h, vocab) = (self.cfg.hidden_size, self.cfg.vocab_size);
        let x = &self.bufs.x[self.bufs.x.len() - rows * h..];
        let mut out = vec![0.0f32; rows * vocab];
        match self.jit.as_mut() {
            Some(jit) => {
                let t0 = Instant::now();
                let (head, compiled) = jit.shared.head(&self.cfg, rows, &self.opts, self.registry)?;
                if compiled {
                    self.stats.compile += t0.elapsed();
                }
                let t0 = Instant::now();
                head.run_into(&jit.shared.head, &[x], &mut [&mut out], &mut jit.workspace)
                    .map_err(|source| EngineError::Run { part: "lm_head", source: Box::new(source) })?;
                self.stats.kernels += t0.elapsed();
            }
            None => {
                let t0 = Instant::now();
                let g = layer_graph::lm_head(&self.cfg, rows);
                let w = &self.weights;
                out = evaluate(&g, self.registry, &[x], &|n: &str| w.get(n), "lm_head")?.swap_remove(0);
                self.stats.kernels += t0.elapsed();
            }
        }
        Ok(out)
    }

    /// One decoding step of several sequences at once: `engines[i]` (forks of
    /// one engine) takes `tokens[i]` at its own position. The dense parts run
    /// once over all rows — one GEMM per weight with M = the number of
    /// sequences, so the weights are read once instead of once per sequence —
    /// and attention runs per sequence over its own cache. Returns each
    /// sequence's logits. The reference backend steps the engines one by one.
    pub fn decode_batch(engines: &mut [&mut Engine], tokens: &[u32]) -> Result<Vec<Vec<f32>>, EngineError> {
        let n = engines.len();
        if tokens.len() != n {
            return Err(EngineError::Batch(format!("{n} sequences but {} tokens", tokens.len())));
        }
        if n == 0 {
            return Ok(Vec::new());
        }
        let shared = match engines[0].jit.as_ref() {
            Some(j) => j.shared.clone(),
            None => return engines.iter_mut().zip(tokens).map(|(e, &t)| e.forward(&[t], false)).collect(),
        };
        for e in engines.iter() {
            if !e.jit.as_ref().is_some_and(|j| Arc::ptr_eq(&j.shared, &shared)) {
                return Err(EngineError::Batch("the engines are not forks of one engine".into()));
            }
            e.kv.check_room(1)?;
        }
        let cfg = engines[0].cfg.clone();
        let vocab = cfg.vocab_size;
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(EngineError::BadToken { id, vocab });
        }
        let t0 = Instant::now();
        let compile_before = engines[0].stats.compile;
        let (first, rest) = engines.split_first_mut().expect("n > 0");
        let parts = first.ensure_parts(n)?;
        let threads = first.opts.threads();
        {
            let Engine { weights, rope_cos, rope_sin, jit, bufs, kv, stats, .. } = &mut **first;
            let positions = std::iter::once(kv.len()).chain(rest.iter().map(|e| e.kv.len()));
            bufs.load(&cfg, weights, tokens, positions, (rope_cos, rope_sin));
            let jit = jit.as_mut().expect("checked above");
            let mut caches: Vec<(&mut KvCache, usize)> =
                std::iter::once((kv, 1)).chain(rest.iter_mut().map(|e| (&mut e.kv, 1))).collect();
            for l in 0..cfg.num_layers {
                stats.kernels += jit_layer(jit, &parts, l, bufs, &mut caches, &cfg, threads)?;
            }
        }
        let logits = first.head(n)?;
        for e in engines.iter_mut() {
            e.kv.advance(1);
        }
        let first = &mut engines[0];
        first.stats.calls += 1;
        first.stats.forward += t0.elapsed().saturating_sub(first.stats.compile - compile_before);
        Ok(logits.chunks(vocab).map(<[f32]>::to_vec).collect())
    }

    /// Runs one chunk through every layer; its hidden states end in `bufs.x`.
    fn run_chunk(&mut self, tokens: &[u32]) -> Result<(), EngineError> {
        let seq = tokens.len();
        let pos0 = self.kv.len();
        self.bufs.load(&self.cfg, &self.weights, tokens, pos0..pos0 + seq, (&self.rope_cos, &self.rope_sin));
        let parts = if self.jit.is_some() { Some(self.ensure_parts(seq)?) } else { None };
        for l in 0..self.cfg.num_layers {
            self.run_layer(l, seq, pos0, parts.as_deref())?;
        }
        self.kv.advance(seq);
        Ok(())
    }

    fn run_layer(
        &mut self,
        l: usize,
        seq: usize,
        pos0: usize,
        parts: Option<&Parts>,
    ) -> Result<(), EngineError> {
        let threads = self.opts.threads();
        let b = &mut self.bufs;
        match (self.jit.as_mut(), parts) {
            (Some(jit), Some(parts)) => {
                self.stats.kernels +=
                    jit_layer(jit, parts, l, b, &mut [(&mut self.kv, seq)], &self.cfg, threads)?;
            }
            _ => {
                let cfg = &self.cfg;
                let t0 = Instant::now();
                let ws = &self.weights;
                let get = |name: &str| ws.layer(l, name);
                let pre = evaluate(
                    &layer_graph::pre_attention(cfg, seq),
                    self.registry,
                    &[&b.x, &b.cos, &b.sin],
                    &get,
                    "pre_attention",
                )?;
                self.kv.write(l, &pre[1], &pre[2]);
                let ctx = pos0 + seq;
                let kvd = cfg.kv_dim();
                let (kc, vc) = self.kv.layer(l);
                let mask: Vec<f32> = (0..seq)
                    .flat_map(|r| (0..ctx).map(move |c| if c <= pos0 + r { 0.0 } else { MASKED }))
                    .collect();
                let attn = evaluate(
                    &layer_graph::attention(cfg, seq, ctx),
                    self.registry,
                    &[&pre[0], &kc[..ctx * kvd], &vc[..ctx * kvd], &mask],
                    &get,
                    "attention",
                )?;
                let post = evaluate(
                    &layer_graph::post_attention(cfg, seq),
                    self.registry,
                    &[&attn[0], &b.x],
                    &get,
                    "post_attention",
                )?;
                b.x.copy_from_slice(&post[0]);
                self.stats.kernels += t0.elapsed();
            }
        }
        Ok(())
    }
}

fn compile_part(
    part: &'static str,
    graph: CompilerGraph,
    seq: usize,
    opts: &EngineOptions,
    registry: &ScalarOpRegistry,
) -> Result<CompiledLayer, EngineError> {
    compile_graph_with(&graph, &opts.profile, registry, opts.fusion).map_err(|source| EngineError::Compile {
        part,
        seq,
        source: Box::new(source),
    })
}

fn compile_parts(
    cfg: &LlamaConfig,
    seq: usize,
    opts: &EngineOptions,
    registry: &ScalarOpRegistry,
) -> Result<Parts, EngineError> {
    Ok(Parts {
        pre: compile_part("pre_attention", layer_graph::pre_attention(cfg, seq), seq, opts, registry)?,
        post: compile_part("post_attention", layer_graph::post_attention(cfg, seq), seq, opts, registry)?,
    })
}

fn evaluate<'w>(
    graph: &CompilerGraph,
    registry: &ScalarOpRegistry,
    inputs: &[&[f32]],
    weight: &dyn Fn(&str) -> Option<&'w [f32]>,
    part: &'static str,
) -> Result<Vec<Vec<f32>>, EngineError> {
    let sem =
        graph.analyse(registry).map_err(|source| EngineError::Graph { part, source: Box::new(source) })?;
    reference::evaluate(&sem, registry, inputs, weight)
        .map_err(|source| EngineError::Reference { part, source: Box::new(source) })
}

/// `cos`/`sin` of position p's angles p·θᵢ, θᵢ = theta^(−2i/head_dim), for
/// the rotate-half layout the graphs use; computed in f64.
pub fn rope_tables(cfg: &LlamaConfig, positions: usize) -> (Vec<f32>, Vec<f32>) {
    let half = cfg.head_dim / 2;
    let inv: Vec<f64> =
        (0..half).map(|i| (cfg.rope_theta as f64).powf(-2.0 * i as f64 / cfg.head_dim as f64)).collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    (cos, sin)
}
