//! A Hugging Face folder's weights: its `.safetensors` files, or else its PyTorch `.bin` set
//! (`pytorch_model.bin` or its shards), read through the pickle allow-list in `crate::pytorch`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::EngineError;
use crate::pytorch;

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The weight files of `dir`, safetensors first: a folder with both uses the safetensors ones.
pub(crate) fn weight_files(dir: &Path) -> Result<(Vec<PathBuf>, bool), EngineError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| corrupt(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let st: Vec<PathBuf> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .cloned()
        .collect();
    if !st.is_empty() {
        return Ok((st, false));
    }
    let bin: Vec<PathBuf> = files
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| pytorch::is_weights_name(&n.to_string_lossy()))
        })
        .collect();
    if bin.is_empty() {
        return Err(corrupt(
            dir,
            "no weights in the folder (no .safetensors files and no pytorch_model.bin)",
        ));
    }
    Ok((bin, true))
}

/// Every tensor of the folder's weights, by name.
pub(crate) fn load_folder(dir: &Path) -> Result<HashMap<String, Tensor>, EngineError> {
    let (files, is_pytorch) = weight_files(dir)?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for f in &files {
        if is_pytorch {
            let list = pytorch::load(f).map_err(|e| match e {
                pytorch::PytorchError::Refused { source, .. } => EngineError::Refused {
                    path: f.clone(),
                    reason: source.to_string(),
                },
                other => corrupt(f, other),
            })?;
            tensors.extend(list.into_iter().map(|(n, t)| (modern_name(n), t)));
        } else {
            let t = candle_core::safetensors::load(f, &Device::Cpu)
                .map_err(|e| corrupt(f, format!("cannot read safetensors: {e}")))?;
            tensors.extend(t);
        }
    }
    Ok(tensors)
}

/// Old checkpoints (BERT's original release and its fine-tunes) name LayerNorm parameters
/// `gamma` and `beta`; transformers renames them to `weight` and `bias` when it loads them.
fn modern_name(name: String) -> String {
    if let Some(base) = name.strip_suffix(".gamma") {
        format!("{base}.weight")
    } else if let Some(base) = name.strip_suffix(".beta") {
        format!("{base}.bias")
    } else {
        name
    }
}
