//! The help overlay, generated from the keymap so it always matches the bindings.

use crate::app::state::State;
use crate::config::keymap::Context;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Clear, Paragraph};
use ratatui::Frame;

pub fn lines(state: &State) -> Vec<Line<'static>> {
    let t = &state.theme;
    let mut out = Vec::new();
    let mut current: Option<Context> = None;
    for e in state.keymap.help() {
        if current != Some(e.context) {
            if current.is_some() {
                out.push(Line::raw(""));
            }
            out.push(Line::styled(heading(e.context).to_string(), t.accent));
            current = Some(e.context);
        }
        let keys = e
            .keys
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        out.push(Line::from(vec![
            Span::styled(format!("  {keys:<18}"), t.title),
            Span::styled(e.desc.clone(), t.text),
        ]));
    }
    out
}

fn heading(c: Context) -> &'static str {
    match c {
        Context::Global => "Everywhere",
        Context::Normal => "When not typing",
        Context::Help => "In this help",
        Context::Hub => "Hub",
        Context::Downloads => "Downloads",
        Context::Library => "Library",
        Context::Chat => "Chat",
        Context::Params => "Parameters",
        Context::Input => "While typing",
        Context::Confirm => "When asked to confirm",
    }
}

pub fn draw(f: &mut Frame, area: Rect, state: &State, scroll: u16) {
    let w = area.width.saturating_sub(8).min(72);
    let h = area.height.saturating_sub(4);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    let body = lines(state);
    let max_scroll = (body.len() as u16).saturating_sub(h.saturating_sub(2));
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(body)
            .block(super::pane_block("Keys — Esc closes", true, state))
            .style(state.theme.text)
            .scroll((scroll.min(max_scroll), 0)),
        popup,
    );
}
