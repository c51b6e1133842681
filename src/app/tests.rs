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

pub fn empty_roots() -> crate::library::LibraryRoots {
    let p = std::path::Path::new("/nonexistent");
    crate::library::LibraryRoots::detect(p, p, &[])
}

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
    let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into(), empty_roots());
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
    let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into(), empty_roots());
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

/// The real test models folder; panics with the fix when it is missing.
pub fn test_models() -> std::path::PathBuf {
    let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            directories::BaseDirs::new()
                .expect("a home folder")
                .home_dir()
                .join(".cache/influence-test-models")
        });
    assert!(
        dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            .is_file(),
        "test models missing in {}: run scripts/fetch-test-models.sh",
        dir.display()
    );
    dir
}

/// A library with the real SmolLM2 and MiniLM imported by reference, plus a truncated GGUF.
pub fn library_with_models(tmp: &std::path::Path) -> crate::library::Library {
    let models = test_models();
    let data = tmp.join("data");
    let roots = crate::library::LibraryRoots::detect(&tmp.join("hf"), &data, &[]);
    crate::library::import(
        &roots,
        &models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    )
    .unwrap();
    crate::library::import(&roots, &models.join("minilm")).unwrap();
    let broken = tmp.join("broken.gguf");
    let head = std::fs::read(models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(&broken, &head[..4 << 20]).unwrap();
    crate::library::import(&roots, &broken).unwrap();
    crate::library::Library::scan(&roots)
}

mod library_pane {
    use super::*;
    use crate::app::library::{LibraryEffect, LibraryMsg};
    use std::sync::Arc;

    fn scanned(s: &mut State, lib: &crate::library::Library) {
        update(
            s,
            Msg::Library(LibraryMsg::Scanned {
                models: Arc::new(lib.models().to_vec()),
                warnings: vec![],
            }),
        );
    }

    #[test]
    fn focusing_rescans_and_filter_narrows() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(120, 36);
        assert_eq!(
            update(&mut s, ch('3')),
            vec![Effect::Library(LibraryEffect::Scan)]
        );
        scanned(&mut s, &lib);
        assert_eq!(s.library.view.len(), 3);
        update(&mut s, ch('/'));
        assert!(s.typing(), "filtering takes typed keys");
        for c in "smol".chars() {
            update(&mut s, ch(c));
        }
        assert!(!s.quit);
        assert_eq!(s.library.view.len(), 1);
        update(&mut s, key(KeyCode::Enter));
        assert!(!s.typing());
        assert_eq!(s.library.filter, "smol");
        update(&mut s, ch('/'));
        update(&mut s, key(KeyCode::Esc));
        assert_eq!(s.library.view.len(), 3);
    }

    #[test]
    fn sort_keeps_selection_and_delete_needs_confirmation() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(120, 36);
        update(&mut s, ch('3'));
        scanned(&mut s, &lib);
        update(&mut s, key(KeyCode::Down));
        let chosen = s.library.selected_model().unwrap().name.clone();
        update(&mut s, ch('s'));
        assert_eq!(s.library.selected_model().unwrap().name, chosen);
        let eff = update(&mut s, ch('d'));
        assert!(matches!(
            eff.as_slice(),
            [Effect::Library(LibraryEffect::PlanDelete(m))] if m.name == chosen
        ));
        let model = lib.models().iter().find(|m| m.name == chosen).unwrap();
        let plan = lib.delete_plan(model).unwrap();
        update(
            &mut s,
            Msg::Library(LibraryMsg::DeletePlanned(Ok(plan.clone()))),
        );
        // While the question is open, q does not quit and n keeps everything.
        update(&mut s, ch('q'));
        assert!(!s.quit);
        assert!(update(&mut s, ch('n')).is_empty());
        assert!(s.library.confirm.is_none());
        update(&mut s, Msg::Library(LibraryMsg::DeletePlanned(Ok(plan))));
        let eff = update(&mut s, ch('y'));
        assert!(
            matches!(eff.as_slice(), [Effect::Library(LibraryEffect::Delete(p))] if p.model == chosen)
        );
    }

    #[test]
    fn pane_snapshot_lists_models_details_and_broken_file() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(130, 40);
        update(&mut s, ch('3'));
        scanned(&mut s, &lib);
        // Select SmolLM2 so the details show its facts.
        while s
            .library
            .selected_model()
            .unwrap()
            .info
            .architecture
            .as_deref()
            != Some("llama")
            || s.library.selected_model().unwrap().broken.is_some()
        {
            update(&mut s, key(KeyCode::Down));
        }
        let screen = crate::ui::tests::text(&s);
        assert!(screen.contains("134.5M") && screen.contains("Q4_1") && screen.contains("8192"));
        assert!(screen.contains("broken"), "{screen}");
        let models = test_models();
        let screen = screen
            .replace(&tmp.path().display().to_string(), "<tmp>")
            .replace(&models.display().to_string(), "<models>");
        insta::assert_snapshot!(screen);
    }
}
