//! The pure state machine: `update(&mut State, Msg) -> Vec<Effect>`. No IO, no clock, no async.

use super::effect::Effect;
use super::msg::Msg;
use super::state::{Notice, Pane, State};
use super::{downloads, hub, library, server};
use crate::config::keymap::{Command, Key};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, MouseEventKind};

pub fn update(state: &mut State, msg: Msg) -> Vec<Effect> {
    match msg {
        Msg::Key(ev) => {
            if ev.kind == KeyEventKind::Release {
                return vec![];
            }
            let key = Key::from_event(&ev);
            match state.keymap.resolve(&state.contexts(), key) {
                // The `input` bindings serve the chat's fields; the Hub and Library boxes read
                // their keys directly.
                Some(cmd)
                    if super::chat::is_text_command(cmd)
                        && state.typing()
                        && !super::chat::typing(state) =>
                {
                    type_key(state, ev)
                }
                Some(cmd) => command(state, cmd),
                None if super::chat::typing(state) => {
                    wrap(super::chat::key(state, ev), Effect::Chat)
                }
                None if state.typing() => type_key(state, ev),
                None => vec![],
            }
        }
        Msg::Paste(text) => wrap(super::chat::paste(state, text), Effect::Chat),
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
            wrap(super::chat::mouse(state, ev), Effect::Chat)
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
        Msg::Streams(n) => {
            if state.status.streams != n {
                state.status.streams = n;
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
            state
                .hub
                .restyle(&super::chat::markdown_styles(&state.theme));
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
        Msg::Chat(m) => wrap(super::chat::on_msg(state, m), Effect::Chat),
        Msg::Library(m) => {
            state.dirty = true;
            wrap(library::update(&mut state.library, m), Effect::Library)
        }
        Msg::Server(m) => {
            if let Some((error, text)) = server::update(&mut state.server, m) {
                state.status.notice = Some(Notice { error, text });
            }
            state.dirty = true;
            vec![]
        }
        Msg::Hub(m) => {
            state.dirty = true;
            let styles = super::chat::markdown_styles(&state.theme);
            wrap(hub::update(&mut state.hub, m, &styles), Effect::Hub)
        }
        Msg::Download(ev) => {
            // Progress of a pane that is not on screen only matters to the status bar.
            let visible = state.main_pane == Pane::Downloads
                || !matches!(ev, crate::downloads::DownloadEvent::Progress(_));
            let before = state.downloads.active();
            let outcome = downloads::on_event(&mut state.downloads, ev);
            if visible || before != state.downloads.active() {
                state.dirty = true;
            }
            if outcome == downloads::Outcome::Finished && !state.library.scanning {
                state.library.scanning = true;
                return vec![Effect::Library(library::LibraryEffect::Scan)];
            }
            vec![]
        }
    }
}

fn wrap<E>(effects: Vec<E>, f: impl Fn(E) -> Effect) -> Vec<Effect> {
    effects.into_iter().map(f).collect()
}

/// Keys that reach a text field because no binding claimed them.
fn type_key(state: &mut State, ev: KeyEvent) -> Vec<Effect> {
    if state.focus == Pane::Hub && state.hub.editing {
        state.dirty = true;
        let effects = match ev.code {
            KeyCode::Char(c) => state.hub.edit(Some(c)),
            KeyCode::Backspace => state.hub.edit(None),
            KeyCode::Enter => state.hub.end_edit(true),
            KeyCode::Esc => state.hub.end_edit(false),
            _ => vec![],
        };
        return wrap(effects, Effect::Hub);
    }
    if state.focus == Pane::Library && state.library.filtering {
        match ev.code {
            KeyCode::Char(c) => state.library.type_char(c),
            KeyCode::Backspace => state.library.backspace(),
            KeyCode::Enter => state.library.end_filter(true),
            KeyCode::Esc => state.library.end_filter(false),
            _ => return vec![],
        }
        state.dirty = true;
    }
    vec![]
}

/// Rows a page-up/down moves in list panes.
fn page(state: &State) -> usize {
    usize::from(state.size.1.saturating_sub(8)).max(1)
}

fn focus(state: &mut State, pane: Pane) -> Vec<Effect> {
    state.focus = pane;
    if pane != Pane::Params {
        state.main_pane = pane;
    }
    state.dirty = true;
    // Files may have changed behind our back (another tool, a shell); a rescan is cheap.
    if pane == Pane::Library && !state.library.scanning {
        state.library.scanning = true;
        return vec![Effect::Library(library::LibraryEffect::Scan)];
    }
    vec![]
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
        Command::FocusNext => return focus(state, state.focus.next()),
        Command::FocusPrev => return focus(state, state.focus.prev()),
        Command::FocusHub => return focus(state, Pane::Hub),
        Command::FocusDownloads => return focus(state, Pane::Downloads),
        Command::FocusLibrary => return focus(state, Pane::Library),
        Command::FocusChat => return focus(state, Pane::Chat),
        Command::FocusParams => return focus(state, Pane::Params),
        Command::ToggleServer => {
            state.dirty = true;
            return wrap(server::toggle(&mut state.server), Effect::Server);
        }
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
        Command::LoadModel if state.focus == Pane::Library && state.library.confirm.is_none() => {
            if let Some(name) = state.library.selected_model().map(|m| m.name.clone()) {
                focus(state, Pane::Chat);
                state.chat.input_focused = true;
                return wrap(super::chat::load_model(state, name), Effect::Chat);
            }
        }
        chat_cmd if matches!(state.focus, Pane::Chat | Pane::Params) => {
            return wrap(super::chat::command(state, chat_cmd), Effect::Chat)
        }
        pane_cmd => {
            state.dirty = true;
            let page = page(state);
            if state.library.confirm.is_some() || state.focus == Pane::Library {
                return wrap(
                    library::command(&mut state.library, pane_cmd, page),
                    Effect::Library,
                );
            }
            match state.focus {
                Pane::Hub => {
                    let (mut effects, specs) = hub::command(&mut state.hub, pane_cmd, page);
                    let mut out = wrap(std::mem::take(&mut effects), Effect::Hub);
                    if !specs.is_empty() {
                        out.push(Effect::Downloads(downloads::DownloadsEffect::Enqueue(
                            specs,
                        )));
                    }
                    return out;
                }
                Pane::Downloads => {
                    return wrap(
                        downloads::command(&mut state.downloads, pane_cmd, page),
                        Effect::Downloads,
                    )
                }
                _ => {}
            }
        }
    }
    vec![]
}
