//! The dialect-neutral turn.
//!
//! Each dialect decodes its request JSON into a [`GenRequest`] (messages with tool calls and
//! tool results, tools, tool choice, reasoning options, sampling), [`run`] turns it into an
//! engine prompt for the model's chat template, and the [`Output`] it returns reads the
//! engine's tokens as neutral [`Event`]s: text, reasoning, tool calls, then the end. Reasoning
//! is split off first and tool calls parsed after, so a call "thought about" is never a call.
//! The dialects only encode those events in their own wire format.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use futures::Stream;
use serde_json::{json, Map, Value};

use crate::engine::template::ChatTemplate;
use crate::engine::{ChatMessage, Constraint, FinishReason, GenParams, GenStats, Prompt};

use super::error::{ApiError, Dialect};
use super::gen::{self, Budget, Frame, GenStream};
use super::models::ModelEntry;
use super::reasoning::{ReasoningSplitter, Split};
use super::tools::{self, Piece, ToolFormat, ToolParser};
pub use super::tools::{Tool, ToolCall, ToolChoice};
use super::ServerCtx;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering the assistant's call `tool_call_id`.
    Tool,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub role: Option<Role>,
    pub content: String,
    /// An assistant's calls.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the call it answers.
    pub tool_call_id: Option<String>,
    /// For a tool result: the function's name, when the client says it.
    pub name: Option<String>,
    /// An assistant's earlier thinking; sent back only to templates that ask for it.
    pub reasoning: Option<String>,
}

impl Message {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role: Some(role),
            content: content.into(),
            ..Default::default()
        }
    }

    fn role(&self) -> Role {
        self.role.unwrap_or(Role::User)
    }
}

/// Thinking controls.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reasoning {
    /// Split `<think>` blocks out of the answer (chat endpoints).
    pub split: bool,
    /// Ollama's `think`: turn thinking on or off where the template has the switch.
    pub think: Option<bool>,
    /// OpenAI's `reasoning_effort`, passed to templates that read it.
    pub effort: Option<String>,
}

/// What to generate from.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Chat(Vec<Message>),
    /// Text fed to the model as is (completions, `raw`).
    Raw(String),
}

/// A dialect-neutral generation request.
#[derive(Debug, Clone)]
pub struct GenRequest {
    pub input: Input,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// `false`: only the first call of an answer is kept.
    pub parallel_tool_calls: bool,
    pub reasoning: Reasoning,
    /// The answer's required shape (`response_format`, `format`, `grammar`); a forced tool
    /// call takes precedence.
    pub constraint: Option<Constraint>,
    pub params: GenParams,
    pub budget: Budget,
}

impl GenRequest {
    pub fn new(input: Input, params: GenParams, budget: Budget) -> Self {
        GenRequest {
            input,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: true,
            reasoning: Reasoning::default(),
            constraint: None,
            params,
            budget,
        }
    }

    /// Checks the tool fields against each other; `field` names the dialect's own.
    pub fn check_tools(&self, dialect: Dialect, field: &str) -> Result<(), ApiError> {
        for (i, t) in self.tools.iter().enumerate() {
            if !tools_name_ok(&t.name) {
                return Err(ApiError::bad_field(
                    dialect,
                    "tools",
                    format!("tools[{i}] has the name `{}`; use letters, digits, `_`, `-` and `.`, at most 128", t.name),
                ));
            }
            if !t.parameters.is_object() {
                return Err(ApiError::bad_field(
                    dialect,
                    "tools",
                    format!(
                        "tools[{i}] `{}`: its parameters must be a JSON Schema object",
                        t.name
                    ),
                ));
            }
        }
        match &self.tool_choice {
            ToolChoice::Required if self.tools.is_empty() => Err(ApiError::bad_field(
                dialect,
                field,
                format!("{field} requires a tool call, but the request has no tools"),
            )),
            ToolChoice::Named(n) if !self.tools.iter().any(|t| &t.name == n) => {
                Err(ApiError::bad_field(
                    dialect,
                    field,
                    format!("{field} names the function `{n}`, which is not among the tools"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The tool choice as the prompt and grammar apply it: `required` with a single tool is
    /// that tool named, so the call's whole header is written for the model (for harmony, the
    /// only form whose arguments a grammar can hold).
    fn choice_in_effect(&self) -> ToolChoice {
        match (&self.tool_choice, self.tools.as_slice()) {
            (ToolChoice::Required, [only]) => ToolChoice::Named(only.name.clone()),
            (c, _) => c.clone(),
        }
    }

    fn tools_active(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }
}

fn tools_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// What a model's chat template can do, learned by rendering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    /// The template prints `tools` (else the fallback system prompt is used).
    pub tools: bool,
    pub format: ToolFormat,
    /// The generation prompt opens a `<think>` block.
    pub opens_think: bool,
    /// The template reads `enable_thinking`.
    pub think_switch: bool,
    /// The template reads `reasoning_effort`.
    pub effort: bool,
    /// The template prints earlier `reasoning_content`.
    pub keeps_reasoning: bool,
    /// The template renders a `tool` role (else results go in as user messages).
    pub tool_role: bool,
    /// The template writes OpenAI's harmony format (gpt-oss): answers come in channels.
    pub harmony: bool,
}

const PROBE_TOOL: &str = "influence_probe_tool";

impl Caps {
    /// Renders `source` with probe inputs; a template that does not compile has no extras.
    pub fn of(source: Option<&str>) -> Caps {
        let none = Caps {
            tools: false,
            format: ToolFormat::Hermes,
            opens_think: false,
            think_switch: false,
            effort: false,
            keeps_reasoning: false,
            tool_role: false,
            harmony: false,
        };
        let Some(src) = source else {
            return none;
        };
        let Ok(t) = ChatTemplate::new(
            src,
            "",
            "",
            std::path::Path::new("the probe of a chat template"),
        ) else {
            return none;
        };
        let user = json!({"role": "user", "content": "probe question"});
        let mut vars = Map::new();
        vars.insert(
            "tools".into(),
            tools::template_tools(&[Tool {
                name: PROBE_TOOL.into(),
                description: Some("probe".into()),
                parameters: json!({"type": "object", "properties": {}}),
                strict: false,
            }]),
        );
        let tools = t
            .render_json(std::slice::from_ref(&user), true, &vars)
            .is_ok_and(|s| s.contains(PROBE_TOOL));
        let opens_think = t
            .render_json(std::slice::from_ref(&user), true, &Map::new())
            .is_ok_and(|s| s.trim_end().ends_with("<think>"));
        let tool_role = t
            .render_json(
                &[
                    user,
                    json!({"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": PROBE_TOOL, "arguments": {}}}]}),
                    json!({"role": "tool", "tool_call_id": "c", "content": "probe result"}),
                ],
                true,
                &vars,
            )
            .is_ok_and(|s| s.contains("probe result"));
        Caps {
            tools,
            format: ToolFormat::detect(src),
            opens_think,
            think_switch: src.contains("enable_thinking"),
            effort: src.contains("reasoning_effort"),
            keeps_reasoning: src.contains("reasoning_content"),
            tool_role,
            harmony: src.contains("<|channel|>") && src.contains("<|message|>"),
        }
    }
}

/// The engine prompt for `req` on a model with `caps`, and the answer's forced start.
pub fn build_prompt(
    req: &GenRequest,
    caps: &Caps,
    dialect: Dialect,
) -> Result<(Prompt, String), ApiError> {
    let messages = match &req.input {
        Input::Raw(text) => return Ok((Prompt::Raw(text.clone()), String::new())),
        Input::Chat(m) => m,
    };
    let tools_on = req.tools_active();
    let prefill = if tools_on {
        caps.format
            .forced_prefix(&req.choice_in_effect())
            .unwrap_or_default()
    } else {
        String::new()
    };
    let mut vars = Map::new();
    match req.reasoning.think {
        Some(on) if caps.think_switch => {
            vars.insert("enable_thinking".into(), json!(on));
        }
        Some(true) if !caps.opens_think => {
            return Err(ApiError::bad_field(
                dialect,
                "think",
                "think: this model's chat template has no thinking mode",
            ))
        }
        _ => {}
    }
    if let Some(effort) = &req.reasoning.effort {
        if !caps.effort {
            return Err(ApiError::bad_field(
                dialect,
                "reasoning_effort",
                "reasoning_effort: this model's chat template has no reasoning effort setting",
            ));
        }
        vars.insert("reasoning_effort".into(), json!(effort));
    }
    let plain = !tools_on
        && vars.is_empty()
        && messages
            .iter()
            .all(|m| m.role() != Role::Tool && m.tool_calls.is_empty());
    if plain {
        // The engine's own path, exactly as the TUI renders a chat.
        let chat = messages
            .iter()
            .map(|m| {
                let role = match m.role() {
                    Role::System => crate::engine::Role::System,
                    Role::Assistant => crate::engine::Role::Assistant,
                    _ => crate::engine::Role::User,
                };
                ChatMessage::new(role, m.content.clone())
            })
            .collect();
        return Ok((Prompt::Chat(chat), String::new()));
    }
    let native = caps.tools;
    let split_calls;
    let messages: &[Message] = if caps.format == ToolFormat::Harmony && native && caps.tool_role {
        split_calls = one_call_per_message(messages);
        &split_calls
    } else {
        messages
    };
    let mut out: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    if tools_on {
        if native {
            vars.insert("tools".into(), tools::template_tools(&req.tools));
        } else {
            let mut system = tools::fallback_system_prompt(&req.tools);
            if let Some(first) = messages.first().filter(|m| m.role() == Role::System) {
                system = format!("{}\n\n{system}", first.content);
            }
            out.push(json!({"role": "system", "content": system}));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        if i == 0 && tools_on && !native && m.role() == Role::System {
            continue;
        }
        out.push(message_json(m, caps, native));
    }
    Ok((
        Prompt::Template {
            messages: out,
            vars,
            prefill: prefill.clone(),
        },
        prefill,
    ))
}

/// gpt-oss's template renders only the first call of an assistant message and names each tool
/// result after the latest call, so an answer with several calls becomes one assistant message
/// per call, each followed by its result (matched by `tool_call_id`, else in order).
fn one_call_per_message(messages: &[Message]) -> Vec<Message> {
    let mut out = Vec::with_capacity(messages.len());
    let mut i = 0;
    while i < messages.len() {
        let m = &messages[i];
        i += 1;
        if m.role() != Role::Assistant || m.tool_calls.len() < 2 {
            out.push(m.clone());
            continue;
        }
        let start = i;
        while i < messages.len() && messages[i].role() == Role::Tool {
            i += 1;
        }
        let results = &messages[start..i];
        let mut used = vec![false; results.len()];
        for (k, call) in m.tool_calls.iter().enumerate() {
            out.push(Message {
                role: Some(Role::Assistant),
                content: if k == 0 {
                    m.content.clone()
                } else {
                    String::new()
                },
                tool_calls: vec![call.clone()],
                reasoning: m.reasoning.clone().filter(|_| k == 0),
                ..Default::default()
            });
            let by_id = results
                .iter()
                .enumerate()
                .position(|(x, r)| !used[x] && r.tool_call_id.as_deref() == Some(&call.id));
            if let Some(x) = by_id.or_else(|| used.iter().position(|u| !u)) {
                used[x] = true;
                out.push(results[x].clone());
            }
        }
        out.extend(
            results
                .iter()
                .zip(&used)
                .filter(|(_, u)| !**u)
                .map(|(r, _)| r.clone()),
        );
    }
    out
}

fn message_json(m: &Message, caps: &Caps, native: bool) -> Value {
    match m.role() {
        Role::Tool if !(native && caps.tool_role) => {
            json!({"role": "user", "content": tools::fallback_result_text(&m.content)})
        }
        Role::Assistant if !m.tool_calls.is_empty() && !native => {
            let mut text = m.content.clone();
            for c in &m.tool_calls {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&tools::fallback_call_text(&c.name, &c.arguments));
            }
            json!({"role": "assistant", "content": text})
        }
        role => {
            let mut v = json!({"role": role.as_str(), "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = Value::Array(
                    m.tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            })
                        })
                        .collect(),
                );
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            if let Some(n) = &m.name {
                v["name"] = json!(n);
            }
            if let Some(r) = m.reasoning.as_ref().filter(|_| caps.keeps_reasoning) {
                v["reasoning_content"] = json!(r);
            }
            v
        }
    }
}

/// Why an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    ToolCalls,
}

impl Finish {
    /// OpenAI's `finish_reason` (also Ollama's `done_reason`, which says `stop` for calls).
    pub fn as_openai(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ToolCalls => "tool_calls",
        }
    }
}

/// One step of the answer.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Reasoning(String),
    /// The next token's log-probability (only when the request asked for them); its text
    /// follows as `Text` or `Reasoning`.
    Logprob(Box<crate::engine::TokenLogprob>),
    /// A complete call; `index` counts the answer's calls from 0.
    ToolCall {
        index: usize,
        call: ToolCall,
    },
    Done {
        stats: GenStats,
        finish: Finish,
    },
    Failed(ApiError),
}

/// A whole answer (non-streaming responses).
#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub reasoning: String,
    pub tool_calls: Vec<ToolCall>,
    /// Per token, when asked for.
    pub logprobs: Vec<crate::engine::TokenLogprob>,
    pub stats: GenStats,
    pub finish: Finish,
}

/// A running generation read as neutral events.
pub struct Output {
    stream: GenStream,
    dialect: Dialect,
    pub model: String,
    split: Option<ReasoningSplitter>,
    parser: Option<ToolParser>,
    parallel: bool,
    calls: usize,
    queue: VecDeque<Event>,
    ended: bool,
}

impl Output {
    pub fn stream(&self) -> &GenStream {
        &self.stream
    }

    /// The next event; `None` after `Done` or `Failed`.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            if self.ended {
                return None;
            }
            match self.stream.next_frame().await {
                Some(Frame::Token(t, logprob)) => {
                    if let Some(lp) = logprob {
                        self.queue.push_back(Event::Logprob(lp));
                    }
                    if !t.is_empty() {
                        self.feed(&t);
                    }
                }
                Some(Frame::Done(stats)) => {
                    self.flush();
                    self.ended = true;
                    let finish = if self.calls > 0 {
                        Finish::ToolCalls
                    } else if stats.finish == FinishReason::Length {
                        Finish::Length
                    } else {
                        Finish::Stop
                    };
                    self.queue.push_back(Event::Done { stats, finish });
                }
                Some(Frame::Failed(e)) => {
                    self.ended = true;
                    self.queue.push_back(Event::Failed(ApiError::from_engine(
                        self.dialect,
                        &self.model,
                        e,
                    )));
                }
                None => {
                    self.ended = true;
                }
            }
        }
    }

    fn feed(&mut self, text: &str) {
        let splits = match &mut self.split {
            Some(s) => s.push(text),
            None => vec![Split::Content(text.to_string())],
        };
        self.route(splits);
    }

    fn flush(&mut self) {
        if let Some(s) = &mut self.split {
            let rest = s.finish();
            self.route(rest);
        }
        if let Some(p) = &mut self.parser {
            let rest = p.finish();
            self.pieces(rest);
        }
    }

    fn route(&mut self, splits: Vec<Split>) {
        for s in splits {
            match s {
                Split::Reasoning(t) => self.queue.push_back(Event::Reasoning(t)),
                Split::Content(t) => match &mut self.parser {
                    Some(p) => {
                        let pieces = p.push(&t);
                        self.pieces(pieces);
                    }
                    None => self.queue.push_back(Event::Text(t)),
                },
            }
        }
    }

    fn pieces(&mut self, pieces: Vec<Piece>) {
        for p in pieces {
            match p {
                Piece::Text(t) => self.queue.push_back(Event::Text(t)),
                Piece::Call(call) => {
                    if !self.parallel && self.calls > 0 {
                        tracing::debug!(tool = %call.name, "dropping a second call (parallel_tool_calls = false)");
                        continue;
                    }
                    self.queue.push_back(Event::ToolCall {
                        index: self.calls,
                        call,
                    });
                    self.calls += 1;
                }
            }
        }
    }

    /// Reads the whole answer.
    pub async fn collect(mut self) -> Result<Completion, ApiError> {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut tool_calls = Vec::new();
        let mut logprobs = Vec::new();
        while let Some(e) = self.next().await {
            match e {
                Event::Logprob(lp) => logprobs.push(*lp),
                Event::Text(t) => text.push_str(&t),
                Event::Reasoning(t) => reasoning.push_str(&t),
                Event::ToolCall { call, .. } => tool_calls.push(call),
                Event::Done { stats, finish } => {
                    return Ok(Completion {
                        text,
                        reasoning,
                        tool_calls,
                        logprobs,
                        stats,
                        finish,
                    })
                }
                Event::Failed(e) => return Err(e),
            }
        }
        Err(ApiError::from_engine(
            self.dialect,
            &self.model,
            crate::engine::EngineError::EngineStopped,
        ))
    }

    /// A response body: `head` first, then `encode` of each event until the end.
    pub fn into_body<F>(
        self,
        head: Option<Bytes>,
        encode: F,
    ) -> impl Stream<Item = Result<Bytes, Infallible>> + Send + 'static
    where
        F: FnMut(Event) -> Bytes + Send + 'static,
    {
        let head = futures::stream::iter(head.map(Ok));
        let body = futures::stream::unfold(Some((self, encode)), |state| async move {
            let (mut out, mut encode) = state?;
            let event = out.next().await?;
            let last = matches!(event, Event::Done { .. } | Event::Failed(_));
            let bytes = encode(event);
            Some((Ok(bytes), (!last).then_some((out, encode))))
        });
        futures::StreamExt::chain(head, body)
    }
}

/// Loads the model, renders the request for its template and starts generating.
pub async fn run(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
    req: GenRequest,
) -> Result<Output, ApiError> {
    let ready = gen::admit_and_load(ctx, dialect, model).await?;
    let caps = ctx.caps(ready.info.chat_template.as_deref());
    let (prompt, prefill) = build_prompt(&req, &caps, dialect)?;
    let split = (req.reasoning.split && prefill.is_empty() && matches!(req.input, Input::Chat(_)))
        .then(|| {
            if caps.harmony && req.tools_active() {
                ReasoningSplitter::harmony_with_calls()
            } else if caps.harmony {
                ReasoningSplitter::harmony()
            } else {
                ReasoningSplitter::new(caps.opens_think && req.reasoning.think != Some(false))
            }
        });
    let tools_on = req.tools_active();
    let names: Vec<String> = req.tools.iter().map(|t| t.name.clone()).collect();
    let parallel = req.parallel_tool_calls;
    let choice = req.choice_in_effect();
    let mut params = req.params;
    params.constraint = pick_constraint(
        &req.tools,
        &choice,
        req.constraint,
        &caps,
        tools_on,
        &req.input,
        req.reasoning.think,
    )
    .map(Box::new);
    let stream = gen::begin(ctx, dialect, model, ready, prompt, params, req.budget).await?;
    let parser = tools_on.then(|| {
        let mut p = ToolParser::new(caps.format).knowing(names);
        let pre = p.push(&prefill);
        debug_assert!(pre.is_empty(), "a forced prefix is never complete text");
        p
    });
    Ok(Output {
        stream,
        dialect,
        model: model.name.clone(),
        split,
        parser,
        parallel,
        calls: 0,
        queue: VecDeque::new(),
        ended: false,
    })
}

/// The one constraint a generation gets: a forced call's; else the requested output shape;
/// else, with tools on, the lazy one that keeps each call the model opens well formed. A
/// model that thinks first (its prompt opens `<think>`) is constrained only after `</think>`.
fn pick_constraint(
    tools: &[Tool],
    choice: &ToolChoice,
    output: Option<Constraint>,
    caps: &Caps,
    tools_on: bool,
    input: &Input,
    think: Option<bool>,
) -> Option<Constraint> {
    let call = || {
        tools_on
            .then(|| caps.format.call_constraint(tools, choice, "tools"))
            .flatten()
    };
    let forced = tools_on && matches!(choice, ToolChoice::Required | ToolChoice::Named(_));
    let mut c = if forced { call() } else { output.or_else(call) }?;
    let thinks_first = caps.opens_think && think != Some(false) && matches!(input, Input::Chat(_));
    if thinks_first && c.trigger.is_none() && !forced {
        c.trigger = Some("</think>".into());
    }
    Some(c)
}

/// The prompt's size in tokens once rendered for the model (tools and all).
pub async fn count_tokens(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
    req: &GenRequest,
) -> Result<usize, ApiError> {
    let ready = gen::admit_and_load(ctx, dialect, model).await?;
    let caps = ctx.caps(ready.info.chat_template.as_deref());
    let (prompt, _) = build_prompt(req, &caps, dialect)?;
    let n = ctx
        .engine()
        .count_tokens(model.path.clone(), prompt)
        .await
        .unwrap_or(Err(crate::engine::EngineError::EngineStopped))
        .map_err(|e| ApiError::from_engine(dialect, &model.name, e))?;
    drop(ready);
    Ok(n)
}

impl ServerCtx {
    /// What the template `source` supports, computed once per template.
    pub(crate) fn caps(&self, source: Option<&str>) -> Arc<Caps> {
        let key = source.unwrap_or_default().to_string();
        if let Some(c) = self
            .caps_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return c.clone();
        }
        let caps = Arc::new(Caps::of(source));
        self.caps_cache()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, caps.clone());
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QWEN_LIKE: &str = "{%- if tools %}<|im_start|>system\n<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools><|im_end|>\n{%- endif %}{%- for m in messages %}{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>{{ m.content }}</tool_response><|im_end|>\n{%- elif m.tool_calls %}<|im_start|>assistant\n{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}<|im_end|>\n{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";

    fn req(messages: Vec<Message>, tools: Vec<Tool>) -> GenRequest {
        let mut r = GenRequest::new(
            Input::Chat(messages),
            GenParams::default(),
            Budget::as_given(),
        );
        r.tools = tools;
        r
    }

    fn weather() -> Tool {
        Tool {
            name: "get_weather".into(),
            description: Some("Weather for a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            strict: false,
        }
    }

    #[test]
    fn caps_from_templates() {
        let c = Caps::of(Some(QWEN_LIKE));
        assert!(c.tools && c.tool_role);
        assert_eq!(c.format, ToolFormat::Hermes);
        assert!(!c.opens_think);
        let plain = Caps::of(Some(crate::engine::template::CHATML));
        assert!(!plain.tools && !plain.harmony);
        let harmony = Caps::of(Some("{% for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{% endfor %}{% if add_generation_prompt %}<|start|>assistant{% endif %}{# <|channel|>final #}"));
        assert!(harmony.harmony && !c.harmony);
        let think = Caps::of(Some("{% for m in messages %}{{ m.content }}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}{{ enable_thinking }}"));
        assert!(think.opens_think && think.think_switch);
        assert!(!Caps::of(None).tools);
        assert!(!Caps::of(Some("{% broken")).tools);
    }

    /// gpt-oss's own template (llama.cpp's `models/templates/openai-gpt-oss-120b.jinja`) shows
    /// a follow-up turn's calls and results in harmony form: two calls of one answer become two
    /// assistant messages, each followed by its result, so both render (the template shows only
    /// a message's first call) under the right function's name.
    #[test]
    fn harmony_follow_ups_render_each_call_and_its_result() {
        let src = include_str!("../../tests/fixtures/templates/openai-gpt-oss-120b.jinja");
        let caps = Caps::of(Some(src));
        assert!(caps.harmony && caps.tools && caps.tool_role);
        assert_eq!(caps.format, ToolFormat::Harmony);
        let mut calls = Message::new(Role::Assistant, "");
        calls.tool_calls = ["c1", "c2"]
            .iter()
            .zip(["Paris", "Oslo"])
            .map(|(id, city)| ToolCall {
                id: id.to_string(),
                name: if *id == "c1" {
                    "get_weather"
                } else {
                    "get_time"
                }
                .into(),
                arguments: json!({ "city": city }),
            })
            .collect();
        // Results in the other order: they are matched by id.
        let mut time = Message::new(Role::Tool, "09:00");
        time.tool_call_id = Some("c2".into());
        let mut weather_result = Message::new(Role::Tool, "22C");
        weather_result.tool_call_id = Some("c1".into());
        let r = req(
            vec![
                Message::new(Role::User, "Weather and time?"),
                calls,
                time,
                weather_result,
            ],
            vec![weather()],
        );
        let (prompt, _) = build_prompt(&r, &caps, Dialect::OpenAi).unwrap();
        let Prompt::Template { messages, vars, .. } = prompt else {
            panic!("{prompt:?}")
        };
        let t = ChatTemplate::new(src, "", "", std::path::Path::new("gpt-oss")).unwrap();
        let text = t.render_json(&messages, true, &vars).unwrap();
        let want = concat!(
            "<|start|>user<|message|>Weather and time?<|end|>",
            "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>{\"city\": \"Paris\"}<|call|>",
            "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>\"22C\"<|end|>",
            "<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{\"city\": \"Oslo\"}<|call|>",
            "<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>\"09:00\"<|end|>",
            "<|start|>assistant",
        );
        assert!(text.ends_with(want), "{text}");
    }

    #[test]
    fn plain_chats_take_the_engine_path() {
        let r = req(vec![Message::new(Role::User, "hi")], vec![]);
        let (p, prefill) = build_prompt(&r, &Caps::of(None), Dialect::OpenAi).unwrap();
        assert_eq!(p, Prompt::Chat(vec![ChatMessage::user("hi")]));
        assert!(prefill.is_empty());
    }

    #[test]
    fn native_tools_go_to_the_template() {
        let mut call_turn = Message::new(Role::Assistant, "");
        call_turn.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }];
        let mut result = Message::new(Role::Tool, "22C");
        result.tool_call_id = Some("c1".into());
        let r = req(
            vec![Message::new(Role::User, "Weather?"), call_turn, result],
            vec![weather()],
        );
        let caps = Caps::of(Some(QWEN_LIKE));
        let (p, _) = build_prompt(&r, &caps, Dialect::OpenAi).unwrap();
        let Prompt::Template { messages, vars, .. } = &p else {
            panic!("{p:?}");
        };
        assert_eq!(vars["tools"][0]["function"]["name"], "get_weather");
        assert_eq!(
            messages[1]["tool_calls"][0]["function"]["arguments"]["city"],
            "Paris"
        );
        assert_eq!(messages[2]["role"], "tool");
        assert_eq!(messages[2]["tool_call_id"], "c1");
        let text = ChatTemplate::new(QWEN_LIKE, "", "", std::path::Path::new("t.jinja"))
            .unwrap()
            .render_json(messages, true, vars)
            .unwrap();
        assert!(text.contains("<tools>{\"function\": {\"description\": \"Weather for a city\", \"name\": \"get_weather\""), "{text}");
        assert!(
            text.contains("<tool_response>22C</tool_response>"),
            "{text}"
        );
    }

    #[test]
    fn templates_without_tools_get_the_fallback_prompt() {
        let mut call_turn = Message::new(Role::Assistant, "");
        call_turn.tool_calls = vec![ToolCall {
            id: "c1".into(),
            name: "get_weather".into(),
            arguments: json!({"city": "Paris"}),
        }];
        let r = req(
            vec![
                Message::new(Role::System, "Be brief."),
                Message::new(Role::User, "Weather?"),
                call_turn,
                Message::new(Role::Tool, "22C"),
            ],
            vec![weather()],
        );
        let (p, _) = build_prompt(
            &r,
            &Caps::of(Some(crate::engine::template::CHATML)),
            Dialect::OpenAi,
        )
        .unwrap();
        let Prompt::Template { messages, vars, .. } = &p else {
            panic!("{p:?}");
        };
        assert!(vars.get("tools").is_none());
        let system = messages[0]["content"].as_str().unwrap();
        assert!(
            system.starts_with("Be brief.\n\nYou can call functions"),
            "{system}"
        );
        assert!(system.contains("\"name\":\"get_weather\""), "{system}");
        assert_eq!(messages.len(), 4);
        assert_eq!(
            messages[2]["content"],
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}</tool_call>"
        );
        assert_eq!(messages[3]["role"], "user");
        assert_eq!(
            messages[3]["content"],
            "<tool_response>\n22C\n</tool_response>"
        );
    }

    #[test]
    fn forced_choice_prefills_and_bad_choices_are_refused() {
        let mut r = req(vec![Message::new(Role::User, "hi")], vec![weather()]);
        r.tool_choice = ToolChoice::Named("get_weather".into());
        r.check_tools(Dialect::OpenAi, "tool_choice").unwrap();
        let (p, prefill) = build_prompt(&r, &Caps::of(Some(QWEN_LIKE)), Dialect::OpenAi).unwrap();
        assert_eq!(
            prefill,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\":"
        );
        assert!(matches!(p, Prompt::Template { prefill: ref x, .. } if *x == prefill));
        r.tool_choice = ToolChoice::Named("other".into());
        let e = r.check_tools(Dialect::OpenAi, "tool_choice").unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tool_choice"));
        r.tools.clear();
        r.tool_choice = ToolChoice::Required;
        assert!(r.check_tools(Dialect::OpenAi, "tool_choice").is_err());
        // `none`: no tools offered, nothing parsed.
        let mut r = req(vec![Message::new(Role::User, "hi")], vec![weather()]);
        r.tool_choice = ToolChoice::None;
        let (p, _) = build_prompt(&r, &Caps::of(Some(QWEN_LIKE)), Dialect::OpenAi).unwrap();
        assert!(matches!(p, Prompt::Chat(_)));
    }

    #[test]
    fn reasoning_options_need_template_support() {
        let mut r = req(vec![Message::new(Role::User, "hi")], vec![]);
        r.reasoning.effort = Some("low".into());
        let e = build_prompt(&r, &Caps::of(None), Dialect::OpenAi).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("reasoning_effort"));
        let mut r = req(vec![Message::new(Role::User, "hi")], vec![]);
        r.reasoning.think = Some(true);
        assert!(build_prompt(&r, &Caps::of(None), Dialect::Ollama).is_err());
        r.reasoning.think = Some(false);
        assert!(build_prompt(&r, &Caps::of(None), Dialect::Ollama).is_ok());
        let switch = Caps::of(Some(
            "{{ enable_thinking }}{% for m in messages %}{{ m.content }}{% endfor %}",
        ));
        let (p, _) = build_prompt(&r, &switch, Dialect::Ollama).unwrap();
        assert!(
            matches!(p, Prompt::Template { ref vars, .. } if vars["enable_thinking"] == json!(false))
        );
    }
}
