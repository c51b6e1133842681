//! Errors in each client dialect's own shape.
//!
//! OpenAI clients read `{"error":{"message","type","param","code"}}`; Ollama clients read
//! `{"error":"..."}`. The dialect follows from the route (`/api/...` is Ollama), so middleware
//! (auth, body limit, bad JSON) answers in the shape the client will parse.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

/// Which API family a route belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
    /// Anthropic's Messages API (`/v1/messages`).
    Anthropic,
}

impl Dialect {
    /// `/api/...` routes are Ollama's, `/v1/messages...` Anthropic's; everything else answers
    /// like OpenAI.
    pub fn from_path(path: &str) -> Self {
        if path == "/api" || path.starts_with("/api/") {
            Dialect::Ollama
        } else if path == "/v1/messages" || path.starts_with("/v1/messages/") {
            Dialect::Anthropic
        } else {
            Dialect::OpenAi
        }
    }
}

/// An HTTP error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub dialect: Dialect,
    pub status: StatusCode,
    pub message: String,
    /// OpenAI `type`.
    pub kind: &'static str,
    /// The request field at fault, if any.
    pub param: Option<String>,
    /// OpenAI `code`.
    pub code: Option<&'static str>,
    /// Seconds for `Retry-After` (503 answers).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(dialect: Dialect, status: StatusCode, message: impl Into<String>) -> Self {
        let kind = match status.as_u16() {
            401 => "authentication_error",
            404 | 400 | 413 | 422 => "invalid_request_error",
            503 => "server_busy",
            _ => "server_error",
        };
        Self {
            dialect,
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 naming the field: the message is prefixed with the field unless it already starts
    /// with it.
    pub fn bad_field(dialect: Dialect, field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let message = if message.starts_with(field) {
            message
        } else {
            format!("{field}: {message}")
        };
        let mut e = Self::new(dialect, StatusCode::BAD_REQUEST, message);
        e.param = Some(field.to_string());
        e
    }

    pub fn bad_request(dialect: Dialect, message: impl Into<String>) -> Self {
        Self::new(dialect, StatusCode::BAD_REQUEST, message)
    }

    pub fn model_not_found(dialect: Dialect, name: &str, detail: Option<String>) -> Self {
        let message = match (dialect, detail) {
            (Dialect::Ollama, _) => format!("model '{name}' not found"),
            (_, Some(d)) => format!("The model `{name}` does not exist: {d}"),
            (_, None) => format!("The model `{name}` does not exist"),
        };
        let mut e = Self::new(dialect, StatusCode::NOT_FOUND, message);
        e.param = Some("model".into());
        e.code = Some("model_not_found");
        e
    }

    pub fn busy(dialect: Dialect, retry_after: u64) -> Self {
        let mut e = Self::new(
            dialect,
            StatusCode::SERVICE_UNAVAILABLE,
            "the server's request queue is full; retry after a few seconds, or raise server.max_queue",
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn unauthorized(dialect: Dialect) -> Self {
        let mut e = Self::new(
            dialect,
            StatusCode::UNAUTHORIZED,
            "missing or wrong API key; send it as `Authorization: Bearer KEY` or `x-api-key: KEY`",
        );
        e.code = Some("invalid_api_key");
        e
    }

    pub fn internal(dialect: Dialect, message: impl Into<String>) -> Self {
        Self::new(dialect, StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// Maps an engine failure to the status a client can act on.
    ///
    /// The answer names the model by its API name and says what to do; it never carries what
    /// the engine said about files (paths, bytes read from them, backtraces of the inference
    /// library). The full error goes to the log.
    pub fn from_engine(dialect: Dialect, model: &str, e: EngineError) -> Self {
        let logged = |what: &str| {
            tracing::warn!(model = %model, "{what}: {e}");
        };
        match &e {
            EngineError::NotFound { .. } => {
                logged("model file missing");
                Self::model_not_found(dialect, model, None)
            }
            EngineError::BadParams(msg) => {
                let field = msg.split([' ', ':']).next().unwrap_or_default().to_string();
                Self::bad_field(dialect, &field, msg.clone())
            }
            EngineError::ContextOverflow { .. } => {
                let mut err = Self::bad_request(dialect, e.to_string());
                err.code = Some("context_length_exceeded");
                err.param = Some("messages".into());
                err
            }
            EngineError::KvBudget { .. } => {
                let mut err = Self::bad_request(dialect, e.to_string());
                err.code = Some("context_length_exceeded");
                err.param = Some("max_tokens".into());
                err
            }
            EngineError::Unloaded => {
                let mut err = Self::new(dialect, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.kind = "server_error";
                err
            }
            EngineError::WrongKind {
                actual,
                wanted,
                wanted_kind,
                ..
            } => {
                let mut err = Self::bad_request(
                    dialect,
                    format!("the model `{model}` is {actual} model and cannot be used for {wanted}; pick a {wanted_kind} model"),
                );
                err.param = Some("model".into());
                err
            }
            // The device's own words: no paths, and the numbers a client can act on (a model
            // that does not fit the GPU is 503 so a client may retry once memory is freed).
            EngineError::Device(_) => {
                logged("device");
                let mut err = Self::new(dialect, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.kind = "server_error";
                err
            }
            EngineError::EngineStopped => {
                let mut err = Self::new(dialect, StatusCode::SERVICE_UNAVAILABLE, e.to_string());
                err.kind = "server_error";
                err
            }
            EngineError::UnsupportedArchitecture { arch, supported } => {
                logged("model not loadable");
                let mut err = Self::new(
                    dialect,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the model `{model}` has architecture `{arch}`, which Influence cannot run; it can run: {supported}"),
                );
                err.param = Some("model".into());
                err
            }
            EngineError::UnsupportedQuant { dtype } => {
                logged("model not loadable");
                let mut err = Self::new(
                    dialect,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the model `{model}` uses tensor type {dtype}, which Influence cannot run; use a file quantized as Q4_0, Q8_0, Q4_K_M or Q6_K"),
                );
                err.param = Some("model".into());
                err
            }
            EngineError::Truncated { .. }
            | EngineError::Corrupt { .. }
            | EngineError::MissingTokenizer { .. } => {
                logged("model not loadable");
                let what = match &e {
                    EngineError::Truncated { .. } => "is truncated (an incomplete download?)",
                    EngineError::MissingTokenizer { .. } => "has no usable tokenizer",
                    _ => "is not a valid model file",
                };
                let mut err = Self::new(
                    dialect,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the model `{model}` {what}; run `influence verify {model}` on the server, and see the server log"),
                );
                err.param = Some("model".into());
                err
            }
            EngineError::Refused { reason, .. } => {
                logged("model refused");
                let mut err = Self::new(
                    dialect,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the model `{model}` was refused: {reason}; use its safetensors or GGUF weights instead"),
                );
                err.param = Some("model".into());
                err
            }
            EngineError::TemplateTooExpensive { what, .. } => {
                logged("chat template over budget");
                let mut err = Self::new(
                    dialect,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("the model `{model}`: this model's chat template is too expensive to render ({what}); send a raw prompt, or use another copy of the model"),
                );
                err.param = Some("model".into());
                err
            }
            EngineError::Template(_) => {
                logged("chat template failed");
                Self::internal(
                    dialect,
                    format!("the chat template of `{model}` failed on this conversation; see the server log, or send a raw prompt"),
                )
            }
            EngineError::Candle(_) | EngineError::Tokenizer(_) | EngineError::Io { .. } => {
                logged("generation failed");
                Self::internal(
                    dialect,
                    format!("running `{model}` failed; the details are in the server log"),
                )
            }
        }
    }

    /// The JSON body in this error's dialect.
    pub fn body(&self) -> serde_json::Value {
        match self.dialect {
            Dialect::Ollama => json!({ "error": self.message }),
            Dialect::Anthropic => json!({
                "type": "error",
                "error": {
                    "type": match self.status.as_u16() {
                        400 | 422 => "invalid_request_error",
                        401 => "authentication_error",
                        403 => "permission_error",
                        404 => "not_found_error",
                        413 => "request_too_large",
                        503 => "overloaded_error",
                        _ => "api_error",
                    },
                    "message": self.message,
                }
            }),
            Dialect::OpenAi => json!({
                "error": {
                    "message": self.message,
                    "type": self.kind,
                    "param": self.param,
                    "code": self.code,
                }
            }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// Starting or stopping the listening server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}. Another program may use that port; pick another with --port or server.port")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server stopped with an error: {0}. Check the log and start it again")]
    Serve(String),
}
