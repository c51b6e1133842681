//! OpenAI dialect: `/v1/models`, `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`.
//! Streams are server-sent events ending with `data: [DONE]`.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::{ChatMessage, GenStats, Prompt, Role};

use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::gen::{
    self, build_params, finish_str, unix_now, Budget, Fit, Frame, ParamInput, StopSpec,
};
use super::models::ModelEntry;
use super::ServerCtx;

const D: Dialect = Dialect::OpenAi;

fn model_object(e: &ModelEntry) -> Value {
    json!({
        "id": e.name,
        "object": "model",
        "created": e.created_unix(),
        "owned_by": "influence",
    })
}

/// Every model; a loaded one also says where it runs, its memory and context (the same facts as
/// Ollama's `/api/ps`), and the list carries the server's request activity.
pub async fn list_models(State(ctx): State<ServerCtx>) -> Json<Value> {
    let loaded = super::ps::loaded(&ctx).await;
    let data: Vec<Value> = ctx
        .list_models()
        .iter()
        .map(|e| {
            let mut v = model_object(e);
            if let Some(m) = loaded
                .iter()
                .find(|m| m.info.id == e.path.to_string_lossy())
            {
                super::ollama::merge(&mut v, super::ps::facts(m));
                super::ollama::merge(&mut v, json!({ "loaded": true }));
            }
            v
        })
        .collect();
    let a = super::ps::activity(&ctx);
    Json(json!({
        "object": "list",
        "data": data,
        "active_requests": a.running,
        "queued_requests": a.waiting,
    }))
}

pub async fn get_model(
    State(ctx): State<ServerCtx>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entry = ctx.resolve_model(Some(&id), D)?;
    Ok(Json(model_object(&entry)))
}

#[derive(Debug, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Sampling fields shared by chat and text completions (plus llama.cpp-style extensions).
#[derive(Debug, Deserialize)]
struct Sampling {
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
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
    seed: Option<i64>,
    #[serde(default)]
    stop: Option<StopSpec>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    model: Option<String>,
    prompt: PromptSpec,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(flatten)]
    sampling: Sampling,
}

impl Sampling {
    fn params(
        self,
        ctx: &ServerCtx,
        default_max: Option<usize>,
    ) -> Result<(crate::engine::GenParams, Budget), ApiError> {
        if let Some(n) = self.n {
            if n != 1 {
                return Err(ApiError::bad_field(
                    D,
                    "n",
                    format!("n = {n} is not supported; allowed: 1 (one choice per request)"),
                ));
            }
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if let Some(v) = v {
                if !(v.is_finite() && (-2.0..=2.0).contains(&v)) {
                    return Err(ApiError::bad_field(
                        D,
                        name,
                        format!("{name} = {v} is out of range; allowed -2..=2"),
                    ));
                }
            }
        }
        let (max_name, max) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", Some(v)),
            (None, v) => ("max_tokens", v),
        };
        let max_tokens = max
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
            .or(default_max);
        let input = ParamInput {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n: None,
            max_tokens,
            seed: self.seed.map(|s| s as u64),
            stop: self.stop.map(StopSpec::into_vec),
        };
        let fit = if max.is_some() {
            Fit::AsGiven
        } else {
            Fit::CapToRoom
        };
        let p = build_params(
            &ctx.options().defaults,
            input,
            &[("max_tokens", max_name)],
            D,
        )?;
        Ok((p, Budget { num_ctx: None, fit }))
    }
}

fn to_chat(messages: Vec<Message>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_field(
            D,
            "messages",
            "messages is empty; send at least one message",
        ));
    }
    messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => Role::System,
                "user" => Role::User,
                "assistant" => Role::Assistant,
                other => {
                    return Err(ApiError::bad_field(
                        D,
                        "messages",
                        format!("messages[{i}].role `{other}` is not supported; allowed: system, developer, user, assistant"),
                    ))
                }
            };
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(ApiError::bad_field(
                                D,
                                "messages",
                                format!("messages[{i}].content has a `{}` part; only text parts are supported", p.kind),
                            ));
                        }
                        text.push_str(p.text.as_deref().unwrap_or_default());
                    }
                    text
                }
            };
            Ok(ChatMessage { role, content })
        })
        .collect()
}

fn usage(prompt: usize, cached: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

fn stats_usage(s: &GenStats) -> Value {
    usage(s.prompt_tokens, s.cached_tokens, s.generated_tokens)
}

fn fingerprint() -> String {
    format!("influence-{}", env!("CARGO_PKG_VERSION"))
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn sse_response(
    stream: impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn error_event(e: ApiError) -> Bytes {
    let mut b = sse(&e.body()).to_vec();
    b.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(b)
}

pub async fn chat_completions(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let messages = to_chat(req.messages)?;
    let (params, budget) = req.sampling.params(&ctx, None)?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let stream = gen::start(&ctx, D, &model, Prompt::Chat(messages), params, budget).await?;
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = unix_now();
    let name = model.name.clone();
    if !req.stream.unwrap_or(false) {
        let (text, stats) = stream.collect(D, &name).await?;
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "index": 0,
                "message": { "role": "assistant", "content": text },
                "logprobs": null,
                "finish_reason": finish_str(stats.finish),
            }],
            "usage": stats_usage(&stats),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let head = sse(&chunk(json!({ "role": "assistant", "content": "" }), None));
    let model_name = model.name.clone();
    let body = stream.into_body_stream(Some(head), move |frame| match frame {
        Frame::Token(t) => sse(&chunk(json!({ "content": t }), None)),
        Frame::Done(stats) => {
            let mut last = chunk(json!({}), Some(finish_str(stats.finish)));
            last["usage"] = stats_usage(&stats);
            let mut out = sse(&last).to_vec();
            if include_usage {
                let mut u = chunk(json!({}), None);
                u["choices"] = json!([]);
                u["usage"] = stats_usage(&stats);
                out.extend_from_slice(&sse(&u));
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            Bytes::from(out)
        }
        Frame::Failed(e) => error_event(ApiError::from_engine(D, &model_name, e)),
    });
    Ok(sse_response(body))
}

pub async fn completions(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let prompt = match req.prompt {
        PromptSpec::One(p) => p,
        PromptSpec::Many(mut v) if v.len() == 1 => v.remove(0),
        PromptSpec::Many(v) => {
            return Err(ApiError::bad_field(
                D,
                "prompt",
                format!(
                    "prompt has {} entries; send one prompt per request",
                    v.len()
                ),
            ))
        }
    };
    // OpenAI's documented default for this endpoint.
    let (params, budget) = req.sampling.params(&ctx, Some(16))?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let stream = gen::start(&ctx, D, &model, Prompt::Raw(prompt), params, budget).await?;
    let id = format!("cmpl-{:016x}", rand::random::<u64>());
    let created = unix_now();
    let name = model.name.clone();
    if !req.stream.unwrap_or(false) {
        let (text, stats) = stream.collect(D, &name).await?;
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "text": text,
                "index": 0,
                "logprobs": null,
                "finish_reason": finish_str(stats.finish),
            }],
            "usage": stats_usage(&stats),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |text: &str, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
        })
    };
    let model_name = model.name.clone();
    let body = stream.into_body_stream(None, move |frame| match frame {
        Frame::Token(t) => sse(&chunk(&t, None)),
        Frame::Done(stats) => {
            let mut last = chunk("", Some(finish_str(stats.finish)));
            last["usage"] = stats_usage(&stats);
            let mut out = sse(&last).to_vec();
            if include_usage {
                let mut u = chunk("", None);
                u["choices"] = json!([]);
                u["usage"] = stats_usage(&stats);
                out.extend_from_slice(&sse(&u));
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            Bytes::from(out)
        }
        Frame::Failed(e) => error_event(ApiError::from_engine(D, &model_name, e)),
    });
    Ok(sse_response(body))
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum EmbedInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingsRequest {
    #[serde(default)]
    model: Option<String>,
    input: EmbedInput,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    dimensions: Option<u64>,
}

pub async fn embeddings(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<EmbeddingsRequest>,
) -> Result<Response, ApiError> {
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_field(
                D,
                "encoding_format",
                format!("encoding_format `{other}` is not supported; allowed: float, base64"),
            ))
        }
    };
    let texts = match req.input {
        EmbedInput::One(s) => vec![s],
        EmbedInput::Many(v) => v,
    };
    if texts.is_empty() {
        return Err(ApiError::bad_field(
            D,
            "input",
            "input is empty; send at least one string",
        ));
    }
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = gen::embed(&ctx, D, &model, texts).await?;
    if let Some(d) = req.dimensions {
        let native = out.vectors.first().map_or(0, Vec::len);
        if d as usize != native {
            return Err(ApiError::bad_field(
                D,
                "dimensions",
                format!("dimensions = {d} is not supported by this model; it produces {native}"),
            ));
        }
    }
    let data: Vec<Value> = out
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "model": model.name,
    }))
    .into_response())
}
