//! `gllm`: the command-line face of gllm-kernels. It parses arguments and
//! prints; every decision is made in the libraries.

mod commands;
mod model_cmds;
mod npy;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "gllm", version, about = "CPU JIT compiler for LLM-inference kernels")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text with a model (with no --model: the built-in tiny model,
    /// written as a GGUF file and loaded like any other).
    Run(RunArgs),
    /// An interactive multi-turn conversation using the model's chat template.
    Chat(ChatArgs),
    /// Prompt-processing and generation speed, as llama-bench markdown rows.
    Bench(BenchArgs),
    /// Perplexity over a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(PerplexityArgs),
    /// An OpenAI-compatible HTTP server (/v1/chat/completions,
    /// /v1/completions, /v1/models, /health) with streaming. --threads is
    /// the whole budget: each of the --parallel slots gets threads / parallel.
    Serve(ServeArgs),
    /// Print the device profile the compiler would use.
    Device(DeviceArgs),
    /// Show what the compiler learned about an operator (`--op`), or how it
    /// plans a model's decoder layer on a device (`--model`).
    Explain(ExplainArgs),
    /// Differential test of every registered op's JIT kernels against its
    /// scalar reference, on every ISA this machine runs, over a sweep of
    /// shapes, with operands against guard pages (exit status 1 on a failure).
    TestOps(TestOpsArgs),
    /// Walk through the compiler's phases on this machine (Phase 0 analysis,
    /// planning, loop kernels, GEMM, a whole layer) with checks against the
    /// scalar references.
    Demo(DemoArgs),
}

/// Which model and how to run it (shared by run, chat, bench and serve).
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file, a .safetensors file or a directory with safetensors +
    /// config.json + tokenizer.json. Default: the built-in tiny model.
    #[arg(long, short = 'm')]
    model: Option<PathBuf>,
    /// Threads (default: this machine's physical cores).
    #[arg(long, short = 't')]
    threads: Option<usize>,
    /// Plan every node as its own group (the unfused baseline).
    #[arg(long)]
    no_fusion: bool,
    /// Evaluate every node with its scalar reference function (no JIT; slow).
    #[arg(long)]
    reference: bool,
    /// Dequantise every weight to f32 at load: exact arithmetic on the
    /// file's values (the accuracy baseline), 2–8× the bytes per token. By
    /// default quantised (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) and F16/BF16 weights
    /// are read as stored, the quantised ones with int8 activations as
    /// llama.cpp uses (docs/quantised.md).
    #[arg(long)]
    f32_weights: bool,
    /// How decode quantises activations for quantised weights: int8 as
    /// llama.cpp does (fastest), or int16 (256× finer: greedy text and
    /// logits follow --f32-weights, ~1.4× the kernel instructions).
    #[arg(long, default_value = "int8", value_parser = ["int8", "int16"])]
    activations: String,
    /// KV-cache positions to allocate (default 2048, at most the model's context).
    #[arg(long)]
    ctx: Option<usize>,
    /// Prompt tokens per prefill chunk.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// Show the compiled groups of each part: kernel, fused or not, and why.
    #[arg(long, short = 'v')]
    verbose: bool,
    #[command(flatten)]
    profile: ProfileArgs,
}

/// How tokens are chosen.
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// Temperature (0 = greedy).
    #[arg(long = "temp", default_value_t = 0.8)]
    temperature: f32,
    /// Keep the K most likely tokens (0 = all).
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    /// Keep the most likely tokens up to this total probability.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed (the same seed gives the same text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt (default: a short English sentence).
    #[arg(long, short = 'p')]
    prompt: Option<String>,
    /// Tokens to generate.
    #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// Write the logits of every prompt position to this .npy file
    /// (float32, shape [prompt tokens, vocab]).
    #[arg(long)]
    dump_logits: Option<PathBuf>,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message (default: the template's own, if it has one).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long = "n-predict", default_value_t = 512)]
    n: usize,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths to time (pp tests).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "128,512")]
    prompt: Vec<usize>,
    /// Tokens to generate (tg test; 0 = none).
    #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
    gen: usize,
    /// Thread counts to run.
    #[arg(short = 'T', long = "threads-list", value_delimiter = ',', default_value = "1,2")]
    threads_list: Vec<usize>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5)]
    repetitions: usize,
    /// Also decode this many sequences at once (one GEMM per weight per
    /// step), e.g. `-B 4,8`: rows `tg128 x4`, t/s summed over the sequences.
    #[arg(short = 'B', long = "batch-seqs", value_delimiter = ',')]
    batch_seqs: Vec<usize>,
    /// Also print where the tg test's time goes: wall time per compiled
    /// group (summed over the layers that share it) and attention, per
    /// generated token.
    #[arg(long = "profile-groups")]
    profile_groups: bool,
}

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The text to score.
    #[arg(long, short = 'f')]
    file: PathBuf,
    /// Tokens per chunk; the second half of each chunk is scored.
    #[arg(long = "ctx-size", short = 'c', default_value_t = 512)]
    ctx_size: usize,
    /// Score at most this many chunks.
    #[arg(long)]
    chunks: Option<usize>,
    /// Feed each chunk one token at a time through the decode path that
    /// generation uses (GEMVs and the KV cache) instead of as one prompt;
    /// slower, and the check on the decode kernels' accuracy.
    #[arg(long)]
    decode: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// (`--threads` is the server's whole budget: each of the `--parallel`
    /// slots gets threads / parallel, at least 1.)
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (loopback by default: the server has no
    /// authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences generated at once, each in its own KV-cache slot.
    #[arg(long, short = 'P', default_value_t = 1)]
    parallel: usize,
    /// Requests that may wait for a free slot; more get 503.
    #[arg(long, default_value_t = 32)]
    queue: usize,
}

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Elements for the demo kernel run.
    #[arg(long, default_value_t = 1 << 22)]
    elements: usize,
}

#[derive(Args)]
pub struct TestOpsArgs {
    /// Only these operators or weight formats (comma-separated: registered
    /// op names such as silu,matmul; formats such as q4_1,q6_k,f16).
    #[arg(long, value_delimiter = ',')]
    op: Vec<String>,
    /// Only this ISA (avx2 or avx512; default: every ISA this machine runs).
    #[arg(long)]
    isa: Option<String>,
    /// A dozen shapes per op instead of every tail 0..=64 and large rows.
    #[arg(long)]
    quick: bool,
}

/// Which hardware to plan for: this machine, a preset or a profile file.
#[derive(Args, Clone)]
pub struct ProfileArgs {
    /// Use a built-in preset instead of detecting (haswell, skylake-x, zen5).
    #[arg(long, conflicts_with = "profile")]
    preset: Option<String>,
    /// Load a TOML device profile file instead of detecting.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Generate code for this ISA (avx2, avx512) instead of the best available
    /// (every kernel class; no timing).
    #[arg(long)]
    isa: Option<String>,
    /// Force the loop kernels' ISA (norms, elementwise, softmax, RoPE)
    /// instead of timing it at start-up.
    #[arg(long, value_name = "ISA")]
    loops_isa: Option<String>,
    /// Force the GEMM/GEMV kernels' ISA instead of timing it at start-up.
    #[arg(long, value_name = "ISA")]
    matmul_isa: Option<String>,
}

#[derive(Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Print the profile as a TOML profile file (loadable with --profile).
    #[arg(long, conflicts_with = "json")]
    toml: bool,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["op", "model"])))]
pub struct ExplainArgs {
    /// Operator name as registered (e.g. silu, rms_norm, matmul).
    #[arg(long)]
    op: Option<String>,
    /// Model whose decoder layer to plan: a built-in name (llama-7b,
    /// smollm2-135m, llama-70b, tiny) or a model file.
    #[arg(long)]
    model: Option<String>,
    /// Tokens processed at once (prefill length; 1 = decode-sized GEMVs).
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Number of decoder layers in the planned graph.
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Plan every node as its own group (what `gllm run --no-fusion` runs).
    #[arg(long)]
    no_fusion: bool,
    #[command(flatten)]
    profile: ProfileArgs,
}

fn main() -> Result<()> {
    // Die quietly on a closed pipe (`gllm explain … | head`) like other Unix
    // tools, instead of panicking inside `println!`.
    // SAFETY: called first in main, before any other thread exists; restores
    // the default disposition of a signal Rust's runtime set to "ignore".
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if matches!(cli.command, Command::Run(_) | Command::Chat(_) | Command::Bench(_) | Command::Perplexity(_))
    {
        // One engine on this thread drives every fan-out: keep it on the
        // core the pool left free, where the scheduler cannot move it onto
        // a parked worker's CPU (`serve`'s slots are several threads).
        gllm_kernels::runtime::dispatch::pin_caller();
    }
    // A misspelt kernel choice is an error, not a silent fallback.
    gllm_kernels::codegen::quant_gemv::QuantKernelIsa::from_env()?;
    match cli.command {
        Command::Run(args) => model_cmds::run(&args),
        Command::Chat(args) => model_cmds::chat(&args),
        Command::Bench(args) => model_cmds::bench(&args),
        Command::Perplexity(args) => model_cmds::perplexity(&args),
        Command::Serve(args) => model_cmds::serve(&args),
        Command::Demo(args) => commands::demo(&args),
        Command::TestOps(args) => commands::test_ops(&args),
        Command::Device(args) => commands::device(&args),
        Command::Explain(args) => commands::explain(&args),
    }
}
