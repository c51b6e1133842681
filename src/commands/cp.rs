//! `influence cp SOURCE NAME`: give a model a second name, as `ollama cp` does. Nothing is
//! copied; the name resolves wherever a model name does (the CLI, the chat's `/model`, the API).

use crate::commands::Context;
use crate::library::{add_alias, Library};

#[derive(Debug, Clone, clap::Args)]
pub struct CpArgs {
    /// The model: a name (`org/name`, `org/name:QUANT`, a unique suffix), an alias or a path.
    pub source: String,
    /// The new name. An alias of that name is re-pointed; `influence rm NAME` removes it.
    pub name: String,
}

pub fn run(args: CpArgs, ctx: &Context) -> anyhow::Result<()> {
    let library = Library::scan(&ctx.library_roots());
    let alias = add_alias(&library, &args.source, &args.name)?;
    println!(
        "{} is now another name for {} (nothing was copied).",
        alias.name, alias.target
    );
    Ok(())
}
