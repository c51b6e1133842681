//! The status bar: model, server, speed, memory, and the latest notice.

use crate::app::state::State;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let t = &state.theme;
    let sep = Span::styled(" │ ", t.status_bar);
    let chat = &state.chat;
    let model = match (&chat.loading, &chat.model) {
        (Some((_, name)), _) => format!(" model: loading {name}"),
        (None, Some(m)) => format!(" model: {}", m.name),
        (None, None) => " model: none".into(),
    };
    let speed = chat
        .running
        .as_ref()
        .and_then(|r| r.tok_s())
        .or(chat.last_tok_s)
        .map_or_else(|| "– tok/s".to_string(), |s| format!("{s:.1} tok/s"));
    let mut spans = vec![
        Span::styled(model, t.status_bar),
        sep.clone(),
        Span::styled("server: off", t.status_bar),
        sep.clone(),
        Span::styled(speed, t.status_bar),
        sep.clone(),
        Span::styled(
            format!(
                "mem {}",
                state
                    .status
                    .rss_bytes
                    .map_or_else(|| "–".to_string(), human_bytes)
            ),
            t.status_bar,
        ),
        sep.clone(),
    ];
    match &state.status.notice {
        Some(n) => spans.push(Span::styled(
            n.text.clone(),
            if n.error { t.error } else { t.status_bar },
        )),
        None => spans.push(Span::styled("? help  q quit", t.status_bar)),
    }
    f.render_widget(Paragraph::new(Line::from(spans)).style(t.status_bar), area);
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(98_362_432), "98.4 MB");
        assert_eq!(human_bytes(1_117_320_768), "1.1 GB");
    }
}
