//! The embedded API server: a toggle in the TUI, its state in the status bar, and the runner
//! that starts and stops the same router `influence --serve` runs, over the app's engine.

use super::msg::Msg;
use crate::engine::EngineHandle;
use crate::library::{Library, LibraryRoots};
use crate::server::{ServerCtx, ServerHandle, ServerOptions};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ServerStatus {
    #[default]
    Off,
    Starting,
    On {
        addr: SocketAddr,
        requests: u64,
    },
    Stopping,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerMsg {
    Started {
        addr: SocketAddr,
        warning: Option<String>,
    },
    Failed(String),
    Stopped,
    Requests(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerEffect {
    Start,
    Stop,
}

/// The toggle key: start when off, stop when on; ignored while changing.
pub fn toggle(status: &mut ServerStatus) -> Vec<ServerEffect> {
    match status {
        ServerStatus::Off => {
            *status = ServerStatus::Starting;
            vec![ServerEffect::Start]
        }
        ServerStatus::On { .. } => {
            *status = ServerStatus::Stopping;
            vec![ServerEffect::Stop]
        }
        ServerStatus::Starting | ServerStatus::Stopping => vec![],
    }
}

/// Folds a server message into the status; returns a notice for the status bar, if any.
pub fn update(status: &mut ServerStatus, msg: ServerMsg) -> Option<(bool, String)> {
    match msg {
        ServerMsg::Started { addr, warning } => {
            *status = ServerStatus::On { addr, requests: 0 };
            Some(match warning {
                Some(w) => (true, w),
                None => (false, format!("API server on http://{addr}")),
            })
        }
        ServerMsg::Failed(e) => {
            *status = ServerStatus::Off;
            Some((true, format!("API server: {e}")))
        }
        ServerMsg::Stopped => {
            *status = ServerStatus::Off;
            Some((false, "API server stopped".into()))
        }
        ServerMsg::Requests(n) => {
            if let ServerStatus::On { requests, .. } = status {
                *requests = n;
            }
            None
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toggle_starts_stops_and_ignores_presses_while_changing() {
        let mut s = ServerStatus::Off;
        assert_eq!(toggle(&mut s), vec![ServerEffect::Start]);
        assert!(
            toggle(&mut s).is_empty(),
            "a second press while starting does nothing"
        );
        let addr: SocketAddr = "127.0.0.1:11435".parse().unwrap();
        let notice = update(
            &mut s,
            ServerMsg::Started {
                addr,
                warning: None,
            },
        );
        assert_eq!(s, ServerStatus::On { addr, requests: 0 });
        assert!(notice.unwrap().1.contains("127.0.0.1:11435"));
        update(&mut s, ServerMsg::Requests(7));
        assert_eq!(s, ServerStatus::On { addr, requests: 7 });
        assert_eq!(toggle(&mut s), vec![ServerEffect::Stop]);
        update(&mut s, ServerMsg::Stopped);
        assert_eq!(s, ServerStatus::Off);
        assert_eq!(toggle(&mut s), vec![ServerEffect::Start]);
        let (err, text) = update(&mut s, ServerMsg::Failed("port 11435 is in use".into())).unwrap();
        assert!(err && text.contains("in use"));
        assert_eq!(s, ServerStatus::Off);
    }
}
