//! Remote chat backends: an OpenAI-compatible (`POST /v1/chat/completions`, SSE) or Ollama
//! (`POST /api/chat`, NDJSON) endpoint, streamed with reqwest into the same [`GenEvent`]
//! sequence the local engine produces (`Started`, `Token`…, `Done(GenStats)` or `Failed`).
//!
//! A chat selects one with `/model openai:http://host:port#model` or
//! `/model ollama:http://host:port#model`; the API key comes from `INFLUENCE_REMOTE_API_KEY`.

use std::time::Instant;

use crate::engine::{CancelToken, ChatMessage, FinishReason, GenEvent, GenParams, GenStats};
use futures::StreamExt;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RemoteSpec {
    pub dialect: Dialect,
    /// Server root, e.g. `http://127.0.0.1:11435` (a trailing `/v1` is accepted for OpenAI).
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RemoteError {
    #[error("{0:?} is not a remote model; write openai:URL#MODEL or ollama:URL#MODEL, e.g. openai:http://127.0.0.1:11435#qwen2.5")]
    Syntax(String),
    #[error("cannot reach {url}: {reason}. Check that the server runs and the URL is right")]
    Connect { url: String, reason: String },
    #[error("{url} answered HTTP {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} sent something that is not a {dialect} stream: {reason}")]
    Protocol {
        url: String,
        dialect: &'static str,
        reason: String,
    },
}

impl RemoteSpec {
    /// Parses `openai:URL#MODEL` / `ollama:URL#MODEL`; `None` when `s` is not a remote spec.
    pub fn parse(s: &str, api_key: Option<String>) -> Option<Result<RemoteSpec, RemoteError>> {
        let (dialect, rest) = if let Some(r) = s.strip_prefix("openai:") {
            (Dialect::OpenAi, r)
        } else if let Some(r) = s.strip_prefix("ollama:") {
            (Dialect::Ollama, r)
        } else {
            return None;
        };
        let Some((url, model)) = rest.rsplit_once('#') else {
            return Some(Err(RemoteError::Syntax(s.to_string())));
        };
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) || model.trim().is_empty() {
            return Some(Err(RemoteError::Syntax(s.to_string())));
        }
        let base_url = match dialect {
            Dialect::OpenAi => url.strip_suffix("/v1").unwrap_or(url),
            Dialect::Ollama => url,
        };
        Some(Ok(RemoteSpec {
            dialect,
            base_url: base_url.to_string(),
            model: model.trim().to_string(),
            api_key: api_key.filter(|k| !k.is_empty()),
        }))
    }

    /// How the chat names this model.
    pub fn display_name(&self) -> String {
        let host = self
            .base_url
            .split("://")
            .nth(1)
            .unwrap_or(&self.base_url)
            .to_string();
        // A model named by path (servers with path access on) shows its file name only.
        let model = self.model.rsplit('/').next().unwrap_or(&self.model);
        format!("{model}@{host}")
    }

    pub fn endpoint(&self) -> String {
        match self.dialect {
            Dialect::OpenAi => format!("{}/v1/chat/completions", self.base_url),
            Dialect::Ollama => format!("{}/api/chat", self.base_url),
        }
    }

    fn body(&self, messages: &[ChatMessage], p: &GenParams) -> Value {
        let msgs: Vec<Value> = messages
            .iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
        match self.dialect {
            Dialect::OpenAi => {
                let mut b = json!({
                    "model": self.model,
                    "messages": msgs,
                    "stream": true,
                    "stream_options": {"include_usage": true},
                    "temperature": p.temperature,
                    "top_p": p.top_p,
                    "max_tokens": p.max_tokens,
                });
                if let Some(seed) = p.seed {
                    b["seed"] = json!(seed);
                }
                if !p.stop.is_empty() {
                    b["stop"] = json!(p.stop);
                }
                b
            }
            Dialect::Ollama => {
                let mut opts = json!({
                    "temperature": p.temperature,
                    "top_p": p.top_p,
                    "top_k": p.top_k,
                    "min_p": p.min_p,
                    "repeat_penalty": p.repeat_penalty,
                    "repeat_last_n": p.repeat_last_n,
                    "num_predict": p.max_tokens,
                });
                if let Some(seed) = p.seed {
                    opts["seed"] = json!(seed);
                }
                if !p.stop.is_empty() {
                    opts["stop"] = json!(p.stop);
                }
                json!({"model": self.model, "messages": msgs, "stream": true, "options": opts})
            }
        }
    }
}

/// Counters gathered while streaming, turned into [`GenStats`] at the end.
#[derive(Debug, Default)]
struct Tally {
    tokens: usize,
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    first: Option<Instant>,
    finish: Option<FinishReason>,
}

/// Streams one chat completion, handing `Started`, `Token`s and `Done` to `emit`, until the
/// server finishes or `cancel` is set (then `Done` says `Cancelled`). Errors end the stream.
pub async fn stream_chat(
    client: &reqwest::Client,
    spec: &RemoteSpec,
    messages: &[ChatMessage],
    params: &GenParams,
    cancel: &CancelToken,
    mut emit: impl FnMut(GenEvent),
) -> Result<(), RemoteError> {
    let start = Instant::now();
    let url = spec.endpoint();
    let mut req = client.post(&url).json(&spec.body(messages, params));
    if let Some(k) = &spec.api_key {
        req = req.bearer_auth(k);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            return Err(RemoteError::Connect {
                url,
                reason: e.to_string(),
            })
        }
    };
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let body: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect();
        return Err(RemoteError::Status { url, status, body });
    }
    emit(GenEvent::Started {
        prompt_tokens: 0,
        cached_tokens: 0,
        dropped_messages: 0,
    });
    let mut tally = Tally::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut body = resp.bytes_stream();
    loop {
        if cancel.is_cancelled() {
            tally.finish = Some(FinishReason::Cancelled);
            break;
        }
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => continue,
        };
        let chunk = match chunk {
            None => break,
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                return Err(RemoteError::Connect {
                    url,
                    reason: e.to_string(),
                })
            }
        };
        buf.extend_from_slice(&chunk);
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line).trim().to_string();
            let r = match spec.dialect {
                Dialect::OpenAi => openai_line(&line, &mut tally, &mut emit),
                Dialect::Ollama => ollama_line(&line, &mut tally, &mut emit),
            };
            if let Err(reason) = r {
                return Err(RemoteError::Protocol {
                    url,
                    dialect: match spec.dialect {
                        Dialect::OpenAi => "OpenAI SSE",
                        Dialect::Ollama => "Ollama NDJSON",
                    },
                    reason,
                });
            }
        }
        if tally.finish.is_some() && spec.dialect == Dialect::Ollama {
            break;
        }
    }
    let end = Instant::now();
    let ttft_ms = tally
        .first
        .map_or(0.0, |f| (f - start).as_secs_f64() * 1000.0);
    let gen_ms = tally
        .first
        .map_or(0.0, |f| (end - f).as_secs_f64() * 1000.0);
    let generated = tally.completion_tokens.unwrap_or(tally.tokens);
    emit(GenEvent::Done(GenStats {
        prompt_tokens: tally.prompt_tokens.unwrap_or(0),
        cached_tokens: 0,
        generated_tokens: generated,
        ttft_ms,
        prompt_ms: ttft_ms,
        gen_ms,
        prompt_tok_s: 0.0,
        gen_tok_s: if gen_ms > 0.0 && generated > 1 {
            (generated - 1) as f64 * 1000.0 / gen_ms
        } else {
            0.0
        },
        finish: tally.finish.unwrap_or(FinishReason::Stop),
    }));
    Ok(())
}

fn token(tally: &mut Tally, emit: &mut impl FnMut(GenEvent), text: &str) {
    if text.is_empty() {
        return;
    }
    if tally.first.is_none() {
        tally.first = Some(Instant::now());
    }
    tally.tokens += 1;
    emit(GenEvent::Token {
        id: 0,
        text: text.to_string(),
        logprob: None,
    });
}

fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        _ => FinishReason::Stop,
    }
}

/// One SSE line of an OpenAI chat completion stream.
fn openai_line(
    line: &str,
    tally: &mut Tally,
    emit: &mut impl FnMut(GenEvent),
) -> Result<(), String> {
    let Some(data) = line.strip_prefix("data:") else {
        return Ok(()); // blank separators, comments, `event:` lines
    };
    let data = data.trim();
    if data == "[DONE]" {
        tally.finish.get_or_insert(FinishReason::Stop);
        return Ok(());
    }
    let v: Value = serde_json::from_str(data).map_err(|e| format!("bad JSON in data line: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(format!("server error: {err}"));
    }
    if let Some(choice) = v["choices"].get(0) {
        if let Some(t) = choice["delta"]["content"].as_str() {
            token(tally, emit, t);
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            tally.finish = Some(finish_reason(r));
        }
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        tally.prompt_tokens = u["prompt_tokens"].as_u64().map(|n| n as usize);
        tally.completion_tokens = u["completion_tokens"].as_u64().map(|n| n as usize);
    }
    Ok(())
}

/// One NDJSON line of an Ollama `/api/chat` stream.
fn ollama_line(
    line: &str,
    tally: &mut Tally,
    emit: &mut impl FnMut(GenEvent),
) -> Result<(), String> {
    if line.is_empty() {
        return Ok(());
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("bad JSON line: {e}"))?;
    if let Some(err) = v.get("error") {
        return Err(format!("server error: {err}"));
    }
    if let Some(t) = v["message"]["content"].as_str() {
        token(tally, emit, t);
    }
    if v["done"].as_bool() == Some(true) {
        tally.finish = Some(finish_reason(v["done_reason"].as_str().unwrap_or("stop")));
        tally.prompt_tokens = v["prompt_eval_count"].as_u64().map(|n| n as usize);
        tally.completion_tokens = v["eval_count"].as_u64().map(|n| n as usize);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_or_explain() {
        let s = RemoteSpec::parse("openai:http://127.0.0.1:8080/v1#qwen", None)
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint(), "http://127.0.0.1:8080/v1/chat/completions");
        assert_eq!(s.display_name(), "qwen@127.0.0.1:8080");
        let s = RemoteSpec::parse("openai:http://h:1#/m/x.gguf", None)
            .unwrap()
            .unwrap();
        assert_eq!(s.display_name(), "x.gguf@h:1");
        let s = RemoteSpec::parse("ollama:http://h:11434/#llama3", Some("k".into()))
            .unwrap()
            .unwrap();
        assert_eq!(s.endpoint(), "http://h:11434/api/chat");
        assert_eq!(s.api_key.as_deref(), Some("k"));
        assert!(RemoteSpec::parse("smollm2", None).is_none());
        assert!(RemoteSpec::parse("openai:nourl", None).unwrap().is_err());
    }

    #[test]
    fn sse_and_ndjson_lines_become_events() {
        let mut events = Vec::new();
        let mut t = Tally::default();
        {
            let mut emit = |e: GenEvent| events.push(e);
            openai_line(
                r#"data: {"choices":[{"delta":{"content":"Par"}}]}"#,
                &mut t,
                &mut emit,
            )
            .unwrap();
            openai_line(": keep-alive", &mut t, &mut emit).unwrap();
            openai_line(
                r#"data: {"choices":[{"delta":{"content":"is"},"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
                &mut t,
                &mut emit,
            )
            .unwrap();
            openai_line("data: [DONE]", &mut t, &mut emit).unwrap();
            assert!(openai_line("data: {nope", &mut t, &mut emit).is_err());
        }
        assert_eq!(t.finish, Some(FinishReason::Length));
        assert_eq!((t.prompt_tokens, t.completion_tokens), (Some(5), Some(2)));
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                GenEvent::Token { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "Paris");

        let mut t = Tally::default();
        let mut n = 0;
        let mut emit = |_e: GenEvent| n += 1;
        ollama_line(
            r#"{"message":{"role":"assistant","content":"Hi"},"done":false}"#,
            &mut t,
            &mut emit,
        )
        .unwrap();
        ollama_line(
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":7,"eval_count":1}"#,
            &mut t,
            &mut emit,
        )
        .unwrap();
        assert!(ollama_line(r#"{"error":"model not found"}"#, &mut t, &mut emit).is_err());
        assert_eq!(t.finish, Some(FinishReason::Stop));
        assert_eq!((t.tokens, t.prompt_tokens), (1, Some(7)));
        assert_eq!(n, 1);
    }

    /// A tiny server speaking both dialects, sending its body in 7-byte pieces so lines arrive
    /// split across chunks; it wants `Authorization: Bearer k`.
    async fn serve() -> String {
        use axum::body::{Body, Bytes};
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::post;
        fn chunked(text: &'static str) -> Body {
            let pieces: Vec<Result<Bytes, std::convert::Infallible>> = text
                .as_bytes()
                .chunks(7)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Body::from_stream(futures::stream::iter(pieces))
        }
        fn authorized(h: &HeaderMap) -> bool {
            h.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer k")
        }
        const SSE: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Pa\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"ris ✓\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n\
data: [DONE]\n\n";
        const NDJSON: &str = "{\"message\":{\"role\":\"assistant\",\"content\":\"Ro\"},\"done\":false}\n\
{\"message\":{\"role\":\"assistant\",\"content\":\"me\"},\"done\":false}\n\
{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"length\",\"prompt_eval_count\":4,\"eval_count\":2}\n";
        let app = axum::Router::new()
            .route(
                "/v1/chat/completions",
                post(|h: HeaderMap, body: String| async move {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["stream"], true);
                    assert_eq!(v["messages"][0]["role"], "system");
                    if !authorized(&h) {
                        return (StatusCode::UNAUTHORIZED, Body::from("bad key"));
                    }
                    (StatusCode::OK, chunked(SSE))
                }),
            )
            .route(
                "/api/chat",
                post(|body: String| async move {
                    let v: Value = serde_json::from_str(&body).unwrap();
                    assert_eq!(v["options"]["num_predict"], 7);
                    chunked(NDJSON)
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }

    async fn run(spec: &str, key: Option<&str>) -> (Result<(), RemoteError>, Vec<GenEvent>) {
        let spec = RemoteSpec::parse(spec, key.map(String::from))
            .unwrap()
            .unwrap();
        let msgs = vec![
            ChatMessage::system("Be brief."),
            ChatMessage::user("Capital?"),
        ];
        let params = GenParams {
            max_tokens: 7,
            ..GenParams::default()
        };
        let mut events = Vec::new();
        let r = stream_chat(
            &reqwest::Client::new(),
            &spec,
            &msgs,
            &params,
            &CancelToken::new(),
            |e| events.push(e),
        )
        .await;
        (r, events)
    }

    fn text_and_stats(events: &[GenEvent]) -> (String, GenStats) {
        assert!(matches!(events[0], GenEvent::Started { .. }));
        let text = events
            .iter()
            .filter_map(|e| match e {
                GenEvent::Token { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        match events.last() {
            Some(GenEvent::Done(s)) => (text, s.clone()),
            other => panic!("expected Done last, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn streams_from_openai_and_ollama_servers() {
        let url = serve().await;
        let (r, ev) = run(&format!("openai:{url}/v1#m"), Some("k")).await;
        r.unwrap();
        let (text, stats) = text_and_stats(&ev);
        assert_eq!(text, "Paris ✓");
        assert_eq!((stats.prompt_tokens, stats.generated_tokens), (9, 2));
        assert_eq!(stats.finish, FinishReason::Stop);

        let (r, ev) = run(&format!("ollama:{url}#m"), None).await;
        r.unwrap();
        let (text, stats) = text_and_stats(&ev);
        assert_eq!(text, "Rome");
        assert_eq!((stats.prompt_tokens, stats.generated_tokens), (4, 2));
        assert_eq!(stats.finish, FinishReason::Length);

        let (r, ev) = run(&format!("openai:{url}#m"), Some("wrong")).await;
        let e = r.unwrap_err();
        assert!(matches!(e, RemoteError::Status { status: 401, .. }), "{e}");
        assert!(e.to_string().contains("bad key"));
        assert!(ev.is_empty());

        let (r, _) = run("openai:http://127.0.0.1:9#m", None).await;
        assert!(matches!(r, Err(RemoteError::Connect { .. })));
    }
}
