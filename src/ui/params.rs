//! The Parameters sidebar: every generation parameter with its value, edited in place.

use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Wrap};
use ratatui::Frame;

use super::pane_block;
use crate::app::chat::params::Field;
use crate::app::state::{Pane, State};

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let t = &state.theme;
    let p = &state.params;
    let focused = state.focus == Pane::Params;
    let block = pane_block(Pane::Params.title(), focused, state);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let mut lines: Vec<Line> = Vec::new();
    let model = match (&state.chat.model, &state.chat.loading) {
        (_, Some((_, name))) => format!("loading {name}…"),
        (Some(m), None) => m.name.clone(),
        (None, None) => "no model".into(),
    };
    lines.push(Line::from(vec![
        Span::styled(" Model ", t.muted),
        Span::styled(model, t.text),
    ]));
    lines.push(Line::raw(""));
    let label_w = 14usize;
    for (i, field) in Field::ALL.iter().enumerate() {
        let selected = i == p.selected;
        let label = format!("{:<label_w$}", field.label());
        let value = match (&p.editing, selected) {
            (Some(buf), true) => format!("{buf}█"),
            _ if *field == Field::SystemPrompt => {
                let v = p.value(*field);
                if v.is_empty() {
                    "(none)".into()
                } else {
                    "↓".into()
                }
            }
            _ => p.value(*field),
        };
        let marker = if selected && focused { "›" } else { " " };
        let mut line = Line::from(vec![
            Span::styled(marker, t.accent),
            Span::styled(label, t.muted),
            Span::styled(
                value,
                if p.editing.is_some() && selected {
                    t.accent
                } else {
                    t.text
                },
            ),
        ]);
        if selected && focused && p.editing.is_none() {
            line = line.style(t.selection);
        }
        lines.push(line);
    }
    if let Some(e) = &p.error {
        lines.push(Line::raw(""));
        lines.push(Line::styled(e.clone(), t.error));
    }
    lines.push(Line::raw(""));
    let editing_prompt = p.editing.is_some() && p.field() == Field::SystemPrompt;
    if !p.system_prompt.is_empty() && !editing_prompt {
        lines.push(Line::styled("System prompt", t.muted));
        lines.push(Line::styled(p.system_prompt.clone(), t.text));
        lines.push(Line::raw(""));
    }
    let hint = if p.editing.is_some() {
        "Enter applies · Esc cancels"
    } else if focused {
        "j/k move · Enter edits · applies to the next message"
    } else {
        "5 to edit"
    };
    lines.push(Line::styled(hint, t.muted));
    if let Some(m) = &p.preset_for {
        if p.presets.contains_key(m) {
            lines.push(Line::styled("Preset saved for this model", t.muted));
        }
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), inner);
}
