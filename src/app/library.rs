//! The Library pane's state and its pure update.

use crate::config::keymap::Command;
use crate::library::{DeletePlan, Model, VerifyReport};
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Size,
    Params,
    Modified,
}

impl SortKey {
    fn next(self) -> SortKey {
        match self {
            SortKey::Name => SortKey::Size,
            SortKey::Size => SortKey::Params,
            SortKey::Params => SortKey::Modified,
            SortKey::Modified => SortKey::Name,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Size => "size",
            SortKey::Params => "parameters",
            SortKey::Modified => "date",
        }
    }
}

#[derive(Debug, Clone)]
pub enum LibraryMsg {
    Scanned {
        models: Arc<Vec<Model>>,
        warnings: Vec<String>,
    },
    Verified(VerifyReport),
    VerifyProgress {
        model: String,
        done: u64,
        total: u64,
    },
    Deleted {
        model: String,
        result: Result<u64, String>,
    },
    DeletePlanned(Result<DeletePlan, String>),
}

#[derive(Debug, Clone)]
pub enum LibraryEffect {
    Scan,
    Verify(Box<Model>),
    PlanDelete(Box<Model>),
    Delete(Box<DeletePlan>),
}

/// Effects compare by identity of what they act on, which is what tests assert.
impl PartialEq for LibraryEffect {
    fn eq(&self, other: &Self) -> bool {
        use LibraryEffect::*;
        match (self, other) {
            (Scan, Scan) => true,
            (Verify(a), Verify(b)) | (PlanDelete(a), PlanDelete(b)) => a.load_path == b.load_path,
            (Delete(a), Delete(b)) => a.model == b.model && a.removals == b.removals,
            _ => false,
        }
    }
}

/// What the pane shows beside the table.
#[derive(Debug, Clone)]
pub enum Outcome {
    Verifying {
        model: String,
        done: u64,
        total: u64,
    },
    Verified(VerifyReport),
}

#[derive(Debug, Clone)]
pub struct LibraryState {
    pub models: Arc<Vec<Model>>,
    pub warnings: Vec<String>,
    /// Indices into `models` that pass the filter, in display order.
    pub view: Vec<usize>,
    pub selected: usize,
    pub filter: String,
    pub filtering: bool,
    pub sort: SortKey,
    pub detail: bool,
    pub scanning: bool,
    /// Whether a scan has ever finished (an empty list before that means "not known yet").
    pub scanned: bool,
    pub confirm: Option<DeletePlan>,
    pub outcome: Option<Outcome>,
    pub notice: Option<(bool, String)>,
}

impl Default for LibraryState {
    fn default() -> Self {
        LibraryState {
            models: Arc::new(Vec::new()),
            warnings: Vec::new(),
            view: Vec::new(),
            selected: 0,
            filter: String::new(),
            filtering: false,
            sort: SortKey::Name,
            detail: true,
            scanning: false,
            scanned: false,
            confirm: None,
            outcome: None,
            notice: None,
        }
    }
}

impl LibraryState {
    pub fn selected_model(&self) -> Option<&Model> {
        self.view
            .get(self.selected)
            .and_then(|i| self.models.get(*i))
    }

    pub fn total_bytes(&self) -> u64 {
        self.models.iter().map(|m| m.size_bytes).sum()
    }

    /// Recomputes `view` from the filter and sort, keeping the selected model selected.
    fn refresh_view(&mut self) {
        let keep = self.selected_model().map(|m| m.load_path.clone());
        let needle = self.filter.to_lowercase();
        let mut view: Vec<usize> = (0..self.models.len())
            .filter(|i| {
                let m = &self.models[*i];
                needle.is_empty()
                    || m.name.to_lowercase().contains(&needle)
                    || m.info
                        .architecture
                        .as_deref()
                        .is_some_and(|a| a.to_lowercase().contains(&needle))
                    || m.info
                        .quant
                        .as_deref()
                        .is_some_and(|q| q.to_lowercase().contains(&needle))
            })
            .collect();
        let models = &self.models;
        match self.sort {
            SortKey::Name => {}
            SortKey::Size => view.sort_by_key(|i| std::cmp::Reverse(models[*i].size_bytes)),
            SortKey::Params => {
                view.sort_by_key(|i| std::cmp::Reverse(models[*i].info.parameters.unwrap_or(0)))
            }
            SortKey::Modified => view.sort_by_key(|i| std::cmp::Reverse(models[*i].modified)),
        }
        self.view = view;
        self.selected = keep
            .and_then(|p| {
                self.view
                    .iter()
                    .position(|i| self.models[*i].load_path == p)
            })
            .unwrap_or(0)
            .min(self.view.len().saturating_sub(1));
    }

    pub fn typing(&self) -> bool {
        self.filtering
    }

    /// Typed text while filtering.
    pub fn type_char(&mut self, c: char) {
        self.filter.push(c);
        self.refresh_view();
    }

    pub fn backspace(&mut self) {
        self.filter.pop();
        self.refresh_view();
    }

    /// Enter keeps the filter; Esc clears it.
    pub fn end_filter(&mut self, keep: bool) {
        self.filtering = false;
        if !keep {
            self.filter.clear();
            self.refresh_view();
        }
    }
}

/// A library command from the keymap. Returns effects; the caller marks the screen dirty.
pub fn command(s: &mut LibraryState, cmd: Command, page: usize) -> Vec<LibraryEffect> {
    let last = s.view.len().saturating_sub(1);
    match cmd {
        Command::SelectUp => s.selected = s.selected.saturating_sub(1),
        Command::SelectDown => s.selected = (s.selected + 1).min(last),
        Command::PageUp => s.selected = s.selected.saturating_sub(page.max(1)),
        Command::PageDown => s.selected = (s.selected + page.max(1)).min(last),
        Command::SelectFirst => s.selected = 0,
        Command::SelectLast => s.selected = last,
        Command::Filter => s.filtering = true,
        Command::CycleSort => {
            s.sort = s.sort.next();
            s.refresh_view();
            s.notice = Some((false, format!("Sorted by {}", s.sort.label())));
        }
        Command::ToggleDetail => s.detail = !s.detail,
        Command::Refresh if !s.scanning => {
            s.scanning = true;
            return vec![LibraryEffect::Scan];
        }
        Command::Verify => {
            if let Some(m) = s.selected_model().cloned() {
                s.outcome = Some(Outcome::Verifying {
                    model: m.name.clone(),
                    done: 0,
                    total: m.size_bytes,
                });
                return vec![LibraryEffect::Verify(Box::new(m))];
            }
        }
        Command::Delete => {
            if let Some(m) = s.selected_model() {
                return vec![LibraryEffect::PlanDelete(Box::new(m.clone()))];
            }
        }
        Command::Confirm => {
            if let Some(plan) = s.confirm.take() {
                return vec![LibraryEffect::Delete(Box::new(plan))];
            }
        }
        Command::Cancel if s.confirm.take().is_some() => {
            s.notice = Some((false, "Nothing was deleted".into()));
        }
        _ => {}
    }
    vec![]
}

pub fn update(s: &mut LibraryState, msg: LibraryMsg) -> Vec<LibraryEffect> {
    match msg {
        LibraryMsg::Scanned { models, warnings } => {
            s.models = models;
            s.warnings = warnings;
            s.scanning = false;
            s.scanned = true;
            s.refresh_view();
        }
        LibraryMsg::VerifyProgress { model, done, total } => {
            s.outcome = Some(Outcome::Verifying { model, done, total });
        }
        LibraryMsg::Verified(report) => {
            s.notice = Some(if report.all_ok() {
                (
                    false,
                    format!("{}: every file matches its hash", report.model),
                )
            } else {
                (true, format!("{}: some files do not match", report.model))
            });
            s.outcome = Some(Outcome::Verified(report));
        }
        LibraryMsg::DeletePlanned(Ok(plan)) => s.confirm = Some(plan),
        LibraryMsg::DeletePlanned(Err(e)) => s.notice = Some((true, e)),
        LibraryMsg::Deleted { model, result } => match result {
            Ok(freed) => {
                s.notice = Some((
                    false,
                    format!(
                        "Deleted {model}, freed {}",
                        crate::library::human::bytes(freed)
                    ),
                ));
                s.scanning = true;
                return vec![LibraryEffect::Scan];
            }
            Err(e) => s.notice = Some((true, format!("Could not delete {model}: {e}"))),
        },
    }
    vec![]
}
