//! Headless `influence --serve`: config + library + engine + API server, no terminal.
//!
//! Logs go to the log file and to stderr. SIGINT or SIGTERM stops accepting connections and
//! lets open requests finish (a few seconds at most).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, RwLock};

use anyhow::Context as _;

use crate::config::Loaded;
use crate::engine::{EngineHandle, EngineOptions};
use crate::library::{Library, LibraryRoots};
use crate::server::control::exposure_warning;
use crate::server::pull::PullSettings;
use crate::server::{ServerCtx, ServerHandle, ServerOptions};

/// Runs the server until a shutdown signal. `model` is the default model (`--model`).
pub fn run(loaded: Loaded, model: Option<String>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    rt.block_on(serve(loaded, model))
}

/// Server options from the configuration, shared by `--serve` and the TUI's toggle.
pub fn options_for(loaded: &Loaded, default_model: Option<String>) -> ServerOptions {
    let mut options = ServerOptions::from_config(&loaded.config);
    options.default_model = default_model;
    options.pull = Some(PullSettings {
        endpoint: loaded.config.hub.endpoint.clone(),
        token: loaded.token(),
        cache_dir: loaded.hf_home().join("hub"),
        data_dir: loaded.dirs.data_dir.clone(),
    });
    options.runtime_dir = Some(crate::server::runtime::records_dir(&loaded.dirs.data_dir));
    options
}

/// The listening address for `host` (an IP or a name such as `localhost`) and `port`.
pub fn listen_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    (host, port)
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve server.host `{host}`; use an IP address such as 127.0.0.1")
        })?
        .next()
        .with_context(|| {
            format!("server.host `{host}` has no address; use an IP address such as 127.0.0.1")
        })
}

async fn serve(loaded: Loaded, model: Option<String>) -> anyhow::Result<()> {
    let cfg = &loaded.config;
    let addr = listen_addr(&cfg.server.host, cfg.server.port)?;
    let roots = LibraryRoots::from_config(&loaded);
    let library = tokio::task::spawn_blocking(move || Library::scan(&roots))
        .await
        .context("the library scan crashed")?;
    for w in library.warnings() {
        tracing::warn!("library: {w}");
    }
    tracing::info!(models = library.models().len(), "library scanned");

    let engine = EngineHandle::spawn(EngineOptions {
        threads: cfg.engine.threads,
        max_loaded: cfg.engine.max_loaded.max(1),
        parallel: cfg.engine.parallel,
        kv_budget: cfg.engine.kv_budget,
        device: loaded.device(),
    });
    if let Some(e) = &engine.device().error {
        anyhow::bail!("{e}");
    }
    let options = options_for(&loaded, model.clone());
    if let Some(msg) = exposure_warning(addr, options.api_key.is_some()) {
        // Also logged by `ServerHandle::start`; said plainly here for whoever started it.
        eprintln!("influence: warning: {msg}");
    }
    let ctx = ServerCtx::new(engine.clone(), Arc::new(RwLock::new(library)), options);
    if let Some(m) = &model {
        // `ServerCtx::new` added a path to the library; its name is the model's API id.
        let entry = ctx
            .resolve_model(None, crate::server::Dialect::OpenAi)
            .map_err(|e| anyhow::anyhow!("--model {m}: {}", e.message))?;
        if entry.name != *m {
            eprintln!("influence: serving {m} as `{}`", entry.name);
        }
        // Load now so the first request does not wait; failures are reported, not fatal.
        let path = entry.path.clone();
        let name = entry.name.clone();
        let rx = engine.load(path);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match rx.await {
                Ok(Ok(info)) => {
                    ctx.note_loaded(&info);
                    tracing::info!(model = %name, arch = %info.arch, "default model loaded");
                }
                Ok(Err(e)) => tracing::warn!(model = %name, "default model did not load: {e}"),
                Err(_) => tracing::warn!(model = %name, "the engine stopped while loading"),
            }
        });
    }
    let handle = ServerHandle::start(ctx, addr).await?;
    tracing::info!(
        "serving the API on http://{} (Ctrl-C to stop)",
        handle.addr()
    );
    shutdown_signal().await?;
    tracing::info!("shutting down");
    handle.stop().await?;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(listen_addr("127.0.0.1", 5).unwrap().port(), 5);
        assert!(listen_addr("localhost", 5).unwrap().ip().is_loopback());
        assert!(listen_addr("no such host name.invalid", 5).is_err());
    }
}
