//! Errors the engine reports. Every message says what went wrong and what the user can do.

use std::path::PathBuf;

/// Everything that can go wrong while loading a model or running it.
///
/// Cloneable so it can travel inside [`super::GenEvent::Failed`] to any number of listeners.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum EngineError {
    #[error("model file not found: {path}. Check the path, or pull the model first with `influence pull`")]
    NotFound { path: PathBuf },

    #[error("unsupported model architecture `{arch}`; Influence can run: {supported}. Pick a model of a supported family")]
    UnsupportedArchitecture { arch: String, supported: String },

    #[error("{path} is truncated: {reason}. The download is probably incomplete; run `influence verify` or pull the file again")]
    Truncated { path: PathBuf, reason: String },

    #[error("{path} is not a valid model file: {reason}. Re-download it, or check that it is a GGUF file or a safetensors or PyTorch folder")]
    Corrupt { path: PathBuf, reason: String },

    #[error("{path} was refused: {reason}. Use the model's safetensors or GGUF weights instead")]
    Refused { path: PathBuf, reason: String },

    #[error("no usable tokenizer for {path}: the GGUF has no embedded tokenizer and there is no tokenizer.json next to it. Download the model's tokenizer.json into the same folder")]
    MissingTokenizer { path: PathBuf },

    #[error("the prompt needs {prompt_tokens} tokens but the model's context holds {context}. Shorten the conversation, lower max_tokens, or use the drop-oldest context policy")]
    ContextOverflow {
        prompt_tokens: usize,
        context: usize,
    },

    #[error("{path} is {actual} model and cannot be used for {wanted}. Pick a {wanted_kind} model instead")]
    WrongKind {
        path: PathBuf,
        actual: String,
        wanted: String,
        wanted_kind: String,
    },

    #[error("this request needs {need} KV cache positions (prompt {prompt_tokens} + max_tokens {max_tokens}{}) but the engine's KV budget is {budget}. Lower max_tokens, shorten the prompt, or raise engine.kv_budget", state_note(*.state_positions))]
    KvBudget {
        need: usize,
        prompt_tokens: usize,
        max_tokens: usize,
        /// A recurrent model's state and checkpoints, counted as the positions of as many bytes.
        state_positions: usize,
        budget: usize,
    },

    #[error("the model was unloaded while this request was generating. Send the request again")]
    Unloaded,

    #[error("invalid generation parameters: {0}")]
    BadParams(String),

    #[error("inference failed: {0}. This is a bug or an unsupported tensor layout; please report it with the model name")]
    Candle(String),

    #[error("the chat template failed: {0}. Use raw prompts, or a model whose template Influence can render")]
    Template(String),

    #[error("{}: this model's chat template is too expensive to render ({what}). The template may have been made to hang the app; send a raw prompt, or use another copy of the model", path.display())]
    TemplateTooExpensive { path: PathBuf, what: String },

    #[error("tokenizer error: {0}")]
    Tokenizer(String),

    #[error("the model's tensor type {dtype} is not supported by the CPU backend. Use a file quantized as Q4_0, Q8_0, Q4_K_M or Q6_K")]
    UnsupportedQuant { dtype: String },

    #[error(
        "cannot read {path}: {reason}. Check the file permissions and that the disk is mounted"
    )]
    Io { path: PathBuf, reason: String },

    #[error("{0}")]
    Device(String),

    #[error("the inference engine has stopped (its thread exited). Restart Influence; if it keeps happening, check the log for a crash")]
    EngineStopped,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Candle(e.to_string())
    }
}

fn state_note(positions: usize) -> String {
    if positions == 0 {
        String::new()
    } else {
        format!(" + {positions} for the recurrent state and its turn checkpoints")
    }
}
