//! Runs [`ChatEffect`]s: engine and remote generations (their events forwarded as
//! [`ChatMsg::Gen`]), the conversation store, exports, presets and the OSC 52 clipboard.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::app::chat::params::Presets;
use crate::app::chat::slash::ExportFormat;
use crate::app::chat::{Backend, ChatEffect, ChatModel, ChatMsg};
use crate::app::msg::Msg;
use crate::conversations::{export_json, export_markdown, import_json, ConversationStore};
use crate::engine::{CancelToken, EngineHandle, GenEvent, GenRequest, Prompt};
use crate::library::{Library, LibraryRoots};
use crate::remote::RemoteSpec;

/// Where copied text goes: the terminal (stdout) in the app, a buffer in tests.
pub type ClipboardSink = Box<dyn FnMut(&[u8]) -> std::io::Result<()> + Send>;

pub struct ChatRunner {
    engine: EngineHandle,
    store: Result<ConversationStore, String>,
    data_dir: PathBuf,
    /// Library roots for `/model NAME`; `None` resolves names as paths only.
    roots: Option<LibraryRoots>,
    remote_key: Option<String>,
    http: reqwest::Client,
    running: HashMap<u64, CancelToken>,
    clipboard: ClipboardSink,
}

impl std::fmt::Debug for ChatRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatRunner")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// `<data_dir>/presets.json`.
pub fn presets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("presets.json")
}

/// Reads the presets file; a missing file is an empty set.
pub fn load_presets(data_dir: &Path) -> Result<Presets, String> {
    let path = presets_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not a valid presets file ({e}); fix or remove it, defaults are used",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Presets::new()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The OSC 52 escape that asks the terminal to put `text` on the system clipboard; works over
/// SSH and inside tmux with `set-clipboard on`.
pub fn osc52(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    format!("\x1b]52;c;{b64}\x07").into_bytes()
}

fn slug(title: &str) -> String {
    let s: String = title
        .chars()
        .map(|c| {
            if c.is_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let s: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
    let s = s.join("-");
    let s: String = s.chars().take(40).collect();
    if s.is_empty() {
        "chat".into()
    } else {
        s
    }
}

impl ChatRunner {
    pub fn new(engine: EngineHandle, data_dir: PathBuf) -> ChatRunner {
        let store =
            ConversationStore::open(data_dir.join("conversations")).map_err(|e| e.to_string());
        ChatRunner {
            engine,
            store,
            data_dir,
            roots: None,
            remote_key: None,
            http: reqwest::Client::new(),
            running: HashMap::new(),
            clipboard: Box::new(|bytes| {
                let mut out = std::io::stdout();
                out.write_all(bytes)?;
                out.flush()
            }),
        }
    }

    pub fn with_library(mut self, roots: LibraryRoots) -> Self {
        self.roots = Some(roots);
        self
    }

    pub fn with_remote_key(mut self, key: Option<String>) -> Self {
        self.remote_key = key;
        self
    }

    pub fn with_clipboard(mut self, sink: ClipboardSink) -> Self {
        self.clipboard = sink;
        self
    }

    pub fn store(&self) -> Option<&ConversationStore> {
        self.store.as_ref().ok()
    }

    pub fn run(&mut self, effect: ChatEffect, tx: &UnboundedSender<Msg>) {
        let send = |m: ChatMsg| {
            let _ = tx.send(Msg::Chat(m));
        };
        match effect {
            ChatEffect::LoadModel { seq, spec } => self.load_model(seq, spec, tx.clone()),
            ChatEffect::Generate {
                seq,
                backend,
                messages,
                params,
                budget,
            } => {
                // Only one generation runs at a time; older entries are finished.
                self.running.clear();
                let tx = tx.clone();
                match backend {
                    Backend::Local(model) if budget.is_none() => {
                        let gen = self.engine.generate_interactive(GenRequest {
                            model,
                            prompt: Prompt::Chat(messages),
                            params,
                        });
                        self.running.insert(seq, gen.cancel.clone());
                        tokio::spawn(forward(gen.events, seq, 0, Instant::now(), tx));
                    }
                    Backend::Local(model) => {
                        // Counting tokens to fit the budget comes first, so the engine's own
                        // cancel flag does not exist yet; ours is relayed to it.
                        let engine = self.engine.clone();
                        let cancel = CancelToken::new();
                        self.running.insert(seq, cancel.clone());
                        tokio::spawn(async move {
                            let start = Instant::now();
                            let fit = fit_budget(&engine, &model, messages, &params, budget).await;
                            let (messages, dropped) = match fit {
                                Ok(x) => x,
                                Err(error) => {
                                    let _ = tx.send(Msg::Chat(ChatMsg::GenFailed { seq, error }));
                                    return;
                                }
                            };
                            if cancel.is_cancelled() {
                                return;
                            }
                            let gen = engine.generate_interactive(GenRequest {
                                model,
                                prompt: Prompt::Chat(messages),
                                params,
                            });
                            let relay = {
                                let (ours, theirs) = (cancel.clone(), gen.cancel.clone());
                                tokio::spawn(async move {
                                    while !ours.is_cancelled() {
                                        tokio::time::sleep(std::time::Duration::from_millis(20))
                                            .await;
                                    }
                                    theirs.cancel();
                                })
                            };
                            forward(gen.events, seq, dropped, start, tx).await;
                            relay.abort();
                        });
                    }
                    Backend::Remote(spec) => {
                        let cancel = CancelToken::new();
                        self.running.insert(seq, cancel.clone());
                        let http = self.http.clone();
                        tokio::spawn(async move {
                            let start = Instant::now();
                            let emit = |event| {
                                let _ = tx.send(Msg::Chat(ChatMsg::Gen {
                                    seq,
                                    elapsed_ms: start.elapsed().as_secs_f64() * 1000.0,
                                    event,
                                }));
                            };
                            let r = crate::remote::stream_chat(
                                &http, &spec, &messages, &params, &cancel, emit,
                            )
                            .await;
                            if let Err(e) = r {
                                let _ = tx.send(Msg::Chat(ChatMsg::GenFailed {
                                    seq,
                                    error: e.to_string(),
                                }));
                            }
                        });
                    }
                }
            }
            ChatEffect::Cancel { seq } => {
                if let Some(c) = self.running.remove(&seq) {
                    c.cancel();
                }
            }
            ChatEffect::Save(conv) => {
                // An untouched new chat is not worth a file.
                if conv.messages.is_empty() && !self.store().is_some_and(|s| s.contains(&conv.id)) {
                    return;
                }
                let r = match self.store.as_mut() {
                    Ok(store) => store
                        .save(&conv)
                        .map(|()| store.list().to_vec())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                send(ChatMsg::Saved(r));
            }
            ChatEffect::Open(id) => {
                let r = match &self.store {
                    Ok(store) => store.load(&id).map(Box::new).map_err(|e| e.to_string()),
                    Err(e) => Err(e.clone()),
                };
                send(ChatMsg::Opened(r));
            }
            ChatEffect::OpenMatching(q) => {
                let r = match &self.store {
                    Ok(store) => {
                        let ql = q.to_lowercase();
                        let hit = store
                            .list()
                            .iter()
                            .find(|s| s.id == q)
                            .or_else(|| {
                                store
                                    .list()
                                    .iter()
                                    .find(|s| s.title.to_lowercase().contains(&ql))
                            })
                            .map(|s| s.id.clone());
                        match hit {
                            Some(id) => store.load(&id).map(Box::new).map_err(|e| e.to_string()),
                            None => Err(format!(
                                "no saved chat has the id or a title containing {q:?}; /history lists them"
                            )),
                        }
                    }
                    Err(e) => Err(e.clone()),
                };
                send(ChatMsg::Opened(r));
            }
            ChatEffect::Delete(id) => {
                let r = match self.store.as_mut() {
                    Ok(store) => match store.delete(&id) {
                        Ok(()) | Err(crate::conversations::ConversationError::NotFound(_)) => {
                            Ok(store.list().to_vec())
                        }
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.clone()),
                };
                send(ChatMsg::Deleted(r));
            }
            ChatEffect::Export { conv, format } => {
                let dir = self.data_dir.join("exports");
                let path = dir.join(format!(
                    "{}-{}.{}",
                    slug(&conv.title),
                    conv.id,
                    format.extension()
                ));
                let text = match format {
                    ExportFormat::Markdown => export_markdown(&conv),
                    ExportFormat::Json => export_json(&conv),
                };
                let r = std::fs::create_dir_all(&dir)
                    .and_then(|()| crate::fsutil::write_atomic(&path, text.as_bytes()))
                    .map(|()| path.clone())
                    .map_err(|e| {
                        format!(
                            "could not write {}: {e}; check free space and permissions",
                            path.display()
                        )
                    });
                send(ChatMsg::Exported(r));
            }
            ChatEffect::Import(path) => {
                let r = std::fs::read_to_string(&path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))
                    .and_then(|text| import_json(&text).map_err(|e| e.to_string()))
                    .and_then(|conv| match self.store.as_mut() {
                        Ok(store) => store.add_imported(conv).map_err(|e| e.to_string()),
                        Err(e) => Err(e.clone()),
                    });
                if let (Ok(_), Some(store)) = (&r, self.store()) {
                    send(ChatMsg::Saved(Ok(store.list().to_vec())));
                }
                send(ChatMsg::Opened(r.map(Box::new)));
            }
            ChatEffect::Search(q) => {
                let hits = self.store().map(|s| s.search(&q)).unwrap_or_default();
                send(ChatMsg::SearchResults { query: q, hits });
            }
            ChatEffect::Copy(text) => {
                let r = (self.clipboard)(&osc52(&text))
                    .map(|()| text.len())
                    .map_err(|e| format!("could not write to the terminal's clipboard: {e}"));
                send(ChatMsg::Copied(r));
            }
            ChatEffect::SavePresets(presets) => {
                let path = presets_path(&self.data_dir);
                let r = serde_json::to_vec_pretty(&presets)
                    .map_err(|e| e.to_string())
                    .and_then(|json| {
                        std::fs::create_dir_all(&self.data_dir)
                            .and_then(|()| crate::fsutil::write_atomic(&path, &json))
                            .map_err(|e| {
                                format!("could not save presets to {}: {e}", path.display())
                            })
                    });
                send(ChatMsg::PresetsSaved(r));
            }
        }
    }

    fn load_model(&self, seq: u64, spec: String, tx: UnboundedSender<Msg>) {
        let done = move |result| {
            let _ = tx.send(Msg::Chat(ChatMsg::ModelLoaded { seq, result }));
        };
        if let Some(r) = RemoteSpec::parse(&spec, self.remote_key.clone()) {
            done(r.map_err(|e| e.to_string()).map(|s| ChatModel {
                name: s.display_name(),
                backend: Backend::Remote(s),
                context_length: 0,
                keeps_thinking: false,
                gpu_layers: None,
            }));
            return;
        }
        let engine = self.engine.clone();
        let roots = self.roots.clone();
        tokio::spawn(async move {
            let resolved = tokio::task::spawn_blocking(move || resolve(&spec, roots.as_ref()))
                .await
                .unwrap_or_else(|e| Err(format!("model lookup crashed: {e}")));
            let (name, path) = match resolved {
                Ok(x) => x,
                Err(e) => return done(Err(e)),
            };
            let r = match engine.load(path.clone()).await {
                Ok(Ok(info)) => Ok(ChatModel {
                    name,
                    backend: Backend::Local(path),
                    context_length: info.context_length,
                    keeps_thinking: info
                        .chat_template
                        .as_deref()
                        .is_some_and(crate::app::chat::thinking::template_keeps_thinking),
                    gpu_layers: info.gpu_layers,
                }),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(crate::engine::EngineError::EngineStopped.to_string()),
            };
            done(r);
        });
    }
}

/// Relays a local generation's events as `ChatMsg::Gen`, stamped with the time since `start`;
/// `dropped` adds the turns left out to fit the budget to what the engine reports.
async fn forward(
    mut events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    seq: u64,
    dropped: usize,
    start: Instant,
    tx: UnboundedSender<Msg>,
) {
    while let Some(mut event) = events.recv().await {
        if let GenEvent::Started {
            dropped_messages, ..
        } = &mut event
        {
            *dropped_messages += dropped;
        }
        let end = matches!(event, GenEvent::Done(_) | GenEvent::Failed(_));
        let m = ChatMsg::Gen {
            seq,
            elapsed_ms: start.elapsed().as_secs_f64() * 1000.0,
            event,
        };
        if tx.send(Msg::Chat(m)).is_err() || end {
            break;
        }
    }
}

/// Makes the prompt plus `max_tokens` fit the user's context budget: with drop-oldest, the
/// oldest turns after the system prompt are left out (never the last message); with error, the
/// request is refused. Returns the messages to send and how many were left out.
async fn fit_budget(
    engine: &EngineHandle,
    model: &Path,
    mut messages: Vec<crate::engine::ChatMessage>,
    params: &crate::engine::GenParams,
    budget: Option<usize>,
) -> Result<(Vec<crate::engine::ChatMessage>, usize), String> {
    let Some(budget) = budget else {
        return Ok((messages, 0));
    };
    let mut dropped = 0;
    loop {
        let n = engine
            .count_tokens(model.to_path_buf(), Prompt::Chat(messages.clone()))
            .await
            .unwrap_or(Err(crate::engine::EngineError::EngineStopped))
            .map_err(|e| e.to_string())?;
        if n + params.max_tokens <= budget {
            return Ok((messages, dropped));
        }
        let first = messages
            .iter()
            .position(|m| m.role != crate::engine::Role::System)
            .filter(|i| *i + 1 < messages.len());
        match (params.context_policy, first) {
            (crate::engine::ContextPolicy::DropOldest, Some(i)) => {
                messages.remove(i);
                dropped += 1;
            }
            _ => {
                return Err(format!(
                    "the prompt needs {n} tokens plus max_tokens {} but the context budget is {budget}; raise Context in the sidebar, lower max_tokens, /clear, or use the drop-oldest policy",
                    params.max_tokens
                ))
            }
        }
    }
}

/// A path that exists is used as is; anything else is looked up in the library.
fn resolve(spec: &str, roots: Option<&LibraryRoots>) -> Result<(String, PathBuf), String> {
    let p = PathBuf::from(spec);
    if p.exists() || roots.is_none() {
        let name = p
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| spec.to_string());
        return Ok((name, p));
    }
    let lib = Library::scan(roots.expect("checked above"));
    let m = lib.resolve(spec).map_err(|e| e.to_string())?;
    if let Some(why) = &m.broken {
        return Err(format!("{} cannot be loaded: {why}", m.name));
    }
    if !m.runnable.can_run() {
        return Err(format!(
            "{} cannot run in Influence's engine ({:?}); pick another model",
            m.name, m.runnable
        ));
    }
    Ok((m.name.clone(), m.load_path.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_resolve_through_the_library_and_paths_directly() {
        let tmp = tempfile::tempdir().unwrap();
        let roots = LibraryRoots::detect(&tmp.path().join("hf"), &tmp.path().join("data"), &[]);
        let smol = crate::app::tests::test_models().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        crate::library::import(&roots, &smol).unwrap();
        let (name, path) = resolve("SmolLM2-135M-Instruct", Some(&roots)).unwrap();
        assert_eq!(path, smol);
        assert!(name.contains("SmolLM2-135M-Instruct"), "{name}");
        let (name, path) = resolve(smol.to_str().unwrap(), Some(&roots)).unwrap();
        assert_eq!(
            (name.as_str(), path),
            ("SmolLM2-135M-Instruct.Q4_1", smol.clone())
        );
        let e = resolve("no-such-model", Some(&roots)).unwrap_err();
        assert!(e.contains("no-such-model"), "{e}");
        // A second name from `influence cp` works in `/model` too.
        crate::library::add_alias(&Library::scan(&roots), "SmolLM2-135M-Instruct", "tiny").unwrap();
        let (_, path) = resolve("tiny", Some(&roots)).unwrap();
        assert_eq!(path, smol);
    }

    #[test]
    fn osc52_encodes_base64() {
        assert_eq!(osc52("hi"), b"\x1b]52;c;aGk=\x07".to_vec());
        assert_eq!(slug("What is: the *capital*?"), "what-is-the-capital");
        assert_eq!(slug("???"), "chat");
    }
}
