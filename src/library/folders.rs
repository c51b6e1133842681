//! Plain folders: LM Studio's store, the config's `model_dirs`, and imported paths.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::inspect::quant_from_file_name;
use super::{Draft, Job, Location, ModelFile, Pending, Source};

/// How deep `model_dirs` are searched for models.
const MAX_DEPTH: usize = 4;

pub(crate) fn is_gguf(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

pub(crate) fn is_safetensors(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
}

/// `pytorch_model.bin` or one of its shards.
pub(crate) fn is_pytorch_weights(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| crate::pytorch::is_weights_name(&n.to_string_lossy()))
}

/// The job that reads a model folder's weights: its safetensors files, or else its PyTorch
/// weights (what the engine loads). `files` are the folder's entries; `None` if it has neither.
pub(crate) fn folder_job(dir: &Path, files: &[PathBuf]) -> Option<Job> {
    let pick =
        |f: fn(&Path) -> bool| -> Vec<PathBuf> { files.iter().filter(|p| f(p)).cloned().collect() };
    let st = pick(is_safetensors);
    if !st.is_empty() {
        return Some(Job::Safetensors(dir.to_path_buf(), st));
    }
    let bin = pick(is_pytorch_weights);
    (!bin.is_empty()).then(|| Job::Pytorch(dir.to_path_buf(), bin))
}

/// One GGUF model among a folder's files: a single file or the shards of a split model.
#[derive(Debug, Clone)]
pub(crate) struct GgufGroup {
    /// File name without `.gguf` and without `-0000N-of-0000M`.
    pub stem: String,
    /// Paths as given (relative or absolute), in shard order.
    pub shards: Vec<PathBuf>,
    /// The quant label from the file name, or the stem when there is none (or it is not unique).
    pub tag: String,
}

/// `name-00001-of-00003` → (`name`, 1).
fn split_shard(stem: &str) -> Option<(&str, u32)> {
    let (rest, total) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(total) && digits(index)).then(|| (prefix, index.parse().unwrap_or(0)))
}

/// Groups the GGUF files among `paths` into models. Vision projectors (`mmproj*`) are not models.
pub(crate) fn gguf_groups(paths: &[PathBuf]) -> Vec<GgufGroup> {
    let mut groups: BTreeMap<(PathBuf, String), Vec<(u32, PathBuf)>> = BTreeMap::new();
    for p in paths.iter().filter(|p| is_gguf(p)) {
        let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if stem.to_ascii_lowercase().starts_with("mmproj") {
            continue;
        }
        let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
        let (key, index) = match split_shard(&stem) {
            Some((prefix, i)) => (prefix.to_string(), i),
            None => (stem.clone(), 0),
        };
        groups
            .entry((dir, key))
            .or_default()
            .push((index, p.clone()));
    }
    let mut out: Vec<GgufGroup> = groups
        .into_iter()
        .map(|((_, stem), mut shards)| {
            shards.sort();
            let tag = quant_from_file_name(&stem)
                .map(|(l, _)| l.to_string())
                .unwrap_or_else(|| stem.clone());
            GgufGroup {
                stem,
                shards: shards.into_iter().map(|(_, p)| p).collect(),
                tag,
            }
        })
        .collect();
    // Two files with the same quant label (two different models in one folder): use the stems.
    let tags: Vec<String> = out.iter().map(|g| g.tag.clone()).collect();
    for g in &mut out {
        if tags.iter().filter(|t| **t == g.tag).count() > 1 {
            g.tag = g.stem.clone();
        }
    }
    out
}

/// A loose file's model name without its quant label: `SmolLM2-135M-Instruct.Q4_1` →
/// (`SmolLM2-135M-Instruct`, `Q4_1`).
fn split_quant(stem: &str) -> (String, Option<String>) {
    match quant_from_file_name(stem) {
        Some((label, range)) => {
            let mut base = String::new();
            base.push_str(&stem[..range.start]);
            base.push_str(&stem[range.end..]);
            let base = base.trim_matches(|c| matches!(c, '-' | '.' | '_' | ' '));
            if base.is_empty() {
                (stem.to_string(), Some(label.to_string()))
            } else {
                (
                    base.replace("..", ".").replace("--", "-"),
                    Some(label.to_string()),
                )
            }
        }
        None => (stem.to_string(), None),
    }
}

fn list_dir(dir: &Path, warnings: &mut Vec<String>) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut v: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
            v.sort();
            v
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            warnings.push(format!("cannot read {}: {e}", dir.display()));
            Vec::new()
        }
    }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

fn plain_files(paths: &[PathBuf]) -> Vec<ModelFile> {
    paths
        .iter()
        .map(|p| ModelFile::new(p.clone(), p.clone(), None))
        .collect()
}

/// LM Studio: `<root>/<publisher>/<repo>/*.gguf`, named `publisher/repo[:QUANT]`.
pub(crate) fn scan_lmstudio(root: &Path, out: &mut Vec<Pending>, warnings: &mut Vec<String>) {
    for publisher in list_dir(root, warnings) {
        if !publisher.is_dir() || is_hidden(&publisher) {
            continue;
        }
        for repo_dir in list_dir(&publisher, warnings) {
            if !repo_dir.is_dir() || is_hidden(&repo_dir) {
                continue;
            }
            let repo = format!(
                "{}/{}",
                publisher.file_name().unwrap_or_default().to_string_lossy(),
                repo_dir.file_name().unwrap_or_default().to_string_lossy()
            );
            let files = list_dir(&repo_dir, warnings);
            let groups = gguf_groups(&files);
            let several = groups.len() > 1;
            for g in groups {
                let name = if several {
                    format!("{repo}:{}", g.tag)
                } else {
                    repo.clone()
                };
                out.push(
                    Draft {
                        name,
                        repo: repo.clone(),
                        quant_tag: Some(g.tag.clone()),
                        revision: None,
                        source: Source::Lmstudio,
                        location: Location::Lmstudio,
                        load_path: g.shards[0].clone(),
                        files: plain_files(&g.shards),
                    }
                    .pending(Job::Gguf(g.shards.clone())),
                );
            }
        }
    }
}

/// A folder from `model_dirs`: GGUF files and safetensors model folders, a few levels deep.
pub(crate) fn scan_folder(
    root: &Path,
    source: Source,
    out: &mut Vec<Pending>,
    warnings: &mut Vec<String>,
) {
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = list_dir(&dir, warnings);
        let is_model_dir = models_in_dir(&dir, &entries, source, None, out);
        if is_model_dir || depth >= MAX_DEPTH {
            continue;
        }
        for e in entries.into_iter().rev() {
            if e.is_dir() && !is_hidden(&e) {
                stack.push((e, depth + 1));
            }
        }
    }
}

/// Lists the models directly in `dir` (its GGUF files; the folder itself if it holds
/// safetensors). Returns true when the folder is a safetensors model, so its subfolders
/// (`1_Pooling`, ...) are part of it rather than separate places to look.
fn models_in_dir(
    dir: &Path,
    entries: &[PathBuf],
    source: Source,
    import_record: Option<&Path>,
    out: &mut Vec<Pending>,
) -> bool {
    let location = || match import_record {
        Some(r) => Location::Import {
            record: r.to_path_buf(),
        },
        None => Location::Folder,
    };
    for g in gguf_groups(entries) {
        out.push(gguf_file_model(&g, source, location()));
    }
    let weights: Vec<PathBuf> = entries.iter().filter(|p| p.is_file()).cloned().collect();
    let Some(job) = folder_job(dir, &weights) else {
        return false;
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let files = folder_files(dir);
    out.push(
        Draft {
            name: name.clone(),
            repo: name,
            quant_tag: None,
            revision: None,
            source,
            location: location(),
            load_path: dir.to_path_buf(),
            files,
        }
        .pending(job),
    );
    true
}

fn gguf_file_model(g: &GgufGroup, source: Source, location: Location) -> Pending {
    let (repo, quant) = split_quant(&g.stem);
    Draft {
        name: g.stem.clone(),
        repo,
        quant_tag: quant,
        revision: None,
        source,
        location,
        load_path: g.shards[0].clone(),
        files: plain_files(&g.shards),
    }
    .pending(Job::Gguf(g.shards.clone()))
}

/// Every file of a safetensors model folder (subfolders such as `1_Pooling` included).
fn folder_files(dir: &Path) -> Vec<ModelFile> {
    let mut files = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if depth < 3 && !is_hidden(&p) {
                    stack.push((p, depth + 1));
                }
            } else {
                files.push(ModelFile::new(p.clone(), p, None));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// An imported path: a GGUF file (with its sibling shards) or a model folder.
pub(crate) fn scan_import(path: &Path, out: &mut Vec<Pending>, warnings: &mut Vec<String>) {
    let location = Location::Import {
        record: path.to_path_buf(),
    };
    if path.is_dir() {
        let entries = list_dir(path, warnings);
        let before = out.len();
        models_in_dir(path, &entries, Source::Import, Some(path), out);
        if out.len() == before {
            warnings.push(format!(
                "imported folder {} holds no .gguf, .safetensors or pytorch_model.bin files any more",
                path.display()
            ));
        }
        return;
    }
    if path.is_file() {
        let siblings = path
            .parent()
            .map(|d| list_dir(d, warnings))
            .unwrap_or_default();
        let group = gguf_groups(&siblings)
            .into_iter()
            .find(|g| g.shards.iter().any(|s| s == path));
        if let Some(g) = group {
            out.push(gguf_file_model(&g, Source::Import, location));
            return;
        }
    }
    // Gone (or not a model any more): list it as broken so the user can remove the record.
    let name = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let why = if path.exists() {
        "is not a .gguf file or a model folder"
    } else {
        "no longer exists"
    };
    let broken = format!(
        "{} {why}; remove the import with `influence rm {name}`",
        path.display()
    );
    let job = if is_gguf(path) {
        Job::Gguf(vec![path.to_path_buf()])
    } else {
        Job::Safetensors(path.to_path_buf(), Vec::new())
    };
    let mut pending = Draft {
        name: name.clone(),
        repo: name,
        quant_tag: None,
        revision: None,
        source: Source::Import,
        location,
        load_path: path.to_path_buf(),
        files: vec![ModelFile::new(path.to_path_buf(), path.to_path_buf(), None)],
    }
    .pending(job);
    pending.broken = Some(broken);
    out.push(pending);
}
