//! `influence embed --model PATH TEXT...`: one JSON array (the L2-normalised embedding) per
//! input text, one per line, in input order.

use std::io::Write;
use std::path::PathBuf;

use crate::commands::Context;
use crate::engine::{configure_threads, wait, EngineHandle, EngineOptions};

#[derive(Debug, Clone, clap::Args)]
pub struct EmbedArgs {
    /// Embedding model folder (config.json, model.safetensors, tokenizer.json).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Texts to embed.
    #[arg(value_name = "TEXT", required = true)]
    pub texts: Vec<String>,
}

pub fn run(args: &EmbedArgs, ctx: &Context) -> anyhow::Result<()> {
    let threads = configure_threads(ctx.threads, true);
    let engine = EngineHandle::spawn(EngineOptions {
        threads,
        max_loaded: 1,
        device: ctx.device,
        ..EngineOptions::default()
    });
    if let Some(e) = &engine.device().error {
        anyhow::bail!("{e}");
    }
    let vectors = wait(engine.embed(args.model.clone(), args.texts.clone()))?;
    let mut out = std::io::stdout().lock();
    for v in vectors {
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    }
    Ok(())
}
