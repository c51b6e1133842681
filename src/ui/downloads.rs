//! The Downloads pane: the queue with a gauge, speed and ETA per file, and totals.

use super::{empty_state, pane_block};
use crate::app::downloads::{Row as Job, RowState};
use crate::app::state::{Pane, State};
use crate::library::human;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Gauge, Paragraph};
use ratatui::Frame;
use std::time::Duration;

fn eta(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let dl = &state.downloads;
    let t = &state.theme;
    let total: u64 = dl.rows.iter().map(|r| r.total).sum();
    let done: u64 = dl
        .rows
        .iter()
        .map(|r| r.bytes.min(r.total.max(r.bytes)))
        .sum();
    let title = if dl.rows.is_empty() {
        "Downloads".to_string()
    } else {
        format!(
            "Downloads — {} active · {} of {} · {}/s",
            dl.active(),
            human::bytes(done),
            human::bytes(total),
            human::bytes(dl.total_speed() as u64)
        )
    };
    let block = pane_block(&title, state.focus == Pane::Downloads, state);
    let inner = block.inner(area);
    f.render_widget(block, area);
    let rows = Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).split(inner);
    if let Some(e) = &dl.unavailable {
        f.render_widget(
            Paragraph::new(Line::styled(
                format!("Downloads are unavailable: {e}"),
                t.error,
            )),
            rows[0],
        );
        return;
    }
    if dl.rows.is_empty() {
        empty_state(
            f,
            rows[0],
            &[
                "No downloads.",
                "Open a model in the Hub (1) and press d on a quantization to queue it.",
            ],
            t.muted,
        );
    } else {
        // Two rows per job: name and state, then the gauge.
        let per = 2u16;
        let visible = (rows[0].height / per).max(1) as usize;
        let start = dl.selected.saturating_sub(visible.saturating_sub(1));
        for (i, job) in dl.rows.iter().enumerate().skip(start).take(visible) {
            let y = rows[0].y + (i - start) as u16 * per;
            let line_area = Rect::new(rows[0].x, y, rows[0].width, 1);
            let gauge_area = Rect::new(rows[0].x, y + 1, rows[0].width, 1);
            job_lines(f, line_area, gauge_area, job, i == dl.selected, state);
        }
    }
    let footer = match &dl.notice {
        Some((err, text)) => Line::styled(text.clone(), if *err { t.error } else { t.muted }),
        None => Line::styled("p pause/resume · r retry · x cancel · ? keys", t.muted),
    };
    f.render_widget(Paragraph::new(footer), rows[1]);
}

fn job_lines(f: &mut Frame, line: Rect, gauge: Rect, job: &Job, selected: bool, state: &State) {
    let t = &state.theme;
    let (what, style) = match &job.state {
        RowState::Queued => ("queued".to_string(), t.muted),
        RowState::Running => (
            format!(
                "{}/s{}",
                human::bytes(job.bytes_per_sec as u64),
                job.eta
                    .map(|e| format!(" · {} left", eta(e)))
                    .unwrap_or_default()
            ),
            t.accent,
        ),
        RowState::Retrying {
            attempt,
            wait,
            reason,
        } => (
            format!("retry {attempt} in {}: {reason}", eta(*wait)),
            t.warning,
        ),
        RowState::Paused => ("paused".to_string(), t.warning),
        RowState::Done => ("done · verified".to_string(), t.success),
        RowState::Failed(r) => (format!("failed: {r}"), t.error),
    };
    let name_style = if selected { t.selection } else { t.text };
    f.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled(format!("{}/{}", job.spec.repo, job.spec.path), name_style),
            Span::raw("  "),
            Span::styled(what, style),
        ])),
        line,
    );
    let ratio = if job.total > 0 {
        (job.bytes as f64 / job.total as f64).clamp(0.0, 1.0)
    } else {
        0.0
    };
    f.render_widget(
        Gauge::default()
            .gauge_style(t.gauge)
            .ratio(ratio)
            .label(format!(
                "{} / {}",
                human::bytes(job.bytes),
                if job.total > 0 {
                    human::bytes(job.total)
                } else {
                    "?".into()
                }
            )),
        gauge,
    );
}
