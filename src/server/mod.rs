//! OpenAI-, Ollama- and Anthropic-compatible HTTP API over the shared engine.
//!
//! Every generating route decodes its request into the dialect-neutral [`core::GenRequest`] and
//! encodes the neutral [`core::Event`]s in its own wire format; tool calls and reasoning are
//! handled once, in [`core`], [`tools`] and [`reasoning`].
//!
//! [`router`] builds the whole API as an axum `Router` without a socket, so tests drive it with
//! `tower::ServiceExt::oneshot`; [`control::ServerHandle`] binds it to an address for the TUI's
//! toggle and for headless `influence --serve`.
//!
//! Layers, outside in: CORS (only when origins are configured), body size limit, metrics, API key,
//! then the route. Every error, including a bad key, a body over the limit and malformed JSON,
//! comes back in the dialect the route speaks (see [`error::Dialect`]).

pub mod anthropic;
pub mod auth;
pub mod control;
pub mod core;
pub mod error;
pub mod extract;
pub mod gbnf;
pub mod gen;
pub mod legacy;
pub mod metrics;
pub mod models;
pub mod ollama;
pub mod openai;
pub mod ps;
pub mod pull;
pub mod queue;
pub mod reasoning;
pub mod responses;
pub mod runtime;
pub mod structured;
pub mod tools;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, Method};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::engine::{ContextPolicy, EngineHandle, GenParams, ModelInfo};
use crate::library::Library;

pub use control::ServerHandle;
pub use error::{ApiError, Dialect, ServerError};

use metrics::Metrics;
use queue::GenQueue;

/// How the server behaves; [`ServerOptions::from_config`] fills it from the user's config.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Required from clients on every route but `/health` when set.
    pub api_key: Option<String>,
    /// Origins allowed by CORS (`*` for any); empty turns CORS off.
    pub cors_origins: Vec<String>,
    /// Requests that may wait while `parallel` generate; more get 503.
    pub max_queue: usize,
    /// Generations that run at once (the engine's `parallel`).
    pub parallel: usize,
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit: usize,
    /// What requests naming no model (or `default`) get: a library name or a model path.
    pub default_model: Option<String>,
    /// Sampling defaults for fields a request leaves out.
    pub defaults: GenParams,
    /// The `Retry-After` a 503 carries, in seconds.
    pub retry_after_secs: u64,
    /// Hub access for `/api/pull`; without it the route answers 501.
    pub pull: Option<pull::PullSettings>,
    /// Where a bound server records its address for `influence ps` ([`runtime`]); none in
    /// tests that bind their own.
    pub runtime_dir: Option<std::path::PathBuf>,
    /// Gets a copy of every `/api/pull` download event and a handle on each pull's queue, so the
    /// app's Downloads pane shows and steers pulls clients start.
    pub pull_observer: Option<pull::PullObserver>,
    /// Requests may name model files by path (`server.allow_paths`); otherwise only library
    /// names resolve and a path gets 404.
    pub allow_paths: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            api_key: None,
            cors_origins: Vec::new(),
            max_queue: 16,
            parallel: 1,
            body_limit: 2 * 1024 * 1024,
            default_model: None,
            defaults: GenParams::default(),
            retry_after_secs: 2,
            pull: None,
            runtime_dir: None,
            pull_observer: None,
            allow_paths: false,
        }
    }
}

impl ServerOptions {
    /// The `[server]` section, sampling defaults from `[chat]` and the context policy from
    /// `[engine]`.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let chat = &cfg.chat;
        let defaults = GenParams {
            temperature: chat.temperature,
            top_p: chat.top_p,
            top_k: chat.top_k,
            min_p: chat.min_p,
            repeat_penalty: chat.repeat_penalty,
            max_tokens: chat.max_tokens,
            seed: chat.seed.trim().parse().ok(),
            context_policy: if cfg.engine.context_policy == "drop-oldest" {
                ContextPolicy::DropOldest
            } else {
                ContextPolicy::Error
            },
            ..GenParams::default()
        };
        Self {
            api_key: Some(cfg.server.api_key.clone()).filter(|k| !k.is_empty()),
            cors_origins: cfg.server.cors_origins.clone(),
            max_queue: cfg.server.max_queue,
            parallel: cfg.engine.parallel,
            body_limit: cfg.server.body_limit,
            default_model: None,
            defaults,
            retry_after_secs: 2,
            pull: None,
            runtime_dir: None,
            pull_observer: None,
            allow_paths: cfg.server.allow_paths,
        }
    }
}

struct Inner {
    engine: EngineHandle,
    library: Arc<RwLock<Library>>,
    options: ServerOptions,
    queue: GenQueue,
    metrics: Arc<Metrics>,
    started: Instant,
    /// Models this server saw loaded, for `/api/ps` while the engine is busy generating.
    last_loaded: Mutex<Vec<ModelInfo>>,
    /// What each chat template supports, by template source.
    caps: Mutex<std::collections::HashMap<String, Arc<core::Caps>>>,
}

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ServerCtx(Arc<Inner>);

impl std::fmt::Debug for ServerCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCtx")
            .field("options", &self.0.options)
            .finish_non_exhaustive()
    }
}

impl ServerCtx {
    /// The same `engine` the TUI uses, and the shared library (rescanned after deletes).
    ///
    /// A default model given as a path (`--model PATH`) is added to the library for this run
    /// (see [`Library::adopt`]), and its library name becomes its API id.
    pub fn new(
        engine: EngineHandle,
        library: Arc<RwLock<Library>>,
        mut options: ServerOptions,
    ) -> Self {
        if let Some(d) = options.default_model.clone() {
            if std::path::Path::new(&d).exists() {
                let adopted = library
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .adopt(std::path::Path::new(&d));
                match adopted {
                    Ok(name) => {
                        tracing::info!(model = %name, "the default model is served under its library name");
                        options.default_model = Some(name);
                    }
                    Err(e) => tracing::warn!("default model: {e}"),
                }
            }
        }
        let queue = GenQueue::new(options.max_queue, options.parallel);
        ServerCtx(Arc::new(Inner {
            engine,
            library,
            options,
            queue,
            metrics: Arc::new(Metrics::default()),
            started: Instant::now(),
            last_loaded: Mutex::new(Vec::new()),
            caps: Mutex::default(),
        }))
    }

    pub(crate) fn caps_cache(&self) -> &Mutex<std::collections::HashMap<String, Arc<core::Caps>>> {
        &self.0.caps
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.0.engine
    }

    pub fn library(&self) -> &Arc<RwLock<Library>> {
        &self.0.library
    }

    pub fn options(&self) -> &ServerOptions {
        &self.0.options
    }

    pub fn api_key(&self) -> Option<&str> {
        self.0.options.api_key.as_deref()
    }

    pub fn queue(&self) -> &GenQueue {
        &self.0.queue
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.0.metrics
    }

    /// Requests answered so far (for the TUI status bar).
    pub fn requests(&self) -> Arc<AtomicU64> {
        self.0.metrics.requests_total.clone()
    }

    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    pub(crate) fn note_loaded(&self, info: &ModelInfo) {
        let mut list = self.0.last_loaded.lock().unwrap_or_else(|p| p.into_inner());
        list.retain(|m| m.id != info.id);
        list.insert(0, info.clone());
    }

    pub(crate) fn forget_loaded(&self, id: &str) {
        self.0
            .last_loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|m| m.id != id);
    }

    /// What the engine reported when this server last loaded `id` (a model path).
    pub(crate) fn seen_loaded(&self, id: &str) -> Option<ModelInfo> {
        self.0
            .last_loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|m| m.id == id)
            .cloned()
    }

    /// What the engine has loaded; while it is busy generating (it answers one command at a
    /// time), the last list this server saw.
    pub async fn loaded_models(&self) -> Vec<ModelInfo> {
        match tokio::time::timeout(Duration::from_millis(500), self.0.engine.loaded()).await {
            Ok(Ok(list)) => {
                *self.0.last_loaded.lock().unwrap_or_else(|p| p.into_inner()) = list.clone();
                list
            }
            _ => self
                .0
                .last_loaded
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    /// Scans the library's roots again (after a pull or delete) and swaps the result in.
    pub async fn rescan(&self) {
        let current = self
            .0
            .library
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if current.roots().is_none() {
            return;
        }
        if let Ok(lib) = tokio::task::spawn_blocking(move || current.rescan()).await {
            *self.0.library.write().unwrap_or_else(|p| p.into_inner()) = lib;
        }
    }
}

/// The whole API. Serve it with [`ServerHandle::start`] or call it with `oneshot` in tests.
pub fn router(ctx: ServerCtx) -> Router {
    let mut app = Router::new()
        .route("/", get(legacy::root))
        .route("/health", get(legacy::health))
        .route("/metrics", get(metrics::handler))
        // OpenAI
        .route("/v1/models", get(openai::list_models))
        .route("/v1/models/{*id}", get(openai::get_model))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/responses", post(responses::create))
        // Anthropic
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        // Ollama
        .route("/api/version", get(ollama::version))
        .route("/api/tags", get(ollama::tags))
        .route("/api/show", post(ollama::show))
        .route("/api/ps", get(ollama::ps))
        .route("/api/chat", post(ollama::chat))
        .route("/api/generate", post(ollama::generate))
        .route("/api/embed", post(ollama::embed))
        .route("/api/embeddings", post(ollama::embeddings))
        .route("/api/delete", delete(ollama::delete))
        .route("/api/pull", post(pull::pull))
        // Earlier Influence versions
        .route("/v1/generate", post(legacy::generate))
        .route("/v1/generate_stream", get(legacy::generate_stream))
        .route_layer(from_fn_with_state(ctx.clone(), auth::require_key))
        .route_layer(from_fn_with_state(ctx.clone(), metrics::track))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(ctx.options().body_limit))
        .with_state(ctx.clone());
    if let Some(cors) = cors_layer(&ctx.options().cors_origins) {
        app = app.layer(cors);
    }
    app
}

fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
            .allow_headers(Any),
    )
}

async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_string();
    ApiError::new(
        Dialect::from_path(&path),
        axum::http::StatusCode::NOT_FOUND,
        format!(
            "no route {} {path}; see docs/API.md for the endpoints",
            req.method()
        ),
    )
    .into_response()
}
