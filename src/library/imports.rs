//! Models imported by reference: a JSON list of paths in the data folder. Nothing is copied.

use std::path::{Path, PathBuf};

use super::folders::{is_gguf, is_pytorch_weights, is_safetensors};
use super::{Library, LibraryError, LibraryRoots};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportRecord {
    /// Absolute path of a `.gguf` file or a model folder.
    pub path: PathBuf,
    /// When it was imported (RFC 3339).
    pub added: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ImportsFile {
    version: u32,
    imports: Vec<ImportRecord>,
}

/// The imports list; empty when the file does not exist yet.
pub fn read_imports(path: &Path) -> Result<Vec<ImportRecord>, LibraryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LibraryError::io("reading", path, e)),
    };
    let file: ImportsFile =
        serde_json::from_slice(&bytes).map_err(|e| LibraryError::ImportsFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(file.imports)
}

pub(crate) fn write_imports(path: &Path, imports: Vec<ImportRecord>) -> Result<(), LibraryError> {
    let file = ImportsFile {
        version: 1,
        imports,
    };
    let mut json = serde_json::to_vec_pretty(&file).map_err(|e| LibraryError::ImportsFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    crate::fsutil::write_atomic(path, &json).map_err(|e| LibraryError::io("writing", path, e))
}

/// Adds `path` (a `.gguf` file or a folder holding `.gguf`, `.safetensors` or PyTorch weights) to the imports
/// list, by reference. Refuses paths that are not models and paths the library already lists.
pub fn import(roots: &LibraryRoots, path: &Path) -> Result<ImportRecord, LibraryError> {
    let abs = std::fs::canonicalize(path).map_err(|e| LibraryError::NotAModel {
        path: path.to_path_buf(),
        reason: format!("cannot open it ({e})"),
    })?;
    if abs.is_file() {
        if !is_gguf(&abs) {
            return Err(LibraryError::NotAModel {
                path: abs,
                reason: "only .gguf files can be imported alone; for safetensors import the folder that holds config.json".into(),
            });
        }
    } else {
        let entries = std::fs::read_dir(&abs).map_err(|e| LibraryError::io("reading", &abs, e))?;
        let has_model = entries.flatten().any(|e| {
            let p = e.path();
            is_gguf(&p) || is_safetensors(&p) || is_pytorch_weights(&p)
        });
        if !has_model {
            return Err(LibraryError::NotAModel {
                path: abs,
                reason: "the folder holds no .gguf, .safetensors or pytorch_model.bin files".into(),
            });
        }
    }
    let library = Library::scan(roots);
    if let Some(m) = library.models().iter().find(|m| {
        std::fs::canonicalize(&m.load_path).is_ok_and(|p| p == abs)
            || m.files
                .iter()
                .any(|f| std::fs::canonicalize(&f.path).is_ok_and(|p| p == abs))
    }) {
        return Err(LibraryError::AlreadyListed {
            path: abs,
            name: m.name.clone(),
        });
    }
    let mut imports = read_imports(&roots.imports_file)?;
    let record = ImportRecord {
        path: abs,
        added: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    imports.push(record.clone());
    write_imports(&roots.imports_file, imports)?;
    Ok(record)
}
