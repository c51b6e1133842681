//! The Library pane: every local model, its details, verify and delete.

use super::{empty_state, pane_block};
use crate::app::library::{LibraryState, Outcome};
use crate::app::state::{Pane, State};
use crate::library::human;
use crate::library::{FileCheck, Model, Runnable};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let lib = &state.library;
    let t = &state.theme;
    let title = if lib.scanned {
        let n = lib.models.len();
        format!(
            "Library — {n} model{}, {}",
            if n == 1 { "" } else { "s" },
            human::bytes(lib.total_bytes())
        )
    } else {
        "Library".to_string()
    };
    let block = pane_block(&title, state.focus == Pane::Library, state);
    let inner = block.inner(area);
    f.render_widget(block, area);

    if lib.models.is_empty() {
        let lines: &[&str] = if lib.scanning || !lib.scanned {
            &["Looking for models…"]
        } else {
            &[
                "No models yet.",
                "Search the Hub (1) and queue a download, or run `influence pull REPO`,",
                "or add an existing .gguf file or model folder with `influence import PATH`.",
            ]
        };
        empty_state(f, inner, lines, t.muted);
        return;
    }

    let footer_h = 1;
    let detail_h = if lib.detail {
        inner.height.saturating_sub(footer_h) / 2
    } else {
        0
    };
    let rows = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(detail_h),
        Constraint::Length(footer_h),
    ])
    .split(inner);
    table(f, rows[0], state);
    if lib.detail {
        if let Some(m) = lib.selected_model() {
            detail(f, rows[1], m, lib, state);
        }
    }
    footer(f, rows[2], lib, state);
    if let Some(plan) = &lib.confirm {
        confirm(f, area, plan, state);
    }
}

fn runnable_cell<'a>(m: &Model, state: &State) -> Span<'a> {
    let t = &state.theme;
    if m.broken.is_some() {
        return Span::styled("broken", t.error);
    }
    match &m.runnable {
        Runnable::Yes => Span::styled("yes", t.success),
        Runnable::SlowPath { .. } => Span::styled("slow", t.warning),
        Runnable::No { .. } => Span::styled("no", t.error),
    }
}

fn table(f: &mut Frame, area: Rect, state: &State) {
    let lib = &state.library;
    let t = &state.theme;
    let header =
        Row::new(["Name", "Arch", "Params", "Quant", "Context", "Size", "Runs"]).style(t.accent);
    let rows: Vec<Row> = lib
        .view
        .iter()
        .map(|i| {
            let m = &lib.models[*i];
            Row::new(vec![
                Span::raw(m.name.clone()),
                Span::raw(m.info.architecture.clone().unwrap_or_else(|| "?".into())),
                Span::raw(m.info.parameters.map_or_else(|| "?".into(), human::params)),
                Span::raw(m.info.quant.clone().unwrap_or_default()),
                Span::raw(
                    m.info
                        .context_length
                        .map(|c| c.to_string())
                        .unwrap_or_default(),
                ),
                Span::raw(human::bytes(m.size_bytes)),
                runnable_cell(m, state),
            ])
            .style(t.text)
        })
        .collect();
    let widths = [
        Constraint::Min(20),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(6),
    ];
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(t.selection)
        .column_spacing(1);
    let mut ts = TableState::default().with_selected(Some(lib.selected));
    f.render_stateful_widget(table, area, &mut ts);
}

fn kv<'a>(k: &str, v: String, state: &State) -> Line<'a> {
    Line::from(vec![
        Span::styled(format!("{k:<14}"), state.theme.muted),
        Span::styled(v, state.theme.text),
    ])
}

fn detail(f: &mut Frame, area: Rect, m: &Model, lib: &LibraryState, state: &State) {
    let t = &state.theme;
    let mut lines = vec![Line::styled(m.name.clone(), t.title)];
    if let Some(b) = &m.broken {
        lines.push(Line::styled(format!("Broken: {b}"), t.error));
    }
    let info = &m.info;
    lines.push(kv(
        "Format",
        format!("{} · {} · {:?}", m.format.label(), m.source.label(), m.kind),
        state,
    ));
    if let Some(a) = &info.architecture {
        lines.push(kv("Architecture", a.clone(), state));
    }
    if !info.tensor_types.is_empty() {
        let types = info
            .tensor_types
            .iter()
            .map(|(k, v)| format!("{v}×{k}"))
            .collect::<Vec<_>>()
            .join(", ");
        lines.push(kv("Tensors", types, state));
    }
    lines.push(kv(
        "Chat template",
        if info.chat_template { "yes" } else { "no" }.into(),
        state,
    ));
    lines.push(kv(
        "Files",
        format!("{} · {}", m.file_count(), human::bytes(m.size_bytes)),
        state,
    ));
    if let Some(mem) = m.memory_estimate {
        lines.push(kv(
            "Memory",
            format!(
                "≈{} with a {}-token context",
                human::bytes(mem),
                crate::library::memory::context_for(info.context_length)
            ),
            state,
        ));
    }
    match &m.runnable {
        Runnable::Yes => {}
        Runnable::SlowPath { types } => lines.push(Line::styled(
            format!(
                "Runs slowly: {} has no fast CPU kernel; a Q4_K_M, Q8_0 or Q4_0 file decodes faster.",
                types.join(", ")
            ),
            t.warning,
        )),
        Runnable::No { reason } => {
            lines.push(Line::styled(format!("Cannot run: {reason}"), t.error))
        }
    }
    lines.push(kv("Path", m.load_path.display().to_string(), state));
    match &lib.outcome {
        Some(Outcome::Verifying { model, done, total }) if *model == m.name => {
            let pct = if *total > 0 { done * 100 / total } else { 0 };
            lines.push(Line::styled(format!("Verifying… {pct}%"), t.accent));
        }
        Some(Outcome::Verified(r)) if r.model == m.name => {
            for v in &r.files {
                let (style, what) = match &v.check {
                    FileCheck::Ok => (t.success, "ok".to_string()),
                    FileCheck::Mismatch { expected, actual } => (
                        t.error,
                        format!("MISMATCH expected {expected:.12}… got {actual:.12}…"),
                    ),
                    FileCheck::Missing => (t.error, "missing".into()),
                    FileCheck::NoRecordedHash => (t.muted, "no recorded hash".into()),
                    FileCheck::Unreadable { error } => (t.error, format!("unreadable: {error}")),
                };
                let name = v
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                lines.push(Line::from(vec![
                    Span::styled(format!("  {name}  "), t.text),
                    Span::styled(what, style),
                ]));
            }
        }
        _ => {}
    }
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            ratatui::widgets::Block::default()
                .borders(ratatui::widgets::Borders::TOP)
                .border_style(t.border),
        ),
        area,
    );
}

fn footer(f: &mut Frame, area: Rect, lib: &LibraryState, state: &State) {
    let t = &state.theme;
    let line = if lib.filtering {
        Line::from(vec![
            Span::styled("Filter: ", t.accent),
            Span::styled(format!("{}▏", lib.filter), t.text),
        ])
    } else if let Some((err, text)) = &lib.notice {
        Line::styled(text.clone(), if *err { t.error } else { t.muted })
    } else if !lib.filter.is_empty() {
        Line::styled(
            format!(
                "Filter \"{}\": {} of {} · sorted by {}",
                lib.filter,
                lib.view.len(),
                lib.models.len(),
                lib.sort.label()
            ),
            t.muted,
        )
    } else {
        Line::styled(
            format!(
                "Sorted by {} · Enter load · v verify · d delete · / filter · ? keys",
                lib.sort.label()
            ),
            t.muted,
        )
    };
    f.render_widget(Paragraph::new(line), area);
}

fn confirm(f: &mut Frame, area: Rect, plan: &crate::library::DeletePlan, state: &State) {
    let t = &state.theme;
    let mut lines = vec![
        Line::styled(format!("Delete {}?", plan.model), t.title),
        Line::raw(""),
    ];
    for r in &plan.removals {
        lines.push(Line::styled(format!("  {r}"), t.text));
    }
    for k in &plan.kept_shared {
        lines.push(Line::styled(
            format!("  keep (shared) {}", k.display()),
            t.muted,
        ));
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(
            "Frees {}.  y = delete, n / Esc = keep",
            human::bytes(plan.bytes_freed)
        ),
        t.warning,
    ));
    let w = area.width.saturating_sub(4).min(100);
    let h = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .style(Style::default().patch(t.text))
            .block(pane_block("Confirm", true, state)),
        popup,
    );
}
