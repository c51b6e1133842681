//! Update transitions and the loop on `TestBackend`: no terminal, no IO.

use super::effect::{Effect, EffectRunner};
use super::msg::Msg;
use super::state::{Pane, State};
use super::update::update;
use crate::config::keymap::Keymap;
use crate::config::theme::{self, Theme};
use crate::tui::frame::FrameClock;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use std::collections::BTreeMap;

pub fn test_state(w: u16, h: u16) -> State {
    State::new(
        Theme::dark(),
        theme::BUILTIN_NAMES.iter().map(|s| s.to_string()).collect(),
        Keymap::load(&BTreeMap::new()).unwrap(),
        (w, h),
    )
}

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

#[test]
fn tab_and_backtab_cycle_focus_through_all_panes() {
    let mut s = test_state(100, 30);
    let mut seen = vec![s.focus];
    for _ in 0..5 {
        update(&mut s, key(KeyCode::Tab));
        seen.push(s.focus);
    }
    assert_eq!(
        seen,
        vec![
            Pane::Hub,
            Pane::Downloads,
            Pane::Library,
            Pane::Chat,
            Pane::Params,
            Pane::Hub
        ]
    );
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT)),
    );
    assert_eq!(s.focus, Pane::Params);
    // The sidebar takes focus but the main area keeps showing the last main pane.
    assert_eq!(s.main_pane, Pane::Hub);
}

#[test]
fn number_keys_jump() {
    let mut s = test_state(100, 30);
    for (c, p) in [
        ('3', Pane::Library),
        ('4', Pane::Chat),
        ('2', Pane::Downloads),
        ('5', Pane::Params),
        ('1', Pane::Hub),
    ] {
        s.dirty = false;
        update(&mut s, ch(c));
        assert_eq!(s.focus, p);
        assert!(s.dirty);
    }
}

#[test]
fn help_opens_scrolls_and_closes() {
    let mut s = test_state(100, 30);
    update(&mut s, ch('?'));
    assert_eq!(s.help, Some(0));
    // While help is open, pane keys do nothing.
    update(&mut s, ch('3'));
    assert_eq!(s.focus, Pane::Hub);
    update(&mut s, key(KeyCode::Down));
    update(&mut s, key(KeyCode::Down));
    assert_eq!(s.help, Some(2));
    update(&mut s, key(KeyCode::Esc));
    assert_eq!(s.help, None);
    update(&mut s, key(KeyCode::F(1)));
    assert_eq!(s.help, Some(0));
    update(&mut s, ch('q'));
    assert_eq!(s.help, None);
    assert!(!s.quit, "q closes help before it quits");
}

#[test]
fn quit_with_q_and_ctrl_c() {
    let mut s = test_state(100, 30);
    update(&mut s, ch('q'));
    assert!(s.quit);
    let mut s = test_state(100, 30);
    update(&mut s, ch('?'));
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(s.quit, "Ctrl-C quits from anywhere, help included");
}

#[test]
fn resize_marks_dirty_and_too_small() {
    let mut s = test_state(100, 30);
    s.dirty = false;
    update(&mut s, Msg::Resize(40, 10));
    assert!(s.dirty && s.too_small());
    update(&mut s, Msg::Resize(120, 40));
    assert!(!s.too_small());
}

#[test]
fn theme_cycles_through_an_effect() {
    let mut s = test_state(100, 30);
    assert_eq!(
        update(&mut s, ch('t')),
        vec![Effect::LoadTheme("light".into())]
    );
    let light = Theme::load("light", std::path::Path::new("/nonexistent")).unwrap();
    update(&mut s, Msg::ThemeLoaded(Box::new(light)));
    assert_eq!(s.theme.name, "light");
    assert_eq!(
        update(&mut s, ch('t')),
        vec![Effect::LoadTheme("high-contrast".into())]
    );
}

#[test]
fn memory_sample_redraws_only_on_visible_change() {
    let mut s = test_state(100, 30);
    update(&mut s, Msg::Memory(50 << 20));
    s.dirty = false;
    update(&mut s, Msg::Memory((50 << 20) + 10));
    assert!(!s.dirty);
    update(&mut s, Msg::Memory(60 << 20));
    assert!(s.dirty);
}

#[tokio::test(flavor = "current_thread")]
async fn loop_coalesces_many_messages_into_few_frames() {
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let mut state = test_state(100, 30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into());
    // 500 visible changes queued at once, then quit.
    for i in 0..500u64 {
        tx.send(Msg::Memory((i + 1) << 20)).unwrap();
    }
    tx.send(ch('q')).unwrap();
    let events = futures::stream::pending::<Msg>();
    let stats = super::run(
        &mut terminal,
        &mut state,
        events,
        &mut rx,
        &mut runner,
        FrameClock::new(60),
    )
    .await
    .unwrap();
    assert_eq!(stats.msgs, 501);
    assert!(stats.frames <= 2, "drew {} frames", stats.frames);
}

#[tokio::test(flavor = "current_thread")]
async fn loop_draws_the_screen_and_quits_on_keys() {
    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    let mut state = test_state(100, 30);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into());
    let events = futures::stream::iter(vec![ch('3')]).chain(futures::stream::iter(vec![]));
    let handle = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        tx.send(ch('q')).unwrap();
    });
    use futures::StreamExt;
    super::run(
        &mut terminal,
        &mut state,
        events.chain(futures::stream::pending()),
        &mut rx,
        &mut runner,
        FrameClock::new(60),
    )
    .await
    .unwrap();
    handle.await.unwrap();
    assert!(state.quit);
    let screen = format!("{:?}", terminal.backend().buffer());
    assert!(screen.contains("Library"));
}
