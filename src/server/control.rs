//! Binding the router to a socket, and stopping it gracefully. Used by the TUI's server toggle
//! and by headless `--serve`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{router, ServerCtx, ServerError};

/// How long [`ServerHandle::stop`] waits for open requests before closing them.
const DRAIN: Duration = Duration::from_secs(5);

/// The warning to show when the server is reachable from other machines without an API key.
pub fn exposure_warning(addr: SocketAddr, has_api_key: bool) -> Option<String> {
    (!has_api_key && !addr.ip().is_loopback()).then(|| {
        format!(
            "listening on {addr} without an API key: anyone who can reach this address can use your models. Set INFLUENCE_API_KEY or pass --api-key"
        )
    })
}

/// A running server. Dropping it without [`stop`](Self::stop) aborts the server task.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), std::io::Error>>>,
    /// This server's entry for `influence ps`, removed when it stops.
    _record: Option<super::runtime::RecordGuard>,
}

impl ServerHandle {
    /// Binds `addr` (port 0 picks a free one) and serves [`router`]`(ctx)` on the current tokio
    /// runtime. Returns once the socket is bound; [`addr`](Self::addr) is the real address.
    pub async fn start(ctx: ServerCtx, addr: SocketAddr) -> Result<ServerHandle, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Bind { addr, source })?;
        if let Some(w) = exposure_warning(addr, ctx.api_key().is_some()) {
            tracing::warn!("{w}");
        }
        let requests = ctx.requests();
        let record = ctx.options().runtime_dir.as_deref().and_then(|dir| {
            super::runtime::record(dir, addr, ctx.api_key().is_some())
                .map_err(|e| tracing::warn!("cannot record the server for `influence ps`: {e}"))
                .ok()
        });
        let app = router(ctx);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%addr, "API server listening");
        Ok(ServerHandle {
            addr,
            requests,
            shutdown: Some(tx),
            task: Some(task),
            _record: record,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far; the TUI status bar polls it.
    pub fn requests(&self) -> Arc<AtomicU64> {
        self.requests.clone()
    }

    /// Stops accepting, lets open requests finish for a few seconds, then closes the rest.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        let result = match tokio::time::timeout(DRAIN, &mut task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(ServerError::Serve(e.to_string())),
            Ok(Err(e)) => Err(ServerError::Serve(e.to_string())),
            Err(_) => {
                task.abort();
                tracing::warn!(
                    "API server: open requests did not finish in {DRAIN:?}; closed them"
                );
                Ok(())
            }
        };
        self._record = None;
        tracing::info!(addr = %self.addr, "API server stopped");
        result
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exposure_warning;

    #[test]
    fn warns_only_for_open_addresses_without_a_key() {
        assert!(exposure_warning("127.0.0.1:1".parse().unwrap(), false).is_none());
        assert!(exposure_warning("[::1]:1".parse().unwrap(), false).is_none());
        assert!(exposure_warning("0.0.0.0:1".parse().unwrap(), true).is_none());
        let w = exposure_warning("0.0.0.0:1".parse().unwrap(), false).unwrap();
        assert!(w.contains("--api-key"));
    }
}
