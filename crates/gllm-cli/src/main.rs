//! `gllm`: the command-line face of gllm-kernels. It parses arguments and
//! prints; every decision is made in the libraries.

mod commands;

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
    /// Run the main job on its built-in default: detect the device, analyse
    /// the registered scalar ops, JIT a kernel and check it against scalar code.
    Run(RunArgs),
    /// Print the device profile the compiler would use.
    Device(DeviceArgs),
    /// Show what the compiler learned about an operator (`--op`), or how it
    /// plans a model's decoder layer on a device (`--model`).
    Explain(ExplainArgs),
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
    /// Generate code for this ISA (avx2, avx512) instead of the best available.
    #[arg(long)]
    isa: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Elements for the demo kernel run.
    #[arg(long, default_value_t = 1 << 22)]
    elements: usize,
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
    /// Model whose decoder layer to plan (llama-7b, smollm2-135m, llama-70b).
    #[arg(long)]
    model: Option<String>,
    /// Tokens processed at once (prefill length; 1 = decode-sized GEMVs).
    #[arg(long, default_value_t = 128)]
    seq: usize,
    /// Number of decoder layers in the planned graph.
    #[arg(long, default_value_t = 1)]
    layers: usize,
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
    match cli.command {
        Command::Run(args) => commands::run(&args),
        Command::Device(args) => commands::device(&args),
        Command::Explain(args) => commands::explain(&args),
    }
}
