//! `gllm run`, `chat`, `bench`, `perplexity` and `serve`: loading a model and running it.

use crate::{BenchArgs, ChatArgs, ModelArgs, PerplexityArgs, RunArgs, SamplingArgs, ServeArgs};
use anyhow::{bail, Context, Result};
use gllm::engine::{Backend, Engine, EngineOptions};
use gllm::generate::{generate, generate_from, GenerationStats, StopReason};
use gllm::model::{LoadOptions, Model, WeightStorage};
use gllm::perplexity::Scoring;
use gllm::sampling::{Sampler, SamplingParams};
use gllm::{layer_graph, ChatMessage};
use gllm_kernels::fusion::FusionOptions;
use gllm_kernels::tune::ReadProbe;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// The built-in model's file: written once per version of its bytes.
fn builtin_model_path() -> Result<PathBuf> {
    let bytes = gllm::builtin::gguf_bytes().context("building the built-in model")?;
    let hash =
        bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let dir = std::env::temp_dir().join("gllm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("builtin-tiny-{hash:016x}.gguf"));
    if !path.exists() {
        let part = path.with_extension("part");
        std::fs::write(&part, &bytes).with_context(|| format!("writing {}", part.display()))?;
        std::fs::rename(&part, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(path)
}

/// Loads the model (with a progress bar) and the engine options the flags ask for.
fn load(args: &ModelArgs) -> Result<(Model, EngineOptions)> {
    let mut profile = args.profile.resolve()?;
    if !profile.runs_on_host() {
        bail!("the selected profile's ISA ({}) cannot run on this CPU", profile.isa_summary());
    }
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        profile.physical_cores = t;
    }
    let path = match &args.model {
        Some(p) => p.clone(),
        None => {
            let p = builtin_model_path()?;
            eprintln!(
                "no --model given: using the built-in tiny model (random weights), written to {}",
                p.display()
            );
            p
        }
    };
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(path.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()));
    let started = Instant::now();
    let weights = if args.f32_weights { WeightStorage::F32 } else { WeightStorage::AsStored };
    let load_opts = LoadOptions { weights };
    let model = Model::load_with(&path, &load_opts, &|done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    let c = &model.config;
    let kept: Vec<&str> = model.weights.quant_formats().iter().map(|f| f.name()).collect();
    let held = if kept.is_empty() {
        "weights as f32".to_string()
    } else {
        format!("{} weights read as stored", kept.join("+"))
    };
    eprintln!(
        "loaded {} ({}; {held}, {:.0} MiB; {:.1} M params, {} layers, hidden {}, {} heads / {} KV, vocab {}) in {:.2} s",
        model.info.name,
        model.info.format,
        model.weights.size_bytes() as f64 / (1 << 20) as f64,
        model.info.params as f64 / 1e6,
        c.num_layers,
        c.hidden_size,
        c.num_heads,
        c.num_kv_heads,
        c.vocab_size,
        started.elapsed().as_secs_f64()
    );
    let mut opts = EngineOptions::new(profile);
    opts.backend = if args.reference { Backend::Reference } else { Backend::Jit };
    opts.fusion = FusionOptions { fuse: !args.no_fusion, ..Default::default() };
    opts.prefill_chunk = args.chunk;
    opts.activations = args.activations.parse().map_err(anyhow::Error::msg)?;
    if let Some(ctx) = args.ctx {
        opts.max_context = ctx;
    }
    Ok((model, opts))
}

fn engine(model: &Model, opts: EngineOptions) -> Result<Engine> {
    let started = Instant::now();
    let backend = opts.backend;
    let e = Engine::new(model.config.clone(), model.weights.clone(), opts).context("preparing the engine")?;
    if backend == Backend::Jit {
        eprintln!(
            "compiled the single-token layer, attention and LM head and packed the weights for {} on {} thread(s) in {:.2} s",
            e.options().profile.isa_summary(),
            e.options().threads(),
            started.elapsed().as_secs_f64()
        );
    } else {
        eprintln!("reference backend: every node runs its scalar reference function (slow)");
    }
    Ok(e)
}

impl SamplingArgs {
    fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
        }
    }
}

/// What each compiled group of a part runs, and whether (and why) it is fused.
fn explain_parts(e: &mut Engine, seq: usize) -> Result<()> {
    let cfg = e.config().clone();
    let graphs = [
        ("pre_attention", layer_graph::pre_attention(&cfg, seq)),
        ("post_attention", layer_graph::post_attention(&cfg, seq)),
    ];
    let plans = e.plans(seq)?;
    for ((name, graph), (_, plan)) in graphs.iter().zip(plans) {
        eprintln!("── {name} for {seq} token(s) ──");
        eprint!("{}", plan.explain(graph));
    }
    eprintln!(
        "── attention ──\nCausalAttention (compiled once, context length at run time): QKᵀ GEMM with a scale·mask epilogue, softmax loop kernel in place, P·V GEMM; {} query heads over {} KV heads of {}\n",
        cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    );
    Ok(())
}

fn report(stats: &GenerationStats, e: &Engine, reason: Option<StopReason>) {
    let es = e.stats();
    let per_call = es.outside_kernels().as_secs_f64() / es.calls.max(1) as f64;
    eprintln!(
        "\nprompt: {} tokens in {:.1} ms ({:.1} tok/s) | generation: {} tokens, {:.1} tok/s | outside kernels {:.3} ms per forward | compile {:.1} ms{}",
        stats.prompt_tokens,
        stats.prompt_time.as_secs_f64() * 1e3,
        stats.prompt_tokens_per_second(),
        stats.generated_tokens,
        stats.decode_tokens_per_second(),
        per_call * 1e3,
        es.compile.as_secs_f64() * 1e3,
        match reason {
            Some(StopReason::StopToken(t)) => format!(" | stopped at end-of-generation token {t}"),
            Some(StopReason::ContextFull) => " | stopped: context full".into(),
            _ => String::new(),
        }
    );
}

pub fn run(args: &RunArgs) -> Result<()> {
    let (model, opts) = load(&args.model)?;
    let tok = &model.tokenizer;
    let prompt = args.prompt.clone().unwrap_or_else(|| "The quick brown fox".into());
    let ids = if args.chat {
        let text = tok.apply_chat_template(&[ChatMessage::new("user", prompt.as_str())], true)?;
        tok.encode(&text, false, true)
    } else {
        tok.encode(&prompt, true, true)
    };
    if ids.is_empty() {
        bail!("the prompt is empty after tokenisation");
    }
    let mut e = engine(&model, opts)?;
    if args.model.verbose {
        explain_parts(&mut e, 1)?;
        explain_parts(&mut e, ids.len().min(args.model.chunk))?;
    }
    let mut sampler = Sampler::new(args.sampling.params());
    let is_stop = |t: u32| tok.is_end_of_generation(t);
    let mut stream = tok.streaming_decoder();
    let mut out = std::io::stdout().lock();
    if !args.chat {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let mut on_token = |t: u32| {
        let piece = stream.push(t);
        write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
    };
    let (stats, reason) = match &args.dump_logits {
        Some(path) => {
            let t0 = Instant::now();
            let all = e.forward(&ids, true)?;
            let prompt_time = t0.elapsed();
            let vocab = model.config.vocab_size;
            crate::npy::write_f32(path, &[ids.len(), vocab], &all)
                .with_context(|| format!("writing {}", path.display()))?;
            let last = all[(ids.len() - 1) * vocab..].to_vec();
            let (_, reason, mut stats) =
                generate_from(&mut e, last, args.n, &mut sampler, &is_stop, &mut on_token)?;
            stats.prompt_tokens = ids.len();
            stats.prompt_time = prompt_time;
            (stats, reason)
        }
        None => {
            let (_, reason, stats) = generate(&mut e, &ids, args.n, &mut sampler, &is_stop, &mut on_token)?;
            (stats, reason)
        }
    };
    let rest = stream.finish();
    writeln!(std::io::stdout(), "{rest}")?;
    if let Some(path) = &args.dump_logits {
        eprintln!("wrote the logits of {} prompt positions to {}", ids.len(), path.display());
    }
    report(&stats, &e, Some(reason));
    Ok(())
}

pub fn chat(args: &ChatArgs) -> Result<()> {
    let (model, opts) = load(&args.model)?;
    let tok = &model.tokenizer;
    if tok.chat_template().is_none() {
        bail!("{} has no chat template (tokenizer.chat_template)", model.info.path.display());
    }
    let mut e = engine(&model, opts)?;
    let mut sampler = Sampler::new(args.sampling.params());
    let mut messages: Vec<ChatMessage> =
        args.system.iter().map(|s| ChatMessage::new("system", s.as_str())).collect();
    // Tokens whose keys and values are in the cache, to reuse the common prefix.
    let mut cached: Vec<u32> = Vec::new();
    eprintln!("chat with {} — an empty line or /exit ends, /reset starts over", model.info.name);
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("\n> ");
        let Some(line) = lines.next() else { break };
        let line = line.context("reading standard input")?;
        let line = line.trim();
        if line.is_empty() || line == "/exit" {
            break;
        }
        if line == "/reset" {
            messages.retain(|m| m.role == "system");
            cached.clear();
            e.reset();
            eprintln!("(conversation cleared)");
            continue;
        }
        messages.push(ChatMessage::new("user", line));
        let text = tok.apply_chat_template(&messages, true)?;
        let ids = tok.encode(&text, false, true);
        let common =
            cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len().saturating_sub(1));
        e.truncate(common);
        if e.position() + (ids.len() - common) + 1 > e.max_context() {
            eprintln!("(the conversation no longer fits in {} positions: starting over)", e.max_context());
            messages.retain(|m| m.role != "assistant" && m.role != "user");
            messages.push(ChatMessage::new("user", line));
            e.reset();
            cached.clear();
            continue;
        }
        let mut stream = tok.streaming_decoder();
        let mut out = std::io::stdout().lock();
        let mut on_token = |t: u32| {
            let piece = stream.push(t);
            write!(out, "{piece}").and_then(|_| out.flush()).is_ok()
        };
        let is_stop = |t: u32| tok.is_end_of_generation(t);
        let (reply, reason, stats) =
            generate(&mut e, &ids[common..], args.n, &mut sampler, &is_stop, &mut on_token)?;
        let rest = stream.finish();
        writeln!(std::io::stdout(), "{rest}")?;
        let mut all = ids.clone();
        all.extend(&reply);
        all.truncate(e.position());
        cached = all;
        messages.push(ChatMessage::new("assistant", tok.decode(&reply)));
        eprintln!(
            "[{} prompt tokens at {:.0} tok/s, {} tokens at {:.1} tok/s{}]",
            stats.prompt_tokens,
            stats.prompt_tokens_per_second(),
            stats.generated_tokens,
            stats.decode_tokens_per_second(),
            if reason == StopReason::Length { ", reply cut at -n" } else { "" }
        );
    }
    Ok(())
}

/// Mean and sample standard deviation.
fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    let (model, base) = load(&args.model)?;
    if args.repetitions == 0 {
        bail!("-r must be at least 1");
    }
    let size = model.info.file_bytes as f64;
    let size = if size >= (1u64 << 30) as f64 {
        format!("{:.2} GiB", size / (1u64 << 30) as f64)
    } else {
        format!("{:.2} MiB", size / (1u64 << 20) as f64)
    };
    let params = format!("{:.2} M", model.info.params as f64 / 1e6);
    let name = model.info.name.clone();
    println!("| model | size | params | threads | test | t/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    let vocab = model.config.vocab_size as u64;
    // Deterministic stand-in prompt tokens (the content does not change the cost).
    let tokens = |n: usize| -> Vec<u32> { (0..n as u64).map(|i| ((i * 7919 + 13) % vocab) as u32).collect() };
    let mut notes = Vec::new();
    let mut profiles: Vec<(usize, String)> = Vec::new();
    let mut probe: Option<Result<ReadProbe, gllm_kernels::codegen::CodegenError>> = None;
    // This host's L3 (a `--preset` may describe another machine): whether
    // decode's weights can stay in cache, so DRAM is not its bound.
    let l3 = gllm_kernels::device::DeviceProfile::detect()
        .map_or(base.profile.caches.l3.size_bytes, |p| p.caches.l3.size_bytes) as f64;
    for &threads in &args.threads_list {
        if threads == 0 {
            bail!("thread counts must be at least 1");
        }
        let mut opts = base.clone();
        opts.profile.physical_cores = threads;
        let need = args.prompt.iter().copied().max().unwrap_or(0).max(args.gen + 1);
        opts.max_context = opts.max_context.max(need);
        let mut e = Engine::new(model.config.clone(), model.weights.clone(), opts)?;
        for &n in &args.prompt {
            if n == 0 {
                continue;
            }
            let prompt = tokens(n);
            e.reset();
            e.forward(&prompt, false)?; // warm-up: compiles the chunk sizes
            let mut rates = Vec::new();
            for _ in 0..args.repetitions {
                e.reset();
                let t0 = Instant::now();
                e.forward(&prompt, false)?;
                rates.push(n as f64 / t0.elapsed().as_secs_f64());
            }
            let (m, s) = mean_std(&rates);
            println!("| {name} | {size} | {params} | {threads} | pp{n} | {m:.2} ± {s:.2} |");
        }
        if args.gen > 0 {
            let mut rates = Vec::new();
            let mut outside = Vec::new();
            for rep in 0..=args.repetitions {
                gllm_kernels::runtime::profile::set_enabled(false);
                e.reset();
                e.forward(&[1], false)?;
                e.reset_stats();
                // The generated tokens of the timed repetitions only (the
                // first repetition is a warm-up).
                gllm_kernels::runtime::profile::set_enabled(args.profile_groups && rep > 0);
                let mut tok = 1u32;
                let t0 = Instant::now();
                for _ in 0..args.gen {
                    let l = e.forward(&[tok], false)?;
                    tok = gllm::sampling::argmax(&l);
                }
                let dt = t0.elapsed().as_secs_f64();
                if rep > 0 {
                    // The first run is a warm-up.
                    rates.push(args.gen as f64 / dt);
                    outside.push(e.stats().outside_kernels().as_secs_f64() / args.gen as f64);
                }
            }
            gllm_kernels::runtime::profile::set_enabled(false);
            if args.profile_groups {
                profiles.push((threads, group_profile(args.gen * args.repetitions)));
            }
            let (m, s) = mean_std(&rates);
            println!("| {name} | {size} | {params} | {threads} | tg{} | {m:.2} ± {s:.2} |", args.gen);
            let (o, _) = mean_std(&outside);
            let read = model.weights.bytes_read_per_token() as f64;
            let against = if read > 2.0 * l3 {
                // Measured now, beside the decode it is compared with.
                let probe = probe.get_or_insert_with(|| ReadProbe::new(&base.profile));
                match probe {
                    Ok(p) => {
                        let ceiling = p.gb_per_s(threads, 5);
                        format!(
                            " = {:.0} % of this machine's read bandwidth on {threads} thread(s) ({ceiling:.1} GB/s, measured now)",
                            100.0 * read * m / 1e9 / ceiling
                        )
                    }
                    Err(e) => format!(" (read bandwidth not measured: {e})"),
                }
            } else {
                format!(" (the weights fit in the {:.0} MiB L3: not bound by DRAM)", l3 / (1 << 20) as f64)
            };
            notes.push(format!(
                "{threads} thread(s): a decode step reads {:.1} MB of weights: {:.1} GB/s at tg{}{against}",
                read / 1e6,
                read * m / 1e9,
                args.gen
            ));
            for &seqs in args.batch_seqs.iter().filter(|&&b| b > 1) {
                let mut rates = Vec::new();
                for rep in 0..=args.repetitions {
                    let mut forks: Vec<Engine> = (0..seqs).map(|_| e.fork()).collect();
                    for f in forks.iter_mut() {
                        f.forward(&[1], false)?;
                    }
                    let mut toks = vec![1u32; seqs];
                    let t0 = Instant::now();
                    for _ in 0..args.gen {
                        let mut refs: Vec<&mut Engine> = forks.iter_mut().collect();
                        let logits = Engine::decode_batch(&mut refs, &toks)?;
                        toks = logits.iter().map(|l| gllm::sampling::argmax(l)).collect();
                    }
                    if rep > 0 {
                        rates.push((seqs * args.gen) as f64 / t0.elapsed().as_secs_f64());
                    }
                }
                let (bm, bs) = mean_std(&rates);
                println!(
                    "| {name} | {size} | {params} | {threads} | tg{} x{seqs} | {bm:.2} ± {bs:.2} |",
                    args.gen
                );
            }
            notes.push(format!(
                "{threads} thread(s): {:.1} µs per generated token outside kernels ({:.2} % of the token's time)",
                o * 1e6,
                100.0 * o * m
            ));
        }
    }
    println!();
    for n in notes {
        println!("{n}");
    }
    for (threads, table) in profiles {
        println!("\nwhere tg{}'s time goes on {threads} thread(s) (µs per generated token; a part compiled once serves every layer, so its groups sum over the layers):\n{table}", args.gen);
    }
    let choices = gllm_kernels::codegen::quant_gemv::measured_thread_choices();
    if !choices.is_empty() {
        println!(
            "quantised weights read as stored by the {} kernels",
            gllm_kernels::codegen::quant_gemv::QuantKernelIsa::host_default()
        );
        println!("quantised GEMVs (one matrix or a group run as one) over 128 KiB, thread count measured on their first calls (one thread and the budget in turn, medians):");
        for (k, c) in choices {
            println!(
                "  {k}: {} thread(s) — {:.1} µs on 1, {:.1} µs on {}",
                c.threads,
                c.one_thread_secs * 1e6,
                c.many_threads_secs * 1e6,
                k.threads
            );
        }
    }
    Ok(())
}

pub fn perplexity(args: &PerplexityArgs) -> Result<()> {
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let (model, mut opts) = load(&args.model)?;
    if args.ctx_size < 4 {
        bail!("--ctx-size must be at least 4");
    }
    opts.max_context = opts.max_context.max(args.ctx_size);
    if args.ctx_size > model.config.context_length {
        bail!(
            "--ctx-size {} is beyond the model's context of {}",
            args.ctx_size,
            model.config.context_length
        );
    }
    let tok = &model.tokenizer;
    let t0 = Instant::now();
    let tokens = tok.encode(&text, false, false);
    eprintln!(
        "tokenised {} bytes into {} tokens in {:.2} s",
        text.len(),
        tokens.len(),
        t0.elapsed().as_secs_f64()
    );
    let chunks = (tokens.len() / args.ctx_size).min(args.chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        bail!("the text has {} tokens: fewer than one chunk of {}", tokens.len(), args.ctx_size);
    }
    let mut e = engine(&model, opts)?;
    let bar = ProgressBar::new(chunks as u64).with_style(
        ProgressStyle::with_template("perplexity [{bar:30}] {pos}/{len} chunks, {msg} ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    let bos = if tok.add_bos() { tok.bos() } else { None };
    let t0 = Instant::now();
    let scoring = if args.decode { Scoring::Decode } else { Scoring::Prompt };
    let result =
        gllm::perplexity::perplexity(&mut e, &tokens, args.ctx_size, bos, args.chunks, scoring, &mut |p| {
            bar.set_position(p.chunk as u64);
            bar.set_message(format!("PPL {:.4}", p.perplexity));
        })?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "perplexity {:.4} over {} chunks of {} tokens ({} tokens scored{}) in {:.1} s ({:.0} tokens/s)",
        result.perplexity,
        result.chunks,
        args.ctx_size,
        result.scored_tokens,
        if args.decode { ", token by token" } else { "" },
        secs,
        (result.chunks * args.ctx_size) as f64 / secs
    );
    Ok(())
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    if args.parallel == 0 {
        bail!("--parallel must be at least 1");
    }
    let (model, opts) = load(&args.model)?;
    let threads = opts.threads();
    let started = Instant::now();
    let options =
        gllm_server::ServerOptions { parallel: args.parallel, queue: args.queue, ..Default::default() };
    let server = gllm_server::Server::new(Arc::new(model), opts, options).context("preparing the engine")?;
    eprintln!(
        "compiled and packed the weights in {:.2} s; {} slot(s) × {} thread(s) (of {threads}), {} positions each, queue {}",
        started.elapsed().as_secs_f64(),
        server.parallel(),
        server.threads_per_slot(),
        server.context(),
        server.queue_capacity()
    );
    let model_id = server.model_id().to_string();
    server
        .run(&args.host, args.port, |addr| {
            eprintln!("serving {model_id} on http://{addr}/v1 (Ctrl-C stops)");
        })
        .with_context(|| format!("serving on {}:{}", args.host, args.port))
}

/// The recorded group times ([`gllm_kernels::runtime::profile`]) as a
/// markdown table per generated token, longest first.
fn group_profile(tokens: usize) -> String {
    let times = gllm_kernels::runtime::profile::take();
    let total: f64 = times.iter().map(|t| t.total.as_secs_f64()).sum();
    let per_token = |d: std::time::Duration| d.as_secs_f64() * 1e6 / tokens.max(1) as f64;
    let mut out = String::from("| µs/token | share | runs/token | group |\n| ---: | ---: | ---: | --- |\n");
    for t in &times {
        out.push_str(&format!(
            "| {:.1} | {:.1} % | {:.1} | {} |\n",
            per_token(t.total),
            100.0 * t.total.as_secs_f64() / total.max(f64::MIN_POSITIVE),
            t.calls as f64 / tokens.max(1) as f64,
            t.label
        ));
    }
    out.push_str(&format!("| {:.1} | 100 % | | all timed groups |", total * 1e6 / tokens.max(1) as f64));
    out
}
