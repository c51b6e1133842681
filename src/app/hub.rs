//! The Hub pane's state and its pure update: search, results, model detail, queueing.

use crate::config::keymap::Command;
use crate::downloads::DownloadSpec;
use crate::hub::{
    fit_for, gguf_need, group_gguf, select_files, shape_source, FitReport, MemInfo, ModelInfo,
    ModelSummary, PullRequest, SearchQuery, Sort,
};
use crate::library::memory::ModelShape;
use crate::markdown::{render_model_card, MarkdownStyles};

/// Search results wait this long after the last keystroke, so typing never floods the Hub.
pub const DEBOUNCE_MS: u64 = 350;

#[derive(Debug, Clone)]
pub enum HubMsg {
    /// The debounce timer for query `seq` ran out.
    Debounced { seq: u64 },
    Results {
        seq: u64,
        append: bool,
        result: Result<(Vec<ModelSummary>, Option<String>), String>,
    },
    Info {
        repo: String,
        result: Result<Box<ModelInfo>, String>,
    },
    /// The repo's README.md, the model card.
    Card {
        repo: String,
        result: Result<String, String>,
    },
    /// The shape read from the start of one of the repo's GGUF files (for memory estimates).
    Shape {
        repo: String,
        result: Result<Option<ModelShape>, String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum HubEffect {
    Debounce {
        seq: u64,
    },
    Search {
        seq: u64,
        query: SearchQuery,
    },
    NextPage {
        seq: u64,
        url: String,
    },
    Info {
        repo: String,
    },
    /// Fetch the model card (README.md) of `repo` at `revision`.
    Card {
        repo: String,
        revision: String,
    },
    /// Read the shape of `repo` from the start of its file `path` at `revision`.
    Shape {
        repo: String,
        revision: String,
        path: String,
    },
}

/// Quantizations offered first, best balance of quality and size first.
const PREFERRED: [&str; 6] = ["Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q6_K", "Q8_0"];

/// One thing the detail view offers to download.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// `Q4_K_M`, or `safetensors` / `pytorch` for a full-precision set.
    pub label: String,
    pub files: Vec<String>,
    pub size: u64,
    pub fit: Option<FitReport>,
    /// Why the engine cannot use it (a multimodal projector, an incomplete split, …).
    pub note: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Detail {
    pub repo: String,
    pub info: Option<Box<ModelInfo>>,
    pub error: Option<String>,
    pub choices: Vec<Choice>,
    pub selected: usize,
    /// What the memory estimates need beyond file sizes; `None` until read (or unreadable).
    pub shape: Option<ModelShape>,
    pub card: Card,
    /// First row of the model card on screen.
    pub card_scroll: usize,
}

/// The model card beside the quant list.
#[derive(Debug, Clone, PartialEq)]
pub enum Card {
    Loading,
    /// The repo has no README.md.
    Absent,
    Failed(String),
    Ready {
        source: String,
        lines: Vec<ratatui::text::Line<'static>>,
    },
}

/// How much of a README is fetched; longer cards are cut (and say so).
pub const CARD_MAX_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct HubState {
    pub query: String,
    pub editing: bool,
    pub sort: Sort,
    pub gguf_only: bool,
    /// Bumped on every new query; answers with an older seq are dropped.
    pub seq: u64,
    pub loading: bool,
    pub searched: bool,
    pub results: Vec<ModelSummary>,
    pub next: Option<String>,
    pub selected: usize,
    pub error: Option<String>,
    pub detail: Option<Detail>,
    pub mem: Option<MemInfo>,
    pub notice: Option<(bool, String)>,
    pub endpoint: String,
}

impl HubState {
    pub fn new(endpoint: String, mem: Option<MemInfo>) -> HubState {
        HubState {
            query: String::new(),
            editing: false,
            sort: Sort::Downloads,
            gguf_only: true,
            seq: 0,
            loading: false,
            searched: false,
            results: Vec::new(),
            next: None,
            selected: 0,
            error: None,
            detail: None,
            mem,
            notice: None,
            endpoint,
        }
    }

    pub fn typing(&self) -> bool {
        self.editing
    }

    fn query(&self) -> SearchQuery {
        SearchQuery {
            search: Some(self.query.trim().to_string()).filter(|q| !q.is_empty()),
            filters: if self.gguf_only {
                vec!["gguf".into()]
            } else {
                vec![]
            },
            sort: Some(self.sort),
            limit: Some(50),
            full: true,
            ..Default::default()
        }
    }

    fn search_now(&mut self) -> Vec<HubEffect> {
        self.seq += 1;
        self.loading = true;
        self.error = None;
        vec![HubEffect::Search {
            seq: self.seq,
            query: self.query(),
        }]
    }

    /// The first search, when the app starts: the most downloaded models (GGUF only, the
    /// default filter), so the pane opens on something to pick from.
    pub fn open(&mut self) -> Vec<HubEffect> {
        self.search_now()
    }

    /// Renders the model card again (after a theme change).
    pub fn restyle(&mut self, styles: &MarkdownStyles) {
        if let Some(Detail {
            card: Card::Ready { source, lines },
            ..
        }) = self.detail.as_mut()
        {
            *lines = render_model_card(source, styles);
        }
    }

    /// A typed character or deletion: results follow after a pause in typing.
    pub fn edit(&mut self, c: Option<char>) -> Vec<HubEffect> {
        match c {
            Some(c) => self.query.push(c),
            None => {
                self.query.pop();
            }
        }
        self.seq += 1;
        vec![HubEffect::Debounce { seq: self.seq }]
    }

    /// Enter searches at once; Esc leaves the box.
    pub fn end_edit(&mut self, submit: bool) -> Vec<HubEffect> {
        self.editing = false;
        if submit {
            self.search_now()
        } else {
            vec![]
        }
    }

    pub fn selected_choice(&self) -> Option<(&Detail, &Choice)> {
        let d = self.detail.as_ref()?;
        Some((d, d.choices.get(d.selected)?))
    }
}

fn sort_next(s: Sort) -> Sort {
    match s {
        Sort::Downloads => Sort::Likes,
        Sort::Likes => Sort::LastModified,
        _ => Sort::Downloads,
    }
}

pub fn sort_label(s: Sort) -> &'static str {
    match s {
        Sort::Downloads => "downloads",
        Sort::Likes => "likes",
        Sort::LastModified => "updated",
        Sort::CreatedAt => "created",
        Sort::Trending => "trending",
    }
}

/// The download choices for a model: each GGUF quant (all parts), then a safetensors set, or a
/// PyTorch `.bin` set when there is no safetensors.
/// A safetensors or PyTorch set's fit, estimated from its weights alone (its config.json is not
/// fetched), with the same estimator the Library uses.
fn weights_only_fit(size: u64, mem: MemInfo) -> FitReport {
    let facts = crate::library::memory::MemoryFacts::new(size, None, None);
    let need = crate::library::memory::estimate(
        &facts,
        crate::library::ModelKind::Generate,
        crate::library::DEFAULT_CONTEXT,
    );
    fit_for(need, None, mem)
}

pub fn choices(info: &ModelInfo, mem: Option<MemInfo>, shape: Option<ModelShape>) -> Vec<Choice> {
    let mut out = Vec::new();
    for g in group_gguf(&info.files) {
        let label = g
            .quant
            .map(|q| q.name().to_string())
            .unwrap_or_else(|| g.name.clone());
        let note = if g.is_projector {
            Some("multimodal projector, not a model by itself".to_string())
        } else if !g.complete {
            Some("some parts of this split file are missing".to_string())
        } else if g.quant.is_some_and(|q| q.name().starts_with("IQ")) {
            Some("IQ quants are not supported by the engine".to_string())
        } else {
            None
        };
        out.push(Choice {
            label,
            files: g.files.iter().map(|f| f.path.clone()).collect(),
            size: g.total_size,
            fit: mem.map(|m| {
                let (need, ctx) = gguf_need(g.total_size, g.quant, shape);
                fit_for(need, ctx, m)
            }),
            note,
        });
    }
    let weights: Vec<&crate::hub::RepoFile> = info
        .files
        .iter()
        .filter(|f| f.path.ends_with(".safetensors"))
        .collect();
    if !weights.is_empty() {
        let size = weights.iter().filter_map(|f| f.size).sum();
        out.push(Choice {
            label: "safetensors".into(),
            files: weights.iter().map(|f| f.path.clone()).collect(),
            size,
            fit: mem.map(|m| weights_only_fit(size, m)),
            note: None,
        });
    } else {
        let (files, note) = match crate::hub::pytorch_set(info) {
            Ok(Some(files)) => (files, None),
            Ok(None) => (Vec::new(), None),
            Err(e) => {
                let parts = info
                    .files
                    .iter()
                    .filter(|f| crate::pytorch::is_weights_name(&f.path))
                    .cloned()
                    .collect();
                (parts, Some(e.to_string()))
            }
        };
        if !files.is_empty() {
            let size = files.iter().filter_map(|f| f.size).sum();
            out.push(Choice {
                label: "pytorch".into(),
                files: files.into_iter().map(|f| f.path).collect(),
                size,
                fit: mem.map(|m| weights_only_fit(size, m)),
                note,
            });
        }
    }
    out
}

/// The download specs for the selected choice: its files plus the small files it needs.
pub fn specs_for(detail: &Detail, choice: &Choice) -> Result<Vec<DownloadSpec>, String> {
    let info = detail
        .info
        .as_ref()
        .ok_or("the model details are still loading")?;
    let full_precision = choice.label == "safetensors" || choice.label == "pytorch";
    let req = if full_precision {
        PullRequest::default()
    } else {
        PullRequest {
            files: vec![],
            quant: Some(choice.label.clone()),
        }
    };
    let has_gguf = info.files.iter().any(|f| f.path.ends_with(".gguf"));
    let files = if full_precision && has_gguf {
        // A repo with both formats: the full-precision weights and the small files beside them
        // (configs, tokenizer), never the GGUF files.
        let small = info.files.iter().filter(|f| {
            let p = f.path.to_ascii_lowercase();
            f.size.is_some_and(|n| n < 50_000_000)
                && [".json", ".txt", ".model", ".jinja"]
                    .iter()
                    .any(|e| p.ends_with(e))
        });
        let wanted = choice
            .files
            .iter()
            .cloned()
            .chain(small.map(|f| f.path.clone()))
            .collect();
        select_files(
            info,
            &PullRequest {
                files: wanted,
                quant: None,
            },
        )
    } else {
        select_files(info, &req)
    }
    .map_err(|e| e.to_string())?;
    let rev = info.sha.as_deref().unwrap_or("main");
    Ok(files
        .iter()
        .map(|f| DownloadSpec::from_file(&detail.repo, rev, f))
        .collect())
}

/// A hub command from the keymap. `Ok(specs)` asks the caller to queue downloads.
pub fn command(s: &mut HubState, cmd: Command, page: usize) -> (Vec<HubEffect>, Vec<DownloadSpec>) {
    let mut none = (vec![], vec![]);
    if let Some(d) = s.detail.as_mut() {
        let last = d.choices.len().saturating_sub(1);
        match cmd {
            Command::SelectUp => d.selected = d.selected.saturating_sub(1),
            Command::SelectDown => d.selected = (d.selected + 1).min(last),
            Command::SelectFirst => d.selected = 0,
            Command::SelectLast => d.selected = last,
            // The quant list is short; paging scrolls the model card beside it.
            Command::PageDown => d.card_scroll = d.card_scroll.saturating_add(page.max(1)),
            Command::PageUp => d.card_scroll = d.card_scroll.saturating_sub(page.max(1)),
            Command::Back | Command::Cancel => s.detail = None,
            Command::Download | Command::Open => {
                if let Some((d, c)) = s.selected_choice() {
                    match specs_for(d, c) {
                        Ok(specs) => {
                            s.notice = Some((
                                false,
                                format!(
                                    "Queued {} file(s) of {} ({}) — see Downloads (2)",
                                    specs.len(),
                                    d.repo,
                                    c.label
                                ),
                            ));
                            none.1 = specs;
                        }
                        Err(e) => s.notice = Some((true, e)),
                    }
                }
            }
            Command::Filter => {
                s.detail = None;
                s.editing = true;
            }
            _ => {}
        }
        return none;
    }
    let last = s.results.len().saturating_sub(1);
    match cmd {
        Command::SelectUp => s.selected = s.selected.saturating_sub(1),
        Command::SelectDown => {
            s.selected = (s.selected + 1).min(last);
            // Reaching the end of the list fetches the next page.
            if s.selected == last && !s.loading {
                if let Some(url) = s.next.clone() {
                    s.loading = true;
                    none.0 = vec![HubEffect::NextPage { seq: s.seq, url }];
                }
            }
        }
        Command::PageUp => s.selected = s.selected.saturating_sub(page.max(1)),
        Command::PageDown => s.selected = (s.selected + page.max(1)).min(last),
        Command::SelectFirst => s.selected = 0,
        Command::SelectLast => s.selected = last,
        Command::Filter => s.editing = true,
        Command::CycleSort => {
            s.sort = sort_next(s.sort);
            none.0 = s.search_now();
        }
        Command::ToggleGguf => {
            s.gguf_only = !s.gguf_only;
            none.0 = s.search_now();
        }
        Command::Refresh => none.0 = s.search_now(),
        Command::Open | Command::ToggleDetail | Command::Download => {
            if let Some(m) = s.results.get(s.selected) {
                s.detail = Some(Detail {
                    repo: m.id.clone(),
                    info: None,
                    error: None,
                    choices: vec![],
                    selected: 0,
                    shape: None,
                    card: Card::Loading,
                    card_scroll: 0,
                });
                none.0 = vec![HubEffect::Info { repo: m.id.clone() }];
            }
        }
        _ => {}
    }
    none
}

/// `styles` render a model card that arrives.
pub fn update(s: &mut HubState, msg: HubMsg, styles: &MarkdownStyles) -> Vec<HubEffect> {
    match msg {
        HubMsg::Debounced { seq } if seq == s.seq => return s.search_now(),
        HubMsg::Debounced { .. } => {}
        HubMsg::Results { seq, .. } if seq != s.seq => {}
        HubMsg::Results { append, result, .. } => {
            s.loading = false;
            s.searched = true;
            match result {
                Ok((models, next)) => {
                    if append {
                        s.results.extend(models);
                    } else {
                        s.results = models;
                        s.selected = 0;
                    }
                    s.next = next;
                    s.error = None;
                }
                Err(e) => s.error = Some(e),
            }
        }
        HubMsg::Info { repo, result } => {
            if let Some(d) = s.detail.as_mut().filter(|d| d.repo == repo) {
                match result {
                    Ok(info) => {
                        d.choices = choices(&info, s.mem, d.shape);
                        // Preselect a good balance of quality and size that fits and runs.
                        let ok = |c: &Choice| {
                            c.note.is_none() && c.fit.is_none_or(|f| f.fit == crate::hub::Fit::Fits)
                        };
                        d.selected = PREFERRED
                            .iter()
                            .find_map(|q| d.choices.iter().position(|c| c.label == *q && ok(c)))
                            .or_else(|| d.choices.iter().position(ok))
                            .unwrap_or(0);
                        let revision = info.sha.clone().unwrap_or_else(|| "main".into());
                        let mut effects = Vec::new();
                        if info.files.iter().any(|f| f.path == "README.md") {
                            effects.push(HubEffect::Card {
                                repo: repo.clone(),
                                revision: revision.clone(),
                            });
                        } else {
                            d.card = Card::Absent;
                        }
                        if let Some(path) = shape_source(&info) {
                            effects.push(HubEffect::Shape {
                                repo: repo.clone(),
                                revision,
                                path,
                            });
                        }
                        d.info = Some(info);
                        return effects;
                    }
                    Err(e) => {
                        d.error = Some(e);
                        d.card = Card::Absent;
                    }
                }
            }
        }
        HubMsg::Card { repo, result } => {
            if let Some(d) = s.detail.as_mut().filter(|d| d.repo == repo) {
                d.card = match result {
                    Ok(source) => Card::Ready {
                        lines: render_model_card(&source, styles),
                        source,
                    },
                    Err(e) => Card::Failed(e),
                };
            }
        }
        HubMsg::Shape { repo, result } => {
            if let Some(d) = s.detail.as_mut().filter(|d| d.repo == repo) {
                // An unreadable header leaves the size-only estimates, which say they are.
                if let Ok(Some(shape)) = result {
                    d.shape = Some(shape);
                    if let Some(info) = &d.info {
                        d.choices = choices(info, s.mem, d.shape);
                    }
                }
            }
        }
    }
    vec![]
}
