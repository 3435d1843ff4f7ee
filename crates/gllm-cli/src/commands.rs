//! One function per subcommand.

use crate::{DemoArgs, DeviceArgs, ExplainArgs, ProfileArgs, TestOpsArgs};
use anyhow::{bail, Context, Result};
use gllm::layer_graph::decoder_stack;
use gllm::synthetic::SyntheticData;
use gllm::LlamaConfig;
use gllm_kernels::codegen::gemm::{GemmEpilogue, GemmKernel};
use gllm_kernels::codegen::group::CompiledGroup;
use gllm_kernels::codegen::layer::compile_graph;
use gllm_kernels::codegen::MulAddKernel;
use gllm_kernels::device::{DeviceProfile, Isa};
use gllm_kernels::fusion::{self, FusionStrategy};
use gllm_kernels::scalar::{OpKind, ScalarOpRegistry};
use gllm_kernels::trace::{CodeMap, ProcessMemory};
use std::time::Instant;

impl ProfileArgs {
    /// The profile these flags select.
    pub fn resolve(&self) -> Result<DeviceProfile> {
        let profile = match (&self.preset, &self.profile) {
            (Some(name), _) => DeviceProfile::preset(name)?,
            (None, Some(path)) => DeviceProfile::load(path)?,
            (None, None) => DeviceProfile::detect()?,
        };
        match &self.isa {
            None => Ok(profile),
            Some(name) => {
                let Some(isa) = Isa::from_name(name) else {
                    bail!("unknown ISA `{name}` (expected avx2 or avx512)");
                };
                Ok(profile.with_isa(isa)?)
            }
        }
    }
}

pub fn device(args: &DeviceArgs) -> Result<()> {
    let profile = args.profile.resolve()?;
    if args.json {
        let mut value = serde_json::to_value(&profile)?;
        value["num_simd_regs"] = profile.num_simd_regs().into();
        value["gemm_blocking"] = serde_json::to_value(profile.gemm_blocking())?;
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.toml {
        print!("{}", profile.to_toml());
    } else {
        println!("{profile}");
    }
    Ok(())
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    let profile = args.profile.resolve()?;
    println!("{profile}\n");
    if !profile.runs_on_host() {
        bail!("the selected profile's ISA ({}) cannot run on this CPU", profile.isa);
    }

    let registry = ScalarOpRegistry::global();
    let started = Instant::now();
    let mut lines = Vec::new();
    for op in registry.iter() {
        let trace = op.trace().with_context(|| format!("analysing `{}`", op.kind()))?;
        lines.push(format!("  {:<11} {:?}", op.kind().name(), trace.pattern));
    }
    println!(
        "phase 0      analysed {} scalar reference ops in {:.2} ms:",
        registry.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    println!("{}\n", lines.join("\n"));

    let cfg = LlamaConfig::llama_7b();
    let graph = decoder_stack(&cfg, 128, cfg.num_layers)?;
    let started = Instant::now();
    let plan = fusion::fuse(&graph, &profile).context("planning the LLaMA-7B graph")?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let mut kinds: Vec<&str> = plan.groups.iter().map(|g| g.strategy.name()).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let counts: Vec<String> = kinds
        .iter()
        .map(|k| format!("{} {k}", plan.groups.iter().filter(|g| g.strategy.name() == *k).count()))
        .collect();
    println!(
        "phase 1-2    planned LLaMA-7B ({} layers, 128 tokens: {} nodes) in {ms:.2} ms: {} groups ({}); scratchpad {:.1} MiB",
        cfg.num_layers,
        graph.nodes.len(),
        plan.groups.len(),
        counts.join(", "),
        plan.buffers.scratchpad_bytes as f64 / (1 << 20) as f64
    );
    println!("             (`gllm explain --model llama-7b` shows one layer's plan)\n");

    // Phase 3a: every non-GEMM group of a SmolLM2 layer, compiled and run.
    let small = LlamaConfig::smollm2_135m();
    let layer = decoder_stack(&small, 16, 1)?;
    let sem = layer.analyse(registry).context("analysing the SmolLM2 layer")?;
    let layer_plan = fusion::plan(&sem, &profile);
    let started = Instant::now();
    let mut compiled = Vec::new();
    for group in layer_plan.groups.iter().filter(|g| !matches!(g.strategy, FusionStrategy::Gemm(_))) {
        let cg = CompiledGroup::compile(&sem, group, &profile)
            .with_context(|| format!("compiling group {} ({})", group.id, group.strategy.name()))?;
        compiled.push(cg);
    }
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    for cg in &compiled {
        let data: Vec<Vec<f32>> = cg
            .inputs()
            .iter()
            .map(|&t| (0..sem.tensors[t].desc.numel()).map(|i| ((i % 23) as f32 - 11.0) * 0.05).collect())
            .collect();
        let ins: Vec<&[f32]> = data.iter().map(|v| v.as_slice()).collect();
        let mut out = vec![0.0f32; sem.tensors[cg.output()].desc.numel()];
        cg.run(&ins, &mut out)?;
        if let Some(bad) = out.iter().position(|v| !v.is_finite()) {
            bail!("a compiled group produced a non-finite value at element {bad}");
        }
    }
    println!(
        "phase 3a     compiled the {} non-GEMM groups of a SmolLM2-135M layer (norms, RoPE, softmax) in {compile_ms:.2} ms and ran them",
        compiled.len()
    );
    println!(
        "             (`cargo bench -p gllm-kernels --bench loops` measures them against memory bandwidth)\n"
    );

    // Phase 3b: a SmolLM2 Q projection with a bias epilogue, checked and timed.
    let (m, k, n) = (64, small.hidden_size, small.q_dim());
    let bias_body = &registry.trace(OpKind::BiasAdd)?.body;
    let epilogue = GemmEpilogue::new().then(bias_body, 0, &[])?;
    let started = Instant::now();
    let gemm = GemmKernel::compile_with_epilogue(&profile, &epilogue)?;
    let compile_us = started.elapsed().as_secs_f64() * 1e6;
    let a: Vec<f32> = (0..m * k).map(|i| ((i % 29) as f32 - 14.0) * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i % 31) as f32 - 15.0) * 0.01).collect();
    let bias: Vec<f32> = (0..n).map(|i| (i % 5) as f32 * 0.1).collect();
    let packed = gemm.pack_b(&b, k, n)?;
    let mut c = vec![0.0f32; m * n];
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        gemm.gemm_prepacked_with(&a, &packed, &mut c, m, &[&bias], 1)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let mut want = vec![0.0f32; m * n];
    // SAFETY: a is m·k, b is k·n, want is m·n.
    unsafe { gllm_kernels::scalar::ops::gk_matmul(a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), m, n, k) };
    let worst = (0..m * n).map(|i| (c[i] - (want[i] + bias[i % n])).abs()).fold(0.0f32, f32::max);
    if worst > 1e-3 {
        bail!("JIT GEMM + bias disagrees with the scalar reference by {worst}");
    }
    println!(
        "phase 3b     JIT GEMM {}×{} + bias epilogue ({m}×{k}·{k}×{n}) compiled in {compile_us:.0} µs; max |error| vs scalar {worst:.1e}; {:.1} GFLOP/s on one thread\n",
        gemm.blocking().mr,
        gemm.blocking().nr,
        2.0 * (m * n * k) as f64 / times[2] / 1e9
    );

    // A whole decoder layer through compile_graph (random weights).
    let tokens = 16;
    let layer_graph = decoder_stack(&small, tokens, 1)?;
    let started = Instant::now();
    let layer = compile_graph(&layer_graph, &profile, registry).context("compiling the SmolLM2 layer")?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let data = SyntheticData::for_graph(&layer_graph, tokens, 0x9e37_79b9_7f4a_7c15);
    let prepared = layer.prepare_weights(&|name: &str| data.weights.get(name).map(|v| v.as_slice()))?;
    let inputs = &data.inputs;
    let input_refs: Vec<&[f32]> = inputs.iter().map(|v| v.as_slice()).collect();
    let mut times = Vec::new();
    let mut outputs = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        outputs = layer.run(&prepared, &input_refs)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    if outputs.iter().flatten().any(|v| !v.is_finite()) {
        bail!("the SmolLM2 layer produced non-finite values");
    }
    println!(
        "layer        SmolLM2-135M decoder layer ({tokens} tokens, random weights): {} groups compiled in {compile_ms:.1} ms, run in {:.2} ms (median of 5)\n",
        layer.plan().groups.len(),
        times[2] * 1e3
    );

    let started = Instant::now();
    let kernel = MulAddKernel::compile(&profile).context("JIT-compiling the mul-add kernel")?;
    let compile_us = started.elapsed().as_secs_f64() * 1e6;
    let n = args.elements;
    let a: Vec<f32> = (0..n).map(|i| (i % 97) as f32 * 0.25 - 12.0).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 89) as f32 * -0.125 + 5.0).collect();
    let init: Vec<f32> = (0..n).map(|i| (i % 13) as f32).collect();
    let mut out = init.clone();
    let mut times = Vec::new();
    for _ in 0..5 {
        out.copy_from_slice(&init);
        let t = Instant::now();
        kernel.run(&a, &b, &mut out)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let mismatches = (0..n).filter(|&i| out[i].to_bits() != a[i].mul_add(b[i], init[i]).to_bits()).count();
    if mismatches != 0 {
        bail!("JIT mul-add kernel disagrees with scalar code on {mismatches} of {n} elements");
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gbps = (n * 16) as f64 / median / 1e9;
    println!(
        "jit mul-add  {} bytes of {} code, compiled in {compile_us:.0} µs; {n} elements match scalar bit for bit; median {:.2} ms ({gbps:.1} GB/s)",
        kernel.code().len(),
        kernel.isa(),
        median * 1e3
    );
    Ok(())
}

pub fn explain(args: &ExplainArgs) -> Result<()> {
    match (&args.op, &args.model) {
        (Some(op), _) => explain_op(op),
        (None, Some(model)) => explain_model(model, args),
        (None, None) => bail!("say what to explain: --op NAME or --model NAME"),
    }
}

/// A built-in configuration by name, or the configuration of a model file
/// (GGUF metadata, or an HF directory's config.json) without loading weights.
fn model_config(name: &str) -> Result<LlamaConfig> {
    if let Some(cfg) = LlamaConfig::by_name(name) {
        return Ok(cfg);
    }
    let path = std::path::Path::new(name);
    if !path.exists() {
        bail!(
            "unknown model `{name}`: neither a file nor a built-in name ({})",
            gllm::MODEL_NAMES.join(", ")
        );
    }
    if path.is_dir() || path.extension().is_some_and(|e| e == "safetensors") {
        return Ok(gllm::model::safetensors_config(&gllm::SafetensorsModel::open(path)?)?);
    }
    let file = gllm::GgufFile::open(path)?;
    Ok(gllm::model::gguf_config(&file)?)
}

fn explain_model(name: &str, args: &ExplainArgs) -> Result<()> {
    let cfg = model_config(name)?;
    if args.seq == 0 || args.layers == 0 {
        bail!("--seq and --layers must be at least 1");
    }
    let profile = args.profile.resolve()?;
    let graph = decoder_stack(&cfg, args.seq, args.layers)?;
    let started = Instant::now();
    let sem =
        graph.analyse(ScalarOpRegistry::global()).with_context(|| format!("analysing the {name} graph"))?;
    let options = gllm_kernels::fusion::FusionOptions { fuse: !args.no_fusion, ..Default::default() };
    let plan = fusion::plan_with(&sem, &profile, options);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    println!(
        "{name}: {} layer(s), {} tokens, hidden {}, FFN {}, {} heads ({} KV) — validated, analysed and planned in {ms:.2} ms (incl. first-use Phase 0 of its ops)\n",
        args.layers, args.seq, cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads
    );
    print!("{}", plan.explain(&graph));
    Ok(())
}

pub fn test_ops(args: &TestOpsArgs) -> Result<()> {
    use gllm_kernels::oracle::{self, Sweep};
    use gllm_kernels::quant::QuantFormat;
    let registry = ScalarOpRegistry::global();
    let format_named = |n: &str| QuantFormat::ALL.into_iter().find(|f| f.name().eq_ignore_ascii_case(n));
    for name in &args.op {
        if format_named(name).is_none() {
            registry.lookup(name).with_context(|| {
                let formats: Vec<&str> = QuantFormat::ALL.iter().map(|f| f.name()).collect();
                format!("`{name}` is neither a registered op nor a weight format ({})", formats.join(", "))
            })?;
        }
    }
    let formats: Vec<QuantFormat> = QuantFormat::ALL
        .into_iter()
        .filter(|f| args.op.is_empty() || args.op.iter().any(|n| format_named(n) == Some(*f)))
        .collect();
    let (mut profiles, skipped) = oracle::host_profiles()?;
    if let Some(name) = &args.isa {
        let Some(isa) = Isa::from_name(name) else { bail!("unknown ISA `{name}` (expected avx2 or avx512)") };
        if skipped.contains(&isa) {
            bail!("this machine cannot run {isa}");
        }
        profiles.retain(|p| p.isa == isa);
    }
    for isa in &skipped {
        println!("skipped: {isa} (this CPU does not have it)");
    }
    let sweep = if args.quick { Sweep::Quick } else { Sweep::Full };
    let select = |op: &gllm_kernels::scalar::RegisteredOp| {
        args.op.is_empty() || args.op.iter().any(|n| n == op.kind().name())
    };
    println!(
        "{:<16} {:<22} {:<7} {:>6} {:>8} {:>9}  {:<6} bound",
        "op", "kernel", "isa", "cases", "max ulp", "max NMSE", "result"
    );
    let start = Instant::now();
    let reports = oracle::test_ops(registry, &profiles, &formats, sweep, &select, &mut |r| {
        let ulp = if r.max_ulps == u64::MAX { "NaN".to_string() } else { r.max_ulps.to_string() };
        println!(
            "{:<16} {:<22} {:<7} {:>6} {:>8} {:>9.1e}  {:<6} {}",
            r.op,
            r.kernel.to_string(),
            r.isa.to_string(),
            r.cases,
            ulp,
            r.max_nmse,
            match (r.passed(), &r.skipped) {
                (false, _) => "FAIL",
                (true, Some(_)) => "skip",
                (true, None) => "ok",
            },
            r.skipped.as_deref().unwrap_or(&r.tolerance)
        );
        if let Some(why) = &r.failure {
            println!("    {why}");
        }
    });
    let failed = reports.iter().filter(|r| !r.passed()).count();
    let skipped = reports.iter().filter(|r| r.skipped.is_some()).count();
    let cases: usize = reports.iter().map(|r| r.cases).sum();
    println!(
        "\n{} kernels, {cases} cases, {failed} failed, {skipped} not applicable ({:.1} s)",
        reports.len(),
        start.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn explain_op(name: &str) -> Result<()> {
    let registry = ScalarOpRegistry::global();
    let op = registry.lookup(name)?;
    let address = op.func().address() as u64;
    println!("operator   {}", op.kind());
    println!("signature  {}", op.signature());
    println!("reference  scalar fn at {address:#x}");
    let code = CodeMap::discover(op.kind().name(), address, &ProcessMemory::new())?;
    println!("\nmachine code (reachable from the entry; loop headers marked):");
    print!("{}", code.disassembly());
    let trace = op.trace()?;
    println!("\nOpTrace:");
    print!("{trace}");
    Ok(())
}
