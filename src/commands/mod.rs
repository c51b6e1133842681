//! Scripted subcommands (`influence search|pull|list|show|verify|rm|cp|import|run|embed|bench|ps|config`).
//!
//! Each subcommand lives in its own file with its clap `Args` and a `run` function. They share the
//! resolved [`Context`] built from the configuration by `main`.

pub mod bench;
pub mod cp;
pub mod embed;
pub mod import;
pub mod list;
pub mod ps;
pub mod pull;
pub mod rm;
pub mod run;
pub mod search;
pub mod show;
pub mod verify;

use std::path::PathBuf;

/// What every subcommand may need from the resolved configuration.
#[derive(Debug, Clone)]
pub struct Context {
    /// `$HF_HOME` (the Hugging Face cache lives in `hf_home/hub`).
    pub hf_home: PathBuf,
    /// Influence's own data folder (queue, conversations, logs).
    pub data_dir: PathBuf,
    /// Hub base URL, e.g. `https://huggingface.co` or a mirror.
    pub endpoint: String,
    /// Hub token, if any.
    pub token: Option<String>,
    /// Inference threads.
    pub threads: usize,
    /// The device the engine is asked for.
    pub device: crate::engine::device::DeviceRequest,
    /// Extra folders the user asked the library to scan.
    pub model_dirs: Vec<PathBuf>,
}

/// A model argument: an existing path as is, otherwise a library name (`org/name`,
/// `org/name:QUANT`, a unique suffix) resolved to the file or folder the engine loads.
pub fn resolve_model(arg: &std::path::Path, ctx: &Context) -> anyhow::Result<PathBuf> {
    if arg.exists() {
        return Ok(arg.to_path_buf());
    }
    let name = arg.to_string_lossy();
    let lib = crate::library::Library::scan(&ctx.library_roots());
    Ok(lib.resolve(&name)?.load_path.clone())
}

impl Context {
    /// Where the library looks for models, from this context's folders.
    pub fn library_roots(&self) -> crate::library::LibraryRoots {
        crate::library::LibraryRoots::detect(&self.hf_home, &self.data_dir, &self.model_dirs)
    }

    /// The Hugging Face hub cache folder (`$HF_HOME/hub`).
    pub fn hub_cache(&self) -> PathBuf {
        self.hf_home.join("hub")
    }
}
