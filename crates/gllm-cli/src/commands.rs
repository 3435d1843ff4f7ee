//! One function per subcommand.

use crate::{DemoArgs, DeviceArgs, ExplainArgs, ProfileArgs, TestOpsArgs};
use anyhow::{bail, Context, Result};
use gllm::layer_graph::decoder_stack;
use gllm::LlamaConfig;
use gllm_kernels::device::{DeviceProfile, Isa, KernelClass};
use gllm_kernels::fusion;
use gllm_kernels::runtime::dispatch::worker_placement;
use gllm_kernels::scalar::ScalarOpRegistry;
use gllm_kernels::trace::{CodeMap, ProcessMemory};
use gllm_kernels::tune::{confirm_isas, IsaTimings};
use std::sync::Arc;
use std::time::Instant;

fn isa_named(name: &str) -> Result<Isa> {
    Isa::from_name(name).with_context(|| format!("unknown ISA `{name}` (expected avx2 or avx512)"))
}

impl ProfileArgs {
    /// The profile these flags select, each kernel class's ISA confirmed by
    /// a short timing on this CPU unless forced (cached for the process).
    pub fn resolve(&self) -> Result<DeviceProfile> {
        Ok(self.resolve_with_timings()?.0)
    }

    /// [`ProfileArgs::resolve`] and the timings behind its ISA choices.
    pub fn resolve_with_timings(&self) -> Result<(DeviceProfile, Arc<IsaTimings>)> {
        let mut profile = match (&self.preset, &self.profile) {
            (Some(name), _) => DeviceProfile::preset(name)?,
            (None, Some(path)) => DeviceProfile::load(path)?,
            (None, None) => DeviceProfile::detect()?,
        };
        if let Some(name) = &self.isa {
            let isa = isa_named(name)?;
            profile = profile.with_isa(isa)?;
            for class in KernelClass::ALL {
                profile = profile.with_kernel_isa(class, isa)?;
            }
        }
        for (class, name) in [(KernelClass::Loops, &self.loops_isa), (KernelClass::Matmul, &self.matmul_isa)]
        {
            if let Some(name) = name {
                profile = profile.with_kernel_isa(class, isa_named(name)?)?;
            }
        }
        Ok(confirm_isas(&profile)?)
    }
}

pub fn device(args: &DeviceArgs) -> Result<()> {
    use gllm_kernels::codegen::quant_gemv::QuantKernelIsa;
    let (profile, timings) = args.profile.resolve_with_timings()?;
    if args.json {
        let mut value = serde_json::to_value(&profile)?;
        value["num_simd_regs"] = profile.num_simd_regs().into();
        value["gemm_blocking"] = serde_json::to_value(profile.gemm_blocking())?;
        value["kernel_isa_timings"] = serde_json::to_value(&*timings)?;
        value["thread_pool"] = worker_placement().to_string().into();
        value["quant_kernels"] = QuantKernelIsa::host_default().name().into();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if args.toml {
        print!("{}", profile.to_toml());
    } else {
        println!("{profile}\n{timings}");
        // The pool is this host's, whatever profile was selected.
        println!("thread pool  {}", worker_placement());
        let runs: Vec<&str> =
            QuantKernelIsa::ALL.into_iter().filter(|i| i.on_host()).map(|i| i.name()).collect();
        println!(
            "quantised weights  read by the {} stored-format kernels (this CPU runs: {}; GLLM_QUANT_KERNELS selects)",
            QuantKernelIsa::host_default(),
            runs.join(", ")
        );
    }
    Ok(())
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    let profile = args.profile.resolve()?;
    println!("{profile}\n");
    gllm::demo::run(&profile, args.elements, &mut |step| {
        for (i, line) in step.lines.iter().enumerate() {
            let phase = if i == 0 { step.phase } else { "" };
            println!("{phase:<12} {line}");
        }
        if let Some(see) = step.see_also {
            println!("{:<12} (see `{see}`)", "");
        }
        println!();
    })?;
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
