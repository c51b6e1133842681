//! A scripted stand-in engine **for tests only** (server, TUI, CLI plumbing).
//!
//! It answers the same [`EngineCmd`]s as the real engine, but "generates" a fixed list of token
//! strings and "embeds" text into deterministic hash-derived vectors. Nothing here runs a model,
//! so it must never be offered to users: no CLI flag or configuration key selects it.

use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{
    EngineCmd, EngineError, EngineHandle, FinishReason, GenEvent, GenStats, ModelInfo, ModelKind,
    Prompt,
};

/// What the fake engine knows and says.
#[derive(Debug, Clone)]
pub struct FakeScript {
    /// Models that "exist"; `load` succeeds for a path equal to a model's `id`.
    pub models: Vec<ModelInfo>,
    /// Token texts streamed by every generation (cut at `max_tokens`).
    pub tokens: Vec<String>,
    /// Sleep before each token, to exercise streaming and cancellation.
    pub token_delay: Duration,
    /// Length of the vectors returned by `embed`.
    pub embedding_dim: usize,
    /// Stats of every generation that ended, in order (shared by clones of the script), so
    /// tests can see a cancellation nobody was listening for any more.
    pub finished: std::sync::Arc<std::sync::Mutex<Vec<GenStats>>>,
    /// The constraint of every generation started, in order (the fake does not enforce them;
    /// tests see what the API asked the engine for).
    pub constraints: std::sync::Arc<std::sync::Mutex<Vec<Option<Box<super::Constraint>>>>>,
}

impl FakeScript {
    /// One generative model `fake/chat.gguf` and one embedding model `fake/embed`, answering
    /// "Hello from the fake engine." token by token.
    pub fn simple() -> Self {
        Self {
            models: vec![
                fake_model("fake/chat.gguf", ModelKind::Generate),
                fake_model("fake/embed", ModelKind::Embed),
            ],
            tokens: ["Hello", " from", " the", " fake", " engine", "."]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            token_delay: Duration::ZERO,
            embedding_dim: 8,
            finished: Default::default(),
            constraints: Default::default(),
        }
    }
}

/// A [`ModelInfo`] for a scripted model.
pub fn fake_model(id: &str, kind: ModelKind) -> ModelInfo {
    ModelInfo {
        id: id.to_string(),
        arch: match kind {
            ModelKind::Generate => "llama".into(),
            ModelKind::Embed => "bert".into(),
        },
        kind,
        context_length: 2048,
        n_params: 1_000_000,
        quant: "Q8_0".into(),
        slow_quant_warning: None,
        chat_template: None,
        gpu_layers: None,
    }
}

impl EngineHandle {
    /// Starts a scripted fake engine thread. Test helper: see the [module docs](self).
    pub fn fake(script: FakeScript) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("influence-fake-engine".into())
            .spawn(move || FakeWorker::new(script).run(rx))
            .expect("the OS refused to start the fake engine thread");
        EngineHandle::from_sender(tx)
    }
}

struct FakeWorker {
    script: FakeScript,
    /// Loaded model ids, most recently used first.
    loaded: Vec<String>,
}

impl FakeWorker {
    fn new(script: FakeScript) -> Self {
        Self {
            script,
            loaded: Vec::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<EngineCmd>) {
        while let Ok(cmd) = rx.recv() {
            self.handle(cmd);
        }
    }

    fn find(&mut self, path: &Path) -> Result<ModelInfo, EngineError> {
        let key = path.to_string_lossy();
        let info = self
            .script
            .models
            .iter()
            .find(|m| m.id == key)
            .cloned()
            .ok_or_else(|| EngineError::NotFound {
                path: path.to_path_buf(),
            })?;
        self.loaded.retain(|id| *id != info.id);
        self.loaded.insert(0, info.id.clone());
        Ok(info)
    }

    fn find_kind(&mut self, path: &Path, kind: ModelKind) -> Result<ModelInfo, EngineError> {
        let info = self.find(path)?;
        if info.kind != kind {
            return Err(super::worker::wrong_kind(path, info.kind, kind));
        }
        Ok(info)
    }

    fn handle(&mut self, cmd: EngineCmd) {
        match cmd {
            EngineCmd::Load { path, reply } => {
                let _ = reply.send(self.find(&path));
            }
            EngineCmd::Unload { model, reply } => {
                let key = model.to_string_lossy().to_string();
                let before = self.loaded.len();
                self.loaded.retain(|id| *id != key);
                let _ = reply.send(self.loaded.len() != before);
            }
            EngineCmd::Loaded { reply } => {
                let infos = self
                    .loaded
                    .iter()
                    .filter_map(|id| self.script.models.iter().find(|m| &m.id == id).cloned())
                    .collect();
                let _ = reply.send(infos);
            }
            EngineCmd::CountTokens {
                model,
                prompt,
                reply,
            } => {
                let r = self
                    .find_kind(&model, ModelKind::Generate)
                    .map(|_| count_words(&prompt));
                let _ = reply.send(r);
            }
            EngineCmd::Embed {
                model,
                texts,
                reply,
            } => {
                let r = self.find_kind(&model, ModelKind::Embed).map(|_| {
                    texts
                        .iter()
                        .map(|t| hash_vector(t, self.script.embedding_dim))
                        .collect()
                });
                let _ = reply.send(r);
            }
            EngineCmd::Generate {
                req,
                events,
                cancel,
                ..
            } => {
                let start = Instant::now();
                if let Err(e) = req.params.validate() {
                    let _ = events.send(GenEvent::Failed(EngineError::BadParams(e)));
                    return;
                }
                if let Err(e) = self.find_kind(&req.model, ModelKind::Generate) {
                    let _ = events.send(GenEvent::Failed(e));
                    return;
                }
                if let Ok(mut log) = self.script.constraints.lock() {
                    log.push(req.params.constraint.clone());
                }
                let prompt_tokens = count_words(&req.prompt);
                let _ = events.send(GenEvent::Started {
                    prompt_tokens,
                    cached_tokens: 0,
                    dropped_messages: 0,
                });
                let mut generated = 0;
                let mut ttft_ms = 0.0;
                let mut text = String::new();
                let mut finish = FinishReason::Stop;
                for (i, tok) in self.script.tokens.iter().enumerate() {
                    if generated == req.params.max_tokens {
                        finish = FinishReason::Length;
                        break;
                    }
                    if !self.script.token_delay.is_zero() {
                        std::thread::sleep(self.script.token_delay);
                    }
                    if cancel.is_cancelled() || events.is_closed() {
                        finish = FinishReason::Cancelled;
                        break;
                    }
                    text.push_str(tok);
                    if req.params.stop.iter().any(|s| text.contains(s.as_str())) {
                        break;
                    }
                    if generated == 0 {
                        ttft_ms = start.elapsed().as_secs_f64() * 1e3;
                    }
                    let ev = GenEvent::Token {
                        id: i as u32,
                        text: tok.clone(),
                        logprob: None,
                    };
                    if events.send(ev).is_err() {
                        finish = FinishReason::Cancelled;
                        break;
                    }
                    generated += 1;
                }
                let total_ms = start.elapsed().as_secs_f64() * 1e3;
                let gen_ms = (total_ms - ttft_ms).max(0.0);
                let stats = GenStats {
                    prompt_tokens,
                    cached_tokens: 0,
                    generated_tokens: generated,
                    ttft_ms,
                    prompt_ms: 0.0,
                    gen_ms,
                    prompt_tok_s: 0.0,
                    gen_tok_s: if gen_ms > 0.0 {
                        generated as f64 / (gen_ms / 1e3)
                    } else {
                        0.0
                    },
                    finish,
                };
                if let Ok(mut log) = self.script.finished.lock() {
                    log.push(stats.clone());
                }
                let _ = events.send(GenEvent::Done(stats));
            }
        }
    }
}

/// Whitespace-separated words, standing in for a token count.
fn count_words(prompt: &Prompt) -> usize {
    match prompt {
        Prompt::Raw(s) => s.split_whitespace().count(),
        Prompt::Chat(msgs) => msgs
            .iter()
            .map(|m| m.content.split_whitespace().count() + 4)
            .sum(),
        Prompt::Template { messages, .. } => messages
            .iter()
            .map(|m| {
                m.get("content")
                    .and_then(|c| c.as_str())
                    .map_or(0, |c| c.split_whitespace().count())
                    + 4
            })
            .sum(),
    }
}

/// Deterministic unit vector derived from the text (FNV-1a seeded per dimension).
fn hash_vector(text: &str, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim as u64)
        .map(|d| {
            let mut h: u64 = 0xcbf29ce484222325 ^ d.wrapping_mul(0x9e3779b97f4a7c15);
            for b in text.bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x100000001b3);
            }
            (h >> 11) as f32 / (1u64 << 53) as f32 - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{wait, ChatMessage, GenParams, GenRequest};
    use std::path::PathBuf;

    fn req(max_tokens: usize) -> GenRequest {
        GenRequest {
            model: PathBuf::from("fake/chat.gguf"),
            prompt: Prompt::Chat(vec![ChatMessage::user("hi there")]),
            params: GenParams {
                max_tokens,
                ..GenParams::default()
            },
        }
    }

    #[test]
    fn streams_script_then_done() {
        let e = EngineHandle::fake(FakeScript::simple());
        let out = e.generate(req(100)).collect_blocking().unwrap();
        assert_eq!(out.text, "Hello from the fake engine.");
        let stats = out.stats.unwrap();
        assert_eq!(stats.generated_tokens, 6);
        assert_eq!(stats.finish, FinishReason::Stop);
        assert_eq!(stats.prompt_tokens, 6);
    }

    #[test]
    fn max_tokens_gives_length() {
        let e = EngineHandle::fake(FakeScript::simple());
        let out = e.generate(req(2)).collect_blocking().unwrap();
        assert_eq!(out.text, "Hello from");
        assert_eq!(out.stats.unwrap().finish, FinishReason::Length);
    }

    #[test]
    fn stop_string_is_not_emitted() {
        let e = EngineHandle::fake(FakeScript::simple());
        let mut r = req(100);
        r.params.stop = vec!["fake".into()];
        let out = e.generate(r).collect_blocking().unwrap();
        assert_eq!(out.text, "Hello from the");
        assert_eq!(out.stats.unwrap().finish, FinishReason::Stop);
    }

    #[test]
    fn cancel_stops_within_a_token() {
        let mut script = FakeScript::simple();
        script.token_delay = Duration::from_millis(20);
        let e = EngineHandle::fake(script);
        let mut g = e.generate(req(100));
        let mut n = 0;
        let stats = loop {
            match g.events.blocking_recv().unwrap() {
                GenEvent::Token { .. } => {
                    n += 1;
                    g.cancel.cancel();
                }
                GenEvent::Done(s) => break s,
                GenEvent::Started { .. } => {}
                GenEvent::Failed(e) => panic!("{e}"),
            }
        };
        assert_eq!(stats.finish, FinishReason::Cancelled);
        assert_eq!(n, 1);
        assert_eq!(stats.generated_tokens, 1);
    }

    #[test]
    fn bad_params_and_unknown_models_fail() {
        let e = EngineHandle::fake(FakeScript::simple());
        let mut r = req(10);
        r.params.temperature = 9.0;
        assert!(matches!(
            e.generate(r).collect_blocking(),
            Err(EngineError::BadParams(m)) if m.contains("temperature")
        ));
        let mut r = req(10);
        r.model = PathBuf::from("nope.gguf");
        assert!(matches!(
            e.generate(r).collect_blocking(),
            Err(EngineError::NotFound { .. })
        ));
        let mut r = req(10);
        r.model = PathBuf::from("fake/embed");
        assert!(matches!(
            e.generate(r).collect_blocking(),
            Err(EngineError::WrongKind { .. })
        ));
    }

    #[test]
    fn load_loaded_unload_and_embed() {
        let e = EngineHandle::fake(FakeScript::simple());
        let info = wait(e.load("fake/chat.gguf".into())).unwrap();
        assert_eq!(info.kind, ModelKind::Generate);
        assert_eq!(e.loaded().blocking_recv().unwrap().len(), 1);
        let v = wait(e.embed("fake/embed".into(), vec!["a".into(), "b".into()])).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].len(), 8);
        let norm: f32 = v[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_ne!(v[0], v[1]);
        assert_eq!(e.loaded().blocking_recv().unwrap()[0].id, "fake/embed");
        assert!(e.unload("fake/chat.gguf".into()).blocking_recv().unwrap());
        assert_eq!(e.loaded().blocking_recv().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn usable_from_async_code() {
        let e = EngineHandle::fake(FakeScript::simple());
        let mut g = e.generate(req(3));
        let mut text = String::new();
        while let Some(ev) = g.events.recv().await {
            match ev {
                GenEvent::Token { text: t, .. } => text.push_str(&t),
                GenEvent::Done(_) => break,
                _ => {}
            }
        }
        assert_eq!(text, "Hello from the");
    }
}
