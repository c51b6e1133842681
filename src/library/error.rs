//! Errors of the library module. Every message says what happened and what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    #[error("no model named \"{query}\" in the library{}. Run `influence list` to see what is installed", suggest(.suggestions))]
    NotFound {
        query: String,
        suggestions: Vec<String>,
    },
    #[error("\"{query}\" matches {} models: {}. Use the full name or a path", .candidates.len(), .candidates.join(", "))]
    Ambiguous {
        query: String,
        candidates: Vec<String>,
    },
    #[error("{path} is not in the library. Add it with `influence import {path}`")]
    PathNotInLibrary { path: String },
    #[error(
        "{name} lives in {store} ({path}); Influence never deletes files it does not own. {hint}"
    )]
    ForeignStore {
        name: String,
        store: &'static str,
        path: PathBuf,
        hint: String,
    },
    #[error("{path} is not a model Influence can list: {reason}")]
    NotAModel { path: PathBuf, reason: String },
    #[error("{path} is already in the library as {name}")]
    AlreadyListed { path: PathBuf, name: String },
    #[error("the imports list {path} is unreadable ({reason}); fix or delete that file and import again")]
    ImportsFile { path: PathBuf, reason: String },
    #[error("the alias list {path} is unreadable ({reason}); fix or delete that file")]
    AliasesFile { path: PathBuf, reason: String },
    #[error("cannot use \"{name}\" as a name: {reason}")]
    InvalidAlias { name: String, reason: String },
    #[error("\"{name}\" is another name for {target}, which is no longer in the library ({path}); remove the alias with `influence rm {name}`")]
    DanglingAlias {
        name: String,
        target: String,
        path: PathBuf,
    },
    #[error("refusing to delete {path}: it is outside {root}. The library changed since it was scanned; run the command again")]
    OutsideStore { path: PathBuf, root: PathBuf },
    #[error(
        "{action} {path} failed: {source}. Check the permissions of that folder and try again"
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn suggest(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!(" (did you mean {}?)", suggestions.join(", "))
    }
}

impl LibraryError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        LibraryError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
