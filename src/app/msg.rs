//! `Msg`: everything that can happen to the app.

use super::hub::HubMsg;
use super::library::LibraryMsg;
use super::server::ServerMsg;
use crate::config::theme::Theme;
use crate::downloads::DownloadEvent;
use crossterm::event::{KeyEvent, MouseEvent};

#[derive(Debug, Clone)]
pub enum Msg {
    Key(KeyEvent),
    Paste(String),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// A periodic sample of this process's memory.
    Memory(u64),
    /// Sequences the engine is decoding now (the chat's and API clients').
    Streams(usize),
    ThemeLoaded(Box<Theme>),
    ThemeFailed(String),
    /// SIGTERM or another request from outside to leave.
    Shutdown,
    /// Results of the chat's background work.
    Chat(super::chat::ChatMsg),
    Library(LibraryMsg),
    Hub(HubMsg),
    Download(DownloadEvent),
    Server(ServerMsg),
}
