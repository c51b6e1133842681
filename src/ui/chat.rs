//! The Chat pane: transcript (only the visible rows are built), context meter, slash-command
//! hint, the input, and the saved-chats overlay.

use ratatui::layout::Rect;
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use ratatui::Frame;

use super::{empty_state, pane_block};
use crate::app::chat::layout::layout;
use crate::app::chat::transcript::{Row, BODY_INDENT};
use crate::app::chat::{markdown_styles, slash, CONTEXT_WARN};
use crate::app::state::{Pane, State};
use crate::engine::ContextPolicy;

pub fn draw(f: &mut Frame, area: Rect, state: &State) {
    let chat = &state.chat;
    let title = format!("Chat · {}", chat.conv.title);
    let block = pane_block(&title, state.focus == Pane::Chat, state);
    let inner = block.inner(area);
    f.render_widget(block, area);
    if inner.width == 0 || inner.height == 0 {
        return;
    }
    let l = layout(inner, chat);
    draw_transcript(f, l.transcript, state);
    draw_meter(f, l.meter, state);
    if let Some(h) = l.hint {
        draw_hint(f, h, state);
    }
    draw_input(f, l.input, state);
    if chat.picker.is_some() {
        draw_picker(f, inner, state);
    }
}

fn draw_transcript(f: &mut Frame, area: Rect, state: &State) {
    let chat = &state.chat;
    let t = &state.theme;
    if chat.conv.messages.is_empty() {
        let lines: &[&str] = match (&chat.model, &chat.loading) {
            (_, Some(_)) => &["Loading the model…"],
            (Some(_), None) => &[
                "Ask anything.",
                "Enter sends · Alt-Enter new line · /help lists commands",
            ],
            (None, None) => &[
                "No model loaded.",
                "Type /model NAME (a library name or a path), or openai:URL#MODEL.",
            ],
        };
        empty_state(f, area, lines, t.muted);
        return;
    }
    let width = area.width.saturating_sub(BODY_INDENT);
    let styles = markdown_styles(t);
    let (rows, _) = {
        let mut view = chat.view.borrow_mut();
        view.sync_styles(&styles);
        let stream = chat.running.as_ref().and(chat.stream.as_ref());
        match chat.top {
            Some(top) => {
                let (rows, _) = view.window_from_top(
                    &chat.conv.messages,
                    stream,
                    width,
                    area.height as usize,
                    top,
                );
                (rows, 0)
            }
            None => view.window(
                &chat.conv.messages,
                stream,
                width,
                area.height as usize,
                chat.scroll,
            ),
        }
    };
    let buf = f.buffer_mut();
    for (y, row) in rows.into_iter().enumerate() {
        let y = area.y + y as u16;
        match row {
            Row::Header(i) => {
                let line = header(state, i);
                buf.set_line(area.x, y, &line, area.width);
            }
            Row::Body(_, line) => {
                buf.set_line(area.x + BODY_INDENT, y, &line, width);
            }
            Row::Gap => {}
        }
    }
    if chat.scroll > 0 || chat.top.is_some() {
        let text = match chat.top {
            Some(_) => " ↓ End jumps to the bottom ".to_string(),
            None => format!(" ↓ {} more · End jumps to the bottom ", chat.scroll),
        };
        let w = (text.chars().count() as u16).min(area.width);
        let x = area.x + area.width - w;
        buf.set_stringn(x, area.y + area.height - 1, &text, w as usize, t.selection);
    }
}

fn header(state: &State, i: usize) -> Line<'static> {
    let chat = &state.chat;
    let t = &state.theme;
    let m = &chat.conv.messages[i];
    let selected = chat.selected == Some(i);
    let (name, style) = match m.role {
        crate::conversations::Role::User => ("You", t.user),
        crate::conversations::Role::Assistant => ("Assistant", t.assistant),
        crate::conversations::Role::System => ("System", t.muted),
    };
    let mut spans = vec![Span::styled(
        format!("{} {name}", if selected { "▶" } else { "●" }),
        style,
    )];
    let mut meta: Vec<String> = Vec::new();
    let last = i + 1 == chat.conv.messages.len();
    match (&chat.running, last) {
        (Some(r), true) => {
            meta.push(r.model.clone());
            match r.ttft_ms {
                Some(ms) => meta.push(format!("TTFT {ms:.0} ms")),
                None => meta.push("waiting for the first token…".into()),
            }
            if let Some(s) = r.tok_s() {
                meta.push(format!("{s:.1} tok/s"));
            }
            if r.dropped > 0 {
                meta.push(format!("{} oldest left out", r.dropped));
            }
        }
        _ => {
            if let Some(s) = &m.stats {
                if !s.model.is_empty() {
                    meta.push(s.model.clone());
                }
                meta.push(format!("TTFT {} ms", s.ttft_ms));
                meta.push(format!("{:.1} tok/s", s.tok_s));
                meta.push(format!("{} tok", s.tokens));
            }
        }
    }
    if !m.alternatives.is_empty() {
        let (a, n) = m.alternative_position();
        meta.push(format!("answer ‹{a}/{n}›"));
    }
    if !m.branches.is_empty() {
        let (a, n) = m.branch_position();
        meta.push(format!("branch ‹{a}/{n}›"));
    }
    if !meta.is_empty() {
        spans.push(Span::styled(format!(" · {}", meta.join(" · ")), t.muted));
    }
    if m.interrupted {
        spans.push(Span::styled(" · interrupted", t.warning));
    }
    let line = Line::from(spans);
    if selected {
        line.style(t.selection)
    } else {
        line
    }
}

fn draw_meter(f: &mut Frame, area: Rect, state: &State) {
    let chat = &state.chat;
    let t = &state.theme;
    let limit = chat.context_limit(&state.params);
    let used = chat.context.used;
    let mut spans: Vec<Span> = Vec::new();
    if limit > 0 {
        let frac = (used as f64 / limit as f64).min(1.0);
        let cells = 10usize;
        let filled = (frac * cells as f64).round() as usize;
        let warn = frac >= CONTEXT_WARN;
        let bar_style = if warn { t.warning } else { t.accent };
        spans.push(Span::styled(format!("ctx {used}/{limit} "), t.muted));
        spans.push(Span::styled("▰".repeat(filled), bar_style));
        spans.push(Span::styled("▱".repeat(cells - filled), t.muted));
        spans.push(Span::styled(format!(" {:.0}%", frac * 100.0), bar_style));
        let policy = match state.params.params.context_policy {
            ContextPolicy::DropOldest => "drop-oldest",
            ContextPolicy::Error => "refuse when full",
        };
        spans.push(Span::styled(format!(" · {policy}"), t.muted));
        if chat.context.dropped > 0 {
            spans.push(Span::styled(
                format!(" · {} oldest left out", chat.context.dropped),
                t.warning,
            ));
        } else if warn {
            spans.push(Span::styled(" · near the limit", t.warning));
        }
    } else if chat.model.is_some() {
        spans.push(Span::styled("ctx: the backend does not report it", t.muted));
    }
    let right = if let Some(r) = &chat.running {
        let speed = r
            .tok_s()
            .map_or_else(String::new, |s| format!("{s:.1} tok/s · "));
        Some(Span::styled(
            format!("● {} tok · {speed}Esc stops ", r.tokens),
            t.accent,
        ))
    } else {
        chat.loading
            .as_ref()
            .map(|(_, name)| Span::styled(format!("Loading {name}… "), t.accent))
    };
    let buf = f.buffer_mut();
    buf.set_line(area.x, area.y, &Line::from(spans), area.width);
    if let Some(r) = right {
        let w = (r.content.chars().count() as u16).min(area.width);
        buf.set_span(area.x + area.width - w, area.y, &r, w);
    }
}

fn draw_hint(f: &mut Frame, area: Rect, state: &State) {
    let t = &state.theme;
    let c = slash::candidates(&state.chat.input_text());
    let mut spans = vec![Span::styled("Tab ", t.accent)];
    for cand in c {
        let help = slash::COMMANDS
            .iter()
            .find(|(name, _)| *name == cand)
            .map(|(_, h)| *h);
        spans.push(Span::styled(cand, t.text));
        if let Some(h) = help {
            spans.push(Span::styled(format!(" {h}"), t.muted));
        }
        spans.push(Span::raw("  "));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_input(f: &mut Frame, area: Rect, state: &State) {
    let chat = &state.chat;
    let t = &state.theme;
    let focused = state.focus == Pane::Chat && chat.input_focused && chat.picker.is_none();
    let title = match chat.editing {
        Some(i) => format!(" Editing message {} · Enter resends · Esc cancels ", i + 1),
        None if focused => " Message · Enter sends · Alt-Enter new line · Esc leaves ".into(),
        None => " Message · i to write ".into(),
    };
    let block = Block::default()
        .borders(Borders::TOP)
        .border_style(if focused { t.border_focused } else { t.border })
        .title(Span::styled(title, if focused { t.title } else { t.muted }));
    let inner = block.inner(area);
    f.render_widget(block, area);
    if focused {
        f.render_widget(&chat.input, inner);
    } else {
        // Same text without a cursor.
        let mut quiet = chat.input.clone();
        quiet.set_cursor_style(Style::default());
        quiet.set_style(t.muted);
        f.render_widget(&quiet, inner);
    }
}

fn draw_picker(f: &mut Frame, inner: Rect, state: &State) {
    let chat = &state.chat;
    let t = &state.theme;
    let Some(p) = &chat.picker else { return };
    let w = inner.width.saturating_sub(4).min(90);
    let h = inner.height.saturating_sub(2).min(20);
    if w < 10 || h < 4 {
        return;
    }
    let area = Rect::new(
        inner.x + (inner.width - w) / 2,
        inner.y + (inner.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, area);
    let block = Block::default()
        .borders(Borders::ALL)
        .border_style(t.border_focused)
        .title(Span::styled(
            " Saved chats · type to search · Enter opens · Esc closes ",
            t.title,
        ));
    let body = block.inner(area);
    f.render_widget(block.style(t.text), area);
    let items = chat.picker_items();
    let mut lines = vec![Line::from(vec![
        Span::styled("Search: ", t.muted),
        Span::styled(p.query.clone(), t.text),
        Span::styled("█", t.accent),
    ])];
    if items.is_empty() {
        let msg = if p.query.trim().is_empty() {
            "No saved chats yet."
        } else if p.hits.is_none() {
            "Searching…"
        } else {
            "No chat contains that text."
        };
        lines.push(Line::styled(msg, t.muted));
    }
    let visible = body.height.saturating_sub(1) as usize;
    let first = p.selected.saturating_sub(visible.saturating_sub(1));
    for (i, item) in items.iter().enumerate().skip(first).take(visible) {
        let current = item.id == chat.conv.id;
        let mut line = Line::from(vec![
            Span::styled(
                format!("{}{} ", if current { "● " } else { "  " }, item.title),
                t.text.add_modifier(Modifier::BOLD),
            ),
            Span::styled(item.detail.clone(), t.muted),
        ]);
        if i == p.selected {
            line = line.style(t.selection);
        }
        lines.push(line);
    }
    f.render_widget(Paragraph::new(lines), body);
}

#[cfg(test)]
mod tests {
    use crate::app::chat::{Backend, ChatModel, Running};
    use crate::app::state::{Pane, State};
    use crate::app::tests::test_state;
    use crate::config::theme::Theme;
    use crate::conversations::{Conversation, MessageStats, Page};
    use crate::markdown::MarkdownStream;
    use ratatui::backend::TestBackend;
    use ratatui::layout::Rect;
    use ratatui::Terminal;

    const ANSWER: &str = "# Paris\n\nThe capital of France is **Paris**, on the *Seine*.\n\n\
- population: about 2.1 million\n- see [Wikipedia](https://en.wikipedia.org/wiki/Paris)\n\n\
> Paris is always a good idea.\n\n| city | country |\n|---|---|\n| Paris | France |\n\n\
```rust\nfn main() {\n    println!(\"Bonjour\");\n}\n```\n";

    fn stats(tok_s: f64) -> MessageStats {
        MessageStats {
            model: "SmolLM2-135M".into(),
            ttft_ms: 84,
            tok_s,
            tokens: 57,
        }
    }

    /// A conversation with markdown of every kind, a regenerated answer, an interrupted one and
    /// an answer being streamed.
    fn rich(theme: Theme) -> State {
        let mut s = test_state(120, 40);
        s.theme = theme;
        s.focus = Pane::Chat;
        s.main_pane = Pane::Chat;
        s.chat.input_focused = true;
        s.chat.model = Some(ChatModel {
            name: "SmolLM2-135M".into(),
            backend: Backend::Local("/m/smol.gguf".into()),
            context_length: 2048,
            keeps_thinking: false,
            gpu_layers: None,
        });
        let mut c = Conversation::new();
        c.push_user("What is the capital of France?");
        c.start_assistant();
        c.append_token("Lyon.").unwrap();
        c.finish_assistant(stats(30.0)).unwrap();
        c.regenerate().unwrap();
        c.append_token(ANSWER).unwrap();
        c.finish_assistant(stats(41.5)).unwrap();
        c.push_user("And of Italy?");
        c.start_assistant();
        c.append_token("Rome, which").unwrap();
        c.mark_interrupted(None).unwrap();
        c.push_user("Write a loop");
        c.start_assistant();
        let partial = "Sure:\n\n```python\nfor i in range(3):\n    print(i)\n";
        c.append_token(partial).unwrap();
        let _ = c.page_alternative(1, Page::Next);
        s.chat.conv = c;
        let mut stream = MarkdownStream::new(crate::app::chat::markdown_styles(&s.theme));
        stream.push(partial);
        s.chat.stream = Some(stream);
        s.chat.running = Some(Running {
            seq: 1,
            model: "SmolLM2-135M".into(),
            tokens: 21,
            prompt_tokens: 600,
            dropped: 0,
            ttft_ms: Some(90.0),
            elapsed_ms: 590.0,
            answer_at: Some(0),
            streamed_to: partial.len(),
        });
        s.chat.context.used = 621;
        s.chat.input.insert_str("Thanks! And /");
        s.params.system_prompt = "You are a helpful assistant.".into();
        s
    }

    fn render_pane(s: &State, w: u16, h: u16) -> Terminal<TestBackend> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| super::draw(f, Rect::new(0, 0, w, h), s))
            .unwrap();
        t
    }

    #[test]
    fn rich_conversation_dark_whole_screen() {
        let mut s = rich(Theme::dark());
        let text = crate::ui::tests::text(&s);
        assert!(text.contains("Assistant · interrupted"), "{text}");
        assert!(text.contains("TTFT 90 ms · 40.0 tok/s"), "{text}");
        assert!(text.contains("Esc stops"), "{text}");
        insta::assert_snapshot!("rich_dark_bottom", text);
        s.chat.scroll = 10_000;
        let text = crate::ui::tests::text(&s);
        assert!(
            text.contains("SmolLM2-135M · TTFT 84 ms · 41.5 tok/s · 57 tok · answer ‹2/2›"),
            "{text}"
        );
        insta::assert_snapshot!("rich_dark_top", text);
    }

    #[test]
    fn rich_conversation_light_styles() {
        let light = Theme::load("light", std::path::Path::new("/nonexistent")).unwrap();
        let s = rich(light);
        let t = render_pane(&s, 72, 22);
        insta::assert_debug_snapshot!(t.backend().buffer());
    }

    #[test]
    fn scrolled_up_shows_the_jump_hint_and_older_rows() {
        let mut s = rich(Theme::dark());
        let bottom = crate::ui::tests::text(&s);
        s.chat.scroll = 10;
        let up = crate::ui::tests::text(&s);
        assert_ne!(bottom, up);
        assert!(up.contains("End jumps to the bottom"), "{up}");
    }

    #[test]
    fn every_size_draws_without_panic() {
        for (w, h) in [(0, 0), (1, 1), (2, 3), (20, 5), (61, 16), (200, 60)] {
            let s = rich(Theme::dark());
            render_pane(&s, w, h);
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| crate::ui::draw(f, &s)).unwrap();
        }
    }
}
