//! `influence list [--json]`: every local model in one table.

use crate::commands::Context;
use crate::library::{human, Library, Model, ModelKind};

#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Print JSON (one array of models) instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ListArgs, ctx: &Context) -> anyhow::Result<()> {
    let library = Library::scan(&ctx.library_roots());
    for w in library.warnings() {
        eprintln!("warning: {w}");
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(library.models())?);
    } else {
        print!("{}", render_table(library.models()));
        for a in library.aliases() {
            let target = library
                .resolve(&a.name)
                .map_or_else(|_| format!("{} (missing)", a.target), |m| m.name.clone());
            println!("alias   {} → {target}", a.name);
        }
    }
    Ok(())
}

/// The `list` table, followed by one line per broken or unrunnable model saying why.
pub fn render_table(models: &[Model]) -> String {
    if models.is_empty() {
        return "No models found. Download one with `influence pull ORG/NAME`, or add a file or folder with `influence import PATH`.\n".to_string();
    }
    let header = [
        "NAME", "ARCH", "KIND", "PARAMS", "QUANT", "CONTEXT", "SIZE", "RUNNABLE", "SOURCE",
    ];
    let rows: Vec<[String; 9]> = models
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.info.architecture.clone().unwrap_or_else(|| "?".into()),
                match m.kind {
                    ModelKind::Generate => "chat".into(),
                    ModelKind::Embedding => "embed".into(),
                },
                m.info.parameters.map_or("?".into(), human::params),
                m.info.quant.clone().unwrap_or_else(|| "?".into()),
                m.info.context_length.map_or("?".into(), |c| c.to_string()),
                human::bytes(m.size_bytes),
                if m.broken.is_some() {
                    "broken".into()
                } else {
                    m.runnable.short().into()
                },
                m.source.label().into(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    // Numbers read best right-aligned.
    let right = [false, false, false, true, false, true, true, false, false];
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(cell);
            } else {
                s.push_str(cell);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(s.trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in &rows {
        line(row);
    }
    let total: u64 = models.iter().map(|m| m.size_bytes).sum();
    out.push_str(&format!(
        "{} model{}, {} on disk\n",
        models.len(),
        if models.len() == 1 { "" } else { "s" },
        human::bytes(total)
    ));
    let mut notes = String::new();
    for m in models {
        if let Some(reason) = &m.broken {
            notes.push_str(&format!("broken  {}: {reason}\n", m.name));
        } else if let crate::library::Runnable::No { reason } = &m.runnable {
            notes.push_str(&format!("no      {}: {reason}\n", m.name));
        }
    }
    if models
        .iter()
        .any(|m| matches!(m.runnable, crate::library::Runnable::SlowPath { .. }))
    {
        notes.push_str("slow    = runs, but its quant type (Q4_1/Q5_0/Q5_1) has no fast kernel in the engine; a Q4_K_M, Q8_0 or Q4_0 file of the same model decodes faster\n");
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    out
}
