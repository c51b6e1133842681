//! Ollama's store, read-only: `manifests/<host>/<namespace>/<model>/<tag>` JSON manifests whose
//! layers point at `blobs/sha256-<hex>`. The layer with media type
//! `application/vnd.ollama.image.model` is a GGUF file.

use std::path::{Path, PathBuf};

use super::{Draft, FileHash, Job, Location, ModelFile, Pending, Source};

const MODEL_LAYER: &str = "application/vnd.ollama.image.model";
const DEFAULT_HOST: &str = "registry.ollama.ai";

#[derive(serde::Deserialize)]
struct Manifest {
    #[serde(default)]
    config: Option<Layer>,
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(serde::Deserialize)]
struct Layer {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
}

pub(crate) fn scan(root: &Path, out: &mut Vec<Pending>, warnings: &mut Vec<String>) {
    let manifests = root.join("manifests");
    // manifests/<host>/<namespace>/<model>/<tag>: exactly four levels.
    let mut found = Vec::new();
    collect(&manifests, 0, &mut found);
    found.sort();
    for path in found {
        match read_model(root, &manifests, &path) {
            Ok(Some(m)) => out.push(m),
            Ok(None) => {}
            Err(e) => warnings.push(format!("Ollama manifest {}: {e}", path.display())),
        }
    }
}

fn collect(dir: &Path, depth: usize, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if depth == 3 {
            if p.is_file() {
                found.push(p);
            }
        } else if p.is_dir() {
            collect(&p, depth + 1, found);
        }
    }
}

/// `sha256:<hex>` → `blobs/sha256-<hex>`.
fn blob_path(root: &Path, digest: &str) -> Option<(PathBuf, FileHash)> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((
        root.join("blobs").join(format!("sha256-{hex}")),
        FileHash::Sha256(hex.to_ascii_lowercase()),
    ))
}

fn read_model(root: &Path, manifests: &Path, path: &Path) -> Result<Option<Pending>, String> {
    let rel = path.strip_prefix(manifests).map_err(|e| e.to_string())?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let [host, ns, model, tag] = parts.as_slice() else {
        return Ok(None);
    };
    // The names `ollama list` shows.
    let repo = match (host.as_str(), ns.as_str()) {
        (DEFAULT_HOST, "library") => model.clone(),
        (DEFAULT_HOST, _) => format!("{ns}/{model}"),
        _ => format!("{host}/{ns}/{model}"),
    };
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a valid manifest ({e})"))?;
    let Some(model_layer) = manifest.layers.iter().find(|l| l.media_type == MODEL_LAYER) else {
        return Ok(None);
    };
    let (gguf, _) = blob_path(root, &model_layer.digest).ok_or_else(|| {
        format!(
            "model layer has an unexpected digest {}",
            model_layer.digest
        )
    })?;
    let mut files = Vec::new();
    for layer in manifest.config.iter().chain(manifest.layers.iter()) {
        if let Some((blob, hash)) = blob_path(root, &layer.digest) {
            files.push(ModelFile::new(blob.clone(), blob, Some(hash)));
        }
    }
    // The template layer is a Go template for Ollama itself; only the GGUF's Jinja template
    // counts as a chat template here.
    Ok(Some(
        Draft {
            name: format!("{repo}:{tag}"),
            repo,
            quant_tag: None,
            revision: None,
            source: Source::Ollama,
            location: Location::Ollama {
                manifest: path.to_path_buf(),
            },
            load_path: gguf.clone(),
            files,
        }
        .pending(Job::Gguf(vec![gguf])),
    ))
}
