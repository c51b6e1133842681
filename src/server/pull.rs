//! `POST /api/pull`: downloads a model from the Hugging Face Hub through the download manager,
//! streaming progress lines shaped like Ollama's (`{"status", "digest", "total", "completed"}`).
//!
//! Names are Hub repos, optionally with a quant: `org/repo`, `org/repo:Q4_K_M`, and Ollama's
//! `hf.co/org/repo:Q4_K_M`. Each request runs its own download queue (like `influence pull`), so
//! a disconnect stops it; the partial files stay and the next pull resumes them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::downloads::{
    self, DownloadEvent, DownloadHandle, DownloadId, DownloadSpec, ManagerConfig,
};
use crate::hub::{select_files, validate_repo_id, HubClient, HubError, PullRequest};

use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::ServerCtx;

const D: Dialect = Dialect::Ollama;

/// Where pulls come from and go to.
#[derive(Debug, Clone)]
pub struct PullSettings {
    /// Hub endpoint (`https://huggingface.co` or a mirror).
    pub endpoint: String,
    pub token: Option<String>,
    /// The Hugging Face cache (`$HF_HOME/hub`).
    pub cache_dir: PathBuf,
    /// Influence's data folder; each pull keeps its queue under `api-pull/` while it runs.
    pub data_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
pub struct PullBody {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    stream: Option<bool>,
    /// Ollama's clients send `false`; Influence always checks TLS certificates.
    #[serde(default)]
    insecure: Option<bool>,
}

crate::fields!(PullBody: "model", "name", "stream", "insecure");

/// `hf.co/org/repo:Q4_K_M` → (`org/repo`, `Some("Q4_K_M")`).
pub fn parse_name(name: &str) -> (String, Option<String>) {
    let mut n = name.trim();
    for prefix in ["https://", "http://"] {
        n = n.strip_prefix(prefix).unwrap_or(n);
    }
    for prefix in ["hf.co/", "huggingface.co/"] {
        n = n.strip_prefix(prefix).unwrap_or(n);
    }
    match n.rsplit_once(':') {
        Some((repo, tag)) if tag.eq_ignore_ascii_case("latest") => (repo.to_string(), None),
        Some((repo, tag)) if !tag.is_empty() => (repo.to_string(), Some(tag.to_string())),
        _ => (n.to_string(), None),
    }
}

fn hub_error(e: HubError) -> ApiError {
    let status = match &e {
        HubError::RepoNotFound { .. }
        | HubError::RevisionNotFound { .. }
        | HubError::EntryNotFound { .. } => StatusCode::NOT_FOUND,
        HubError::InvalidRepoId { .. } => StatusCode::BAD_REQUEST,
        HubError::Gated { .. } | HubError::Forbidden { .. } => StatusCode::FORBIDDEN,
        HubError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(D, status, e.to_string())
}

struct FileInfo {
    short: String,
    digest: String,
    total: u64,
}

/// The download in progress, as a stream of NDJSON lines.
struct Pull {
    ctx: ServerCtx,
    handle: DownloadHandle,
    events: UnboundedReceiver<DownloadEvent>,
    files: HashMap<u64, FileInfo>,
    pending: HashSet<u64>,
    out: VecDeque<Value>,
    queue_dir: PathBuf,
    finished: bool,
}

impl Drop for Pull {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        let dir = self.queue_dir.clone();
        // Stops the workers (partial files stay for a later resume) and forgets the queue.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                handle.shutdown().await;
                let _ = tokio::fs::remove_dir_all(dir).await;
            });
        }
    }
}

impl Pull {
    fn progress(&self, id: u64, completed: u64) -> Option<Value> {
        let f = self.files.get(&id)?;
        Some(json!({
            "status": format!("pulling {}", f.short),
            "digest": f.digest,
            "total": f.total,
            "completed": completed,
        }))
    }

    /// The next line to send; `None` at the end.
    async fn next_line(&mut self) -> Option<Value> {
        loop {
            if let Some(v) = self.out.pop_front() {
                return Some(v);
            }
            if self.finished {
                return None;
            }
            if self.pending.is_empty() {
                self.finished = true;
                self.out
                    .push_back(json!({ "status": "verifying sha256 digest" }));
                self.ctx.rescan().await;
                self.out.push_back(json!({ "status": "success" }));
                continue;
            }
            let Some(ev) = self.events.recv().await else {
                self.finished = true;
                return Some(
                    json!({ "error": "the download manager stopped; try the pull again" }),
                );
            };
            match ev {
                DownloadEvent::Progress(p) => {
                    if let Some(f) = self.files.get_mut(&p.id) {
                        if p.total > 0 {
                            f.total = p.total;
                        }
                    }
                    if let Some(v) = self.progress(p.id, p.bytes) {
                        self.out.push_back(v);
                    }
                }
                DownloadEvent::Done { id, .. } => {
                    self.pending.remove(&id);
                    let total = self.files.get(&id).map_or(0, |f| f.total);
                    if let Some(v) = self.progress(id, total) {
                        self.out.push_back(v);
                    }
                }
                DownloadEvent::Retrying { id, reason, .. } => {
                    let short = self.files.get(&id).map_or("?", |f| f.short.as_str());
                    self.out
                        .push_back(json!({ "status": format!("retrying {short}: {reason}") }));
                }
                DownloadEvent::Failed { id, reason } => {
                    self.finished = true;
                    let short = self.files.get(&id).map_or("?", |f| f.short.as_str());
                    return Some(json!({ "error": format!("{short}: {reason}") }));
                }
                DownloadEvent::Cancelled { .. } => {
                    self.finished = true;
                    return Some(json!({ "error": "the download was cancelled" }));
                }
                _ => {}
            }
        }
    }
}

/// Ids of API pulls as the observer sees them: far above any queue the app keeps, and apart
/// per pull (each pull's own queue numbers its jobs from 1).
const OBSERVED_BASE: DownloadId = 1 << 62;
const OBSERVED_SPAN: DownloadId = 1 << 24;

fn observer_offset() -> DownloadId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    OBSERVED_BASE + n * OBSERVED_SPAN
}

/// Lets the app show, and steer, the pulls API clients start: a copy of their events with ids
/// moved out of the app queue's range, and the queue behind each running pull, so pause, resume
/// and cancel in the Downloads pane reach it.
#[derive(Debug, Clone)]
pub struct PullObserver {
    events: tokio::sync::mpsc::UnboundedSender<DownloadEvent>,
    queues: Arc<Mutex<HashMap<DownloadId, DownloadHandle>>>,
}

impl PullObserver {
    pub fn new(events: tokio::sync::mpsc::UnboundedSender<DownloadEvent>) -> Self {
        PullObserver {
            events,
            queues: Arc::default(),
        }
    }

    /// Whether `id` (as the observer sees it) belongs to an API pull.
    pub fn is_api_pull(id: DownloadId) -> bool {
        id >= OBSERVED_BASE
    }

    /// The running pull's queue behind an observed id, and the id in that queue; `None` once
    /// the pull has ended.
    pub fn queue_of(&self, id: DownloadId) -> Option<(DownloadHandle, DownloadId)> {
        if !Self::is_api_pull(id) {
            return None;
        }
        let offset = id - (id - OBSERVED_BASE) % OBSERVED_SPAN;
        let queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.get(&offset).map(|h| (h.clone(), id - offset))
    }

    fn register(&self, offset: DownloadId, queue: DownloadHandle) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.insert(offset, queue);
    }

    fn unregister(&self, offset: DownloadId) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        queues.remove(&offset);
    }
}

/// Passes a pull's events on, and a copy to `observer`. A job the observer saw start but not
/// end (the client went away, which stops the pull) is reported as failed, so the observer's
/// view never shows it running forever.
fn tee(
    mut events: UnboundedReceiver<DownloadEvent>,
    observer: PullObserver,
    queue: DownloadHandle,
) -> UnboundedReceiver<DownloadEvent> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let offset = observer_offset();
    observer.register(offset, queue);
    tokio::spawn(async move {
        let mut open = HashSet::new();
        while let Some(ev) = events.recv().await {
            if let Some(id) = ev.id() {
                match &ev {
                    DownloadEvent::Done { .. }
                    | DownloadEvent::Failed { .. }
                    | DownloadEvent::Cancelled { .. } => {
                        open.remove(&id);
                    }
                    _ => {
                        open.insert(id);
                    }
                }
            }
            let _ = observer.events.send(ev.clone().offset_id(offset));
            if tx.send(ev).is_err() {
                break;
            }
        }
        observer.unregister(offset);
        for id in open {
            let _ = observer.events.send(
                DownloadEvent::Failed {
                    id,
                    reason: "the API client that started this pull went away; pull again to resume"
                        .into(),
                }
                .offset_id(offset),
            );
        }
    });
    rx
}

pub async fn pull(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<PullBody>,
) -> Result<Response, ApiError> {
    let Some(settings) = ctx.options().pull.clone() else {
        return Err(ApiError::new(
            D,
            StatusCode::NOT_IMPLEMENTED,
            "this server was started without Hub access, so it cannot pull; use `influence pull`",
        ));
    };
    if req.insecure == Some(true) {
        return Err(ApiError::bad_field(
            D,
            "insecure",
            "insecure: true is not supported; Influence always verifies the Hub's certificates",
        ));
    }
    let name = req
        .model
        .as_deref()
        .or(req.name.as_deref())
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_field(D, "model", "model is required"))?;
    let (repo, quant) = parse_name(name);
    validate_repo_id(&repo).map_err(|e| ApiError::bad_field(D, "model", e.to_string()))?;
    let client = HubClient::new(&settings.endpoint, settings.token.clone()).map_err(hub_error)?;
    let info = client.model_info(&repo, None).await.map_err(hub_error)?;
    let files = select_files(
        &info,
        &PullRequest {
            files: Vec::new(),
            quant,
        },
    )
    .map_err(|e| ApiError::bad_field(D, "model", e.to_string()))?;
    let queue_dir = settings
        .data_dir
        .join("api-pull")
        .join(format!("{:016x}", rand::random::<u64>()));
    let (handle, events) = downloads::spawn(ManagerConfig::new(
        client,
        settings.cache_dir.clone(),
        queue_dir.clone(),
    ))
    .map_err(|e| {
        tracing::warn!("pull through the API: the download queue did not start: {e}");
        ApiError::internal(
            D,
            "the download queue did not start; the details are in the server log",
        )
    })?;
    let events = match ctx.options().pull_observer.clone() {
        Some(observer) => tee(events, observer, handle.clone()),
        None => events,
    };
    let revision = info.sha.clone().unwrap_or_else(|| "main".to_string());
    let mut map = HashMap::new();
    for f in &files {
        let id = handle.enqueue(DownloadSpec::from_file(&info.id, &revision, f));
        map.insert(
            id,
            FileInfo {
                short: f.path.rsplit('/').next().unwrap_or(&f.path).to_string(),
                digest: f.etag().map(|e| format!("sha256:{e}")).unwrap_or_default(),
                total: f.size.unwrap_or(0),
            },
        );
    }
    tracing::info!(repo = %info.id, files = files.len(), "pull through the API");
    let mut pull = Pull {
        ctx,
        handle,
        events,
        pending: map.keys().copied().collect(),
        files: map,
        out: VecDeque::from([json!({ "status": "pulling manifest" })]),
        queue_dir,
        finished: false,
    };
    if !req.stream.unwrap_or(true) {
        let mut last = Value::Null;
        while let Some(v) = pull.next_line().await {
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                return Err(ApiError::new(D, StatusCode::BAD_GATEWAY, e));
            }
            last = v;
        }
        return Ok(Json(last).into_response());
    }
    let body = futures::stream::unfold(pull, |mut p| async move {
        let v = p.next_line().await?;
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("{v}\n"))),
            p,
        ))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_name;

    #[test]
    fn names() {
        assert_eq!(parse_name("org/repo"), ("org/repo".into(), None));
        assert_eq!(parse_name("org/repo:latest"), ("org/repo".into(), None));
        assert_eq!(
            parse_name("hf.co/org/repo-GGUF:Q4_K_M"),
            ("org/repo-GGUF".into(), Some("Q4_K_M".into()))
        );
        assert_eq!(
            parse_name("https://huggingface.co/org/repo"),
            ("org/repo".into(), None)
        );
    }
}
