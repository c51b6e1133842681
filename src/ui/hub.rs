//! The Hub pane: a search box, the results table and a model's files with their fit.

use super::{empty_state, pane_block};
use crate::app::hub::{sort_label, Card, Detail};
use crate::app::state::{Pane, State};
use crate::hub::{Fit, FitReport};
use crate::library::human;
use crate::markdown::wrap_lines;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let hub = &state.hub;
    let t = &state.theme;
    let block = pane_block("Hub", state.focus == Pane::Hub, state);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .split(inner);

    let cursor = if hub.editing { "▏" } else { "" };
    let mut search = vec![Span::styled(
        "Search: ",
        if hub.editing { t.accent } else { t.muted },
    )];
    if hub.query.is_empty() && !hub.editing {
        search.push(Span::styled("/ to type", t.muted));
    } else {
        search.push(Span::styled(format!("{}{cursor}", hub.query), t.text));
    }
    let flags = format!(
        "   sort: {}{}{}",
        sort_label(hub.sort),
        if hub.gguf_only { " · GGUF only" } else { "" },
        if hub.loading { " · searching…" } else { "" }
    );
    search.push(Span::styled(flags, t.muted));
    f.render_widget(Paragraph::new(Line::from(search)), rows[0]);

    if let Some(d) = &hub.detail {
        detail(f, rows[1], d, state);
    } else if let Some(e) = &hub.error {
        f.render_widget(
            Paragraph::new(Line::styled(e.clone(), t.error)).wrap(Wrap { trim: true }),
            rows[1],
        );
    } else if hub.results.is_empty() {
        let msg: Vec<String> = if hub.loading {
            vec!["Searching…".into()]
        } else if hub.searched {
            vec![format!("No models match \"{}\".", hub.query)]
        } else {
            vec![
                format!("Search the Hugging Face Hub ({}).", hub.endpoint),
                "Press / and type a name: results follow as you type.".into(),
            ]
        };
        let refs: Vec<&str> = msg.iter().map(String::as_str).collect();
        empty_state(f, rows[1], &refs, t.muted);
    } else {
        results(f, rows[1], state);
    }

    let footer = match &hub.notice {
        Some((err, text)) => Line::styled(text.clone(), if *err { t.error } else { t.success }),
        None if hub.detail.is_some() => Line::styled(
            "↑↓ choose · Enter/d queue · PgUp/PgDn model card · Esc back · ? keys",
            t.muted,
        ),
        None => Line::styled(
            "/ search · Enter files · o sort · f GGUF only · ? keys",
            t.muted,
        ),
    };
    f.render_widget(Paragraph::new(footer), rows[2]);
}

fn count(n: Option<u64>) -> String {
    match n {
        None => String::new(),
        Some(n) if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        Some(n) if n >= 1_000 => format!("{:.1}k", n as f64 / 1e3),
        Some(n) => n.to_string(),
    }
}

fn results(f: &mut Frame, area: Rect, state: &State) {
    let hub = &state.hub;
    let t = &state.theme;
    // With no query the list is the whole Hub's top, and says so.
    let first = match (hub.query.trim().is_empty(), hub.sort) {
        (true, crate::hub::Sort::Downloads) => "Most downloaded",
        (true, crate::hub::Sort::Likes) => "Most liked",
        (true, _) => "Latest",
        (false, _) => "Model",
    };
    let header = Row::new([first, "Downloads", "Likes", "Task", "Updated"]).style(t.accent);
    let rows: Vec<Row> = hub
        .results
        .iter()
        .map(|m| {
            let mut name = vec![Span::raw(m.id.clone())];
            if m.gated.is_gated() {
                name.push(Span::styled(" gated", t.warning));
            }
            Row::new(vec![
                Line::from(name),
                Line::raw(count(m.downloads)),
                Line::raw(count(m.likes)),
                Line::raw(m.pipeline_tag.clone().unwrap_or_default()),
                Line::raw(
                    m.last_modified
                        .as_deref()
                        .map(|d| d.chars().take(10).collect::<String>())
                        .unwrap_or_default(),
                ),
            ])
            .style(t.text)
        })
        .collect();
    let widths = [
        Constraint::Min(24),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(10),
    ];
    let mut ts = TableState::default().with_selected(Some(hub.selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .row_highlight_style(t.selection),
        area,
        &mut ts,
    );
}

fn detail(f: &mut Frame, area: Rect, d: &Detail, state: &State) {
    // The card beside the quants where there is room, below them otherwise.
    let (list_area, card_area) = if area.width >= 80 {
        let cols = Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)])
            .spacing(1)
            .split(area);
        (cols[0], cols[1])
    } else {
        let rows =
            Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).split(area);
        (rows[0], rows[1])
    };
    quants(f, list_area, d, state);
    card(f, card_area, d, state);
}

fn quants(f: &mut Frame, area: Rect, d: &Detail, state: &State) {
    let t = &state.theme;
    let mut head = vec![Line::styled(d.repo.clone(), t.title)];
    if let Some(e) = &d.error {
        head.push(Line::styled(e.clone(), t.error));
    }
    let Some(info) = &d.info else {
        if d.error.is_none() {
            head.push(Line::styled("Loading the file list…", t.muted));
        }
        f.render_widget(Paragraph::new(head).wrap(Wrap { trim: true }), area);
        return;
    };
    // Terms come first: a gated repo needs the user to act before anything downloads.
    if info.gated.is_gated() {
        head.push(Line::styled(
            format!(
                "Gated: accept its conditions at {}/{} and set HF_TOKEN to download.",
                state.hub.endpoint, d.repo
            ),
            t.warning,
        ));
    }
    head.push(Line::styled(
        match &info.license {
            Some(l) => format!("Licence: {l}"),
            None => "Licence: not stated; read the model card before use.".into(),
        },
        if info.license.is_some() {
            t.text
        } else {
            t.warning
        },
    ));
    let mut facts = Vec::new();
    if info.private {
        facts.push(Span::styled("private ", t.warning));
    }
    if let Some(p) = &info.pipeline_tag {
        facts.push(Span::styled(format!("{p} "), t.muted));
    }
    let tags: Vec<&str> = info.tags.iter().take(8).map(String::as_str).collect();
    facts.push(Span::styled(format!("tags: {}", tags.join(", ")), t.muted));
    head.push(Line::from(facts));
    let head = wrap_lines(&head, area.width);
    let head_rows = (head.len() as u16).min(area.height / 2);
    let parts = Layout::vertical([Constraint::Length(head_rows), Constraint::Min(2)]).split(area);
    f.render_widget(Paragraph::new(head), parts[0]);

    if d.choices.is_empty() {
        empty_state(
            f,
            parts[1],
            &["This repository has no GGUF, safetensors or PyTorch weights."],
            t.muted,
        );
        return;
    }
    let memory = match d.choices.iter().find_map(|c| c.fit) {
        Some(FitReport {
            context: Some(ctx), ..
        }) => format!("Memory @{ctx} tokens"),
        Some(_) => "Memory".to_string(),
        None => "Memory".to_string(),
    };
    let header = Row::new(["Quant".to_string(), "Size".into(), memory]).style(t.accent);
    let rows: Vec<Row> = d
        .choices
        .iter()
        .map(|c| {
            let fit = match (&c.note, &c.fit) {
                (Some(n), _) => Span::styled(n.clone(), t.warning),
                (None, Some(r)) => Span::styled(
                    r.short(),
                    match r.fit {
                        Fit::Fits => t.success,
                        Fit::Split | Fit::Tight => t.warning,
                        Fit::WontFit => t.error,
                    },
                ),
                (None, None) => Span::styled("memory unknown", t.muted),
            };
            let label = if c.files.len() > 1 {
                format!("{} ({} parts)", c.label, c.files.len())
            } else {
                c.label.clone()
            };
            Row::new(vec![
                Line::raw(label),
                Line::raw(human::bytes(c.size)),
                Line::from(fit),
            ])
            .style(t.text)
        })
        .collect();
    let widths = [
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Min(20),
    ];
    let mut ts = TableState::default().with_selected(Some(d.selected));
    f.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .row_highlight_style(t.selection),
        parts[1],
        &mut ts,
    );
}

fn card(f: &mut Frame, area: Rect, d: &Detail, state: &State) {
    let t = &state.theme;
    let block = ratatui::widgets::Block::bordered()
        .title(" Model card ")
        .border_style(t.border)
        .title_style(t.title);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let lines = match &d.card {
        Card::Loading => vec![Line::styled("Loading README.md…", t.muted)],
        Card::Absent => vec![Line::styled("This repository has no README.md.", t.muted)],
        Card::Failed(e) => vec![Line::styled(format!("No model card: {e}"), t.error)],
        Card::Ready { lines, .. } => {
            let rows = wrap_lines(lines, inner.width);
            // Scrolled past the end: the last screenful stays in view.
            let max = rows.len().saturating_sub(inner.height as usize);
            let from = d.card_scroll.min(max);
            rows.into_iter()
                .skip(from)
                .take(inner.height as usize)
                .collect()
        }
    };
    f.render_widget(Paragraph::new(lines), inner);
}
