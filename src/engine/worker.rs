//! The engine thread: owns the loaded models and serves [`EngineCmd`]s one at a time.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::constraint::{SeqConstraint, Step};
use super::decoder::Decoder;
use super::embed::{folder_model_type, Embedder};
use super::gen_model::GenModel;
use super::gguf::{self, Meta};
use super::hf_folder;
use super::sampling::Sampler;
use super::stop::StopMatcher;
use super::template::ChatTemplate;
use super::tokenize::{Detokenizer, TextTokenizer};
use super::{
    CancelToken, ChatMessage, ContextPolicy, EngineCmd, EngineError, EngineOptions, FinishReason,
    GenEvent, GenRequest, GenStats, ModelInfo, ModelKind, Prompt,
};

/// Prompt tokens fed per forward pass during prefill: bounds attention memory and lets a
/// cancel land between chunks.
pub const PREFILL_CHUNK: usize = 128;

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
    /// Most recently used first.
    models: Vec<Entry>,
}

pub(crate) fn run(rx: mpsc::Receiver<EngineCmd>, opts: EngineOptions) {
    let mut w = Worker {
        opts,
        models: Vec::new(),
    };
    tracing::info!(threads = opts.threads, "inference engine started");
    while let Ok(cmd) = rx.recv() {
        let events = match &cmd {
            EngineCmd::Generate { events, .. } => Some(events.clone()),
            _ => None,
        };
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| w.handle(cmd))) {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(%msg, "engine command panicked; caches cleared");
            for e in &mut w.models {
                if let Model::Gen(g) = &mut e.model {
                    g.dec.truncate_cache(0);
                    g.cached.clear();
                }
            }
            if let Some(ev) = events {
                let _ = ev.send(GenEvent::Failed(EngineError::Candle(format!(
                    "internal error: {msg}"
                ))));
            }
        }
    }
}

fn canonical(path: &Path) -> Result<PathBuf, EngineError> {
    path.canonicalize().map_err(|_| EngineError::NotFound {
        path: path.to_path_buf(),
    })
}

/// Loads a GGUF generative model; the tokenizer and template are checked before any weight.
pub(crate) fn load_gguf(path: &Path, id: String) -> Result<(GenModel, ModelInfo), EngineError> {
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
    let mut stats = gguf::quant_stats(&f.content);
    if super::decoder::requant_q8_requested() && stats.slow_warning.take().is_some() {
        tracing::info!(model = %path.display(), "converting Q4_1/Q5_0/Q5_1 weights to Q8_0 at load");
    }
    if let Some(w) = &stats.slow_warning {
        tracing::warn!(model = %path.display(), "{w}");
    }
    let dec = Decoder::load(&mut f)?;
    let info = ModelInfo {
        id,
        arch: f.arch.clone(),
        kind: ModelKind::Generate,
        context_length: dec.cfg.context_length,
        n_params: stats.n_params,
        quant: stats.dominant,
        slow_quant_warning: stats.slow_warning,
        chat_template: Some(template.source().to_string()),
    };
    Ok((
        GenModel {
            dec,
            tok,
            template,
            cached: Vec::new(),
            vocab: None,
        },
        info,
    ))
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
            } => {
                if let Err(e) = self.generate(req, &events, &cancel) {
                    let _ = events.send(GenEvent::Failed(e));
                }
            }
        }
    }

    /// Index of the loaded model (moved to the front), loading it if needed.
    fn ensure(&mut self, path: &Path) -> Result<usize, EngineError> {
        let key = canonical(path)?;
        if let Some(i) = self.models.iter().position(|e| e.key == key) {
            let e = self.models.remove(i);
            self.models.insert(0, e);
            return Ok(0);
        }
        // Free memory before reading the next model.
        while self.models.len() >= self.opts.max_loaded.max(1) {
            if let Some(e) = self.models.pop() {
                tracing::info!(model = %e.info.id, "unloading least recently used model");
            }
        }
        let id = key.to_string_lossy().to_string();
        let start = Instant::now();
        let (model, info) = if key.is_dir() {
            let mt = folder_model_type(&key)?;
            if mt == "bert" {
                let (e, info) = Embedder::load(&key, id)?;
                (Model::Embed(Box::new(e)), info)
            } else if hf_folder::SUPPORTED_FOLDER_TYPES.contains(&mt.as_str()) {
                let (g, info) = hf_folder::load(&key, &mt, id)?;
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
            let (g, info) = load_gguf(&key, id)?;
            (Model::Gen(Box::new(g)), info)
        };
        tracing::info!(model = %info.id, arch = %info.arch, ms = start.elapsed().as_millis() as u64, "model loaded");
        self.models.insert(0, Entry { key, info, model });
        Ok(0)
    }

    fn generate(
        &mut self,
        req: GenRequest,
        events: &UnboundedSender<GenEvent>,
        cancel: &CancelToken,
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
        let p = &req.params;
        let ctx = g.dec.cfg.context_length;
        let (ids, dropped) = fit_prompt(g, &req.prompt, p.max_tokens, ctx, p.context_policy)?;
        // Compiled before `Started`, so a bad grammar is refused before any output.
        let constraint = match &p.constraint {
            Some(c) => Some(g.vocab()?.start(c)?),
            None => None,
        };

        // Keep the longest common prefix with what the cache holds; at least one prompt token
        // must be fed again to get logits.
        let lcp = g
            .cached
            .iter()
            .zip(&ids)
            .take_while(|(a, b)| a == b)
            .count();
        let keep = lcp.min(ids.len() - 1);
        g.dec.truncate_cache(keep);
        g.cached.truncate(keep);
        let _ = events.send(GenEvent::Started {
            prompt_tokens: ids.len(),
            cached_tokens: keep,
            dropped_messages: dropped,
        });

        let run = run_generation(g, &ids, keep, p, constraint, events, cancel, start);
        if run.is_err() {
            // The cache may hold a partial chunk; forget it rather than reuse bad state.
            g.dec.truncate_cache(0);
            g.cached.clear();
        }
        let stats = run?;
        let _ = events.send(GenEvent::Done(stats));
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

fn token_logprob(g: &GenModel, logits: &[f32], id: u32, top: usize) -> super::TokenLogprob {
    let text = |i: u32| g.tok.decode(&[i]).unwrap_or_default();
    let (logprob, best) = super::sampling::logprobs(logits, id, top);
    super::TokenLogprob {
        id,
        text: text(id),
        logprob,
        top: best
            .into_iter()
            .map(|(i, logprob)| super::TopLogprob {
                id: i,
                text: text(i),
                logprob,
            })
            .collect(),
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[allow(clippy::too_many_arguments)]
fn run_generation(
    g: &mut GenModel,
    ids: &[u32],
    keep: usize,
    p: &super::GenParams,
    mut constraint: Option<SeqConstraint>,
    events: &UnboundedSender<GenEvent>,
    cancel: &CancelToken,
    start: Instant,
) -> Result<GenStats, EngineError> {
    let ctx = g.dec.cfg.context_length;
    let mut stats = GenStats {
        prompt_tokens: ids.len(),
        cached_tokens: keep,
        generated_tokens: 0,
        ttft_ms: 0.0,
        prompt_ms: 0.0,
        gen_ms: 0.0,
        prompt_tok_s: 0.0,
        gen_tok_s: 0.0,
        finish: FinishReason::Stop,
    };
    let stopped = |c: &CancelToken| c.is_cancelled() || events.is_closed();

    // Prefill the uncached suffix.
    let t_prompt = Instant::now();
    let suffix = &ids[keep..];
    let mut logits = Vec::new();
    let n_chunks = suffix.len().div_ceil(PREFILL_CHUNK);
    for (ci, chunk) in suffix.chunks(PREFILL_CHUNK).enumerate() {
        if stopped(cancel) {
            stats.finish = FinishReason::Cancelled;
            return Ok(stats);
        }
        let last = ci + 1 == n_chunks;
        if let Some(l) = g.dec.forward(chunk, last)? {
            logits = l;
        }
        g.cached.extend_from_slice(chunk);
    }
    stats.prompt_ms = ms(t_prompt);
    if stats.prompt_ms > 0.0 {
        stats.prompt_tok_s = suffix.len() as f64 / (stats.prompt_ms / 1e3);
    }

    let mut sampler = Sampler::new(p);
    let mut history: Vec<u32> = ids.to_vec();
    let mut detok = Detokenizer::default();
    let mut stop = StopMatcher::new(&p.stop);
    let mut last_id = 0;
    let mut decode_steps = 0usize;
    let mut decode_ms = 0.0;
    let t_gen = Instant::now();
    loop {
        if let Some(c) = &mut constraint {
            c.mask(&mut logits)?;
        }
        let id = sampler.sample(&mut logits, &history);
        let logprob = p
            .logprobs
            .map(|n| Box::new(token_logprob(g, &logits, id, n as usize)));
        if g.tok.is_stop(id) {
            stats.finish = FinishReason::Stop;
            break;
        }
        last_id = id;
        history.push(id);
        stats.generated_tokens += 1;
        let piece = detok.push(&g.tok, id)?;
        let complete = match &mut constraint {
            Some(c) => c.accept(id, &piece)? == Step::Complete,
            None => false,
        };
        let (mut text, hit) = stop.push(&piece);
        if complete && !hit {
            // Nothing may follow a complete grammar: text held for a stop string is final.
            text.push_str(&stop.flush());
        }
        if stats.generated_tokens == 1 {
            stats.ttft_ms = ms(start);
        }
        if hit || complete {
            if !text.is_empty() {
                let _ = events.send(GenEvent::Token { id, text, logprob });
            }
            stats.finish = FinishReason::Stop;
            break;
        }
        if events.send(GenEvent::Token { id, text, logprob }).is_err() {
            stats.finish = FinishReason::Cancelled;
            break;
        }
        if stats.generated_tokens >= p.max_tokens || g.dec.cache_len() + 1 > ctx {
            stats.finish = FinishReason::Length;
            break;
        }
        if stopped(cancel) {
            stats.finish = FinishReason::Cancelled;
            break;
        }
        let t = Instant::now();
        logits = g
            .dec
            .forward(&[id], true)?
            .ok_or_else(|| EngineError::Candle("the decoder returned no logits".into()))?;
        g.cached.push(id);
        decode_steps += 1;
        decode_ms += ms(t);
    }
    let rest = stop.flush();
    if !rest.is_empty() && stats.finish != FinishReason::Stop {
        let _ = events.send(GenEvent::Token {
            id: last_id,
            text: rest,
            logprob: None,
        });
    }
    stats.gen_ms = ms(t_gen);
    if decode_ms > 0.0 {
        stats.gen_tok_s = decode_steps as f64 / (decode_ms / 1e3);
    }
    Ok(stats)
}
