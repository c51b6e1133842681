//! Writes a seeded random-weight GGUF shaped like a real model, for benchmarks and device
//! checks on machines that carry no model files:
//!
//! ```text
//! cargo run --release --example gen_gguf -- --preset 8b --quant q4_k_m -o llama-8b.gguf
//! gen_gguf --list
//! ```
//!
//! The same arguments and seed always give the same bytes. The weights are random (valid
//! quantized blocks), the vocabulary synthetic unless `--tokenizer-from` copies a real one.

#[path = "../tests/support/synth.rs"]
mod synth;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use synth::{Mix, Plan, Spec};

#[derive(Parser, Debug)]
#[command(
    name = "gen_gguf",
    about = "Write a seeded random-weight GGUF of a model family, shape and quant mix",
    after_help = "Presets give the shape; each shape flag overrides one field. The file is a \
                  pure function of the arguments: the same ones give the same bytes."
)]
struct Args {
    /// Output file.
    #[arg(short, long, value_name = "FILE", required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Model family (`general.architecture`).
    #[arg(long, default_value = "llama")]
    family: String,
    /// Shape preset of the family (see --list).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Quant mix, as llama-quantize names them: q4_k_m mirrors its per-tensor choices.
    #[arg(long, default_value = "q4_k_m")]
    quant: String,
    /// Seed of every random weight.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hidden size (embedding length).
    #[arg(long, value_name = "N")]
    hidden: Option<usize>,
    /// Number of layers.
    #[arg(long, value_name = "N")]
    layers: Option<usize>,
    /// Query heads.
    #[arg(long, value_name = "N")]
    heads: Option<usize>,
    /// Key/value heads (grouped-query attention).
    #[arg(long, value_name = "N")]
    kv_heads: Option<usize>,
    /// Head dimension (default: hidden / heads when --hidden or --heads is given).
    #[arg(long, value_name = "N")]
    head_dim: Option<usize>,
    /// FFN inner size.
    #[arg(long, value_name = "N")]
    ffn: Option<usize>,
    /// Vocabulary size (synthetic vocabularies are padded with filler words to it).
    #[arg(long, value_name = "N")]
    vocab: Option<usize>,
    /// Context length written to the metadata.
    #[arg(long, value_name = "N")]
    context: Option<usize>,
    /// RoPE base frequency.
    #[arg(long, value_name = "F")]
    rope_base: Option<f32>,
    /// Share the LM head with the token embeddings.
    #[arg(long, conflicts_with = "untied")]
    tied: bool,
    /// Write a separate LM head (`output.weight`).
    #[arg(long)]
    untied: bool,
    /// Copy every `tokenizer.*` key from this GGUF (the vocabulary size follows it).
    #[arg(long, value_name = "FILE.gguf")]
    tokenizer_from: Option<PathBuf>,
    /// How far the greedy token's expected logit stands above the others' expected best, as a
    /// multiple (higher: safer greedy agreement, layers matter less).
    #[arg(long, default_value_t = synth::DEFAULT_MARGIN, value_name = "F")]
    margin: f32,
    /// Generator threads (default: all cores).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    /// Print the plan (tensor types and sizes) without writing a file.
    #[arg(long)]
    dry_run: bool,
    /// List families, presets and quant mixes.
    #[arg(long)]
    list: bool,
}

fn list() {
    for f in synth::FAMILIES {
        println!("family {}:", f.arch);
        for (name, s) in f.presets {
            println!(
                "  preset {name:<5} hidden {} layers {} heads {}/{} head-dim {} ffn {} vocab {} context {}{}",
                s.hidden,
                s.layers,
                s.heads,
                s.kv_heads,
                s.head_dim,
                s.ffn,
                s.vocab,
                s.context,
                if s.tied { ", tied embeddings" } else { "" }
            );
        }
    }
    println!(
        "quant mixes: {}",
        Mix::ALL.map(|m| m.name().to_lowercase()).join(", ")
    );
}

fn spec(a: &Args) -> Result<Spec, String> {
    let family = synth::family(&a.family)?;
    let mix = Mix::parse(&a.quant)?;
    let mut spec = Spec::preset(family, &a.preset, mix, a.seed)?;
    let s = &mut spec.shape;
    if let Some(v) = a.hidden {
        s.hidden = v;
    }
    if let Some(v) = a.heads {
        s.heads = v;
    }
    if a.hidden.is_some() || a.heads.is_some() {
        s.head_dim = s.hidden.checked_div(s.heads).unwrap_or(0);
    }
    for (field, v) in [
        (&mut s.layers, a.layers),
        (&mut s.kv_heads, a.kv_heads),
        (&mut s.head_dim, a.head_dim),
        (&mut s.ffn, a.ffn),
        (&mut s.vocab, a.vocab),
        (&mut s.context, a.context),
    ] {
        if let Some(v) = v {
            *field = v;
        }
    }
    if let Some(v) = a.rope_base {
        s.rope_base = v;
    }
    if a.tied {
        s.tied = true;
    }
    if a.untied {
        s.tied = false;
    }
    if let Some(p) = &a.tokenizer_from {
        let v = synth::vocabulary_from_gguf(p)?;
        let n = synth::vocabulary_len(&v);
        if let Some(asked) = a.vocab.filter(|&asked| asked != n) {
            return Err(format!(
                "--vocab {asked} contradicts --tokenizer-from {}, which has {n} tokens",
                p.display()
            ));
        }
        spec.vocabulary = Some(v);
    }
    spec.margin = a.margin;
    Ok(spec)
}

fn main() -> ExitCode {
    let a = Args::parse();
    if a.list {
        list();
        return ExitCode::SUCCESS;
    }
    let plan = match spec(&a).and_then(Plan::new) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gen_gguf: {e}");
            return ExitCode::from(2);
        }
    };
    let sh = plan.spec.shape;
    let gb = |b: u64| b as f64 / 1e9;
    println!(
        "{} {} {} seed {}: hidden {} layers {} heads {}/{} head-dim {} ffn {} vocab {}{}; {} tensors, {:.3} GB",
        plan.spec.family.arch,
        plan.spec.preset,
        plan.spec.mix.name(),
        plan.spec.seed,
        sh.hidden,
        sh.layers,
        sh.heads,
        sh.kv_heads,
        sh.head_dim,
        sh.ffn,
        sh.vocab,
        if sh.tied { ", tied" } else { "" },
        plan.tensors.len(),
        gb(plan.file_bytes()),
    );
    println!("  {}", plan.type_summary());
    if !plan.scales.margin_met {
        eprintln!(
            "gen_gguf: warning: hidden {} is too narrow for margin {} over {} tokens; greedy \
             ties between implementations are possible (use a wider --hidden or a lower --margin)",
            sh.hidden, plan.spec.margin, sh.vocab
        );
    }
    if a.dry_run {
        for t in &plan.tensors {
            println!("  {:<28} {:>5} {:?}", t.name, t.qtype.name(), t.dims);
        }
        return ExitCode::SUCCESS;
    }
    let out = a.out.as_ref().expect("clap requires --out");
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    match synth::write_file(&plan, out, threads) {
        Ok(w) => {
            println!(
                "wrote {} ({:.3} GB) in {:.1} s ({:.2} GB/s, {threads} threads)",
                out.display(),
                gb(w.bytes),
                w.seconds,
                gb(w.bytes) / w.seconds.max(1e-9)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen_gguf: cannot write {}: {e}", out.display());
            ExitCode::FAILURE
        }
    }
}
