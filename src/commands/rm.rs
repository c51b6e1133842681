//! `influence rm MODEL [--yes]`: show exactly what will be deleted, confirm, delete.

use std::io::{BufRead, IsTerminal, Write};

use crate::commands::Context;
use crate::library::{human, remove_alias, DeletePlan, Library};

#[derive(Debug, Clone, clap::Args)]
pub struct RmArgs {
    /// A name (`org/name`, `org/name:QUANT`, a unique suffix), a path, or an alias from `cp`
    /// (which removes only the alias).
    pub model: String,
    /// Delete without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

pub fn run(args: RmArgs, ctx: &Context) -> anyhow::Result<()> {
    let roots = ctx.library_roots();
    let library = Library::scan(&roots);
    // An alias goes on its own: the model keeps its files and other names.
    if let Some(alias) = library.alias(&args.model) {
        let name = alias.name.clone();
        remove_alias(&roots, &name)?;
        println!(
            "Removed the name {name} (the model {} is kept).",
            alias.target
        );
        return Ok(());
    }
    let model = library.resolve(&args.model)?;
    let plan = library.delete_plan(model)?;
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    let mut out = std::io::stdout();
    if confirm(&plan, args.yes, interactive, &mut stdin.lock(), &mut out)? {
        plan.execute()?;
        writeln!(out, "Deleted {}.", plan.model)?;
    } else {
        writeln!(out, "Nothing deleted.")?;
    }
    Ok(())
}

/// The plan as printed before asking.
pub fn render_plan(plan: &DeletePlan) -> String {
    let mut s = format!("Deleting {} will:\n", plan.model);
    for r in &plan.removals {
        s.push_str(&format!("  {r}\n"));
    }
    for kept in &plan.kept_shared {
        s.push_str(&format!(
            "  keep          {} (another snapshot uses it)\n",
            kept.display()
        ));
    }
    if plan.bytes_freed > 0 {
        s.push_str(&format!("Frees {}.\n", human::bytes(plan.bytes_freed)));
    }
    s
}

/// Prints the plan and decides whether to go ahead: `--yes` goes, a terminal is asked y/N, and
/// anything else (a script, a pipe) is refused so nothing is deleted by accident.
pub fn confirm(
    plan: &DeletePlan,
    yes: bool,
    interactive: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    write!(out, "{}", render_plan(plan))?;
    if yes {
        return Ok(true);
    }
    if !interactive {
        anyhow::bail!("refusing to delete without confirmation: stdin is not a terminal; run again with --yes");
    }
    write!(out, "Delete? [y/N] ")?;
    out.flush()?;
    let mut answer = String::new();
    input.read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}
