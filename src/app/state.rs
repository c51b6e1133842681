//! `State`: everything the screen shows, as plain data owned by the app loop.

use super::downloads::DownloadsState;
use super::hub::HubState;
use super::library::LibraryState;
use super::server::ServerStatus;
use crate::config::keymap::{Context, Keymap};
use crate::config::theme::Theme;

/// The panes, in focus order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pane {
    Hub,
    Downloads,
    Library,
    Chat,
    Params,
}

impl Pane {
    pub const ORDER: [Pane; 5] = [
        Pane::Hub,
        Pane::Downloads,
        Pane::Library,
        Pane::Chat,
        Pane::Params,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Pane::Hub => "Hub",
            Pane::Downloads => "Downloads",
            Pane::Library => "Library",
            Pane::Chat => "Chat",
            Pane::Params => "Parameters",
        }
    }

    pub fn context(self) -> Context {
        match self {
            Pane::Hub => Context::Hub,
            Pane::Downloads => Context::Downloads,
            Pane::Library => Context::Library,
            Pane::Chat => Context::Chat,
            Pane::Params => Context::Params,
        }
    }

    pub fn next(self) -> Pane {
        let i = Pane::ORDER.iter().position(|p| *p == self).unwrap_or(0);
        Pane::ORDER[(i + 1) % Pane::ORDER.len()]
    }

    pub fn prev(self) -> Pane {
        let i = Pane::ORDER.iter().position(|p| *p == self).unwrap_or(0);
        Pane::ORDER[(i + Pane::ORDER.len() - 1) % Pane::ORDER.len()]
    }
}

/// A one-line notice in the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub error: bool,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Status {
    /// Resident memory of this process, in bytes, when known.
    pub rss_bytes: Option<u64>,
    /// Sequences the engine decodes now, across the chat and API clients.
    pub streams: usize,
    /// Where models run (`cpu`, `cpu (auto)`, `cuda:0 NVIDIA H200`); empty until the engine
    /// starts.
    pub device: String,
    pub notice: Option<Notice>,
}

#[derive(Debug, Clone)]
pub struct State {
    /// Focused pane; `main_pane` is the one drawn in the main area (the sidebar never is).
    pub focus: Pane,
    pub main_pane: Pane,
    pub help: Option<u16>,
    pub size: (u16, u16),
    pub quit: bool,
    /// Set by `update` whenever something visible changed; cleared by the loop after a draw.
    pub dirty: bool,
    pub theme: Theme,
    pub themes: Vec<String>,
    pub keymap: Keymap,
    pub status: Status,
    pub chat: super::chat::ChatState,
    pub params: super::chat::params::ParamsState,
    pub library: LibraryState,
    pub hub: HubState,
    pub downloads: DownloadsState,
    pub server: ServerStatus,
}

/// The smallest terminal the layout works in.
pub const MIN_SIZE: (u16, u16) = (60, 16);

impl State {
    pub fn new(theme: Theme, themes: Vec<String>, keymap: Keymap, size: (u16, u16)) -> State {
        State {
            focus: Pane::Hub,
            main_pane: Pane::Hub,
            help: None,
            size,
            quit: false,
            dirty: true,
            theme,
            themes,
            keymap,
            status: Status::default(),
            chat: Default::default(),
            params: Default::default(),
            library: LibraryState::default(),
            hub: HubState::new(String::new(), None),
            downloads: DownloadsState::default(),
            server: ServerStatus::Off,
        }
    }

    /// Whether keys go to a text field, so plain letters are text, not commands.
    pub fn typing(&self) -> bool {
        (self.focus == Pane::Library && self.library.typing())
            || (self.focus == Pane::Hub && self.hub.typing())
            || super::chat::typing(self)
    }

    /// Keymap contexts for the current mode, most specific first.
    pub fn contexts(&self) -> Vec<Context> {
        if self.help.is_some() {
            return vec![Context::Help, Context::Global];
        }
        if self.library.confirm.is_some() {
            return vec![Context::Confirm, Context::Global];
        }
        if self.typing() {
            return vec![Context::Input, Context::Global];
        }
        vec![self.focus.context(), Context::Normal, Context::Global]
    }

    pub fn too_small(&self) -> bool {
        self.size.0 < MIN_SIZE.0 || self.size.1 < MIN_SIZE.1
    }
}
