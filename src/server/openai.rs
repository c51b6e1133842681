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

use crate::engine::{Constraint, GenStats, TokenLogprob, MAX_TOP_LOGPROBS};

use super::core::{self, Event, ToolChoice};
use super::error::{ApiError, Dialect};
use super::extract::{ApiJson, Fields};
use super::gen::{self, build_params, unix_now, Budget, Fit, SamplingFields};
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
                super::ollama::merge(&mut v, super::ps::facts(&ctx, m));
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
struct InFunction {
    name: String,
    /// A JSON object, as a string.
    arguments: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InCall {
    id: String,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: InFunction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    #[serde(default)]
    content: Option<Content>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<InCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    /// What this server said the model thought, sent back by clients that keep it.
    #[serde(default)]
    reasoning_content: Option<String>,
    /// Fields the official client echoes back from an answer; only their empty values are
    /// accepted.
    #[serde(default)]
    refusal: Option<Value>,
    #[serde(default)]
    audio: Option<Value>,
    #[serde(default)]
    function_call: Option<Value>,
    #[serde(default)]
    annotations: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
    #[serde(default)]
    strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionSpec,
}

/// Sampling fields shared by chat and text completions (plus llama.cpp-style extensions).
#[derive(Debug, Deserialize)]
struct Sampling {
    #[serde(flatten)]
    common: SamplingFields,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    presence_penalty: Option<f32>,
    #[serde(default)]
    frequency_penalty: Option<f32>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    top_logprobs: Option<Value>,
    #[serde(default)]
    logit_bias: Option<Value>,
    /// An end-user id; logged with the request.
    #[serde(default)]
    user: Option<String>,
}

const SAMPLING: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
];

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<Message>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
    #[serde(default)]
    reasoning_effort: Option<String>,
    /// A grammar in llguidance's Lark syntax (llama.cpp's `grammar` field).
    #[serde(default)]
    grammar: Option<String>,
    #[serde(flatten)]
    sampling: Sampling,
}

impl Fields for ChatRequest {
    const FIELDS: &'static [&'static str] = &const_concat::CHAT;
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
    #[serde(default)]
    grammar: Option<String>,
    #[serde(flatten)]
    sampling: Sampling,
}

impl Fields for CompletionRequest {
    const FIELDS: &'static [&'static str] = &const_concat::COMPLETION;
}

/// The field lists, each the request's own keys plus the shared sampling ones.
mod const_concat {
    use super::{SamplingFields, SAMPLING};

    const fn join<const N: usize>(parts: [&[&'static str]; 3]) -> [&'static str; N] {
        let mut out = [""; N];
        let mut n = 0;
        let mut p = 0;
        while p < parts.len() {
            let mut i = 0;
            while i < parts[p].len() {
                out[n] = parts[p][i];
                n += 1;
                i += 1;
            }
            p += 1;
        }
        assert!(n == N, "field list length");
        out
    }

    const CHAT_OWN: &[&str] = &[
        "model",
        "messages",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "reasoning_effort",
        "grammar",
    ];
    const COMPLETION_OWN: &[&str] = &["model", "prompt", "stream", "stream_options", "grammar"];
    pub const CHAT: [&str; CHAT_OWN.len() + SAMPLING.len() + SamplingFields::NAMES.len()] =
        join([CHAT_OWN, SAMPLING, SamplingFields::NAMES]);
    pub const COMPLETION: [&str;
        COMPLETION_OWN.len() + SAMPLING.len() + SamplingFields::NAMES.len()] =
        join([COMPLETION_OWN, SAMPLING, SamplingFields::NAMES]);
}

impl Sampling {
    /// `logprobs` / `top_logprobs` as the endpoint defines them: chat takes `logprobs: true`
    /// and `top_logprobs: 0..=20`; completions take `logprobs: 0..=5` (the number of
    /// alternatives).
    fn logprobs_wanted(&self, endpoint: Endpoint) -> Result<Option<usize>, ApiError> {
        let top = match &self.top_logprobs {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| *n as usize <= MAX_TOP_LOGPROBS)
                    .ok_or_else(|| {
                        ApiError::bad_field(
                            D,
                            "top_logprobs",
                            format!("top_logprobs must be an integer 0..={MAX_TOP_LOGPROBS}"),
                        )
                    })? as usize,
            ),
        };
        match endpoint {
            Endpoint::Chat => match &self.logprobs {
                None | Some(Value::Null) | Some(Value::Bool(false)) => match top {
                    None => Ok(None),
                    Some(_) => Err(ApiError::bad_field(
                        D,
                        "top_logprobs",
                        "top_logprobs needs logprobs: true",
                    )),
                },
                Some(Value::Bool(true)) => Ok(Some(top.unwrap_or(0))),
                Some(_) => Err(ApiError::bad_field(
                    D,
                    "logprobs",
                    "logprobs must be true or false",
                )),
            },
            Endpoint::Completion => {
                if top.is_some() {
                    return Err(ApiError::bad_field(
                        D,
                        "top_logprobs",
                        "top_logprobs is a chat completions field; completions take logprobs: N",
                    ));
                }
                match &self.logprobs {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => v
                        .as_u64()
                        .filter(|n| *n <= 5)
                        .map(|n| Some(n as usize))
                        .ok_or_else(|| {
                            ApiError::bad_field(
                                D,
                                "logprobs",
                                "logprobs must be an integer 0..=5 (the alternatives to list per token)",
                            )
                        }),
                }
            }
        }
    }

    fn params(
        self,
        ctx: &ServerCtx,
        default_max: Option<usize>,
        endpoint: Endpoint,
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
                if v != 0.0 {
                    return Err(ApiError::bad_field(
                        D,
                        name,
                        format!("{name} = {v} is not supported (only 0); use repeat_penalty, which Influence's sampler applies"),
                    ));
                }
            }
        }
        let logprobs = self.logprobs_wanted(endpoint)?;
        if self
            .logit_bias
            .as_ref()
            .is_some_and(|v| !(v.is_null() || v.as_object().is_some_and(|o| o.is_empty())))
        {
            return Err(ApiError::bad_field(
                D,
                "logit_bias",
                "logit_bias is not supported; leave it out",
            ));
        }
        if let Some(u) = &self.user {
            tracing::debug!(user = %u, "request from end user");
        }
        let (max_name, max) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(v), _) => ("max_completion_tokens", Some(v)),
            (None, v) => ("max_tokens", v),
        };
        let max_tokens = max
            .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
            .or(default_max);
        let fit = if max.is_some() {
            Fit::AsGiven
        } else {
            Fit::CapToRoom
        };
        let mut p = build_params(
            &ctx.options().defaults,
            self.common.input(max_tokens, None),
            &[("max_tokens", max_name)],
            D,
        )?;
        p.logprobs = logprobs.map(|n| n.min(MAX_TOP_LOGPROBS) as u8);
        Ok((p, Budget { num_ctx: None, fit }))
    }
}

/// Which endpoint a [`Sampling`] belongs to (they read `logprobs` differently).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completion,
}

/// One token in chat's `logprobs.content` shape.
fn chat_logprob(lp: &TokenLogprob) -> Value {
    let entry = |text: &str, logprob: f32| json!({"token": text, "logprob": logprob, "bytes": text.as_bytes()});
    let mut v = entry(&lp.text, lp.logprob);
    v["top_logprobs"] = lp.top.iter().map(|t| entry(&t.text, t.logprob)).collect();
    v
}

/// Tokens in the completions endpoint's `logprobs` shape (parallel arrays).
fn completion_logprobs(lps: &[TokenLogprob], start_offset: usize) -> Value {
    let mut offset = start_offset;
    let mut offsets = Vec::with_capacity(lps.len());
    for lp in lps {
        offsets.push(offset);
        offset += lp.text.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.text.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| {
            l.top.iter().map(|t| (t.text.clone(), json!(t.logprob))).collect::<serde_json::Map<_, _>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

fn bad_message(i: usize, what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_field(D, "messages", format!("messages[{i}]: {what}"))
}

fn to_messages(messages: Vec<Message>) -> Result<Vec<core::Message>, ApiError> {
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
                "system" | "developer" => core::Role::System,
                "user" => core::Role::User,
                "assistant" => core::Role::Assistant,
                "tool" => core::Role::Tool,
                other => {
                    return Err(bad_message(i, format!("role `{other}` is not supported; allowed: system, developer, user, assistant, tool")))
                }
            };
            for (field, v) in [
                ("refusal", &m.refusal),
                ("audio", &m.audio),
                ("function_call", &m.function_call),
            ] {
                if v.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(bad_message(i, format!("{field} is not supported; send null or leave it out")));
                }
            }
            if m
                .annotations
                .as_ref()
                .is_some_and(|v| !(v.is_null() || v.as_array().is_some_and(|a| a.is_empty())))
            {
                return Err(bad_message(i, "annotations are not supported; leave them out"));
            }
            let content = match m.content {
                None => String::new(),
                Some(Content::Text(t)) => t,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for p in parts {
                        if p.kind != "text" {
                            return Err(bad_message(i, format!("content has a `{}` part; only text parts are supported", p.kind)));
                        }
                        text.push_str(p.text.as_deref().unwrap_or_default());
                    }
                    text
                }
            };
            let mut tool_calls = Vec::new();
            for (j, c) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
                if role != core::Role::Assistant {
                    return Err(bad_message(i, "only assistant messages carry tool_calls"));
                }
                if c.kind.as_deref().is_some_and(|k| k != "function") {
                    return Err(bad_message(i, format!("tool_calls[{j}].type must be `function`")));
                }
                let arguments = match serde_json::from_str::<Value>(&c.function.arguments) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => {
                        return Err(bad_message(i, format!("tool_calls[{j}].function.arguments is not a JSON object")))
                    }
                };
                tool_calls.push(core::ToolCall {
                    id: c.id,
                    name: c.function.name,
                    arguments,
                });
            }
            if role == core::Role::Tool && m.tool_call_id.is_none() {
                return Err(bad_message(i, "a tool message needs tool_call_id (the id of the call it answers)"));
            }
            Ok(core::Message {
                role: Some(role),
                content,
                tool_calls,
                tool_call_id: m.tool_call_id,
                name: m.name,
                reasoning: m.reasoning_content,
            })
        })
        .collect()
}

fn to_tools(specs: Option<Vec<ToolSpec>>) -> Result<Vec<core::Tool>, ApiError> {
    specs
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind != "function" {
                return Err(ApiError::bad_field(
                    D,
                    "tools",
                    format!(
                        "tools[{i}].type `{}` is not supported; allowed: function",
                        t.kind
                    ),
                ));
            }
            Ok(core::Tool {
                strict: t.function.strict == Some(true),
                name: t.function.name,
                description: t.function.description,
                parameters: t
                    .function
                    .parameters
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            })
        })
        .collect()
}

fn to_tool_choice(v: Option<Value>) -> Result<ToolChoice, ApiError> {
    let bad = || {
        ApiError::bad_field(
            D,
            "tool_choice",
            "tool_choice must be `auto`, `none`, `required` or {\"type\": \"function\", \"function\": {\"name\": ...}}",
        )
    };
    match v {
        None | Some(Value::Null) => Ok(ToolChoice::Auto),
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Ok(ToolChoice::Auto),
            "none" => Ok(ToolChoice::None),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(Value::Object(o)) => {
            if o.get("type").and_then(Value::as_str) != Some("function") {
                return Err(bad());
            }
            o.get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Named(n.to_string()))
                .ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

/// `response_format` and `grammar` as the one constraint of the answer.
fn output_constraint(
    response_format: Option<Value>,
    grammar: Option<String>,
) -> Result<Option<Constraint>, ApiError> {
    let format = super::structured::openai_response_format(D, response_format, "response_format")?;
    let grammar = super::structured::grammar(D, grammar)?;
    match (format, grammar) {
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            D,
            "grammar",
            "grammar and response_format both shape the answer; send one of them",
        )),
        (f, g) => Ok(f.or(g)),
    }
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

fn call_json(index: Option<usize>, c: &core::ToolCall) -> Value {
    let mut v = json!({
        "id": c.id,
        "type": "function",
        "function": { "name": c.name, "arguments": c.arguments.to_string() },
    });
    if let Some(i) = index {
        v["index"] = json!(i);
    }
    v
}

/// The last frames of a stream: the finish chunk, the usage chunk when asked for, `[DONE]`.
fn stream_end(
    chunk: &dyn Fn(Value, Option<&str>) -> Value,
    empty_delta: Value,
    stats: &GenStats,
    finish: &str,
    include_usage: bool,
) -> Bytes {
    let mut last = chunk(empty_delta.clone(), Some(finish));
    last["usage"] = stats_usage(stats);
    let mut out = sse(&last).to_vec();
    if include_usage {
        let mut u = chunk(empty_delta, None);
        u["choices"] = json!([]);
        u["usage"] = stats_usage(stats);
        out.extend_from_slice(&sse(&u));
    }
    out.extend_from_slice(b"data: [DONE]\n\n");
    Bytes::from(out)
}

pub async fn chat_completions(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let messages = to_messages(req.messages)?;
    let constraint = output_constraint(req.response_format, req.grammar)?;
    let (params, budget) = req.sampling.params(&ctx, None, Endpoint::Chat)?;
    let want_logprobs = params.logprobs.is_some();
    let mut turn = core::GenRequest::new(core::Input::Chat(messages), params, budget);
    turn.tools = to_tools(req.tools)?;
    turn.tool_choice = to_tool_choice(req.tool_choice)?;
    turn.parallel_tool_calls = req.parallel_tool_calls.unwrap_or(true);
    turn.reasoning.split = true;
    turn.reasoning.effort = req.reasoning_effort;
    turn.constraint = constraint;
    turn.check_tools(D, "tool_choice")?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let id = format!("chatcmpl-{:016x}", rand::random::<u64>());
    let created = unix_now();
    let name = model.name.clone();
    if !req.stream.unwrap_or(false) {
        let done = out.collect().await?;
        // OpenAI sends `null` content with calls and nothing said.
        let content = if done.text.is_empty() && !done.tool_calls.is_empty() {
            Value::Null
        } else {
            json!(done.text)
        };
        let mut message = json!({ "role": "assistant", "content": content });
        if !done.tool_calls.is_empty() {
            message["tool_calls"] = done.tool_calls.iter().map(|c| call_json(None, c)).collect();
        }
        if !done.reasoning.is_empty() {
            message["reasoning_content"] = json!(done.reasoning);
        }
        return Ok(Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": if want_logprobs {
                    json!({"content": done.logprobs.iter().map(chat_logprob).collect::<Vec<_>>()})
                } else {
                    Value::Null
                },
                "finish_reason": done.finish.as_openai(),
            }],
            "usage": stats_usage(&done.stats),
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
    let body = out.into_body(Some(head), move |event| match event {
        Event::Text(t) => sse(&chunk(json!({ "content": t }), None)),
        Event::Reasoning(t) => sse(&chunk(json!({ "reasoning_content": t }), None)),
        Event::Logprob(lp) => {
            let mut c = chunk(json!({}), None);
            c["choices"][0]["logprobs"] = json!({ "content": [chat_logprob(&lp)] });
            sse(&c)
        }
        Event::ToolCall { index, call } => sse(&chunk(
            json!({ "tool_calls": [call_json(Some(index), &call)] }),
            None,
        )),
        Event::Done { stats, finish } => {
            stream_end(&chunk, json!({}), &stats, finish.as_openai(), include_usage)
        }
        Event::Failed(e) => error_event(e),
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
    let (params, budget) = req.sampling.params(&ctx, Some(16), Endpoint::Completion)?;
    let want_logprobs = params.logprobs.is_some();
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let mut turn = core::GenRequest::new(core::Input::Raw(prompt), params, budget);
    turn.constraint = super::structured::grammar(D, req.grammar)?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let id = format!("cmpl-{:016x}", rand::random::<u64>());
    let created = unix_now();
    let name = model.name.clone();
    if !req.stream.unwrap_or(false) {
        let done = out.collect().await?;
        return Ok(Json(json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{
                "text": done.text,
                "index": 0,
                "logprobs": if want_logprobs {
                    completion_logprobs(&done.logprobs, 0)
                } else {
                    Value::Null
                },
                "finish_reason": done.finish.as_openai(),
            }],
            "usage": stats_usage(&done.stats),
        }))
        .into_response());
    }
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let chunk = move |text: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "text_completion",
            "created": created,
            "model": name,
            "system_fingerprint": fingerprint(),
            "choices": [{ "text": text, "index": 0, "logprobs": null, "finish_reason": finish }],
        })
    };
    let mut offset = 0;
    let body = out.into_body(None, move |event| match event {
        Event::Text(t) | Event::Reasoning(t) => sse(&chunk(json!(t), None)),
        Event::Logprob(lp) => {
            let mut c = chunk(json!(""), None);
            c["choices"][0]["logprobs"] = completion_logprobs(std::slice::from_ref(&lp), offset);
            offset += lp.text.len();
            sse(&c)
        }
        Event::ToolCall { .. } => Bytes::new(),
        Event::Done { stats, finish } => {
            stream_end(&chunk, json!(""), &stats, finish.as_openai(), include_usage)
        }
        Event::Failed(e) => error_event(e),
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

crate::fields!(EmbeddingsRequest: "model", "input", "encoding_format", "dimensions");
