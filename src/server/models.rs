//! Which model a request means, and what the listings show.
//!
//! A request names a library model by name ([`Library::resolve_name`]: our store, the HF cache,
//! imports, other apps' stores, configured folders, and a `--model PATH` added for this run), or
//! nothing / [`DEFAULT_ALIAS`] when the server has a default model. A path is refused with 404,
//! whether or not the file exists, unless `server.allow_paths` is on.
//!
//! [`Library::resolve_name`]: crate::library::Library::resolve_name

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::library::{human, FileHash, Format, LibraryError, Model, ModelKind};

use super::error::{ApiError, Dialect};
use super::ServerCtx;

/// The name that always means the server's default model (`--model`).
pub const DEFAULT_ALIAS: &str = "default";

/// A model a request can use.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The name clients see in listings and get back in answers.
    pub name: String,
    /// What the engine loads.
    pub path: PathBuf,
    /// The library's record; `None` for a path outside the library.
    pub model: Option<Model>,
    /// What the engine reported when it loaded this model (for paths outside the library).
    pub engine: Option<crate::engine::ModelInfo>,
}

impl ModelEntry {
    fn loose(path: &str, engine: Option<crate::engine::ModelInfo>) -> Self {
        ModelEntry {
            name: path.to_string(),
            path: PathBuf::from(path),
            model: None,
            engine,
        }
    }

    pub fn is_embedding(&self) -> bool {
        match (&self.model, &self.engine) {
            (Some(m), _) => m.kind == ModelKind::Embedding,
            (None, Some(info)) => info.kind == crate::engine::ModelKind::Embed,
            (None, None) => self.path.is_dir(),
        }
    }

    pub fn size(&self) -> u64 {
        match &self.model {
            Some(m) => m.size_bytes,
            None => disk_size(&self.path),
        }
    }

    pub fn modified(&self) -> Option<SystemTime> {
        match &self.model {
            Some(m) => m.modified,
            None => std::fs::metadata(&self.path)
                .and_then(|m| m.modified())
                .ok(),
        }
    }

    pub fn modified_rfc3339(&self) -> String {
        human::time(self.modified()).unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
    }

    pub fn format(&self) -> &'static str {
        match &self.model {
            Some(m) => m.format.label(),
            None if self.path.is_dir() => Format::Safetensors.label(),
            None => Format::Gguf.label(),
        }
    }

    pub fn arch(&self) -> String {
        self.model
            .as_ref()
            .and_then(|m| m.info.architecture.clone())
            .or_else(|| self.engine.as_ref().map(|i| i.arch.clone()))
            .unwrap_or_default()
    }

    pub fn quant(&self) -> String {
        self.model
            .as_ref()
            .and_then(|m| m.info.quant.clone())
            .or_else(|| self.engine.as_ref().map(|i| i.quant.clone()))
            .unwrap_or_default()
    }

    pub fn parameters(&self) -> Option<u64> {
        self.model
            .as_ref()
            .and_then(|m| m.info.parameters)
            .or_else(|| self.engine.as_ref().map(|i| i.n_params))
    }

    pub fn context_length(&self) -> Option<u64> {
        self.model
            .as_ref()
            .and_then(|m| m.info.context_length)
            .or_else(|| self.engine.as_ref().map(|i| i.context_length as u64))
    }

    /// The sha256 of the main file when the store recorded one.
    pub fn digest(&self) -> String {
        self.model
            .as_ref()
            .and_then(|m| {
                m.files.iter().find_map(|f| match &f.hash {
                    Some(FileHash::Sha256(h)) => Some(h.clone()),
                    _ => None,
                })
            })
            .unwrap_or_default()
    }

    pub fn created_unix(&self) -> u64 {
        self.modified()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    }
}

fn disk_size(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m.len(),
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0),
        _ => 0,
    }
}

impl ServerCtx {
    /// The model a request names; 404 in the dialect's shape when there is none.
    pub fn resolve_model(
        &self,
        requested: Option<&str>,
        dialect: Dialect,
    ) -> Result<ModelEntry, ApiError> {
        let requested = requested.map(str::trim).filter(|s| !s.is_empty());
        let default = self.options().default_model.as_deref();
        let query =
            match (requested, default) {
                (None, Some(d)) => d,
                (Some(r), Some(d)) if r == DEFAULT_ALIAS => d,
                (Some(r), _) => r,
                (None, None) => return Err(ApiError::bad_field(
                    dialect,
                    "model",
                    "model is required (the server has no default model; start it with --model)",
                )),
            };
        let shown = requested.unwrap_or(query);
        match self.lookup(query) {
            Ok(entry) => Ok(entry),
            Err(LookupError::Ambiguous(msg)) => Err(ApiError::bad_field(dialect, "model", msg)),
            Err(LookupError::NotFound(detail)) => {
                Err(ApiError::model_not_found(dialect, shown, detail))
            }
        }
    }

    fn lookup(&self, query: &str) -> Result<ModelEntry, LookupError> {
        let allow_paths = self.options().allow_paths;
        if !allow_paths && crate::library::looks_like_path(query) {
            // The same answer whether or not the file exists: nothing about it leaks.
            return Err(LookupError::NotFound(Some(
                "the API serves library models by name (see GET /v1/models or /api/tags); paths are refused unless server.allow_paths = true".into(),
            )));
        }
        let lib = self.library().read().unwrap_or_else(|p| p.into_inner());
        let find = |q: &str| {
            if allow_paths {
                lib.resolve(q)
            } else {
                lib.resolve_name(q)
            }
        };
        let mut attempt = find(query);
        // Ollama clients add the default tag.
        if attempt.is_err() {
            if let Some(stripped) = query.strip_suffix(":latest") {
                if let Ok(m) = find(stripped) {
                    attempt = Ok(m);
                }
            }
        }
        match attempt {
            Ok(m) => Ok(ModelEntry {
                // A client that asked by a second name (`influence cp`) sees that name back.
                name: lib
                    .alias(query)
                    .map_or_else(|| m.name.clone(), |a| a.name.clone()),
                path: m.load_path.clone(),
                model: Some(m.clone()),
                engine: None,
            }),
            Err(e @ LibraryError::Ambiguous { .. }) => Err(LookupError::Ambiguous(e.to_string())),
            Err(_)
                if allow_paths && Path::new(query).is_absolute() && Path::new(query).exists() =>
            {
                Ok(ModelEntry::loose(query, self.seen_loaded(query)))
            }
            Err(LibraryError::NotFound { suggestions, .. }) if !suggestions.is_empty() => Err(
                LookupError::NotFound(Some(format!("did you mean {}?", suggestions.join(", ")))),
            ),
            Err(_) => Err(LookupError::NotFound(Some(
                "see GET /v1/models or /api/tags for the models this server has".into(),
            ))),
        }
    }

    /// Every model clients can name: the library, plus the default model when it is a path
    /// outside the library.
    pub fn list_models(&self) -> Vec<ModelEntry> {
        let mut out: Vec<ModelEntry> = {
            let lib = self.library().read().unwrap_or_else(|p| p.into_inner());
            lib.models()
                .iter()
                .filter(|m| m.broken.is_none())
                .map(|m| ModelEntry {
                    name: m.name.clone(),
                    path: m.load_path.clone(),
                    model: Some(m.clone()),
                    engine: None,
                })
                .collect()
        };
        if let Some(d) = self.options().default_model.as_deref() {
            if let Ok(entry) = self.lookup(d) {
                if !out.iter().any(|e| e.path == entry.path) {
                    out.insert(0, entry);
                }
            }
        }
        out
    }

    /// The name to show for a loaded model's engine id (its path).
    pub fn name_for_path(&self, id: &str) -> String {
        self.list_models()
            .into_iter()
            .find(|e| e.path.to_string_lossy() == id)
            .map_or_else(|| id.to_string(), |e| e.name)
    }
}

enum LookupError {
    Ambiguous(String),
    NotFound(Option<String>),
}
