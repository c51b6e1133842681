//! PyTorch checkpoints (`pytorch_model.bin`): a zip holding `<name>/data.pkl`, the state dict as
//! a pickle, and `<name>/data/<key>`, each storage's raw little-endian bytes.
//!
//! Every `data.pkl` is checked by [`scan::check`] before anything interprets it, then read by
//! candle's pickle reader. [`read_index`] lists the tensors without reading any weights (for the
//! library); [`load`] reads them (for the engine). The legacy pre-zip format (torch.save before
//! 1.6) is refused with a clear message.

pub mod scan;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::pickle::{Object, PthTensors, Stack};
use candle_core::Tensor;

pub use scan::PickleError;

/// A state dict's pickle over this size is not a state dict (real ones are a few MB at most).
const MAX_PICKLE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PytorchError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a PyTorch file in the legacy format (torch.save before 1.6), which the engine does not read; use the model's safetensors weights, or re-save it with a current torch")]
    Legacy { path: PathBuf },
    #[error("{path} is not a PyTorch model checkpoint: {reason}")]
    NotArchive { path: PathBuf, reason: String },
    #[error("{path}: refused: {source}")]
    Refused {
        path: PathBuf,
        #[source]
        source: PickleError,
    },
    #[error("{path} is damaged: {reason}; delete it and download it again")]
    Damaged { path: PathBuf, reason: String },
}

/// One tensor of a checkpoint, as the pickle describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorMeta {
    pub name: String,
    /// safetensors-style dtype name: `F32`, `F16`, `BF16`, `F64`, `I64`, `U8`.
    pub dtype: &'static str,
    pub shape: Vec<usize>,
    pub elements: u64,
    /// Bytes the tensor takes once loaded.
    pub bytes: u64,
}

/// Whether `path` names PyTorch weights that `pull` and the library treat as a model's weights:
/// `pytorch_model.bin` or its shards (`pytorch_model-00001-of-00002.bin`), not training state
/// such as `optimizer.bin` or `training_args.bin`.
pub fn is_weights_name(file_name: &str) -> bool {
    let Some(stem) = file_name.strip_suffix(".bin") else {
        return false;
    };
    if stem == "pytorch_model" {
        return true;
    }
    let Some(rest) = stem.strip_prefix("pytorch_model-") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    matches!(rest.split_once("-of-"), Some((a, b)) if digits(a) && digits(b))
}

/// The tensors of the checkpoint at `path`, checked and described without reading weights.
pub fn read_index(path: &Path) -> Result<Vec<TensorMeta>, PytorchError> {
    let io = |source| PytorchError::Io {
        path: path.to_path_buf(),
        source,
    };
    let damaged = |reason: String| PytorchError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 4];
    let got = file.read(&mut magic).map_err(io)?;
    if got >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
        return Err(PytorchError::Legacy {
            path: path.to_path_buf(),
        });
    }
    if got < 4 || &magic != b"PK\x03\x04" {
        return Err(PytorchError::NotArchive {
            path: path.to_path_buf(),
            reason: "it is not a zip file (an incomplete download?)".into(),
        });
    }
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        PytorchError::NotArchive {
            path: path.to_path_buf(),
            reason: format!(
                "its zip directory cannot be read ({e}); the download may be incomplete"
            ),
        }
    })?;
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut pickles = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| damaged(format!("zip entry {i}: {e}")))?;
        let name = entry
            .name()
            .map_err(|e| damaged(format!("zip entry {i}: {e}")))?
            .into_owned();
        // The same entries candle's reader interprets.
        if name.ends_with("data.pkl") {
            pickles.push(name.clone());
        }
        sizes.insert(name, entry.size());
    }
    if pickles.is_empty() {
        return Err(PytorchError::NotArchive {
            path: path.to_path_buf(),
            reason: "the zip holds no data.pkl".into(),
        });
    }
    let mut out = Vec::new();
    for name in pickles {
        let mut entry = zip
            .by_name(&name)
            .map_err(|e| damaged(format!("{name}: {e}")))?;
        if entry.size() > MAX_PICKLE {
            return Err(damaged(format!(
                "{name} is {} bytes, far more than a state dict needs",
                entry.size()
            )));
        }
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .by_ref()
            .take(MAX_PICKLE)
            .read_to_end(&mut bytes)
            .map_err(|e| damaged(format!("{name}: {e}")))?;
        drop(entry);
        scan::check(&bytes).map_err(|source| PytorchError::Refused {
            path: path.to_path_buf(),
            source,
        })?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut bytes.as_slice())
            .map_err(|e| damaged(format!("{name}: {e}")))?;
        let obj = stack
            .finalize()
            .map_err(|e| damaged(format!("{name}: {e}")))?;
        let dir = name.strip_suffix(".pkl").unwrap_or(&name);
        tensors_of(obj, dir, &sizes, &mut out).map_err(damaged)?;
    }
    if out.is_empty() {
        // A training checkpoint nests its state dict under a key; a model's weights never do.
        return Err(PytorchError::NotArchive {
            path: path.to_path_buf(),
            reason:
                "its pickle holds no tensors at the top level, so it is not a model's state dict"
                    .into(),
        });
    }
    Ok(out)
}

/// Every tensor of the checkpoint at `path`, read by candle's pickle reader after the checks of
/// [`read_index`].
pub fn load(path: &Path) -> Result<Vec<(String, Tensor)>, PytorchError> {
    let metas = read_index(path)?;
    let damaged = |reason: String| PytorchError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let pth = PthTensors::new(path, None).map_err(|e| damaged(e.to_string()))?;
    if pth.tensor_infos().len() != metas.len() {
        return Err(damaged(format!(
            "the reader found {} tensors where the checkpoint lists {}",
            pth.tensor_infos().len(),
            metas.len()
        )));
    }
    metas
        .into_iter()
        .map(|m| match pth.get(&m.name) {
            Ok(Some(t)) => Ok((m.name, t)),
            Ok(None) => Err(damaged(format!("tensor {} cannot be found", m.name))),
            Err(e) => Err(damaged(format!("tensor {}: {e}", m.name))),
        })
        .collect()
}

/// The tensors of a state dict, accepted by the same rules candle's reader applies (so it
/// neither skips one nor trips on one), plus bounds checks against the storage entries.
fn tensors_of(
    obj: Object,
    dir: &str,
    sizes: &HashMap<String, u64>,
    out: &mut Vec<TensorMeta>,
) -> Result<(), String> {
    let Object::Dict(entries) = obj else {
        return Err("data.pkl does not hold a state dict".into());
    };
    for (key, value) in entries {
        let Object::Unicode(name) = key else {
            continue;
        };
        let Object::Reduce { callable, args } = value else {
            continue;
        };
        let (callable, args) = match *callable {
            Object::Class { class_name, .. } if class_name == "_rebuild_parameter" => match *args {
                Object::Tuple(mut a) if !a.is_empty() => match a.remove(0) {
                    Object::Reduce { callable, args } => (*callable, *args),
                    _ => return Err(format!("tensor {name}: a parameter without a tensor")),
                },
                _ => return Err(format!("tensor {name}: a parameter without a tensor")),
            },
            c => (c, *args),
        };
        match callable {
            Object::Class { class_name, .. } if class_name == "_rebuild_tensor_v2" => {}
            _ => continue,
        }
        out.push(tensor_meta(&name, args, dir, sizes).map_err(|e| format!("tensor {name}: {e}"))?);
    }
    Ok(())
}

/// Whether (dim, stride) pairs, innermost first, describe densely packed data.
fn contiguous<'a>(dims: impl Iterator<Item = (&'a usize, &'a usize)>) -> bool {
    let mut acc = 1u64;
    for (d, s) in dims {
        if *d > 1 && *s as u64 != acc {
            return false;
        }
        acc = acc.saturating_mul(*d as u64);
    }
    true
}

fn int(o: &Object) -> Option<i64> {
    match o {
        Object::Int(i) => Some(*i as i64),
        Object::Long(i) => Some(*i),
        _ => None,
    }
}

/// A tuple of non-negative small ints (candle reads sizes and strides only as `Int`).
fn dims(o: &Object) -> Option<Vec<usize>> {
    match o {
        Object::Tuple(v) => v
            .iter()
            .map(|d| match d {
                Object::Int(i) if *i >= 0 => Some(*i as usize),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// `_rebuild_tensor_v2(storage, storage_offset, size, stride, ...)`, where storage is the
/// persistent id `('storage', torch.FloatStorage, key, location, numel)`.
fn tensor_meta(
    name: &str,
    args: Object,
    dir: &str,
    sizes: &HashMap<String, u64>,
) -> Result<TensorMeta, String> {
    let Object::Tuple(args) = args else {
        return Err("rebuild arguments are not a tuple".into());
    };
    if args.len() < 4 {
        return Err("too few rebuild arguments".into());
    }
    let Object::PersistentLoad(storage) = &args[0] else {
        return Err("no storage reference".into());
    };
    let Object::Tuple(storage) = storage.as_ref() else {
        return Err("the storage reference is not a tuple".into());
    };
    if storage.len() < 5 {
        return Err("the storage reference is too short".into());
    }
    let (Object::Class { class_name, .. }, Object::Unicode(key)) = (&storage[1], &storage[2])
    else {
        return Err("the storage reference has no type or key".into());
    };
    let dtype = scan::STORAGES
        .iter()
        .find(|(s, _)| s == class_name)
        .map(|(_, d)| *d)
        .ok_or_else(|| format!("unsupported storage type {class_name}"))?;
    int(&storage[4]).ok_or("the storage size is not a number")?;
    let offset = int(&args[1])
        .and_then(|o| u64::try_from(o).ok())
        .ok_or("the storage offset is not a non-negative number")?;
    let shape = dims(&args[2]).ok_or("the shape is not a tuple of sizes")?;
    let stride = dims(&args[3]).ok_or("the strides are not a tuple of sizes")?;
    let elements = shape
        .iter()
        .try_fold(1u64, |a, d| a.checked_mul(*d as u64))
        .ok_or("the shape overflows")?;
    let size = match dtype {
        "F64" | "I64" => 8,
        "F32" => 4,
        "F16" | "BF16" => 2,
        _ => 1,
    };
    let row_major = contiguous(shape.iter().zip(&stride).rev());
    let col_major = contiguous(shape.iter().zip(&stride));
    if shape.len() != stride.len() || !(row_major || col_major) {
        return Err(format!(
            "strided storage (shape {shape:?}, stride {stride:?}) is not supported"
        ));
    }
    let bytes = elements.checked_mul(size).ok_or("the shape overflows")?;
    let end = offset
        .checked_mul(size)
        .and_then(|o| o.checked_add(bytes))
        .ok_or("the storage offset overflows")?;
    let entry = format!("{dir}/{key}");
    match sizes.get(&entry) {
        None => return Err(format!("its storage {entry} is missing from the archive")),
        Some(have) if *have < end => {
            return Err(format!(
                "its storage {entry} holds {have} bytes but the tensor needs {end}"
            ))
        }
        Some(_) => {}
    }
    Ok(TensorMeta {
        name: name.to_string(),
        dtype,
        shape,
        elements,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_file_names() {
        assert!(is_weights_name("pytorch_model.bin"));
        assert!(is_weights_name("pytorch_model-00001-of-00002.bin"));
        assert!(!is_weights_name("training_args.bin"));
        assert!(!is_weights_name("optimizer.bin"));
        assert!(!is_weights_name("pytorch_model-1-of-.bin"));
        assert!(!is_weights_name("pytorch_model.bin.index.json"));
    }

    fn archive(dir: &Path, pickle: &[u8], storages: &[(&str, usize)]) -> PathBuf {
        use std::io::Write;
        let path = dir.join("pytorch_model.bin");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(pickle).unwrap();
        for (key, len) in storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            zip.write_all(&vec![0u8; *len]).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    /// `{"w": _rebuild_tensor_v2(storage("0", FloatStorage, 6), 0, (2, 3), (3, 1), False, None)}`
    const ONE_TENSOR: &[u8] = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89NtRs.";

    #[test]
    fn tensors_are_listed_and_checked_against_their_storage() {
        let dir = tempfile::tempdir().unwrap();
        let p = archive(dir.path(), ONE_TENSOR, &[("0", 24)]);
        let list = read_index(&p).unwrap();
        assert_eq!(
            list,
            [TensorMeta {
                name: "w".into(),
                dtype: "F32",
                shape: vec![2, 3],
                elements: 6,
                bytes: 24
            }]
        );
        let loaded = load(&p).unwrap();
        assert_eq!(loaded[0].1.dims(), [2, 3]);
        // A storage shorter than its tensor, or missing: damaged, not a panic or a short read.
        let p = archive(dir.path(), ONE_TENSOR, &[("0", 20)]);
        let err = read_index(&p).unwrap_err();
        assert!(matches!(err, PytorchError::Damaged { .. }), "{err}");
        let p = archive(dir.path(), ONE_TENSOR, &[]);
        assert!(read_index(&p).unwrap_err().to_string().contains("missing"));
        // A training checkpoint that nests the state dict under a key.
        let p = archive(dir.path(), b"\x80\x02}X\x01\x00\x00\x00m}s.", &[]);
        let err = read_index(&p).unwrap_err();
        assert!(matches!(err, PytorchError::NotArchive { .. }), "{err}");
        // Too few rebuild arguments, which would make candle's reader index out of bounds.
        let short = b"\x80\x02}X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n)Rs.";
        let err = read_index(&archive(dir.path(), short, &[])).unwrap_err();
        assert!(matches!(err, PytorchError::Damaged { .. }), "{err}");
    }

    #[test]
    fn legacy_and_non_zip_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("old.bin");
        std::fs::write(&legacy, b"\x80\x02\x8a\x0alz\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        let err = read_index(&legacy).unwrap_err();
        assert!(matches!(err, PytorchError::Legacy { .. }), "{err}");
        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"<html>not found</html>").unwrap();
        let err = read_index(&junk).unwrap_err();
        assert!(matches!(err, PytorchError::NotArchive { .. }), "{err}");
        let cut = dir.path().join("cut.bin");
        std::fs::write(&cut, b"PK\x03\x04\x14\x00\x00\x00").unwrap();
        let err = read_index(&cut).unwrap_err();
        assert!(matches!(err, PytorchError::NotArchive { .. }), "{err}");
    }
}
