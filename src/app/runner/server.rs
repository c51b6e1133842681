//! Starts and stops the same router `influence --serve` runs, over the app's engine, for the
//! TUI's server toggle.

use crate::app::msg::Msg;
use crate::app::server::{ServerEffect, ServerMsg};
use crate::engine::EngineHandle;
use crate::library::{Library, LibraryRoots};
use crate::server::{ServerCtx, ServerHandle, ServerOptions};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// Owns the running server, if any.
pub struct ServerRunner {
    engine: EngineHandle,
    options: ServerOptions,
    addr: Result<SocketAddr, String>,
    roots: LibraryRoots,
    handle: Arc<tokio::sync::Mutex<Option<ServerHandle>>>,
}

impl ServerRunner {
    pub fn new(
        engine: EngineHandle,
        options: ServerOptions,
        addr: Result<SocketAddr, String>,
        roots: LibraryRoots,
    ) -> ServerRunner {
        ServerRunner {
            engine,
            options,
            addr,
            roots,
            handle: Arc::default(),
        }
    }

    pub fn run(&mut self, effect: ServerEffect, tx: &UnboundedSender<Msg>) {
        let tx = tx.clone();
        let slot = self.handle.clone();
        match effect {
            ServerEffect::Start => {
                let addr = match &self.addr {
                    Ok(a) => *a,
                    Err(e) => {
                        let _ = tx.send(Msg::Server(ServerMsg::Failed(e.clone())));
                        return;
                    }
                };
                let engine = self.engine.clone();
                let options = self.options.clone();
                let roots = self.roots.clone();
                tokio::spawn(async move {
                    let library = tokio::task::spawn_blocking(move || Library::scan(&roots))
                        .await
                        .unwrap_or_default();
                    let warning =
                        crate::server::control::exposure_warning(addr, options.api_key.is_some());
                    let ctx = ServerCtx::new(engine, Arc::new(RwLock::new(library)), options);
                    match ServerHandle::start(ctx, addr).await {
                        Ok(handle) => {
                            let addr = handle.addr();
                            let requests = handle.requests();
                            *slot.lock().await = Some(handle);
                            let _ = tx.send(Msg::Server(ServerMsg::Started { addr, warning }));
                            // The request counter is shown in the status bar; poll it gently.
                            let mut last = 0;
                            while slot.lock().await.is_some() {
                                let n = requests.load(std::sync::atomic::Ordering::Relaxed);
                                if n != last {
                                    last = n;
                                    if tx.send(Msg::Server(ServerMsg::Requests(n))).is_err() {
                                        break;
                                    }
                                }
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Msg::Server(ServerMsg::Failed(e.to_string())));
                        }
                    }
                });
            }
            ServerEffect::Stop => {
                tokio::spawn(async move {
                    let handle = slot.lock().await.take();
                    if let Some(h) = handle {
                        if let Err(e) = h.stop().await {
                            tracing::warn!("stopping the API server: {e}");
                        }
                    }
                    let _ = tx.send(Msg::Server(ServerMsg::Stopped));
                });
            }
        }
    }

    /// Stops the server at exit, letting open requests finish briefly.
    pub async fn shutdown(&self) {
        let handle = self.handle.lock().await.take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(Duration::from_secs(6), h.stop()).await;
        }
    }
}
