//! `influence import PATH`: add a `.gguf` file or a model folder to the library by reference.

use std::path::PathBuf;

use crate::commands::Context;
use crate::library::{import, Library};

#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// A `.gguf` file, or a folder with `config.json` and `.safetensors` files (or `.gguf` files).
    pub path: PathBuf,
}

pub fn run(args: ImportArgs, ctx: &Context) -> anyhow::Result<()> {
    let roots = ctx.library_roots();
    let record = import(&roots, &args.path)?;
    let library = Library::scan(&roots);
    let name = library
        .resolve(&record.path.display().to_string())
        .map(|m| m.name.clone())
        .unwrap_or_else(|_| record.path.display().to_string());
    println!(
        "Imported {} as {name} (by reference: nothing was copied; moving or deleting the original removes it from the library).",
        record.path.display()
    );
    Ok(())
}
