//! `influence show MODEL [--json]`: everything the library knows about one model.

use std::fmt::Write as _;

use crate::commands::Context;
use crate::library::{human, Library, Model, ModelKind, Runnable, DEFAULT_CONTEXT};

#[derive(Debug, Clone, clap::Args)]
pub struct ShowArgs {
    /// A name (`org/name`, `org/name:QUANT`, a unique suffix) or a path.
    pub model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ShowArgs, ctx: &Context) -> anyhow::Result<()> {
    let library = Library::scan(&ctx.library_roots());
    let model = library.resolve(&args.model)?;
    let device = crate::engine::device::select(ctx.device)?;
    let fit = device_fit(&device, model.memory_estimate);
    if args.json {
        let mut v = serde_json::to_value(model)?;
        v["device"] = serde_json::json!({
            "name": device.label,
            "reason": device.reason,
            "free_bytes": device.memory().map(|m| m.0),
            "fits": fit.as_ref().map(|f| f.0),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render_details(model));
        let line = match &fit {
            Some((_, text)) => format!("{} ({}): {text}", device.label, device.reason),
            None => format!("{} ({})", device.label, device.reason),
        };
        println!("{:<14} {line}", "Device:");
    }
    Ok(())
}

/// Whether the model's memory estimate fits the device's free memory (the GPU's own for a
/// GPU), and the sentence that says so.
fn device_fit(
    device: &crate::engine::device::DeviceChoice,
    estimate: Option<u64>,
) -> Option<(bool, String)> {
    let need = estimate?;
    let (free, _) = device.memory()?;
    let place = if device.is_gpu() {
        "GPU memory free"
    } else {
        "memory available"
    };
    Some(if need <= free {
        (
            true,
            format!(
                "fits: needs about {}, {} {place}",
                human::bytes(need),
                human::bytes(free)
            ),
        )
    } else {
        (
            false,
            format!(
                "does not fit: needs about {}, only {} {place}{}",
                human::bytes(need),
                human::bytes(free),
                if device.is_gpu() {
                    "; with engine.gpu_layers = \"auto\" its first layers run on the GPU and the \
                     rest on the CPU"
                } else {
                    ""
                }
            ),
        )
    })
}

/// The `show` text: one `key: value` line per fact, then the files.
pub fn render_details(m: &Model) -> String {
    let mut s = String::new();
    let unknown = || "unknown".to_string();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(s, "{:<14} {v}", format!("{k}:"));
    };
    kv("Name", m.name.clone());
    if let Some(d) = &m.info.display_name {
        kv("Title", d.clone());
    }
    kv("Source", m.source.label().into());
    if let Some(rev) = &m.revision {
        kv("Revision", rev.clone());
    }
    kv("Format", m.format.label().into());
    kv(
        "Kind",
        match m.kind {
            ModelKind::Generate => "text generation".into(),
            ModelKind::Embedding => "embeddings".into(),
        },
    );
    kv(
        "Architecture",
        m.info.architecture.clone().unwrap_or_else(unknown),
    );
    kv(
        "Parameters",
        m.info.parameters.map_or_else(unknown, |p| {
            format!("{} ({})", human::params(p), thousands(p))
        }),
    );
    if let (Some(n), Some(used)) = (m.info.experts, m.info.experts_used) {
        let active = m.info.active_parameters.map_or_else(String::new, |a| {
            format!(", {} active per token", human::params(a))
        });
        kv("Experts", format!("{n}, {used} per token{active}"));
    }
    kv("Quant", m.info.quant.clone().unwrap_or_else(unknown));
    if !m.info.tensor_types.is_empty() {
        let types: Vec<String> = m
            .info
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{t} x{n}"))
            .collect();
        kv(
            "Tensors",
            format!("{} ({})", m.info.tensor_count, types.join(", ")),
        );
    }
    kv(
        "Context",
        m.info
            .context_length
            .map_or_else(unknown, |c| format!("{c} tokens")),
    );
    match (
        m.info.layers,
        m.info.kv_heads,
        m.info.head_dim,
        &m.info.layer_kind,
    ) {
        // A hybrid: its mix, and the shape of its attention layers' KV cache.
        (Some(l), Some(h), Some(d), Some(kind)) => {
            kv(
                "Layers",
                format!("{l}: {kind} (KV heads {h}, head dim {d})"),
            );
        }
        (Some(l), Some(h), Some(d), None) => {
            kv("Layers", format!("{l} (KV heads {h}, head dim {d})"));
        }
        (Some(l), _, _, Some(kind)) => kv("Layers", format!("{l} {kind}, no KV cache")),
        _ => {}
    }
    if let Some(b) = m.info.state_bytes {
        kv(
            "State",
            format!(
                "{} per sequence (each turn checkpoint as much again)",
                human::bytes(b)
            ),
        );
    }
    kv(
        "Chat template",
        if m.info.chat_template { "yes" } else { "no" }.into(),
    );
    kv(
        "Size",
        format!("{} in {} files", human::bytes(m.size_bytes), m.file_count()),
    );
    if let Some(t) = human::time(m.modified) {
        kv("Modified", t);
    }
    kv(
        "Runnable",
        match &m.runnable {
            Runnable::Yes => "yes".into(),
            Runnable::SlowPath { types } => format!(
                "yes, slow path: {} has no fast kernel in the engine (a Q4_K_M, Q8_0 or Q4_0 file decodes faster)",
                types.join(", ")
            ),
            Runnable::No { reason } => format!("no: {reason}"),
        },
    );
    if let Some(mem) = m.memory_estimate {
        let ctx = m
            .info
            .context_length
            .map_or(DEFAULT_CONTEXT, |c| c.min(DEFAULT_CONTEXT));
        kv(
            "Memory",
            format!("about {} with a {ctx}-token context", human::bytes(mem)),
        );
    }
    if let Some(b) = &m.broken {
        kv("Broken", b.clone());
    }
    kv("Load path", m.load_path.display().to_string());
    let _ = writeln!(s, "Files:");
    for f in &m.files {
        let state = if f.exists { "" } else { "  (missing)" };
        let _ = writeln!(
            s,
            "  {:>10}  {}{state}",
            human::bytes(f.size),
            f.path.display()
        );
    }
    s
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
