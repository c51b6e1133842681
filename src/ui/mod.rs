//! Drawing. `draw` lays out the screen; each pane draws itself from `&State`.

pub mod chat;
pub mod downloads;
pub mod help;
pub mod hub;
pub mod library;
pub mod panes;
pub mod params;
pub mod status;

use crate::app::state::{Pane, State, MIN_SIZE};
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph, Wrap};
use ratatui::Frame;

pub use crate::app::chat::layout::SIDEBAR_WIDTH;

pub fn draw(f: &mut Frame, state: &State) {
    let area = f.area();
    let t = &state.theme;
    f.render_widget(Block::default().style(t.text), area);
    if area.width < MIN_SIZE.0 || area.height < MIN_SIZE.1 {
        let msg = format!(
            "The terminal is too small: {}×{}. Influence needs at least {}×{}; enlarge the window or use a smaller font.",
            area.width, area.height, MIN_SIZE.0, MIN_SIZE.1
        );
        f.render_widget(
            Paragraph::new(msg)
                .style(t.warning)
                .wrap(Wrap { trim: true }),
            area,
        );
        return;
    }
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .split(area);
    tabs(f, rows[0], state);
    let cols = Layout::new(
        Direction::Horizontal,
        [Constraint::Min(20), Constraint::Length(SIDEBAR_WIDTH)],
    )
    .split(rows[1]);
    panes::draw_main(f, cols[0], state);
    panes::draw_params(f, cols[1], state);
    status::draw(f, rows[2], state);
    if let Some(scroll) = state.help {
        help::draw(f, area, state, scroll);
    }
}

/// The pane switcher: every pane's title with its jump key; the one on screen highlighted.
fn tabs(f: &mut Frame, area: Rect, state: &State) {
    let t = &state.theme;
    let mut spans = vec![Span::styled(" Influence ", t.title)];
    for (i, p) in Pane::ORDER.iter().enumerate() {
        let style = if *p == state.main_pane || (*p == Pane::Params && state.focus == Pane::Params)
        {
            t.selection
        } else {
            t.muted
        };
        spans.push(Span::raw(" "));
        spans.push(Span::styled(format!(" {} {} ", i + 1, p.title()), style));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A bordered block for a pane, highlighted when focused.
pub fn pane_block<'a>(title: &'a str, focused: bool, state: &State) -> Block<'a> {
    let t = &state.theme;
    let (border, kind) = if focused {
        (t.border_focused, BorderType::Thick)
    } else {
        (t.border, BorderType::Rounded)
    };
    Block::default()
        .borders(Borders::ALL)
        .border_type(kind)
        .border_style(border)
        .title(Span::styled(format!(" {title} "), t.title))
}

/// A centred, muted message for a pane with nothing to show yet.
pub fn empty_state(f: &mut Frame, area: Rect, lines: &[&str], style: Style) {
    let h = lines.len() as u16;
    let top = area.y + area.height.saturating_sub(h) / 2;
    let text: Vec<Line> = lines.iter().map(|l| Line::from(*l)).collect();
    f.render_widget(
        Paragraph::new(text)
            .style(style)
            .alignment(ratatui::layout::Alignment::Center)
            .wrap(Wrap { trim: true }),
        Rect {
            y: top,
            height: area.height.saturating_sub(top - area.y),
            ..area
        },
    );
}

#[cfg(test)]
pub(crate) mod tests;
