//! The Hub pane: a search box, the results table and a model's files with their fit.

use super::{empty_state, pane_block};
use crate::app::hub::{sort_label, Detail};
use crate::app::state::{Pane, State};
use crate::hub::Fit;
use crate::library::human;
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
    let mut search = vec![
        Span::styled("Search: ", if hub.editing { t.accent } else { t.muted }),
        Span::styled(format!("{}{cursor}", hub.query), t.text),
    ];
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
        None if hub.detail.is_some() => {
            Line::styled("↑↓ choose · Enter/d queue · Esc back · ? keys", t.muted)
        }
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
    let header = Row::new(["Model", "Downloads", "Likes", "Task", "Updated"]).style(t.accent);
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
    let mut facts = Vec::new();
    if info.gated.is_gated() {
        facts.push(Span::styled(
            "gated (needs a token with access) ",
            t.warning,
        ));
    }
    if info.private {
        facts.push(Span::styled("private ", t.warning));
    }
    if let Some(l) = &info.license {
        facts.push(Span::styled(format!("licence {l} "), t.muted));
    }
    if let Some(p) = &info.pipeline_tag {
        facts.push(Span::styled(format!("· {p} "), t.muted));
    }
    head.push(Line::from(facts));
    let tags: Vec<&str> = info.tags.iter().take(12).map(String::as_str).collect();
    head.push(Line::styled(format!("tags: {}", tags.join(", ")), t.muted));
    let parts =
        Layout::vertical([Constraint::Length(head.len() as u16), Constraint::Min(2)]).split(area);
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
    let header = Row::new(["Quant", "Files", "Size", "Memory"]).style(t.accent);
    let rows: Vec<Row> = d
        .choices
        .iter()
        .map(|c| {
            let fit = match (&c.note, &c.fit) {
                (Some(n), _) => Span::styled(n.clone(), t.warning),
                (None, Some(r)) => Span::styled(
                    r.describe(),
                    match r.fit {
                        Fit::Fits => t.success,
                        Fit::Tight => t.warning,
                        Fit::WontFit => t.error,
                    },
                ),
                (None, None) => Span::styled("memory unknown", t.muted),
            };
            Row::new(vec![
                Line::raw(c.label.clone()),
                Line::raw(c.files.len().to_string()),
                Line::raw(human::bytes(c.size)),
                Line::from(fit),
            ])
            .style(t.text)
        })
        .collect();
    let widths = [
        Constraint::Length(12),
        Constraint::Length(5),
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
