//! The engine thread: owns the loaded models. Between commands it steps each model's
//! [`Batcher`]: every running sequence advances by one token per step, prompts by chunks.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use candle_core::Device;

use super::decoder::Decoder;
use super::device::DeviceChoice;
use super::embed::{folder_model_type, Embedder};
use super::gen_model::GenModel;
use super::gguf::{self, Meta};
use super::hf_folder;
use super::scheduler::{Batcher, EngineCounters, Pending, Priority};
use super::template::ChatTemplate;
use super::tokenize::TextTokenizer;
use super::{
    CancelToken, ChatMessage, ContextPolicy, EngineCmd, EngineError, EngineOptions, GenEvent,
    GenRequest, ModelInfo, ModelKind, Prompt,
};

/// Commands handled in a row before the next step, so a flood of requests cannot stall the
/// running streams.
const COMMANDS_PER_STEP: usize = 32;

pub(crate) fn wrong_kind(path: &Path, actual: ModelKind, wanted: ModelKind) -> EngineError {
    let (actual, wanted, wanted_kind) = match (actual, wanted) {
        (ModelKind::Embed, _) => ("an embedding", "text generation", "generative (chat)"),
        (ModelKind::Generate, _) => ("a generative", "embeddings", "embedding"),
    };
    EngineError::WrongKind {
        path: path.to_path_buf(),
        actual: actual.into(),
        wanted: wanted.into(),
        wanted_kind: wanted_kind.into(),
    }
}

enum Model {
    Gen(Box<GenModel>),
    Embed(Box<Embedder>),
}

struct Entry {
    key: PathBuf,
    info: ModelInfo,
    model: Model,
}

struct Worker {
    opts: EngineOptions,
    /// The device every model loads onto, or why it could not start (then every load fails
    /// with that reason).
    device: Result<DeviceChoice, EngineError>,
    /// Most recently used first.
    models: Vec<Entry>,
    counters: Arc<EngineCounters>,
    /// Commands that need a model which cannot be loaded until a busy one finishes.
    deferred: VecDeque<EngineCmd>,
}

/// The text of a caught panic.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

pub(crate) fn run(
    rx: mpsc::Receiver<EngineCmd>,
    opts: EngineOptions,
    device: Result<DeviceChoice, EngineError>,
    counters: Arc<EngineCounters>,
) {
    let mut w = Worker {
        opts,
        device,
        models: Vec::new(),
        counters,
        deferred: VecDeque::new(),
    };
    tracing::info!(
        threads = opts.threads,
        parallel = opts.parallel,
        "inference engine started"
    );
    let mut open = true;
    loop {
        for _ in 0..w.deferred.len() {
            if let Some(cmd) = w.deferred.pop_front() {
                w.handle_guarded(cmd);
            }
        }
        let mut handled = 0;
        while open && handled < COMMANDS_PER_STEP {
            let cmd = if w.has_work() {
                match rx.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            } else {
                match rx.recv() {
                    Ok(c) => c,
                    Err(_) => {
                        open = false;
                        break;
                    }
                }
            };
            w.handle_guarded(cmd);
            handled += 1;
        }
        if !w.has_work() {
            if open {
                continue;
            }
            break;
        }
        w.step_guarded();
    }
}

fn canonical(path: &Path) -> Result<PathBuf, EngineError> {
    path.canonicalize().map_err(|_| EngineError::NotFound {
        path: path.to_path_buf(),
    })
}

/// Hands the memory that loading freed back to the system. Reading and repacking a file frees
/// its raw tensor bytes between the repacked weights that stay, and glibc keeps such holes in
/// the middle of its heap resident (it only trims the top); `malloc_trim` releases their pages.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own arenas to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a GGUF model would put on a GPU (see [`GpuBytes`](super::device::GpuBytes)): tensors
/// `blk.N.*` are layer N's; the embedding tables stay in host memory unless the output head
/// is tied to the token table; everything else goes with the head.
fn gpu_bytes(f: &gguf::GgufFile, cfg: &super::decoder::DecoderConfig) -> super::device::GpuBytes {
    let super::device::GpuBytes {
        mut layers,
        positions,
        ..
    } = super::device::GpuBytes::kv_only(cfg.n_layer, cfg.context_length, |i, n| {
        cfg.layer_kv_floats(i, n, super::scheduler::PREFILL_CHUNK)
    });
    let tied = !f.content.tensor_infos.contains_key("output.weight");
    let mut head = 0;
    for (name, t) in &f.content.tensor_infos {
        let size =
            (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64;
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, _)| i.parse::<usize>().ok());
        match layer {
            Some(i) if i < layers.len() => layers[i].0 += size,
            _ if name == "per_layer_token_embd.weight" => {}
            _ if name == "token_embd.weight" && !tied => {}
            _ => head += size,
        }
    }
    super::device::GpuBytes {
        layers,
        head,
        positions,
    }
}

/// Loads a GGUF generative model; the tokenizer and template are checked before any weight.
pub(crate) fn load_gguf(
    path: &Path,
    id: String,
    device: &Device,
) -> Result<(GenModel, ModelInfo), EngineError> {
    let mut f = gguf::open(path)?;
    let tok = TextTokenizer::for_gguf(path, &f.content)?;
    let meta = Meta {
        path,
        md: &f.content.metadata,
    };
    let tmpl_src = ChatTemplate::source_for(path, meta.opt_str("tokenizer.chat_template"));
    let bos = tok
        .bos_id
        .and_then(|i| tok.token_text(i))
        .unwrap_or_default();
    let eos = tok
        .eos_id
        .and_then(|i| tok.token_text(i))
        .unwrap_or_default();
    let template = match tmpl_src {
        Some(src) => ChatTemplate::new(&src.text, &bos, &eos, &src.origin)?,
        None => ChatTemplate::fallback(&f.arch, &bos, &eos),
    };
    let mut stats = gguf::quant_stats(&f);
    if super::decoder::requant_q8_requested() {
        if stats.slow_warning.take().is_some() {
            tracing::info!(model = %path.display(), "converting Q4_1/Q5_0/Q5_1 weights to Q8_0 at load");
        } else if device.is_cpu() && super::simd::kernel().is_some() {
            tracing::info!(model = %path.display(), "engine.requant_q8 has no effect: this CPU runs Influence's own Q4_1/Q5_0/Q5_1 kernels");
        }
    }
    if let Some(w) = &stats.slow_warning {
        tracing::warn!(model = %path.display(), "{w}");
    }
    let on_device = if device.is_cpu() {
        0
    } else {
        let cfg = super::decoder::DecoderConfig::from_meta(&meta, &f.arch)?;
        let bytes = gpu_bytes(&f, &cfg);
        super::device::plan_layers(
            super::device::gpu_memory(device),
            super::device::GpuLayers::from_env(),
            &bytes,
            cfg.splits(),
        )?
    };
    let mut dec = Decoder::load_split(&mut f, device, on_device)?;
    dec.warm_up(tok.bos_id.unwrap_or(0))?;
    let info = ModelInfo {
        id,
        arch: f.arch.clone(),
        kind: ModelKind::Generate,
        context_length: dec.cfg.context_length,
        n_params: stats.n_params,
        quant: stats.dominant,
        slow_quant_warning: stats.slow_warning,
        chat_template: Some(template.source().to_string()),
        gpu_layers: (!device.is_cpu()).then(|| dec.layers_on_device()),
    };
    // The file's header (its vocabulary's strings among it) goes too.
    drop(f);
    release_freed_memory();
    Ok((GenModel::new(dec, tok, template), info))
}

impl Worker {
    fn handle(&mut self, cmd: EngineCmd) {
        match cmd {
            EngineCmd::Load { path, reply } => {
                let r = self.ensure(&path).map(|i| self.models[i].info.clone());
                let _ = reply.send(r);
            }
            EngineCmd::Unload { model, reply } => {
                let key = canonical(&model).unwrap_or(model.clone());
                let before = self.models.len();
                for e in &mut self.models {
                    if e.key == key || e.info.id == model.to_string_lossy() {
                        if let Model::Gen(g) = &mut e.model {
                            g.batch.fail_all(&mut g.dec, || Some(EngineError::Unloaded));
                        }
                    }
                }
                self.models
                    .retain(|e| e.key != key && e.info.id != model.to_string_lossy());
                let _ = reply.send(self.models.len() != before);
            }
            EngineCmd::Loaded { reply } => {
                let _ = reply.send(self.models.iter().map(|e| e.info.clone()).collect());
            }
            EngineCmd::Embed {
                model,
                texts,
                reply,
            } => {
                let r = self
                    .ensure(&model)
                    .and_then(|i| match &self.models[i].model {
                        Model::Embed(e) => e.embed(&texts),
                        Model::Gen(_) => {
                            Err(wrong_kind(&model, ModelKind::Generate, ModelKind::Embed))
                        }
                    });
                let _ = reply.send(r);
            }
            EngineCmd::CountTokens {
                model,
                prompt,
                reply,
            } => {
                let r = self
                    .ensure(&model)
                    .and_then(|i| match &self.models[i].model {
                        Model::Gen(g) => render(g, &prompt).map(|ids| ids.len()),
                        Model::Embed(_) => {
                            Err(wrong_kind(&model, ModelKind::Embed, ModelKind::Generate))
                        }
                    });
                let _ = reply.send(r);
            }
            EngineCmd::Generate {
                req,
                events,
                cancel,
                priority,
            } => {
                if let Err(e) = self.submit(req, &events, cancel, priority) {
                    let _ = events.send(GenEvent::Failed(e));
                }
            }
        }
    }

    fn has_work(&self) -> bool {
        self.models.iter().any(|e| match &e.model {
            Model::Gen(g) => g.batch.has_work(),
            Model::Embed(_) => false,
        })
    }

    /// Whether `path`'s model is loaded or can be without unloading one that is generating.
    fn can_load(&self, path: &Path) -> bool {
        let Ok(key) = canonical(path) else {
            return true; // `ensure` reports the missing file
        };
        if self.models.iter().any(|e| e.key == key) {
            return true;
        }
        let idle = self
            .models
            .iter()
            .filter(|e| !matches!(&e.model, Model::Gen(g) if g.batch.has_work()))
            .count();
        let busy = self.models.len() - idle;
        busy < self.opts.max_loaded.max(1)
    }

    fn handle_guarded(&mut self, cmd: EngineCmd) {
        let needs = match &cmd {
            EngineCmd::Load { path, .. } => Some(path.clone()),
            EngineCmd::Generate { req, .. } => Some(req.model.clone()),
            EngineCmd::Embed { model, .. } | EngineCmd::CountTokens { model, .. } => {
                Some(model.clone())
            }
            EngineCmd::Unload { .. } | EngineCmd::Loaded { .. } => None,
        };
        if needs.is_some_and(|p| !self.can_load(&p)) {
            self.deferred.push_back(cmd);
            return;
        }
        let events = match &cmd {
            EngineCmd::Generate { events, .. } => Some(events.clone()),
            _ => None,
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.handle(cmd))) {
            let msg = panic_text(&*panic);
            tracing::error!(%msg, "engine command panicked");
            if let Some(ev) = events {
                let _ = ev.send(GenEvent::Failed(EngineError::Candle(format!(
                    "internal error: {msg}"
                ))));
            }
        }
    }

    /// One step of every model with work.
    fn step_guarded(&mut self) {
        let counters = self.counters.clone();
        for e in &mut self.models {
            let Model::Gen(g) = &mut e.model else {
                continue;
            };
            if !g.batch.has_work() {
                continue;
            }
            let g = &mut **g;
            let run = catch_unwind(AssertUnwindSafe(|| {
                g.batch.step(&mut g.dec, &g.tok, &counters)
            }));
            if let Err(panic) = run {
                let msg = panic_text(&*panic);
                tracing::error!(%msg, model = %e.info.id, "engine step panicked; its sequences failed and caches cleared");
                g.batch.fail_all(&mut g.dec, || {
                    Some(EngineError::Candle(format!("internal error: {msg}")))
                });
            }
        }
    }

    fn device(&self) -> Result<&DeviceChoice, EngineError> {
        self.device.as_ref().map_err(Clone::clone)
    }

    /// Index of the loaded model (moved to the front), loading it if needed.
    fn ensure(&mut self, path: &Path) -> Result<usize, EngineError> {
        let key = canonical(path)?;
        if let Some(i) = self.models.iter().position(|e| e.key == key) {
            let e = self.models.remove(i);
            self.models.insert(0, e);
            return Ok(0);
        }
        // Free memory before reading the next model: the least recently used that is not
        // generating (`can_load` deferred the command when every one is).
        while self.models.len() >= self.opts.max_loaded.max(1) {
            let Some(i) = self
                .models
                .iter()
                .rposition(|e| !matches!(&e.model, Model::Gen(g) if g.batch.has_work()))
            else {
                break;
            };
            let e = self.models.remove(i);
            tracing::info!(model = %e.info.id, "unloading least recently used model");
        }
        let id = key.to_string_lossy().to_string();
        let start = Instant::now();
        let (model, info) = if key.is_dir() {
            let mt = folder_model_type(&key)?;
            if mt == "bert" {
                let (e, info) = Embedder::load(&key, id, &self.device()?.device)?;
                (Model::Embed(Box::new(e)), info)
            } else if hf_folder::SUPPORTED_FOLDER_TYPES.contains(&mt.as_str()) {
                let (g, info) = hf_folder::load(&key, &mt, id, &self.device()?.device)?;
                (Model::Gen(Box::new(g)), info)
            } else {
                return Err(EngineError::UnsupportedArchitecture {
                    arch: mt,
                    supported: format!(
                        "GGUF files ({}), safetensors folders ({}) and BERT embedding folders",
                        gguf::SUPPORTED_ARCHS.join(", "),
                        hf_folder::SUPPORTED_FOLDER_TYPES.join(", ")
                    ),
                });
            }
        } else {
            let (g, info) = load_gguf(&key, id, &self.device()?.device)?;
            (Model::Gen(Box::new(g)), info)
        };
        let mut model = model;
        if let Model::Gen(g) = &mut model {
            let budget = self.opts.kv_budget_for(g.dec.cfg.context_length);
            g.batch = Batcher::new(self.opts.parallel, budget);
        }
        tracing::info!(model = %info.id, arch = %info.arch, ms = start.elapsed().as_millis() as u64, "model loaded");
        self.models.insert(0, Entry { key, info, model });
        Ok(0)
    }

    /// Validates a request and queues it on its model's batcher.
    fn submit(
        &mut self,
        req: GenRequest,
        events: &UnboundedSender<GenEvent>,
        cancel: CancelToken,
        priority: Priority,
    ) -> Result<(), EngineError> {
        let start = Instant::now();
        req.params.validate().map_err(EngineError::BadParams)?;
        let i = self.ensure(&req.model)?;
        let g = match &mut self.models[i].model {
            Model::Gen(g) => g,
            Model::Embed(_) => {
                return Err(wrong_kind(
                    &req.model,
                    ModelKind::Embed,
                    ModelKind::Generate,
                ))
            }
        };
        let p = req.params;
        let ctx = g.dec.cfg.context_length;
        let (ids, dropped) = fit_prompt(g, &req.prompt, p.max_tokens, ctx, p.context_policy)?;
        let need = (ids.len() + p.max_tokens).min(ctx);
        let state = g.dec.state_positions_reserve();
        if need + state > g.batch.budget() {
            return Err(EngineError::KvBudget {
                need: need + state,
                prompt_tokens: ids.len(),
                max_tokens: p.max_tokens,
                state_positions: state,
                budget: g.batch.budget(),
            });
        }
        // Compiled before `Started`, so a bad grammar is refused before any output.
        let constraint = match &p.constraint {
            Some(c) => Some(g.vocab()?.start(c)?),
            None => None,
        };
        g.batch.submit(Pending {
            ids,
            dropped,
            params: p,
            constraint,
            events: events.clone(),
            cancel,
            priority,
            start,
            need,
        });
        Ok(())
    }
}

/// Renders and tokenizes a prompt.
fn render(g: &GenModel, prompt: &Prompt) -> Result<Vec<u32>, EngineError> {
    let text = match prompt {
        Prompt::Raw(s) => s.clone(),
        Prompt::Chat(msgs) => g.template.render(msgs, true)?,
        Prompt::Template {
            messages,
            vars,
            prefill,
        } => g.template.render_json(messages, true, vars)? + prefill,
    };
    g.tok.encode(&text)
}

/// Tokenizes the prompt and makes it fit `ctx` with room for `max_tokens`, dropping the oldest
/// non-system messages when the policy allows. Returns the ids and how many messages went.
fn fit_prompt(
    g: &GenModel,
    prompt: &Prompt,
    max_tokens: usize,
    ctx: usize,
    policy: ContextPolicy,
) -> Result<(Vec<u32>, usize), EngineError> {
    let mut ids = render(g, prompt)?;
    if ids.is_empty() {
        return Err(EngineError::BadParams(
            "the prompt is empty; allowed: at least one token".into(),
        ));
    }
    let fits = |n: usize| n + max_tokens <= ctx;
    if fits(ids.len()) {
        return Ok((ids, 0));
    }
    let overflow = |n| EngineError::ContextOverflow {
        prompt_tokens: n,
        context: ctx.saturating_sub(max_tokens),
    };
    if policy != ContextPolicy::DropOldest {
        return Err(overflow(ids.len()));
    }
    // Never drop the system prompt or the last message (the question being asked).
    let droppable = |role: &str, i: usize, n: usize| role != "system" && i + 1 < n;
    let mut dropped = 0;
    match prompt {
        Prompt::Raw(_) => Err(overflow(ids.len())),
        Prompt::Chat(m) => {
            let mut msgs: Vec<ChatMessage> = m.clone();
            loop {
                let n = msgs.len();
                let Some(victim) = (0..n).find(|&i| droppable(msgs[i].role.as_str(), i, n)) else {
                    return Err(overflow(ids.len()));
                };
                msgs.remove(victim);
                dropped += 1;
                ids = render(g, &Prompt::Chat(msgs.clone()))?;
                if fits(ids.len()) {
                    return Ok((ids, dropped));
                }
            }
        }
        Prompt::Template {
            messages,
            vars,
            prefill,
        } => {
            let mut msgs = messages.clone();
            let role = |m: &serde_json::Value| {
                m.get("role")
                    .and_then(|r| r.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            loop {
                let n = msgs.len();
                let Some(victim) = (0..n).find(|&i| droppable(&role(&msgs[i]), i, n)) else {
                    return Err(overflow(ids.len()));
                };
                msgs.remove(victim);
                dropped += 1;
                ids = render(
                    g,
                    &Prompt::Template {
                        messages: msgs.clone(),
                        vars: vars.clone(),
                        prefill: prefill.clone(),
                    },
                )?;
                if fits(ids.len()) {
                    return Ok((ids, dropped));
                }
            }
        }
    }
}
