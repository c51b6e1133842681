//! Influence: a terminal workbench for local LLMs.
//!
//! Module map (see `README.md` and `docs/ARCHITECTURE.md` for the why):
//!
//! | module | what it does |
//! |---|---|
//! | `cli` | clap types for the binary |
//! | `commands` | scripted subcommands over the modules below |
//! | `config` | layered configuration, keymap and themes |
//! | `app` | `State`, `Msg`, the pure `update`, effects and the runners that carry them out |
//! | `tui` | terminal lifecycle and input events |
//! | `ui` | drawing: one module per pane |
//! | `engine` | inference on a dedicated thread (candle) |
//! | `hub` | Hugging Face Hub client |
//! | `downloads` | persistent download queue into the HF cache layout |
//! | `library` | local model inventory |
//! | `pytorch` | PyTorch `.bin` checkpoints: pickle allow-list, tensor index, loading via candle |
//! | `server` | OpenAI- and Ollama-compatible HTTP API |
//! | `markdown` | streaming markdown rendering with syntax highlighting |
//! | `conversations` | chat history, saved atomically |
//! | `remote` | OpenAI-compatible and Ollama chat backends (streaming) |
//! | `tuiapp` | start-up of the full-screen app and the event loop |
//! | `serve` | headless `--serve` |
//!
//! Each layer imports only the layers below it (`docs/ARCHITECTURE.md` §2.1, checked by
//! `tests/layers.rs`).

// candle's Metal backend is built only on macOS (Cargo.toml gates it by target), so a build with
// `--features metal` elsewhere would otherwise compile a CPU-only binary that cannot honour
// `--device metal`.
#[cfg(all(feature = "metal", not(target_os = "macos")))]
compile_error!(
    "the `metal` feature needs macOS (Apple GPUs); on Linux or Windows build with `--features cuda` for an NVIDIA GPU, or with no feature for the CPU"
);

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod conversations;
pub mod downloads;
pub mod engine;
pub mod fsutil;
pub mod hub;
pub mod library;
pub mod logging;
pub mod markdown;
pub mod procmem;
pub mod pytorch;
pub mod remote;
pub mod serve;
pub mod server;
pub mod tui;
pub mod tuiapp;
pub mod ui;
