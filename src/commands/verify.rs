//! `influence verify MODEL`: re-hash a model's files against the hashes their store recorded.

use std::fmt::Write as _;
use std::io::IsTerminal;

use crate::commands::Context;
use crate::library::{human, verify, FileCheck, Library, VerifyReport};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// A name (`org/name`, `org/name:QUANT`, a unique suffix) or a path.
    pub model: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: VerifyArgs, ctx: &Context) -> anyhow::Result<()> {
    let library = Library::scan(&ctx.library_roots());
    let model = library.resolve(&args.model)?;
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let mut last = std::time::Instant::now();
    let report = verify(model, &mut |done, total| {
        // Hashing gigabytes takes a while: a progress line, a few times a second at most.
        if show_progress && (last.elapsed().as_millis() >= 250 || done == total) {
            last = std::time::Instant::now();
            let pct = (done * 100).checked_div(total).unwrap_or(100);
            eprint!(
                "\rverifying {}: {pct:>3}% ({} of {})",
                model.name,
                human::bytes(done),
                human::bytes(total)
            );
            if done == total {
                eprintln!();
            }
        }
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_report(&report));
    }
    if report.all_ok() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} failed verification: delete it with `influence rm {}` and download it again",
            report.model,
            report.model
        )
    }
}

/// One line per file (`ok`, `MISMATCH`, `missing`, `no hash`, `unreadable`), then a summary.
pub fn render_report(r: &VerifyReport) -> String {
    let mut s = String::new();
    for f in &r.files {
        let _ = match &f.check {
            FileCheck::Ok => writeln!(s, "ok          {}", f.path.display()),
            FileCheck::Mismatch { expected, actual } => writeln!(
                s,
                "MISMATCH    {} (expected {expected}, got {actual})",
                f.path.display()
            ),
            FileCheck::Missing => writeln!(s, "MISSING     {}", f.path.display()),
            FileCheck::NoRecordedHash => writeln!(
                s,
                "no hash     {} ({}; the store recorded no hash to compare with)",
                f.path.display(),
                human::bytes(f.size)
            ),
            FileCheck::Unreadable { error } => {
                writeln!(s, "UNREADABLE  {} ({error})", f.path.display())
            }
        };
    }
    let ok = r.count(|c| matches!(c, FileCheck::Ok));
    let bad = r.files.len() - ok - r.count(|c| matches!(c, FileCheck::NoRecordedHash));
    let _ = writeln!(
        s,
        "{}: {ok} verified, {bad} with problems, {} without a recorded hash",
        r.model,
        r.count(|c| matches!(c, FileCheck::NoRecordedHash))
    );
    s
}
