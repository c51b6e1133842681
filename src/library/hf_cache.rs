//! Our own store: the Hugging Face cache layout shared with Python `huggingface_hub`.
//!
//! `models--{org}--{name}/{blobs/<etag>, snapshots/<commit>/<path> -> ../../blobs/<etag>,
//! refs/<revision>}`. Every snapshot is a revision; the one `refs/main` points to gets the plain
//! name and older ones get `@<commit7>`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use super::folders::{folder_job, gguf_groups};
use super::{Draft, FileHash, Job, Location, ModelFile, Pending, Source};

pub(crate) fn scan(hub: &Path, out: &mut Vec<Pending>, warnings: &mut Vec<String>) {
    let entries = match std::fs::read_dir(hub) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warnings.push(format!("cannot read the HF cache {}: {e}", hub.display()));
            return;
        }
    };
    let mut repos: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = repo_id(&name)?;
            Some((id, e.path()))
        })
        .collect();
    repos.sort();
    for (id, dir) in repos {
        scan_repo(&dir, &id, out, warnings);
    }
}

/// `models--org--name` → `org/name`; `models--gpt2` → `gpt2`. Repo ids cannot contain `--`.
pub(crate) fn repo_id(dir_name: &str) -> Option<String> {
    let rest = dir_name.strip_prefix("models--")?;
    (!rest.is_empty()).then(|| rest.replace("--", "/"))
}

/// `refs/<name>` files (nested for `refs/pr/1`) → commit → ref names.
pub(crate) fn read_refs(repo_dir: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut refs: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    let root = repo_dir.join("refs");
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(commit) = std::fs::read_to_string(&p) {
                let rel = p.strip_prefix(&root).unwrap_or(&p).to_path_buf();
                refs.entry(commit.trim().to_string()).or_default().push(rel);
            }
        }
    }
    refs
}

/// Every file in a snapshot: (path relative to the snapshot, the file).
pub(crate) fn snapshot_files(snapshot: &Path) -> Vec<(PathBuf, ModelFile)> {
    let mut files = Vec::new();
    let mut stack = vec![(snapshot.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let rel = path.strip_prefix(snapshot).unwrap_or(&path).to_path_buf();
            if meta.file_type().is_symlink() {
                let Ok(target) = std::fs::read_link(&path) else {
                    continue;
                };
                let parent = path.parent().unwrap_or(snapshot);
                let blob = normalize(&parent.join(target));
                if blob.is_dir() {
                    if depth < 8 {
                        stack.push((path, depth + 1));
                    }
                    continue;
                }
                let hash = blob
                    .file_name()
                    .and_then(|n| hash_from_etag(&n.to_string_lossy()));
                files.push((rel, ModelFile::new(path, blob, hash)));
            } else if meta.is_dir() {
                if depth < 8 {
                    stack.push((path, depth + 1));
                }
            } else if meta.is_file() {
                // Where symlinks fail, huggingface_hub copies the file: no name-based hash then.
                files.push((rel, ModelFile::new(path.clone(), path, None)));
            }
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
}

/// Blob names are the ETag: sha256 for LFS files, git-sha1 for regular files.
pub(crate) fn hash_from_etag(name: &str) -> Option<FileHash> {
    let hex = name.len() == 64 || name.len() == 40;
    if !hex || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let lower = name.to_ascii_lowercase();
    Some(if name.len() == 64 {
        FileHash::Sha256(lower)
    } else {
        FileHash::GitSha1(lower)
    })
}

/// Resolves `..` lexically, so a dangling link still names the blob it should point to.
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

fn scan_repo(dir: &Path, repo: &str, out: &mut Vec<Pending>, warnings: &mut Vec<String>) {
    let snapshots_dir = dir.join("snapshots");
    let entries = match std::fs::read_dir(&snapshots_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", snapshots_dir.display()));
            return;
        }
    };
    let mut snapshots: Vec<(String, PathBuf, Option<std::time::SystemTime>)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let modified = e.metadata().ok().and_then(|m| m.modified().ok());
            (
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
                modified,
            )
        })
        .collect();
    snapshots.sort();
    let refs = read_refs(dir);
    let main = refs
        .iter()
        .find(|(_, names)| names.iter().any(|n| n == Path::new("main")))
        .map(|(c, _)| c.clone());
    let primary = main
        .filter(|c| snapshots.iter().any(|s| &s.0 == c))
        .or_else(|| snapshots.iter().max_by_key(|s| s.2).map(|s| s.0.clone()));
    for (commit, snap_dir, _) in &snapshots {
        let suffix = if Some(commit) == primary.as_ref() {
            String::new()
        } else {
            format!("@{}", commit.chars().take(7).collect::<String>())
        };
        let files = snapshot_files(snap_dir);
        let rels: Vec<PathBuf> = files.iter().map(|(r, _)| r.clone()).collect();
        let groups = gguf_groups(&rels);
        let location = |only| Location::HfCache {
            repo_dir: dir.to_path_buf(),
            commit: commit.clone(),
            only,
        };
        if !groups.is_empty() {
            let several = groups.len() > 1;
            for g in &groups {
                let (model_files, only) = if several {
                    let mine: Vec<ModelFile> = files
                        .iter()
                        .filter(|(r, _)| g.shards.contains(r))
                        .map(|(_, f)| f.clone())
                        .collect();
                    (mine, Some(g.shards.clone()))
                } else {
                    (files.iter().map(|(_, f)| f.clone()).collect(), None)
                };
                let shard_paths: Vec<PathBuf> = g.shards.iter().map(|s| snap_dir.join(s)).collect();
                let load_path = shard_paths[0].clone();
                let name = if several {
                    format!("{repo}:{}{suffix}", g.tag)
                } else {
                    format!("{repo}{suffix}")
                };
                out.push(
                    Draft {
                        name,
                        repo: repo.to_string(),
                        quant_tag: Some(g.tag.clone()),
                        revision: Some(commit.clone()),
                        source: Source::HfCache,
                        location: location(only),
                        load_path,
                        files: model_files,
                    }
                    .pending(Job::Gguf(shard_paths)),
                );
            }
        } else if let Some(job) = folder_job(
            snap_dir,
            &rels
                .iter()
                .filter(|r| r.components().count() == 1)
                .map(|r| snap_dir.join(r))
                .collect::<Vec<_>>(),
        ) {
            out.push(
                Draft {
                    name: format!("{repo}{suffix}"),
                    repo: repo.to_string(),
                    quant_tag: None,
                    revision: Some(commit.clone()),
                    source: Source::HfCache,
                    location: location(None),
                    load_path: snap_dir.clone(),
                    files: files.into_iter().map(|(_, f)| f).collect(),
                }
                .pending(job),
            );
        }
    }
}
