//! The runners: they turn the `Effect`s that `update` returns into IO, threads and tasks, and
//! send the results back as `Msg`s. They are the only part of the app that sends `Msg`s; the
//! pure core (state, messages, effects, update and the panes) never imports them.

pub mod chat;
pub mod server;

use super::downloads::DownloadsEffect;
use super::effect::Effect;
use super::hub::{HubEffect, HubMsg, DEBOUNCE_MS};
use super::library::{LibraryEffect, LibraryMsg};
use super::msg::Msg;
use super::server::ServerMsg;
use crate::config::theme::Theme;
use crate::downloads::{DownloadEvent, DownloadHandle, DownloadId};
use crate::hub::HubClient;
use crate::library::{Library, LibraryRoots};
use crate::server::pull::PullObserver;
use chat::ChatRunner;
use server::ServerRunner;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// Turns effects into IO and background tasks; results come back as `Msg`s.
pub struct EffectRunner {
    tx: UnboundedSender<Msg>,
    config_dir: PathBuf,
    library_roots: LibraryRoots,
    /// The last scan, so a rescan re-reads only files that changed.
    last_library: Arc<std::sync::Mutex<Option<Library>>>,
    hub: Option<HubClient>,
    downloads: Option<DownloadHandle>,
    /// The search in flight; a newer one aborts it so stale results never arrive.
    search: Option<tokio::task::JoinHandle<()>>,
    debounce: Option<tokio::task::JoinHandle<()>>,
    server: Option<ServerRunner>,
    chat: Option<ChatRunner>,
    /// The queues of pulls API clients started, for pause/resume/cancel on their rows.
    api_pulls: Option<PullObserver>,
}

impl EffectRunner {
    pub fn new(
        tx: UnboundedSender<Msg>,
        config_dir: PathBuf,
        library_roots: LibraryRoots,
    ) -> EffectRunner {
        EffectRunner {
            tx,
            config_dir,
            library_roots,
            last_library: Arc::default(),
            hub: None,
            downloads: None,
            api_pulls: None,
            search: None,
            debounce: None,
            server: None,
            chat: None,
        }
    }

    /// Lets the server toggle start the API server over the app's engine.
    pub fn with_server(mut self, server: ServerRunner) -> Self {
        self.server = Some(server);
        self
    }

    /// Lets the Downloads pane steer the pulls API clients start.
    pub fn with_api_pulls(mut self, observer: PullObserver) -> Self {
        self.api_pulls = Some(observer);
        self
    }

    /// Gives the runner the engine and conversation store the chat works with.
    pub fn with_chat(mut self, chat: ChatRunner) -> EffectRunner {
        self.chat = Some(chat);
        self
    }

    /// Connects the Hub client and the download manager (both need a tokio runtime).
    pub fn with_services(mut self, hub: HubClient, downloads: Option<DownloadHandle>) -> Self {
        self.hub = Some(hub);
        self.downloads = downloads;
        self
    }

    /// Stops background services cleanly: running downloads keep their partial files and the
    /// queue is saved, so the next start resumes them.
    pub async fn shutdown(&self) {
        if let Some(s) = &self.server {
            s.shutdown().await;
        }
        if let Some(d) = &self.downloads {
            let _ = tokio::time::timeout(Duration::from_secs(3), d.shutdown()).await;
        }
    }

    pub fn sender(&self) -> UnboundedSender<Msg> {
        self.tx.clone()
    }

    pub fn run(&mut self, effects: Vec<Effect>) {
        for effect in effects {
            match effect {
                Effect::LoadTheme(name) => {
                    let msg = match Theme::load(&name, &self.config_dir) {
                        Ok(t) => Msg::ThemeLoaded(Box::new(t)),
                        Err(e) => Msg::ThemeFailed(e),
                    };
                    let _ = self.tx.send(msg);
                }
                Effect::Chat(e) => match self.chat.as_mut() {
                    Some(chat) => chat.run(e, &self.tx),
                    None => tracing::warn!(?e, "chat effect without a chat runner"),
                },
                Effect::Library(e) => self.library(e),
                Effect::Hub(e) => self.hub(e),
                Effect::Downloads(e) => self.downloads(e),
                Effect::Server(e) => match self.server.as_mut() {
                    Some(s) => s.run(e, &self.tx),
                    None => {
                        let _ = self.tx.send(Msg::Server(ServerMsg::Failed(
                            "the server is not available in this session".into(),
                        )));
                    }
                },
            }
        }
    }

    fn hub(&mut self, effect: HubEffect) {
        let tx = self.tx.clone();
        let Some(client) = self.hub.clone() else {
            return;
        };
        match effect {
            HubEffect::Debounce { seq } => {
                if let Some(h) = self.debounce.take() {
                    h.abort();
                }
                self.debounce = Some(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(DEBOUNCE_MS)).await;
                    let _ = tx.send(Msg::Hub(HubMsg::Debounced { seq }));
                }));
            }
            HubEffect::Search { seq, query } => {
                if let Some(h) = self.search.take() {
                    h.abort();
                }
                self.search = Some(tokio::spawn(async move {
                    let result = client
                        .search(&query)
                        .await
                        .map(|p| (p.models, p.next))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Hub(HubMsg::Results {
                        seq,
                        append: false,
                        result,
                    }));
                }));
            }
            HubEffect::NextPage { seq, url } => {
                tokio::spawn(async move {
                    let result = client
                        .search_next(&url)
                        .await
                        .map(|p| (p.models, p.next))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Hub(HubMsg::Results {
                        seq,
                        append: true,
                        result,
                    }));
                });
            }
            HubEffect::Info { repo } => {
                tokio::spawn(async move {
                    let result = client
                        .model_info(&repo, None)
                        .await
                        .map(Box::new)
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Hub(HubMsg::Info { repo, result }));
                });
            }
            HubEffect::Card { repo, revision } => {
                tokio::spawn(async move {
                    let max = super::hub::CARD_MAX_BYTES;
                    let result = client
                        .read_prefix(&repo, &revision, "README.md", max)
                        .await
                        .map(|bytes| crate::markdown::card_text(&bytes, max))
                        .map_err(|e| e.to_string());
                    let _ = tx.send(Msg::Hub(HubMsg::Card { repo, result }));
                });
            }
            HubEffect::Shape {
                repo,
                revision,
                path,
            } => {
                tokio::spawn(async move {
                    let result = crate::hub::fetch_shape(&client, &repo, &revision, &path).await;
                    let _ = tx.send(Msg::Hub(HubMsg::Shape { repo, result }));
                });
            }
        }
    }

    fn downloads(&mut self, effect: DownloadsEffect) {
        if let Some(id) = effect.id().filter(|id| PullObserver::is_api_pull(*id)) {
            self.api_pull(effect, id);
            return;
        }
        let Some(d) = &self.downloads else {
            let _ = self.tx.send(Msg::Download(DownloadEvent::Notice {
                message: "the download manager is not running (see the log)".into(),
            }));
            return;
        };
        match effect {
            DownloadsEffect::Enqueue(specs) => {
                for s in specs {
                    d.enqueue(s);
                }
            }
            DownloadsEffect::Pause(id) => d.pause(id),
            DownloadsEffect::Resume(id) => d.resume(id),
            DownloadsEffect::Cancel(id) => d.cancel(id),
            DownloadsEffect::Retry(id) => d.retry(id),
        }
    }

    /// A row of a pull an API client started: its own queue runs it while the client waits.
    fn api_pull(&mut self, effect: DownloadsEffect, id: DownloadId) {
        let queue = self.api_pulls.as_ref().and_then(|o| o.queue_of(id));
        let Some((queue, inner)) = queue else {
            let _ = self.tx.send(Msg::Download(DownloadEvent::Notice {
                message: "that pull was started by an API client and has ended; pull it again from the client (or from the Hub pane)".into(),
            }));
            return;
        };
        match effect {
            DownloadsEffect::Pause(_) => queue.pause(inner),
            DownloadsEffect::Resume(_) => queue.resume(inner),
            DownloadsEffect::Cancel(_) => queue.cancel(inner),
            DownloadsEffect::Retry(_) => queue.retry(inner),
            DownloadsEffect::Enqueue(_) => {}
        }
    }

    /// Library work reads whole files (verify) or walks folders (scan): always off the loop.
    fn library(&mut self, effect: LibraryEffect) {
        let tx = self.tx.clone();
        let send = move |m: LibraryMsg| {
            let _ = tx.send(Msg::Library(m));
        };
        let roots = self.library_roots.clone();
        let last = self.last_library.clone();
        let scan = move || {
            let prev = last.lock().ok().and_then(|mut l| l.take());
            let lib = match prev {
                Some(prev) => prev.rescan(),
                None => Library::scan(&roots),
            };
            if let Ok(mut l) = last.lock() {
                *l = Some(lib.clone());
            }
            lib
        };
        let job = move || match effect {
            LibraryEffect::Scan => {
                let lib = scan();
                send(LibraryMsg::Scanned {
                    models: Arc::new(lib.models().to_vec()),
                    warnings: lib.warnings().to_vec(),
                });
            }
            LibraryEffect::Verify(model) => {
                let mut last = Instant::now();
                let name = model.name.clone();
                let report = crate::library::verify(&model, &mut |done, total| {
                    // A few updates per second are plenty for a progress line.
                    if last.elapsed() >= Duration::from_millis(200) {
                        last = Instant::now();
                        send(LibraryMsg::VerifyProgress {
                            model: name.clone(),
                            done,
                            total,
                        });
                    }
                });
                send(LibraryMsg::Verified(report));
            }
            LibraryEffect::PlanDelete(model) => {
                // Plan against the disk as it is now, not as it was at the last scan.
                let lib = scan();
                let plan = lib.delete_plan(&model).map_err(|e| e.to_string());
                send(LibraryMsg::DeletePlanned(plan));
            }
            LibraryEffect::Delete(plan) => {
                let result = plan
                    .execute()
                    .map(|()| plan.bytes_freed)
                    .map_err(|e| e.to_string());
                send(LibraryMsg::Deleted {
                    model: plan.model.clone(),
                    result,
                });
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("library".into())
            .spawn(job)
        {
            tracing::error!("cannot start a library thread: {e}");
        }
    }
}
