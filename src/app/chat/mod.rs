//! The Chat pane and the Parameters sidebar: their state, the messages their background work
//! sends back, the effects they ask for, and the pure transitions between them.
//!
//! Journey (ARCHITECTURE §4.1): `InputSubmit` appends the user message and an empty answer,
//! returns `Generate` + `Save`; the runner streams `GenEvent`s back as [`ChatMsg::Gen`]; tokens
//! go into the conversation and a [`MarkdownStream`] (newline-gated), and `Done` stores the
//! stats and saves again. Esc stops at once: the partial answer is kept and marked interrupted,
//! and later events of that generation are dropped by their sequence number.

pub mod layout;
pub mod params;
pub mod slash;
pub mod thinking;
pub mod transcript;

use std::cell::RefCell;
use std::path::PathBuf;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};
use tui_textarea::{CursorMove, TextArea};

use super::state::{Notice, Pane, State};
use crate::config::keymap::Command;
use crate::conversations::{
    Conversation, ConversationSummary, MessageStats, Page, Role as ConvRole, SearchHit,
};
use crate::engine::{ChatMessage, ContextPolicy, GenEvent, GenParams, GenStats};
use crate::markdown::{MarkdownStream, MarkdownStyles};
use crate::remote::RemoteSpec;
use params::{Field, ParamsState, Presets};
use slash::{ExportFormat, Slash};
use transcript::Transcript;

/// Where a chat's answers come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Backend {
    /// The local engine, with the model file or folder to load.
    Local(PathBuf),
    /// An OpenAI-compatible or Ollama endpoint.
    Remote(RemoteSpec),
}

/// The model the chat talks to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatModel {
    /// Display name (library name, file name, or `remote-model@host`); presets are keyed by it.
    pub name: String,
    pub backend: Backend,
    /// Tokens of context the model holds; 0 when the backend does not say.
    pub context_length: usize,
    /// The model's chat template handles earlier thinking itself, so answers go back to it as
    /// written; otherwise their thinking is left out of later turns.
    pub keeps_thinking: bool,
    /// On a GPU: its layers there and the model's layers (the CPU runs the rest).
    pub gpu_layers: Option<(usize, usize)>,
}

/// A generation in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Running {
    pub seq: u64,
    pub model: String,
    pub tokens: usize,
    pub prompt_tokens: usize,
    pub dropped: usize,
    pub ttft_ms: Option<f64>,
    pub elapsed_ms: f64,
    /// Where the answer (after any thinking) starts in the message, once known, and how much
    /// of it the markdown stream has been given.
    pub answer_at: Option<usize>,
    pub streamed_to: usize,
}

impl Running {
    /// Decode speed so far.
    pub fn tok_s(&self) -> Option<f64> {
        let first = self.ttft_ms?;
        let ms = self.elapsed_ms - first;
        (self.tokens > 1 && ms > 0.0).then(|| (self.tokens - 1) as f64 * 1000.0 / ms)
    }
}

/// The saved-chats overlay: type to search titles and text, Enter opens.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Picker {
    pub query: String,
    pub selected: usize,
    /// Full-text results for `query` (None until they arrive).
    pub hits: Option<Vec<SearchHit>>,
}

/// One row of the picker.
#[derive(Debug, Clone, PartialEq)]
pub struct PickerItem {
    pub id: String,
    pub title: String,
    pub detail: String,
}

/// Context usage as last reported by the backend.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ContextMeter {
    /// Prompt + generated tokens of the last request.
    pub used: usize,
    /// Messages the engine dropped from the last request to make it fit.
    pub dropped: usize,
}

/// Warn when this fraction of the context is used.
pub const CONTEXT_WARN: f64 = 0.8;

#[derive(Debug, Clone)]
pub struct ChatState {
    pub conv: Conversation,
    /// Saved chats, most recent first.
    pub list: Vec<ConversationSummary>,
    pub input: TextArea<'static>,
    pub input_focused: bool,
    /// Index of the user message being edited (its new text is in the input).
    pub editing: Option<usize>,
    /// Previously sent prompts, oldest first.
    pub prompt_history: Vec<String>,
    history_pos: Option<usize>,
    draft: String,
    pub running: Option<Running>,
    /// Next generation's sequence number; events of older ones are dropped.
    pub seq: u64,
    pub model: Option<ChatModel>,
    /// The model being loaded, and its request number.
    pub loading: Option<(u64, String)>,
    /// Rows between the bottom of the window and the end of the transcript; 0 follows the stream.
    pub scroll: usize,
    /// Set after Home: the window is anchored this many rows below the first row instead, so a
    /// long history need not be laid out to show its beginning.
    pub top: Option<usize>,
    /// The message actions (copy, edit, page answers) apply to.
    pub selected: Option<usize>,
    pub context: ContextMeter,
    /// Speed of the last finished answer.
    pub last_tok_s: Option<f64>,
    pub stream: Option<MarkdownStream>,
    pub picker: Option<Picker>,
    /// Render cache; filled lazily while drawing and when scrolling.
    pub view: RefCell<Transcript>,
}

impl Default for ChatState {
    fn default() -> Self {
        ChatState::new(Conversation::new())
    }
}

impl ChatState {
    pub fn new(conv: Conversation) -> ChatState {
        ChatState {
            conv,
            list: Vec::new(),
            input: new_input(),
            input_focused: false,
            editing: None,
            prompt_history: Vec::new(),
            history_pos: None,
            draft: String::new(),
            running: None,
            seq: 0,
            model: None,
            loading: None,
            scroll: 0,
            top: None,
            selected: None,
            context: ContextMeter::default(),
            last_tok_s: None,
            stream: None,
            picker: None,
            view: RefCell::new(Transcript::default()),
        }
    }

    pub fn input_text(&self) -> String {
        self.input.lines().join("\n")
    }

    /// The context limit the meter measures against: the user's budget or the model's size.
    pub fn context_limit(&self, params: &ParamsState) -> usize {
        let model = self.model.as_ref().map_or(0, |m| m.context_length);
        match (params.context, model) {
            (0, m) => m,
            (c, 0) => c,
            (c, m) => c.min(m),
        }
    }

    /// Rows of the picker, from the list (empty query) or the search results.
    pub fn picker_items(&self) -> Vec<PickerItem> {
        let Some(p) = &self.picker else {
            return Vec::new();
        };
        if p.query.trim().is_empty() {
            return self
                .list
                .iter()
                .map(|s| PickerItem {
                    id: s.id.clone(),
                    title: s.title.clone(),
                    detail: format!("{} msgs · {}", s.message_count, short_time(&s.updated)),
                })
                .collect();
        }
        let mut items: Vec<PickerItem> = Vec::new();
        for h in p.hits.iter().flatten() {
            if items.iter().any(|i| i.id == h.id) {
                continue;
            }
            items.push(PickerItem {
                id: h.id.clone(),
                title: h.title.clone(),
                detail: h.snippet.replace('\n', " "),
            });
        }
        items
    }
}

fn short_time(rfc3339: &str) -> String {
    rfc3339.get(..16).unwrap_or(rfc3339).replace('T', " ")
}

fn new_input() -> TextArea<'static> {
    let mut t = TextArea::default();
    t.set_placeholder_text("Type a message, / for commands");
    t.set_cursor_line_style(ratatui::style::Style::default());
    t
}

/// Results of the chat's background work.
#[derive(Debug, Clone)]
pub enum ChatMsg {
    ModelLoaded {
        seq: u64,
        result: Result<ChatModel, String>,
    },
    /// An engine or remote event of generation `seq`, stamped with the time since the request.
    Gen {
        seq: u64,
        elapsed_ms: f64,
        event: GenEvent,
    },
    /// A remote backend failed (the local engine reports failures inside `Gen`).
    GenFailed {
        seq: u64,
        error: String,
    },
    /// A save finished; the list is the store's after it.
    Saved(Result<Vec<ConversationSummary>, String>),
    Opened(Result<Box<Conversation>, String>),
    Deleted(Result<Vec<ConversationSummary>, String>),
    Exported(Result<PathBuf, String>),
    SearchResults {
        query: String,
        hits: Vec<SearchHit>,
    },
    /// Bytes put on the clipboard.
    Copied(Result<usize, String>),
    PresetsSaved(Result<(), String>),
}

/// What the chat asks the runner to do.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEffect {
    /// Resolve `spec` (library name, path or remote) and load it.
    LoadModel {
        seq: u64,
        spec: String,
    },
    Generate {
        seq: u64,
        backend: Backend,
        messages: Vec<ChatMessage>,
        params: GenParams,
        /// The user's context budget (sidebar "Context") when it is below the model's own:
        /// the prompt plus `max_tokens` must fit it, by the params' context policy.
        budget: Option<usize>,
    },
    Cancel {
        seq: u64,
    },
    Save(Box<Conversation>),
    Open(String),
    /// Open the chat whose id is, or whose title contains, this text.
    OpenMatching(String),
    Delete(String),
    Export {
        conv: Box<Conversation>,
        format: ExportFormat,
    },
    Import(PathBuf),
    Search(String),
    /// Put text on the terminal's clipboard (OSC 52).
    Copy(String),
    SavePresets(Presets),
}

fn notice(state: &mut State, error: bool, text: impl Into<String>) {
    state.status.notice = Some(Notice {
        error,
        text: text.into(),
    });
    state.dirty = true;
}

/// Whether keys go to one of the chat's text fields.
pub fn typing(state: &State) -> bool {
    match state.focus {
        Pane::Chat => state.chat.input_focused || state.chat.picker.is_some(),
        Pane::Params => state.params.editing.is_some(),
        _ => false,
    }
}

/// Commands bound in the `input` context; they act on the chat's fields only.
pub fn is_text_command(cmd: Command) -> bool {
    use Command as C;
    matches!(
        cmd,
        C::InputSubmit
            | C::InputNewline
            | C::InputCancel
            | C::InputComplete
            | C::InputUp
            | C::InputDown
            | C::ChatPageUp
            | C::ChatPageDown
    )
}

pub fn markdown_styles(theme: &crate::config::theme::Theme) -> MarkdownStyles {
    let base = if is_light(theme) {
        MarkdownStyles::light()
    } else {
        MarkdownStyles::dark()
    };
    MarkdownStyles {
        text: theme.text,
        heading: theme.accent.add_modifier(ratatui::style::Modifier::BOLD),
        link: theme
            .accent
            .add_modifier(ratatui::style::Modifier::UNDERLINED),
        quote: theme.success,
        list_marker: theme.accent,
        rule: theme.border,
        muted: theme.muted,
        table_border: theme.border,
        code_bg: theme.code_bg,
        syntect_theme: theme.syntect_theme.clone(),
        ..base
    }
}

fn is_light(theme: &crate::config::theme::Theme) -> bool {
    use ratatui::style::Color;
    match theme.code_bg.bg {
        Some(Color::Rgb(r, g, b)) => (r as u32 + g as u32 + b as u32) > 384,
        Some(Color::White) | Some(Color::Gray) => true,
        _ => false,
    }
}

/// Transcript body width and height for the current terminal size.
fn transcript_dims(state: &State) -> (u16, usize) {
    let area = layout::transcript_area(state);
    (
        area.width.saturating_sub(transcript::BODY_INDENT),
        area.height as usize,
    )
}

fn stream_ref(chat: &ChatState) -> Option<&MarkdownStream> {
    chat.running.as_ref().and(chat.stream.as_ref())
}

// ---------------------------------------------------------------------------------------------
// Keys and commands

/// Commands bound in the `chat`, `params` and `input` keymap contexts.
pub fn command(state: &mut State, cmd: Command) -> Vec<ChatEffect> {
    use Command as C;
    match cmd {
        C::ChatFocusInput => {
            state.chat.input_focused = true;
            state.dirty = true;
            vec![]
        }
        C::ChatScrollUp => scroll_by(state, 1),
        C::ChatScrollDown => scroll_by(state, -1),
        C::ChatPageUp => {
            let h = transcript_dims(state).1.saturating_sub(2).max(1) as isize;
            scroll_by(state, h)
        }
        C::ChatPageDown => {
            let h = transcript_dims(state).1.saturating_sub(2).max(1) as isize;
            scroll_by(state, -h)
        }
        C::ChatTop => {
            state.chat.top = Some(0);
            state.chat.scroll = 0;
            state.dirty = true;
            vec![]
        }
        C::ChatBottom => {
            state.chat.scroll = 0;
            state.chat.top = None;
            state.dirty = true;
            vec![]
        }
        C::ChatStop => stop(state),
        C::ChatRegenerate => regenerate(state),
        C::ChatEdit => start_edit(state),
        C::ChatCopy => copy_message(state),
        C::ChatCopyCode => copy_code(state, None),
        C::ChatToggleThinking => toggle_thinking(state),
        C::ChatSelectPrev => select(state, -1),
        C::ChatSelectNext => select(state, 1),
        C::ChatPagePrev => page(state, Page::Prev),
        C::ChatPageNext => page(state, Page::Next),
        C::ChatNew => new_chat(state),
        C::ChatList => open_picker(state),
        C::ParamNext | C::ParamPrev => {
            let n = Field::ALL.len();
            let p = &mut state.params;
            p.selected = if cmd == C::ParamNext {
                (p.selected + 1) % n
            } else {
                (p.selected + n - 1) % n
            };
            p.error = None;
            state.dirty = true;
            vec![]
        }
        C::ParamEdit => {
            let f = state.params.field();
            state.params.editing = Some(state.params.value(f));
            state.params.error = None;
            state.dirty = true;
            vec![]
        }
        C::InputSubmit => submit(state),
        C::InputNewline => {
            if state.focus == Pane::Chat && state.chat.input_focused && state.chat.picker.is_none()
            {
                state.chat.input.insert_newline();
                state.dirty = true;
            }
            vec![]
        }
        C::InputCancel => cancel(state),
        C::InputComplete => {
            if state.focus == Pane::Chat && state.chat.input_focused && state.chat.picker.is_none()
            {
                let text = state.chat.input_text();
                if let Some(done) = slash::complete(&text) {
                    set_input(&mut state.chat, &done);
                    state.dirty = true;
                }
            }
            vec![]
        }
        C::InputUp => input_updown(state, true),
        C::InputDown => input_updown(state, false),
        _ => vec![],
    }
}

/// A key the keymap did not resolve while typing: it edits the focused field.
pub fn key(state: &mut State, ev: KeyEvent) -> Vec<ChatEffect> {
    if state.focus == Pane::Params {
        if let Some(buf) = state.params.editing.as_mut() {
            match ev.code {
                KeyCode::Char(c) if !ev.modifiers.contains(KeyModifiers::CONTROL) => buf.push(c),
                KeyCode::Backspace => {
                    buf.pop();
                }
                _ => return vec![],
            }
            state.dirty = true;
        }
        return vec![];
    }
    if state.focus != Pane::Chat {
        return vec![];
    }
    if let Some(p) = state.chat.picker.as_mut() {
        match ev.code {
            KeyCode::Char(c) if !ev.modifiers.contains(KeyModifiers::CONTROL) => p.query.push(c),
            KeyCode::Backspace => {
                p.query.pop();
            }
            _ => return vec![],
        }
        p.selected = 0;
        p.hits = None;
        state.dirty = true;
        let q = p.query.clone();
        return if q.trim().is_empty() {
            vec![]
        } else {
            vec![ChatEffect::Search(q)]
        };
    }
    if state.chat.input_focused {
        state.chat.history_pos = None;
        if state.chat.input.input(ev) {
            state.dirty = true;
        }
    }
    vec![]
}

pub fn paste(state: &mut State, text: String) -> Vec<ChatEffect> {
    if state.focus == Pane::Params {
        if let Some(buf) = state.params.editing.as_mut() {
            buf.push_str(&text.replace(['\r', '\n'], " "));
            state.dirty = true;
        }
        return vec![];
    }
    if state.focus == Pane::Chat && state.chat.picker.is_none() {
        // Pasting into the chat means writing a message, even if the input was not focused.
        state.chat.input_focused = true;
        state
            .chat
            .input
            .insert_str(text.replace("\r\n", "\n").replace('\r', "\n"));
        state.dirty = true;
    }
    vec![]
}

/// The wheel scrolls the transcript (never the input history) when the pointer is over it.
pub fn mouse(state: &mut State, ev: MouseEvent) -> Vec<ChatEffect> {
    if state.main_pane != Pane::Chat || state.help.is_some() {
        return vec![];
    }
    let area = layout::transcript_area(state);
    let over = ev.column >= area.x
        && ev.column < area.x + area.width
        && ev.row >= area.y
        && ev.row < area.y + area.height;
    if !over {
        return vec![];
    }
    match ev.kind {
        MouseEventKind::ScrollUp => scroll_by(state, 3),
        MouseEventKind::ScrollDown => scroll_by(state, -3),
        _ => vec![],
    }
}

fn set_input(chat: &mut ChatState, text: &str) {
    let mut t = new_input();
    t.insert_str(text);
    chat.input = t;
}

fn scroll_by(state: &mut State, delta: isize) -> Vec<ChatEffect> {
    let (w, h) = transcript_dims(state);
    let chat = &mut state.chat;
    if let Some(top) = chat.top {
        let new = if delta >= 0 {
            top.saturating_sub(delta as usize)
        } else {
            top.saturating_add(delta.unsigned_abs())
        };
        let styles = markdown_styles(&state.theme);
        let mut view = chat.view.borrow_mut();
        view.sync_styles(&styles);
        let (_, at_end) = view.window_from_top(&chat.conv.messages, stream_ref(chat), w, h, new);
        drop(view);
        // Reaching the end hands over to following the stream.
        chat.top = (!at_end).then_some(new);
        state.dirty = true;
        return vec![];
    }
    let want = if delta >= 0 {
        chat.scroll.saturating_add(delta as usize)
    } else {
        chat.scroll.saturating_sub(delta.unsigned_abs())
    };
    let styles = markdown_styles(&state.theme);
    let max = {
        let mut view = chat.view.borrow_mut();
        view.sync_styles(&styles);
        view.max_scroll(&chat.conv.messages, stream_ref(chat), w, h, want)
    };
    let new = want.min(max);
    if new != chat.scroll {
        chat.scroll = new;
        state.dirty = true;
    }
    vec![]
}

fn input_updown(state: &mut State, up: bool) -> Vec<ChatEffect> {
    match state.focus {
        Pane::Params if state.params.editing.is_none() => vec![],
        Pane::Params => vec![],
        Pane::Chat if state.chat.picker.is_some() => {
            let n = state.chat.picker_items().len();
            if let Some(p) = state.chat.picker.as_mut() {
                p.selected = if up {
                    p.selected.saturating_sub(1)
                } else {
                    (p.selected + 1).min(n.saturating_sub(1))
                };
            }
            state.dirty = true;
            vec![]
        }
        Pane::Chat => {
            let chat = &mut state.chat;
            let (row, _) = chat.input.cursor();
            let last = chat.input.lines().len().saturating_sub(1);
            // Inside a multi-line message the arrows move the cursor; at its edges they recall.
            if (up && row > 0) || (!up && row < last) {
                chat.input
                    .move_cursor(if up { CursorMove::Up } else { CursorMove::Down });
                state.dirty = true;
                return vec![];
            }
            history_step(chat, up);
            state.dirty = true;
            vec![]
        }
        _ => vec![],
    }
}

fn history_step(chat: &mut ChatState, up: bool) {
    let n = chat.prompt_history.len();
    if n == 0 {
        return;
    }
    let next = match (chat.history_pos, up) {
        (None, true) => {
            chat.draft = chat.input_text();
            Some(n - 1)
        }
        (None, false) => return,
        (Some(i), true) => Some(i.saturating_sub(1)),
        (Some(i), false) if i + 1 < n => Some(i + 1),
        (Some(_), false) => None,
    };
    chat.history_pos = next;
    let text = match next {
        Some(i) => chat.prompt_history[i].clone(),
        None => std::mem::take(&mut chat.draft),
    };
    set_input(chat, &text);
}

fn cancel(state: &mut State) -> Vec<ChatEffect> {
    state.dirty = true;
    if state.focus == Pane::Params {
        state.params.editing = None;
        state.params.error = None;
        return vec![];
    }
    if state.chat.picker.take().is_some() {
        return vec![];
    }
    if state.chat.running.is_some() {
        return stop(state);
    }
    if state.chat.editing.take().is_some() {
        set_input(&mut state.chat, "");
        return vec![];
    }
    state.chat.input_focused = false;
    vec![]
}

fn submit(state: &mut State) -> Vec<ChatEffect> {
    if state.focus == Pane::Params {
        return commit_param(state);
    }
    if state.focus != Pane::Chat {
        return vec![];
    }
    if state.chat.picker.is_some() {
        let items = state.chat.picker_items();
        let sel = state.chat.picker.as_ref().map_or(0, |p| p.selected);
        state.chat.picker = None;
        state.dirty = true;
        return match items.get(sel) {
            Some(item) if item.id == state.chat.conv.id => vec![],
            Some(item) => vec![ChatEffect::Open(item.id.clone())],
            None => vec![],
        };
    }
    let text = state.chat.input_text();
    if text.trim().is_empty() {
        return vec![];
    }
    if text.starts_with('/') {
        set_input(&mut state.chat, "");
        state.chat.history_pos = None;
        state.status.notice = None;
        let fx = match slash::parse(&text) {
            Ok(cmd) => run_slash(state, cmd),
            Err(e) => {
                notice(state, true, e);
                vec![]
            }
        };
        // A refused command stays in the input so it can be fixed.
        if state.status.notice.as_ref().is_some_and(|n| n.error)
            && state.chat.input_text().is_empty()
        {
            set_input(&mut state.chat, &text);
        }
        return fx;
    }
    // A leading space lets a message start with '/'.
    let text = text.strip_prefix(' ').unwrap_or(&text).to_string();
    send(state, text)
}

fn commit_param(state: &mut State) -> Vec<ChatEffect> {
    let Some(buf) = state.params.editing.take() else {
        return vec![];
    };
    let f = state.params.field();
    state.dirty = true;
    match state.params.set(f, &buf) {
        Ok(()) => {
            state.params.error = None;
            param_changed(state, f)
        }
        Err(e) => {
            state.params.error = Some(e);
            // Keep the text so it can be fixed.
            state.params.editing = Some(buf);
            vec![]
        }
    }
}

fn param_changed(state: &mut State, f: Field) -> Vec<ChatEffect> {
    notice(
        state,
        false,
        format!(
            "{} = {}; applies to the next message",
            f.key(),
            state.params.value(f).chars().take(40).collect::<String>()
        ),
    );
    match state.params.remember() {
        Some(p) => vec![ChatEffect::SavePresets(p)],
        None => vec![],
    }
}

fn send(state: &mut State, text: String) -> Vec<ChatEffect> {
    if state.chat.running.is_some() {
        notice(
            state,
            true,
            "An answer is still being generated: wait for it or press Esc to stop it",
        );
        return vec![];
    }
    let Some(model) = state.chat.model.clone() else {
        let msg = match &state.chat.loading {
            Some((_, name)) => format!("{name} is still loading; send again when it is ready"),
            None => "No model loaded: type /model NAME (or a path), or pick one in the Library"
                .to_string(),
        };
        notice(state, true, msg);
        return vec![];
    };
    let chat = &mut state.chat;
    if chat.prompt_history.last() != Some(&text) {
        chat.prompt_history.push(text.clone());
    }
    chat.history_pos = None;
    set_input(chat, "");
    match chat.editing.take() {
        Some(i) => {
            if let Err(e) = chat.conv.edit_user(i, text) {
                notice(state, true, e.to_string());
                return vec![];
            }
        }
        None => {
            chat.conv.push_user(text);
        }
    }
    chat.conv.start_assistant();
    start_generation(state, model)
}

/// Begins streaming into the conversation's last (empty assistant) message.
fn start_generation(state: &mut State, model: ChatModel) -> Vec<ChatEffect> {
    let styles = markdown_styles(&state.theme);
    let params = state.params.params.clone();
    let budget = match (state.params.context, model.context_length) {
        (0, _) => None,
        (b, m) if m > 0 && b >= m => None,
        (b, _) => Some(b),
    };
    let chat = &mut state.chat;
    let sp = state.params.system_prompt.trim();
    chat.conv.system_prompt = (!sp.is_empty()).then(|| sp.to_string());
    chat.conv.params = serde_json::to_value(&params).unwrap_or_default();
    chat.conv.model = Some(model.name.clone());
    let messages: Vec<ChatMessage> = chat
        .conv
        .history()
        .into_iter()
        .map(|t| ChatMessage {
            role: match t.role {
                ConvRole::System => crate::engine::Role::System,
                ConvRole::User => crate::engine::Role::User,
                ConvRole::Assistant => crate::engine::Role::Assistant,
            },
            content: match t.role {
                ConvRole::Assistant => thinking::for_history(&t.content, model.keeps_thinking),
                _ => t.content,
            },
        })
        .collect();
    chat.seq += 1;
    let seq = chat.seq;
    chat.running = Some(Running {
        seq,
        model: model.name.clone(),
        tokens: 0,
        prompt_tokens: 0,
        dropped: 0,
        ttft_ms: None,
        elapsed_ms: 0.0,
        answer_at: None,
        streamed_to: 0,
    });
    chat.stream = Some(MarkdownStream::new(styles));
    chat.view.borrow_mut().start_stream();
    chat.scroll = 0;
    chat.top = None;
    chat.selected = None;
    state.status.notice = None;
    state.dirty = true;
    vec![
        ChatEffect::Generate {
            seq,
            backend: model.backend,
            messages,
            params,
            budget,
        },
        ChatEffect::Save(Box::new(chat.conv.clone())),
    ]
}

fn stop(state: &mut State) -> Vec<ChatEffect> {
    let Some(run) = state.chat.running.take() else {
        return vec![];
    };
    let stats = (run.tokens > 0).then(|| MessageStats {
        model: run.model.clone(),
        ttft_ms: run.ttft_ms.unwrap_or(0.0).round() as u64,
        tok_s: run.tok_s().unwrap_or(0.0),
        tokens: run.tokens as u64,
    });
    let _ = state.chat.conv.mark_interrupted(stats);
    state.chat.stream = None;
    notice(state, false, "Stopped; the partial answer is kept");
    vec![
        ChatEffect::Cancel { seq: run.seq },
        ChatEffect::Save(Box::new(state.chat.conv.clone())),
    ]
}

fn regenerate(state: &mut State) -> Vec<ChatEffect> {
    if state.chat.running.is_some() {
        notice(state, true, "Stop the current answer first (Esc)");
        return vec![];
    }
    let Some(model) = state.chat.model.clone() else {
        notice(state, true, "No model loaded: type /model NAME first");
        return vec![];
    };
    if let Err(e) = state.chat.conv.regenerate() {
        notice(state, true, e.to_string());
        return vec![];
    }
    start_generation(state, model)
}

/// The message actions apply to: the selection, else the last answer.
fn target(chat: &ChatState, role: Option<ConvRole>) -> Option<usize> {
    if let Some(i) = chat.selected.filter(|i| *i < chat.conv.messages.len()) {
        return Some(i);
    }
    let role = role.unwrap_or(ConvRole::Assistant);
    chat.conv.messages.iter().rposition(|m| m.role == role)
}

fn start_edit(state: &mut State) -> Vec<ChatEffect> {
    if state.chat.running.is_some() {
        notice(state, true, "Stop the current answer first (Esc)");
        return vec![];
    }
    let chat = &mut state.chat;
    let Some(i) = target(chat, Some(ConvRole::User)) else {
        notice(state, true, "No message to edit yet");
        return vec![];
    };
    if chat.conv.messages[i].role != ConvRole::User {
        notice(
            state,
            true,
            "Only your own messages can be edited; select one with [ and ]",
        );
        return vec![];
    }
    let text = chat.conv.messages[i].content.clone();
    set_input(chat, &text);
    chat.editing = Some(i);
    chat.input_focused = true;
    notice(
        state,
        false,
        "Editing: Enter resends (the old branch is kept), Esc cancels",
    );
    vec![]
}

/// Unfolds (or folds again) the thinking of the selected message, else of the last answer
/// that has any.
fn toggle_thinking(state: &mut State) -> Vec<ChatEffect> {
    let chat = &mut state.chat;
    let has = |m: &crate::conversations::Message| thinking::split(&m.content).thinking.is_some();
    let target = match chat.selected {
        Some(i) => chat.conv.messages.get(i).filter(|m| has(m)),
        None => chat.conv.messages.iter().rev().find(|m| has(m)),
    };
    let Some(id) = target.map(|m| m.id.clone()) else {
        notice(state, false, "No thinking to unfold in this answer");
        return vec![];
    };
    state.chat.view.borrow_mut().toggle_thinking(&id);
    state.dirty = true;
    vec![]
}

fn copy_message(state: &mut State) -> Vec<ChatEffect> {
    let chat = &state.chat;
    match target(chat, None) {
        Some(i) => vec![ChatEffect::Copy(chat.conv.messages[i].content.clone())],
        None => {
            notice(state, true, "Nothing to copy yet");
            vec![]
        }
    }
}

/// Copies code block `n` (1-based) of the target message, or its last one.
fn copy_code(state: &mut State, n: Option<usize>) -> Vec<ChatEffect> {
    let chat = &state.chat;
    let Some(i) = target(chat, None) else {
        notice(state, true, "Nothing to copy yet");
        return vec![];
    };
    let blocks = code_blocks(&chat.conv.messages[i].content);
    let pick = match n {
        Some(n) => blocks.get(n - 1),
        None => blocks.last(),
    };
    match pick {
        Some(code) => vec![ChatEffect::Copy(code.clone())],
        None => {
            let msg = match n {
                Some(n) => format!("That message has {} code block(s), not {n}", blocks.len()),
                None => "That message has no code block".to_string(),
            };
            notice(state, true, msg);
            vec![]
        }
    }
}

/// The fenced and indented code blocks of a markdown text, in order.
pub fn code_blocks(markdown: &str) -> Vec<String> {
    use pulldown_cmark::{Event, Parser, Tag, TagEnd};
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for ev in Parser::new(markdown) {
        match ev {
            Event::Start(Tag::CodeBlock(_)) => cur = Some(String::new()),
            Event::Text(t) => {
                if let Some(c) = cur.as_mut() {
                    c.push_str(&t);
                }
            }
            Event::End(TagEnd::CodeBlock) => out.extend(cur.take()),
            _ => {}
        }
    }
    out
}

fn select(state: &mut State, dir: isize) -> Vec<ChatEffect> {
    let n = state.chat.conv.messages.len();
    if n == 0 {
        return vec![];
    }
    let cur = state.chat.selected.unwrap_or(n);
    let next = if dir < 0 {
        cur.saturating_sub(1)
    } else {
        cur + 1
    };
    state.chat.selected = (next < n).then_some(next);
    state.dirty = true;
    vec![]
}

fn page(state: &mut State, dir: Page) -> Vec<ChatEffect> {
    if state.chat.running.is_some() {
        return vec![];
    }
    let chat = &mut state.chat;
    let Some(i) = target(chat, None) else {
        return vec![];
    };
    let m = &chat.conv.messages[i];
    let changed = if !m.alternatives.is_empty() {
        chat.conv.page_alternative(i, dir)
    } else if !m.branches.is_empty() {
        chat.conv.page_branch(i, dir)
    } else {
        Ok(false)
    };
    match changed {
        Ok(true) => {
            state.dirty = true;
            vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
        }
        Ok(false) => vec![],
        Err(e) => {
            notice(state, true, e.to_string());
            vec![]
        }
    }
}

fn new_chat(state: &mut State) -> Vec<ChatEffect> {
    if state.chat.running.is_some() {
        notice(state, true, "Stop the current answer first (Esc)");
        return vec![];
    }
    open_conversation(state, Conversation::new());
    state.chat.input_focused = true;
    notice(state, false, "New chat");
    vec![]
}

fn open_conversation(state: &mut State, conv: Conversation) {
    let chat = &mut state.chat;
    chat.conv = conv;
    chat.view.borrow_mut().reset();
    chat.stream = None;
    chat.scroll = 0;
    chat.top = None;
    chat.selected = None;
    chat.editing = None;
    chat.context = ContextMeter::default();
    state.dirty = true;
}

fn open_picker(state: &mut State) -> Vec<ChatEffect> {
    state.chat.picker = Some(Picker::default());
    state.dirty = true;
    vec![]
}

fn run_slash(state: &mut State, cmd: Slash) -> Vec<ChatEffect> {
    match cmd {
        Slash::Help => {
            let list: Vec<String> = slash::COMMANDS.iter().map(|(c, _)| c.to_string()).collect();
            notice(
                state,
                false,
                format!("Commands: {} (Tab completes)", list.join(" ")),
            );
            vec![]
        }
        Slash::Clear => {
            if state.chat.running.is_some() {
                notice(state, true, "Stop the current answer first (Esc)");
                return vec![];
            }
            state.chat.conv.clear();
            state.chat.view.borrow_mut().reset();
            state.chat.scroll = 0;
            state.chat.top = None;
            state.chat.selected = None;
            state.chat.context = ContextMeter::default();
            notice(state, false, "Cleared");
            vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
        }
        Slash::New => new_chat(state),
        Slash::Save(title) => {
            if let Some(t) = title {
                state.chat.conv.rename(t);
            }
            vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
        }
        Slash::Rename(t) => {
            state.chat.conv.rename(t);
            state.dirty = true;
            vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
        }
        Slash::Load(None) | Slash::History => open_picker(state),
        Slash::Load(Some(q)) => vec![ChatEffect::OpenMatching(q)],
        Slash::Delete => {
            if state.chat.running.is_some() {
                notice(state, true, "Stop the current answer first (Esc)");
                return vec![];
            }
            let id = state.chat.conv.id.clone();
            open_conversation(state, Conversation::new());
            vec![ChatEffect::Delete(id)]
        }
        Slash::Export(format) => vec![ChatEffect::Export {
            conv: Box::new(state.chat.conv.clone()),
            format,
        }],
        Slash::Import(path) => vec![ChatEffect::Import(PathBuf::from(path))],
        Slash::Set(f, v) => match state.params.set(f, &v) {
            Ok(()) => {
                state.params.error = None;
                param_changed(state, f)
            }
            Err(e) => {
                notice(state, true, e);
                vec![]
            }
        },
        Slash::System(text) => {
            let _ = state.params.set(Field::SystemPrompt, &text);
            param_changed(state, Field::SystemPrompt)
        }
        Slash::Model(spec) => load_model(state, spec),
        Slash::Copy(n) => match n {
            Some(n) => copy_code(state, Some(n)),
            None => copy_message(state),
        },
        Slash::Quit => {
            state.quit = true;
            vec![]
        }
        Slash::Stop => stop(state),
    }
}

/// Starts loading a model by library name, path or remote spec.
pub fn load_model(state: &mut State, spec: String) -> Vec<ChatEffect> {
    state.chat.seq += 1;
    let seq = state.chat.seq;
    state.chat.loading = Some((seq, spec.clone()));
    notice(state, false, format!("Loading {spec}…"));
    vec![ChatEffect::LoadModel { seq, spec }]
}

// ---------------------------------------------------------------------------------------------
// Results from the runner

pub fn on_msg(state: &mut State, msg: ChatMsg) -> Vec<ChatEffect> {
    match msg {
        ChatMsg::ModelLoaded { seq, result } => {
            if state.chat.loading.as_ref().map(|l| l.0) != Some(seq) {
                return vec![];
            }
            state.chat.loading = None;
            match result {
                Ok(model) => {
                    let restored = state.params.restore_for(&model.name);
                    let text = format!(
                        "{} ready{}{}{}",
                        model.name,
                        if model.context_length > 0 {
                            format!(" · context {}", model.context_length)
                        } else {
                            String::new()
                        },
                        match model.gpu_layers {
                            Some((n, all)) if n < all =>
                                format!(" · {n} of {all} layers on the GPU, the rest on the CPU"),
                            _ => String::new(),
                        },
                        if restored {
                            " · saved parameters restored"
                        } else {
                            ""
                        }
                    );
                    state.chat.model = Some(model);
                    notice(state, false, text);
                }
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::Gen {
            seq,
            elapsed_ms,
            event,
        } => on_gen(state, seq, elapsed_ms, event),
        ChatMsg::GenFailed { seq, error } => {
            if state.chat.running.as_ref().map(|r| r.seq) != Some(seq) {
                return vec![];
            }
            gen_failed(state, error)
        }
        ChatMsg::Saved(r) => {
            match r {
                Ok(list) => {
                    state.chat.list = list;
                    if state.chat.picker.is_some() {
                        state.dirty = true;
                    }
                }
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::Opened(r) => {
            match r {
                Ok(conv) => {
                    if state.chat.running.is_some() {
                        notice(state, true, "Stop the current answer first (Esc)");
                        return vec![];
                    }
                    let title = conv.title.clone();
                    open_conversation(state, *conv);
                    notice(state, false, format!("Opened “{title}”"));
                }
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::Deleted(r) => {
            match r {
                Ok(list) => {
                    state.chat.list = list;
                    notice(state, false, "Chat deleted");
                }
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::Exported(r) => {
            match r {
                Ok(path) => notice(state, false, format!("Exported to {}", path.display())),
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::SearchResults { query, hits } => {
            if let Some(p) = state.chat.picker.as_mut() {
                if p.query == query {
                    p.hits = Some(hits);
                    state.dirty = true;
                }
            }
            vec![]
        }
        ChatMsg::Copied(r) => {
            match r {
                Ok(n) => notice(state, false, format!("Copied {n} bytes to the clipboard")),
                Err(e) => notice(state, true, e),
            }
            vec![]
        }
        ChatMsg::PresetsSaved(r) => {
            if let Err(e) = r {
                notice(state, true, e);
            }
            vec![]
        }
    }
}

fn on_gen(state: &mut State, seq: u64, elapsed_ms: f64, event: GenEvent) -> Vec<ChatEffect> {
    let current = state.chat.running.as_ref().map(|r| r.seq) == Some(seq);
    if !current {
        return vec![];
    }
    match event {
        GenEvent::Started {
            prompt_tokens,
            dropped_messages,
            ..
        } => {
            let chat = &mut state.chat;
            if let Some(r) = chat.running.as_mut() {
                r.prompt_tokens = prompt_tokens;
                r.dropped = dropped_messages;
                r.elapsed_ms = elapsed_ms;
            }
            chat.context = ContextMeter {
                used: prompt_tokens,
                dropped: dropped_messages,
            };
            if dropped_messages > 0 {
                notice(
                    state,
                    false,
                    format!(
                        "Context full: the {dropped_messages} oldest message(s) were left out of this request (policy drop-oldest)"
                    ),
                );
            }
            state.dirty = true;
            vec![]
        }
        GenEvent::Token { text, .. } => {
            let (w, _) = transcript_dims(state);
            let chat = &mut state.chat;
            if let Some(r) = chat.running.as_mut() {
                r.tokens += 1;
                r.elapsed_ms = elapsed_ms;
                if r.ttft_ms.is_none() {
                    r.ttft_ms = Some(elapsed_ms);
                }
                chat.context.used = r.prompt_tokens + r.tokens;
            }
            // A scrolled-up view stays where it is while the answer grows below it.
            let height = |chat: &ChatState| match (chat.conv.messages.last(), chat.stream.as_ref())
            {
                (Some(m), Some(s)) => Some(chat.view.borrow_mut().streaming_height(m, s, w)),
                _ => None,
            };
            let before = (chat.scroll > 0).then(|| height(chat)).flatten();
            let _ = chat.conv.append_token(&text);
            feed_answer(chat);
            if let (Some(b), Some(after)) = (before, height(chat)) {
                chat.scroll += after.saturating_sub(b);
            }
            state.dirty = true;
            vec![]
        }
        GenEvent::Done(stats) => finish(state, stats),
        GenEvent::Failed(e) => gen_failed(state, e.to_string()),
    }
}

/// Gives the markdown stream the answer part of the message being generated; thinking is
/// drawn from the message itself. When a late `</think>` shows that what streamed so far was
/// thinking, the stream starts over from the real answer.
fn feed_answer(chat: &mut ChatState) {
    let (Some(m), Some(run), Some(stream)) = (
        chat.conv.messages.last(),
        chat.running.as_mut(),
        chat.stream.as_mut(),
    ) else {
        return;
    };
    let parts = thinking::split(&m.content);
    if parts.answer.is_empty() {
        return;
    }
    let at = m.content.len() - parts.answer.len();
    if run.answer_at != Some(at) {
        if run.answer_at.is_some() {
            *stream = MarkdownStream::new(stream.styles().clone());
            chat.view.borrow_mut().start_stream();
        }
        run.answer_at = Some(at);
        run.streamed_to = at;
    }
    stream.push(&m.content[run.streamed_to..]);
    run.streamed_to = m.content.len();
}

fn gen_failed(state: &mut State, error: String) -> Vec<ChatEffect> {
    let chat = &mut state.chat;
    chat.running = None;
    chat.stream = None;
    let _ = chat.conv.mark_interrupted(None);
    notice(state, true, format!("Generation failed: {error}"));
    vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
}

fn finish(state: &mut State, stats: GenStats) -> Vec<ChatEffect> {
    let chat = &mut state.chat;
    let Some(run) = chat.running.take() else {
        return vec![];
    };
    chat.stream = None;
    let ms = MessageStats {
        model: run.model.clone(),
        ttft_ms: stats.ttft_ms.round() as u64,
        tok_s: stats.gen_tok_s,
        tokens: stats.generated_tokens as u64,
    };
    chat.last_tok_s = Some(stats.gen_tok_s);
    chat.context.used = stats.prompt_tokens + stats.generated_tokens;
    let _ = if stats.finish == crate::engine::FinishReason::Cancelled {
        chat.conv.mark_interrupted(Some(ms))
    } else {
        chat.conv.finish_assistant(ms)
    };
    let limit = chat.context_limit(&state.params);
    if limit > 0 && chat.context.used as f64 >= limit as f64 * CONTEXT_WARN {
        let policy = match state.params.params.context_policy {
            ContextPolicy::DropOldest => "the oldest messages will be left out",
            ContextPolicy::Error => {
                "the next message will be refused (policy error); /clear or /new"
            }
        };
        notice(
            state,
            true,
            format!(
                "Context {}/{} tokens: near the limit, {policy}",
                state.chat.context.used, limit
            ),
        );
    }
    state.dirty = true;
    vec![ChatEffect::Save(Box::new(state.chat.conv.clone()))]
}

#[cfg(test)]
mod tests;
