//! Local model inventory.
//!
//! The library never copies weights. It lists what is already on disk:
//! - our own store, which is the Hugging Face cache (`$HF_HOME/hub`, shared with Python tools);
//! - other apps' stores, read-only: Ollama manifests and LM Studio folders;
//! - folders the user adds in the config (`model_dirs`) and paths imported by reference.
//!
//! Everything it knows about a model comes from headers (GGUF header, safetensors header, the
//! pickle index of a PyTorch `.bin`, `config.json`), so a scan of hundreds of models takes milliseconds. [`Library::scan`] is a
//! plain function of the roots: the UI calls it on a background thread (see [`scan_in_background`])
//! and again whenever a download finishes.

mod aliases;
mod delete;
mod error;
mod folders;
pub mod gguf;
mod hf_cache;
pub mod human;
mod imports;
mod inspect;
pub mod memory;
mod ollama;
mod resolve;
pub mod safetensors;
mod support;
mod verify;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

pub use aliases::{add_alias, read_aliases, remove_alias, Alias};
pub use delete::{DeletePlan, Removal};
pub use error::LibraryError;
pub use imports::{import, read_imports, ImportRecord};
pub use memory::DEFAULT_CONTEXT;
pub use support::{SUPPORTED_GGUF_ARCHS, SUPPORTED_SAFETENSORS_ARCHS};
pub use verify::{file_matches, verify, FileCheck, FileVerdict, VerifyReport};

/// Whether a query can only mean a file path (`/…`, `./…`, `../…`, `~…`, a backslash).
pub fn looks_like_path(query: &str) -> bool {
    resolve::explicit_path(query.trim())
}

/// Where to look for models. Every root is injectable so tests use temp folders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryRoots {
    /// The Hugging Face hub cache (`$HF_HOME/hub`): our own store.
    pub hf_hub: PathBuf,
    /// Ollama's models folder (holds `manifests/` and `blobs/`), if present.
    pub ollama: Option<PathBuf>,
    /// LM Studio model folders (`<root>/<publisher>/<repo>/*.gguf`).
    pub lmstudio: Vec<PathBuf>,
    /// Folders from the config's `model_dirs`.
    pub extra: Vec<PathBuf>,
    /// The JSON list of paths imported by reference.
    pub imports_file: PathBuf,
}

impl LibraryRoots {
    /// The roots for a user: the HF cache under `hf_home`, Ollama and LM Studio where they exist
    /// (Ollama honours `$OLLAMA_MODELS`), the configured folders, and `data_dir/imports.json`.
    pub fn detect(hf_home: &Path, data_dir: &Path, model_dirs: &[PathBuf]) -> Self {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let ollama = std::env::var_os("OLLAMA_MODELS")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".ollama/models")))
            .filter(|p| p.join("manifests").is_dir());
        let lmstudio = home
            .iter()
            .flat_map(|h| {
                [
                    h.join(".lmstudio/models"),
                    h.join(".cache/lm-studio/models"),
                ]
            })
            .filter(|p| p.is_dir())
            .collect();
        LibraryRoots {
            hf_hub: hf_home.join("hub"),
            ollama,
            lmstudio,
            extra: model_dirs.to_vec(),
            imports_file: data_dir.join("imports.json"),
        }
    }

    /// The roots the loaded configuration names: its `paths.hf_home`, data folder and
    /// `paths.model_dirs`.
    pub fn from_config(loaded: &crate::config::Loaded) -> Self {
        Self::detect(
            &loaded.hf_home(),
            &loaded.dirs.data_dir,
            &loaded.model_dirs(),
        )
    }
}

/// Which store a model was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    HfCache,
    Ollama,
    Lmstudio,
    Folder,
    Import,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::HfCache => "hf-cache",
            Source::Ollama => "ollama",
            Source::Lmstudio => "lmstudio",
            Source::Folder => "folder",
            Source::Import => "import",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Gguf,
    Safetensors,
    /// PyTorch `pytorch_model.bin` weights (a zip holding a pickled state dict).
    Pytorch,
}

impl Format {
    pub fn label(self) -> &'static str {
        match self {
            Format::Gguf => "gguf",
            Format::Safetensors => "safetensors",
            Format::Pytorch => "pytorch",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    Generate,
    Embedding,
}

/// Whether Influence's engine (candle 0.11.1) can run a model.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Runnable {
    Yes,
    /// Runs, but these tensor types have no hand-written candle kernel and decode several times
    /// slower per byte than Q4_0/Q8_0/K-quants.
    SlowPath {
        types: Vec<String>,
    },
    No {
        reason: String,
    },
}

impl Runnable {
    pub fn can_run(&self) -> bool {
        !matches!(self, Runnable::No { .. })
    }
    /// Short form for tables: `yes`, `slow`, `no`.
    pub fn short(&self) -> &'static str {
        match self {
            Runnable::Yes => "yes",
            Runnable::SlowPath { .. } => "slow",
            Runnable::No { .. } => "no",
        }
    }
}

/// The hash a store recorded for a file, used by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "algo", content = "hex", rename_all = "kebab-case")]
pub enum FileHash {
    Sha256(String),
    /// Git blob sha1 (`"blob {len}\0" + content`): HF cache names non-LFS blobs this way.
    GitSha1(String),
}

/// One file that belongs to a model.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFile {
    /// The path as the store presents it (an HF snapshot entry, an Ollama blob, a plain file).
    pub path: PathBuf,
    /// Where the bytes are (the HF blob the snapshot symlink points to; else `path`).
    pub blob: PathBuf,
    /// Size in bytes; 0 when missing.
    pub size: u64,
    pub exists: bool,
    pub hash: Option<FileHash>,
    #[serde(serialize_with = "human::serialize_time")]
    pub modified: Option<SystemTime>,
}

impl ModelFile {
    /// Stats `blob` (following links) to fill in size, existence and time.
    pub(crate) fn new(path: PathBuf, blob: PathBuf, hash: Option<FileHash>) -> Self {
        let meta = std::fs::metadata(&blob).ok().filter(|m| m.is_file());
        ModelFile {
            path,
            blob,
            size: meta.as_ref().map_or(0, |m| m.len()),
            exists: meta.is_some(),
            hash,
            modified: meta.and_then(|m| m.modified().ok()),
        }
    }
}

/// Facts read from the headers.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ModelInfo {
    pub architecture: Option<String>,
    /// `general.name` or the config's `_name_or_path`.
    pub display_name: Option<String>,
    pub parameters: Option<u64>,
    /// Mixture of experts: experts per layer and experts each token uses.
    pub experts: Option<u64>,
    pub experts_used: Option<u64>,
    /// Parameters one token reads (the shared weights and its experts); the memory estimate
    /// still counts every expert.
    pub active_parameters: Option<u64>,
    /// Number of tensors per storage type (`Q4_1`: 210, `F32`: 61, ...).
    pub tensor_types: BTreeMap<String, usize>,
    /// The quantization label (`Q4_K_M`, `Q4_1`, `F16`, ...).
    pub quant: Option<String>,
    pub context_length: Option<u64>,
    pub chat_template: bool,
    pub layers: Option<u64>,
    /// What the layers are, when they are not all attention (`Mamba-2 (state space)`).
    pub layer_kind: Option<String>,
    /// Recurrent layers: bytes of the state one sequence carries in place of a KV cache.
    pub state_bytes: Option<u64>,
    pub kv_heads: Option<u64>,
    pub head_dim: Option<u64>,
    /// Bytes the weights take once loaded by the engine.
    pub weight_bytes: u64,
    pub tensor_count: usize,
}

/// Where a model sits in its store; decides what `rm` may remove.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "store", rename_all = "kebab-case")]
pub enum Location {
    /// A snapshot in the HF cache. `only` is set when the snapshot holds several GGUF models and
    /// this model is some of its files (relative paths inside the snapshot).
    HfCache {
        repo_dir: PathBuf,
        commit: String,
        only: Option<Vec<PathBuf>>,
    },
    Ollama {
        manifest: PathBuf,
    },
    Lmstudio,
    Folder,
    /// `record` is the path as written in the imports list.
    Import {
        record: PathBuf,
    },
}

/// A model found on disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Model {
    /// Unique-ish display name: `org/name`, `org/name:Q4_1`, `org/name@abc1234`, `llama3.2:1b`.
    pub name: String,
    /// The repository part of the name (`org/name`), used by `org/name:QUANT` lookups.
    pub repo: String,
    /// The quant label from the file name (or header) of a GGUF model, used by `repo:QUANT`
    /// lookups; it is part of `name` only when the repo holds several GGUF models.
    pub quant_tag: Option<String>,
    /// HF commit for cache models.
    pub revision: Option<String>,
    pub source: Source,
    pub format: Format,
    pub kind: ModelKind,
    /// What the engine loads: the GGUF file (first shard), or the folder for safetensors.
    pub load_path: PathBuf,
    pub files: Vec<ModelFile>,
    pub size_bytes: u64,
    #[serde(serialize_with = "human::serialize_time")]
    pub modified: Option<SystemTime>,
    pub info: ModelInfo,
    /// Why the model cannot be read, if it is truncated or corrupt.
    pub broken: Option<String>,
    pub runnable: Runnable,
    /// Bytes of memory needed to run it with a [`DEFAULT_CONTEXT`]-token context.
    pub memory_estimate: Option<u64>,
    pub location: Location,
}

impl Model {
    pub fn file_count(&self) -> usize {
        self.files.len()
    }
}

/// What a store knows about a model before its headers are read.
pub(crate) struct Draft {
    pub name: String,
    pub repo: String,
    pub quant_tag: Option<String>,
    pub revision: Option<String>,
    pub source: Source,
    pub location: Location,
    pub load_path: PathBuf,
    pub files: Vec<ModelFile>,
}

/// The headers a model's facts come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Job {
    /// A GGUF file, or every shard of a split one, in order.
    Gguf(Vec<PathBuf>),
    /// A safetensors model folder and its `.safetensors` files.
    Safetensors(PathBuf, Vec<PathBuf>),
    /// A model folder with only PyTorch weights, and its `pytorch_model*.bin` files.
    Pytorch(PathBuf, Vec<PathBuf>),
}

impl Job {
    fn run(&self) -> inspect::Inspection {
        match self {
            Job::Gguf(shards) => inspect::inspect_gguf(shards),
            Job::Safetensors(dir, files) => inspect::inspect_safetensors(dir, files),
            Job::Pytorch(dir, files) => inspect::inspect_pytorch(dir, files),
        }
    }

    /// What the inspection depends on: every file it reads, with size and time. Same key, same
    /// result, so a rescan can reuse it.
    fn cache_key(&self) -> CacheKey {
        let stat = |p: PathBuf| {
            let m = std::fs::metadata(&p).ok();
            let len = m.as_ref().map(|m| m.len());
            let t = m.and_then(|m| m.modified().ok());
            (p, len, t)
        };
        match self {
            Job::Gguf(shards) => shards.iter().cloned().map(stat).collect(),
            Job::Safetensors(dir, files) | Job::Pytorch(dir, files) => files
                .iter()
                .cloned()
                .chain(
                    [
                        "config.json",
                        "tokenizer_config.json",
                        "chat_template.jinja",
                        "modules.json",
                    ]
                    .iter()
                    .map(|f| dir.join(f)),
                )
                .map(stat)
                .collect(),
        }
    }
}

type CacheKey = Vec<(PathBuf, Option<u64>, Option<SystemTime>)>;

/// A model whose headers are still to be read.
pub(crate) struct Pending {
    draft: Draft,
    job: Job,
    /// Set when the scanner already knows the model is unusable (a vanished import).
    pub broken: Option<String>,
}

impl Draft {
    pub(crate) fn pending(self, job: Job) -> Pending {
        Pending {
            draft: self,
            job,
            broken: None,
        }
    }

    /// Assembles the model from what its headers say.
    fn finish(self, ins: inspect::Inspection, broken: Option<String>) -> Model {
        let mut ins = ins;
        if broken.is_some() {
            ins.broken = broken;
        } else if let Some(missing) = self.files.iter().find(|f| !f.exists) {
            let what = format!(
                "{} is missing ({}); download the model again",
                inspect::file_name(&missing.path),
                missing.blob.display()
            );
            ins.broken = Some(match ins.broken.take() {
                Some(b) if !b.contains("cannot read") => format!("{what}; {b}"),
                _ => what,
            });
        }
        let mut seen = HashSet::new();
        let size_bytes = self
            .files
            .iter()
            .filter(|f| seen.insert(f.blob.clone()))
            .map(|f| f.size)
            .sum();
        let modified = self.files.iter().filter_map(|f| f.modified).max();
        let runnable = match (&ins.broken, self.source) {
            // A record pointing at nothing: the reason already says what to do.
            (Some(b), Source::Import) if !self.load_path.exists() => {
                Runnable::No { reason: b.clone() }
            }
            _ => support::assess(&ins),
        };
        let memory_estimate = (ins.broken.is_none()).then(|| {
            memory::estimate(
                &ins.memory,
                ins.kind,
                memory::context_for(ins.info.context_length),
            )
        });
        Model {
            name: self.name,
            repo: self.repo,
            quant_tag: self.quant_tag,
            revision: self.revision,
            source: self.source,
            format: ins.format,
            kind: ins.kind,
            load_path: self.load_path,
            files: self.files,
            size_bytes,
            modified,
            info: ins.info,
            broken: ins.broken,
            runnable,
            memory_estimate,
            location: self.location,
        }
    }
}

/// The result of a scan: every model found, plus problems met along the way (unreadable folders,
/// bad manifests) that did not stop the scan.
#[derive(Debug, Clone, Default)]
pub struct Library {
    models: Vec<Model>,
    warnings: Vec<String>,
    roots: Option<LibraryRoots>,
    /// Second names (`influence cp`), resolved before the models' own names.
    aliases: Vec<Alias>,
    /// Header facts by the files they were read from, reused by [`Library::rescan`].
    cache: HashMap<CacheKey, inspect::Inspection>,
    /// Paths added for this run with [`Library::adopt`], listed again by every rescan.
    adopted: Vec<PathBuf>,
}

impl Library {
    /// Lists every model under `roots`. Never fails: problems become broken models or warnings.
    pub fn scan(roots: &LibraryRoots) -> Library {
        Self::scan_reusing(roots, &HashMap::new())
    }

    /// Scans the same roots again, re-reading headers only of files that changed (size or
    /// modification time) since this library was built. Call it after a download finishes.
    pub fn rescan(&self) -> Library {
        let mut lib = match &self.roots {
            Some(roots) => Self::scan_reusing(roots, &self.cache),
            None => Library::default(),
        };
        for path in &self.adopted {
            if let Err(e) = lib.adopt(path) {
                lib.warnings.push(e.to_string());
            }
        }
        lib
    }

    fn scan_reusing(
        roots: &LibraryRoots,
        cache: &HashMap<CacheKey, inspect::Inspection>,
    ) -> Library {
        let mut pending = Vec::new();
        let mut warnings = Vec::new();
        hf_cache::scan(&roots.hf_hub, &mut pending, &mut warnings);
        if let Some(ollama) = &roots.ollama {
            ollama::scan(ollama, &mut pending, &mut warnings);
        }
        for root in &roots.lmstudio {
            folders::scan_lmstudio(root, &mut pending, &mut warnings);
        }
        for root in &roots.extra {
            folders::scan_folder(root, Source::Folder, &mut pending, &mut warnings);
        }
        match imports::read_imports(&roots.imports_file) {
            Ok(list) => {
                for rec in list {
                    folders::scan_import(&rec.path, &mut pending, &mut warnings);
                }
            }
            Err(e) => warnings.push(e.to_string()),
        }
        let keys: Vec<CacheKey> = pending.iter().map(|p| p.job.cache_key()).collect();
        let todo: Vec<usize> = (0..pending.len())
            .filter(|i| !cache.contains_key(&keys[*i]))
            .collect();
        let fresh = run_jobs(&pending, &todo);
        let mut new_cache = HashMap::with_capacity(pending.len());
        for (i, ins) in todo.into_iter().zip(fresh) {
            new_cache.insert(keys[i].clone(), ins);
        }
        let mut models = Vec::with_capacity(pending.len());
        for (p, key) in pending.into_iter().zip(keys) {
            let ins = match new_cache.get(&key).or_else(|| cache.get(&key)) {
                Some(ins) => ins.clone(),
                None => p.job.run(),
            };
            new_cache.entry(key).or_insert_with(|| ins.clone());
            models.push(p.draft.finish(ins, p.broken));
        }
        let aliases = match read_aliases(&roots.aliases_file()) {
            Ok(list) => list,
            Err(e) => {
                warnings.push(e.to_string());
                Vec::new()
            }
        };
        let mut lib = Library {
            models,
            aliases,
            warnings,
            roots: Some(roots.clone()),
            cache: new_cache,
            adopted: Vec::new(),
        };
        lib.dedupe();
        lib.models.sort_by(|a, b| {
            a.name
                .to_lowercase()
                .cmp(&b.name.to_lowercase())
                .then(a.source.label().cmp(b.source.label()))
        });
        lib
    }

    /// The roots this library was scanned from.
    pub fn roots(&self) -> Option<&LibraryRoots> {
        self.roots.as_ref()
    }

    pub fn models(&self) -> &[Model] {
        &self.models
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Finds a model by alias, path, `org/name`, `org/name:QUANT`, or a unique suffix of a name.
    pub fn resolve(&self, name_or_path: &str) -> Result<&Model, LibraryError> {
        match self.alias(name_or_path) {
            Some(a) => aliases::target(&self.models, a),
            None => resolve::resolve(&self.models, name_or_path),
        }
    }

    /// The alias called `name` (ignoring case), if there is one.
    pub fn alias(&self, name: &str) -> Option<&Alias> {
        let name = name.trim();
        self.aliases
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// Every alias, by name.
    pub fn aliases(&self) -> &[Alias] {
        &self.aliases
    }

    /// Finds a model by alias or name only (steps 2-5 of [`Library::resolve`]); paths are
    /// never looked at, so callers on the network cannot probe the file system.
    pub fn resolve_name(&self, name: &str) -> Result<&Model, LibraryError> {
        match self.alias(name) {
            Some(a) => aliases::target(&self.models, a),
            None => resolve::resolve_name(&self.models, name),
        }
    }

    /// Makes `path` (a `.gguf` file or a model folder) nameable for this run: a path the library
    /// already lists gives that model's name; any other model file is listed under its file stem
    /// (or folder name) until the program exits, without touching the imports list. Returns the
    /// name.
    pub fn adopt(&mut self, path: &Path) -> Result<String, LibraryError> {
        if let Ok(m) = resolve::resolve(&self.models, &path.to_string_lossy()) {
            return Ok(m.name.clone());
        }
        let abs = std::fs::canonicalize(path).map_err(|e| LibraryError::NotAModel {
            path: path.to_path_buf(),
            reason: format!("cannot open it ({e})"),
        })?;
        if let Some(m) = self.models.iter().find(|m| m.load_path == abs) {
            return Ok(m.name.clone());
        }
        let mut pending = Vec::new();
        let mut warnings = Vec::new();
        folders::scan_import(&abs, &mut pending, &mut warnings);
        let mut added = Vec::new();
        for p in pending {
            if p.broken.is_some() {
                continue;
            }
            let ins = p.job.run();
            let mut model = p.draft.finish(ins, None);
            // Listed like a configured folder: the API may name it, nothing may delete it.
            model.source = Source::Folder;
            model.location = Location::Folder;
            if self
                .models
                .iter()
                .any(|m| m.name.eq_ignore_ascii_case(&model.name))
            {
                model.name = format!("local/{}", model.name);
            }
            added.push(model);
        }
        let Some(first) = added.first() else {
            return Err(LibraryError::NotAModel {
                path: abs,
                reason: "it is not a .gguf file or a folder with model files".into(),
            });
        };
        let name = first.name.clone();
        self.models.extend(added);
        self.adopted.push(abs);
        Ok(name)
    }

    /// What `rm` would remove for `model`; refuses models in another app's store.
    pub fn delete_plan(&self, model: &Model) -> Result<DeletePlan, LibraryError> {
        let imports_file = self.roots.as_ref().map(|r| r.imports_file.as_path());
        delete::plan(model, imports_file)
    }

    /// The same file reachable from two roots (a model_dir inside the HF cache, an import of a
    /// file LM Studio already lists) is listed once, from the first root that found it. Within
    /// one store, names sharing a file all stay: two HF revisions with the same blob, or two
    /// Ollama tags of one model, are separate things to resolve and delete.
    fn dedupe(&mut self) {
        let mut seen: HashMap<PathBuf, Source> = HashMap::new();
        self.models.retain(|m| {
            let key = std::fs::canonicalize(&m.load_path).unwrap_or_else(|_| m.load_path.clone());
            match seen.get(&key) {
                Some(first) => *first == m.source,
                None => {
                    seen.insert(key, m.source);
                    true
                }
            }
        });
    }
}

/// Reads headers on a few threads: a scan is mostly waiting on small reads and walking
/// vocabularies, and models are independent.
fn run_jobs(pending: &[Pending], todo: &[usize]) -> Vec<inspect::Inspection> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(todo.len());
    if threads <= 1 {
        return todo.iter().map(|i| pending[*i].job.run()).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<inspect::Inspection>> = (0..todo.len()).map(|_| None).collect();
    let results: Vec<(usize, inspect::Inspection)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(i) = todo.get(k) else {
                            break;
                        };
                        done.push((k, pending[*i].job.run()));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for (k, ins) in results {
        slots[k] = Some(ins);
    }
    // A worker only dies on a bug; whatever it did not deliver is read again here.
    slots
        .into_iter()
        .zip(todo)
        .map(|(slot, i)| slot.unwrap_or_else(|| pending[*i].job.run()))
        .collect()
}

/// Runs [`Library::scan`] on its own thread and hands the result to `done` (which typically sends
/// a message to the UI loop). Call it again after a download finishes.
pub fn scan_in_background(
    roots: LibraryRoots,
    done: impl FnOnce(Library) + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("library-scan".into())
        .spawn(move || done(Library::scan(&roots)))
}
