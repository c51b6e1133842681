//! Plain data exchanged with the engine thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{EngineError, GenParams};

/// What a loaded model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// Text generation (chat / completion).
    Generate,
    /// Sentence embeddings.
    Embed,
}

/// Facts about a loaded model, for `/api/ps`, the UI and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Canonical path of the model file or folder, as a string; the key used for unload etc.
    pub id: String,
    /// Architecture as stored in the file (`llama`, `qwen2`, `bert`, ...).
    pub arch: String,
    pub kind: ModelKind,
    /// Maximum tokens (prompt + generated) the model supports.
    pub context_length: usize,
    pub n_params: u64,
    /// Dominant weight type, e.g. `Q4_1`, `Q8_0`, `F32`.
    pub quant: String,
    /// Set when most weights use a quant type that candle runs slowly on CPU.
    pub slow_quant_warning: Option<String>,
    /// The Jinja source of the chat template in use (the model's own, or the built-in
    /// fallback); `None` for embedding models. The API reads it to learn the model's tool-call
    /// and reasoning conventions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<String>,
    /// On a GPU: the layers there and the model's layers (`engine.gpu_layers` as applied);
    /// `None` on the CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_layers: Option<(usize, usize)>,
}

/// Chat roles, serialised lowercase like the OpenAI API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// The input of a generation: a conversation rendered with the model's chat template, or text
/// fed to the model as is.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<ChatMessage>),
    Raw(String),
    /// Messages as JSON objects for the chat template (they may carry `tool_calls`,
    /// `tool_call_id` and other fields templates read), plus extra template variables such as
    /// `tools`.
    Template {
        messages: Vec<serde_json::Value>,
        vars: serde_json::Map<String, serde_json::Value>,
        /// The start of the answer, written after the generation prompt; the model continues
        /// from it (how the API makes a model call a tool).
        prefill: String,
    },
}

#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Path of the model; loaded on demand if it is not resident.
    pub model: PathBuf,
    pub prompt: Prompt,
    pub params: GenParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// End-of-sequence token, template end token or a user stop string.
    Stop,
    /// `max_tokens` reached or the context is full.
    Length,
    /// Cancelled through [`CancelToken`] or by dropping the event receiver.
    Cancelled,
}

/// Timings and counters of one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenStats {
    /// Tokens of the full prompt, including those served from the KV cache.
    pub prompt_tokens: usize,
    /// Prompt tokens whose keys/values were reused from the previous request.
    pub cached_tokens: usize,
    pub generated_tokens: usize,
    /// Request start to the first token event.
    pub ttft_ms: f64,
    /// Time spent in prefill of the uncached prompt suffix.
    pub prompt_ms: f64,
    /// Time from the first generated token to the end.
    pub gen_ms: f64,
    /// Uncached prompt tokens per second of prefill.
    pub prompt_tok_s: f64,
    pub gen_tok_s: f64,
    pub finish: FinishReason,
}

/// What a generation reports, in order: `Started`, zero or more `Token`, then `Done` or `Failed`.
#[derive(Debug, Clone, PartialEq)]
pub enum GenEvent {
    Started {
        prompt_tokens: usize,
        cached_tokens: usize,
        /// Oldest non-system messages dropped to fit the context (`ContextPolicy::DropOldest`).
        dropped_messages: usize,
    },
    /// One generated token; `text` holds only complete UTF-8 (may be empty while a multi-byte
    /// character is still pending).
    Token {
        id: u32,
        text: String,
        /// Its log-probability, when the request asked for them ([`GenParams::logprobs`]).
        logprob: Option<Box<TokenLogprob>>,
    },
    Done(GenStats),
    Failed(EngineError),
}

/// A generated token's log-probability and the most likely tokens at its position, from the
/// distribution the sampler drew from (after the repeat penalty and any constraint, before
/// temperature and truncation).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub id: u32,
    /// The token decoded on its own (a partial UTF-8 character shows as U+FFFD).
    pub text: String,
    pub logprob: f32,
    /// Most likely first.
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub id: u32,
    pub text: String,
    pub logprob: f32,
}

/// Shared flag asking a running generation to stop; checked before every token and between
/// prefill chunks.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A running generation: read `events` until `Done`/`Failed`. Dropping `events` cancels too.
#[derive(Debug)]
pub struct Generation {
    pub events: tokio::sync::mpsc::UnboundedReceiver<GenEvent>,
    pub cancel: CancelToken,
}

impl Generation {
    /// Collects the whole generation from sync code (CLI, tests): the text and the final stats.
    ///
    /// Must not be called from inside a tokio runtime worker (uses `blocking_recv`).
    pub fn collect_blocking(mut self) -> Result<Collected, EngineError> {
        let mut out = Collected::default();
        while let Some(ev) = self.events.blocking_recv() {
            match ev {
                GenEvent::Started {
                    dropped_messages, ..
                } => out.dropped_messages = dropped_messages,
                GenEvent::Token { id, text, .. } => {
                    out.ids.push(id);
                    out.text.push_str(&text);
                }
                GenEvent::Done(stats) => {
                    out.stats = Some(stats);
                    return Ok(out);
                }
                GenEvent::Failed(e) => return Err(e),
            }
        }
        Err(EngineError::EngineStopped)
    }
}

/// Result of [`Generation::collect_blocking`].
#[derive(Debug, Clone, Default)]
pub struct Collected {
    pub text: String,
    pub ids: Vec<u32>,
    pub dropped_messages: usize,
    pub stats: Option<GenStats>,
}
