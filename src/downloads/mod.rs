//! Download manager: a tokio task that owns a persistent queue of files to fetch into the Hugging
//! Face cache, runs a few at a time, resumes partial files with HTTP Range, hashes while writing
//! and only places a file in the cache once its sha256 (or git sha1) matches the Hub's.
//!
//! Feeding a UI: [`spawn`] returns an unbounded receiver of [`DownloadEvent`]s (progress is
//! throttled per file to `progress_interval`, 250 ms by default). Forward it into the app's
//! message channel from a small task, e.g.
//! `while let Some(ev) = events.recv().await { if app_tx.send(Msg::Download(ev)).is_err() { break } }`,
//! or `select!` on it in the event loop. Commands go through the cloneable [`DownloadHandle`],
//! whose methods never block. [`DownloadHandle::list`] gives the whole queue (for the first draw).
//!
//! ```no_run
//! # async fn demo(hub: influence::hub::HubClient) -> Result<(), influence::downloads::DownloadError> {
//! use influence::downloads::{spawn, DownloadEvent, DownloadSpec, ManagerConfig};
//! let cfg = ManagerConfig::new(hub, "/home/me/.cache/huggingface/hub".into(), "/tmp/influence".into());
//! let (handle, mut events) = spawn(cfg)?;
//! let id = handle.enqueue(DownloadSpec::new("org/model-GGUF", "model-Q4_K_M.gguf"));
//! while let Some(ev) = events.recv().await {
//!     if let DownloadEvent::Done { id: done, path } = ev {
//!         if done == id { println!("{}", path.display()); break; }
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod cache;
pub mod disk;
pub mod error;
mod manager;
pub mod store;
mod worker;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use cache::{repo_folder_name, RepoCache};
pub use error::DownloadError;

use crate::hub::HubClient;

/// Identifies a job for the lifetime of the queue (ids are never reused, even across restarts).
pub type DownloadId = u64;

/// One file to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadSpec {
    /// `org/name`.
    pub repo: String,
    /// Branch, tag or commit (`main` by default).
    pub revision: String,
    /// Path inside the repo.
    pub path: String,
    /// Size from the file listing, if known (shown before the download starts).
    #[serde(default)]
    pub size: Option<u64>,
    /// LFS sha256 from the listing, if known (lets a restart find the partial file offline).
    #[serde(default)]
    pub sha256: Option<String>,
}

impl DownloadSpec {
    /// A spec for `path` in `repo` at `main`.
    pub fn new(repo: &str, path: &str) -> Self {
        DownloadSpec {
            repo: repo.to_string(),
            revision: "main".to_string(),
            path: path.to_string(),
            size: None,
            sha256: None,
        }
    }

    /// A spec from a file of a model listing, carrying its size and LFS sha256.
    pub fn from_file(repo: &str, revision: &str, file: &crate::hub::RepoFile) -> Self {
        DownloadSpec {
            repo: repo.to_string(),
            revision: revision.to_string(),
            path: file.path.clone(),
            size: file.size,
            sha256: file.lfs.as_ref().map(|l| l.sha256.clone()),
        }
    }
}

/// A progress snapshot, sent a few times per second at most per running file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub id: DownloadId,
    /// Bytes of the file on disk so far (including a resumed prefix).
    pub bytes: u64,
    /// File size (0 while unknown).
    pub total: u64,
    /// Smoothed transfer rate.
    pub bytes_per_sec: f64,
    /// Time left at the current rate.
    pub eta: Option<Duration>,
}

/// What the manager reports. The UI folds these into its queue view.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// Added to the queue (also sent at start-up for every unfinished job restored from disk).
    Queued {
        id: DownloadId,
        spec: DownloadSpec,
    },
    /// A worker picked the job up.
    Started {
        id: DownloadId,
    },
    Progress(Progress),
    /// A transient error; the next attempt starts after `wait`.
    Retrying {
        id: DownloadId,
        attempt: u32,
        wait: Duration,
        reason: String,
    },
    Paused {
        id: DownloadId,
    },
    /// Verified and placed in the cache; `path` is the snapshot path.
    Done {
        id: DownloadId,
        path: PathBuf,
    },
    /// Gave up; `reason` says what to do. The partial file is kept where resuming makes sense.
    Failed {
        id: DownloadId,
        reason: String,
    },
    /// Removed from the queue at the user's request (its partial file is deleted).
    Cancelled {
        id: DownloadId,
    },
    /// Something the user should know that is not tied to one job (e.g. a corrupt queue file).
    Notice {
        message: String,
    },
}

impl DownloadEvent {
    /// The job the event is about (`None` for a notice).
    pub fn id(&self) -> Option<DownloadId> {
        match self {
            DownloadEvent::Queued { id, .. }
            | DownloadEvent::Started { id }
            | DownloadEvent::Retrying { id, .. }
            | DownloadEvent::Paused { id }
            | DownloadEvent::Done { id, .. }
            | DownloadEvent::Failed { id, .. }
            | DownloadEvent::Cancelled { id } => Some(*id),
            DownloadEvent::Progress(p) => Some(p.id),
            DownloadEvent::Notice { .. } => None,
        }
    }

    /// The same event about job `id + offset`: for showing another queue's jobs in one view.
    pub fn offset_id(mut self, offset: DownloadId) -> DownloadEvent {
        match &mut self {
            DownloadEvent::Queued { id, .. }
            | DownloadEvent::Started { id }
            | DownloadEvent::Retrying { id, .. }
            | DownloadEvent::Paused { id }
            | DownloadEvent::Done { id, .. }
            | DownloadEvent::Failed { id, .. }
            | DownloadEvent::Cancelled { id } => *id = id.wrapping_add(offset),
            DownloadEvent::Progress(p) => p.id = p.id.wrapping_add(offset),
            DownloadEvent::Notice { .. } => {}
        }
        self
    }
}

/// The state of a job as [`DownloadHandle::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum JobState {
    Queued,
    Running,
    Paused,
    Done { path: PathBuf },
    Failed { reason: String },
}

/// A job in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobView {
    pub id: DownloadId,
    pub spec: DownloadSpec,
    pub state: JobState,
    /// Bytes on disk (the partial file, or the full size when done).
    pub bytes: u64,
    pub total: Option<u64>,
}

/// Tuning knobs. [`ManagerConfig::new`] gives sensible defaults for real use.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub hub: HubClient,
    /// Cache root, normally `$HF_HOME/hub`.
    pub cache_dir: PathBuf,
    /// Where `downloads.json` lives.
    pub data_dir: PathBuf,
    /// Files downloaded at the same time.
    pub concurrency: usize,
    /// Attempts per file for transient errors (progress made resets the count).
    pub max_attempts: u32,
    /// First backoff delay; doubles each attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Longest `Retry-After` we honour before giving up on the attempt budget.
    pub max_retry_after: Duration,
    /// No bytes for this long means the connection is stalled: retry with Range.
    pub stall_timeout: Duration,
    /// Minimum time between progress snapshots of one file.
    pub progress_interval: Duration,
}

impl ManagerConfig {
    pub fn new(hub: HubClient, cache_dir: PathBuf, data_dir: PathBuf) -> Self {
        ManagerConfig {
            hub,
            cache_dir,
            data_dir,
            concurrency: 2,
            max_attempts: 6,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_retry_after: Duration::from_secs(300),
            stall_timeout: Duration::from_secs(30),
            progress_interval: Duration::from_millis(250),
        }
    }
}

pub(crate) enum Command {
    Enqueue(DownloadId, DownloadSpec),
    Pause(DownloadId),
    Resume(DownloadId),
    Cancel(DownloadId),
    Retry(DownloadId),
    SetConcurrency(usize),
    List(oneshot::Sender<Vec<JobView>>),
    Shutdown(oneshot::Sender<()>),
}

/// Talks to the manager task. Cheap to clone; every method returns at once.
#[derive(Debug, Clone)]
pub struct DownloadHandle {
    tx: mpsc::UnboundedSender<Command>,
    next_id: Arc<AtomicU64>,
}

impl DownloadHandle {
    /// Adds a file to the queue and returns its id. Invalid repo ids or paths fail the job at
    /// once (a `Failed` event) without touching the disk.
    pub fn enqueue(&self, spec: DownloadSpec) -> DownloadId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Command::Enqueue(id, spec));
        id
    }

    /// Stops a queued or running job, keeping its partial file.
    pub fn pause(&self, id: DownloadId) {
        let _ = self.tx.send(Command::Pause(id));
    }

    /// Puts a paused job back in the queue.
    pub fn resume(&self, id: DownloadId) {
        let _ = self.tx.send(Command::Resume(id));
    }

    /// Removes a job from the queue, stopping it if running. An unfinished job's partial file is
    /// deleted; on a finished job this only clears it from the list (the model stays).
    pub fn cancel(&self, id: DownloadId) {
        let _ = self.tx.send(Command::Cancel(id));
    }

    /// Puts a failed job back in the queue with a fresh attempt budget.
    pub fn retry(&self, id: DownloadId) {
        let _ = self.tx.send(Command::Retry(id));
    }

    pub fn set_concurrency(&self, n: usize) {
        let _ = self.tx.send(Command::SetConcurrency(n.max(1)));
    }

    /// Every job in queue order.
    pub async fn list(&self) -> Result<Vec<JobView>, DownloadError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::List(tx))
            .map_err(|_| DownloadError::ManagerGone)?;
        rx.await.map_err(|_| DownloadError::ManagerGone)
    }

    /// Stops every worker (partial files are kept), saves the queue and ends the task.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Loads the queue from `config.data_dir` and starts the manager on the current tokio runtime.
/// Unfinished jobs from a previous run are re-announced as `Queued` and resume.
pub fn spawn(
    config: ManagerConfig,
) -> Result<(DownloadHandle, mpsc::UnboundedReceiver<DownloadEvent>), DownloadError> {
    let (queue, warning) = store::load(&config.data_dir)?;
    let next_id = Arc::new(AtomicU64::new(queue.next_id));
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    if let Some(message) = warning {
        let _ = ev_tx.send(DownloadEvent::Notice { message });
    }
    let m = manager::Manager::new(config, queue.jobs, next_id.clone(), ev_tx);
    tokio::spawn(m.run(cmd_rx));
    Ok((
        DownloadHandle {
            tx: cmd_tx,
            next_id,
        },
        ev_rx,
    ))
}
