//! Starts the full-screen app on the real terminal.

pub mod event_loop;

use crate::app::chat::params::ParamsState;
use crate::app::msg::Msg;
use crate::app::runner::chat::{load_presets, ChatRunner};
use crate::app::runner::EffectRunner;
use crate::app::state::{Notice, Pane, State};
use crate::config::keymap::Keymap;
use crate::config::theme::{self, Theme};
use crate::config::Loaded;
use crate::engine::{EngineHandle, EngineOptions};
use crate::library::LibraryRoots;
use crate::tui::frame::FrameClock;
use crate::tui::terminal::TerminalGuard;
use std::time::Duration;

/// Builds the initial state from the configuration (no terminal needed).
pub fn initial_state(loaded: &Loaded, size: (u16, u16)) -> anyhow::Result<State> {
    let c = &loaded.config;
    let theme = Theme::load(&c.theme, &loaded.dirs.config_dir).map_err(anyhow::Error::msg)?;
    let keymap = Keymap::load(&c.keys)?;
    let mut state = State::new(
        theme,
        theme::available(&loaded.dirs.config_dir),
        keymap,
        size,
    );
    state.params = ParamsState::from_config(c);
    Ok(state)
}

/// The chat's side of start-up: the engine and store behind the runner, presets, the last
/// conversation reopened, and `--model` loaded with the input focused.
fn start_chat(
    loaded: &Loaded,
    state: &mut State,
    model: Option<String>,
    roots: LibraryRoots,
    engine: EngineHandle,
) -> (ChatRunner, Vec<crate::app::effect::Effect>) {
    let data_dir = loaded.dirs.data_dir.clone();
    let runner = ChatRunner::new(engine, data_dir.clone())
        .with_library(roots)
        .with_remote_key(std::env::var("INFLUENCE_REMOTE_API_KEY").ok());
    let mut problems: Vec<String> = Vec::new();
    match load_presets(&data_dir) {
        Ok(p) => state.params.presets = p,
        Err(e) => problems.push(e),
    }
    if let Some(store) = runner.store() {
        state.chat.list = store.list().to_vec();
        if let Some(last) = store.list().first() {
            match store.load(&last.id) {
                Ok(conv) => state.chat.conv = conv,
                Err(e) => problems.push(e.to_string()),
            }
        }
        for e in store.load_errors() {
            problems.push(format!("{}: {}", e.path.display(), e.message));
        }
    }
    let mut effects = Vec::new();
    if let Some(m) = model {
        state.focus = Pane::Chat;
        state.main_pane = Pane::Chat;
        state.chat.input_focused = true;
        effects = crate::app::chat::load_model(state, m)
            .into_iter()
            .map(crate::app::effect::Effect::Chat)
            .collect();
    }
    if let Some(p) = problems.into_iter().next() {
        state.status.notice = Some(Notice {
            error: true,
            text: p,
        });
    }
    (runner, effects)
}

pub async fn run(loaded: Loaded, model: Option<String>) -> anyhow::Result<()> {
    let size = crossterm::terminal::size().unwrap_or((80, 24));
    let mut state = initial_state(&loaded, size)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let roots = LibraryRoots::from_config(&loaded);
    let hub = crate::hub::HubClient::new(&loaded.config.hub.endpoint, loaded.token())?;
    state.hub = crate::app::hub::HubState::new(
        loaded.config.hub.endpoint.clone(),
        crate::hub::MemInfo::read(),
    );
    let downloads = start_downloads(&loaded, hub.clone(), tx.clone());
    if let Err(e) = &downloads {
        state.downloads.unavailable = Some(e.clone());
    }
    // One engine for the chat and the API server: they take turns on its thread.
    let engine = EngineHandle::spawn(EngineOptions {
        threads: loaded.config.engine.threads,
        max_loaded: loaded.config.engine.max_loaded.max(1),
        parallel: loaded.config.engine.parallel,
        kv_budget: loaded.config.engine.kv_budget,
        device: loaded.device(),
    });
    // Before the terminal changes: an unusable device is said plainly on the shell.
    let device = engine.device();
    if let Some(e) = &device.error {
        anyhow::bail!("{e}");
    }
    state.status.device = device.short();
    if device.gpu {
        // The Hub's "fits" compares against the memory models will load into.
        if let Some((free, total)) = device.memory {
            state.hub.mem = Some(crate::hub::MemInfo {
                total_bytes: total,
                available_bytes: free,
                host_available_bytes: crate::hub::MemInfo::read().map(|m| m.available_bytes),
            });
        }
    } else if device.auto && device.reason.contains("did not start") {
        state.status.notice = Some(Notice {
            error: true,
            text: device.reason.clone(),
        });
    }
    let mut server_options = crate::serve::options_for(&loaded, model.clone());
    // Pulls that API clients start show in the Downloads pane beside the app's own.
    let (pull_tx, mut pull_rx) = tokio::sync::mpsc::unbounded_channel();
    let api_pulls = crate::server::pull::PullObserver::new(pull_tx);
    server_options.pull_observer = Some(api_pulls.clone());
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(ev) = pull_rx.recv().await {
                if tx.send(Msg::Download(ev)).is_err() {
                    break;
                }
            }
        });
    }
    let server = crate::app::runner::server::ServerRunner::new(
        engine.clone(),
        server_options,
        crate::serve::listen_addr(&loaded.config.server.host, loaded.config.server.port)
            .map_err(|e| e.to_string()),
        roots.clone(),
    );
    let (chat, first) = start_chat(&loaded, &mut state, model, roots.clone(), engine.clone());
    let mut runner = EffectRunner::new(tx.clone(), loaded.dirs.config_dir.clone(), roots)
        .with_server(server)
        .with_api_pulls(api_pulls)
        .with_services(hub, downloads.ok())
        .with_chat(chat);
    runner.run(first);
    // The Hub pane opens on the most popular models rather than an empty box.
    let opening = state.hub.open();
    runner.run(
        opening
            .into_iter()
            .map(crate::app::effect::Effect::Hub)
            .collect(),
    );
    // The library is listed at start so every pane knows what is on disk.
    state.library.scanning = true;
    runner.run(vec![crate::app::effect::Effect::Library(
        crate::app::library::LibraryEffect::Scan,
    )]);

    spawn_memory_sampler(tx.clone(), engine.clone());
    spawn_signal_watch(tx.clone());

    let mut guard = TerminalGuard::enter()?;
    let stats = event_loop::run(
        &mut guard.terminal,
        &mut state,
        crate::tui::events::stream(),
        &mut rx,
        &mut runner,
        FrameClock::new(loaded.config.ui.fps),
    )
    .await?;
    drop(guard);
    runner.shutdown().await;
    tracing::info!(frames = stats.frames, msgs = stats.msgs, "left the app");
    Ok(())
}

/// Starts the download manager (it resumes an unfinished queue) and forwards its events.
fn start_downloads(
    loaded: &Loaded,
    hub: crate::hub::HubClient,
    tx: tokio::sync::mpsc::UnboundedSender<Msg>,
) -> Result<crate::downloads::DownloadHandle, String> {
    let mut cfg = crate::downloads::ManagerConfig::new(
        hub,
        loaded.hf_home().join("hub"),
        loaded.dirs.data_dir.clone(),
    );
    cfg.concurrency = loaded.config.downloads.concurrency;
    let (handle, mut events) = crate::downloads::spawn(cfg).map_err(|e| {
        tracing::error!("download manager: {e}");
        e.to_string()
    })?;
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if tx.send(Msg::Download(ev)).is_err() {
                break;
            }
        }
    });
    Ok(handle)
}

/// Memory every 2 s, and the engine's stream count every 500 ms (the update ignores repeats).
fn spawn_memory_sampler(tx: tokio::sync::mpsc::UnboundedSender<Msg>, engine: EngineHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for i in 0u64.. {
            tick.tick().await;
            if tx.send(Msg::Streams(engine.stats().active)).is_err() {
                break;
            }
            if i % 4 == 0 {
                if let Some(b) = crate::procmem::rss_bytes() {
                    if tx.send(Msg::Memory(b)).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

fn spawn_signal_watch(tx: tokio::sync::mpsc::UnboundedSender<Msg>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = hup.recv() => {},
        }
        let _ = tx.send(Msg::Shutdown);
    });
}
