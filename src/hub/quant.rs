//! GGUF quantisation names, multi-part grouping, memory fit and the choice of files to pull.

use std::collections::BTreeMap;

use super::sysmem::MemInfo;
use super::types::{ModelInfo, RepoFile};
use crate::library::memory::{self, MemoryFacts, ModelShape};
use crate::library::ModelKind;

/// GGUF quantisation types as they appear in file names.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quant {
    IQ1_S,
    IQ1_M,
    IQ2_XXS,
    IQ2_XS,
    IQ2_S,
    IQ2_M,
    Q2_K,
    IQ3_XXS,
    IQ3_XS,
    IQ3_S,
    Q3_K_S,
    IQ3_M,
    Q3_K_M,
    Q3_K_L,
    IQ4_XS,
    IQ4_NL,
    Q4_0,
    Q4_K_S,
    Q4_K_M,
    Q4_1,
    Q5_0,
    Q5_K_S,
    Q5_K_M,
    Q5_1,
    Q6_K,
    Q8_0,
    F16,
    BF16,
    F32,
}

const ALL: [Quant; 29] = [
    Quant::IQ1_S,
    Quant::IQ1_M,
    Quant::IQ2_XXS,
    Quant::IQ2_XS,
    Quant::IQ2_S,
    Quant::IQ2_M,
    Quant::Q2_K,
    Quant::IQ3_XXS,
    Quant::IQ3_XS,
    Quant::IQ3_S,
    Quant::Q3_K_S,
    Quant::IQ3_M,
    Quant::Q3_K_M,
    Quant::Q3_K_L,
    Quant::IQ4_XS,
    Quant::IQ4_NL,
    Quant::Q4_0,
    Quant::Q4_K_S,
    Quant::Q4_K_M,
    Quant::Q4_1,
    Quant::Q5_0,
    Quant::Q5_K_S,
    Quant::Q5_K_M,
    Quant::Q5_1,
    Quant::Q6_K,
    Quant::Q8_0,
    Quant::F16,
    Quant::BF16,
    Quant::F32,
];

impl Quant {
    /// Every known quant, smallest first.
    pub fn all() -> &'static [Quant] {
        &ALL
    }

    /// The canonical name, e.g. `Q4_K_M`.
    pub fn name(self) -> &'static str {
        match self {
            Quant::IQ1_S => "IQ1_S",
            Quant::IQ1_M => "IQ1_M",
            Quant::IQ2_XXS => "IQ2_XXS",
            Quant::IQ2_XS => "IQ2_XS",
            Quant::IQ2_S => "IQ2_S",
            Quant::IQ2_M => "IQ2_M",
            Quant::Q2_K => "Q2_K",
            Quant::IQ3_XXS => "IQ3_XXS",
            Quant::IQ3_XS => "IQ3_XS",
            Quant::IQ3_S => "IQ3_S",
            Quant::Q3_K_S => "Q3_K_S",
            Quant::IQ3_M => "IQ3_M",
            Quant::Q3_K_M => "Q3_K_M",
            Quant::Q3_K_L => "Q3_K_L",
            Quant::IQ4_XS => "IQ4_XS",
            Quant::IQ4_NL => "IQ4_NL",
            Quant::Q4_0 => "Q4_0",
            Quant::Q4_K_S => "Q4_K_S",
            Quant::Q4_K_M => "Q4_K_M",
            Quant::Q4_1 => "Q4_1",
            Quant::Q5_0 => "Q5_0",
            Quant::Q5_K_S => "Q5_K_S",
            Quant::Q5_K_M => "Q5_K_M",
            Quant::Q5_1 => "Q5_1",
            Quant::Q6_K => "Q6_K",
            Quant::Q8_0 => "Q8_0",
            Quant::F16 => "F16",
            Quant::BF16 => "BF16",
            Quant::F32 => "F32",
        }
    }

    /// Approximate bits per weight (llama.cpp's figures), for sorting and size hints.
    pub fn bits_per_weight(self) -> f32 {
        match self {
            Quant::IQ1_S => 1.56,
            Quant::IQ1_M => 1.75,
            Quant::IQ2_XXS => 2.06,
            Quant::IQ2_XS => 2.31,
            Quant::IQ2_S => 2.5,
            Quant::IQ2_M => 2.7,
            Quant::Q2_K => 2.96,
            Quant::IQ3_XXS => 3.06,
            Quant::IQ3_XS => 3.3,
            Quant::IQ3_S => 3.44,
            Quant::Q3_K_S => 3.5,
            Quant::IQ3_M => 3.66,
            Quant::Q3_K_M => 3.91,
            Quant::Q3_K_L => 4.27,
            Quant::IQ4_XS => 4.25,
            Quant::IQ4_NL => 4.5,
            Quant::Q4_0 => 4.55,
            Quant::Q4_K_S => 4.58,
            Quant::Q4_K_M => 4.89,
            Quant::Q4_1 => 5.0,
            Quant::Q5_0 => 5.5,
            Quant::Q5_K_S => 5.54,
            Quant::Q5_K_M => 5.69,
            Quant::Q5_1 => 6.0,
            Quant::Q6_K => 6.56,
            Quant::Q8_0 => 8.5,
            Quant::F16 | Quant::BF16 => 16.0,
            Quant::F32 => 32.0,
        }
    }

    /// Parses a quant name given by a user (`q4_k_m`, `Q8_0`, `f16`).
    pub fn parse(s: &str) -> Option<Quant> {
        let up = s.trim().to_ascii_uppercase();
        ALL.iter().copied().find(|q| q.name() == up)
    }

    /// Finds the quant in a file name such as `Llama-3-8B-Instruct.Q4_K_M.gguf` or
    /// `gemma-3-1b-it-f16.gguf`. The match must stand alone (no letter or digit on either side),
    /// so `BF16` is not read as `F16` and `IQ4_XS` not as `Q4_..`; the longest match wins.
    pub fn from_file_name(name: &str) -> Option<Quant> {
        // Some repos name the folder after the quant (`Q8_0/model-00001-of-00002.gguf`).
        let file = name.rsplit('/').next().unwrap_or(name);
        Quant::find_in(file).or_else(|| Quant::find_in(name))
    }

    fn find_in(text: &str) -> Option<Quant> {
        let up = text.to_ascii_uppercase();
        let bytes = up.as_bytes();
        let mut best: Option<Quant> = None;
        for q in ALL {
            let n = q.name();
            let mut from = 0;
            while let Some(pos) = up[from..].find(n) {
                let start = from + pos;
                let end = start + n.len();
                let before_ok = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
                let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
                // `Q4_K` followed by `_M` is the longer name, not this one.
                let after_suffix = end < bytes.len()
                    && bytes[end] == b'_'
                    && bytes.get(end + 1).is_some_and(|b| b.is_ascii_alphabetic());
                if before_ok
                    && after_ok
                    && !after_suffix
                    && best.is_none_or(|b| b.name().len() < n.len())
                {
                    best = Some(q);
                }
                from = start + 1;
            }
        }
        best
    }
}

impl std::fmt::Display for Quant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `(part, of)` from a split GGUF name such as `model-Q8_0-00002-of-00003.gguf`.
pub fn split_part(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".gguf")?;
    let (head, of) = stem.rsplit_once("-of-")?;
    let part = head.rsplit('-').next()?;
    if part.len() != 5 || of.len() != 5 {
        return None;
    }
    Some((part.parse().ok()?, of.parse().ok()?))
}

/// One downloadable GGUF model: a single file or all parts of a split file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufGroup {
    /// Name without the `-0000N-of-0000M` suffix, e.g. `dir/model-Q8_0.gguf`.
    pub name: String,
    pub quant: Option<Quant>,
    /// Files in part order.
    pub files: Vec<RepoFile>,
    /// Sum of the known sizes.
    pub total_size: u64,
    /// False when some parts of a split model are missing from the listing.
    pub complete: bool,
    /// A multimodal projector (`mmproj-*.gguf`), not a language model by itself.
    pub is_projector: bool,
}

/// Groups the `.gguf` files of a repo: split parts together, sorted by quant then name.
pub fn group_gguf(files: &[RepoFile]) -> Vec<GgufGroup> {
    // name → (declared part count, (part number, file))
    type Parts = (Option<u32>, Vec<(u32, RepoFile)>);
    let mut groups: BTreeMap<String, Parts> = BTreeMap::new();
    for f in files {
        if !f.path.to_ascii_lowercase().ends_with(".gguf") {
            continue;
        }
        let (key, part, of) = match split_part(&f.path) {
            Some((p, of)) => {
                let stem = f.path.strip_suffix(".gguf").unwrap_or(&f.path);
                let cut = stem.len() - "-00001-of-00003".len();
                (format!("{}.gguf", &stem[..cut]), p, Some(of))
            }
            None => (f.path.clone(), 1, None),
        };
        let entry = groups.entry(key).or_insert((of, Vec::new()));
        entry.1.push((part, f.clone()));
    }
    let mut out: Vec<GgufGroup> = groups
        .into_iter()
        .map(|(name, (of, mut parts))| {
            parts.sort_by_key(|(p, _)| *p);
            let complete = match of {
                Some(n) => {
                    parts.len() == n as usize
                        && parts
                            .iter()
                            .enumerate()
                            .all(|(i, (p, _))| *p == i as u32 + 1)
                }
                None => true,
            };
            let files: Vec<RepoFile> = parts.into_iter().map(|(_, f)| f).collect();
            let base = name
                .rsplit('/')
                .next()
                .unwrap_or(&name)
                .to_ascii_lowercase();
            GgufGroup {
                quant: Quant::from_file_name(&name),
                total_size: files.iter().filter_map(|f| f.size).sum(),
                complete,
                is_projector: base.starts_with("mmproj"),
                files,
                name,
            }
        })
        .collect();
    out.sort_by(|a, b| (a.is_projector, a.quant, &a.name).cmp(&(b.is_projector, b.quant, &b.name)));
    out
}

/// Whether a model file is likely to run in this machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Fits in the memory available now, with room to spare.
    Fits,
    /// Does not fit the GPU's free memory, but its first layers do and the rest fit the RAM:
    /// the engine runs it split between the GPU and the CPU (slower than on the GPU alone).
    Split,
    /// Fits in total RAM but not comfortably in what is free now: close other programs first.
    Tight,
    /// Needs more than the machine's total RAM.
    WontFit,
}

/// A memory estimate against the machine, with the numbers behind the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitReport {
    pub fit: Fit,
    pub need_bytes: u64,
    /// The context the estimate includes a KV cache for; `None` when the model's shape is not
    /// known yet, so the estimate covers the weights only (a lower bound).
    pub context: Option<u64>,
    pub available_bytes: u64,
    pub total_bytes: u64,
}

impl FitReport {
    /// For a table cell: "4.9 GB · fits", "≥4.4 GB · tight" (weights only), "33 GB · won't fit".
    pub fn short(&self) -> String {
        let verdict = match self.fit {
            Fit::Fits => "fits",
            Fit::Split => "split",
            Fit::Tight => "tight",
            Fit::WontFit => "won't fit",
        };
        let bound = if self.context.is_some() { "" } else { "≥" };
        format!("{bound}{} · {verdict}", human_bytes(self.need_bytes))
    }

    /// e.g. "needs 4.9 GB with a 4096-token context, 12.1 GB free of 16.0 GB: fits".
    pub fn describe(&self) -> String {
        let split;
        let verdict = match self.fit {
            Fit::Fits => "fits",
            Fit::Split => {
                let share = (room(self.available_bytes) as f64 / self.need_bytes.max(1) as f64
                    * 100.0)
                    .floor();
                split = format!(
                    "about {share:.0} % of it fits the GPU, the CPU runs the rest (slower)"
                );
                &split
            }
            Fit::Tight => "tight: close other programs first",
            Fit::WontFit => "won't fit in this machine's memory",
        };
        let need = match self.context {
            Some(ctx) => format!(
                "needs {} with a {ctx}-token context",
                human_bytes(self.need_bytes)
            ),
            None => format!(
                "needs at least {} (weights only)",
                human_bytes(self.need_bytes)
            ),
        };
        format!(
            "{need}, {} free of {}: {verdict}",
            human_bytes(self.available_bytes),
            human_bytes(self.total_bytes)
        )
    }
}

/// The memory a GGUF download of `file_bytes` (all parts) in quant `quant` needs, from the one
/// estimator the Library uses ([`crate::library::memory`]), and the context it assumes.
pub fn gguf_need(
    file_bytes: u64,
    quant: Option<Quant>,
    shape: Option<ModelShape>,
) -> (u64, Option<u64>) {
    let facts = MemoryFacts::new(file_bytes, quant.map(Quant::name), shape);
    let need = memory::estimate(&facts, ModelKind::Generate, memory::DEFAULT_CONTEXT);
    (need, shape.map(|s| memory::context_for(s.context_length)))
}

/// What of `available` bytes a model may take: 15 % stays free for the rest of the system.
fn room(available: u64) -> u64 {
    available / 100 * 85
}

/// Compares a need of `need_bytes` (with a KV cache for `context` tokens, if known) with `mem`.
/// "Fits" keeps 15% of the available memory free for the rest of the system; on a GPU, a model
/// whose remainder fits the RAM the same way is "split".
pub fn fit_for(need_bytes: u64, context: Option<u64>, mem: MemInfo) -> FitReport {
    let fits_split = |host: u64| need_bytes <= room(mem.available_bytes) + room(host);
    let fit = if need_bytes <= room(mem.available_bytes) {
        Fit::Fits
    } else if mem.host_available_bytes.is_some_and(fits_split) {
        Fit::Split
    } else if need_bytes <= mem.total_bytes {
        Fit::Tight
    } else {
        Fit::WontFit
    };
    FitReport {
        fit,
        need_bytes,
        context,
        available_bytes: mem.available_bytes,
        total_bytes: mem.total_bytes,
    }
}

/// Sizes in decimal units, as the Hub shows them.
pub use crate::library::human::bytes as human_bytes;

/// What the user asked to pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullRequest {
    /// Exact files (`--file`); when set, only these are pulled.
    pub files: Vec<String>,
    /// GGUF quant (`--quant`); when unset, a sensible default is chosen.
    pub quant: Option<String>,
}

/// Why no file set could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("`{file}` is not in {repo}; files there: {available}")]
    NoSuchFile {
        repo: String,
        file: String,
        available: String,
    },
    #[error("unknown quantization `{quant}`; {repo} has: {available}")]
    NoSuchQuant {
        repo: String,
        quant: String,
        available: String,
    },
    #[error(
        "the {quant} files of {repo} are incomplete (some parts of the split model are missing)"
    )]
    IncompleteSplit { repo: String, quant: String },
    #[error(
        "{repo} has no GGUF, safetensors or PyTorch weights; choose files with --file (files: {available})"
    )]
    NoWeights { repo: String, available: String },
}

/// Small files a GGUF model may need next to it.
const GGUF_COMPANIONS: [&str; 4] = [
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
];

/// Files a safetensors model needs besides its weights.
const SAFETENSORS_COMPANIONS: [&str; 12] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
];

/// Index of a sharded PyTorch checkpoint (`pytorch_model-0000N-of-0000M.bin`).
const PYTORCH_INDEX: &str = "pytorch_model.bin.index.json";

/// README and licence files are pulled only below this size.
const SMALL_DOC_LIMIT: u64 = 1024 * 1024;

/// Preference when no quant is named: a good quality/size balance first.
const DEFAULT_QUANTS: [Quant; 8] = [
    Quant::Q4_K_M,
    Quant::Q4_K_S,
    Quant::Q5_K_M,
    Quant::Q4_0,
    Quant::Q5_K_S,
    Quant::Q6_K,
    Quant::Q8_0,
    Quant::IQ4_XS,
];

/// Chooses what to download: the requested files, one GGUF quant (all parts) with its small
/// companions, a safetensors set, or (when there is no safetensors) a PyTorch `.bin` set. Never
/// every file blindly.
pub fn select_files(info: &ModelInfo, req: &PullRequest) -> Result<Vec<RepoFile>, SelectError> {
    let list = || {
        let mut names: Vec<&str> = info.files.iter().map(|f| f.path.as_str()).collect();
        names.truncate(30);
        names.join(", ")
    };
    if !req.files.is_empty() {
        return req
            .files
            .iter()
            .map(|want| {
                info.files
                    .iter()
                    .find(|f| &f.path == want)
                    .cloned()
                    .ok_or_else(|| SelectError::NoSuchFile {
                        repo: info.id.clone(),
                        file: want.clone(),
                        available: list(),
                    })
            })
            .collect();
    }
    let groups: Vec<GgufGroup> = group_gguf(&info.files)
        .into_iter()
        .filter(|g| !g.is_projector)
        .collect();
    let docs = info.files.iter().filter(|f| is_small_doc(f)).cloned();
    if !groups.is_empty() {
        let available = || {
            groups
                .iter()
                .map(|g| {
                    g.quant
                        .map(|q| q.name().to_string())
                        .unwrap_or(g.name.clone())
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let chosen = match &req.quant {
            Some(q) => {
                let wanted = Quant::parse(q);
                groups
                    .iter()
                    .find(|g| wanted.is_some() && g.quant == wanted)
                    .or_else(|| groups.iter().find(|g| g.name.eq_ignore_ascii_case(q)))
                    .ok_or_else(|| SelectError::NoSuchQuant {
                        repo: info.id.clone(),
                        quant: q.clone(),
                        available: available(),
                    })?
            }
            None => DEFAULT_QUANTS
                .iter()
                .find_map(|q| groups.iter().find(|g| g.quant == Some(*q) && g.complete))
                .or_else(|| groups.iter().find(|g| g.complete))
                .unwrap_or(&groups[0]),
        };
        if !chosen.complete {
            return Err(SelectError::IncompleteSplit {
                repo: info.id.clone(),
                quant: chosen.name.clone(),
            });
        }
        let mut out = chosen.files.clone();
        out.extend(
            info.files
                .iter()
                .filter(|f| GGUF_COMPANIONS.contains(&f.path.as_str()))
                .cloned(),
        );
        out.extend(docs);
        return Ok(out);
    }
    let weights: Vec<&RepoFile> = info
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors") && !f.path.contains('/'))
        .collect();
    if !weights.is_empty() {
        let mut out: Vec<RepoFile> = weights.into_iter().cloned().collect();
        out.extend(
            info.files
                .iter()
                .filter(|f| SAFETENSORS_COMPANIONS.contains(&f.path.as_str()))
                .cloned(),
        );
        out.extend(docs);
        return Ok(out);
    }
    if let Some(weights) = pytorch_set(info)? {
        let mut out = weights;
        out.extend(
            info.files
                .iter()
                .filter(|f| {
                    SAFETENSORS_COMPANIONS.contains(&f.path.as_str()) || f.path == PYTORCH_INDEX
                })
                .cloned(),
        );
        out.extend(docs);
        return Ok(out);
    }
    Err(SelectError::NoWeights {
        repo: info.id.clone(),
        available: list(),
    })
}

/// The PyTorch weights of a repo: `pytorch_model.bin`, or every shard of a split checkpoint
/// (which needs its index). Training state (`optimizer.bin`, `training_args.bin`) is not weights.
pub fn pytorch_set(info: &ModelInfo) -> Result<Option<Vec<RepoFile>>, SelectError> {
    let top = |f: &&RepoFile| !f.path.contains('/');
    if let Some(single) = info
        .files
        .iter()
        .filter(top)
        .find(|f| f.path == "pytorch_model.bin")
    {
        return Ok(Some(vec![single.clone()]));
    }
    let mut shards: Vec<(u32, u32, &RepoFile)> = info
        .files
        .iter()
        .filter(top)
        .filter(|f| crate::pytorch::is_weights_name(&f.path))
        .filter_map(|f| {
            let (i, n) = f
                .path
                .strip_prefix("pytorch_model-")?
                .strip_suffix(".bin")?
                .split_once("-of-")?;
            Some((i.parse().ok()?, n.parse().ok()?, f))
        })
        .collect();
    if shards.is_empty() {
        return Ok(None);
    }
    shards.sort_by_key(|(i, _, _)| *i);
    let total = shards[0].1;
    let complete = shards.len() as u32 == total
        && shards
            .iter()
            .enumerate()
            .all(|(k, (i, n, _))| *i == k as u32 + 1 && *n == total)
        && info.files.iter().any(|f| f.path == PYTORCH_INDEX);
    if !complete {
        return Err(SelectError::IncompleteSplit {
            repo: info.id.clone(),
            quant: "PyTorch".into(),
        });
    }
    Ok(Some(
        shards.into_iter().map(|(_, _, f)| f.clone()).collect(),
    ))
}

fn is_small_doc(f: &RepoFile) -> bool {
    if f.path.contains('/') {
        return false;
    }
    let lower = f.path.to_ascii_lowercase();
    let doc = lower == "readme.md" || lower.starts_with("license") || lower.starts_with("licence");
    doc && f.size.is_some_and(|s| s <= SMALL_DOC_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::types::{Gated, LfsInfo};

    fn file(path: &str, size: u64) -> RepoFile {
        RepoFile {
            path: path.into(),
            size: Some(size),
            blob_id: Some("0".repeat(40)),
            lfs: path.ends_with(".gguf").then(|| LfsInfo {
                sha256: "a".repeat(64),
                size,
            }),
        }
    }

    fn info(files: Vec<RepoFile>) -> ModelInfo {
        ModelInfo {
            id: "org/m".into(),
            sha: None,
            author: None,
            private: false,
            gated: Gated::No,
            disabled: false,
            downloads: None,
            likes: None,
            tags: vec![],
            pipeline_tag: None,
            library_name: None,
            license: None,
            last_modified: None,
            files,
            rejected_paths: vec![],
        }
    }

    #[test]
    fn recognises_quants_in_names() {
        let cases = [
            ("Llama-3-8B-Instruct.Q4_K_M.gguf", Some(Quant::Q4_K_M)),
            ("gemma-3-1b-it-f16.gguf", Some(Quant::F16)),
            ("model-bf16.gguf", Some(Quant::BF16)),
            ("model.IQ4_XS.gguf", Some(Quant::IQ4_XS)),
            ("model-iq2_xxs.gguf", Some(Quant::IQ2_XXS)),
            ("Q8_0/model-Q8_0-00001-of-00002.gguf", Some(Quant::Q8_0)),
            ("SmolLM2-135M-Instruct.Q4_1.gguf", Some(Quant::Q4_1)),
            ("model-q3_k_l.gguf", Some(Quant::Q3_K_L)),
            ("model-Q2_K.gguf", Some(Quant::Q2_K)),
            ("model.gguf", None),
            ("Q5_K_M/model-00001-of-00002.gguf", Some(Quant::Q5_K_M)),
            ("XQ4_0.gguf", None),
        ];
        for (name, want) in cases {
            assert_eq!(Quant::from_file_name(name), want, "{name}");
        }
        assert_eq!(Quant::parse("q5_k_s"), Some(Quant::Q5_K_S));
        assert_eq!(Quant::parse("Q9"), None);
    }

    #[test]
    fn groups_split_files() {
        let files = vec![
            file("m-Q8_0-00002-of-00002.gguf", 20),
            file("m-Q8_0-00001-of-00002.gguf", 10),
            file("m-Q4_K_M.gguf", 7),
            file("m-Q2_K-00001-of-00003.gguf", 1),
            file("mmproj-m-f16.gguf", 3),
            file("README.md", 5),
        ];
        let g = group_gguf(&files);
        assert_eq!(g.len(), 4);
        let q8 = g.iter().find(|g| g.quant == Some(Quant::Q8_0)).unwrap();
        assert_eq!(q8.name, "m-Q8_0.gguf");
        assert_eq!(q8.total_size, 30);
        assert!(q8.complete);
        assert_eq!(q8.files[0].path, "m-Q8_0-00001-of-00002.gguf");
        let q2 = g.iter().find(|g| g.quant == Some(Quant::Q2_K)).unwrap();
        assert!(!q2.complete);
        assert!(g.last().unwrap().is_projector);
        assert_eq!(split_part("x-00003-of-00010.gguf"), Some((3, 10)));
        assert_eq!(split_part("x.gguf"), None);
    }

    #[test]
    fn fit_levels() {
        let gb = 1_000_000_000;
        let mem = MemInfo {
            total_bytes: 16 * gb,
            available_bytes: 8 * gb,
            host_available_bytes: None,
        };
        let need = |b| gguf_need(b, Some(Quant::Q4_K_M), None).0;
        assert_eq!(fit_for(need(2 * gb), None, mem).fit, Fit::Fits);
        assert_eq!(fit_for(need(9 * gb), None, mem).fit, Fit::Tight);
        assert_eq!(fit_for(need(20 * gb), None, mem).fit, Fit::WontFit);
        let r = fit_for(need(2 * gb), None, mem);
        assert!(r.need_bytes > 2 * gb);
        assert!(
            r.describe().contains("8.0 GB free of 16.0 GB"),
            "{}",
            r.describe()
        );
        assert!(r.describe().contains("at least"), "{}", r.describe());
        let shape = ModelShape {
            kv_bytes_per_token: 100_000,
            context_length: Some(2048),
            embedding_f32_bytes: 0,
            state_bytes: 0,
            windowed: None,
        };
        let (with_kv, ctx) = gguf_need(2 * gb, Some(Quant::Q4_K_M), Some(shape));
        assert_eq!(ctx, Some(2048));
        assert_eq!(with_kv, need(2 * gb) + 100_000 * 2048 * 11 / 10);
        assert!(fit_for(with_kv, ctx, mem)
            .describe()
            .contains("2048-token context"));

        // A GPU with 8 GB free and 32 GB of RAM beside it: what does not fit the GPU runs split
        // while the rest fits the RAM.
        let gpu = MemInfo {
            host_available_bytes: Some(32 * gb),
            ..mem
        };
        assert_eq!(fit_for(6 * gb, None, gpu).fit, Fit::Fits);
        let r = fit_for(20 * gb, Some(4096), gpu);
        assert_eq!(r.fit, Fit::Split);
        assert_eq!(r.short(), "20.0 GB · split");
        assert!(
            r.describe()
                .contains("about 34 % of it fits the GPU, the CPU runs the rest"),
            "{}",
            r.describe()
        );
        assert_eq!(fit_for(40 * gb, None, gpu).fit, Fit::WontFit);
    }

    #[test]
    fn selects_one_quant_with_companions() {
        let i = info(vec![
            file("m-Q8_0-00001-of-00002.gguf", 10),
            file("m-Q8_0-00002-of-00002.gguf", 10),
            file("m-Q4_K_M.gguf", 7),
            file("m-Q2_K.gguf", 4),
            file("config.json", 1),
            file("README.md", 5),
            file(".gitattributes", 5),
            file("big-notes.md", 5),
        ]);
        let names = |v: Vec<RepoFile>| v.into_iter().map(|f| f.path).collect::<Vec<_>>();
        let def = select_files(&i, &PullRequest::default()).unwrap();
        assert_eq!(names(def), ["m-Q4_K_M.gguf", "config.json", "README.md"]);
        let q8 = PullRequest {
            quant: Some("q8_0".into()),
            ..Default::default()
        };
        assert_eq!(
            names(select_files(&i, &q8).unwrap()),
            [
                "m-Q8_0-00001-of-00002.gguf",
                "m-Q8_0-00002-of-00002.gguf",
                "config.json",
                "README.md"
            ]
        );
        let bad = PullRequest {
            quant: Some("Q6_K".into()),
            ..Default::default()
        };
        let e = select_files(&i, &bad).unwrap_err().to_string();
        assert!(e.contains("Q4_K_M") && e.contains("Q8_0"), "{e}");
        let exact = PullRequest {
            files: vec!["config.json".into()],
            ..Default::default()
        };
        assert_eq!(names(select_files(&i, &exact).unwrap()), ["config.json"]);
    }

    #[test]
    fn selects_safetensors_set() {
        let i = info(vec![
            file("model-00001-of-00002.safetensors", 10),
            file("model-00002-of-00002.safetensors", 10),
            file("model.safetensors.index.json", 1),
            file("config.json", 1),
            file("tokenizer.json", 1),
            file("pytorch_model.bin", 10),
            file("onnx/model.onnx", 10),
        ]);
        let got: Vec<String> = select_files(&i, &PullRequest::default())
            .unwrap()
            .into_iter()
            .map(|f| f.path)
            .collect();
        assert_eq!(
            got,
            [
                "model-00001-of-00002.safetensors",
                "model-00002-of-00002.safetensors",
                "model.safetensors.index.json",
                "config.json",
                "tokenizer.json",
            ]
        );
        let none = info(vec![file("README.md", 1), file("onnx/model.onnx", 1)]);
        assert!(matches!(
            select_files(&none, &PullRequest::default()),
            Err(SelectError::NoWeights { .. })
        ));
    }

    #[test]
    fn selects_pytorch_weights_when_there_is_no_safetensors() {
        let paths = |i: &ModelInfo| -> Vec<String> {
            select_files(i, &PullRequest::default())
                .unwrap()
                .into_iter()
                .map(|f| f.path)
                .collect()
        };
        let single = info(vec![
            file("pytorch_model.bin", 10),
            file("training_args.bin", 1),
            file("config.json", 1),
            file("vocab.txt", 1),
            file("tf_model.h5", 10),
            file("README.md", 1),
        ]);
        assert_eq!(
            paths(&single),
            ["pytorch_model.bin", "config.json", "vocab.txt", "README.md"]
        );
        let sharded = info(vec![
            file("pytorch_model-00002-of-00002.bin", 10),
            file("pytorch_model-00001-of-00002.bin", 10),
            file("pytorch_model.bin.index.json", 1),
            file("optimizer.bin", 10),
            file("tokenizer.json", 1),
        ]);
        assert_eq!(
            paths(&sharded),
            [
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
                "pytorch_model.bin.index.json",
                "tokenizer.json",
            ]
        );
        let missing_part = info(vec![
            file("pytorch_model-00001-of-00003.bin", 10),
            file("pytorch_model-00003-of-00003.bin", 10),
            file("pytorch_model.bin.index.json", 1),
        ]);
        assert!(matches!(
            select_files(&missing_part, &PullRequest::default()),
            Err(SelectError::IncompleteSplit { .. })
        ));
        let only_training_state = info(vec![file("optimizer.bin", 10)]);
        assert!(matches!(
            select_files(&only_training_state, &PullRequest::default()),
            Err(SelectError::NoWeights { .. })
        ));
    }
}
