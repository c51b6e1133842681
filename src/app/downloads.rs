//! The Downloads pane: a view of the download manager's queue, folded from its events.

use crate::config::keymap::Command;
use crate::downloads::{DownloadEvent, DownloadId, DownloadSpec};
use std::time::Duration;

#[derive(Debug, Clone, PartialEq)]
pub enum RowState {
    Queued,
    Running,
    Retrying {
        attempt: u32,
        wait: Duration,
        reason: String,
    },
    Paused,
    Done,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: DownloadId,
    pub spec: DownloadSpec,
    pub state: RowState,
    pub bytes: u64,
    pub total: u64,
    pub bytes_per_sec: f64,
    pub eta: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DownloadsEffect {
    Enqueue(Vec<DownloadSpec>),
    Pause(DownloadId),
    Resume(DownloadId),
    Cancel(DownloadId),
    Retry(DownloadId),
}

impl DownloadsEffect {
    /// The row an effect acts on; `None` for new downloads.
    pub fn id(&self) -> Option<DownloadId> {
        match self {
            DownloadsEffect::Enqueue(_) => None,
            DownloadsEffect::Pause(id)
            | DownloadsEffect::Resume(id)
            | DownloadsEffect::Cancel(id)
            | DownloadsEffect::Retry(id) => Some(*id),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct DownloadsState {
    pub rows: Vec<Row>,
    pub selected: usize,
    pub notice: Option<(bool, String)>,
    /// Set when the manager could not start (e.g. the data dir is not writable).
    pub unavailable: Option<String>,
}

impl DownloadsState {
    fn row(&mut self, id: DownloadId) -> Option<&mut Row> {
        self.rows.iter_mut().find(|r| r.id == id)
    }

    pub fn active(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| matches!(r.state, RowState::Running | RowState::Retrying { .. }))
            .count()
    }

    pub fn total_speed(&self) -> f64 {
        self.rows
            .iter()
            .filter(|r| r.state == RowState::Running)
            .map(|r| r.bytes_per_sec)
            .sum()
    }

    pub fn selected_row(&self) -> Option<&Row> {
        self.rows.get(self.selected)
    }
}

/// What an event means for the rest of the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Nothing,
    /// A file landed in the cache: the library should look again.
    Finished,
}

pub fn on_event(s: &mut DownloadsState, ev: DownloadEvent) -> Outcome {
    match ev {
        DownloadEvent::Queued { id, spec } => {
            if s.row(id).is_none() {
                s.rows.push(Row {
                    id,
                    total: spec.size.unwrap_or(0),
                    spec,
                    state: RowState::Queued,
                    bytes: 0,
                    bytes_per_sec: 0.0,
                    eta: None,
                });
            }
        }
        DownloadEvent::Started { id } => {
            if let Some(r) = s.row(id) {
                r.state = RowState::Running;
            }
        }
        DownloadEvent::Progress(p) => {
            if let Some(r) = s.row(p.id) {
                r.state = RowState::Running;
                r.bytes = p.bytes;
                if p.total > 0 {
                    r.total = p.total;
                }
                r.bytes_per_sec = p.bytes_per_sec;
                r.eta = p.eta;
            }
        }
        DownloadEvent::Retrying {
            id,
            attempt,
            wait,
            reason,
        } => {
            if let Some(r) = s.row(id) {
                r.state = RowState::Retrying {
                    attempt,
                    wait,
                    reason,
                };
                r.bytes_per_sec = 0.0;
            }
        }
        DownloadEvent::Paused { id } => {
            if let Some(r) = s.row(id) {
                r.state = RowState::Paused;
                r.bytes_per_sec = 0.0;
                r.eta = None;
            }
        }
        DownloadEvent::Done { id, .. } => {
            if let Some(r) = s.row(id) {
                r.state = RowState::Done;
                r.bytes = r.total.max(r.bytes);
                r.bytes_per_sec = 0.0;
                r.eta = None;
            }
            return Outcome::Finished;
        }
        DownloadEvent::Failed { id, reason } => {
            if let Some(r) = s.row(id) {
                r.state = RowState::Failed(reason);
                r.bytes_per_sec = 0.0;
                r.eta = None;
            }
        }
        DownloadEvent::Cancelled { id } => {
            s.rows.retain(|r| r.id != id);
            s.selected = s.selected.min(s.rows.len().saturating_sub(1));
        }
        DownloadEvent::Notice { message } => s.notice = Some((true, message)),
    }
    Outcome::Nothing
}

pub fn command(s: &mut DownloadsState, cmd: Command, page: usize) -> Vec<DownloadsEffect> {
    let last = s.rows.len().saturating_sub(1);
    let sel = s.selected_row().map(|r| (r.id, r.state.clone()));
    match (cmd, sel) {
        (Command::SelectUp, _) => s.selected = s.selected.saturating_sub(1),
        (Command::SelectDown, _) => s.selected = (s.selected + 1).min(last),
        (Command::PageUp, _) => s.selected = s.selected.saturating_sub(page.max(1)),
        (Command::PageDown, _) => s.selected = (s.selected + page.max(1)).min(last),
        (Command::SelectFirst, _) => s.selected = 0,
        (Command::SelectLast, _) => s.selected = last,
        (
            Command::Pause,
            Some((id, RowState::Running | RowState::Queued | RowState::Retrying { .. })),
        ) => return vec![DownloadsEffect::Pause(id)],
        (Command::Pause, Some((id, RowState::Paused)))
        | (Command::ResumeDownload, Some((id, RowState::Paused))) => {
            return vec![DownloadsEffect::Resume(id)]
        }
        (Command::Retry, Some((id, RowState::Failed(_)))) => {
            return vec![DownloadsEffect::Retry(id)]
        }
        (Command::Delete, Some((id, state))) => {
            if state == RowState::Done {
                // Finished rows only leave the view; the file stays in the library.
                s.rows.retain(|r| r.id != id);
                s.selected = s.selected.min(s.rows.len().saturating_sub(1));
            } else {
                return vec![DownloadsEffect::Cancel(id)];
            }
        }
        _ => {}
    }
    vec![]
}
