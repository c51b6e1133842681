//! Ollama dialect: `/api/version`, `/api/tags`, `/api/show`, `/api/ps`, `/api/chat`,
//! `/api/generate`, `/api/embed`, `/api/embeddings`, `/api/delete`. Streams are NDJSON
//! (one JSON object per line), on by default, ending with a `"done": true` line with timings.

use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::GenStats;
use crate::library::{human, LibraryError};

use super::core::{self, Event};
use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::gen::{self, build_params, Budget, Fit, SamplingFields};
use super::models::ModelEntry;
use super::tools;
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

crate::fields!(NameRequest: "model", "name");

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
        "modelfile": format!("# Served by Influence\nFROM {}\n", e.name),
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
            merge(&mut v, super::ps::facts(&ctx, m));
            v
        })
        .collect();
    let a = super::ps::activity(&ctx);
    Json(json!({
        "models": models,
        "active_requests": a.running,
        "queued_requests": a.waiting,
        "engine": super::ps::engine_facts(&ctx.engine().stats()),
    }))
}

/// Adds the keys of object `extra` to object `v`.
pub(crate) fn merge(v: &mut Value, extra: Value) {
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
}

/// Ollama's `options`: the sampling fields Influence acts on. Anything else (hardware hints
/// such as `num_thread`) is a 400 naming it.
#[derive(Debug, Default, Deserialize)]
pub struct Options {
    #[serde(flatten)]
    common: SamplingFields,
    #[serde(default)]
    repeat_last_n: Option<usize>,
    #[serde(default)]
    num_predict: Option<i64>,
    #[serde(default)]
    num_ctx: Option<u64>,
}

const OPTIONS: &[&str] = &[
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "seed",
    "stop",
    "repeat_last_n",
    "num_predict",
    "num_ctx",
];

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
        let p = build_params(
            &ctx.options().defaults,
            self.common.input(max_tokens, self.repeat_last_n),
            &[("max_tokens", "num_predict")],
            D,
        )?;
        Ok((p, Budget { num_ctx, fit }))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InFunction {
    name: String,
    #[serde(default)]
    arguments: Option<Value>,
    /// Newer clients number their calls.
    #[serde(default)]
    index: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InCall {
    function: InFunction,
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OllamaMessage {
    role: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    tool_calls: Option<Vec<InCall>>,
    #[serde(default)]
    thinking: Option<String>,
    /// For a tool result: the function that produced it.
    #[serde(default)]
    tool_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    function: FunctionSpec,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    messages: Vec<OllamaMessage>,
    #[serde(default)]
    tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    format: Option<Value>,
    /// A grammar in llguidance's Lark syntax (an Influence extension, as llama.cpp's).
    #[serde(default)]
    grammar: Option<String>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    options: Option<Options>,
    /// `0` with nothing to generate unloads the model (how Ollama clients free memory).
    #[serde(default)]
    keep_alive: Option<Value>,
}

crate::fields!(ChatRequest: "model", "messages", "tools", "stream", "format", "grammar", "think", "options", "keep_alive"; nested "options" => OPTIONS);

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
    format: Option<Value>,
    /// A grammar in llguidance's Lark syntax (an Influence extension, as llama.cpp's).
    #[serde(default)]
    grammar: Option<String>,
    #[serde(default)]
    think: Option<Value>,
    #[serde(default)]
    images: Option<Vec<Value>>,
    #[serde(default)]
    options: Option<Options>,
    /// `0` with nothing to generate unloads the model (how Ollama clients free memory).
    #[serde(default)]
    keep_alive: Option<Value>,
}

crate::fields!(GenerateRequest: "model", "prompt", "system", "raw", "stream", "format", "grammar", "think", "images", "options", "keep_alive"; nested "options" => OPTIONS);

/// `format` and the raw `grammar` as the answer's one constraint.
fn output_constraint(
    format: Option<Value>,
    grammar: Option<String>,
) -> Result<Option<crate::engine::Constraint>, ApiError> {
    let format = super::structured::ollama_format(D, format)?;
    let grammar = super::structured::grammar(D, grammar)?;
    match (format, grammar) {
        (Some(_), Some(_)) => Err(ApiError::bad_field(
            D,
            "grammar",
            "grammar and format both shape the answer; send one of them",
        )),
        (f, g) => Ok(f.or(g)),
    }
}

/// `think`: `true`/`false`, or an effort level (`"low"`, `"medium"`, `"high"`).
fn think_of(v: Option<Value>) -> Result<(Option<bool>, Option<String>), ApiError> {
    match v {
        None | Some(Value::Null) => Ok((None, None)),
        Some(Value::Bool(b)) => Ok((Some(b), None)),
        Some(Value::String(s)) if ["low", "medium", "high"].contains(&s.as_str()) => {
            Ok((Some(true), Some(s)))
        }
        Some(_) => Err(ApiError::bad_field(
            D,
            "think",
            "think must be true, false, \"low\", \"medium\" or \"high\"",
        )),
    }
}

fn no_images(images: &Option<Vec<Value>>, field: &str) -> Result<(), ApiError> {
    if images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::bad_field(
            D,
            field,
            format!("{field}: images are not supported (Influence runs text models)"),
        ));
    }
    Ok(())
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

fn calls_json(calls: &[core::ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({ "function": { "name": c.name, "arguments": c.arguments } }))
        .collect()
}

impl Kind {
    fn piece(self, model: &str, text: &str, thinking: &str, calls: &[core::ToolCall]) -> Value {
        let mut v = match self {
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
        };
        let target = match self {
            Kind::Chat => &mut v["message"],
            Kind::Generate => &mut v,
        };
        if !thinking.is_empty() {
            target["thinking"] = json!(thinking);
        }
        if !calls.is_empty() {
            target["tool_calls"] = calls_json(calls);
        }
        v
    }
}

/// Ollama's closing fields: why it ended and the timings, in nanoseconds.
fn finish_fields(
    v: &mut Value,
    stats: &GenStats,
    finish: core::Finish,
    request_start: Instant,
    load: Duration,
) {
    v["done"] = json!(true);
    // Ollama says `stop` for an answer that called tools.
    v["done_reason"] = json!(match finish {
        core::Finish::Length => "length",
        _ => "stop",
    });
    v["total_duration"] = json!(ns(request_start.elapsed()));
    v["load_duration"] = json!(ns(load));
    v["prompt_eval_count"] = json!(stats.prompt_tokens);
    v["prompt_eval_duration"] = json!(ms_ns(stats.prompt_ms));
    v["eval_count"] = json!(stats.generated_tokens);
    v["eval_duration"] = json!(ms_ns(stats.gen_ms));
}

async fn run(
    ctx: ServerCtx,
    kind: Kind,
    model: ModelEntry,
    turn: core::GenRequest,
    stream: bool,
) -> Result<Response, ApiError> {
    turn.check_tools(D, "tools")?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let name = model.name.clone();
    let request_start = out.stream().request_start;
    let load = out.stream().load;
    if !stream {
        let done = out.collect().await?;
        let mut v = kind.piece(&name, &done.text, &done.reasoning, &done.tool_calls);
        finish_fields(&mut v, &done.stats, done.finish, request_start, load);
        return Ok(Json(v).into_response());
    }
    let body = out.into_body(None, move |event| match event {
        Event::Text(t) => ndjson_line(&kind.piece(&name, &t, "", &[])),
        Event::Reasoning(t) => ndjson_line(&kind.piece(&name, "", &t, &[])),
        Event::Logprob(_) => Bytes::new(),
        Event::ToolCall { call, .. } => ndjson_line(&kind.piece(&name, "", "", &[call])),
        Event::Done { stats, finish } => {
            let mut v = kind.piece(&name, "", "", &[]);
            finish_fields(&mut v, &stats, finish, request_start, load);
            ndjson_line(&v)
        }
        Event::Failed(e) => ndjson_line(&e.body()),
    });
    Ok(ndjson_response(body))
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
        let mut v = kind.piece(&model.name, "", "", &[]);
        v["done"] = json!(true);
        v["done_reason"] = json!("unload");
        return Ok(Json(v).into_response());
    }
    let (load, total) = gen::load_only(ctx, D, model).await?;
    let mut v = kind.piece(&model.name, "", "", &[]);
    v["done"] = json!(true);
    v["done_reason"] = json!("load");
    v["total_duration"] = json!(ns(total));
    v["load_duration"] = json!(ns(load));
    Ok(Json(v).into_response())
}

fn to_messages(messages: Vec<OllamaMessage>) -> Result<Vec<core::Message>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    let mut last_ids: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let bad =
            |what: String| ApiError::bad_field(D, "messages", format!("messages[{i}]: {what}"));
        let role = match m.role.as_str() {
            "system" => core::Role::System,
            "user" => core::Role::User,
            "assistant" => core::Role::Assistant,
            "tool" => core::Role::Tool,
            other => {
                return Err(bad(format!(
                    "role `{other}` is not supported; allowed: system, user, assistant, tool"
                )))
            }
        };
        if m.images.as_ref().is_some_and(|v| !v.is_empty()) {
            return Err(bad(
                "images are not supported (Influence runs text models)".into()
            ));
        }
        let mut tool_calls = Vec::new();
        for (j, c) in m.tool_calls.unwrap_or_default().into_iter().enumerate() {
            if role != core::Role::Assistant {
                return Err(bad("only assistant messages carry tool_calls".into()));
            }
            if c.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(bad(format!("tool_calls[{j}].type must be `function`")));
            }
            let _ = c.function.index;
            let arguments = match c.function.arguments {
                None | Some(Value::Null) => json!({}),
                Some(v @ Value::Object(_)) => v,
                Some(_) => {
                    return Err(bad(format!(
                        "tool_calls[{j}].function.arguments must be a JSON object"
                    )))
                }
            };
            tool_calls.push(core::ToolCall {
                id: c.id.unwrap_or_else(tools::call_id),
                name: c.function.name,
                arguments,
            });
        }
        if !tool_calls.is_empty() {
            last_ids = tool_calls
                .iter()
                .map(|c| (c.name.clone(), c.id.clone()))
                .collect();
        }
        // Ollama's tool results name the function, not a call id: match them to the calls.
        let tool_call_id = (role == core::Role::Tool)
            .then(|| {
                let by_name = m
                    .tool_name
                    .as_ref()
                    .and_then(|n| last_ids.iter().position(|(name, _)| name == n));
                let at = by_name.unwrap_or(0);
                (at < last_ids.len()).then(|| last_ids.remove(at).1)
            })
            .flatten();
        out.push(core::Message {
            role: Some(role),
            content: m.content,
            tool_calls,
            tool_call_id,
            name: m.tool_name,
            reasoning: m.thinking,
        });
    }
    Ok(out)
}

fn to_tools(specs: Option<Vec<ToolSpec>>) -> Result<Vec<core::Tool>, ApiError> {
    specs
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            if t.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ApiError::bad_field(
                    D,
                    "tools",
                    format!("tools[{i}].type must be `function`"),
                ));
            }
            Ok(core::Tool {
                strict: false,
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

pub async fn chat(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let messages = to_messages(req.messages)?;
    let constraint = output_constraint(req.format, req.grammar)?;
    let tools = to_tools(req.tools)?;
    let (think, effort) = think_of(req.think)?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    if messages.is_empty() {
        return load_answer(&ctx, Kind::Chat, &model, &req.keep_alive).await;
    }
    let (params, budget) = req.options.unwrap_or_default().params(&ctx)?;
    let mut turn = core::GenRequest::new(core::Input::Chat(messages), params, budget);
    turn.tools = tools;
    turn.constraint = constraint;
    turn.reasoning = core::Reasoning {
        split: true,
        think,
        effort,
    };
    run(ctx, Kind::Chat, model, turn, req.stream.unwrap_or(true)).await
}

pub async fn generate(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<GenerateRequest>,
) -> Result<Response, ApiError> {
    let constraint = output_constraint(req.format, req.grammar)?;
    no_images(&req.images, "images")?;
    let (think, effort) = think_of(req.think)?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let prompt = req.prompt.unwrap_or_default();
    if prompt.is_empty() {
        return load_answer(&ctx, Kind::Generate, &model, &req.keep_alive).await;
    }
    let raw = req.raw.unwrap_or(false);
    if raw && (think.is_some() || req.system.is_some()) {
        let field = if think.is_some() { "think" } else { "system" };
        return Err(ApiError::bad_field(
            D,
            field,
            format!(
                "{field} has no effect with raw: true (no chat template is applied); leave one out"
            ),
        ));
    }
    let input = if raw {
        core::Input::Raw(prompt)
    } else {
        let mut msgs = Vec::new();
        if let Some(system) = req.system.filter(|s| !s.is_empty()) {
            msgs.push(core::Message::new(core::Role::System, system));
        }
        msgs.push(core::Message::new(core::Role::User, prompt));
        core::Input::Chat(msgs)
    };
    let (params, budget) = req.options.unwrap_or_default().params(&ctx)?;
    let mut turn = core::GenRequest::new(input, params, budget);
    turn.constraint = constraint;
    turn.reasoning = core::Reasoning {
        split: !raw,
        think,
        effort,
    };
    run(ctx, Kind::Generate, model, turn, req.stream.unwrap_or(true)).await
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

crate::fields!(EmbedRequest: "model", "input");

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

crate::fields!(EmbeddingsRequest: "model", "prompt");

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
    // Library errors name files; the client gets the model name, the log gets the rest.
    let failed = |e: &dyn std::fmt::Display| {
        tracing::warn!(model = %entry.name, "delete through the API failed: {e}");
        ApiError::internal(
            D,
            format!(
                "deleting `{}` failed; the details are in the server log",
                entry.name
            ),
        )
    };
    let plan = plan.map_err(|e| match e {
        LibraryError::ForeignStore { store, .. } => ApiError::new(
            D,
            StatusCode::FORBIDDEN,
            format!(
                "`{}` lives in {store}; Influence never deletes files it does not own. Remove it with that app",
                entry.name
            ),
        ),
        other => failed(&other),
    })?;
    let _ = ctx.engine().unload(entry.path.clone()).await;
    tokio::task::spawn_blocking(move || plan.execute())
        .await
        .map_err(|e| failed(&e))?
        .map_err(|e| failed(&e))?;
    ctx.rescan().await;
    tracing::info!(model = %entry.name, "deleted through the API");
    Ok(StatusCode::OK.into_response())
}
