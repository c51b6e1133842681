//! Deleting a model: first a plan that lists exactly what goes, then its execution.
//!
//! In the HF cache a snapshot's files are symlinks into `blobs/`, and snapshots of the same repo
//! share blobs, so a blob is removed only when no other snapshot (or other file of a kept model)
//! points at it. Other apps' stores are never touched.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::hf_cache::{read_refs, snapshot_files};
use super::human;
use super::imports::{read_imports, write_imports};
use super::{LibraryError, Location, Model};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Removal {
    File {
        path: PathBuf,
        size: u64,
    },
    Dir {
        path: PathBuf,
        size: u64,
    },
    /// Drop `path` from the imports list; the files themselves stay.
    ImportRecord {
        imports_file: PathBuf,
        path: PathBuf,
    },
}

impl std::fmt::Display for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Removal::File { path, size } => {
                write!(
                    f,
                    "delete file   {} ({})",
                    path.display(),
                    human::bytes(*size)
                )
            }
            Removal::Dir { path, size } => {
                write!(
                    f,
                    "delete folder {} ({})",
                    path.display(),
                    human::bytes(*size)
                )
            }
            Removal::ImportRecord { imports_file, path } => write!(
                f,
                "forget import {} (in {}; the files stay where they are)",
                path.display(),
                imports_file.display()
            ),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DeletePlan {
    pub model: String,
    pub removals: Vec<Removal>,
    /// Blobs this model uses that stay because another snapshot or model uses them too.
    pub kept_shared: Vec<PathBuf>,
    pub bytes_freed: u64,
    /// Every file or folder removed lies under this folder (checked again before deleting).
    pub root: Option<PathBuf>,
}

impl DeletePlan {
    /// Carries out the plan. Files already gone are not an error.
    pub fn execute(&self) -> Result<(), LibraryError> {
        for r in &self.removals {
            let (path, is_dir) = match r {
                Removal::File { path, .. } => (path, false),
                Removal::Dir { path, .. } => (path, true),
                Removal::ImportRecord { imports_file, path } => {
                    let mut list = read_imports(imports_file)?;
                    list.retain(|rec| &rec.path != path);
                    write_imports(imports_file, list)?;
                    continue;
                }
            };
            if let Some(root) = &self.root {
                if !path.starts_with(root) || path.components().any(|c| c.as_os_str() == "..") {
                    return Err(LibraryError::OutsideStore {
                        path: path.clone(),
                        root: root.clone(),
                    });
                }
            }
            let result = if is_dir {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_file(path)
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LibraryError::io("deleting", path.clone(), e)),
            }
        }
        Ok(())
    }
}

pub(crate) fn plan(model: &Model, imports_file: Option<&Path>) -> Result<DeletePlan, LibraryError> {
    let foreign = |store: &'static str, path: &Path, hint: String| LibraryError::ForeignStore {
        name: model.name.clone(),
        store,
        path: path.to_path_buf(),
        hint,
    };
    match &model.location {
        Location::Ollama { manifest } => Err(foreign(
            "Ollama's store",
            manifest,
            format!("Remove it with `ollama rm {}`.", model.name),
        )),
        Location::Lmstudio => Err(foreign(
            "LM Studio's store",
            &model.load_path,
            "Delete it from LM Studio's model list.".into(),
        )),
        Location::Folder => Err(foreign(
            "a folder from your model_dirs",
            &model.load_path,
            "Delete the files yourself, or remove the folder from model_dirs.".into(),
        )),
        Location::Import { record } => {
            let imports_file = imports_file.ok_or_else(|| LibraryError::ImportsFile {
                path: PathBuf::new(),
                reason: "this library was not scanned from a roots set".into(),
            })?;
            Ok(DeletePlan {
                model: model.name.clone(),
                removals: vec![Removal::ImportRecord {
                    imports_file: imports_file.to_path_buf(),
                    path: record.clone(),
                }],
                kept_shared: Vec::new(),
                bytes_freed: 0,
                root: None,
            })
        }
        Location::HfCache {
            repo_dir,
            commit,
            only,
        } => hf_plan(model, repo_dir, commit, only.as_deref()),
    }
}

fn hf_plan(
    model: &Model,
    repo_dir: &Path,
    commit: &str,
    only: Option<&[PathBuf]>,
) -> Result<DeletePlan, LibraryError> {
    let snapshots_dir = repo_dir.join("snapshots");
    let entries = std::fs::read_dir(&snapshots_dir)
        .map_err(|e| LibraryError::io("reading", &snapshots_dir, e))?;
    // blob → every (snapshot, relative path) that points at it.
    let mut users: BTreeMap<PathBuf, Vec<(String, PathBuf)>> = BTreeMap::new();
    let mut snapshot_count = 0;
    let mut ours: Vec<(PathBuf, PathBuf, u64)> = Vec::new(); // (rel, blob, size)
    for e in entries.flatten() {
        if !e.path().is_dir() {
            continue;
        }
        snapshot_count += 1;
        let name = e.file_name().to_string_lossy().into_owned();
        for (rel, f) in snapshot_files(&e.path()) {
            if name == commit && only.is_none_or(|o| o.contains(&rel)) {
                ours.push((rel.clone(), f.blob.clone(), f.size));
            }
            users.entry(f.blob).or_default().push((name.clone(), rel));
        }
    }
    let mine: BTreeSet<(String, PathBuf)> = ours
        .iter()
        .map(|(rel, _, _)| (commit.to_string(), rel.clone()))
        .collect();
    let root = repo_dir.parent().unwrap_or(repo_dir).to_path_buf();
    let blobs_dir = repo_dir.join("blobs");
    let mut plan = DeletePlan {
        model: model.name.clone(),
        removals: Vec::new(),
        kept_shared: Vec::new(),
        bytes_freed: 0,
        root: Some(root.clone()),
    };

    if only.is_none() && snapshot_count <= 1 {
        // Nothing else in this repo: the whole folder goes, with its lock folder.
        let size = dir_size(&blobs_dir) + dir_size(&snapshots_dir);
        plan.bytes_freed = dir_size(&blobs_dir);
        plan.removals.push(Removal::Dir {
            path: repo_dir.to_path_buf(),
            size,
        });
        if let Some(name) = repo_dir.file_name() {
            let locks = root.join(".locks").join(name);
            if locks.is_dir() {
                plan.removals.push(Removal::Dir {
                    size: dir_size(&locks),
                    path: locks,
                });
            }
        }
        return Ok(plan);
    }

    let snapshot = snapshots_dir.join(commit);
    match only {
        None => {
            plan.removals.push(Removal::Dir {
                path: snapshot.clone(),
                size: 0,
            });
            for (c, names) in read_refs(repo_dir) {
                if c == commit {
                    for n in names {
                        plan.removals.push(Removal::File {
                            path: repo_dir.join("refs").join(n),
                            size: 0,
                        });
                    }
                }
            }
            let no_exist = repo_dir.join(".no_exist").join(commit);
            if no_exist.is_dir() {
                plan.removals.push(Removal::Dir {
                    path: no_exist,
                    size: 0,
                });
            }
        }
        Some(_) => {
            for (rel, _, _) in &ours {
                plan.removals.push(Removal::File {
                    path: snapshot.join(rel),
                    size: 0,
                });
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (_, blob, size) in &ours {
        if !blob.starts_with(&blobs_dir) || !seen.insert(blob.clone()) {
            continue;
        }
        let shared = users
            .get(blob)
            .is_some_and(|u| u.iter().any(|entry| !mine.contains(entry)));
        if shared {
            plan.kept_shared.push(blob.clone());
        } else {
            plan.bytes_freed += size;
            plan.removals.push(Removal::File {
                path: blob.clone(),
                size: *size,
            });
        }
    }
    Ok(plan)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    total
}
