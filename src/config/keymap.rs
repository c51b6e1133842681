//! Key bindings as data: `assets/keymap.toml` plus user overrides from the config.
//!
//! Every binding carries a description, so the help screen is generated from the same table that
//! dispatches keys and cannot drift from it.

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

pub const DEFAULT_KEYMAP: &str = include_str!("../../assets/keymap.toml");

/// One entry as written in TOML.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BindingSpec {
    pub on: Vec<String>,
    pub run: Command,
    pub desc: String,
}

/// What a key asks for. Kept apart from `Msg` so bindings stay serializable and user-editable.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Command {
    Quit,
    ToggleHelp,
    CloseHelp,
    FocusNext,
    FocusPrev,
    FocusHub,
    FocusDownloads,
    FocusLibrary,
    FocusChat,
    FocusParams,
    CycleTheme,
    ToggleServer,
    ScrollUp,
    ScrollDown,
    // Chat pane (context `chat`).
    ChatFocusInput,
    ChatScrollUp,
    ChatScrollDown,
    ChatPageUp,
    ChatPageDown,
    ChatTop,
    ChatBottom,
    ChatStop,
    ChatRegenerate,
    ChatEdit,
    ChatCopy,
    ChatCopyCode,
    /// Fold or unfold the thinking of the selected (or the last) answer.
    ChatToggleThinking,
    ChatSelectPrev,
    ChatSelectNext,
    ChatPagePrev,
    ChatPageNext,
    ChatNew,
    ChatList,
    // Parameters sidebar (context `params`).
    ParamNext,
    ParamPrev,
    ParamEdit,
    // Text fields (context `input`): the chat input, a parameter being edited, the chat list.
    InputSubmit,
    InputNewline,
    InputCancel,
    InputComplete,
    InputUp,
    InputDown,
    // List panes (Hub results, Downloads, Library).
    SelectUp,
    SelectDown,
    PageUp,
    PageDown,
    SelectFirst,
    SelectLast,
    /// Start typing a filter or search text.
    Filter,
    CycleSort,
    /// Show or hide the detail view of the selected item.
    ToggleDetail,
    Refresh,
    Verify,
    Delete,
    /// Load the selected model into the chat.
    LoadModel,
    /// Answer yes / no to a confirmation.
    Confirm,
    Cancel,
    /// Open the selected item; go back from it.
    Open,
    Back,
    /// Queue the selected download choice.
    Download,
    ToggleGguf,
    /// Downloads: pause or resume the selected one, resume, retry a failed one.
    Pause,
    ResumeDownload,
    Retry,
}

/// Where a binding applies. Resolution order: the active context, then `normal` (when not
/// typing), then `global`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Context {
    Global,
    Normal,
    Help,
    Hub,
    Downloads,
    Library,
    Chat,
    Params,
    Input,
    Confirm,
}

impl Context {
    pub const ALL: [Context; 10] = [
        Context::Global,
        Context::Normal,
        Context::Help,
        Context::Hub,
        Context::Downloads,
        Context::Library,
        Context::Chat,
        Context::Params,
        Context::Input,
        Context::Confirm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Context::Global => "global",
            Context::Normal => "normal",
            Context::Help => "help",
            Context::Hub => "hub",
            Context::Downloads => "downloads",
            Context::Library => "library",
            Context::Chat => "chat",
            Context::Params => "params",
            Context::Input => "input",
            Context::Confirm => "confirm",
        }
    }

    fn parse(s: &str) -> Option<Context> {
        Context::ALL.into_iter().find(|c| c.name() == s)
    }
}

/// A key with its modifiers, normalised so that `shift-a` and `A` compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub code: KeyCode,
    pub mods: KeyModifiers,
}

impl Key {
    pub fn new(code: KeyCode, mods: KeyModifiers) -> Key {
        // Terminals report shifted characters as the character itself plus SHIFT; drop SHIFT for
        // chars so "?" matches whatever the terminal sends.
        let mods = match code {
            KeyCode::Char(_) => mods - KeyModifiers::SHIFT,
            KeyCode::BackTab => mods - KeyModifiers::SHIFT,
            _ => mods,
        };
        Key { code, mods }
    }

    pub fn from_event(ev: &KeyEvent) -> Key {
        Key::new(ev.code, ev.modifiers)
    }

    pub fn parse(s: &str) -> Result<Key, String> {
        let mut mods = KeyModifiers::NONE;
        let mut rest = s;
        loop {
            let lower = rest.to_ascii_lowercase();
            if lower.starts_with("ctrl-") {
                mods |= KeyModifiers::CONTROL;
                rest = &rest[5..];
            } else if lower.starts_with("alt-") {
                mods |= KeyModifiers::ALT;
                rest = &rest[4..];
            } else if lower.starts_with("shift-") && rest.len() > 6 {
                mods |= KeyModifiers::SHIFT;
                rest = &rest[6..];
            } else {
                break;
            }
        }
        let code = match rest.to_ascii_lowercase().as_str() {
            "enter" => KeyCode::Enter,
            "esc" => KeyCode::Esc,
            "tab" if mods.contains(KeyModifiers::SHIFT) => KeyCode::BackTab,
            "tab" => KeyCode::Tab,
            "backtab" => KeyCode::BackTab,
            "backspace" => KeyCode::Backspace,
            "delete" | "del" => KeyCode::Delete,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "space" => KeyCode::Char(' '),
            f if f.starts_with('f') && f.len() > 1 && f[1..].parse::<u8>().is_ok() => {
                KeyCode::F(f[1..].parse().unwrap_or(1))
            }
            _ if rest.chars().count() == 1 => KeyCode::Char(rest.chars().next().unwrap_or(' ')),
            _ => return Err(format!("unknown key {s:?}")),
        };
        Ok(Key::new(code, mods))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.mods.contains(KeyModifiers::CONTROL) {
            write!(f, "Ctrl-")?;
        }
        if self.mods.contains(KeyModifiers::ALT) {
            write!(f, "Alt-")?;
        }
        if self.mods.contains(KeyModifiers::SHIFT) {
            write!(f, "Shift-")?;
        }
        match self.code {
            KeyCode::Char(' ') => write!(f, "Space"),
            KeyCode::Char(c) if self.mods.contains(KeyModifiers::CONTROL) => {
                write!(f, "{}", c.to_ascii_uppercase())
            }
            KeyCode::Char(c) => write!(f, "{c}"),
            KeyCode::BackTab => write!(f, "Shift-Tab"),
            KeyCode::PageUp => write!(f, "PgUp"),
            KeyCode::PageDown => write!(f, "PgDn"),
            KeyCode::F(n) => write!(f, "F{n}"),
            other => write!(f, "{other:?}"),
        }
    }
}

/// One row of the help screen.
#[derive(Debug, Clone, PartialEq)]
pub struct HelpEntry {
    pub context: Context,
    pub keys: Vec<Key>,
    pub command: Command,
    pub desc: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KeymapError {
    #[error("keymap: {0}")]
    Parse(String),
    #[error("keymap: unknown context [{0}]; expected one of global, normal, help, hub, downloads, library, chat, params, input, confirm")]
    Context(String),
    #[error("keymap: {key} is bound twice in [{context}] (to {first:?} and {second:?})")]
    Conflict {
        context: &'static str,
        key: String,
        first: Command,
        second: Command,
    },
}

#[derive(Debug, Clone)]
pub struct Keymap {
    map: HashMap<(Context, Key), Command>,
    entries: Vec<HelpEntry>,
}

impl Keymap {
    /// The defaults with `user` overrides applied. A user entry replaces any default binding of
    /// the same key in the same context.
    pub fn load(user: &BTreeMap<String, Vec<BindingSpec>>) -> Result<Keymap, KeymapError> {
        let defaults: BTreeMap<String, Vec<BindingSpec>> =
            toml::from_str(DEFAULT_KEYMAP).map_err(|e| KeymapError::Parse(e.to_string()))?;
        let mut km = Keymap {
            map: HashMap::new(),
            entries: Vec::new(),
        };
        km.add_layer(&defaults, false)?;
        km.add_layer(user, true)?;
        Ok(km)
    }

    fn add_layer(
        &mut self,
        layer: &BTreeMap<String, Vec<BindingSpec>>,
        overrides: bool,
    ) -> Result<(), KeymapError> {
        for (ctx_name, specs) in layer {
            let ctx =
                Context::parse(ctx_name).ok_or_else(|| KeymapError::Context(ctx_name.clone()))?;
            let mut seen: HashMap<Key, Command> = HashMap::new();
            for spec in specs {
                let mut keys = Vec::new();
                for s in &spec.on {
                    let key = Key::parse(s).map_err(KeymapError::Parse)?;
                    if let Some(first) = seen.insert(key, spec.run) {
                        return Err(KeymapError::Conflict {
                            context: ctx.name(),
                            key: key.to_string(),
                            first,
                            second: spec.run,
                        });
                    }
                    if let Some(first) = self.map.get(&(ctx, key)) {
                        if !overrides {
                            return Err(KeymapError::Conflict {
                                context: ctx.name(),
                                key: key.to_string(),
                                first: *first,
                                second: spec.run,
                            });
                        }
                        for e in self.entries.iter_mut().filter(|e| e.context == ctx) {
                            e.keys.retain(|k| *k != key);
                        }
                    }
                    self.map.insert((ctx, key), spec.run);
                    keys.push(key);
                }
                self.entries.push(HelpEntry {
                    context: ctx,
                    keys,
                    command: spec.run,
                    desc: spec.desc.clone(),
                });
            }
        }
        self.entries.retain(|e| !e.keys.is_empty());
        self.entries.sort_by_key(|e| e.context);
        Ok(())
    }

    /// Looks a key up. `contexts` is ordered most specific first; `typing` skips `normal`.
    pub fn resolve(&self, contexts: &[Context], key: Key) -> Option<Command> {
        contexts
            .iter()
            .find_map(|c| self.map.get(&(*c, key)).copied())
    }

    /// The keys bound to `command` in `context`, for hints in the UI.
    pub fn keys_for(&self, context: Context, command: Command) -> Vec<Key> {
        self.entries
            .iter()
            .filter(|e| e.context == context && e.command == command)
            .flat_map(|e| e.keys.clone())
            .collect()
    }

    pub fn help(&self) -> &[HelpEntry] {
        &self.entries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_resolve() {
        let km = Keymap::load(&BTreeMap::new()).unwrap();
        let q = Key::parse("q").unwrap();
        assert_eq!(
            km.resolve(&[Context::Hub, Context::Normal, Context::Global], q),
            Some(Command::Quit)
        );
        // While typing, `q` is text: only input and global bindings apply.
        assert_eq!(km.resolve(&[Context::Input, Context::Global], q), None);
        let ctrl_c = Key::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(
            km.resolve(&[Context::Input, Context::Global], ctrl_c),
            Some(Command::Quit)
        );
    }

    #[test]
    fn shift_is_ignored_for_characters() {
        let km = Keymap::load(&BTreeMap::new()).unwrap();
        let question = Key::new(KeyCode::Char('?'), KeyModifiers::SHIFT);
        assert_eq!(
            km.resolve(&[Context::Normal], question),
            Some(Command::ToggleHelp)
        );
        assert_eq!(
            Key::parse("shift-tab").unwrap(),
            Key::new(KeyCode::BackTab, KeyModifiers::SHIFT)
        );
    }

    #[test]
    fn user_override_replaces_and_help_follows() {
        let user: BTreeMap<String, Vec<BindingSpec>> = toml::from_str(
            "[[normal]]\non = [\"x\"]\nrun = \"quit\"\ndesc = \"Leave\"\n[[normal]]\non = [\"q\"]\nrun = \"cycle-theme\"\ndesc = \"Theme\"\n",
        )
        .unwrap();
        let km = Keymap::load(&user).unwrap();
        assert_eq!(
            km.resolve(&[Context::Normal], Key::parse("q").unwrap()),
            Some(Command::CycleTheme)
        );
        assert_eq!(
            km.keys_for(Context::Normal, Command::Quit),
            vec![Key::parse("x").unwrap()]
        );
        assert!(km.help().iter().any(|e| e.desc == "Leave"));
    }

    #[test]
    fn conflicts_and_bad_keys_are_reported() {
        let user: BTreeMap<String, Vec<BindingSpec>> = toml::from_str(
            "[[normal]]\non = [\"x\"]\nrun = \"quit\"\ndesc = \"a\"\n[[normal]]\non = [\"x\"]\nrun = \"cycle-theme\"\ndesc = \"b\"\n",
        )
        .unwrap();
        let err = Keymap::load(&user).unwrap_err().to_string();
        assert!(err.contains("bound twice"), "{err}");
        let user: BTreeMap<String, Vec<BindingSpec>> =
            toml::from_str("[[nowhere]]\non = [\"x\"]\nrun = \"quit\"\ndesc = \"a\"\n").unwrap();
        assert!(Keymap::load(&user).is_err());
        assert!(Key::parse("ctrl-nokey").is_err());
    }
}
