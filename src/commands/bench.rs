//! `influence bench --model PATH [--prompt-tokens N] [--gen-tokens M] [--turn2-tokens K]
//! [--runs R] [--json]`: load time, prompt tokens/s, time to first token of a first and a second
//! chat turn, decode tokens/s (medians after a warm-up) and peak memory. Use the global `--threads` flag to compare thread counts; results on a busy
//! machine vary a lot, so record the load (`uptime`) next to the numbers.

use std::path::PathBuf;

use crate::commands::Context;
use crate::engine::bench::run_bench;
use crate::engine::configure_threads;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model file (.gguf).
    #[arg(long, value_name = "PATH")]
    pub model: PathBuf,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128, value_name = "N")]
    pub prompt_tokens: usize,
    /// Tokens to decode after the prompt.
    #[arg(long, default_value_t = 64, value_name = "M")]
    pub gen_tokens: usize,
    /// New tokens of the second turn, whose time to first token is measured with the first
    /// turn kept in the KV cache.
    #[arg(long = "turn2-tokens", default_value_t = 32, value_name = "K")]
    pub turn2_tokens: usize,
    /// Measured repetitions after one warm-up run; medians are reported.
    #[arg(long, default_value_t = 3, value_name = "R")]
    pub runs: usize,
    /// Print exactly one JSON line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &BenchArgs, ctx: &Context) -> anyhow::Result<()> {
    if args.runs == 0 {
        anyhow::bail!("--runs must be at least 1");
    }
    let threads = configure_threads(ctx.threads, true);
    let device = crate::engine::device::select(ctx.device)?;
    let r = run_bench(
        &args.model,
        args.prompt_tokens,
        args.gen_tokens,
        args.turn2_tokens,
        args.runs,
        threads,
        &device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!("model:        {}", args.model.display());
        println!("device:       {} ({})", r.device, device.reason);
        if let Some(n) = r.gpu_layers {
            println!("GPU layers:   {n} of {} (the CPU runs the rest)", r.layers);
        }
        println!("threads:      {}", r.threads);
        println!("KV cache:     {}", r.kv_cache);
        if let Some(k) = r.cpu_kernel {
            println!("CPU kernels:  Influence's own, {k}");
        }
        println!("load:         {:.0} ms", r.load_ms);
        println!(
            "prompt:       {:.1} tok/s ({} tokens)",
            r.prompt_tok_s, args.prompt_tokens
        );
        println!("first token:  {:.0} ms", r.ttft_ms);
        println!(
            "turn 2:       first token after {:.0} ms ({} new tokens, the rest cached)",
            r.ttft_turn2_ms, args.turn2_tokens
        );
        println!(
            "generation:   {:.1} tok/s ({} tokens)",
            r.gen_tok_s, args.gen_tokens
        );
        println!("peak memory:  {:.0} MiB", r.peak_rss_mib);
        if let Some(m) = r.gpu_mem_mib {
            println!("GPU memory:   {m:.0} MiB");
        }
        println!("runs:         {} (+1 warm-up), medians", args.runs);
    }
    Ok(())
}
