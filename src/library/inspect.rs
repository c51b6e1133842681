//! Turns headers into [`ModelInfo`]: architecture, parameters, quant types, context, and whether
//! the files are complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::gguf::{self, GgmlType, GgufHeader, MetaValue};
use super::human::bytes as human_bytes;
use super::memory::{
    attention_kv_heads, kv_per_token, layer_mix_label, layer_split, ssm_state_bytes, LayerKind,
    MemoryFacts, ModelShape,
};
use super::safetensors;
use super::{Format, ModelInfo, ModelKind};

/// Architectures that produce embeddings rather than text.
const EMBEDDING_ARCHS: &[&str] = &[
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "nomic-bert",
    "nomic-bert-moe",
    "jina-bert-v2",
    "modernbert",
    "new",
];

/// Files that mark a sentence-transformers folder.
const SENTENCE_TRANSFORMERS_MARKERS: &[&str] = &[
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
];

#[derive(Debug, Clone)]
pub(crate) struct Inspection {
    pub format: Format,
    pub info: ModelInfo,
    pub kind: ModelKind,
    pub broken: Option<String>,
    /// GGUF tensor types present (for the runnable check).
    pub gguf_types: BTreeSet<GgmlType>,
    /// safetensors dtypes present.
    pub st_dtypes: BTreeSet<String>,
    /// What the memory estimate is computed from.
    pub memory: MemoryFacts,
    /// A tokenizer the engine can build: the GGUF vocabulary, or `tokenizer.json`.
    pub has_tokenizer: bool,
    /// Why the engine refuses the weights although they are intact (a PyTorch pickle naming a
    /// global outside the allow-list, or the legacy PyTorch format).
    pub refused: Option<String>,
}

fn is_embedding_arch(arch: &str) -> bool {
    EMBEDDING_ARCHS.contains(&arch.to_ascii_lowercase().as_str())
}

/// Reads the headers of a GGUF model (one file, or every shard of a split model, in order).
pub(crate) fn inspect_gguf(shards: &[PathBuf]) -> Inspection {
    let mut ins = Inspection {
        format: Format::Gguf,
        info: ModelInfo::default(),
        kind: ModelKind::Generate,
        broken: None,
        gguf_types: BTreeSet::new(),
        st_dtypes: BTreeSet::new(),
        memory: MemoryFacts::default(),
        has_tokenizer: false,
        refused: None,
    };
    // `None` once a tensor's shape is impossible or the total overflows: shown as "?".
    let mut params = Some(0u64);
    let mut expert_params = 0u64;
    let mut weight_bytes = 0u64;
    let mut elems_by_type: BTreeMap<GgmlType, u64> = BTreeMap::new();
    let mut first: Option<GgufHeader> = None;
    let mut file_bytes = 0u64;
    for shard in shards {
        let header = match gguf::read_header(shard) {
            Ok(h) => h,
            Err(e) => {
                ins.broken = Some(format!("{}: {e}", file_name(shard)));
                break;
            }
        };
        if let Some(end) = header.data_end() {
            if end > header.file_size {
                ins.broken.get_or_insert_with(|| {
                    format!(
                        "{}: tensor data ends at {} but file is {} (truncated download? delete it and download again)",
                        file_name(shard),
                        human_bytes(end),
                        human_bytes(header.file_size)
                    )
                });
            }
        }
        for t in &header.tensors {
            let n = t.elements();
            if t.name.contains("_exps.") {
                expert_params = expert_params.saturating_add(n);
            }
            match (params, impossible_gguf_shape(t)) {
                (Some(p), None) => params = p.checked_add(n),
                (_, Some(why)) => {
                    params = None;
                    ins.broken
                        .get_or_insert_with(|| format!("{}: {why}", file_name(shard)));
                }
                (None, None) => {}
            }
            *ins.info.tensor_types.entry(t.ty.name()).or_default() += 1;
            ins.gguf_types.insert(t.ty);
            if t.dims.len() >= 2 {
                let e = elems_by_type.entry(t.ty).or_default();
                *e = e.saturating_add(n);
            }
            let bytes = t.ty.bytes_for(n).unwrap_or(0);
            let held = if t.name == "token_embd.weight" {
                // candle's quantized models dequantize the token embedding to f32 for the lookup,
                // and keep the quantized copy only as a tied LM head (no `output.weight`).
                let tied = !header.tensors.iter().any(|o| o.name == "output.weight");
                n.saturating_mul(4)
                    .saturating_add(if tied { bytes } else { 0 })
            } else if matches!(t.ty.0, 1 | 30) {
                // F16/BF16 weights are dequantized to f32 as well.
                bytes.saturating_mul(2)
            } else {
                bytes
            };
            weight_bytes = weight_bytes.saturating_add(held);
        }
        ins.info.tensor_count += header.tensors.len();
        file_bytes = file_bytes.saturating_add(header.file_size);
        if first.is_none() {
            first = Some(header);
        }
    }
    let Some(h) = first else {
        return ins;
    };
    if params.is_none() {
        ins.broken.get_or_insert_with(|| {
            "the tensors add up to more parameters than any model has (the header is corrupt)"
                .into()
        });
    }
    let info = &mut ins.info;
    info.parameters = params;
    // Mixture of experts: each token reads the shared weights and `used` of `count` experts.
    info.experts = h.arch_u64("expert_count").filter(|&n| n > 0);
    info.experts_used = h.arch_u64("expert_used_count");
    info.active_parameters = match (params, info.experts, info.experts_used) {
        (Some(p), Some(count), Some(used)) if expert_params > 0 && used <= count => Some(
            p - expert_params.min(p)
                + (expert_params as u128 * used as u128 / count as u128) as u64,
        ),
        _ => None,
    };
    info.weight_bytes = weight_bytes;
    info.architecture = h.architecture().map(str::to_string);
    info.display_name = h
        .get("general.name")
        .and_then(MetaValue::as_str)
        .map(str::to_string);
    info.context_length = h.arch_u64("context_length");
    info.chat_template = matches!(h.get("tokenizer.chat_template"), Some(MetaValue::Str(_)));
    ins.has_tokenizer = matches!(
        h.get("tokenizer.ggml.tokens"),
        Some(MetaValue::Array { .. })
    );
    info.layers = h.arch_u64("block_count");
    let layer_kind = info
        .architecture
        .as_deref()
        .map_or(LayerKind::Attention, LayerKind::of_arch);
    let arch = info.architecture.as_deref().unwrap_or("");
    let kv_meta = h.get(&format!("{arch}.attention.head_count_kv"));
    let split = info
        .layers
        .and_then(|l| layer_split(arch, l, kv_meta, |k| h.arch_u64(k)));
    if let (true, Some((recurrent, attention))) = (layer_kind != LayerKind::Attention, split) {
        info.layer_kind = Some(layer_mix_label(layer_kind, recurrent, attention));
        info.state_bytes = ssm_state_bytes(layer_kind, recurrent, |k| h.arch_u64(k));
    }
    let heads = h.arch_u64("attention.head_count").filter(|&n| n > 0);
    // A per-layer list (a hybrid's, Gemma 4's) gives its first attention layer's count.
    info.kv_heads = attention_kv_heads(kv_meta).or(heads);
    info.head_dim = h.arch_u64("attention.key_length").or_else(|| {
        let embd = h.arch_u64("embedding_length")?;
        embd.checked_div(heads?)
    });
    info.quant = h
        .get("general.file_type")
        .and_then(MetaValue::as_u64)
        .and_then(file_type_label)
        .map(str::to_string)
        .or_else(|| {
            elems_by_type
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(t, _)| t.name())
        });
    if info.architecture.as_deref().is_some_and(is_embedding_arch) {
        ins.kind = ModelKind::Embedding;
    }
    ins.memory = MemoryFacts::new(
        file_bytes,
        ins.info.quant.as_deref(),
        ModelShape::from_metadata(&h.metadata),
    );
    ins
}

/// Why a GGUF tensor's shape cannot be real: its element count overflows, or a quantized
/// tensor's is not a whole number of blocks.
fn impossible_gguf_shape(t: &gguf::TensorInfo) -> Option<String> {
    let dims = || format!("{:?}", t.dims);
    let Some(n) = t.dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)) else {
        return Some(format!(
            "tensor {} has an impossible shape {} (the header is corrupt)",
            t.name,
            dims()
        ));
    };
    match t.ty.block_size() {
        Some(block) if n % block != 0 => Some(format!(
            "tensor {} has {n} elements, not a whole number of {}-element {} blocks (the header is corrupt)",
            t.name,
            block,
            t.ty.name()
        )),
        _ => None,
    }
}

/// Why a safetensors tensor's shape cannot be real: its element count overflows, or its bytes
/// are not what the shape and dtype need (the format requires an exact fit).
fn impossible_st_shape(t: &safetensors::SafeTensor) -> Option<String> {
    let span = t.end - t.begin;
    let Some(n) = t.shape.iter().try_fold(1u64, |a, d| a.checked_mul(*d)) else {
        return Some(format!(
            "tensor {} has an impossible shape {:?} (the header is corrupt)",
            t.name, t.shape
        ));
    };
    let size = safetensors::dtype_size(&t.dtype)?;
    match n.checked_mul(size) {
        Some(need) if need == span => None,
        need => Some(format!(
            "tensor {} of shape {:?} and type {} needs {} bytes but its offsets span {span} (the header is corrupt)",
            t.name,
            t.shape,
            t.dtype,
            need.map_or_else(|| "more than 2^64".to_string(), |n| n.to_string())
        )),
    }
}

/// llama.cpp's `llama_ftype` names, stored as `general.file_type`.
fn file_type_label(ft: u64) -> Option<&'static str> {
    Some(match ft {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K",
        11 => "Q3_K_S",
        12 => "Q3_K_M",
        13 => "Q3_K_L",
        14 => "Q4_K_S",
        15 => "Q4_K_M",
        16 => "Q5_K_S",
        17 => "Q5_K_M",
        18 => "Q6_K",
        19 => "IQ2_XXS",
        20 => "IQ2_XS",
        21 => "Q2_K_S",
        22 => "IQ3_XS",
        23 => "IQ3_XXS",
        24 => "IQ1_S",
        25 => "IQ4_NL",
        26 => "IQ3_S",
        27 => "IQ3_M",
        28 => "IQ2_S",
        29 => "IQ2_M",
        30 => "IQ4_XS",
        31 => "IQ1_M",
        32 => "BF16",
        36 => "TQ1_0",
        37 => "TQ2_0",
        38 => "MXFP4_MOE",
        _ => return None,
    })
}

/// Quant labels recognised in file names, longest first so `Q4_K_M` wins over `Q4_K`.
const NAME_LABELS: &[&str] = &[
    "MXFP4_MOE",
    "IQ2_XXS",
    "IQ3_XXS",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q2_K_S",
    "IQ2_XS",
    "IQ3_XS",
    "IQ4_NL",
    "IQ4_XS",
    "IQ2_S",
    "IQ2_M",
    "IQ3_S",
    "IQ3_M",
    "IQ1_S",
    "IQ1_M",
    "TQ1_0",
    "TQ2_0",
    "MXFP4",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "BF16",
    "F16",
    "F32",
];

/// The quant label written in a GGUF file name (`...-Q4_K_M.gguf`, `....q8_0.gguf`), if any.
pub(crate) fn quant_from_file_name(stem: &str) -> Option<(&'static str, std::ops::Range<usize>)> {
    let upper = stem.to_ascii_uppercase();
    let is_sep = |c: Option<char>| c.is_none_or(|c| matches!(c, '-' | '.' | '_' | ' '));
    for label in NAME_LABELS {
        let mut from = 0;
        while let Some(pos) = upper[from..].find(label) {
            let start = from + pos;
            let end = start + label.len();
            if is_sep(upper[..start].chars().last()) && is_sep(upper[end..].chars().next()) {
                return Some((label, start..end));
            }
            from = start + 1;
        }
    }
    None
}

/// One tensor as a folder's weight files describe it.
struct FolderTensor {
    name: String,
    dtype: String,
    elements: u64,
    bytes: u64,
    /// Why the tensor's shape cannot be right, when the reader can tell.
    shape_error: Option<String>,
}

/// Reads a safetensors model folder: `config.json`, every `*.safetensors` header, the tokenizer
/// config for a chat template.
pub(crate) fn inspect_safetensors(dir: &Path, files: &[PathBuf]) -> Inspection {
    inspect_folder(dir, files, Format::Safetensors, &mut |file, ins| {
        let header = match safetensors::read_header(file) {
            Ok(h) => h,
            Err(e) => {
                ins.broken
                    .get_or_insert_with(|| format!("{}: {e}", file_name(file)));
                return Vec::new();
            }
        };
        let end = header.data_end();
        if end > header.file_size {
            ins.broken.get_or_insert_with(|| {
                format!(
                    "{}: tensor data ends at {} but file is {} (truncated download? delete it and download again)",
                    file_name(file),
                    human_bytes(end),
                    human_bytes(header.file_size)
                )
            });
        }
        header
            .tensors
            .into_iter()
            .map(|t| FolderTensor {
                shape_error: impossible_st_shape(&t),
                elements: t.elements(),
                bytes: t.end - t.begin,
                name: t.name,
                dtype: t.dtype,
            })
            .collect()
    })
}

/// Reads a model folder whose weights are PyTorch `.bin` files: the same facts as for
/// safetensors, from each checkpoint's pickle index (checked against the allow-list).
pub(crate) fn inspect_pytorch(dir: &Path, files: &[PathBuf]) -> Inspection {
    use crate::pytorch::{read_index, PytorchError};
    inspect_folder(
        dir,
        files,
        Format::Pytorch,
        &mut |file, ins| match read_index(file) {
            Ok(list) => list
                .into_iter()
                .map(|t| FolderTensor {
                    name: t.name,
                    dtype: t.dtype.to_string(),
                    elements: t.elements,
                    bytes: t.bytes,
                    shape_error: None,
                })
                .collect(),
            Err(e @ (PytorchError::Refused { .. } | PytorchError::Legacy { .. })) => {
                ins.refused.get_or_insert_with(|| e.to_string());
                Vec::new()
            }
            Err(e) => {
                ins.broken.get_or_insert_with(|| e.to_string());
                Vec::new()
            }
        },
    )
}

fn inspect_folder(
    dir: &Path,
    files: &[PathBuf],
    format: Format,
    read: &mut dyn FnMut(&Path, &mut Inspection) -> Vec<FolderTensor>,
) -> Inspection {
    let mut ins = Inspection {
        format,
        info: ModelInfo::default(),
        kind: ModelKind::Generate,
        broken: None,
        gguf_types: BTreeSet::new(),
        st_dtypes: BTreeSet::new(),
        memory: MemoryFacts::default(),
        has_tokenizer: false,
        refused: None,
    };
    let config = match read_json(&dir.join("config.json")) {
        Ok(c) => c,
        Err(e) => {
            ins.broken = Some(e);
            None
        }
    };
    let cfg_u64 = |key: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(serde_json::Value::as_u64)
    };
    let cfg_str = |key: &str| {
        config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let tied = config
        .as_ref()
        .and_then(|c| c.get("tie_word_embeddings"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);

    let mut params = Some(0u64);
    let mut weight_bytes = 0u64;
    let mut elems_by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for file in files {
        let tensors = read(file, &mut ins);
        ins.info.tensor_count += tensors.len();
        for t in tensors {
            *ins.info.tensor_types.entry(t.dtype.clone()).or_default() += 1;
            ins.st_dtypes.insert(t.dtype.clone());
            weight_bytes = weight_bytes.saturating_add(t.bytes);
            if let Some(why) = &t.shape_error {
                params = None;
                ins.broken
                    .get_or_insert_with(|| format!("{}: {why}", file_name(file)));
            }
            // A tied LM head shares the embedding's storage: count those parameters once.
            if !safetensors::is_float(&t.dtype) || (tied && t.name == "lm_head.weight") {
                continue;
            }
            params = params.and_then(|p| p.checked_add(t.elements));
            let e = elems_by_dtype.entry(t.dtype).or_default();
            *e = e.saturating_add(t.elements);
        }
    }
    if params.is_none() {
        ins.broken.get_or_insert_with(|| {
            "the tensors add up to more parameters than any model has (the header is corrupt)"
                .into()
        });
    }
    let info = &mut ins.info;
    if !files.is_empty() {
        info.parameters = params;
    }
    info.weight_bytes = weight_bytes;
    info.quant = elems_by_dtype
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, _)| d.clone());
    let kv_value_bytes = info
        .quant
        .as_deref()
        .map_or(2, |d| safetensors::dtype_size(d).unwrap_or(4).max(2));
    info.architecture = cfg_str("model_type").or_else(|| {
        config
            .as_ref()
            .and_then(|c| c.get("architectures"))
            .and_then(|a| a.get(0))
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    });
    info.display_name = cfg_str("_name_or_path").filter(|s| !s.is_empty());
    info.context_length = cfg_u64("max_position_embeddings")
        .or_else(|| cfg_u64("n_positions"))
        .or_else(|| cfg_u64("max_seq_len"));
    info.layers = cfg_u64("num_hidden_layers").or_else(|| cfg_u64("n_layer"));
    let heads = cfg_u64("num_attention_heads").or_else(|| cfg_u64("n_head"));
    info.kv_heads = cfg_u64("num_key_value_heads").or(heads);
    info.head_dim = cfg_u64("head_dim").or_else(|| cfg_u64("hidden_size")?.checked_div(heads?));
    info.chat_template = has_chat_template(dir);
    ins.has_tokenizer = dir.join("tokenizer.json").is_file();

    let st_marker = SENTENCE_TRANSFORMERS_MARKERS
        .iter()
        .any(|m| dir.join(m).is_file());
    if st_marker || info.architecture.as_deref().is_some_and(is_embedding_arch) {
        ins.kind = ModelKind::Embedding;
    }
    let shape = match (info.layers, info.kv_heads, info.head_dim) {
        (Some(l), Some(h), Some(d)) => Some(ModelShape {
            kv_bytes_per_token: kv_per_token(l, h, d, kv_value_bytes),
            context_length: info.context_length,
            // The engine looks tokens up in the stored embedding; no extra copy.
            embedding_f32_bytes: 0,
            state_bytes: 0,
            windowed: None,
        }),
        _ => None,
    };
    // safetensors weights load at their stored width.
    ins.memory = MemoryFacts {
        file_bytes: weight_bytes,
        widened: false,
        shape,
    };
    ins
}

fn has_chat_template(dir: &Path) -> bool {
    if dir.join("chat_template.jinja").is_file() || dir.join("chat_template.json").is_file() {
        return true;
    }
    matches!(
        read_json(&dir.join("tokenizer_config.json")),
        Ok(Some(v)) if v.get("chat_template").is_some_and(|t| !t.is_null())
    )
}

/// `Ok(None)` when the file does not exist; `Err` with a message when it is not valid JSON.
fn read_json(path: &Path) -> Result<Option<serde_json::Value>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: cannot read: {e}", file_name(path))),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: not valid JSON ({e})", file_name(path)))
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
