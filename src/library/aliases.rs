//! Second names for models (`influence cp SOURCE NAME`), kept in a JSON list in the data folder
//! beside the imports. Nothing is copied: an alias records the file the engine loads, so it
//! survives the model's own name changing (a second quant of the repo arriving, say).

use std::path::{Path, PathBuf};

use super::{Library, LibraryError, LibraryRoots, Model};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Alias {
    pub name: String,
    /// What the engine loads for it (the model's `load_path` when the alias was made).
    pub path: PathBuf,
    /// The model's name when the alias was made, for messages once the model is gone.
    pub target: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct AliasesFile {
    version: u32,
    aliases: Vec<Alias>,
}

impl LibraryRoots {
    /// The alias list, beside the imports list.
    pub fn aliases_file(&self) -> PathBuf {
        self.imports_file.with_file_name("aliases.json")
    }
}

/// The alias list; empty when the file does not exist yet.
pub fn read_aliases(path: &Path) -> Result<Vec<Alias>, LibraryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LibraryError::io("reading", path, e)),
    };
    let file: AliasesFile =
        serde_json::from_slice(&bytes).map_err(|e| LibraryError::AliasesFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(file.aliases)
}

fn write_aliases(path: &Path, aliases: Vec<Alias>) -> Result<(), LibraryError> {
    let mut json = serde_json::to_vec_pretty(&AliasesFile {
        version: 1,
        aliases,
    })
    .map_err(|e| LibraryError::AliasesFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    json.push(b'\n');
    crate::fsutil::write_atomic(path, &json).map_err(|e| LibraryError::io("writing", path, e))
}

/// Why `name` cannot be an alias, if it cannot.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("a name needs 1 to 200 characters".into());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a name cannot contain spaces or control characters".into());
    }
    if ['/', '.', '~'].iter().any(|c| name.starts_with(*c)) {
        return Err("a name cannot start with `/`, `.` or `~` (it would read as a path)".into());
    }
    Ok(())
}

/// Gives the model `source` resolves to the second name `name`. An alias of that name is
/// re-pointed; a model's own name is never shadowed.
pub fn add_alias(library: &Library, source: &str, name: &str) -> Result<Alias, LibraryError> {
    let roots = library.roots().ok_or_else(|| LibraryError::InvalidAlias {
        name: name.into(),
        reason: "the library was not scanned from disk".into(),
    })?;
    check_name(name).map_err(|reason| LibraryError::InvalidAlias {
        name: name.into(),
        reason,
    })?;
    let model = library.resolve(source)?;
    if let Some(owner) = library
        .models()
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
    {
        return Err(LibraryError::InvalidAlias {
            name: name.into(),
            reason: format!("it is already the name of a model ({})", owner.name),
        });
    }
    let file = roots.aliases_file();
    let mut list = read_aliases(&file)?;
    list.retain(|a| !a.name.eq_ignore_ascii_case(name));
    let alias = Alias {
        name: name.to_string(),
        path: std::fs::canonicalize(&model.load_path).unwrap_or_else(|_| model.load_path.clone()),
        target: model.name.clone(),
    };
    list.push(alias.clone());
    list.sort_by_key(|a| a.name.to_lowercase());
    write_aliases(&file, list)?;
    Ok(alias)
}

/// Removes the alias `name`; `Ok(false)` when there is none.
pub fn remove_alias(roots: &LibraryRoots, name: &str) -> Result<bool, LibraryError> {
    let file = roots.aliases_file();
    let mut list = read_aliases(&file)?;
    let before = list.len();
    list.retain(|a| !a.name.eq_ignore_ascii_case(name));
    if list.len() == before {
        return Ok(false);
    }
    write_aliases(&file, list)?;
    Ok(true)
}

/// The model an alias points at, by the file it loads.
pub(crate) fn target<'a>(models: &'a [Model], alias: &Alias) -> Result<&'a Model, LibraryError> {
    let same =
        |p: &Path| p == alias.path || std::fs::canonicalize(p).is_ok_and(|c| c == alias.path);
    models
        .iter()
        .find(|m| same(&m.load_path))
        .ok_or_else(|| LibraryError::DanglingAlias {
            name: alias.name.clone(),
            target: alias.target.clone(),
            path: alias.path.clone(),
        })
}
