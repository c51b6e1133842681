//! The endpoints of earlier Influence versions: `POST /v1/generate`, `GET /v1/generate_stream`
//! (SSE) and `GET /health`.

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::GenStats;

use super::core::{self, Event, Finish, GenRequest, Input, Message, Role};
use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::gen::{build_params, Budget, Fit, SamplingFields, StopSpec};
use super::ServerCtx;

const D: Dialect = Dialect::OpenAi;

pub async fn health(State(ctx): State<ServerCtx>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": ctx.uptime().as_secs(),
        "queue_depth": ctx.queue().depth(),
    }))
}

/// `Influence is running`, like Ollama's root answer that some clients probe.
pub async fn root() -> &'static str {
    "Influence is running"
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateRequest {
    prompt: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    system: Option<String>,
    /// Feed the prompt to the model as is, without the chat template.
    #[serde(default)]
    raw: Option<bool>,
    #[serde(default)]
    max_tokens: Option<usize>,
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
    seed: Option<u64>,
    #[serde(default)]
    stop: Option<StopSpec>,
}

crate::fields!(GenerateRequest: "prompt", "model", "system", "raw", "max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop");

impl GenerateRequest {
    fn input(&self) -> Input {
        if self.raw.unwrap_or(false) {
            return Input::Raw(self.prompt.clone());
        }
        let mut msgs = Vec::new();
        if let Some(s) = self.system.as_ref().filter(|s| !s.is_empty()) {
            msgs.push(Message::new(Role::System, s.clone()));
        }
        msgs.push(Message::new(Role::User, self.prompt.clone()));
        Input::Chat(msgs)
    }

    /// The turn for the core: no tools, no reasoning split (the text comes back as generated).
    fn turn(&self, ctx: &ServerCtx) -> Result<GenRequest, ApiError> {
        let (params, budget) = self.params(ctx)?;
        Ok(GenRequest::new(self.input(), params, budget))
    }

    fn params(&self, ctx: &ServerCtx) -> Result<(crate::engine::GenParams, Budget), ApiError> {
        if self.prompt.is_empty() {
            return Err(ApiError::bad_field(
                D,
                "prompt",
                "prompt is empty; send some text",
            ));
        }
        let input = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            seed: self.seed.map(|s| s as i64),
            stop: self.stop.clone(),
        }
        .input(self.max_tokens, None);
        let fit = if self.max_tokens.is_some() {
            Fit::AsGiven
        } else {
            Fit::CapToRoom
        };
        let p = build_params(&ctx.options().defaults, input, &[], D)?;
        Ok((p, Budget { num_ctx: None, fit }))
    }
}

fn summary(stats: &GenStats, finish: Finish) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("tokens".into(), json!(stats.generated_tokens));
    m.insert("prompt_tokens".into(), json!(stats.prompt_tokens));
    m.insert("cached_tokens".into(), json!(stats.cached_tokens));
    m.insert("finish_reason".into(), json!(finish.as_openai()));
    m.insert("ttft_ms".into(), json!(stats.ttft_ms));
    m.insert("time_ms".into(), json!(stats.prompt_ms + stats.gen_ms));
    m.insert("tokens_per_second".into(), json!(stats.gen_tok_s));
    m
}

pub async fn generate(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Json<Value>, ApiError> {
    let turn = req.turn(&ctx)?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let done = core::run(&ctx, D, &model, turn).await?.collect().await?;
    let mut out = summary(&done.stats, done.finish);
    out.insert("text".into(), json!(done.text));
    out.insert("model".into(), json!(model.name));
    Ok(Json(Value::Object(out)))
}

/// `GET /v1/generate_stream?prompt=...`: `data: {"token": "..."}` per token, then
/// `data: {"done": true, ...}` and `data: [DONE]`.
pub async fn generate_stream(
    State(ctx): State<ServerCtx>,
    query: Result<Query<GenerateRequest>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(req) = query.map_err(|e| {
        let msg = e.body_text();
        let field = [
            "prompt",
            "max_tokens",
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "seed",
            "model",
            "raw",
        ]
        .into_iter()
        .find(|f| msg.contains(&format!("`{f}`")) || msg.contains(f));
        match field {
            Some(f) => ApiError::bad_field(D, f, msg),
            None => ApiError::bad_request(D, msg),
        }
    })?;
    let turn = req.turn(&ctx)?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let name = model.name.clone();
    let body = out.into_body(None, move |event| match event {
        Event::Text(t) | Event::Reasoning(t) => {
            Bytes::from(format!("data: {}\n\n", json!({ "token": t })))
        }
        Event::ToolCall { .. } | Event::Logprob(_) => Bytes::new(),
        Event::Done { stats, finish } => {
            let mut m = summary(&stats, finish);
            m.insert("done".into(), json!(true));
            m.insert("model".into(), json!(name));
            Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", Value::Object(m)))
        }
        Event::Failed(e) => Bytes::from(format!("data: {}\n\ndata: [DONE]\n\n", e.body())),
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}
