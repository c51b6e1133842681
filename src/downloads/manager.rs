//! The manager task: owns the queue, starts workers up to the concurrency limit, applies user
//! commands and persists every state change.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::RepoCache;
use super::store::{self, StoredJob, StoredState};
use super::worker::{self, WorkerCtx, WorkerMsg};
use super::{Command, DownloadEvent, DownloadId, DownloadSpec, JobState, JobView, ManagerConfig};
use crate::hub::{validate_repo_id, validate_repo_path, validate_revision};

/// Why a running worker was stopped, so its `Finished` lands in the right state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Pause,
    Cancel,
    Shutdown,
}

struct Running {
    cancel: CancellationToken,
    stop: Option<Stop>,
}

struct Job {
    stored: StoredJob,
    running: Option<Running>,
    bytes: u64,
}

pub(crate) struct Manager {
    config: ManagerConfig,
    jobs: Vec<Job>,
    next_id: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<DownloadEvent>,
    worker_tx: mpsc::UnboundedSender<WorkerMsg>,
    worker_rx: mpsc::UnboundedReceiver<WorkerMsg>,
    ctx: Arc<WorkerCtx>,
}

impl Manager {
    pub(crate) fn new(
        config: ManagerConfig,
        stored: Vec<StoredJob>,
        next_id: Arc<AtomicU64>,
        events: mpsc::UnboundedSender<DownloadEvent>,
    ) -> Self {
        let (worker_tx, worker_rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(WorkerCtx::from_config(&config));
        let jobs = stored
            .into_iter()
            .map(|s| {
                let bytes = match (&s.state, &s.etag) {
                    (StoredState::Done { .. }, _) => s.total.unwrap_or(0),
                    (_, Some(etag)) => {
                        RepoCache::new(&config.cache_dir, &s.spec.repo).partial_len(etag)
                    }
                    _ => 0,
                };
                Job {
                    stored: s,
                    running: None,
                    bytes,
                }
            })
            .collect();
        Manager {
            config,
            jobs,
            next_id,
            events,
            worker_tx,
            worker_rx,
            ctx,
        }
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        for job in &self.jobs {
            let id = job.stored.id;
            let ev = match &job.stored.state {
                StoredState::Done { .. } => continue,
                StoredState::Queued => None,
                StoredState::Paused => Some(DownloadEvent::Paused { id }),
                StoredState::Failed { reason } => Some(DownloadEvent::Failed {
                    id,
                    reason: reason.clone(),
                }),
            };
            self.emit(DownloadEvent::Queued {
                id,
                spec: job.stored.spec.clone(),
            });
            if let Some(ev) = ev {
                self.emit(ev);
            }
        }
        self.schedule();
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some(msg) = self.worker_rx.recv() => self.worker_msg(msg),
            }
            self.schedule();
        }
    }

    fn emit(&self, ev: DownloadEvent) {
        let _ = self.events.send(ev);
    }

    fn save(&self) {
        let jobs: Vec<StoredJob> = self.jobs.iter().map(|j| j.stored.clone()).collect();
        if let Err(e) = store::save(
            &self.config.data_dir,
            self.next_id.load(Ordering::Relaxed),
            &jobs,
        ) {
            self.emit(DownloadEvent::Notice {
                message: e.to_string(),
            });
        }
    }

    fn find(&mut self, id: DownloadId) -> Option<&mut Job> {
        find(&mut self.jobs, id)
    }

    fn command(&mut self, cmd: Command) {
        let events = self.events.clone();
        let mut dirty = false;
        match cmd {
            Command::Enqueue(id, spec) => self.enqueue(id, spec),
            Command::Pause(id) => {
                let Some(job) = find(&mut self.jobs, id) else {
                    return;
                };
                if let Some(r) = &mut job.running {
                    r.stop = Some(Stop::Pause);
                    r.cancel.cancel();
                } else if job.stored.state == StoredState::Queued {
                    job.stored.state = StoredState::Paused;
                    let _ = events.send(DownloadEvent::Paused { id });
                    dirty = true;
                }
            }
            Command::Resume(id) | Command::Retry(id) => {
                let Some(job) = find(&mut self.jobs, id) else {
                    return;
                };
                let restartable = matches!(
                    job.stored.state,
                    StoredState::Paused | StoredState::Failed { .. }
                );
                if job.running.is_none() && restartable {
                    job.stored.state = StoredState::Queued;
                    let spec = job.stored.spec.clone();
                    let _ = events.send(DownloadEvent::Queued { id, spec });
                    dirty = true;
                }
            }
            Command::Cancel(id) => {
                let Some(job) = find(&mut self.jobs, id) else {
                    return;
                };
                if let Some(r) = &mut job.running {
                    r.stop = Some(Stop::Cancel);
                    r.cancel.cancel();
                } else {
                    self.remove(id);
                }
            }
            Command::SetConcurrency(n) => self.config.concurrency = n,
            Command::List(reply) => {
                let _ = reply.send(self.views());
            }
            // `run` handles shutdown itself; a second request just gets its answer.
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
        if dirty {
            self.save();
        }
    }

    fn enqueue(&mut self, id: DownloadId, spec: DownloadSpec) {
        let invalid = validate_repo_id(&spec.repo)
            .and_then(|_| validate_repo_path(&spec.path))
            .and_then(|_| validate_revision(&spec.revision))
            .err();
        let sha256 = spec
            .sha256
            .clone()
            .filter(|s| crate::hub::validate::is_hex(s, 64));
        let state = match &invalid {
            Some(e) => StoredState::Failed {
                reason: e.to_string(),
            },
            None => StoredState::Queued,
        };
        self.jobs.push(Job {
            stored: StoredJob {
                id,
                spec: spec.clone(),
                state,
                commit: None,
                etag: sha256,
                total: spec.size,
            },
            running: None,
            bytes: 0,
        });
        self.emit(DownloadEvent::Queued { id, spec });
        if let Some(e) = invalid {
            self.emit(DownloadEvent::Failed {
                id,
                reason: e.to_string(),
            });
        }
        self.save();
    }

    fn remove(&mut self, id: DownloadId) {
        let Some(pos) = self.jobs.iter().position(|j| j.stored.id == id) else {
            return;
        };
        let job = self.jobs.remove(pos);
        if let Some(etag) = &job.stored.etag {
            if !matches!(job.stored.state, StoredState::Done { .. })
                && validate_repo_id(&job.stored.spec.repo).is_ok()
            {
                let cache = RepoCache::new(&self.config.cache_dir, &job.stored.spec.repo);
                let _ = std::fs::remove_file(cache.partial_path(etag));
            }
        }
        self.emit(DownloadEvent::Cancelled { id });
        self.save();
    }

    fn views(&self) -> Vec<JobView> {
        self.jobs
            .iter()
            .map(|j| JobView {
                id: j.stored.id,
                spec: j.stored.spec.clone(),
                state: match (&j.running, &j.stored.state) {
                    (Some(_), _) => JobState::Running,
                    (None, StoredState::Queued) => JobState::Queued,
                    (None, StoredState::Paused) => JobState::Paused,
                    (None, StoredState::Done { path }) => JobState::Done { path: path.clone() },
                    (None, StoredState::Failed { reason }) => JobState::Failed {
                        reason: reason.clone(),
                    },
                },
                bytes: j.bytes,
                total: j.stored.total,
            })
            .collect()
    }

    fn schedule(&mut self) {
        let mut running = self.jobs.iter().filter(|j| j.running.is_some()).count();
        let mut started = Vec::new();
        for job in &mut self.jobs {
            if running >= self.config.concurrency {
                break;
            }
            if job.running.is_some() || job.stored.state != StoredState::Queued {
                continue;
            }
            let cancel = CancellationToken::new();
            job.running = Some(Running {
                cancel: cancel.clone(),
                stop: None,
            });
            running += 1;
            started.push(job.stored.id);
            let task = worker::Task {
                id: job.stored.id,
                spec: job.stored.spec.clone(),
                commit: job.stored.commit.clone(),
                etag: job.stored.etag.clone(),
            };
            tokio::spawn(worker::run(
                self.ctx.clone(),
                task,
                cancel,
                self.worker_tx.clone(),
            ));
        }
        for id in started {
            self.emit(DownloadEvent::Started { id });
        }
    }

    fn worker_msg(&mut self, msg: WorkerMsg) {
        match msg {
            WorkerMsg::Meta {
                id,
                commit,
                etag,
                total,
            } => {
                let Some(job) = self.find(id) else { return };
                let changed = job.stored.commit.as_deref() != Some(commit.as_str())
                    || job.stored.etag.as_deref() != Some(etag.as_str())
                    || job.stored.total != Some(total);
                job.stored.commit = Some(commit);
                job.stored.etag = Some(etag);
                job.stored.total = Some(total);
                if changed {
                    self.save();
                }
            }
            WorkerMsg::Progress(p) => {
                if let Some(job) = self.find(p.id) {
                    job.bytes = p.bytes;
                }
                self.emit(DownloadEvent::Progress(p));
            }
            WorkerMsg::Retrying {
                id,
                attempt,
                wait,
                reason,
            } => self.emit(DownloadEvent::Retrying {
                id,
                attempt,
                wait,
                reason,
            }),
            WorkerMsg::Finished { id, result } => self.finished(id, result),
        }
    }

    fn finished(&mut self, id: DownloadId, result: Result<PathBuf, super::DownloadError>) {
        let events = self.events.clone();
        let Some(job) = find(&mut self.jobs, id) else {
            return;
        };
        let stop = job.running.take().and_then(|r| r.stop);
        if stop == Some(Stop::Cancel) {
            self.remove(id);
            return;
        }
        match (result, stop) {
            (Ok(path), _) => {
                job.bytes = job.stored.total.unwrap_or(job.bytes);
                job.stored.state = StoredState::Done { path: path.clone() };
                let _ = events.send(DownloadEvent::Done { id, path });
            }
            (Err(_), Some(Stop::Pause)) => {
                job.stored.state = StoredState::Paused;
                let _ = events.send(DownloadEvent::Paused { id });
            }
            (Err(_), Some(Stop::Shutdown)) => job.stored.state = StoredState::Queued,
            (Err(e), _) => {
                let reason = e.to_string();
                job.stored.state = StoredState::Failed {
                    reason: reason.clone(),
                };
                let _ = events.send(DownloadEvent::Failed { id, reason });
            }
        }
        self.save();
    }

    async fn shutdown(&mut self) {
        for job in &mut self.jobs {
            if let Some(r) = &mut job.running {
                r.stop = Some(Stop::Shutdown);
                r.cancel.cancel();
            }
        }
        while self.jobs.iter().any(|j| j.running.is_some()) {
            match self.worker_rx.recv().await {
                Some(msg) => self.worker_msg(msg),
                None => break,
            }
        }
        self.save();
    }
}

fn find(jobs: &mut [Job], id: DownloadId) -> Option<&mut Job> {
    jobs.iter_mut().find(|j| j.stored.id == id)
}
