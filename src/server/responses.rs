//! OpenAI Responses dialect, stateless: `POST /v1/responses` with `input` (text or items:
//! messages, `function_call`, `function_call_output`), `instructions`, function tools and
//! streaming events. Nothing is stored: `store: true` and `previous_response_id` are refused.

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
use super::gen::{build_params, unix_now, Budget, Fit, SamplingFields};
use super::ServerCtx;

const D: Dialect = Dialect::OpenAi;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    Text(String),
    Items(Vec<Value>),
}

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    #[serde(default)]
    model: Option<String>,
    input: Input,
    #[serde(default)]
    instructions: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    tool_choice: Option<Value>,
    #[serde(default)]
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    store: Option<bool>,
    #[serde(default)]
    previous_response_id: Option<Value>,
    #[serde(default)]
    reasoning: Option<Value>,
    #[serde(default)]
    text: Option<Value>,
    /// An end-user id; logged with the request.
    #[serde(default)]
    user: Option<String>,
}

crate::fields!(ResponsesRequest: "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens", "temperature", "top_p", "stream", "store", "previous_response_id", "reasoning", "text", "user");

fn bad(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::bad_field(D, field, msg)
}

/// The text of a message item's `content`: a string or `input_text` / `output_text` parts.
fn content_text(v: &Value, at: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        out.push_str(p.get("text").and_then(Value::as_str).unwrap_or_default())
                    }
                    other => {
                        return Err(bad(
                            "input",
                            format!(
                                "{at} has a `{}` part; only text parts are supported",
                                other.unwrap_or("?")
                            ),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(bad(
            "input",
            format!("{at}.content must be a string or a list of parts"),
        )),
    }
}

fn to_messages(instructions: Option<String>, input: Input) -> Result<Vec<core::Message>, ApiError> {
    let mut out = Vec::new();
    if let Some(i) = instructions.filter(|i| !i.is_empty()) {
        out.push(core::Message::new(core::Role::System, i));
    }
    let items = match input {
        Input::Text(t) => {
            out.push(core::Message::new(core::Role::User, t));
            return Ok(out);
        }
        Input::Items(items) => items,
    };
    if items.is_empty() {
        return Err(bad("input", "input is empty; send some text or items"));
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("system" | "developer") => core::Role::System,
                    Some("user") => core::Role::User,
                    Some("assistant") => core::Role::Assistant,
                    other => {
                        return Err(bad(
                            "input",
                            format!("{at}.role `{}` is not supported; allowed: system, developer, user, assistant", other.unwrap_or("?")),
                        ))
                    }
                };
                let text = content_text(item.get("content").unwrap_or(&Value::Null), &at)?;
                out.push(core::Message::new(role, text));
            }
            "function_call" => {
                let name = item.get("name").and_then(Value::as_str);
                let call_id = item.get("call_id").and_then(Value::as_str);
                let args = item
                    .get("arguments")
                    .and_then(Value::as_str)
                    .and_then(|a| serde_json::from_str::<Value>(a).ok())
                    .filter(Value::is_object);
                let (Some(name), Some(call_id), Some(arguments)) = (name, call_id, args) else {
                    return Err(bad("input", format!("{at}: a function_call needs name, call_id and arguments (a JSON object as a string)")));
                };
                let call = core::ToolCall {
                    id: call_id.to_string(),
                    name: name.to_string(),
                    arguments,
                };
                // Calls of one answer belong to one assistant turn.
                match out.last_mut() {
                    Some(m)
                        if m.role == Some(core::Role::Assistant)
                            && (m.content.is_empty() || !m.tool_calls.is_empty()) =>
                    {
                        m.tool_calls.push(call)
                    }
                    _ => {
                        let mut m = core::Message::new(core::Role::Assistant, "");
                        m.tool_calls.push(call);
                        out.push(m);
                    }
                }
            }
            "function_call_output" => {
                let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                    return Err(bad("input", format!("{at}: a function_call_output needs call_id")));
                };
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => content_text(v, &at)?,
                    None => String::new(),
                };
                let mut m = core::Message::new(core::Role::Tool, output);
                m.tool_call_id = Some(call_id.to_string());
                out.push(m);
            }
            // Earlier reasoning is not sent back to the model.
            "reasoning" => {}
            other => {
                return Err(bad(
                    "input",
                    format!("{at}.type `{other}` is not supported; allowed: message, function_call, function_call_output, reasoning"),
                ))
            }
        }
    }
    Ok(out)
}

fn to_tools(tools: Option<Vec<Value>>) -> Result<Vec<core::Tool>, ApiError> {
    let mut out = Vec::new();
    for (i, t) in tools.unwrap_or_default().iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                "tools",
                format!("tools[{i}]: only function tools are supported (built-in tools such as web search are not)"),
            ));
        }
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(bad("tools", format!("tools[{i}] needs a name")));
        };
        out.push(core::Tool {
            strict: t.get("strict").and_then(Value::as_bool) == Some(true),
            name: name.to_string(),
            description: t
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_string),
            parameters: t
                .get("parameters")
                .cloned()
                .filter(|p| !p.is_null())
                .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
        });
    }
    Ok(out)
}

fn to_choice(v: Option<Value>) -> Result<core::ToolChoice, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(core::ToolChoice::Auto),
        Some(Value::String(s)) if s == "auto" => Ok(core::ToolChoice::Auto),
        Some(Value::String(s)) if s == "none" => Ok(core::ToolChoice::None),
        Some(Value::String(s)) if s == "required" => Ok(core::ToolChoice::Required),
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => o
            .get("name")
            .and_then(Value::as_str)
            .map(|n| core::ToolChoice::Named(n.to_string()))
            .ok_or_else(|| bad("tool_choice", "tool_choice {\"type\": \"function\"} needs a name")),
        Some(_) => Err(bad(
            "tool_choice",
            "tool_choice must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": ...}",
        )),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{:024x}", rand::random::<u128>() >> 32)
}

/// The `response` object, as both the answer and the stream's first and last events carry it.
#[allow(clippy::too_many_arguments)]
fn response_object(
    id: &str,
    created: u64,
    model: &str,
    status: &str,
    output: Vec<Value>,
    usage: Value,
    req: &Echo,
    incomplete: bool,
) -> Value {
    json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "model": model,
        "output": output,
        "usage": usage,
        "error": null,
        "incomplete_details": if incomplete { json!({"reason": "max_output_tokens"}) } else { Value::Null },
        "instructions": req.instructions,
        "tools": req.tools,
        "tool_choice": req.tool_choice,
        "parallel_tool_calls": req.parallel,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_output_tokens": req.max_output_tokens,
        "store": false,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "text": req.text,
        "truncation": "disabled",
        "metadata": {},
    })
}

/// Request fields the response object repeats.
struct Echo {
    instructions: Option<String>,
    tools: Value,
    tool_choice: Value,
    parallel: bool,
    temperature: Option<f32>,
    top_p: Option<f32>,
    max_output_tokens: Option<u64>,
    /// The requested output format (`{"format": {"type": "text"}}` when none was).
    text: Value,
}

fn usage(stats: &crate::engine::GenStats) -> Value {
    json!({
        "input_tokens": stats.prompt_tokens,
        "input_tokens_details": {"cached_tokens": stats.cached_tokens},
        "output_tokens": stats.generated_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": stats.prompt_tokens + stats.generated_tokens,
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [],
           "content": [{"type": "reasoning_text", "text": text}]})
}

fn call_item(call: &core::ToolCall) -> Value {
    json!({
        "type": "function_call", "id": new_id("fc"), "call_id": call.id, "name": call.name,
        "arguments": call.arguments.to_string(), "status": "completed",
    })
}

pub async fn create(
    State(ctx): State<ServerCtx>,
    ApiJson(req): ApiJson<ResponsesRequest>,
) -> Result<Response, ApiError> {
    if req.store == Some(true) {
        return Err(bad(
            "store",
            "store: true is not supported; this server keeps no responses (send store: false)",
        ));
    }
    if req
        .previous_response_id
        .as_ref()
        .is_some_and(|v| !v.is_null())
    {
        return Err(bad("previous_response_id", "previous_response_id is not supported; this server keeps no responses, so send the whole conversation in input"));
    }
    let effort = match &req.reasoning {
        None | Some(Value::Null) => None,
        Some(r) => {
            if r.as_object()
                .is_some_and(|o| o.keys().any(|k| k != "effort"))
            {
                return Err(bad("reasoning", "reasoning: only `effort` is supported"));
            }
            r.get("effort").and_then(Value::as_str).map(str::to_string)
        }
    };
    let constraint = super::structured::responses_text(D, req.text.clone())?;
    if let Some(u) = &req.user {
        tracing::debug!(user = %u, "request from end user");
    }
    let echo = Echo {
        instructions: req.instructions.clone(),
        tools: Value::Array(req.tools.clone().unwrap_or_default()),
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        parallel: req.parallel_tool_calls.unwrap_or(true),
        text: req
            .text
            .clone()
            .filter(|t| t.get("format").is_some_and(|f| !f.is_null()))
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
        temperature: req.temperature,
        top_p: req.top_p,
        max_output_tokens: req.max_output_tokens,
    };
    let messages = to_messages(req.instructions, req.input)?;
    let max_tokens = req
        .max_output_tokens
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    let params = build_params(
        &ctx.options().defaults,
        SamplingFields {
            temperature: req.temperature,
            top_p: req.top_p,
            ..Default::default()
        }
        .input(max_tokens, None),
        &[("max_tokens", "max_output_tokens")],
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
    turn.tools = to_tools(req.tools)?;
    turn.tool_choice = to_choice(req.tool_choice)?;
    turn.parallel_tool_calls = echo.parallel;
    turn.reasoning.split = true;
    turn.reasoning.effort = effort;
    turn.constraint = constraint;
    turn.check_tools(D, "tool_choice")?;
    let model = ctx.resolve_model(req.model.as_deref(), D)?;
    let out = core::run(&ctx, D, &model, turn).await?;
    let id = new_id("resp");
    let created = unix_now();
    let name = model.name.clone();
    if !req.stream.unwrap_or(false) {
        let done = out.collect().await?;
        let mut output = Vec::new();
        if !done.reasoning.is_empty() {
            output.push(reasoning_item(&new_id("rs"), &done.reasoning));
        }
        if !done.text.is_empty() || done.tool_calls.is_empty() {
            output.push(message_item(&new_id("msg"), &done.text, "completed"));
        }
        output.extend(done.tool_calls.iter().map(call_item));
        let incomplete = done.finish == Finish::Length;
        let status = if incomplete {
            "incomplete"
        } else {
            "completed"
        };
        return Ok(Json(response_object(
            &id,
            created,
            &name,
            status,
            output,
            usage(&done.stats),
            &echo,
            incomplete,
        ))
        .into_response());
    }
    let mut enc = StreamEncoder {
        id,
        created,
        model: name,
        echo,
        seq: 0,
        output: Vec::new(),
        open: None,
    };
    let head = enc.start();
    let body = out.into_body(Some(head), move |e| enc.event(e));
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The output item being streamed.
struct OpenItem {
    id: String,
    reasoning: bool,
    text: String,
}

/// Neutral events → Responses stream events, each with its `sequence_number`.
struct StreamEncoder {
    id: String,
    created: u64,
    model: String,
    echo: Echo,
    seq: u64,
    output: Vec<Value>,
    open: Option<OpenItem>,
}

impl StreamEncoder {
    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        self.seq += 1;
        out.extend(format!("event: {kind}\ndata: {data}\n\n").into_bytes());
    }

    fn response(&self, status: &str, usage: Value, incomplete: bool) -> Value {
        response_object(
            &self.id,
            self.created,
            &self.model,
            status,
            self.output.clone(),
            usage,
            &self.echo,
            incomplete,
        )
    }

    fn start(&mut self) -> Bytes {
        let mut out = Vec::new();
        let r = self.response("in_progress", Value::Null, false);
        self.emit(&mut out, "response.created", json!({ "response": r }));
        self.emit(&mut out, "response.in_progress", json!({ "response": r }));
        Bytes::from(out)
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(item) = self.open.take() else {
            return;
        };
        let index = self.output.len();
        let done = if item.reasoning {
            self.emit(out, "response.reasoning_text.done", json!({"item_id": item.id, "output_index": index, "content_index": 0, "text": item.text}));
            reasoning_item(&item.id, &item.text)
        } else {
            self.emit(out, "response.output_text.done", json!({"item_id": item.id, "output_index": index, "content_index": 0, "text": item.text}));
            self.emit(
                out,
                "response.content_part.done",
                json!({"item_id": item.id, "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": item.text, "annotations": []}}),
            );
            message_item(&item.id, &item.text, "completed")
        };
        self.emit(
            out,
            "response.output_item.done",
            json!({"output_index": index, "item": done}),
        );
        self.output.push(done);
    }

    fn delta(&mut self, out: &mut Vec<u8>, reasoning: bool, text: &str) {
        if self.open.as_ref().is_some_and(|o| o.reasoning != reasoning) {
            self.close(out);
        }
        let index = self.output.len();
        if self.open.is_none() {
            let id = new_id(if reasoning { "rs" } else { "msg" });
            let item = if reasoning {
                json!({"type": "reasoning", "id": id, "summary": [], "content": []})
            } else {
                json!({"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []})
            };
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            if !reasoning {
                self.emit(
                    out,
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                    "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
            }
            self.open = Some(OpenItem {
                id,
                reasoning,
                text: String::new(),
            });
        }
        let Some(item) = self.open.as_mut() else {
            return;
        };
        item.text.push_str(text);
        let id = item.id.clone();
        let kind = if reasoning {
            "response.reasoning_text.delta"
        } else {
            "response.output_text.delta"
        };
        self.emit(
            out,
            kind,
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text}),
        );
    }

    fn event(&mut self, e: Event) -> Bytes {
        let mut out = Vec::new();
        match e {
            Event::Text(t) => self.delta(&mut out, false, &t),
            Event::Reasoning(t) => self.delta(&mut out, true, &t),
            Event::Logprob(_) => {}
            Event::ToolCall { call, .. } => {
                self.close(&mut out);
                let index = self.output.len();
                let item = call_item(&call);
                let mut added = item.clone();
                added["status"] = json!("in_progress");
                added["arguments"] = json!("");
                self.emit(
                    &mut out,
                    "response.output_item.added",
                    json!({"output_index": index, "item": added}),
                );
                let args = call.arguments.to_string();
                self.emit(
                    &mut out,
                    "response.function_call_arguments.delta",
                    json!({"item_id": item["id"], "output_index": index, "delta": args}),
                );
                self.emit(
                    &mut out,
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": index, "arguments": args}),
                );
                self.emit(
                    &mut out,
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                );
                self.output.push(item);
            }
            Event::Done { stats, finish } => {
                self.close(&mut out);
                let incomplete = finish == Finish::Length;
                let (kind, status) = if incomplete {
                    ("response.incomplete", "incomplete")
                } else {
                    ("response.completed", "completed")
                };
                let r = self.response(status, usage(&stats), incomplete);
                self.emit(&mut out, kind, json!({ "response": r }));
            }
            Event::Failed(e) => {
                self.close(&mut out);
                let body = e.body();
                let mut r = self.response("failed", Value::Null, false);
                r["error"] = json!({"code": "server_error", "message": body["error"]["message"]});
                self.emit(&mut out, "response.failed", json!({ "response": r }));
            }
        }
        Bytes::from(out)
    }
}
