//! Whole-screen snapshots on `TestBackend`.

use crate::app::msg::Msg;
use crate::app::state::State;
use crate::app::tests::test_state;
use crate::app::update::update;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

pub fn render(state: &State) -> Terminal<TestBackend> {
    let mut t = Terminal::new(TestBackend::new(state.size.0, state.size.1)).unwrap();
    t.draw(|f| super::draw(f, state)).unwrap();
    t
}

/// The screen as text, one line per row (styles dropped).
pub fn text(state: &State) -> String {
    let t = render(state);
    let buf = t.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn screen_80x24() {
    insta::assert_snapshot!(text(&test_state(80, 24)));
}

#[test]
fn screen_120x36_with_chat_focused() {
    let mut s = test_state(120, 36);
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Char('4'), KeyModifiers::NONE)),
    );
    insta::assert_snapshot!(text(&s));
}

#[test]
fn the_status_bar_counts_the_engines_streams() {
    let mut s = test_state(120, 36);
    update(&mut s, Msg::Streams(0));
    assert!(!text(&s).contains("streams"));
    s.dirty = false;
    update(&mut s, Msg::Streams(3));
    assert!(s.dirty, "a new count is worth a frame");
    assert!(text(&s).contains("│ 3 streams │"), "{}", text(&s));
    s.dirty = false;
    update(&mut s, Msg::Streams(3));
    assert!(!s.dirty);
}

#[test]
fn the_status_bar_names_the_device() {
    let mut s = test_state(120, 36);
    assert!(
        !text(&s).contains("cpu"),
        "no device before the engine starts"
    );
    s.status.device = "cuda:0 NVIDIA H200".into();
    assert!(
        text(&s).contains("│ cuda:0 NVIDIA H200 │ mem"),
        "{}",
        text(&s)
    );
    // A model split between the GPU and the CPU shows how.
    s.chat.model = Some(crate::app::chat::ChatModel {
        name: "big".into(),
        backend: crate::app::chat::Backend::Local("/m/big.gguf".into()),
        context_length: 8192,
        keeps_thinking: false,
        gpu_layers: Some((20, 32)),
    });
    assert!(
        text(&s).contains("│ cuda:0 NVIDIA H200 · 20/32 layers │ mem"),
        "{}",
        text(&s)
    );
}

#[test]
fn too_small_message() {
    let s = test_state(40, 10);
    let t = text(&s);
    assert!(t.contains("too small"), "{t}");
    insta::assert_snapshot!(t);
}

#[test]
fn help_overlay_lists_bindings_from_the_keymap() {
    // Tall enough for every binding (chat and input contexts included) on one screen.
    let mut s = test_state(100, 110);
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Char('?'), KeyModifiers::NONE)),
    );
    let body: String = super::help::lines(&s)
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    for entry in s.keymap.help() {
        let keys = entry
            .keys
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let row = format!("  {keys:<18}{}", entry.desc);
        assert!(body.contains(&row), "help lacks {row:?}\n{body}");
    }
    insta::assert_snapshot!(text(&s));
}

#[test]
fn styles_of_the_tab_bar_and_status_bar() {
    // Buffer's Debug lists style runs, so a theme regression shows up here.
    let s = test_state(80, 24);
    let t = render(&s);
    let buf = t.backend().buffer();
    let mut rows = ratatui::buffer::Buffer::empty(ratatui::layout::Rect::new(0, 0, 80, 2));
    for x in 0..80 {
        rows[(x, 0)] = buf[(x, 0)].clone();
        rows[(x, 1)] = buf[(x, 23)].clone();
    }
    insta::assert_debug_snapshot!(rows);
}

#[test]
fn every_size_from_tiny_up_draws_without_panic() {
    for w in [0u16, 1, 2, 10, 59, 60, 61, 200] {
        for h in [0u16, 1, 2, 15, 16, 17, 60] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            let s = test_state(w, h);
            t.draw(|f| super::draw(f, &s)).unwrap();
        }
    }
}
