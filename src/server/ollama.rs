//! Ollama dialect: `/api/version`, `/api/tags`, `/api/show`, `/api/ps`, `/api/chat`,
//! `/api/generate`, `/api/embed`, `/api/embeddings`, `/api/delete`. Streams are NDJSON
//! (one JSON object per line), on by default, ending with a `"done": true` line with timings.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{ChatMessage, GenStats, Prompt, Role};
use crate::library::{human, LibraryError};

use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::gen::{
    self, build_params, finish_str, Budget, Fit, Frame, GenStream, ParamInput, StopSpec,
};
use super::models::ModelEntry;
use super::ServerCtx;

const D: Dialect = Dialect::Ollama;

pub async fn version() -> Json<Value> {
    Json(json!({ "version": env!("CARGO_PKG_VERSION") }))
}

fn details(e: &ModelEntry) -> Value {
    let arch = e.arch();
    json!({
        "parent_model": "",
        "format": e.format(),
        "family": arch,
        "families": if arch.is_empty() { json!(null) } else { json!([arch]) },
        "parameter_size": e.parameters().map(human::params).unwrap_or_default(),
        "quantization_level": e.quant(),
    })
}

fn tag(e: &ModelEntry) -> Value {
    json!({
        "name": e.name,
        "model": e.name,
        "modified_at": e.modified_rfc3339(),
        "size": e.size(),
        "digest": e.digest(),
        "details": details(e),
    })
}

pub async fn tags(State(ctx): State<ServerCtx>) -> Json<Value> {
    let models: Vec<Value> = ctx.list_models().iter().map(tag).collect();
    Json(json!({ "models": models }))
}

#[derive(Debug, Deserialize)]
pub struct NameRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl NameRequest {
    fn name(&self) -> Option<&str> {
        self.model.as_deref().or(self.name.as_deref())
    }
}

pub async fn show(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<NameRequest>,
) -> Result<Json<Value>, ApiError> {
    let name = req
        .name()
        .ok_or_else(|| ApiError::bad_field(D, "model", "model is required"))?;
    let e = ctx.resolve_model(Some(name), D)?;
    let arch = e.arch();
    let mut info = serde_json::Map::new();
    info.insert("general.architecture".into(), json!(arch));
    if let Some(p) = e.parameters() {
        info.insert("general.parameter_count".into(), json!(p));
    }
    if let Some(c) = e.context_length() {
        info.insert(format!("{arch}.context_length"), json!(c));
    }
    if let Some(n) = e.model.as_ref().and_then(|m| m.info.display_name.as_ref()) {
        info.insert("general.name".into(), json!(n));
    }
    let capabilities = if e.is_embedding() {
        json!(["embedding"])
    } else {
        json!(["completion"])
    };
    Ok(Json(json!({
        "license": "",
        "modelfile": format!("# Served by Influence\nFROM {}\n", e.path.display()),
        "parameters": "",
        "template": "",
        "details": details(&e),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": e.modified_rfc3339(),
    })))
}

/// Loaded models in Ollama's shape (`size` is the memory it takes, as Ollama reports it), plus
/// the facts `/v1/models` gives too ([`super::ps::facts`]) and the server's request activity.
pub async fn ps(State(ctx): State<ServerCtx>) -> Json<Value> {
    let loaded = super::ps::loaded(&ctx).await;
    let models: Vec<Value> = loaded
        .iter()
        .map(|m| {
            let entry = m.entry.as_ref();
            let mut v = json!({
                "name": m.name,
                "model": m.name,
                "size": m.memory_bytes,
                "digest": entry.map(ModelEntry::digest).unwrap_or_default(),
                "details": {
                    "parent_model": "",
                    "format": entry.map_or("", ModelEntry::format),
                    "family": m.info.arch,
                    "families": [m.info.arch],
                    "parameter_size": human::params(m.info.n_params),
                    "quantization_level": m.info.quant,
                },
                "expires_at": "0001-01-01T00:00:00Z",
                "size_vram": 0,
            });
            merge(&mut v, super::ps::facts(m));
            v
        })
        .collect();
    let a = super::ps::activity(&ctx);
    Json(json!({
        "models": models,
        "active_requests": a.running,
        "queued_requests": a.waiting,
    }))
}

/// Adds the keys of object `extra` to object `v`.
pub(crate) fn merge(v: &mut Value, extra: Value) {
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
}

/// Ollama's `options` (unknown keys such as `num_thread` are accepted and ignored).
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repeat_penalty: Option<f32>,
    #[serde(default)]
    repeat_last_n: Option<usize>,
    #[serde(default)]
    num_predict: Option<i64>,
    #[serde(default)]
    num_ctx: Option<u64>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<StopSpec>,
}

impl Options {
    /// The generation parameters and the token budget.
    fn params(self, ctx: &ServerCtx) -> Result<(crate::engine::GenParams, Budget), ApiError> {
        let num_ctx = match self.num_ctx {
            None => None,
            Some(0) => {
                return Err(ApiError::bad_field(
                    D,
                    "num_ctx",
                    "num_ctx = 0 is out of range; allowed 1 or more",
                ))
            }
            Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        };
        let (max_tokens, fit) = match self.num_predict {
            None => (None, Fit::CapToRoom),
            // -1: until the context is full; -2: fill the context.
            Some(-1) | Some(-2) => (None, Fit::Room),
            Some(n) if n > 0 => (Some(n as usize), Fit::AsGiven),
            Some(n) => {
                return Err(ApiError::bad_field(
                    D,
                    "num_predict",
                    format!(
                        "num_predict = {n} is out of range; allowed 1 or more, or -1 for no limit"
                    ),
                ))
            }
        };
        let input = ParamInput {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: self.repeat_last_n,
            max_tokens,
            seed: self.seed.map(|s| s as u64),
            stop: self.stop.map(StopSpec::into_vec),
        };
        let p = build_params(
            &ctx.options().defaults,
            input,
            &[("max_tokens", "num_predict")],
            D,
        )?;
        Ok((p, Budget { num_ctx, fit }))
    }
}

#[derive(Debug, Deserialize)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: String,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<OllamaMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    /// `0` with nothing to generate unloads the model (how Ollama clients free memory).
    #[serde(default)]
    keep_alive: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    system: Option<String>,
    #[serde(default)]
    raw: Option<bool>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    options: Option<Options>,
    /// `0` with nothing to generate unloads the model (how Ollama clients free memory).
    #[serde(default)]
    keep_alive: Option<Value>,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn ms_ns(ms: f64) -> u64 {
    (ms * 1e6).max(0.0) as u64
}

fn ndjson_line(v: &Value) -> Bytes {
    Bytes::from(format!("{v}\n"))
}

fn ndjson_response(
    stream: impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// Shape of the per-token and final objects for `/api/chat` vs `/api/generate`.
#[derive(Clone, Copy)]
enum Kind {
    Chat,
    Generate,
}

impl Kind {
    fn piece(self, model: &str, text: &str) -> Value {
        match self {
            Kind::Chat => json!({
                "model": model,
                "created_at": now_rfc3339(),
                "message": { "role": "assistant", "content": text },
                "done": false,
            }),
            Kind::Generate => json!({
                "model": model,
                "created_at": now_rfc3339(),
                "response": text,
                "done": false,
            }),
        }
    }
}

async fn run(
    ctx: ServerCtx,
    kind: Kind,
    model: ModelEntry,
    prompt: Prompt,
    options: Option<Options>,
    stream: bool,
) -> Result<Response, ApiError> {
    let (params, budget) = options.unwrap_or_default().params(&ctx)?;
    let s = gen::start(&ctx, D, &model, prompt, params, budget).await?;
    let name = model.name.clone();
    if !stream {
        let request_start = s.request_start;
        let load = s.load;
        let (text, stats) = collect(s)
            .await
            .map_err(|e| ApiError::from_engine(D, &name, e))?;
        let mut v = kind.piece(&name, &text);
        v["done"] = json!(true);
        let mut t = serde_json::Map::new();
        t.insert("done_reason".into(), json!(finish_str(stats.finish)));
        t.insert("total_duration".into(), json!(ns(request_start.elapsed())));
        t.insert("load_duration".into(), json!(ns(load)));
        t.insert("prompt_eval_count".into(), json!(stats.prompt_tokens));
        t.insert("prompt_eval_duration".into(), json!(ms_ns(stats.prompt_ms)));
        t.insert("eval_count".into(), json!(stats.generated_tokens));
        t.insert("eval_duration".into(), json!(ms_ns(stats.gen_ms)));
        for (k, val) in t {
            v[k] = val;
        }
        return Ok(Json(v).into_response());
    }
    let request_start = s.request_start;
    let load = s.load;
    let body = s.into_body_stream(None, move |frame| match frame {
        Frame::Token(t) => ndjson_line(&kind.piece(&name, &t)),
        Frame::Done(stats) => {
            let mut v = kind.piece(&name, "");
            v["done"] = json!(true);
            v["done_reason"] = json!(finish_str(stats.finish));
            v["total_duration"] = json!(ns(request_start.elapsed()));
            v["load_duration"] = json!(ns(load));
            v["prompt_eval_count"] = json!(stats.prompt_tokens);
            v["prompt_eval_duration"] = json!(ms_ns(stats.prompt_ms));
            v["eval_count"] = json!(stats.generated_tokens);
            v["eval_duration"] = json!(ms_ns(stats.gen_ms));
            ndjson_line(&v)
        }
        Frame::Failed(e) => ndjson_line(&ApiError::from_engine(D, &name, e).body()),
    });
    Ok(ndjson_response(body))
}

async fn collect(mut s: GenStream) -> Result<(String, GenStats), crate::engine::EngineError> {
    let mut text = String::new();
    while let Some(frame) = s.next_frame().await {
        match frame {
            Frame::Token(t) => text.push_str(&t),
            Frame::Done(stats) => return Ok((text, stats)),
            Frame::Failed(e) => return Err(e),
        }
    }
    Err(crate::engine::EngineError::EngineStopped)
}

/// `keep_alive` of zero: `0`, `"0"`, `"0s"`, `"0m"`.
fn is_zero(keep_alive: &Option<Value>) -> bool {
    match keep_alive {
        Some(Value::Number(n)) => n.as_f64() == Some(0.0),
        Some(Value::String(s)) => {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            !digits.is_empty() && digits.parse::<f64>().ok() == Some(0.0)
        }
        _ => false,
    }
}

/// Ollama answers a request with nothing to generate by loading the model, or with
/// `keep_alive: 0` by unloading it.
async fn load_answer(
    ctx: &ServerCtx,
    kind: Kind,
    model: &ModelEntry,
    keep_alive: &Option<Value>,
) -> Result<Response, ApiError> {
    if is_zero(keep_alive) {
        let _ = ctx.engine().unload(model.path.clone()).await;
        ctx.forget_loaded(&model.path.to_string_lossy());
        let mut v = kind.piece(&model.name, "");
        v["done"] = json!(true);
        v["done_reason"] = json!("unload");
        return Ok(Json(v).into_response());
    }
    let (load, total) = gen::load_only(ctx, D, model).await?;
    let mut v = kind.piece(&model.name, "");
    v["done"] = json!(true);
    v["done_reason"] = json!("load");
    v["total_duration"] = json!(ns(total));
    v["load_duration"] = json!(ns(load));
    Ok(Json(v).into_response())
}

pub async fn chat(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::bad_field(
                    D,
                    "messages",
                    format!("messages[{i}].role `{other}` is not supported; allowed: system, user, assistant"),
                ))
            }
        };
        messages.push(ChatMessage {
            role,
            content: m.content,
        });
    }
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    if messages.is_empty() {
        return load_answer(&ctx, Kind::Chat, &model, &req.keep_alive).await;
    }
    run(
        ctx,
        Kind::Chat,
        model,
        Prompt::Chat(messages),
        req.options,
        req.stream.unwrap_or(true),
    )
    .await
}

pub async fn generate(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return load_answer(&ctx, Kind::Generate, &model, &req.keep_alive).await;
    }
    let prompt = if req.raw.unwrap_or(false) {
        Prompt::Raw(prompt)
    } else {
        let mut msgs = Vec::new();
        if let Some(system) = req.system.filter(|s| !s.is_empty()) {
            msgs.push(ChatMessage::system(system));
        }
        msgs.push(ChatMessage::user(prompt));
        Prompt::Chat(msgs)
    };
    run(
        ctx,
        Kind::Generate,
        model,
        prompt,
        req.options,
        req.stream.unwrap_or(true),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbedRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<EmbedInput>,
}

pub async fn embed(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<EmbedRequest>,
) -> Result<Json<Value>, ApiError> {
    let texts = match req.input {
        None => Vec::new(),
        Some(EmbedInput::One(s)) => vec![s],
        Some(EmbedInput::Many(v)) => v,
    };
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = gen::embed(&ctx, D, &model, texts).await?;
    Ok(Json(json!({
        "model": model.name,
        "embeddings": out.vectors,
        "total_duration": ns(out.total),
        "load_duration": ns(out.load),
    })))
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: String,
}

/// The older single-text endpoint.
pub async fn embeddings(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Json<Value>, ApiError> {
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = gen::embed(&ctx, D, &model, vec![req.prompt]).await?;
    let embedding = out.vectors.into_iter().next().unwrap_or_default();
    Ok(Json(json!({ "embedding": embedding })))
}

pub async fn delete(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<NameRequest>,
) -> Result<Response, ApiError> {
    let name = req
        .name()
        .ok_or_else(|| ApiError::bad_field(D, "model", "model is required"))?;
    let entry = ctx.resolve_model(Some(name), D)?;
    let Some(model) = entry.model.clone() else {
        return Err(ApiError::model_not_found(D, name, None));
    };
    let plan = {
        let lib = ctx.library().read().unwrap_or_else(|p| p.into_inner());
        lib.delete_plan(&model)
    };
    let plan = plan.map_err(|e| match e {
        LibraryError::ForeignStore { .. } => ApiError::new(D, StatusCode::FORBIDDEN, e.to_string()),
        other => ApiError::internal(D, other.to_string()),
    })?;
    let _ = ctx.engine().unload(entry.path.clone()).await;
    tokio::task::spawn_blocking(move || plan.execute())
        .await
        .map_err(|e| ApiError::internal(D, format!("the delete task failed: {e}")))?
        .map_err(|e| ApiError::internal(D, e.to_string()))?;
    ctx.rescan().await;
    tracing::info!(model = %entry.name, "deleted through the API");
    Ok(StatusCode::OK.into_response())
}
