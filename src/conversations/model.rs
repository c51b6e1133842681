//! Conversation model and the pure operations the chat performs on it.
//!
//! Nothing here touches the disk or the clock except through `now_rfc3339`, so every edit the
//! chat makes can be tested directly.
//!
//! Two kinds of history are kept instead of being thrown away:
//! - **alternatives**: regenerating an answer keeps the earlier answers on the message; they
//!   are paged in creation order. The shown answer lives in `content`, the others in
//!   `alternatives`, and `active_alt` is the shown answer's position in that order.
//! - **branches**: editing a user message and resending keeps the whole old tail (the old
//!   message and everything after it). The branches hang off the first message of the active
//!   tail, in creation order, with `active_branch` the position of the active tail.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::{ConversationError, Result};

/// Version of the JSON file format written by this module.
pub const FORMAT_VERSION: u32 = 1;

const AUTO_TITLE_CHARS: usize = 60;
pub(crate) const DEFAULT_TITLE: &str = "New chat";

/// The same roles the engine takes, so a conversation is sent without conversion.
pub use crate::engine::Role;

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Generation statistics stored with an answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageStats {
    pub model: String,
    /// Time to first token.
    pub ttft_ms: u64,
    /// Decode speed.
    pub tok_s: f64,
    /// Tokens generated.
    pub tokens: u64,
}

/// An answer that is not the one currently shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alternative {
    pub content: String,
    #[serde(default)]
    pub stats: Option<MessageStats>,
    #[serde(default)]
    pub interrupted: bool,
    pub created: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub role: Role,
    pub content: String,
    pub created: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alternatives: Vec<Alternative>,
    #[serde(default)]
    pub active_alt: usize,
    /// Other tails of the conversation starting at this message (see the module docs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branches: Vec<Vec<Message>>,
    #[serde(default)]
    pub active_branch: usize,
    #[serde(default)]
    pub stats: Option<MessageStats>,
    /// Generation was stopped or failed before the model finished.
    #[serde(default)]
    pub interrupted: bool,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            id: new_id(),
            role,
            content: content.into(),
            created: now_rfc3339(),
            alternatives: Vec::new(),
            active_alt: 0,
            branches: Vec::new(),
            active_branch: 0,
            stats: None,
            interrupted: false,
        }
    }

    /// (1-based position of the shown answer, number of answers).
    pub fn alternative_position(&self) -> (usize, usize) {
        (self.active_alt + 1, self.alternatives.len() + 1)
    }

    /// (1-based position of the active tail, number of tails) for a message that starts
    /// branches.
    pub fn branch_position(&self) -> (usize, usize) {
        (self.active_branch + 1, self.branches.len() + 1)
    }

    fn current_answer(&self) -> Alternative {
        Alternative {
            content: self.content.clone(),
            stats: self.stats.clone(),
            interrupted: self.interrupted,
            created: self.created.clone(),
        }
    }

    fn show(&mut self, alt: Alternative) {
        self.content = alt.content;
        self.stats = alt.stats;
        self.interrupted = alt.interrupted;
        self.created = alt.created;
    }
}

/// One turn of the active path in an engine-agnostic form, ready for a chat template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    pub role: Role,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Prev,
    Next,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    #[serde(default = "default_version")]
    pub version: u32,
    pub id: String,
    pub title: String,
    pub created: String,
    pub updated: String,
    #[serde(default)]
    pub model: Option<String>,
    /// Snapshot of the generation parameters (the engine's params serialized as JSON).
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub messages: Vec<Message>,
}

fn default_version() -> u32 {
    FORMAT_VERSION
}

impl Default for Conversation {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversation {
    pub fn new() -> Self {
        let now = now_rfc3339();
        Self {
            version: FORMAT_VERSION,
            id: new_id(),
            title: DEFAULT_TITLE.into(),
            created: now.clone(),
            updated: now,
            model: None,
            params: serde_json::Value::Null,
            system_prompt: None,
            messages: Vec::new(),
        }
    }

    pub fn touch(&mut self) {
        self.updated = now_rfc3339();
    }

    /// Appends a user message; the first one also names an untitled conversation.
    pub fn push_user(&mut self, content: impl Into<String>) -> usize {
        let content = content.into();
        if self.title == DEFAULT_TITLE || self.title.trim().is_empty() {
            if let Some(title) = auto_title(&content) {
                self.title = title;
            }
        }
        self.messages.push(Message::new(Role::User, content));
        self.touch();
        self.messages.len() - 1
    }

    /// Appends an empty assistant message that tokens will stream into.
    pub fn start_assistant(&mut self) -> usize {
        self.messages.push(Message::new(Role::Assistant, ""));
        self.touch();
        self.messages.len() - 1
    }

    fn answer_in_progress(&mut self) -> Result<&mut Message> {
        match self.messages.last_mut() {
            Some(m) if m.role == Role::Assistant => Ok(m),
            _ => Err(ConversationError::NoAnswerInProgress),
        }
    }

    pub fn append_token(&mut self, text: &str) -> Result<()> {
        self.answer_in_progress()?.content.push_str(text);
        Ok(())
    }

    pub fn finish_assistant(&mut self, stats: MessageStats) -> Result<()> {
        let model = stats.model.clone();
        let m = self.answer_in_progress()?;
        m.stats = Some(stats);
        m.interrupted = false;
        if !model.is_empty() {
            self.model = Some(model);
        }
        self.touch();
        Ok(())
    }

    /// Marks the answer being generated as stopped early; its text is kept.
    pub fn mark_interrupted(&mut self, stats: Option<MessageStats>) -> Result<()> {
        let m = self.answer_in_progress()?;
        m.interrupted = true;
        if stats.is_some() {
            m.stats = stats;
        }
        self.touch();
        Ok(())
    }

    /// Keeps the last answer as an alternative and empties it for a new generation. Returns
    /// the turns to send. When the last message is a user message (its answer failed to
    /// start) an empty assistant message is added.
    pub fn regenerate(&mut self) -> Result<Vec<ChatTurn>> {
        match self.messages.last().map(|m| m.role) {
            None | Some(Role::System) => return Err(ConversationError::NothingToRegenerate),
            Some(Role::User) => {
                self.start_assistant();
            }
            Some(Role::Assistant) => {
                if self.messages.len() < 2 {
                    return Err(ConversationError::NothingToRegenerate);
                }
                let m = self.messages.last_mut().expect("checked above");
                if !m.content.is_empty() || m.stats.is_some() {
                    let old = m.current_answer();
                    let at = m.active_alt.min(m.alternatives.len());
                    m.alternatives.insert(at, old);
                }
                m.active_alt = m.alternatives.len();
                m.show(Alternative {
                    content: String::new(),
                    stats: None,
                    interrupted: false,
                    created: now_rfc3339(),
                });
                self.touch();
            }
        }
        Ok(self.history())
    }

    /// Shows the previous or next answer of message `index`. Returns whether it changed.
    pub fn page_alternative(&mut self, index: usize, page: Page) -> Result<bool> {
        let len = self.messages.len();
        let m = self
            .messages
            .get_mut(index)
            .ok_or(ConversationError::NoSuchMessage { index, len })?;
        let a = m.active_alt.min(m.alternatives.len());
        let target = match page {
            Page::Prev if a > 0 => a - 1,
            Page::Next if a < m.alternatives.len() => a,
            _ => return Ok(false),
        };
        // The shown answer takes the neighbour's slot, which keeps creation order.
        let current = m.current_answer();
        let other = std::mem::replace(&mut m.alternatives[target], current);
        m.show(other);
        m.active_alt = match page {
            Page::Prev => a - 1,
            Page::Next => a + 1,
        };
        self.touch();
        Ok(true)
    }

    /// Replaces user message `index` with `content` and drops what followed from the active
    /// path; the old message and its tail are kept as a branch. Returns the turns to send.
    pub fn edit_user(&mut self, index: usize, content: impl Into<String>) -> Result<Vec<ChatTurn>> {
        let len = self.messages.len();
        let role = self
            .messages
            .get(index)
            .ok_or(ConversationError::NoSuchMessage { index, len })?
            .role;
        if role != Role::User {
            return Err(ConversationError::NotUserMessage { index, role });
        }
        let mut old_tail = self.messages.split_off(index);
        let mut branches = std::mem::take(&mut old_tail[0].branches);
        let at = old_tail[0].active_branch.min(branches.len());
        old_tail[0].active_branch = 0;
        branches.insert(at, old_tail);
        let mut edited = Message::new(Role::User, content);
        edited.active_branch = branches.len();
        edited.branches = branches;
        self.messages.push(edited);
        self.touch();
        Ok(self.history())
    }

    /// Replaces the text of assistant message `index` (a user correcting the model). The
    /// previous text stays as an alternative answer, so the edit can be paged back.
    pub fn edit_assistant(&mut self, index: usize, content: impl Into<String>) -> Result<()> {
        let len = self.messages.len();
        let m = self
            .messages
            .get_mut(index)
            .ok_or(ConversationError::NoSuchMessage { index, len })?;
        if m.role != Role::Assistant {
            return Err(ConversationError::NotAssistantMessage {
                index,
                role: m.role,
            });
        }
        let old = m.current_answer();
        let at = m.active_alt.min(m.alternatives.len());
        m.alternatives.insert(at, old);
        m.active_alt = m.alternatives.len();
        m.show(Alternative {
            content: content.into(),
            stats: None,
            interrupted: false,
            created: now_rfc3339(),
        });
        self.touch();
        Ok(())
    }

    /// Lets the model carry on with the last answer (after a stop or a length limit): the
    /// answer stays in place and new tokens are appended to it. Returns the turns to send,
    /// ending with that partial answer.
    pub fn continue_answer(&mut self) -> Result<Vec<ChatTurn>> {
        match self.messages.last_mut() {
            Some(m) if m.role == Role::Assistant && !m.content.is_empty() => {
                m.interrupted = false;
                m.stats = None;
            }
            _ => return Err(ConversationError::NothingToContinue),
        }
        self.touch();
        Ok(self.history())
    }

    /// Switches the tail starting at message `index` to the previous or next branch. Returns
    /// whether it changed.
    pub fn page_branch(&mut self, index: usize, page: Page) -> Result<bool> {
        let len = self.messages.len();
        let m = self
            .messages
            .get(index)
            .ok_or(ConversationError::NoSuchMessage { index, len })?;
        let a = m.active_branch.min(m.branches.len());
        let target = match page {
            Page::Prev if a > 0 => a - 1,
            Page::Next if a < m.branches.len() => a,
            _ => return Ok(false),
        };
        let mut tail = self.messages.split_off(index);
        let mut branches = std::mem::take(&mut tail[0].branches);
        tail[0].active_branch = 0;
        let mut shown = std::mem::replace(&mut branches[target], tail);
        shown[0].branches = branches;
        shown[0].active_branch = match page {
            Page::Prev => a - 1,
            Page::Next => a + 1,
        };
        self.messages.extend(shown);
        self.touch();
        Ok(true)
    }

    /// Removes every message; title, model, parameters and system prompt stay.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.touch();
    }

    pub fn rename(&mut self, title: impl Into<String>) {
        let title = title.into();
        let title = title.trim();
        self.title = if title.is_empty() {
            DEFAULT_TITLE.to_string()
        } else {
            title.to_string()
        };
        self.touch();
    }

    /// The active path as turns for the model: the system prompt first, then every message
    /// except empty answers (one being generated, or one that failed before its first token).
    pub fn history(&self) -> Vec<ChatTurn> {
        let mut turns = Vec::with_capacity(self.messages.len() + 1);
        if let Some(sp) = self.system_prompt.as_ref().filter(|s| !s.trim().is_empty()) {
            turns.push(ChatTurn {
                role: Role::System,
                content: sp.clone(),
            });
        }
        turns.extend(
            self.messages
                .iter()
                .filter(|m| !(m.role == Role::Assistant && m.content.is_empty()))
                .map(|m| ChatTurn {
                    role: m.role,
                    content: m.content.clone(),
                }),
        );
        turns
    }

    /// Checks what serde cannot: ids, positions and versions. Used on import and load.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.version > FORMAT_VERSION {
            return Err(format!(
                "file format version {} is newer than this Influence understands ({FORMAT_VERSION}); update Influence",
                self.version
            ));
        }
        if !is_valid_id(&self.id) {
            return Err(format!("invalid id {:?}", self.id));
        }
        fn check(messages: &[Message], depth: usize) -> std::result::Result<(), String> {
            if depth > 64 {
                return Err("branches are nested too deeply".into());
            }
            for (i, m) in messages.iter().enumerate() {
                if m.active_alt > m.alternatives.len() {
                    return Err(format!(
                        "message {i} shows answer {} of {}",
                        m.active_alt + 1,
                        m.alternatives.len() + 1
                    ));
                }
                if m.active_branch > m.branches.len() {
                    return Err(format!(
                        "message {i} shows branch {} of {}",
                        m.active_branch + 1,
                        m.branches.len() + 1
                    ));
                }
                for b in &m.branches {
                    if b.is_empty() {
                        return Err(format!("message {i} has an empty branch"));
                    }
                    check(b, depth + 1)?;
                }
            }
            Ok(())
        }
        check(&self.messages, 0)
    }
}

fn auto_title(content: &str) -> Option<String> {
    let line = content.lines().map(str::trim).find(|l| !l.is_empty())?;
    let mut title: String = line.chars().take(AUTO_TITLE_CHARS).collect();
    if line.chars().count() > AUTO_TITLE_CHARS {
        title.push('…');
    }
    Some(title)
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time-ordered, filename-safe id: `YYYYMMDD-HHMMSS-mmm-xxxxxxxx` (UTC + 32 random bits).
pub fn new_id() -> String {
    let now = chrono::Utc::now();
    let r: u32 = rand::rng().random();
    format!("{}-{r:08x}", now.format("%Y%m%d-%H%M%S-%3f"))
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 100
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(tokens: u64) -> MessageStats {
        MessageStats {
            model: "smollm2".into(),
            ttft_ms: 120,
            tok_s: 42.5,
            tokens,
        }
    }

    fn chat() -> Conversation {
        let mut c = Conversation::new();
        c.push_user("What is Rust?");
        c.start_assistant();
        c.append_token("A ").unwrap();
        c.append_token("language.").unwrap();
        c.finish_assistant(stats(2)).unwrap();
        c
    }

    fn contents(c: &Conversation) -> Vec<&str> {
        c.messages.iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn ids_are_filename_safe_and_unique() {
        let a = new_id();
        let b = new_id();
        assert_ne!(a, b);
        assert!(is_valid_id(&a), "{a}");
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id(""));
    }

    #[test]
    fn push_user_titles_an_untitled_conversation_once() {
        let mut c = Conversation::new();
        c.push_user("\n  Explain   borrowing\nplease");
        assert_eq!(c.title, "Explain   borrowing");
        c.push_user("second");
        assert_eq!(c.title, "Explain   borrowing");
        let mut long = Conversation::new();
        long.push_user("x".repeat(100));
        assert_eq!(long.title.chars().count(), AUTO_TITLE_CHARS + 1);
    }

    #[test]
    fn streaming_answer_and_stats() {
        let c = chat();
        assert_eq!(contents(&c), ["What is Rust?", "A language."]);
        assert_eq!(c.messages[1].stats, Some(stats(2)));
        assert_eq!(c.model.as_deref(), Some("smollm2"));
        assert!(!c.messages[1].interrupted);
    }

    #[test]
    fn tokens_need_an_answer_in_progress() {
        let mut c = Conversation::new();
        assert!(matches!(
            c.append_token("x"),
            Err(ConversationError::NoAnswerInProgress)
        ));
        c.push_user("hi");
        assert!(c.finish_assistant(stats(1)).is_err());
        assert!(c.mark_interrupted(None).is_err());
    }

    #[test]
    fn interrupted_answer_keeps_text() {
        let mut c = Conversation::new();
        c.push_user("hi");
        c.start_assistant();
        c.append_token("partial").unwrap();
        c.mark_interrupted(Some(stats(1))).unwrap();
        assert!(c.messages[1].interrupted);
        assert_eq!(c.messages[1].content, "partial");
        assert_eq!(c.history().len(), 2);
    }

    #[test]
    fn regenerate_keeps_old_answers_and_pages_in_order() {
        let mut c = chat();
        let turns = c.regenerate().unwrap();
        assert_eq!(
            turns,
            [ChatTurn {
                role: Role::User,
                content: "What is Rust?".into()
            }]
        );
        assert_eq!(c.messages[1].content, "");
        c.append_token("Second answer").unwrap();
        c.finish_assistant(stats(2)).unwrap();
        c.regenerate().unwrap();
        c.append_token("Third answer").unwrap();
        let m = &c.messages[1];
        assert_eq!(m.alternative_position(), (3, 3));

        assert!(c.page_alternative(1, Page::Prev).unwrap());
        assert_eq!(c.messages[1].content, "Second answer");
        assert!(c.page_alternative(1, Page::Prev).unwrap());
        assert_eq!(c.messages[1].content, "A language.");
        assert_eq!(c.messages[1].stats, Some(stats(2)));
        assert_eq!(c.messages[1].alternative_position(), (1, 3));
        assert!(!c.page_alternative(1, Page::Prev).unwrap());
        assert!(c.page_alternative(1, Page::Next).unwrap());
        assert!(c.page_alternative(1, Page::Next).unwrap());
        assert_eq!(c.messages[1].content, "Third answer");
        assert!(!c.page_alternative(1, Page::Next).unwrap());
        assert!(c.page_alternative(5, Page::Next).is_err());

        // Regenerating while an older answer is shown keeps every answer.
        c.page_alternative(1, Page::Prev).unwrap();
        c.regenerate().unwrap();
        let m = &c.messages[1];
        let mut all: Vec<_> = m.alternatives.iter().map(|a| a.content.clone()).collect();
        all.sort();
        assert_eq!(all, ["A language.", "Second answer", "Third answer"]);
        assert_eq!(m.alternative_position(), (4, 4));
    }

    #[test]
    fn regenerate_after_a_failed_start_adds_an_answer() {
        let mut c = Conversation::new();
        assert!(matches!(
            c.regenerate(),
            Err(ConversationError::NothingToRegenerate)
        ));
        c.push_user("hello");
        let turns = c.regenerate().unwrap();
        assert_eq!(turns.len(), 1);
        assert_eq!(c.messages.len(), 2);
        assert_eq!(c.messages[1].role, Role::Assistant);
    }

    #[test]
    fn edit_keeps_the_old_branch_and_pages_between_tails() {
        let mut c = chat();
        c.push_user("And Go?");
        c.start_assistant();
        c.append_token("Also a language.").unwrap();

        let turns = c.edit_user(0, "What is Zig?").unwrap();
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].content, "What is Zig?");
        assert_eq!(contents(&c), ["What is Zig?"]);
        assert_eq!(c.messages[0].branch_position(), (2, 2));
        c.start_assistant();
        c.append_token("Zig answer").unwrap();

        assert!(c.page_branch(0, Page::Prev).unwrap());
        assert_eq!(
            contents(&c),
            [
                "What is Rust?",
                "A language.",
                "And Go?",
                "Also a language."
            ]
        );
        assert_eq!(c.messages[0].branch_position(), (1, 2));
        assert!(!c.page_branch(0, Page::Prev).unwrap());
        assert!(c.page_branch(0, Page::Next).unwrap());
        assert_eq!(contents(&c), ["What is Zig?", "Zig answer"]);

        // Editing again from an older branch keeps all three tails.
        c.page_branch(0, Page::Prev).unwrap();
        c.edit_user(0, "What is C?").unwrap();
        assert_eq!(c.messages[0].branch_position(), (3, 3));
        let heads: Vec<_> = c.messages[0]
            .branches
            .iter()
            .map(|b| b[0].content.as_str())
            .collect();
        assert_eq!(heads, ["What is Rust?", "What is Zig?"]);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn edit_rejects_assistant_and_missing_messages() {
        let mut c = chat();
        assert!(matches!(
            c.edit_user(1, "x"),
            Err(ConversationError::NotUserMessage { index: 1, .. })
        ));
        assert!(matches!(
            c.edit_user(9, "x"),
            Err(ConversationError::NoSuchMessage { index: 9, len: 2 })
        ));
        assert_eq!(contents(&c), ["What is Rust?", "A language."]);
    }

    #[test]
    fn edit_in_the_middle_branches_the_tail() {
        let mut c = chat();
        c.push_user("Second question");
        c.start_assistant();
        c.append_token("Second answer").unwrap();
        c.edit_user(2, "Changed question").unwrap();
        assert_eq!(
            contents(&c),
            ["What is Rust?", "A language.", "Changed question"]
        );
        assert_eq!(c.messages[2].branches[0].len(), 2);
    }

    #[test]
    fn edit_assistant_keeps_the_old_text_as_an_alternative() {
        let mut c = chat();
        c.edit_assistant(1, "Corrected.").unwrap();
        assert_eq!(c.messages[1].content, "Corrected.");
        assert_eq!(c.messages[1].stats, None);
        assert_eq!(c.messages[1].alternative_position(), (2, 2));
        c.page_alternative(1, Page::Prev).unwrap();
        assert_eq!(c.messages[1].content, "A language.");
        assert!(matches!(
            c.edit_assistant(0, "x"),
            Err(ConversationError::NotAssistantMessage { index: 0, .. })
        ));
    }

    #[test]
    fn continue_answer_appends_to_the_partial_answer() {
        let mut c = Conversation::new();
        c.push_user("count");
        assert!(matches!(
            c.continue_answer(),
            Err(ConversationError::NothingToContinue)
        ));
        c.start_assistant();
        c.append_token("1, 2,").unwrap();
        c.mark_interrupted(None).unwrap();
        let turns = c.continue_answer().unwrap();
        assert_eq!(turns.last().unwrap().content, "1, 2,");
        assert!(!c.messages[1].interrupted);
        c.append_token(" 3").unwrap();
        assert_eq!(c.messages[1].content, "1, 2, 3");
    }

    #[test]
    fn history_includes_system_prompt_and_skips_empty_answers() {
        let mut c = chat();
        c.system_prompt = Some("Be brief.".into());
        c.push_user("More?");
        c.start_assistant();
        let h = c.history();
        let roles: Vec<_> = h.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::User]
        );
    }

    #[test]
    fn clear_and_rename() {
        let mut c = chat();
        c.system_prompt = Some("sys".into());
        c.clear();
        assert!(c.messages.is_empty());
        assert_eq!(c.system_prompt.as_deref(), Some("sys"));
        c.rename("  My chat ");
        assert_eq!(c.title, "My chat");
        c.rename("   ");
        assert_eq!(c.title, DEFAULT_TITLE);
    }

    #[test]
    fn validate_catches_bad_positions_and_versions() {
        let mut c = chat();
        c.messages[1].active_alt = 3;
        assert!(c.validate().is_err());
        let mut c = chat();
        c.version = FORMAT_VERSION + 1;
        assert!(c.validate().unwrap_err().contains("newer"));
        let mut c = chat();
        c.id = "a/b".into();
        assert!(c.validate().is_err());
    }
}
