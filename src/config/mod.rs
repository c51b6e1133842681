//! Layered configuration: embedded defaults → user file → environment (and `.env` files) →
//! CLI flags.
//!
//! Each layer is a TOML table merged over the previous one; every leaf remembers where it came
//! from so `influence config` can say why a value is what it is. Each file layer is checked
//! against the schema on its own, so a mistake is reported with its file, line and key.

pub mod device;
pub mod dotenv;
pub mod gpu_layers;
pub mod keymap;
pub mod kv;
pub mod theme;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The embedded defaults; the single place where default values live.
pub const DEFAULT_CONFIG: &str = include_str!("../../assets/config.toml");

/// The effective configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub theme: String,
    pub log_level: String,
    pub hub: HubConfig,
    pub paths: PathsConfig,
    pub engine: EngineConfig,
    pub chat: ChatConfig,
    pub server: ServerConfig,
    pub downloads: DownloadsConfig,
    pub ui: UiConfig,
    /// User key binding overrides, by context (same shape as `assets/keymap.toml`).
    #[serde(default)]
    pub keys: BTreeMap<String, Vec<keymap::BindingSpec>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    pub endpoint: String,
    pub token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PathsConfig {
    pub hf_home: String,
    pub model_dirs: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    pub threads: usize,
    pub max_loaded: usize,
    pub context_policy: String,
    pub requant_q8: bool,
    /// API sequences decoded together per model.
    pub parallel: usize,
    /// KV cache positions per model across its slots; 0 = context × (parallel + 1).
    pub kv_budget: usize,
    /// `auto`, `cpu`, `cuda`, `cuda:N` or `metal` (see [`device::DeviceRequest`]).
    pub device: String,
    /// What KV caches hold: `f32` or `f16` (see [`kv::KvType`]).
    pub kv_cache: String,
    /// Layers on the GPU: a number or `auto` (see [`gpu_layers::GpuLayers`]).
    pub gpu_layers: gpu_layers::GpuLayers,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub max_tokens: usize,
    /// A number, or empty for a random seed.
    pub seed: String,
    pub system_prompt: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub api_key: String,
    pub cors_origins: Vec<String>,
    pub max_queue: usize,
    pub body_limit: usize,
    /// Let requests name model files by path, not only library names.
    pub allow_paths: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DownloadsConfig {
    pub concurrency: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    pub fps: u32,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    File(PathBuf),
    Env(String),
    /// A variable set in a `.env` file (and not in the real environment).
    DotEnv {
        file: PathBuf,
        var: String,
    },
    Flag(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => write!(f, "default"),
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Env(v) => write!(f, "env {v}"),
            Source::DotEnv { file, var } => write!(f, "{} ({var})", file.display()),
            Source::Flag(n) => write!(f, "flag --{n}"),
        }
    }
}

/// A configuration problem, phrased for the person who has to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: line {line}, key `{key}`: {message}\n  fix the value or remove the line to use the default")]
    File {
        file: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {message}")]
    DotEnv {
        file: PathBuf,
        line: usize,
        message: String,
    },
    #[error("environment variable {var}={value:?}: {message}")]
    Env {
        var: String,
        value: String,
        message: String,
    },
    #[error("`{key}` = {value} (from {origin}): {message}")]
    Invalid {
        key: String,
        value: String,
        origin: Source,
        message: String,
    },
}

/// Values that come from command-line flags (highest precedence).
#[derive(Debug, Clone, Default)]
pub struct FlagOverrides {
    pub theme: Option<String>,
    pub log_level: Option<String>,
    pub threads: Option<usize>,
    pub device: Option<String>,
    pub device_index: Option<usize>,
    pub gpu_layers: Option<usize>,
    pub endpoint: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
}

/// Folders Influence uses, resolved once at start-up.
#[derive(Debug, Clone, PartialEq)]
pub struct Dirs {
    pub config_file: PathBuf,
    pub config_dir: PathBuf,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl Dirs {
    /// `INFLUENCE_HOME=DIR` puts everything under DIR; otherwise the platform folders.
    pub fn resolve(env: &dyn Fn(&str) -> Option<String>, config_flag: Option<&Path>) -> Dirs {
        let (config_dir, data_dir) = match env("INFLUENCE_HOME").filter(|s| !s.is_empty()) {
            Some(home) => {
                let home = PathBuf::from(home);
                (home.clone(), home.join("data"))
            }
            None => match directories::ProjectDirs::from("", "", "influence") {
                Some(p) => (p.config_dir().to_path_buf(), p.data_dir().to_path_buf()),
                None => (
                    PathBuf::from(".influence"),
                    PathBuf::from(".influence/data"),
                ),
            },
        };
        let config_file = config_flag
            .map(Path::to_path_buf)
            .unwrap_or_else(|| config_dir.join("config.toml"));
        Dirs {
            config_file,
            log_dir: data_dir.join("logs"),
            config_dir,
            data_dir,
        }
    }
}

/// The effective configuration plus where each value came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub sources: BTreeMap<String, Source>,
    pub dirs: Dirs,
    /// The `.env` files that were read.
    pub dotenv: dotenv::DotEnv,
}

impl Loaded {
    /// The Hugging Face home (`HF_HOME` semantics): models live in `<hf_home>/hub`.
    pub fn hf_home(&self) -> PathBuf {
        if !self.config.paths.hf_home.is_empty() {
            return expand_home(&self.config.paths.hf_home);
        }
        directories::BaseDirs::new()
            .map(|b| b.home_dir().join(".cache").join("huggingface"))
            .unwrap_or_else(|| PathBuf::from(".cache/huggingface"))
    }

    /// Extra model folders from the config, with `~/` expanded.
    pub fn model_dirs(&self) -> Vec<PathBuf> {
        self.config
            .paths
            .model_dirs
            .iter()
            .map(|d| expand_home(d))
            .collect()
    }

    /// The device the engine is asked for (validated at load).
    pub fn device(&self) -> device::DeviceRequest {
        self.config.engine.device.parse().unwrap_or_default()
    }

    /// Inference threads, with 0 meaning one per core.
    pub fn threads(&self) -> usize {
        match self.config.engine.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The hub token: config/env first, then the file `huggingface-cli login` writes.
    pub fn token(&self) -> Option<String> {
        if !self.config.hub.token.is_empty() {
            return Some(self.config.hub.token.clone());
        }
        std::fs::read_to_string(self.hf_home().join("token"))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    }

    /// Renders `influence config`: every key, its value and where it came from.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "# config file: {}{}\n# data dir:    {}\n# log dir:     {}\n",
            self.dirs.config_file.display(),
            if self.dirs.config_file.exists() {
                ""
            } else {
                " (not present)"
            },
            self.dirs.data_dir.display(),
            self.dirs.log_dir.display()
        ));
        for f in &self.dotenv.files {
            let names: Vec<&str> = f.vars.iter().map(|(k, _)| k.as_str()).collect();
            out.push_str(&format!(
                "# .env file:   {}: {}{}\n",
                f.path.display(),
                if names.is_empty() {
                    "nothing Influence reads".to_string()
                } else {
                    names.join(", ")
                },
                if f.ignored.is_empty() {
                    String::new()
                } else {
                    format!(" (ignored: {})", f.ignored.join(", "))
                }
            ));
        }
        let table = toml::Table::try_from(&self.config).unwrap_or_default();
        let mut leaves = Vec::new();
        flatten("", &toml::Value::Table(table), &mut leaves);
        let width = leaves.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in leaves {
            let shown = if key.ends_with("token") || key.ends_with("api_key") {
                redact(&value)
            } else {
                value.to_string()
            };
            let source = self.sources.get(&key).cloned().unwrap_or(Source::Default);
            let derived = if key == "engine.kv_budget" && self.config.engine.kv_budget == 0 {
                format!(
                    " (each model's context × {} positions)",
                    self.config.engine.parallel + 1
                )
            } else {
                String::new()
            };
            out.push_str(&format!("{key:width$} = {shown}    # {source}{derived}\n"));
        }
        out
    }
}

fn redact(v: &toml::Value) -> String {
    match v.as_str() {
        Some("") => "\"\"".into(),
        Some(_) => "\"<set>\"".into(),
        None => v.to_string(),
    }
}

fn expand_home(p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(b) = directories::BaseDirs::new() {
            return b.home_dir().join(rest);
        }
    }
    PathBuf::from(p)
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match v {
        toml::Value::Table(t) if prefix != "keys" => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// Merges `layer` into `base`, recording `source` for each leaf it sets.
fn merge(
    base: &mut toml::Table,
    layer: toml::Table,
    prefix: &str,
    source: &Source,
    sources: &mut BTreeMap<String, Source>,
) {
    for (k, v) in layer {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) if key != "keys" => {
                merge(b, l, &key, source, sources)
            }
            (_, v) => {
                if let toml::Value::Table(t) = &v {
                    for sub in t.keys() {
                        sources.insert(format!("{key}.{sub}"), source.clone());
                    }
                }
                sources.insert(key, source.clone());
                base.insert(k, v);
            }
        }
    }
}

/// Every key the schema allows in a file layer, all optional, so one file is checked alone.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Fields exist for validation; the values are used through the merged table.
struct PartialConfig {
    theme: Option<String>,
    log_level: Option<String>,
    hub: Option<PartialHub>,
    paths: Option<PartialPaths>,
    engine: Option<PartialEngine>,
    chat: Option<PartialChat>,
    server: Option<PartialServer>,
    downloads: Option<PartialDownloads>,
    ui: Option<PartialUi>,
    keys: Option<BTreeMap<String, Vec<keymap::BindingSpec>>>,
}

macro_rules! partial {
    ($name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct $name { $($field: Option<$ty>),* }
    };
}
partial!(PartialHub {
    endpoint: String,
    token: String
});
partial!(PartialPaths { hf_home: String, model_dirs: Vec<String> });
partial!(PartialEngine {
    threads: usize,
    max_loaded: usize,
    context_policy: String,
    requant_q8: bool,
    parallel: usize,
    kv_budget: usize,
    device: String,
    kv_cache: String,
    gpu_layers: gpu_layers::GpuLayers
});
partial!(PartialChat {
    temperature: f32,
    top_p: f32,
    top_k: usize,
    min_p: f32,
    repeat_penalty: f32,
    max_tokens: usize,
    seed: String,
    system_prompt: String,
});
partial!(PartialServer {
    host: String, port: u16, api_key: String, cors_origins: Vec<String>, max_queue: usize,
    body_limit: usize, allow_paths: bool,
});
partial!(PartialDownloads { concurrency: usize });
partial!(PartialUi { fps: u32 });

/// Parses one config file's text, checking syntax and schema, with errors that point at a line.
fn parse_file(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let at = |span: Option<std::ops::Range<usize>>, message: String| {
        let offset = span.map(|s| s.start).unwrap_or(0).min(text.len());
        let (line, key) = locate(text, offset);
        ConfigError::File {
            file: path.to_path_buf(),
            line,
            key,
            message,
        }
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| at(e.span(), clean(e.message())))?;
    toml::from_str::<PartialConfig>(text).map_err(|e| at(e.span(), clean(e.message())))?;
    Ok(table)
}

fn clean(message: &str) -> String {
    message.trim().replace('\n', " ")
}

/// The 1-based line of `offset` and the dotted key defined on (or governing) that line.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let mut before = &text[..offset];
    // An error on a blank line or at the end of the file belongs to the last statement before it.
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    if text[line_start..line_end].trim().is_empty() {
        before = before.trim_end();
    }
    let line_no = before.matches('\n').count() + 1;
    let mut table = String::new();
    for l in before.lines() {
        let t = l.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
    let key = if line.starts_with('[') {
        line.trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_string()
    } else {
        let k = line.split('=').next().unwrap_or("").trim().to_string();
        match (table.is_empty(), k.is_empty()) {
            (_, true) => table,
            (true, false) => k,
            (false, false) => format!("{table}.{k}"),
        }
    };
    (
        line_no,
        if key.is_empty() {
            "(top level)".into()
        } else {
            key
        },
    )
}

/// Environment variables Influence reads, and the key each one sets.
const ENV_KEYS: &[(&str, &str)] = &[
    ("INFLUENCE_THEME", "theme"),
    ("INFLUENCE_LOG_LEVEL", "log_level"),
    ("HF_ENDPOINT", "hub.endpoint"),
    ("HF_TOKEN", "hub.token"),
    ("HF_HOME", "paths.hf_home"),
    ("INFLUENCE_THREADS", "engine.threads"),
    ("INFLUENCE_DEVICE", "engine.device"),
    ("INFLUENCE_KV_CACHE", "engine.kv_cache"),
    ("INFLUENCE_GPU_LAYERS", "engine.gpu_layers"),
    ("INFLUENCE_HOST", "server.host"),
    ("INFLUENCE_PORT", "server.port"),
    ("INFLUENCE_API_KEY", "server.api_key"),
];

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut t = table;
    for p in parts {
        t = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .expect("config layers only nest tables");
    }
    t.insert(last.to_string(), value);
}

/// Looks up the type a key has in the defaults, to parse env values into it.
fn typed(defaults: &toml::Table, key: &str, raw: &str) -> Result<toml::Value, String> {
    // A number or a word: checked here so that a bad one names its variable.
    if key == "engine.gpu_layers" {
        return match raw.parse::<gpu_layers::GpuLayers>()? {
            gpu_layers::GpuLayers::Count(n) => Ok(toml::Value::Integer(n as i64)),
            auto => Ok(toml::Value::String(auto.to_string())),
        };
    }
    let mut v: Option<&toml::Value> = None;
    let mut t = defaults;
    for p in key.split('.') {
        v = t.get(p);
        if let Some(toml::Value::Table(inner)) = v {
            t = inner;
        }
    }
    match v {
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "expected a whole number".to_string()),
        Some(toml::Value::Float(_)) => raw
            .trim()
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| "expected a number".to_string()),
        _ => Ok(toml::Value::String(raw.to_string())),
    }
}

/// Builds the effective configuration from all four layers, without `.env` files.
///
/// `env` is injected so tests can run in parallel with different environments.
pub fn load(
    env: &dyn Fn(&str) -> Option<String>,
    config_flag: Option<&Path>,
    flags: &FlagOverrides,
) -> Result<Loaded, ConfigError> {
    load_layers(env, dotenv::DotEnv::default(), config_flag, flags)
}

/// [`load`], with the variables of `<cwd>/.env` and `<config dir>/.env` under the environment:
/// a variable set in the real environment wins over both files.
pub fn load_with_dotenv(
    env: &dyn Fn(&str) -> Option<String>,
    cwd: Option<&Path>,
    config_flag: Option<&Path>,
    flags: &FlagOverrides,
) -> Result<Loaded, ConfigError> {
    let files = dotenv::DotEnv::discover(env, cwd, config_flag)?;
    load_layers(env, files, config_flag, flags)
}

fn load_layers(
    env: &dyn Fn(&str) -> Option<String>,
    files: dotenv::DotEnv,
    config_flag: Option<&Path>,
    flags: &FlagOverrides,
) -> Result<Loaded, ConfigError> {
    let dirs = Dirs::resolve(&|k| files.lookup(env, k), config_flag);
    let mut sources = BTreeMap::new();
    let mut merged: toml::Table =
        toml::from_str(DEFAULT_CONFIG).expect("embedded default config is valid TOML");
    let defaults = merged.clone();

    match std::fs::read_to_string(&dirs.config_file) {
        Ok(text) => {
            let layer = parse_file(&dirs.config_file, &text)?;
            merge(
                &mut merged,
                layer,
                "",
                &Source::File(dirs.config_file.clone()),
                &mut sources,
            );
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && config_flag.is_none() => {}
        Err(source) => {
            return Err(ConfigError::Read {
                file: dirs.config_file.clone(),
                source,
            })
        }
    }

    let mut env_layer = toml::Table::new();
    let mut env_sources = BTreeMap::new();
    for (var, key) in ENV_KEYS {
        let found = match env(var) {
            Some(raw) => Some((raw, Source::Env(var.to_string()))),
            None => files.get(var).map(|(raw, file)| {
                let source = Source::DotEnv {
                    file: file.to_path_buf(),
                    var: var.to_string(),
                };
                (raw.to_string(), source)
            }),
        };
        if let Some((raw, source)) = found.filter(|(v, _)| !v.is_empty()) {
            let value = typed(&defaults, key, &raw).map_err(|message| match &source {
                Source::DotEnv { file, .. } => ConfigError::DotEnv {
                    file: file.clone(),
                    line: files
                        .files
                        .iter()
                        .find(|f| f.path == *file)
                        .and_then(|f| f.line_of(var))
                        .unwrap_or(1),
                    message: format!("{var}={raw:?}: {message}"),
                },
                _ => ConfigError::Env {
                    var: var.to_string(),
                    value: raw.clone(),
                    message,
                },
            })?;
            set_path(&mut env_layer, key, value);
            env_sources.insert(key.to_string(), source);
        }
    }
    merge(
        &mut merged,
        env_layer,
        "",
        &Source::Default,
        &mut BTreeMap::new(),
    );
    sources.extend(env_sources);

    let mut flag = |key: &str, name: &str, v: Option<toml::Value>| {
        if let Some(v) = v {
            set_path(&mut merged, key, v);
            sources.insert(key.to_string(), Source::Flag(name.to_string()));
        }
    };
    flag("theme", "theme", flags.theme.clone().map(Into::into));
    flag(
        "log_level",
        "log-level",
        flags.log_level.clone().map(Into::into),
    );
    flag(
        "engine.threads",
        "threads",
        flags.threads.map(|n| toml::Value::Integer(n as i64)),
    );
    flag(
        "engine.device",
        "device",
        flags.device.clone().map(Into::into),
    );
    flag(
        "engine.gpu_layers",
        "gpu-layers",
        flags.gpu_layers.map(|n| n.to_string().into()),
    );
    flag(
        "hub.endpoint",
        "endpoint",
        flags.endpoint.clone().map(Into::into),
    );
    flag("server.host", "host", flags.host.clone().map(Into::into));
    flag(
        "server.port",
        "port",
        flags.port.map(|p| toml::Value::Integer(p as i64)),
    );
    flag(
        "server.api_key",
        "api-key",
        flags.api_key.clone().map(Into::into),
    );

    if let Some(n) = flags.device_index {
        // The index joins whichever device the layers above chose: `--device-index 1` with
        // `engine.device = "cuda"` is `cuda:1`.
        let current = merged
            .get("engine")
            .and_then(|e| e.get("device"))
            .and_then(|d| d.as_str())
            .unwrap_or("auto")
            .to_string();
        let origin = sources
            .get("engine.device")
            .cloned()
            .unwrap_or(Source::Default);
        let bad = |message: String| ConfigError::Invalid {
            key: "engine.device".into(),
            value: format!("{current:?}"),
            origin: origin.clone(),
            message,
        };
        let req = current
            .parse::<device::DeviceRequest>()
            .map_err(&bad)?
            .with_index(Some(n))
            .map_err(&bad)?;
        set_path(&mut merged, "engine.device", req.to_string().into());
        sources.insert(
            "engine.device".into(),
            Source::Flag("device-index".to_string()),
        );
    }

    let config =
        Config::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Invalid {
            key: "(merged)".into(),
            value: String::new(),
            origin: Source::Default,
            message: clean(e.message()),
        })?;
    let loaded = Loaded {
        config,
        sources,
        dirs,
        dotenv: files,
    };
    validate(&loaded)?;
    Ok(loaded)
}

/// Range and vocabulary checks that the type system cannot express.
fn validate(l: &Loaded) -> Result<(), ConfigError> {
    let c = &l.config;
    let bad = |key: &str, value: String, message: &str| ConfigError::Invalid {
        key: key.into(),
        value,
        origin: l.sources.get(key).cloned().unwrap_or(Source::Default),
        message: message.into(),
    };
    if !theme::is_known(&c.theme, &l.dirs.config_dir) {
        return Err(bad(
            "theme",
            format!("{:?}", c.theme),
            &format!(
                "no such theme; expected one of {} or a file in {}",
                theme::BUILTIN_NAMES.join(", "),
                l.dirs.config_dir.join("themes").display()
            ),
        ));
    }
    if !["error", "warn", "info", "debug", "trace"].contains(&c.log_level.as_str()) {
        return Err(bad(
            "log_level",
            format!("{:?}", c.log_level),
            "expected one of error, warn, info, debug, trace",
        ));
    }
    if !c.hub.endpoint.starts_with("http://") && !c.hub.endpoint.starts_with("https://") {
        return Err(bad(
            "hub.endpoint",
            format!("{:?}", c.hub.endpoint),
            "expected an http:// or https:// URL",
        ));
    }
    if !["error", "drop-oldest"].contains(&c.engine.context_policy.as_str()) {
        return Err(bad(
            "engine.context_policy",
            format!("{:?}", c.engine.context_policy),
            "expected \"error\" or \"drop-oldest\"",
        ));
    }
    if !(1..=64).contains(&c.engine.parallel) {
        return Err(bad(
            "engine.parallel",
            c.engine.parallel.to_string(),
            "expected 1 to 64 sequences",
        ));
    }
    if let Err(e) = c.engine.device.parse::<device::DeviceRequest>() {
        return Err(bad("engine.device", format!("{:?}", c.engine.device), &e));
    }
    if let Err(e) = c.engine.kv_cache.parse::<kv::KvType>() {
        return Err(bad(
            "engine.kv_cache",
            format!("{:?}", c.engine.kv_cache),
            &e,
        ));
    }
    if c.engine.max_loaded == 0 {
        return Err(bad("engine.max_loaded", "0".into(), "expected at least 1"));
    }
    let ch = &c.chat;
    let ranges: [(&str, f32, f32, f32); 4] = [
        ("chat.temperature", ch.temperature, 0.0, 2.0),
        ("chat.top_p", ch.top_p, 0.0, 1.0),
        ("chat.min_p", ch.min_p, 0.0, 1.0),
        ("chat.repeat_penalty", ch.repeat_penalty, 0.5, 2.0),
    ];
    for (key, v, lo, hi) in ranges {
        if !(lo..=hi).contains(&v) || v.is_nan() {
            return Err(bad(key, v.to_string(), &format!("expected {lo} to {hi}")));
        }
    }
    if ch.max_tokens == 0 {
        return Err(bad("chat.max_tokens", "0".into(), "expected at least 1"));
    }
    if !ch.seed.is_empty() && ch.seed.parse::<u64>().is_err() {
        return Err(bad(
            "chat.seed",
            format!("{:?}", ch.seed),
            "expected a whole number, or \"\" for a random seed",
        ));
    }
    if c.server.port == 0 {
        return Err(bad("server.port", "0".into(), "expected 1 to 65535"));
    }
    if c.downloads.concurrency == 0 || c.downloads.concurrency > 16 {
        return Err(bad(
            "downloads.concurrency",
            c.downloads.concurrency.to_string(),
            "expected 1 to 16",
        ));
    }
    if !(1..=240).contains(&c.ui.fps) {
        return Err(bad("ui.fps", c.ui.fps.to_string(), "expected 1 to 240"));
    }
    keymap::Keymap::load(&c.keys).map_err(|e| bad("keys", String::new(), &e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn home_with(file: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), file).unwrap();
        dir
    }

    #[test]
    fn defaults_load_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        let l = load(
            &env_of(&[("INFLUENCE_HOME", home)]),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(l.config.theme, "dark");
        assert_eq!(l.config.server.host, "127.0.0.1");
        assert!(l.sources.is_empty());
        assert_eq!(l.dirs.config_file, dir.path().join("config.toml"));
        assert_eq!(l.dirs.data_dir, dir.path().join("data"));
    }

    #[test]
    fn precedence_default_file_env_flag() {
        let dir = home_with("theme = \"light\"\n[server]\nport = 9000\nhost = \"127.0.0.2\"\n");
        let home = dir.path().to_str().unwrap();
        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_PORT", "9001")]);
        let flags = FlagOverrides {
            host: Some("127.0.0.3".into()),
            ..Default::default()
        };
        let l = load(&env, None, &flags).unwrap();
        assert_eq!(l.config.theme, "light");
        assert!(matches!(l.sources["theme"], Source::File(_)));
        assert_eq!(l.config.server.port, 9001);
        assert_eq!(
            l.sources["server.port"],
            Source::Env("INFLUENCE_PORT".into())
        );
        assert_eq!(l.config.server.host, "127.0.0.3");
        assert_eq!(l.sources["server.host"], Source::Flag("host".into()));
        assert_eq!(l.config.server.max_queue, 16);
        assert!(!l.sources.contains_key("server.max_queue"));
    }

    #[test]
    fn device_comes_from_file_env_then_flags_and_the_index_joins_it() {
        let dir = home_with("[engine]\ndevice = \"cpu\"\n");
        let home = dir.path().to_str().unwrap();
        let l = load(
            &env_of(&[("INFLUENCE_HOME", home)]),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(l.config.engine.device, "cpu");
        assert!(matches!(l.sources["engine.device"], Source::File(_)));

        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_DEVICE", "cuda")]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.device().to_string(), "cuda");
        assert_eq!(
            l.sources["engine.device"],
            Source::Env("INFLUENCE_DEVICE".into())
        );

        let flags = FlagOverrides {
            device: Some("metal".into()),
            ..Default::default()
        };
        let l = load(&env, None, &flags).unwrap();
        assert_eq!(l.config.engine.device, "metal");
        assert_eq!(l.sources["engine.device"], Source::Flag("device".into()));

        // --device-index joins the env's `cuda`.
        let flags = FlagOverrides {
            device_index: Some(1),
            ..Default::default()
        };
        let l = load(&env, None, &flags).unwrap();
        assert_eq!(l.config.engine.device, "cuda:1");
        assert_eq!(
            l.sources["engine.device"],
            Source::Flag("device-index".into())
        );
        assert!(l.describe().contains("engine.device"));

        // Contradictions and unknown names are configuration errors naming the key.
        let flags = FlagOverrides {
            device: Some("cuda:0".into()),
            device_index: Some(1),
            ..Default::default()
        };
        let err = load(&env, None, &flags).unwrap_err().to_string();
        assert!(
            err.contains("engine.device") && err.contains("contradicts"),
            "{err}"
        );
        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_DEVICE", "tpu")]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.device") && err.contains("INFLUENCE_DEVICE"),
            "{err}"
        );
    }

    #[test]
    fn hf_variables_are_honoured() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[
            ("INFLUENCE_HOME", dir.path().to_str().unwrap()),
            ("HF_ENDPOINT", "http://127.0.0.1:9/mirror"),
            ("HF_TOKEN", "hf_secret"),
            ("HF_HOME", "/tmp/hfhome"),
        ]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.hub.endpoint, "http://127.0.0.1:9/mirror");
        assert_eq!(l.token().as_deref(), Some("hf_secret"));
        assert_eq!(l.hf_home(), PathBuf::from("/tmp/hfhome"));
        assert!(l.describe().contains("hub.token"));
        assert!(!l.describe().contains("hf_secret"));
    }

    #[test]
    fn type_error_names_file_line_and_key() {
        let dir = home_with("theme = \"dark\"\n\n[server]\nport = \"eighty\"\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("server.port"), "{err}");
        assert!(err.contains("u16"), "{err}");
    }

    #[test]
    fn syntax_error_and_unknown_key_are_located() {
        let dir = home_with("[chat]\ntemperature = 0.5\ntemprature = 0.2\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 3") && err.contains("chat.temprature"),
            "{err}"
        );
        assert!(err.contains("unknown field"), "{err}");

        let dir = home_with("[server\nport = 1\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn kv_cache_type_comes_from_file_then_env_and_a_bad_one_is_named() {
        let dir = home_with("[engine]\nkv_cache = \"f16\"\n");
        let home = dir.path().to_str().unwrap();
        let l = load(
            &env_of(&[("INFLUENCE_HOME", home)]),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(l.config.engine.kv_cache, "f16");
        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_KV_CACHE", "f32")]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.engine.kv_cache, "f32");
        assert!(matches!(l.sources["engine.kv_cache"], Source::Env(_)));
        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_KV_CACHE", "q4_0")]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.kv_cache") && err.contains("\"f32\" or \"f16\""),
            "{err}"
        );
        // The default config file says f32.
        let dir = home_with("");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.engine.kv_cache.parse(), Ok(kv::KvType::F32));
    }

    #[test]
    fn gpu_layers_come_from_file_env_then_flag_and_a_bad_one_is_named() {
        use gpu_layers::GpuLayers;
        // The default config file says auto.
        let dir = home_with("");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.engine.gpu_layers, GpuLayers::Auto);

        let dir = home_with("[engine]\ngpu_layers = 20\n");
        let home = dir.path().to_str().unwrap();
        let l = load(
            &env_of(&[("INFLUENCE_HOME", home)]),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_eq!(l.config.engine.gpu_layers, GpuLayers::Count(20));
        assert!(matches!(l.sources["engine.gpu_layers"], Source::File(_)));

        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_GPU_LAYERS", "auto")]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.engine.gpu_layers, GpuLayers::Auto);
        assert!(matches!(l.sources["engine.gpu_layers"], Source::Env(_)));

        let flags = FlagOverrides {
            gpu_layers: Some(8),
            ..Default::default()
        };
        let l = load(&env, None, &flags).unwrap();
        assert_eq!(l.config.engine.gpu_layers, GpuLayers::Count(8));
        assert_eq!(
            l.sources["engine.gpu_layers"],
            Source::Flag("gpu-layers".into())
        );
        let shown = l.describe();
        assert!(shown.contains("= 8    # flag --gpu-layers"), "{shown}");

        let env = env_of(&[("INFLUENCE_HOME", home), ("INFLUENCE_GPU_LAYERS", "most")]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("INFLUENCE_GPU_LAYERS") && err.contains("\"auto\""),
            "{err}"
        );
        let dir = home_with("[engine]\ngpu_layers = -2\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpu_layers"), "{err}");
    }

    #[test]
    fn batching_settings_are_checked() {
        let dir = home_with("[engine]\nparallel = 0\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("engine.parallel") && err.contains("1 to 64"),
            "{err}"
        );
        let dir = home_with("[engine]\nparallel = 8\nkv_budget = 4096\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(
            (l.config.engine.parallel, l.config.engine.kv_budget),
            (8, 4096)
        );
    }

    #[test]
    fn range_errors_name_the_source() {
        let dir = home_with("[chat]\ntemperature = 7.0\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("chat.temperature") && err.contains("0 to 2"),
            "{err}"
        );
        assert!(err.contains("config.toml"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[
            ("INFLUENCE_HOME", dir.path().to_str().unwrap()),
            ("INFLUENCE_THREADS", "many"),
        ]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("INFLUENCE_THREADS") && err.contains("whole number"),
            "{err}"
        );
    }

    #[test]
    fn unknown_theme_is_rejected_and_user_theme_accepted() {
        let dir = home_with("theme = \"solarized\"\n");
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let err = load(&env, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no such theme"), "{err}");
        std::fs::create_dir_all(dir.path().join("themes")).unwrap();
        std::fs::write(
            dir.path().join("themes/solarized.toml"),
            "[roles]\ntext = { fg = \"#839496\" }\n",
        )
        .unwrap();
        assert!(load(&env, None, &Default::default()).is_ok());
    }

    #[test]
    fn every_default_key_can_be_set_in_a_file() {
        // The file schema must accept every key the defaults define, or users get "unknown field".
        let mut text = String::new();
        let defaults: toml::Table = toml::from_str(DEFAULT_CONFIG).unwrap();
        for (k, v) in &defaults {
            match v {
                toml::Value::Table(t) => {
                    text.push_str(&format!("[{k}]\n"));
                    for (k2, v2) in t {
                        text.push_str(&format!("{k2} = {v2}\n"));
                    }
                }
                v => text.insert_str(0, &format!("{k} = {v}\n")),
            }
        }
        let dir = home_with(&text);
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        load(&env, None, &Default::default()).unwrap();
    }

    #[test]
    fn dotenv_files_sit_under_the_environment() {
        let home = tempfile::tempdir().unwrap();
        let cwd = tempfile::tempdir().unwrap();
        std::fs::write(
            home.path().join("config.toml"),
            "theme = \"high-contrast\"\n",
        )
        .unwrap();
        std::fs::write(
            home.path().join(".env"),
            "INFLUENCE_PORT=9100\nINFLUENCE_THEME=dark\nHF_TOKEN=hf_from_file\n",
        )
        .unwrap();
        std::fs::write(
            cwd.path().join(".env"),
            "INFLUENCE_THEME=light\nINFLUENCE_HOST=127.0.0.5\nSECRET=x\n",
        )
        .unwrap();
        let env = env_of(&[
            ("INFLUENCE_HOME", home.path().to_str().unwrap()),
            ("INFLUENCE_HOST", "127.0.0.7"),
        ]);
        let l = load_with_dotenv(&env, Some(cwd.path()), None, &Default::default()).unwrap();
        // The current folder's file beats the config folder's, and both beat config.toml.
        assert_eq!(l.config.theme, "light");
        assert_eq!(
            l.sources["theme"],
            Source::DotEnv {
                file: cwd.path().join(".env"),
                var: "INFLUENCE_THEME".into()
            }
        );
        assert_eq!(l.config.server.port, 9100);
        assert_eq!(l.token().as_deref(), Some("hf_from_file"));
        // The real environment beats both files.
        assert_eq!(l.config.server.host, "127.0.0.7");
        assert_eq!(
            l.sources["server.host"],
            Source::Env("INFLUENCE_HOST".into())
        );
        let shown = l.describe();
        let line = shown.lines().find(|l| l.starts_with("theme ")).unwrap();
        assert!(
            line.contains(&format!(
                "{} (INFLUENCE_THEME)",
                cwd.path().join(".env").display()
            )),
            "{shown}"
        );
        assert!(shown.contains("(ignored: SECRET)"), "{shown}");
        assert!(!shown.contains("hf_from_file"), "{shown}");

        // `load` alone reads no files.
        let l = load(&env, None, &Default::default()).unwrap();
        assert_eq!(l.config.theme, "high-contrast");
        assert!(l.dotenv.files.is_empty());
    }

    #[test]
    fn dotenv_value_errors_name_the_file_and_line() {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join(".env"), "# mine\nINFLUENCE_THREADS=lots\n").unwrap();
        let env = env_of(&[("INFLUENCE_HOME", home.path().to_str().unwrap())]);
        let err = load_with_dotenv(&env, None, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(".env: line 2"), "{err}");
        assert!(
            err.contains("INFLUENCE_THREADS") && err.contains("whole number"),
            "{err}"
        );
    }

    #[test]
    fn explicit_config_flag_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let env = env_of(&[("INFLUENCE_HOME", dir.path().to_str().unwrap())]);
        let missing = dir.path().join("nope.toml");
        let err = load(&env, Some(&missing), &Default::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.toml"), "{err}");
    }
}
