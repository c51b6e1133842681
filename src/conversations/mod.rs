//! Chat history: the conversation model with its pure editing operations (regenerate keeps
//! earlier answers, editing a user message keeps the old branch), a folder store with one
//! JSON file per conversation written atomically, search, and Markdown/JSON export.

mod export;
mod model;
mod store;

pub use export::{export_json, export_markdown, import_json};
pub use model::{
    new_id, now_rfc3339, Alternative, ChatTurn, Conversation, Message, MessageStats, Page, Role,
    FORMAT_VERSION,
};
pub use store::{ConversationStore, ConversationSummary, LoadError, SearchHit};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConversationError {
    #[error("could not read the conversations folder {path}: {source}; check that it exists and is readable")]
    ReadDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not read conversation file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid conversation file ({reason}); it was left untouched, fix or remove it")]
    Corrupt { path: PathBuf, reason: String },
    #[error("could not save the conversation to {path}: {source}; check free disk space and permissions")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not delete {path}: {source}")]
    Delete {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to overwrite {path}: it holds a conversation that failed to load; move it away first")]
    WouldOverwriteCorrupt { path: PathBuf },
    #[error("no saved conversation has the id {0:?}")]
    NotFound(String),
    #[error("{0:?} is not a valid conversation id (use letters, digits, '-' and '_', at most 100 characters)")]
    InvalidId(String),
    #[error("cannot import: {0}")]
    Import(String),
    #[error("message {index} does not exist (the conversation has {len} messages)")]
    NoSuchMessage { index: usize, len: usize },
    #[error("message {index} is a {role} message; only user messages can be edited and resent")]
    NotUserMessage { index: usize, role: Role },
    #[error("message {index} is a {role} message; only assistant answers can be edited in place")]
    NotAssistantMessage { index: usize, role: Role },
    #[error("nothing to continue: the last message is not a partial answer")]
    NothingToContinue,
    #[error("nothing to regenerate: send a message first")]
    NothingToRegenerate,
    #[error("the last message is not an assistant answer being generated")]
    NoAnswerInProgress,
}

pub type Result<T> = std::result::Result<T, ConversationError>;
