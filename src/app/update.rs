//! The pure state machine: `update(&mut State, Msg) -> Vec<Effect>`. No IO, no clock, no async.

use super::effect::Effect;
use super::msg::Msg;
use super::state::{Notice, Pane, State};
use crate::config::keymap::{Command, Key};
use crossterm::event::{KeyEventKind, MouseEventKind};

pub fn update(state: &mut State, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Key(ev) => {
            if ev.kind == KeyEventKind::Release {
                return vec![];
            }
            let key = Key::from_event(&ev);
            match state.keymap.resolve(&state.contexts(), key) {
                Some(cmd) => command(state, cmd),
                None if state.typing() => super::chat::key(state, ev),
                None => vec![],
            }
        }
        Msg::Paste(text) => super::chat::paste(state, text),
        Msg::Mouse(ev) => {
            match ev.kind {
                MouseEventKind::ScrollDown if state.help.is_some() => {
                    return command(state, Command::ScrollDown)
                }
                MouseEventKind::ScrollUp if state.help.is_some() => {
                    return command(state, Command::ScrollUp)
                }
                _ => {}
            }
            super::chat::mouse(state, ev)
        }
        Msg::Resize(w, h) => {
            state.size = (w, h);
            state.dirty = true;
            vec![]
        }
        Msg::Memory(bytes) => {
            // Only a visible change (whole MiB) is worth a frame.
            let old = state.status.rss_bytes.map(|b| b >> 20);
            state.status.rss_bytes = Some(bytes);
            if old != Some(bytes >> 20) {
                state.dirty = true;
            }
            vec![]
        }
        Msg::ThemeLoaded(theme) => {
            state.status.notice = Some(Notice {
                error: false,
                text: format!("Theme: {}", theme.name),
            });
            state.theme = *theme;
            state.dirty = true;
            vec![]
        }
        Msg::ThemeFailed(e) => {
            state.status.notice = Some(Notice {
                error: true,
                text: e,
            });
            state.dirty = true;
            vec![]
        }
        Msg::Shutdown => {
            state.quit = true;
            vec![]
        }
        Msg::Chat(m) => super::chat::on_msg(state, m),
    }
}

fn focus(state: &mut State, pane: Pane) {
    state.focus = pane;
    if pane != Pane::Params {
        state.main_pane = pane;
    }
    state.dirty = true;
}

fn command(state: &mut State, cmd: Command) -> Vec<Effect> {
    match cmd {
        Command::Quit => state.quit = true,
        Command::ToggleHelp => {
            state.help = match state.help {
                Some(_) => None,
                None => Some(0),
            };
            state.dirty = true;
        }
        Command::CloseHelp => {
            state.help = None;
            state.dirty = true;
        }
        Command::ScrollDown => {
            if let Some(s) = state.help.as_mut() {
                *s = s.saturating_add(1);
                state.dirty = true;
            }
        }
        Command::ScrollUp => {
            if let Some(s) = state.help.as_mut() {
                *s = s.saturating_sub(1);
                state.dirty = true;
            }
        }
        Command::FocusNext => focus(state, state.focus.next()),
        Command::FocusPrev => focus(state, state.focus.prev()),
        Command::FocusHub => focus(state, Pane::Hub),
        Command::FocusDownloads => focus(state, Pane::Downloads),
        Command::FocusLibrary => focus(state, Pane::Library),
        Command::FocusChat => focus(state, Pane::Chat),
        Command::FocusParams => focus(state, Pane::Params),
        Command::CycleTheme => {
            let i = state
                .themes
                .iter()
                .position(|t| *t == state.theme.name)
                .map_or(0, |i| i + 1);
            if let Some(next) = state.themes.get(i % state.themes.len().max(1)) {
                return vec![Effect::LoadTheme(next.clone())];
            }
        }
        other => return super::chat::command(state, other),
    }
    vec![]
}
