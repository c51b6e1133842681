//! Where the chat pane's parts sit on screen, from the terminal size and the input: pure
//! geometry that `update` needs for scrolling and mouse hits and that `ui` draws into. It lives
//! in the app, which `ui` already reads, so `update` never calls into drawing code.

use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::widgets::{Block, Borders};

use super::{slash, ChatState};
use crate::app::state::State;

/// Width of the Parameters sidebar.
pub const SIDEBAR_WIDTH: u16 = 30;

/// The main pane's rectangle for a terminal size (mirrors `ui::draw`).
pub fn main_area(size: (u16, u16)) -> Rect {
    let area = Rect::new(0, 0, size.0, size.1);
    let rows = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .split(area);
    Layout::new(
        Direction::Horizontal,
        [Constraint::Min(20), Constraint::Length(SIDEBAR_WIDTH)],
    )
    .split(rows[1])[0]
}

/// Where each part of the pane goes inside its border.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChatLayout {
    pub transcript: Rect,
    pub meter: Rect,
    pub hint: Option<Rect>,
    pub input: Rect,
}

fn input_height(chat: &ChatState) -> u16 {
    chat.input.lines().len().clamp(1, 6) as u16 + 1
}

fn hint_visible(chat: &ChatState) -> bool {
    chat.input_focused && !slash::candidates(&chat.input_text()).is_empty()
}

pub fn layout(inner: Rect, chat: &ChatState) -> ChatLayout {
    let hint = hint_visible(chat);
    let rows = Layout::vertical([
        Constraint::Min(1),
        Constraint::Length(1),
        Constraint::Length(u16::from(hint)),
        Constraint::Length(input_height(chat)),
    ])
    .split(inner);
    ChatLayout {
        transcript: rows[0],
        meter: rows[1],
        hint: hint.then_some(rows[2]),
        input: rows[3],
    }
}

/// The transcript's rectangle for the state's terminal size (used by `update` for scrolling).
pub fn transcript_area(state: &State) -> Rect {
    let inner = Block::default()
        .borders(Borders::ALL)
        .inner(main_area(state.size));
    layout(inner, &state.chat).transcript
}
