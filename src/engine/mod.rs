//! Inference engine: one dedicated OS thread owns every model, tokenizer and KV cache.
//!
//! Callers (TUI, HTTP server, CLI) hold a cheap, cloneable [`EngineHandle`] and talk to that thread
//! through a std channel. Replies come back on tokio channels, so async code `.await`s them and
//! sync code uses `blocking_recv` (or [`wait`] / [`Generation::collect_blocking`]). Model code
//! never runs on tokio workers: a forward pass blocks a core for tens of milliseconds.
//!
//! What it runs:
//! - GGUF decoders written here on candle-core/candle-nn (`decoder.rs`): llama (also mistral and
//!   SmolLM2, tied embeddings), qwen2 (q/k/v biases), qwen3 (q/k norms), phi3 (fused qkv and
//!   gate/up), gemma3 (sliding-window local layers, extra norms), gemma2 (soft-capped scores and
//!   logits), granite (embedding, residual, attention and logit multipliers), olmo2 (post-norms,
//!   full-width q/k norms), smollm3 (layers without RoPE), and mixture-of-experts qwen3moe,
//!   granitemoe and Mixtral-style llama files. `token_embd` stays quantized.
//! - Hugging Face safetensors folders of the same families except gemma3 (f32/f16/bf16, run in
//!   f32), and BERT embedding folders (mean pooling + L2 normalisation). Folders with only
//!   PyTorch `pytorch_model.bin` weights load too, through `crate::pytorch`'s pickle allow-list
//!   and candle's pickle reader (`weights.rs`).
//! - Tokenizers from `tokenizer.json` or rebuilt from GGUF metadata (byte-level BPE and
//!   SentencePiece), chat templates via minijinja, sampling in [`sampling`].
//!
//! Generation is continuously batched (`scheduler.rs`): each step decodes one token of every
//! running sequence in one forward pass, then feeds at most one prompt chunk. Each sequence owns a
//! KV slot that keeps its token ids afterwards; a request lands on the slot holding its prefix and
//! prefills only the rest (`GenStats::cached_tokens`). Prompt chunks of 16+ tokens use
//! a dense f32 GEMM on weights dequantized per call (see `docs/PERFORMANCE.md`).
//!
//! Threads: candle's quantized-matmul pool reads `CANDLE_NUM_THREADS` and rayon reads
//! `RAYON_NUM_THREADS` once, when they first start. [`EngineHandle::spawn`] therefore sets both to
//! [`EngineOptions::threads`] (when the user has not set them) *before* the engine thread runs its
//! first tensor operation. Spawning a second engine later in the same process cannot change them.
//! On a busy 2-core machine 1 thread is much faster than 2 (candle's spinning barrier pool).
//!
//! Tests of the server and UI use [`EngineHandle::fake`], a scripted stand-in (see [`fake`]).

pub mod bench;
pub mod constraint;
mod decode_attn;
mod decoder;
pub mod device;
mod embed;
mod error;
mod expf;
pub mod fake;
mod gen_model;
pub mod gguf;
mod hf_folder;
mod kq;
mod kv_cache;
mod legacy;
mod mxfp4;
mod ops;
mod params;
mod pool;
mod prompt_attn;
mod q8;
mod recurrent;
pub mod sampling;
mod scheduler;
mod simd;
mod stop;
pub mod template;
pub mod tokenize;
mod types;
mod weights;
mod worker;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use tokio::sync::{mpsc as tmpsc, oneshot};

pub use constraint::{Constraint, Grammar};
pub use decoder::{caches_from_metadata, CacheShape};
pub use error::EngineError;
pub use fake::FakeScript;
pub use kv_cache::{window_rows, KvType};
pub use params::{ContextPolicy, GenParams, MAX_REPEAT_PENALTY, MAX_TEMPERATURE, MAX_TOP_LOGPROBS};
pub use scheduler::{EngineStats, Priority, PREFILL_CHUNK};
pub use types::{
    CancelToken, ChatMessage, Collected, FinishReason, GenEvent, GenRequest, GenStats, Generation,
    ModelInfo, ModelKind, Prompt, Role, TokenLogprob, TopLogprob,
};

/// How the engine thread is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    /// Inference threads (candle + rayon); 0 = number of CPU cores.
    pub threads: usize,
    /// Models kept resident at once; the least recently used is unloaded beyond this.
    pub max_loaded: usize,
    /// Sequences of API requests decoded together per model (the app's chat has one more
    /// slot of its own).
    pub parallel: usize,
    /// KV cache positions across a model's slots; 0 = its context × (parallel + 1).
    pub kv_budget: usize,
    /// The device models load onto (`auto` by default).
    pub device: device::DeviceRequest,
}

/// Whether this CPU runs Influence's own kernels (AVX2 or AVX-512 VNNI on x86-64, unless
/// `INFLUENCE_KERNEL=0`): then Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are all fast types, where
/// candle's generic code makes Q4_1, Q5_0 and Q5_1 slow.
pub fn own_kernels_run() -> bool {
    simd::kernel().is_some()
}

/// Sequences decoded together by default. Decoding on a CPU is bound by memory bandwidth, so
/// a batch of 4 rows costs little more than one row while the weights stream once; beyond
/// that, 2-4 cores become the limit and every slot holds its own KV cache.
pub const DEFAULT_PARALLEL: usize = 4;

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            threads: 0,
            max_loaded: 1,
            parallel: DEFAULT_PARALLEL,
            kv_budget: 0,
            device: device::DeviceRequest::default(),
        }
    }
}

impl EngineOptions {
    /// The KV budget, in positions, of a model with context `ctx`.
    pub fn kv_budget_for(&self, ctx: usize) -> usize {
        if self.kv_budget > 0 {
            self.kv_budget
        } else {
            ctx * (self.parallel.max(1) + 1)
        }
    }
}

type Reply<T> = oneshot::Sender<T>;

/// Commands understood by an engine thread (real or fake).
#[derive(Debug)]
pub(crate) enum EngineCmd {
    Load {
        path: PathBuf,
        reply: Reply<Result<ModelInfo, EngineError>>,
    },
    Generate {
        req: GenRequest,
        events: tmpsc::UnboundedSender<GenEvent>,
        cancel: CancelToken,
        priority: Priority,
    },
    Embed {
        model: PathBuf,
        texts: Vec<String>,
        reply: Reply<Result<Vec<Vec<f32>>, EngineError>>,
    },
    CountTokens {
        model: PathBuf,
        prompt: Prompt,
        reply: Reply<Result<usize, EngineError>>,
    },
    Unload {
        model: PathBuf,
        reply: Reply<bool>,
    },
    Loaded {
        reply: Reply<Vec<ModelInfo>>,
    },
}

impl EngineCmd {
    /// Answers a command that could not be delivered because the engine thread is gone.
    fn fail_stopped(self) {
        let e = EngineError::EngineStopped;
        match self {
            EngineCmd::Load { reply, .. } => drop(reply.send(Err(e))),
            EngineCmd::Generate { events, .. } => drop(events.send(GenEvent::Failed(e))),
            EngineCmd::Embed { reply, .. } => drop(reply.send(Err(e))),
            EngineCmd::CountTokens { reply, .. } => drop(reply.send(Err(e))),
            EngineCmd::Unload { reply, .. } => drop(reply.send(false)),
            EngineCmd::Loaded { reply } => drop(reply.send(Vec::new())),
        }
    }
}

/// Cloneable handle to the engine thread. The thread exits when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<EngineCmd>,
    counters: Arc<scheduler::EngineCounters>,
    device: Arc<DeviceStatus>,
}

/// The engine's device as front ends show it: the status bar, `ps`, `/api/ps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// `cpu`, `cuda:0 NVIDIA H200`, `metal:0`.
    pub label: String,
    /// Why this device (under `auto`, why not a GPU).
    pub reason: String,
    /// Why the requested device could not start; every load then fails with it.
    pub error: Option<String>,
    /// Chosen by `auto`.
    pub auto: bool,
    /// Free and total bytes of the device's memory when it started (the GPU's own, or the
    /// system's for the CPU and Apple GPUs).
    pub memory: Option<(u64, u64)>,
    /// A GPU, not the CPU.
    pub gpu: bool,
}

impl DeviceStatus {
    /// What the status bar shows: the device, marked when `auto` picked it.
    pub fn short(&self) -> String {
        if self.auto {
            format!("{} (auto)", self.label)
        } else {
            self.label.clone()
        }
    }

    fn of(r: &Result<device::DeviceChoice, EngineError>) -> Self {
        match r {
            Ok(c) => Self {
                label: c.label.clone(),
                reason: c.reason.clone(),
                error: None,
                auto: c.auto,
                memory: c.memory(),
                gpu: c.is_gpu(),
            },
            Err(e) => Self {
                label: "none".into(),
                reason: String::new(),
                error: Some(e.to_string()),
                auto: false,
                memory: None,
                gpu: false,
            },
        }
    }
}

/// The thread count the engine will use for `threads = 0`.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Sets candle's and rayon's pool sizes unless the user set them in the environment.
///
/// Must run before the first candle operation in the process; `force` overrides user values
/// (used for an explicit `--threads` flag).
pub fn configure_threads(threads: usize, force: bool) -> usize {
    let n = if threads == 0 {
        default_threads()
    } else {
        threads
    };
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if force || std::env::var_os(var).is_none() {
            // Safe in practice: called at start-up before the engine's worker pools exist.
            std::env::set_var(var, n.to_string());
        }
    }
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(n)
}

impl EngineHandle {
    /// Starts the real engine thread.
    ///
    /// The device is started here, so [`EngineHandle::device`] can report it (or why it
    /// failed) before any model loads.
    pub fn spawn(opts: EngineOptions) -> Self {
        let threads = configure_threads(opts.threads, false);
        let (tx, rx) = mpsc::channel();
        let opts = EngineOptions { threads, ..opts };
        let counters = Arc::new(scheduler::EngineCounters::default());
        let shared = counters.clone();
        let chosen = device::select(opts.device);
        match &chosen {
            Ok(c) => tracing::info!(device = %c.label, reason = %c.reason, "engine device"),
            Err(e) => tracing::error!("{e}"),
        }
        let status = Arc::new(DeviceStatus::of(&chosen));
        std::thread::Builder::new()
            .name("influence-engine".into())
            .spawn(move || worker::run(rx, opts, chosen, shared))
            .expect("the OS refused to start the engine thread");
        Self {
            tx,
            counters,
            device: status,
        }
    }

    /// The device models run on, or why it could not start.
    pub fn device(&self) -> &DeviceStatus {
        &self.device
    }

    /// Builds a handle from a sender whose receiver is served by some engine thread.
    pub(crate) fn from_sender(tx: mpsc::Sender<EngineCmd>) -> Self {
        Self {
            tx,
            counters: Default::default(),
            device: Arc::new(DeviceStatus {
                label: "cpu".into(),
                reason: "a scripted engine for tests".into(),
                error: None,
                auto: false,
                memory: None,
                gpu: false,
            }),
        }
    }

    /// The scheduler's counters now: active and waiting sequences, batch sizes, KV use.
    pub fn stats(&self) -> EngineStats {
        self.counters.snapshot()
    }

    fn send(&self, cmd: EngineCmd) {
        if let Err(mpsc::SendError(cmd)) = self.tx.send(cmd) {
            cmd.fail_stopped();
        }
    }

    /// Loads a model (idempotent). Resolves to its [`ModelInfo`].
    pub fn load(&self, path: PathBuf) -> oneshot::Receiver<Result<ModelInfo, EngineError>> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineCmd::Load { path, reply });
        rx
    }

    /// Starts a generation for an API client; the model is loaded first when needed.
    pub fn generate(&self, req: GenRequest) -> Generation {
        self.generate_as(req, Priority::Background)
    }

    /// Starts a generation someone at the keyboard waits for: it is admitted and prefilled
    /// before API requests, on a slot of its own.
    pub fn generate_interactive(&self, req: GenRequest) -> Generation {
        self.generate_as(req, Priority::Interactive)
    }

    fn generate_as(&self, req: GenRequest, priority: Priority) -> Generation {
        let (events, rx) = tmpsc::unbounded_channel();
        let cancel = CancelToken::new();
        self.send(EngineCmd::Generate {
            req,
            events,
            cancel: cancel.clone(),
            priority,
        });
        Generation { events: rx, cancel }
    }

    /// Embeds each text (L2-normalised vectors, one per text, same order).
    pub fn embed(
        &self,
        model: PathBuf,
        texts: Vec<String>,
    ) -> oneshot::Receiver<Result<Vec<Vec<f32>>, EngineError>> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineCmd::Embed {
            model,
            texts,
            reply,
        });
        rx
    }

    /// Number of tokens the prompt takes once rendered (chat template applied) and tokenized.
    pub fn count_tokens(
        &self,
        model: PathBuf,
        prompt: Prompt,
    ) -> oneshot::Receiver<Result<usize, EngineError>> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineCmd::CountTokens {
            model,
            prompt,
            reply,
        });
        rx
    }

    /// Unloads a model; resolves to whether it was loaded.
    pub fn unload(&self, model: PathBuf) -> oneshot::Receiver<bool> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineCmd::Unload { model, reply });
        rx
    }

    /// Models currently resident, most recently used first.
    pub fn loaded(&self) -> oneshot::Receiver<Vec<ModelInfo>> {
        let (reply, rx) = oneshot::channel();
        self.send(EngineCmd::Loaded { reply });
        rx
    }
}

/// Waits for a oneshot reply from sync code, mapping a vanished engine to an error.
pub fn wait<T>(rx: oneshot::Receiver<Result<T, EngineError>>) -> Result<T, EngineError> {
    rx.blocking_recv()
        .unwrap_or(Err(EngineError::EngineStopped))
}
