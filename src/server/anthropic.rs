//! Anthropic Messages dialect: `POST /v1/messages` (system, content blocks, tools with
//! `tool_use` / `tool_result`, thinking, streaming events) and `/v1/messages/count_tokens`.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::core::{self, Event, Finish};
use super::error::{ApiError, Dialect};
use super::extract::ApiJson;
use super::gen::{self, build_params, Budget, Fit, StopSpec};
use super::ServerCtx;

const D: Dialect = Dialect::Anthropic;

/// A content block of a request message. Some fields are only checked for shape: prompt
/// caching hints (Influence reuses the longest cached prefix on its own) and the signatures of
/// earlier thinking.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Block {
    Text {
        text: String,
        #[serde(default)]
        cache_control: Option<Value>,
        #[serde(default)]
        citations: Option<Value>,
    },
    ToolUse {
        id: String,
        name: String,
        #[serde(default)]
        input: Value,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    ToolResult {
        tool_use_id: String,
        #[serde(default)]
        content: Option<ResultContent>,
        #[serde(default)]
        is_error: Option<bool>,
        #[serde(default)]
        cache_control: Option<Value>,
    },
    Thinking {
        thinking: String,
        #[serde(default)]
        signature: Option<String>,
    },
    RedactedThinking {
        #[serde(default)]
        data: Option<String>,
    },
    Image {
        #[serde(default)]
        source: Option<Value>,
    },
    Document {
        #[serde(default)]
        source: Option<Value>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ResultContent {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InMessage {
    role: String,
    content: Content,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    input_schema: Value,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    cache_control: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolChoiceSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    disable_parallel_tool_use: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ThinkingSpec {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    budget_tokens: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    /// An end-user id; logged with the request.
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum System {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stop_sequences: Option<Vec<String>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    tool_choice: Option<ToolChoiceSpec>,
    #[serde(default)]
    thinking: Option<ThinkingSpec>,
    #[serde(default)]
    metadata: Option<Metadata>,
}

crate::fields!(MessagesRequest: "model", "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "metadata");

fn text_of(blocks: Vec<Block>, what: &str) -> Result<String, ApiError> {
    let mut out = String::new();
    for b in blocks {
        match b {
            Block::Text { text, .. } => out.push_str(&text),
            other => {
                return Err(ApiError::bad_field(
                    D,
                    what,
                    format!(
                        "{what} holds a {} block; only text blocks are allowed there",
                        block_name(&other)
                    ),
                ))
            }
        }
    }
    Ok(out)
}

fn block_name(b: &Block) -> &'static str {
    match b {
        Block::Text { .. } => "text",
        Block::ToolUse { .. } => "tool_use",
        Block::ToolResult { .. } => "tool_result",
        Block::Thinking { .. } => "thinking",
        Block::RedactedThinking { .. } => "redacted_thinking",
        Block::Image { .. } => "image",
        Block::Document { .. } => "document",
    }
}

/// Anthropic messages hold several blocks; the core's messages hold one kind each, so a user
/// turn with tool results becomes one tool message per result (then the text), and an
/// assistant turn carries its thinking, text and calls together.
fn to_messages(
    system: Option<System>,
    messages: Vec<InMessage>,
) -> Result<Vec<core::Message>, ApiError> {
    let mut out = Vec::new();
    match system {
        None => {}
        Some(System::Text(t)) => out.push(core::Message::new(core::Role::System, t)),
        Some(System::Blocks(b)) => out.push(core::Message::new(
            core::Role::System,
            text_of(b, "system")?,
        )),
    }
    if messages.is_empty() {
        return Err(ApiError::bad_field(
            D,
            "messages",
            "messages is empty; send at least one message",
        ));
    }
    for (i, m) in messages.into_iter().enumerate() {
        let bad =
            |what: String| ApiError::bad_field(D, "messages", format!("messages[{i}]: {what}"));
        let role = match m.role.as_str() {
            "user" => core::Role::User,
            "assistant" => core::Role::Assistant,
            other => {
                return Err(bad(format!(
                    "role `{other}` is not supported; allowed: user, assistant (the system prompt goes in `system`)"
                )))
            }
        };
        let blocks = match m.content {
            Content::Text(t) => vec![Block::Text {
                text: t,
                cache_control: None,
                citations: None,
            }],
            Content::Blocks(b) => b,
        };
        let mut msg = core::Message::new(role, "");
        for b in blocks {
            match b {
                Block::Text {
                    text, citations, ..
                } => {
                    if citations.is_some_and(|c| !c.is_null()) {
                        return Err(bad("citations are not supported".into()));
                    }
                    msg.content.push_str(&text);
                }
                Block::ToolUse {
                    id, name, input, ..
                } if role == core::Role::Assistant => {
                    let arguments = match input {
                        Value::Null => json!({}),
                        v @ Value::Object(_) => v,
                        _ => return Err(bad("a tool_use input must be a JSON object".into())),
                    };
                    msg.tool_calls.push(core::ToolCall {
                        id,
                        name,
                        arguments,
                    });
                }
                Block::ToolResult {
                    tool_use_id,
                    content,
                    is_error,
                    ..
                } if role == core::Role::User => {
                    let mut text = match content {
                        None => String::new(),
                        Some(ResultContent::Text(t)) => t,
                        Some(ResultContent::Blocks(b)) => text_of(b, "messages")?,
                    };
                    if is_error == Some(true) {
                        text = format!("Error: {text}");
                    }
                    let mut r = core::Message::new(core::Role::Tool, text);
                    r.tool_call_id = Some(tool_use_id);
                    out.push(r);
                }
                Block::Thinking { thinking, .. } if role == core::Role::Assistant => {
                    msg.reasoning = Some(thinking);
                }
                Block::RedactedThinking { .. } if role == core::Role::Assistant => {}
                other => {
                    return Err(bad(format!(
                        "a {} block is not supported in a {} message",
                        block_name(&other),
                        m.role
                    )))
                }
            }
        }
        if !(role == core::Role::User
            && msg.content.is_empty()
            && out.last().is_some_and(|l| l.role == Some(core::Role::Tool)))
        {
            out.push(msg);
        }
    }
    Ok(out)
}

fn to_turn(ctx: &ServerCtx, req: MessagesRequest) -> Result<(core::GenRequest, bool), ApiError> {
    let messages = to_messages(req.system, req.messages)?;
    let max_tokens = match req.max_tokens {
        Some(0) => {
            return Err(ApiError::bad_field(
                D,
                "max_tokens",
                "max_tokens = 0 is out of range; allowed 1 or more",
            ))
        }
        v => v.map(|v| usize::try_from(v).unwrap_or(usize::MAX)),
    };
    let input = gen::SamplingFields {
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: req.stop_sequences.map(StopSpec::Many),
        ..Default::default()
    }
    .input(max_tokens, None);
    let params = build_params(
        &ctx.options().defaults,
        input,
        &[("stop", "stop_sequences")],
        D,
    )?;
    let fit = if max_tokens.is_some() {
        Fit::AsGiven
    } else {
        Fit::CapToRoom
    };
    let mut turn = core::GenRequest::new(
        core::Input::Chat(messages),
        params,
        Budget { num_ctx: None, fit },
    );
    for (i, t) in req.tools.unwrap_or_default().into_iter().enumerate() {
        if t.kind.as_deref().is_some_and(|k| k != "custom") {
            return Err(ApiError::bad_field(
                D,
                "tools",
                format!("tools[{i}]: server tools (`{}`) are not available; define a custom tool with input_schema", t.kind.unwrap_or_default()),
            ));
        }
        let _ = t.cache_control;
        turn.tools.push(core::Tool {
            strict: false,
            name: t.name,
            description: t.description,
            parameters: t.input_schema,
        });
    }
    if let Some(c) = req.tool_choice {
        turn.tool_choice = match (c.kind.as_str(), c.name) {
            ("auto", None) => core::ToolChoice::Auto,
            ("any", None) => core::ToolChoice::Required,
            ("none", None) => core::ToolChoice::None,
            ("tool", Some(n)) => core::ToolChoice::Named(n),
            _ => {
                return Err(ApiError::bad_field(
                    D,
                    "tool_choice",
                    "tool_choice must be {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": ...}",
                ))
            }
        };
        turn.parallel_tool_calls = c.disable_parallel_tool_use != Some(true);
    }
    turn.check_tools(D, "tool_choice")?;
    turn.reasoning.split = true;
    if let Some(t) = req.thinking {
        let _ = t.budget_tokens;
        turn.reasoning.think = match t.kind.as_str() {
            "enabled" => Some(true),
            "disabled" => Some(false),
            _ => {
                return Err(ApiError::bad_field(
                    D,
                    "thinking",
                    "thinking.type must be `enabled` or `disabled`",
                ))
            }
        };
    }
    if let Some(u) = req.metadata.and_then(|m| m.user_id) {
        tracing::debug!(user = %u, "request from end user");
    }
    Ok((turn, req.stream.unwrap_or(false)))
}

fn stop_reason(f: Finish) -> &'static str {
    match f {
        Finish::Stop => "end_turn",
        Finish::Length => "max_tokens",
        Finish::ToolCalls => "tool_use",
    }
}

fn tool_use_id() -> String {
    format!("toolu_{:024x}", rand::random::<u128>() >> 32)
}

fn sse(event: &str, data: &Value) -> Vec<u8> {
    format!("event: {event}\ndata: {data}\n\n").into_bytes()
}

/// Which content block is open in a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    Thinking,
}

/// Turns neutral events into Anthropic's block events, opening and closing blocks as the
/// kind of content changes.
struct Encoder {
    open: Open,
    index: usize,
}

impl Encoder {
    fn close(&mut self, out: &mut Vec<u8>) {
        if self.open == Open::Thinking {
            out.extend(sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": self.index, "delta": {"type": "signature_delta", "signature": ""}}),
            ));
        }
        if self.open != Open::None {
            out.extend(sse(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.index}),
            ));
            self.index += 1;
            self.open = Open::None;
        }
    }

    fn delta(&mut self, kind: Open, text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        if self.open != kind {
            self.close(&mut out);
            let block = match kind {
                Open::Thinking => json!({"type": "thinking", "thinking": "", "signature": ""}),
                _ => json!({"type": "text", "text": ""}),
            };
            out.extend(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": self.index, "content_block": block}),
            ));
            self.open = kind;
        }
        let delta = match kind {
            Open::Thinking => json!({"type": "thinking_delta", "thinking": text}),
            _ => json!({"type": "text_delta", "text": text}),
        };
        out.extend(sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": self.index, "delta": delta}),
        ));
        out
    }

    fn event(&mut self, e: Event) -> Bytes {
        let mut out = Vec::new();
        match e {
            Event::Text(t) => out = self.delta(Open::Text, &t),
            Event::Reasoning(t) => out = self.delta(Open::Thinking, &t),
            // Never asked for in this dialect.
            Event::Logprob(_) => {}
            Event::ToolCall { call, .. } => {
                self.close(&mut out);
                out.extend(sse(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": self.index,
                        "content_block": {"type": "tool_use", "id": tool_use_id(), "name": call.name, "input": {}}}),
                ));
                out.extend(sse(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments.to_string()}}),
                ));
                out.extend(sse(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": self.index}),
                ));
                self.index += 1;
            }
            Event::Done { stats, finish } => {
                self.close(&mut out);
                out.extend(sse(
                    "message_delta",
                    &json!({"type": "message_delta",
                        "delta": {"stop_reason": stop_reason(finish), "stop_sequence": null},
                        "usage": {"output_tokens": stats.generated_tokens}}),
                ));
                out.extend(sse("message_stop", &json!({"type": "message_stop"})));
            }
            Event::Failed(e) => {
                self.close(&mut out);
                out.extend(sse("error", &e.body()));
            }
        }
        Bytes::from(out)
    }
}

pub async fn messages(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<MessagesRequest>,
) -> Result<Response, ApiError> {
    let model_name = req.model.clone();
    let (turn, stream) = to_turn(&ctx, req)?;
    let model = ctx.resolve_model(model_name.as_deref(), D)?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let id = format!("msg_{:024x}", rand::random::<u128>() >> 32);
    let prompt_tokens = out.stream().prompt_tokens;
    let cached = out.stream().cached_tokens;
    if !stream {
        let done = out.collect().await?;
        let mut content = Vec::new();
        if !done.reasoning.is_empty() {
            content.push(json!({"type": "thinking", "thinking": done.reasoning, "signature": ""}));
        }
        if !done.text.is_empty() || done.tool_calls.is_empty() {
            content.push(json!({"type": "text", "text": done.text}));
        }
        for c in &done.tool_calls {
            content.push(json!({"type": "tool_use", "id": tool_use_id(), "name": c.name, "input": c.arguments}));
        }
        return Ok(Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model.name,
            "content": content,
            "stop_reason": stop_reason(done.finish),
            "stop_sequence": null,
            "usage": {
                "input_tokens": done.stats.prompt_tokens - done.stats.cached_tokens.min(done.stats.prompt_tokens),
                "cache_read_input_tokens": done.stats.cached_tokens,
                "cache_creation_input_tokens": 0,
                "output_tokens": done.stats.generated_tokens,
            },
        }))
        .into_response());
    }
    let start = sse(
        "message_start",
        &json!({"type": "message_start", "message": {
            "id": id, "type": "message", "role": "assistant", "model": model.name,
            "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens - cached.min(prompt_tokens), "cache_read_input_tokens": cached,
                      "cache_creation_input_tokens": 0, "output_tokens": 0},
        }}),
    );
    let mut enc = Encoder {
        open: Open::None,
        index: 0,
    };
    let body = out.into_body(Some(Bytes::from(start)), move |e| enc.event(e));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct CountRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<InMessage>,
    #[serde(default)]
    system: Option<System>,
    #[serde(default)]
    tools: Option<Vec<ToolSpec>>,
    #[serde(default)]
    tool_choice: Option<ToolChoiceSpec>,
    #[serde(default)]
    thinking: Option<ThinkingSpec>,
}

crate::fields!(CountRequest: "model", "messages", "system", "tools", "tool_choice", "thinking");

/// The prompt's size in tokens once rendered for the model, tools included.
pub async fn count_tokens(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<CountRequest>,
) -> Result<Json<Value>, ApiError> {
    let full = MessagesRequest {
        model: req.model,
        messages: req.messages,
        system: req.system,
        max_tokens: None,
        stop_sequences: None,
        stream: None,
        temperature: None,
        top_p: None,
        top_k: None,
        tools: req.tools,
        tool_choice: req.tool_choice,
        thinking: req.thinking,
        metadata: None,
    };
    let model_name = full.model.clone();
    let (turn, _) = to_turn(&ctx, full)?;
    let model = ctx.resolve_model(model_name.as_deref(), D)?;
    let n = core::count_tokens(&ctx, D, &model, &turn).await?;
    Ok(Json(json!({ "input_tokens": n })))
}
