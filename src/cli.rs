//! Command-line interface.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Heading of the flags every subcommand accepts. A named heading is printed after the default
/// "Options", so each subcommand's help lists its own options first.
const GLOBAL: &str = "Global options";

#[derive(Debug, Parser)]
#[command(
    name = "influence",
    version,
    about = "A terminal workbench for local LLMs: search the Hub, download, chat, serve.",
    long_about = "A terminal workbench for local LLMs.\n\nWith no subcommand, opens the full-screen app. Subcommands script the same features."
)]
pub struct Cli {
    /// Config file to use instead of the default location.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log level for the log file (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Colour theme (dark, light, high-contrast, or a file in the config's themes/ folder).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "NAME")]
    pub theme: Option<String>,
    /// Hub endpoint (mirrors work); overrides HF_ENDPOINT.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Inference threads (default: one per core).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "N")]
    pub threads: Option<usize>,
    /// Where models run: auto (a GPU when this build has one and it answers), cpu, cuda,
    /// cuda:N or metal; overrides INFLUENCE_DEVICE and engine.device.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DEVICE")]
    pub device: Option<String>,
    /// GPU number for --device cuda or metal (or auto); the same as cuda:N.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "N")]
    pub device_index: Option<usize>,
    /// Layers to run on the GPU (llama.cpp's -ngl); the CPU runs the rest. Default: all when
    /// the model fits, else as many as fit. Overrides INFLUENCE_GPU_LAYERS and engine.gpu_layers.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "N")]
    pub gpu_layers: Option<usize>,
    /// Run the OpenAI/Ollama-compatible API server without the TUI (logs also go to stderr).
    #[arg(long)]
    pub serve: bool,
    /// Address the server listens on (default 127.0.0.1).
    #[arg(long, value_name = "H")]
    pub host: Option<String>,
    /// Port the server listens on (default 11435).
    #[arg(long, value_name = "P")]
    pub port: Option<u16>,
    /// Model to load: a library name (org/name, org/name:QUANT) or a path. Opens the TUI in the
    /// chat with it; with --serve, the default model.
    #[arg(long, value_name = "M")]
    pub model: Option<String>,
    /// API key clients must send (Authorization: Bearer or x-api-key); overrides INFLUENCE_API_KEY.
    #[arg(long, value_name = "K")]
    pub api_key: Option<String>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Search the Hugging Face Hub (or the mirror in HF_ENDPOINT).
    Search(crate::commands::search::SearchArgs),
    /// Download a model into the Hugging Face cache: one GGUF quant, or a safetensors set.
    Pull(crate::commands::pull::PullArgs),
    /// List local models: our store, the HF cache, other apps' stores and imported paths.
    List(crate::commands::list::ListArgs),
    /// Show everything known about one local model.
    Show(crate::commands::show::ShowArgs),
    /// Check a model's files against their recorded hashes.
    Verify(crate::commands::verify::VerifyArgs),
    /// Delete a model (lists exactly what will be removed first).
    Rm(crate::commands::rm::RmArgs),
    /// Give a model a second name (nothing is copied); `rm NAME` removes the name only.
    Cp(crate::commands::cp::CpArgs),
    /// Add a .gguf file or a model folder to the library, by reference (nothing is copied).
    Import(crate::commands::import::ImportArgs),
    /// Generate text with a model, streamed to stdout (chat template applied unless --raw).
    Run(crate::commands::run::RunArgs),
    /// Print one JSON array of floats per input text, one per line.
    Embed(crate::commands::embed::EmbedArgs),
    /// Measure prompt and generation speed, time to first token and load time.
    Bench(crate::commands::bench::BenchArgs),
    /// Show the models loaded in the running servers (--serve and the app's) on this machine.
    Ps(crate::commands::ps::PsArgs),
    /// Print the effective configuration and where each value came from.
    Config,
}

impl Cli {
    pub fn flag_overrides(&self) -> crate::config::FlagOverrides {
        crate::config::FlagOverrides {
            theme: self.theme.clone(),
            log_level: self.log_level.clone(),
            threads: self.threads,
            device: self.device.clone(),
            device_index: self.device_index,
            gpu_layers: self.gpu_layers,
            endpoint: self.endpoint.clone(),
            host: self.host.clone(),
            port: self.port,
            api_key: self.api_key.clone(),
        }
    }
}
