//! The status bar: model, server, speed, memory, and the latest notice.

use crate::app::state::State;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;
use ratatui::Frame;

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
        server_span(state),
        sep.clone(),
        Span::styled(speed, t.status_bar),
        sep.clone(),
    ];
    // Streams beyond the chat's own: API clients share the engine's batch.
    let own = usize::from(chat.running.is_some());
    if state.status.streams > own {
        spans.push(Span::styled(
            format!("{} streams", state.status.streams),
            t.status_bar,
        ));
        spans.push(sep.clone());
    }
    if !state.status.device.is_empty() {
        let device = match chat.model.as_ref().and_then(|m| m.gpu_layers) {
            Some((n, all)) if n < all => format!("{} · {n}/{all} layers", state.status.device),
            _ => state.status.device.clone(),
        };
        spans.push(Span::styled(device, t.status_bar));
        spans.push(sep.clone());
    }
    spans.extend([
        Span::styled(
            format!(
                "mem {}",
                state
                    .status
                    .rss_bytes
                    .map_or_else(|| "–".to_string(), crate::library::human::bytes)
            ),
            t.status_bar,
        ),
        sep.clone(),
    ]);
    match &state.status.notice {
        Some(n) => spans.push(Span::styled(
            n.text.clone(),
            if n.error { t.error } else { t.status_bar },
        )),
        None => spans.push(Span::styled("? help  q quit", t.status_bar)),
    }
    f.render_widget(Paragraph::new(Line::from(spans)).style(t.status_bar), area);
}

fn server_span(state: &State) -> Span<'static> {
    use crate::app::server::ServerStatus;
    let t = &state.theme;
    match &state.server {
        ServerStatus::Off => Span::styled("server: off", t.status_bar),
        ServerStatus::Starting => Span::styled("server: starting…", t.status_bar),
        ServerStatus::Stopping => Span::styled("server: stopping…", t.status_bar),
        ServerStatus::On { addr, requests } => Span::styled(
            format!("server: http://{addr} · {requests} req"),
            t.status_bar,
        ),
    }
}
