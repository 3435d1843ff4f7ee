//! `gllm demo`: the compiler's phases on this machine, each step checked
//! against the scalar reference functions it was built from.
//!
//! ```text
//!   registry ──[Phase 0]──> traces                      (every op analysed)
//!   LLaMA-7B graph ──[Phases 1–2]──> FusionPlan          (planned, counted)
//!   SmolLM2 layer ──[Phase 3]──> loop kernels, a GEMM + bias, the whole layer
//!        each run on data and compared with reference::evaluate / gk_matmul
//!   a user op, registered at run time ──[Phase 0 → LoopKernel]──> oracle sweep
//! ```
//!
//! The checking lives here, not in the CLI, so the binary only prints
//! [`DemoStep`]s and a test can run the same tour.

use crate::config::LlamaConfig;
use crate::layer_graph::{decoder_stack, TooManyLayers};
use crate::synthetic::SyntheticData;
use gllm_kernels::codegen::gemm::{GemmEpilogue, GemmKernel};
use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::codegen::layer::compile_graph;
use gllm_kernels::codegen::loops::{LoopKernel, LoopProgram};
use gllm_kernels::codegen::CodegenError;
use gllm_kernels::device::DeviceProfile;
use gllm_kernels::fusion::{self, FusionStrategy};
use gllm_kernels::graph::{CompilerGraph, GraphError, SemanticGraph, TensorId};
use gllm_kernels::oracle::{self, ErrorStats, Sweep, Tolerance};
use gllm_kernels::reference::{self, ReferenceError};
use gllm_kernels::scalar::{Arg, OpKind, OpSignature, RegistryError, Returns, ScalarOpRegistry, TensorRole};
use gllm_kernels::tune::median_secs;
use std::time::Instant;
use thiserror::Error;

/// Each checked step's bound against its scalar reference: the oracle's
/// bound for a compiled graph, elements within 1e-4 of the output's peak
/// (the kernels' own difference is ~1e-6: approximated exp/rsqrt, other
/// summation orders), so an element dropped or left unwritten fails.
pub fn tolerance() -> Tolerance {
    Tolerance::composed(1e-4)
}

/// One finished step of the tour, for the CLI to print.
#[derive(Debug, Clone)]
pub struct DemoStep {
    /// "phase 0", "phase 3b", "layer", …
    pub phase: &'static str,
    /// What was done and measured, one line each.
    pub lines: Vec<String>,
    /// Where to look further (a command).
    pub see_also: Option<&'static str>,
}

/// Why the tour stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    #[error("the selected profile's ISA ({0}) cannot run on this CPU")]
    IsaNotOnHost(String),
    #[error("{step}: analysing `{op}`: {source}")]
    Analyse {
        step: &'static str,
        op: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{step}: building the graph: {source}")]
    Graph {
        step: &'static str,
        #[source]
        source: Box<GraphError>,
    },
    #[error(transparent)]
    TooManyLayers(#[from] TooManyLayers),
    #[error("{step}: {source}")]
    Codegen {
        step: &'static str,
        #[source]
        source: Box<CodegenError>,
    },
    #[error("{step}: the scalar reference failed: {source}")]
    Reference {
        step: &'static str,
        #[source]
        source: Box<ReferenceError>,
    },
    #[error("{step}: {what} disagrees with the scalar reference{detail}")]
    Disagrees { step: &'static str, what: String, detail: String },
    #[error("{step}: the oracle rejected `{op}`: {failure}")]
    Oracle { step: &'static str, op: String, failure: String },
}

fn codegen(step: &'static str) -> impl Fn(CodegenError) -> DemoError {
    move |source| DemoError::Codegen { step, source: Box::new(source) }
}

/// `got` against `want` under [`tolerance`] (`oracle::check`).
fn check(
    step: &'static str,
    what: impl Fn() -> String,
    got: &[f32],
    want: &[f32],
) -> Result<ErrorStats, DemoError> {
    oracle::check(got, want, &[], &tolerance()).map_err(|detail| DemoError::Disagrees {
        step,
        what: what(),
        detail,
    })
}

/// `out = a·b + c`, element by element: the operator the tour registers at
/// run time, as an engineer adding an operator would — a plain function the
/// compiler has never seen.
pub extern "C" fn demo_mul_add(a: f32, b: f32, c: f32) -> f32 {
    a * b + c
}

/// Runs the tour on `profile`, handing each finished step to `on_step`;
/// `elements` is the length of the user op's timed run.
pub fn run(
    profile: &DeviceProfile,
    elements: usize,
    on_step: &mut dyn FnMut(&DemoStep),
) -> Result<(), DemoError> {
    if !profile.runs_on_host() {
        return Err(DemoError::IsaNotOnHost(profile.isa_summary()));
    }
    let registry = ScalarOpRegistry::global();
    on_step(&phase0(registry)?);
    on_step(&plan_llama_7b(profile)?);
    let small = LlamaConfig::smollm2_135m();
    let graph = decoder_stack(&small, LAYER_TOKENS, 1)?;
    let layer = ReferenceLayer::evaluate(&graph, registry)?;
    on_step(&loop_groups(&layer, profile)?);
    on_step(&gemm_with_bias(&small, profile, registry)?);
    on_step(&whole_layer(&layer, profile, registry)?);
    on_step(&user_op(profile, elements)?);
    Ok(())
}

/// Tokens of the SmolLM2 layer the tour compiles.
const LAYER_TOKENS: usize = 16;

/// One SmolLM2 decoder layer with synthetic data and the scalar reference
/// value of every tensor: what both the group-by-group step and the
/// whole-layer step check against (evaluated once).
struct ReferenceLayer<'g> {
    sem: SemanticGraph<'g>,
    data: SyntheticData,
    values: Vec<Vec<f32>>,
}

impl<'g> ReferenceLayer<'g> {
    fn evaluate(graph: &'g CompilerGraph, registry: &ScalarOpRegistry) -> Result<Self, DemoError> {
        let step = "reference";
        let sem =
            graph.analyse(registry).map_err(|source| DemoError::Graph { step, source: Box::new(source) })?;
        let data = SyntheticData::for_graph(graph, LAYER_TOKENS, 0x9e37_79b9_7f4a_7c15);
        let inputs: Vec<&[f32]> = data.inputs.iter().map(Vec::as_slice).collect();
        let values = reference::evaluate_all(&sem, registry, &inputs, &|name: &str| {
            data.weights.get(name).map(Vec::as_slice)
        })
        .map_err(|source| DemoError::Reference { step, source: Box::new(source) })?;
        Ok(ReferenceLayer { sem, data, values })
    }
}

fn phase0(registry: &ScalarOpRegistry) -> Result<DemoStep, DemoError> {
    let step = "phase 0";
    let started = Instant::now();
    let mut patterns = Vec::new();
    for op in registry.iter() {
        let trace = op.trace().map_err(|e| DemoError::Analyse {
            step,
            op: op.kind().name().to_string(),
            source: Box::new(e.into()),
        })?;
        patterns.push(format!("  {:<13} {:?}", op.kind().name(), trace.pattern));
    }
    let mut lines = vec![format!(
        "analysed {} scalar reference ops in {:.2} ms:",
        registry.len(),
        started.elapsed().as_secs_f64() * 1e3
    )];
    lines.extend(patterns);
    Ok(DemoStep { phase: step, lines, see_also: Some("gllm explain --op NAME") })
}

fn plan_llama_7b(profile: &DeviceProfile) -> Result<DemoStep, DemoError> {
    let step = "phase 1-2";
    let cfg = LlamaConfig::llama_7b();
    let graph = decoder_stack(&cfg, 128, cfg.num_layers)?;
    let started = Instant::now();
    let plan = fusion::fuse(&graph, profile)
        .map_err(|source| DemoError::Graph { step, source: Box::new(source) })?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mut kinds: Vec<&str> = plan.groups.iter().map(|g| g.strategy.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let counts: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} {k}", plan.groups.iter().filter(|g| g.strategy.name() == *k).count()))
        .collect();
    Ok(DemoStep {
        phase: step,
        lines: vec![format!(
            "planned LLaMA-7B ({} layers, 128 tokens: {} nodes) in {ms:.2} ms: {} groups ({}); scratchpad {:.1} MiB",
            cfg.num_layers,
            graph.nodes.len(),
            plan.groups.len(),
            counts.join(", "),
            plan.buffers.scratchpad_bytes as f64 / (1 << 20) as f64
        )],
        see_also: Some("gllm explain --model llama-7b"),
    })
}

/// Every non-GEMM group of a SmolLM2 layer, compiled on its own and run on
/// the reference values of its inputs; its output compared with the
/// reference value of the same tensor.
fn loop_groups(layer: &ReferenceLayer, profile: &DeviceProfile) -> Result<DemoStep, DemoError> {
    let step = "phase 3a";
    let (sem, values) = (&layer.sem, &layer.values);
    let plan = fusion::plan(sem, profile);
    let started = Instant::now();
    let mut compiled = Vec::new();
    for group in plan.groups.iter().filter(|g| !matches!(g.strategy, FusionStrategy::Gemm(_))) {
        compiled.push((group, CompiledGroup::compile(sem, group, profile).map_err(codegen(step))?));
    }
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut worst = ErrorStats::default();
    for (group, cg) in &compiled {
        let ins: Vec<&[f32]> = cg.inputs().iter().map(|&t: &TensorId| values[t].as_slice()).collect();
        let mut out = vec![f32::NAN; values[cg.output()].len()];
        cg.run(&ins, &mut out).map_err(codegen(step))?;
        let what = || format!("group {} ({})", group.id, group.strategy.name());
        let stats = check(step, what, &out, &values[cg.output()])?;
        worst.max_ulps = worst.max_ulps.max(stats.max_ulps);
    }
    Ok(DemoStep {
        phase: step,
        lines: vec![format!(
            "compiled the {} non-GEMM groups of a SmolLM2-135M layer (norms, RoPE, softmax) in {compile_ms:.2} ms; \
             each agrees with the scalar reference (worst {} ULPs)",
            compiled.len(),
            worst.max_ulps
        )],
        see_also: Some("cargo bench -p gllm-kernels --bench loops"),
    })
}

/// A SmolLM2 Q projection with the bias op's trace as its epilogue,
/// compared with the scalar `matmul` and `bias_add` functions and timed.
fn gemm_with_bias(
    cfg: &LlamaConfig,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
) -> Result<DemoStep, DemoError> {
    let step = "phase 3b";
    let (m, k, n) = (64, cfg.hidden_size, cfg.q_dim());
    let analyse = |kind: OpKind| {
        registry.trace(kind).map_err(|e| DemoError::Analyse {
            step,
            op: kind.name().to_string(),
            source: Box::new(e),
        })
    };
    let epilogue =
        GemmEpilogue::new().then(&analyse(OpKind::BiasAdd)?.body, 0, &[]).map_err(codegen(step))?;
    let started = Instant::now();
    let gemm = GemmKernel::compile_with_epilogue(profile, &epilogue).map_err(codegen(step))?;
    let compile_us = started.elapsed().as_secs_f64() * 1e6;
    let mut next = crate::synthetic::uniform(0x3b);
    let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| next() * 0.05).collect();
    let bias: Vec<f32> = (0..n).map(|_| next()).collect();
    let packed = gemm.pack_b(&b, k, n).map_err(codegen(step))?;
    let mut c = vec![f32::NAN; m * n];
    let secs = median_secs(5, || gemm.gemm_prepacked_with(&a, &packed, &mut c, m, &[&bias], 1))
        .map_err(codegen(step))?;
    // The reference: the registered matmul and bias_add functions.
    let mut want = vec![0.0f32; m * n];
    // SAFETY: a is m·k, b is k·n, want is m·n, none overlapping.
    unsafe { gllm_kernels::scalar::ops::gk_matmul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), m, n, k) };
    for row in want.chunks_mut(n) {
        for (w, &bi) in row.iter_mut().zip(&bias) {
            *w = gllm_kernels::scalar::ops::gk_bias_add(*w, bi);
        }
    }
    let stats = check(step, || "the GEMM + bias".into(), &c, &want)?;
    Ok(DemoStep {
        phase: step,
        lines: vec![format!(
            "JIT GEMM {}×{} + bias epilogue ({m}×{k}·{k}×{n}) compiled in {compile_us:.0} µs; agrees with scalar matmul + bias_add \
             (NMSE {:.1e}); {:.1} GFLOP/s on one thread (median of 5)",
            gemm.blocking().mr,
            gemm.blocking().nr,
            stats.nmse(),
            2.0 * (m * n * k) as f64 / secs / 1e9
        )],
        see_also: Some("cargo bench -p gllm-kernels --bench gemm"),
    })
}

/// A whole SmolLM2 decoder layer through `compile_graph`, compared with the
/// scalar evaluation of the same graph and timed.
fn whole_layer(
    reference: &ReferenceLayer,
    profile: &DeviceProfile,
    registry: &ScalarOpRegistry,
) -> Result<DemoStep, DemoError> {
    let step = "layer";
    let started = Instant::now();
    let layer = compile_graph(reference.sem.graph, profile, registry).map_err(codegen(step))?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let data = &reference.data;
    let prepared = layer
        .prepare_weights(&|name: &str| data.weights.get(name).map(Vec::as_slice))
        .map_err(codegen(step))?;
    let inputs: Vec<&[f32]> = data.inputs.iter().map(Vec::as_slice).collect();
    let mut outputs = Vec::new();
    let secs =
        median_secs(5, || layer.run(&prepared, &inputs).map(|o| outputs = o)).map_err(codegen(step))?;
    let mut worst = 0.0f64;
    for (i, (got, t)) in outputs.iter().zip(reference.sem.output_tensors()).enumerate() {
        worst = worst.max(check(step, || format!("layer output {i}"), got, &reference.values[t])?.nmse());
    }
    Ok(DemoStep {
        phase: step,
        lines: vec![format!(
            "SmolLM2-135M decoder layer ({LAYER_TOKENS} tokens, random weights): {} groups compiled in {compile_ms:.1} ms, \
             run in {:.2} ms (median of 5); agrees with the scalar evaluation of the graph (NMSE {worst:.1e})",
            layer.plan().groups.len(),
            secs * 1e3
        )],
        see_also: Some("gllm explain --model smollm2-135m"),
    })
}

/// [`demo_mul_add`] registered at run time, analysed, compiled and put
/// through the oracle's sweep (awkward lengths, guard pages, special
/// values), then timed on `elements` elements.
fn user_op(profile: &DeviceProfile, elements: usize) -> Result<DemoStep, DemoError> {
    let step = "user op";
    let mut registry = ScalarOpRegistry::with_builtins();
    let element = |name| Arg::Element { name, role: TensorRole::Activation };
    let signature = OpSignature::new(vec![element("a"), element("b"), element("c")], Returns::Element)
        .expect("three element arguments form a valid signature");
    let analysed =
        |e: RegistryError| DemoError::Analyse { step, op: "demo_mul_add".into(), source: Box::new(e) };
    let kind = registry
        .register_custom("demo_mul_add", demo_mul_add as extern "C" fn(f32, f32, f32) -> f32, signature)
        .map_err(analysed)?;
    let op = registry.get(kind).map_err(analysed)?;
    let started = Instant::now();
    let trace = op.trace().map_err(|e| analysed(e.into()))?;
    let prog = LoopProgram::from_trace(&trace, Vec::new()).map_err(codegen(step))?;
    let kernel = LoopKernel::compile(&prog, profile).map_err(codegen(step))?;
    let compile_us = started.elapsed().as_secs_f64() * 1e6;
    let report = oracle::test_loop_op(op, &trace, profile, Sweep::Quick, &oracle::run_loop_kernel);
    if let Some(failure) = report.failure {
        return Err(DemoError::Oracle { step, op: report.op, failure });
    }
    let mut next = crate::synthetic::uniform(0xadd);
    let [a, b, c]: [Vec<f32>; 3] = std::array::from_fn(|_| (0..elements).map(|_| next()).collect());
    let mut out = vec![0.0f32; elements];
    let secs = median_secs(5, || kernel.run(&[&a, &b, &c], &mut [&mut out], 1, elements, 1))
        .map_err(codegen(step))?;
    Ok(DemoStep {
        phase: step,
        lines: vec![
            format!(
                "`demo_mul_add(a, b, c) = a·b + c`, a plain extern \"C\" fn registered at run time: Phase 0 found {:?}; \
                 {} bytes of {} code compiled in {compile_us:.0} µs",
                trace.pattern,
                kernel.code().len(),
                kernel.isa()
            ),
            format!(
                "the oracle ran {} cases (lengths 0…1021, guard pages, special values): max {} ULPs against the function itself; \
                 {elements} elements in {:.2} ms ({:.1} GB/s, median of 5)",
                report.cases,
                report.max_ulps,
                secs * 1e3,
                (elements * 16) as f64 / secs / 1e9
            ),
        ],
        see_also: Some("gllm test-ops (every registered op)"),
    })
}
