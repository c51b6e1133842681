//! The HTTP API: every route through `oneshot` with the scripted fake engine and a temp library,
//! the curl examples of docs/API.md against a served instance, and the official Python clients
//! against the real binary with the real SmolLM2 / MiniLM models.

#[path = "support/models.rs"]
mod models;
use models::models_dir as test_models;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use futures::StreamExt;
use influence::engine::fake::fake_model;
use influence::engine::{EngineHandle, FakeScript, FinishReason, ModelKind};
use influence::library::{Library, LibraryRoots};
use influence::server::{router, ServerCtx, ServerHandle, ServerOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

// ---------------------------------------------------------------- fixtures

const CHAT: &str = "SmolLM2-135M-Instruct";
const EMBED: &str = "all-MiniLM-L6-v2";
const OLD: &str = "Old-Model";
const FOREIGN: &str = "tinyllama:latest";
const REPLY: &str = "Hello from the fake engine.";

/// A GGUF header with no tensors: enough for the library to list it.
fn gguf(arch: &str, name: &str) -> Vec<u8> {
    fn s(b: &mut Vec<u8>, v: &str) {
        b.extend((v.len() as u64).to_le_bytes());
        b.extend(v.as_bytes());
    }
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    s(&mut b, "general.architecture");
    b.extend(8u32.to_le_bytes());
    s(&mut b, arch);
    s(&mut b, "general.name");
    b.extend(8u32.to_le_bytes());
    s(&mut b, name);
    s(&mut b, &format!("{arch}.context_length"));
    b.extend(4u32.to_le_bytes());
    b.extend(2048u32.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b
}

fn hf_repo(hub: &Path, repo: &str, files: &[(&str, Vec<u8>)]) {
    let dir = hub.join(format!("models--{}", repo.replace('/', "--")));
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), commit).unwrap();
    for (name, bytes) in files {
        std::fs::write(snap.join(name), bytes).unwrap();
    }
}

fn safetensors_empty() -> Vec<u8> {
    let header = br#"{"__metadata__":{"format":"pt"}}  "#;
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header);
    b
}

fn ollama_store(root: &Path) {
    let blob = gguf("llama", "tinyllama");
    let hex = "ab".repeat(32);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::write(root.join(format!("blobs/sha256-{hex}")), &blob).unwrap();
    let mdir = root.join("manifests/registry.ollama.ai/library/tinyllama");
    std::fs::create_dir_all(&mdir).unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "layers": [{ "mediaType": "application/vnd.ollama.image.model", "digest": format!("sha256:{hex}"), "size": blob.len() }]
    });
    std::fs::write(mdir.join("latest"), manifest.to_string()).unwrap();
}

struct Fx {
    _dir: tempfile::TempDir,
    ctx: ServerCtx,
    app: Router,
    script: FakeScript,
}

fn library_in(dir: &Path) -> (Library, LibraryRoots) {
    let hub = dir.join("hf/hub");
    hf_repo(
        &hub,
        "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
        &[("SmolLM2-135M-Instruct.Q4_1.gguf", gguf("llama", "SmolLM2"))],
    );
    hf_repo(
        &hub,
        "someone/Old-Model-GGUF",
        &[("Old-Model.Q8_0.gguf", gguf("llama", "Old"))],
    );
    hf_repo(
        &hub,
        "sentence-transformers/all-MiniLM-L6-v2",
        &[
            (
                "config.json",
                br#"{"architectures":["BertModel"],"model_type":"bert","max_position_embeddings":512}"#.to_vec(),
            ),
            ("model.safetensors", safetensors_empty()),
            ("tokenizer.json", b"{}".to_vec()),
            ("modules.json", b"[]".to_vec()),
        ],
    );
    let ollama = dir.join("ollama");
    ollama_store(&ollama);
    let roots = LibraryRoots {
        hf_hub: hub,
        ollama: Some(ollama),
        lmstudio: vec![],
        extra: vec![],
        imports_file: dir.join("imports.json"),
    };
    (Library::scan(&roots), roots)
}

fn load_path(lib: &Library, q: &str) -> String {
    lib.resolve(q)
        .unwrap_or_else(|e| panic!("fixture library lacks {q}: {e}; models: {:?}", lib.models()))
        .load_path
        .to_string_lossy()
        .into_owned()
}

fn setup_with(tweak: impl FnOnce(&mut ServerOptions, &mut FakeScript)) -> Fx {
    setup_in(|_, o, s| tweak(o, s))
}

/// Like [`setup_with`], and the closure also gets the fixture's folder.
fn setup_in(tweak: impl FnOnce(&Path, &mut ServerOptions, &mut FakeScript)) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let (lib, _) = library_in(dir.path());
    let mut script = FakeScript::simple();
    script.models = vec![
        fake_model(&load_path(&lib, CHAT), ModelKind::Generate),
        fake_model(&load_path(&lib, OLD), ModelKind::Generate),
        fake_model(&load_path(&lib, EMBED), ModelKind::Embed),
        fake_model(&load_path(&lib, FOREIGN), ModelKind::Generate),
    ];
    let mut opts = ServerOptions::default();
    tweak(dir.path(), &mut opts, &mut script);
    let engine = EngineHandle::fake(script.clone());
    let ctx = ServerCtx::new(engine, Arc::new(RwLock::new(lib)), opts);
    Fx {
        _dir: dir,
        app: router(ctx.clone()),
        ctx,
        script,
    }
}

fn setup() -> Fx {
    setup_with(|_, _| {})
}

// ---------------------------------------------------------------- request helpers

fn req(method: Method, uri: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    match body {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

async fn send(app: &Router, r: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = app.clone().oneshot(r).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, headers, bytes)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let (s, _, b) = send(app, req(Method::GET, uri, None, &[])).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (s, _, b) = send(app, req(Method::POST, uri, Some(&body), &[])).await;
    let v = serde_json::from_slice(&b).unwrap_or_else(|e| {
        panic!(
            "{uri}: body is not JSON ({e}): {}",
            String::from_utf8_lossy(&b)
        )
    });
    (s, v)
}

async fn post_raw(app: &Router, uri: &str, body: &'static [u8]) -> (StatusCode, Value) {
    let r = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap();
    let (s, _, b) = send(app, r).await;
    (s, serde_json::from_slice(&b).unwrap())
}

/// Reads a streamed body chunk by chunk, handing each complete record to `on_record`
/// (records end with `sep`). Returns every record.
async fn records(body: Body, sep: &str) -> Vec<String> {
    let mut stream = body.into_data_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        buf.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(i) = buf.find(sep) {
            out.push(buf[..i].to_string());
            buf.drain(..i + sep.len());
        }
    }
    assert!(buf.is_empty(), "stream ended mid-record: {buf:?}");
    out
}

/// SSE events: each must be exactly one `data: ` line.
fn sse_data(events: &[String]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            let line = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("SSE event without data: {e:?}"));
            assert!(!line.contains('\n'), "multi-line SSE event {e:?}");
            line.to_string()
        })
        .collect()
}

async fn stream(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Body) {
    let resp = app
        .clone()
        .oneshot(req(method, uri, body.as_ref(), &[]))
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, body)
}

fn assert_openai_error(v: &Value, param: &str) {
    let e = &v["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains(param)),
        "{v}"
    );
    assert_eq!(e["param"], param, "{v}");
    assert!(e["type"].is_string(), "{v}");
}

fn assert_ollama_error(v: &Value, needle: &str) {
    let e = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not an Ollama error: {v}"));
    assert!(e.contains(needle), "{e} should mention {needle}");
}

// ---------------------------------------------------------------- OpenAI

mod openai {
    use super::*;

    #[tokio::test]
    async fn models_lists_the_library() {
        let fx = setup();
        let (s, v) = get(&fx.app, "/v1/models").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["object"], "list");
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.iter().any(|i| i.contains(CHAT)), "{ids:?}");
        assert!(ids.iter().any(|i| i.contains(EMBED)), "{ids:?}");
        assert!(ids.contains(&FOREIGN), "{ids:?}");
        for m in v["data"].as_array().unwrap() {
            assert_eq!(m["object"], "model");
            assert!(m["created"].is_u64());
        }
        let one = ids.iter().find(|i| i.contains(CHAT)).unwrap();
        let (s, v) = get(&fx.app, &format!("/v1/models/{one}")).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["id"], *one);
    }

    #[tokio::test]
    async fn chat_non_streamed() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({
                "model": CHAT,
                "messages": [
                    {"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}
                ],
                "temperature": 0, "top_p": 1, "seed": 42, "user": "me"
            }),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["object"], "chat.completion");
        assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
        assert!(v["model"].as_str().unwrap().contains(CHAT));
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(v["choices"][0]["message"]["content"], REPLY);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["completion_tokens"], 6);
        // The fake counts words + 4 per message.
        assert_eq!(v["usage"]["prompt_tokens"], 5 + 4 + 6 + 4);
        assert_eq!(v["usage"]["total_tokens"], 19 + 6);
    }

    #[tokio::test]
    async fn max_tokens_and_stop() {
        let fx = setup();
        for field in ["max_tokens", "max_completion_tokens"] {
            let (s, v) = post(
                &fx.app,
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}], field: 2}),
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            assert_eq!(v["choices"][0]["message"]["content"], "Hello from");
            assert_eq!(v["choices"][0]["finish_reason"], "length");
        }
        for stop in [json!("fake"), json!(["nothing", "fake"])] {
            let (_, v) = post(
                &fx.app,
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}], "stop": stop}),
            )
            .await;
            assert_eq!(v["choices"][0]["message"]["content"], "Hello from the");
            assert_eq!(v["choices"][0]["finish_reason"], "stop");
        }
    }

    #[tokio::test]
    async fn chat_streamed_as_sse_chunks() {
        let fx = setup();
        let (s, h, body) = stream(
            &fx.app,
            Method::POST,
            "/v1/chat/completions",
            Some(
                json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}], "stream": true,
                        "stream_options": {"include_usage": true}}),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/event-stream");
        let data = sse_data(&records(body, "\n\n").await);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let id = chunks[0]["id"].clone();
        assert!(chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk"));
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, REPLY);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        let usage = chunks.last().unwrap();
        assert_eq!(usage["choices"], json!([]));
        assert_eq!(usage["usage"]["completion_tokens"], 6);
        // Content chunks carry no finish reason.
        assert!(chunks[1]["choices"][0]["finish_reason"].is_null());
    }

    #[tokio::test]
    async fn completions_plain_and_streamed() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/v1/completions",
            json!({"model": CHAT, "prompt": "Once upon", "max_tokens": 3}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["object"], "text_completion");
        assert_eq!(v["choices"][0]["text"], "Hello from the");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        assert_eq!(v["usage"]["prompt_tokens"], 2);
        let (_, _, body) = stream(
            &fx.app,
            Method::POST,
            "/v1/completions",
            Some(json!({"model": CHAT, "prompt": ["Once upon"], "stream": true})),
        )
        .await;
        let data = sse_data(&records(body, "\n\n").await);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let text: String = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str::<Value>(d).unwrap())
            .map(|c| c["choices"][0]["text"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(text, REPLY);
    }

    #[tokio::test]
    async fn embeddings_string_array_and_base64() {
        let fx = setup();
        let (s, one) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": EMBED, "input": "hello"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{one}");
        assert_eq!(one["object"], "list");
        assert_eq!(one["data"][0]["object"], "embedding");
        assert_eq!(one["data"][0]["embedding"].as_array().unwrap().len(), 8);
        let (_, many) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": EMBED, "input": ["hello", "world"]}),
        )
        .await;
        assert_eq!(many["data"].as_array().unwrap().len(), 2);
        assert_eq!(many["data"][1]["index"], 1);
        assert_eq!(many["data"][0]["embedding"], one["data"][0]["embedding"]);
        assert_ne!(many["data"][0]["embedding"], many["data"][1]["embedding"]);
        let (_, b64) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": EMBED, "input": "hello", "encoding_format": "base64"}),
        )
        .await;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        let floats: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let expect: Vec<f32> = one["data"][0]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(floats, expect);
        // A chat model cannot embed.
        let (s, v) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": CHAT, "input": "x"}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "model");
    }

    #[tokio::test]
    async fn validation_errors_name_the_field() {
        let fx = setup();
        let msgs = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (
                json!({"model": CHAT, "messages": msgs, "temperature": 5}),
                "temperature",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "temperature": "hot"}),
                "temperature",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "top_p": 1.5}),
                "top_p",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "max_tokens": -3}),
                "max_tokens",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "max_completion_tokens": 0}),
                "max_completion_tokens",
            ),
            (json!({"model": CHAT, "messages": msgs, "n": 3}), "n"),
            (
                json!({"model": CHAT, "messages": msgs, "presence_penalty": 9}),
                "presence_penalty",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "stop": [""]}),
                "stop",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "stop": vec!["x"; 17]}),
                "stop",
            ),
            (
                json!({"model": CHAT, "messages": msgs, "seed": "abc"}),
                "seed",
            ),
            (json!({"model": CHAT, "messages": []}), "messages"),
            (json!({"model": CHAT}), "messages"),
            (
                json!({"model": CHAT, "messages": [{"role": "tool", "content": "x"}]}),
                "messages",
            ),
            (json!({"model": CHAT, "messages": "hi"}), "messages"),
            (json!({"model": 7, "messages": msgs}), "model"),
        ];
        for (body, field) in cases {
            let (s, v) = post(&fx.app, "/v1/chat/completions", body.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {v}");
            assert_openai_error(&v, field);
        }
        let (s, v) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": EMBED, "input": "x", "encoding_format": "int8"}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "encoding_format");
        let (s, v) = post(
            &fx.app,
            "/v1/embeddings",
            json!({"model": EMBED, "input": []}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "input");
        let (s, v) = post(
            &fx.app,
            "/v1/completions",
            json!({"model": CHAT, "prompt": ["a", "b"]}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "prompt");
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_in_openai_shape() {
        let fx = setup();
        for body in [&b"{"[..], b"", b"[]", b"not json", b"{\"messages\": [}"] {
            let (s, v) = post_raw(&fx.app, "/v1/chat/completions", body).await;
            assert_eq!(s, StatusCode::BAD_REQUEST);
            assert!(v["error"]["message"].is_string(), "{v}");
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }

    #[tokio::test]
    async fn unknown_model_is_404_model_not_found() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": "gpt-17", "messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["param"], "model");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-17"));
        let (s, _) = get(&fx.app, "/v1/models/gpt-17").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // No default model: naming none is a 400 that says so.
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "model");
    }
}

// ---------------------------------------------------------------- Ollama

mod ollama {
    use super::*;

    #[tokio::test]
    async fn version_tags_show() {
        let fx = setup();
        let (s, v) = get(&fx.app, "/api/version").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
        let (s, v) = get(&fx.app, "/api/tags").await;
        assert_eq!(s, StatusCode::OK);
        let models = v["models"].as_array().unwrap();
        let chat = models
            .iter()
            .find(|m| m["name"].as_str().unwrap().contains(CHAT))
            .unwrap();
        assert_eq!(chat["model"], chat["name"]);
        assert!(chat["size"].as_u64().unwrap() > 0);
        assert_eq!(chat["details"]["format"], "gguf");
        assert_eq!(chat["details"]["family"], "llama");
        assert!(chat["modified_at"].as_str().unwrap().contains('T'));
        let (s, v) = post(&fx.app, "/api/show", json!({"model": CHAT})).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["details"]["family"], "llama");
        assert_eq!(v["model_info"]["general.architecture"], "llama");
        assert_eq!(v["model_info"]["llama.context_length"], 2048);
        assert_eq!(v["capabilities"], json!(["completion"]));
        let (_, v) = post(&fx.app, "/api/show", json!({"name": EMBED})).await;
        assert_eq!(v["capabilities"], json!(["embedding"]));
        let (s, v) = post(&fx.app, "/api/show", json!({"model": "nope"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v, json!({"error": "model 'nope' not found"}));
        let (s, v) = post(&fx.app, "/api/show", json!({})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_ollama_error(&v, "model");
    }

    #[tokio::test]
    async fn chat_streams_ndjson_lines() {
        let fx = setup();
        let (s, h, body) = stream(
            &fx.app,
            Method::POST,
            "/api/chat",
            Some(json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/x-ndjson");
        let lines: Vec<Value> = records(body, "\n")
            .await
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 7);
        for l in &lines[..6] {
            assert_eq!(l["done"], false);
            assert_eq!(l["message"]["role"], "assistant");
            assert!(l["created_at"].is_string());
        }
        let text: String = lines
            .iter()
            .map(|l| l["message"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(text, REPLY);
        let last = lines.last().unwrap();
        assert_eq!(last["done"], true);
        assert_eq!(last["done_reason"], "stop");
        assert_eq!(last["eval_count"], 6);
        assert_eq!(last["prompt_eval_count"], 5);
        for k in [
            "total_duration",
            "load_duration",
            "prompt_eval_duration",
            "eval_duration",
        ] {
            assert!(last[k].is_u64(), "{k} missing in {last}");
        }
        assert!(last["total_duration"].as_u64().unwrap() > 0);
    }

    #[tokio::test]
    async fn chat_and_generate_unstreamed_with_options() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "stream": false, "messages": [{"role":"user","content":"hi"}],
                   "options": {"temperature": 0, "top_p": 0.9, "top_k": 10, "min_p": 0.1, "repeat_penalty": 1.1,
                               "num_predict": 3, "num_ctx": 512, "seed": 1}}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["message"]["content"], "Hello from the");
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "length");
        assert_eq!(v["eval_count"], 3);
        let (s, v) = post(
            &fx.app,
            "/api/generate",
            json!({"model": CHAT, "prompt": "Why is the sky blue?", "system": "Be brief.", "stream": false,
                   "options": {"stop": ["engine"]}}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["response"], "Hello from the fake");
        assert_eq!(v["done_reason"], "stop");
        // system (2 words + 4) + prompt (5 words + 4)
        assert_eq!(v["prompt_eval_count"], 15);
        let (_, v) = post(
            &fx.app,
            "/api/generate",
            json!({"model": CHAT, "prompt": "a b c", "raw": true, "stream": false}),
        )
        .await;
        assert_eq!(v["prompt_eval_count"], 3);
        // num_ctx caps the output to what fits: 5 prompt tokens + 2 generated.
        let (_, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "stream": false,
            "messages": [{"role":"user","content":"hi"}], "options": {"num_ctx": 7}}),
        )
        .await;
        assert_eq!(v["eval_count"], 2, "{v}");
        assert_eq!(v["done_reason"], "length");
    }

    #[tokio::test]
    async fn generate_streams_ndjson() {
        let fx = setup();
        let (_, _, body) = stream(
            &fx.app,
            Method::POST,
            "/api/generate",
            Some(json!({"model": CHAT, "prompt": "hi"})),
        )
        .await;
        let lines: Vec<Value> = records(body, "\n")
            .await
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let text: String = lines
            .iter()
            .map(|l| l["response"].as_str().unwrap())
            .collect();
        assert_eq!(text, REPLY);
        assert_eq!(lines.last().unwrap()["done"], true);
        assert_eq!(lines.last().unwrap()["eval_count"], 6);
    }

    #[tokio::test]
    async fn empty_requests_load_the_model() {
        let fx = setup();
        let (s, v) = post(&fx.app, "/api/generate", json!({"model": CHAT})).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["done_reason"], "load");
        let (s, v) = post(&fx.app, "/api/chat", json!({"model": CHAT, "messages": []})).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["done_reason"], "load");
        let (_, ps) = get(&fx.app, "/api/ps").await;
        let names: Vec<&str> = ps["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert!(names.iter().any(|n| n.contains(CHAT)), "{ps}");
        assert_eq!(ps["models"][0]["details"]["family"], "llama");
        // keep_alive 0 unloads.
        let (s, v) = post(
            &fx.app,
            "/api/generate",
            json!({"model": CHAT, "keep_alive": 0}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["done_reason"], "unload");
        let (_, ps) = get(&fx.app, "/api/ps").await;
        assert!(!ps.to_string().contains(CHAT), "{ps}");
        let (_, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "messages": [], "keep_alive": "0s"}),
        )
        .await;
        assert_eq!(v["done_reason"], "unload");
    }

    #[tokio::test]
    async fn validation_errors_in_ollama_shape() {
        let fx = setup();
        let m = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (
                json!({"model": CHAT, "messages": m, "options": {"temperature": -1}}),
                "temperature",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"top_p": 3}}),
                "top_p",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"num_predict": 0}}),
                "num_predict",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"num_ctx": 0}}),
                "num_ctx",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"num_ctx": 3}}),
                "num_ctx",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"repeat_penalty": 0}}),
                "repeat_penalty",
            ),
            (
                json!({"model": CHAT, "messages": m, "options": {"seed": "x"}}),
                "options",
            ),
            (
                json!({"model": CHAT, "messages": [{"role": "robot", "content": "x"}]}),
                "messages",
            ),
            (
                json!({"model": CHAT, "messages": m, "stream": "yes"}),
                "stream",
            ),
            (json!({"messages": m}), "model"),
        ];
        for (body, needle) in cases {
            let (s, v) = post(&fx.app, "/api/chat", body.clone()).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{body} → {v}");
            assert_ollama_error(&v, needle);
        }
        let (s, v) = post_raw(&fx.app, "/api/generate", b"{\"model\":").await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_ollama_error(&v, "JSON");
    }

    #[tokio::test]
    async fn unknown_model_is_404_in_ollama_shape() {
        let fx = setup();
        for (uri, body) in [
            (
                "/api/chat",
                json!({"model": "x", "messages": [{"role":"user","content":"hi"}]}),
            ),
            ("/api/generate", json!({"model": "x", "prompt": "hi"})),
            ("/api/embed", json!({"model": "x", "input": "a"})),
        ] {
            let (s, v) = post(&fx.app, uri, body).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{uri}");
            assert_eq!(v, json!({"error": "model 'x' not found"}));
        }
    }

    #[tokio::test]
    async fn embed_and_embeddings() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/api/embed",
            json!({"model": EMBED, "input": ["a", "b"]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["embeddings"].as_array().unwrap().len(), 2);
        assert!(v["total_duration"].is_u64());
        let (_, one) = post(&fx.app, "/api/embed", json!({"model": EMBED, "input": "a"})).await;
        assert_eq!(one["embeddings"][0], v["embeddings"][0]);
        let (s, old) = post(
            &fx.app,
            "/api/embeddings",
            json!({"model": EMBED, "prompt": "a"}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(old["embedding"], v["embeddings"][0]);
        let (s, v) = post(&fx.app, "/api/embeddings", json!({"model": EMBED})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_ollama_error(&v, "prompt");
    }

    #[tokio::test]
    async fn delete_removes_own_models_and_refuses_other_stores() {
        let fx = setup();
        let del = |name: &str| {
            req(
                Method::DELETE,
                "/api/delete",
                Some(&json!({"model": name})),
                &[],
            )
        };
        let (s, _, _) = send(&fx.app, del(OLD)).await;
        assert_eq!(s, StatusCode::OK);
        let (_, tags) = get(&fx.app, "/api/tags").await;
        assert!(!tags.to_string().contains(OLD), "{tags}");
        let path = fx.ctx.library().read().unwrap().models().len();
        assert_eq!(path, 3);
        let (s, _, b) = send(&fx.app, del(OLD)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{}", String::from_utf8_lossy(&b));
        let (s, _, b) = send(&fx.app, del(FOREIGN)).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_ollama_error(&v, "never deletes");
        let (_, tags) = get(&fx.app, "/api/tags").await;
        assert!(tags.to_string().contains("tinyllama"));
    }
}

// ---------------------------------------------------------------- older Influence endpoints

mod legacy {
    use super::*;

    #[tokio::test]
    async fn generate_and_health() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/v1/generate",
            json!({"model": CHAT, "prompt": "hi", "max_tokens": 4}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["text"], "Hello from the fake");
        assert_eq!(v["tokens"], 4);
        assert_eq!(v["finish_reason"], "length");
        let (s, v) = post(
            &fx.app,
            "/v1/generate",
            json!({"model": CHAT, "prompt": "hi", "temperature": 7}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "temperature");
        let (s, v) = post(&fx.app, "/v1/generate", json!({"model": CHAT})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "prompt");
        let (s, v) = get(&fx.app, "/health").await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["status"], "ok");
    }

    #[tokio::test]
    async fn generate_stream_is_sse() {
        let fx = setup();
        let uri = format!("/v1/generate_stream?prompt=hello%20there&model={CHAT}&max_tokens=5");
        let (s, h, body) = stream(&fx.app, Method::GET, &uri, None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "text/event-stream");
        let data = sse_data(&records(body, "\n\n").await);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let events: Vec<Value> = data[..data.len() - 1]
            .iter()
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        let text: String = events.iter().filter_map(|e| e["token"].as_str()).collect();
        assert_eq!(text, "Hello from the fake engine");
        let done = events.last().unwrap();
        assert_eq!(done["done"], true);
        assert_eq!(done["tokens"], 5);
        let (s, v) = get(
            &fx.app,
            &format!("/v1/generate_stream?prompt=x&model={CHAT}&temperature=hot"),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "temperature");
    }

    #[tokio::test]
    async fn metrics_count_requests_tokens_and_latency() {
        let fx = setup();
        post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        let (s, h, b) = send(&fx.app, req(Method::GET, "/metrics", None, &[])).await;
        assert_eq!(s, StatusCode::OK);
        assert!(h[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = String::from_utf8(b.to_vec()).unwrap();
        for line in [
            "influence_http_requests_total{route=\"/v1/chat/completions\",status=\"200\"} 1",
            "influence_http_requests_total{route=\"/v1/chat/completions\",status=\"404\"} 1",
            "influence_tokens_generated_total 6",
            "influence_prompt_tokens_total 5",
            "influence_queue_depth 0",
            "influence_http_request_duration_seconds_count{route=\"/v1/chat/completions\"} 2",
            "# TYPE influence_http_request_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert_eq!(
            fx.ctx.requests().load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }

    #[tokio::test]
    async fn default_model_answers_requests_naming_none_or_the_alias() {
        let fx = setup_with(|o, _| o.default_model = Some(CHAT.into()));
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert!(v["model"].as_str().unwrap().contains(CHAT));
        let (s, _) = post(
            &fx.app,
            "/api/generate",
            json!({"model": "default", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = post(&fx.app, "/v1/generate", json!({"prompt": "hi"})).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn unknown_routes_are_404_in_the_dialect() {
        let fx = setup();
        let (s, v) = get(&fx.app, "/api/nothing").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["error"].is_string());
        let (s, v) = get(&fx.app, "/v1/nothing").await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["error"]["message"].is_string());
    }
}

// ---------------------------------------------------------------- tools, reasoning, strict fields

mod agents {
    use super::*;

    const CALL: [&str; 5] = [
        "Checking.<tool",
        "_call>\n{\"name\": \"get_weather\", ",
        "\"arguments\": {\"city\": ",
        "\"Paris\"}}\n</tool_call>",
        "\n",
    ];

    fn speaking(tokens: &[&str]) -> Fx {
        let tokens: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        setup_with(move |_, s| s.tokens = tokens)
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    }

    fn ask() -> Value {
        json!([{"role": "user", "content": "Weather in Paris?"}])
    }

    #[tokio::test]
    async fn openai_tool_calls_non_streamed_and_streamed() {
        let fx = speaking(&CALL);
        let body = json!({"model": CHAT, "messages": ask(), "tools": tools()});
        let (s, v) = post(&fx.app, "/v1/chat/completions", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert!(call["id"].as_str().unwrap().starts_with("call_"));
        assert_eq!(choice["message"]["content"], "Checking.\n");

        let mut body = body;
        body["stream"] = json!(true);
        let (s, _, b) = stream(&fx.app, Method::POST, "/v1/chat/completions", Some(body)).await;
        assert_eq!(s, StatusCode::OK);
        let events = sse_data(&records(b, "\n\n").await);
        let chunks: Vec<Value> = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 1, "{chunks:?}");
        assert_eq!(calls[0][0]["index"], 0);
        assert_eq!(calls[0][0]["function"]["name"], "get_weather");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Checking.\n");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "tool_calls"
        );
    }

    #[tokio::test]
    async fn without_tools_the_same_text_is_plain_content() {
        let fx = speaking(&CALL);
        let (_, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask()}),
        )
        .await;
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(
            v["choices"][0]["message"].get("tool_calls").is_none(),
            "{v}"
        );
        assert_eq!(v["choices"][0]["message"]["content"], CALL.concat());
    }

    #[tokio::test]
    async fn a_broken_call_comes_back_as_content() {
        let broken = [
            "<tool_call>{\"name\": \"get_weather\", \"arg",
            "uments\": {oops</tool_call>",
        ];
        let fx = speaking(&broken);
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask(), "tools": tools()}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["choices"][0]["message"]["content"], broken.concat());
    }

    #[tokio::test]
    async fn a_tool_round_trip_is_accepted() {
        let fx = setup();
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "tools": tools(), "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "22 C"}
            ]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "stream": false, "tools": tools(), "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "22 C", "tool_name": "get_weather"}
            ]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // Arguments that are not a JSON object are refused, naming the message.
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": [
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "not json"}}]}
            ]}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_openai_error(&v, "messages");
    }

    #[tokio::test]
    async fn ollama_tool_calls() {
        let fx = speaking(&CALL);
        let body = json!({"model": CHAT, "messages": ask(), "tools": tools(), "stream": false});
        let (s, v) = post(&fx.app, "/api/chat", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let call = &v["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather");
        assert_eq!(call["arguments"], json!({"city": "Paris"}));
        assert_eq!(v["done_reason"], "stop");
        let mut body = body;
        body["stream"] = json!(true);
        let (_, _, b) = stream(&fx.app, Method::POST, "/api/chat", Some(body)).await;
        let lines: Vec<Value> = records(b, "\n")
            .await
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let calls: Vec<&Value> = lines
            .iter()
            .filter_map(|l| l["message"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 1, "{lines:?}");
        assert_eq!(calls[0][0]["function"]["arguments"]["city"], "Paris");
    }

    /// gpt-oss (its own template, so harmony): the analysis message is reasoning and the
    /// message addressed to `functions.get_weather` a tool call, through both APIs, streamed
    /// and not; no control token or header reaches the content.
    #[tokio::test]
    async fn harmony_calls_are_tool_calls() {
        let tokens: Vec<String> = [
            "<|channel|>",
            "analysis",
            "<|message|>",
            "Need the weather.",
            "<|end|>",
            "<|start|>",
            "assistant",
            "<|channel|>",
            "commentary",
            " to",
            "=functions.get_weather",
            " <|constrain|>",
            "json",
            "<|message|>",
            "{\"city\":",
            "\"Paris\"}",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        let fx = setup_with(move |_, s| {
            s.tokens = tokens;
            s.models[0].chat_template =
                Some(include_str!("fixtures/templates/openai-gpt-oss-120b.jinja").to_string());
        });
        let body = json!({"model": CHAT, "messages": ask(), "tools": tools()});
        let (s, v) = post(&fx.app, "/v1/chat/completions", body.clone()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], "get_weather", "{v}");
        let args: Value =
            serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(choice["message"]["reasoning_content"], "Need the weather.");
        assert!(
            choice["message"]["content"].is_null() || choice["message"]["content"] == "",
            "{v}"
        );

        let mut streamed = body;
        streamed["stream"] = json!(true);
        let (s, _, b) = stream(
            &fx.app,
            Method::POST,
            "/v1/chat/completions",
            Some(streamed),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let chunks: Vec<Value> = sse_data(&records(b, "\n\n").await)
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let calls: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
            .collect();
        assert_eq!(calls.len(), 1, "{chunks:?}");
        assert_eq!(calls[0][0]["function"]["name"], "get_weather");
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "", "{chunks:?}");

        let (s, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "messages": ask(), "tools": tools(), "stream": false}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let call = &v["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{v}");
        assert_eq!(call["arguments"], json!({"city": "Paris"}));
        assert_eq!(v["message"]["content"], "", "{v}");
    }

    /// A named function with gpt-oss: the prompt is continued with the call's harmony header,
    /// so the model writes only the arguments, held to the tool's schema from the first token;
    /// they come back as that function's call.
    #[tokio::test]
    async fn a_named_harmony_call_is_held_to_its_schema() {
        use influence::engine::{Constraint, Grammar};
        let tokens: Vec<String> = ["{\"city\":", "\"Paris\"}"]
            .iter()
            .map(|t| t.to_string())
            .collect();
        let fx = setup_with(move |_, s| {
            s.tokens = tokens;
            s.models[0].chat_template =
                Some(include_str!("fixtures/templates/openai-gpt-oss-120b.jinja").to_string());
        });
        let body = json!({"model": CHAT, "messages": ask(), "tools": tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
        let (s, v) = post(&fx.app, "/v1/chat/completions", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let choice = &v["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{v}");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        let c: Constraint = *fx
            .script
            .constraints
            .lock()
            .unwrap()
            .pop()
            .unwrap()
            .expect("the arguments are constrained");
        let params = tools()[0]["function"]["parameters"].clone();
        let want = Grammar::JsonSchema(influence::engine::constraint::compact(params));
        assert_eq!(c.grammar, want);
        assert!(c.trigger.is_none(), "from the first token");
        // `required` with one tool is that tool named.
        let body =
            json!({"model": CHAT, "messages": ask(), "tools": tools(), "tool_choice": "required"});
        let (s, v) = post(&fx.app, "/v1/chat/completions", body).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{v}");
        let c = fx
            .script
            .constraints
            .lock()
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(c.grammar, want);
    }

    #[tokio::test]
    async fn thinking_is_split_before_tool_calls() {
        // A call written while thinking is not a call.
        let fx = speaking(&[
            "<think>maybe <tool_call>{\"name\": \"get_weather\"}</tool_call>",
            " no</think>\n\n",
            "Paris is sunny.",
        ]);
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask(), "tools": tools()}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let m = &v["choices"][0]["message"];
        assert_eq!(
            m["reasoning_content"],
            "maybe <tool_call>{\"name\": \"get_weather\"}</tool_call> no"
        );
        assert_eq!(m["content"], "Paris is sunny.");
        assert!(m.get("tool_calls").is_none(), "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let (_, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "messages": ask(), "stream": false}),
        )
        .await;
        assert!(
            v["message"]["thinking"]
                .as_str()
                .unwrap()
                .starts_with("maybe"),
            "{v}"
        );
        assert_eq!(v["message"]["content"], "Paris is sunny.");
    }

    /// Each dialect's structured-output field reaches the engine as a constraint; forced tool
    /// choices become a call grammar (the real engine enforces them: tests/engine.rs and the
    /// Python clients).
    #[tokio::test]
    async fn structured_output_fields_become_engine_constraints() {
        use influence::engine::{Constraint, Grammar};
        let fx = setup();
        let schema =
            json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]});
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": ask(), "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema, "strict": true}}}),
                "response_format.json_schema",
            ),
            (
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": ask(), "response_format": {"type": "json_object"}}),
                "response_format",
            ),
            (
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": ask(), "grammar": "start: \"yes\" | \"no\""}),
                "grammar",
            ),
            (
                "/v1/completions",
                json!({"model": CHAT, "prompt": "x", "grammar": "start: /[0-9]+/"}),
                "grammar",
            ),
            (
                "/api/chat",
                json!({"model": CHAT, "messages": ask(), "stream": false, "format": "json"}),
                "format",
            ),
            (
                "/api/generate",
                json!({"model": CHAT, "prompt": "x", "stream": false, "format": schema}),
                "format",
            ),
            (
                "/api/chat",
                json!({"model": CHAT, "messages": ask(), "stream": false, "grammar": "start: \"ok\""}),
                "grammar",
            ),
            (
                "/v1/responses",
                json!({"model": CHAT, "input": "x", "text": {"format": {"type": "json_schema", "name": "t", "schema": schema}}}),
                "text.format",
            ),
            (
                "/v1/chat/completions",
                json!({"model": CHAT, "messages": ask(), "tools": tools(), "tool_choice": "required"}),
                "tools",
            ),
            (
                "/v1/messages",
                json!({"model": CHAT, "max_tokens": 10, "messages": ask(), "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}], "tool_choice": {"type": "tool", "name": "get_weather"}}),
                "tools",
            ),
        ];
        for (uri, body, field) in cases {
            let (s, v) = post(&fx.app, uri, body.clone()).await;
            assert_eq!(s, StatusCode::OK, "{uri} {body}: {v}");
            let c: Option<Constraint> = fx
                .script
                .constraints
                .lock()
                .unwrap()
                .pop()
                .unwrap()
                .map(|b| *b);
            let c = c.unwrap_or_else(|| panic!("{uri} {body}: no constraint"));
            assert_eq!(c.field, field, "{uri} {body}");
            match (&c.grammar, field) {
                (Grammar::JsonSchema(s), "response_format.json_schema" | "text.format") => {
                    assert_eq!(s["required"], json!(["a"]), "{s}")
                }
                (Grammar::Lark(g), "tools") => {
                    assert!(g.contains("%json") && g.contains("}"), "{g}");
                    assert!(
                        c.trigger.is_none(),
                        "a forced call is constrained from the start"
                    );
                }
                _ => {}
            }
        }
        // Tools in `auto` get the lazy grammar that waits for the call marker... (the fake's
        // template shows no tool markers, so the Hermes fallback's `<tool_call>`).
        let (s, _) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask(), "tools": tools()}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let c = fx
            .script
            .constraints
            .lock()
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(c.trigger.as_deref(), Some("<tool_call>"));
        // ... and plain requests none.
        let (s, _) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask()}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert!(fx
            .script
            .constraints
            .lock()
            .unwrap()
            .pop()
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn fields_that_would_be_ignored_are_400s_naming_them() {
        let fx = setup();
        let chat = |extra: Value| {
            let mut b = json!({"model": CHAT, "messages": ask()});
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            b
        };
        for (extra, field) in [
            (json!({"mirostat": 2}), "mirostat"),
            (json!({"logprobs": 3}), "logprobs"),
            (json!({"top_logprobs": 2}), "top_logprobs"),
            (
                json!({"response_format": {"type": "xml"}}),
                "response_format",
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
                "response_format.json_schema",
            ),
            (json!({"grammar": ""}), "grammar"),
            (
                json!({"grammar": "start: \"a\"", "response_format": {"type": "json_object"}}),
                "grammar",
            ),
            (json!({"frequency_penalty": 0.5}), "frequency_penalty"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"tools": tools(), "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
                "tool_choice",
            ),
            (json!({"reasoning_effort": "high"}), "reasoning_effort"),
            (
                json!({"stream_options": {"include_usage": true, "x": 1}}),
                "stream_options",
            ),
        ] {
            let (s, v) = post(&fx.app, "/v1/chat/completions", chat(extra.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
            assert!(
                v["error"]["message"].as_str().unwrap().contains(field),
                "{extra}: {v}"
            );
        }
        for (extra, field) in [
            (json!({"options": {"num_thread": 4}}), "options.num_thread"),
            (json!({"format": "yaml"}), "format"),
            (
                json!({"format": "json", "grammar": "start: \"a\""}),
                "grammar",
            ),
            (json!({"think": true}), "think"),
            (json!({"templat": "x"}), "templat"),
        ] {
            let (s, v) = post(&fx.app, "/api/chat", chat(extra.clone())).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{extra}: {v}");
            assert_ollama_error(&v, field);
        }
        // `think: false` on a model without thinking has nothing to turn off: it is fine.
        let (s, v) = post(
            &fx.app,
            "/api/chat",
            chat(json!({"think": false, "stream": false})),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = post(
            &fx.app,
            "/v1/generate",
            json!({"prompt": "hi", "model": CHAT, "nucleus": 1}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn forced_choice_starts_the_call() {
        // The model continues after the forced opening `<tool_call>\n{"name": "get_weather", "arguments": `.
        let fx = speaking(&["{\"city\": \"Paris\"}}", "</tool_call>"]);
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": ask(), "tools": tools(),
                   "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let call = &v["choices"][0]["message"]["tool_calls"][0]["function"];
        assert_eq!(call["name"], "get_weather", "{v}");
        assert_eq!(call["arguments"], "{\"city\":\"Paris\"}");
    }
}

// ---------------------------------------------------------------- security and limits

mod security {
    use super::*;

    #[tokio::test]
    async fn api_key_on_every_route_but_health() {
        let fx = setup_with(|o, _| o.api_key = Some("s3cret".into()));
        let routes = [
            (Method::GET, "/v1/models"),
            (Method::POST, "/v1/chat/completions"),
            (Method::POST, "/v1/completions"),
            (Method::POST, "/v1/embeddings"),
            (Method::GET, "/api/version"),
            (Method::GET, "/api/tags"),
            (Method::POST, "/api/show"),
            (Method::GET, "/api/ps"),
            (Method::POST, "/api/chat"),
            (Method::POST, "/api/generate"),
            (Method::POST, "/api/embed"),
            (Method::POST, "/api/embeddings"),
            (Method::DELETE, "/api/delete"),
            (Method::POST, "/api/pull"),
            (Method::POST, "/v1/generate"),
            (Method::GET, "/v1/generate_stream?prompt=x"),
            (Method::GET, "/metrics"),
        ];
        for (m, uri) in routes {
            for headers in [
                &[][..],
                &[("authorization", "Bearer wrong")],
                &[("x-api-key", "s3cre")],
            ] {
                let (s, h, b) = send(&fx.app, req(m.clone(), uri, Some(&json!({})), headers)).await;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{m} {uri} {headers:?}");
                assert_eq!(h[header::WWW_AUTHENTICATE], "Bearer");
                let v: Value = serde_json::from_slice(&b).unwrap();
                if uri.starts_with("/api/") {
                    assert!(v["error"].is_string(), "{v}");
                } else {
                    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
                }
            }
        }
        let (s, _, _) = send(&fx.app, req(Method::GET, "/health", None, &[])).await;
        assert_eq!(s, StatusCode::OK);
        for h in [
            ("authorization", "Bearer s3cret"),
            ("authorization", "bearer s3cret"),
            ("x-api-key", "s3cret"),
        ] {
            let (s, _, _) = send(&fx.app, req(Method::GET, "/v1/models", None, &[h])).await;
            assert_eq!(s, StatusCode::OK, "{h:?}");
        }
    }

    /// Strings that must never reach a client: the file's bytes, the file system, build paths
    /// and backtraces. The client's own `query` may be echoed.
    fn assert_leaks(body: &Value, secret_bytes: &str, query: &str) {
        let text = body.to_string().replace(query, "");
        for needle in [
            secret_bytes,
            "0x",
            "magic",
            "/tmp",
            "/etc",
            "/root",
            "src/",
            ".rs:",
            "backtrace",
            "modified",
            "1970",
        ] {
            assert!(
                !text.to_lowercase().contains(&needle.to_lowercase()),
                "the answer leaks `{needle}`: {text}"
            );
        }
    }

    fn assert_leaks_nothing(body: &Value, secret_bytes: &str) {
        assert_leaks(body, secret_bytes, "\u{0}");
    }

    #[tokio::test]
    async fn paths_are_refused_whether_or_not_the_file_exists() {
        let fx = setup();
        let real = load_path(&fx.ctx.library().read().unwrap(), CHAT);
        for model in [
            "/etc/passwd",
            "/etc/shadow",
            "/no/such/file.gguf",
            real.as_str(),
            "../../etc/passwd",
            "~/.ssh/id_rsa",
        ] {
            let chat = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
            let (s, v) = post(&fx.app, "/v1/chat/completions", chat.clone()).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{model}: {v}");
            assert_eq!(v["error"]["code"], "model_not_found", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("allow_paths"),
                "{v}"
            );
            assert_leaks(&v, "root:", model);
            let (s, v) = post(&fx.app, "/api/chat", chat).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{model}: {v}");
            assert_leaks(&v, "root:", model);
            let (s, v) = post(&fx.app, "/api/show", json!({ "model": model })).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{model}: {v}");
            assert!(v.get("modified_at").is_none(), "{v}");
            assert_leaks(&v, "root:", model);
            let (s, _) = get(&fx.app, &format!("/v1/models/{model}")).await;
            assert_eq!(s, StatusCode::NOT_FOUND, "{model}");
        }
        // The same model by its library name works.
        let (s, _) = post(&fx.app, "/api/show", json!({ "model": CHAT })).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn allow_paths_lets_a_path_through() {
        let fx = setup_with(|o, _| o.allow_paths = true);
        let real = load_path(&fx.ctx.library().read().unwrap(), CHAT);
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": real, "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        // The library's name, not the path, is what the answer calls it.
        assert_eq!(
            v["model"], "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
            "{v}"
        );
    }

    /// A library model whose file holds someone's secrets instead of weights: the real engine
    /// fails to load it, and the client learns that, not what the file says or where it is.
    #[tokio::test]
    async fn a_broken_model_file_leaks_neither_bytes_nor_paths() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("models");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("secrets.gguf"),
            b"root:x:0:0:root:/root:/bin/bash\nsecret-token-1234567890\n".repeat(20),
        )
        .unwrap();
        let roots = LibraryRoots {
            hf_hub: dir.path().join("hf/hub"),
            ollama: None,
            lmstudio: vec![],
            extra: vec![folder],
            imports_file: dir.path().join("imports.json"),
        };
        let lib = Library::scan(&roots);
        let engine = EngineHandle::spawn(influence::engine::EngineOptions {
            threads: 1,
            max_loaded: 1,
            ..influence::engine::EngineOptions::default()
        });
        let ctx = ServerCtx::new(engine, Arc::new(RwLock::new(lib)), ServerOptions::default());
        let app = router(ctx);
        let chat = json!({"model": "secrets", "messages": [{"role": "user", "content": "hi"}]});
        let (s, v) = post(&app, "/v1/chat/completions", chat.clone()).await;
        assert!(s.is_client_error() || s.is_server_error(), "{s} {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("secrets"),
            "{v}"
        );
        assert_leaks_nothing(&v, "root:x");
        assert_leaks_nothing(&v, "secret-token");
        let (_, v) = post(&app, "/api/chat", chat).await;
        assert_leaks_nothing(&v, "root:x");
        let (_, v) = post(
            &app,
            "/api/generate",
            json!({"model": "secrets", "prompt": "hi", "stream": false}),
        )
        .await;
        assert_leaks_nothing(&v, "secret-token");
    }

    /// `--model PATH` for a file outside the library: the file joins the library under its
    /// file stem, and that name is its API id.
    #[tokio::test]
    async fn a_default_model_path_is_served_under_a_friendly_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("elsewhere/My-Model.Q8_0.gguf");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, gguf("llama", "Mine")).unwrap();
        let (lib, _) = library_in(dir.path());
        let mut script = FakeScript::simple();
        let canonical = std::fs::canonicalize(&file).unwrap();
        script.models = vec![fake_model(
            &canonical.to_string_lossy(),
            ModelKind::Generate,
        )];
        let opts = ServerOptions {
            default_model: Some(file.to_string_lossy().into_owned()),
            ..ServerOptions::default()
        };
        let ctx = ServerCtx::new(EngineHandle::fake(script), Arc::new(RwLock::new(lib)), opts);
        let app = router(ctx.clone());
        let (_, v) = get(&app, "/v1/models").await;
        let ids: Vec<&str> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(ids.contains(&"My-Model.Q8_0"), "{ids:?}");
        assert!(
            !ids.iter()
                .any(|i| i.contains('/') && i.contains("elsewhere")),
            "{ids:?}"
        );
        for model in [None, Some("default"), Some("My-Model.Q8_0")] {
            let mut body = json!({"messages": [{"role": "user", "content": "hi"}]});
            if let Some(m) = model {
                body["model"] = json!(m);
            }
            let (s, v) = post(&app, "/v1/chat/completions", body).await;
            assert_eq!(s, StatusCode::OK, "{model:?}: {v}");
            assert_eq!(v["model"], "My-Model.Q8_0");
        }
        // Still there after a rescan (a pull or delete triggers one).
        ctx.rescan().await;
        let (s, _) = post(&app, "/api/show", json!({"model": "My-Model.Q8_0"})).await;
        assert_eq!(s, StatusCode::OK);
        // ... and the API cannot delete it.
        let r = req(
            Method::DELETE,
            "/api/delete",
            Some(&json!({"model": "My-Model.Q8_0"})),
            &[],
        );
        let (s, _, _) = send(&app, r).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        assert!(file.is_file());
    }

    #[tokio::test]
    async fn body_over_the_limit_is_413_in_the_dialect() {
        let fx = setup_with(|o, _| o.body_limit = 1024);
        let big = "word ".repeat(1000);
        let (s, v) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": [{"role":"user","content": big}]}),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("body_limit"));
        let (s, v) = post(
            &fx.app,
            "/api/chat",
            json!({"model": CHAT, "messages": [{"role":"user","content": big}]}),
        )
        .await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(v["error"].as_str().unwrap().contains("body_limit"));
        let (s, _) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": [{"role":"user","content": "small"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn cors_is_off_by_default_and_follows_configured_origins() {
        let fx = setup();
        let pre = || {
            Request::builder()
                .method(Method::OPTIONS)
                .uri("/v1/models")
                .header("origin", "http://app.example")
                .header("access-control-request-method", "GET")
                .body(Body::empty())
                .unwrap()
        };
        let (_, h, _) = send(&fx.app, pre()).await;
        assert!(h.get("access-control-allow-origin").is_none());
        let fx = setup_with(|o, _| o.cors_origins = vec!["http://app.example".into()]);
        let (s, h, _) = send(&fx.app, pre()).await;
        assert!(s.is_success());
        assert_eq!(h["access-control-allow-origin"], "http://app.example");
        let (_, h, _) = send(
            &fx.app,
            req(
                Method::GET,
                "/v1/models",
                None,
                &[("origin", "http://evil.example")],
            ),
        )
        .await;
        assert!(h.get("access-control-allow-origin").is_none());
    }
}

// ---------------------------------------------------------------- queue and cancellation

mod concurrency {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_answers_503_with_retry_after() {
        let fx = setup_with(|o, s| {
            o.max_queue = 0;
            s.token_delay = Duration::from_millis(40);
        });
        let (s, _, running) = stream(&fx.app, Method::POST, "/v1/chat/completions",
            Some(json!({"model": CHAT, "stream": true, "messages": [{"role":"user","content":"hi"}]}))).await;
        assert_eq!(s, StatusCode::OK);
        let (s, h, b) = send(
            &fx.app,
            req(
                Method::POST,
                "/v1/chat/completions",
                Some(&json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]})),
                &[],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            h[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_queue"));
        let (s, h, b) = send(
            &fx.app,
            req(
                Method::POST,
                "/api/chat",
                Some(&json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]})),
                &[],
            ),
        )
        .await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.contains_key(header::RETRY_AFTER));
        assert!(serde_json::from_slice::<Value>(&b).unwrap()["error"].is_string());
        // Once the running stream completes, the slot is free again.
        let data = sse_data(&records(running, "\n\n").await);
        assert_eq!(data.last().unwrap(), "[DONE]");
        let (s, _) = post(
            &fx.app,
            "/v1/chat/completions",
            json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]}),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }

    /// With the real engine and `parallel = 2`, two streams decode together in one batch and
    /// a third request, with no room to wait, gets the overload 503.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_streams_share_the_engine_and_overload_still_gets_503() {
        let model = test_models().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        let engine = EngineHandle::spawn(influence::engine::EngineOptions {
            parallel: 2,
            ..influence::engine::EngineOptions::default()
        });
        let opts = ServerOptions {
            parallel: 2,
            max_queue: 0,
            allow_paths: true,
            ..ServerOptions::default()
        };
        let ctx = ServerCtx::new(
            engine.clone(),
            Arc::new(RwLock::new(Library::default())),
            opts,
        );
        let app = router(ctx);
        let name = model.to_string_lossy().into_owned();
        let body = |q: &str| {
            json!({"model": name, "stream": true, "temperature": 0, "max_tokens": 48,
                   "messages": [{"role": "user", "content": q}]})
        };
        let (s1, _, b1) = stream(
            &app,
            Method::POST,
            "/v1/chat/completions",
            Some(body("Count from 1 to 50.")),
        )
        .await;
        let (s2, _, b2) = stream(
            &app,
            Method::POST,
            "/v1/chat/completions",
            Some(body("Name ten animals.")),
        )
        .await;
        assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
        let (s3, h, _) = send(
            &app,
            req(Method::POST, "/v1/chat/completions", Some(&body("Hi")), &[]),
        )
        .await;
        assert_eq!(s3, StatusCode::SERVICE_UNAVAILABLE);
        assert!(h.contains_key(header::RETRY_AFTER));
        let (r1, r2) = tokio::join!(records(b1, "\n\n"), records(b2, "\n\n"));
        for r in [r1, r2] {
            let data = sse_data(&r);
            assert_eq!(data.last().unwrap(), "[DONE]");
            assert!(data.len() > 4, "{data:?}");
        }
        let stats = engine.stats();
        assert_eq!(
            stats.max_batch, 2,
            "the two streams were not batched: {stats:?}"
        );
        assert_eq!(stats.parallel, 2);
    }

    #[tokio::test]
    async fn waiting_requests_are_served_in_turn() {
        let fx = setup_with(|o, s| {
            o.max_queue = 3;
            s.token_delay = Duration::from_millis(5);
        });
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let app = fx.app.clone();
                tokio::spawn(async move {
                    post(
                        &app,
                        "/v1/chat/completions",
                        json!({"model": CHAT, "messages": [{"role":"user","content":"hi"}]}),
                    )
                    .await
                })
            })
            .collect();
        for t in tasks {
            let (s, v) = t.await.unwrap();
            assert_eq!(s, StatusCode::OK);
            assert_eq!(v["choices"][0]["message"]["content"], REPLY);
        }
    }

    async fn wait_for_cancel(script: &FakeScript) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(s) = script.finished.lock().unwrap().last() {
                assert_eq!(s.finish, FinishReason::Cancelled, "{s:?}");
                return s.generated_tokens;
            }
            assert!(
                Instant::now() < deadline,
                "the engine never saw the cancellation"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn dropping_an_sse_stream_cancels_the_generation() {
        let fx = setup_with(|_, s| s.token_delay = Duration::from_millis(50));
        let (_, _, body) = stream(&fx.app, Method::POST, "/v1/chat/completions",
            Some(json!({"model": CHAT, "stream": true, "messages": [{"role":"user","content":"hi"}]}))).await;
        let mut data = body.into_data_stream();
        let mut seen = String::new();
        while !seen.contains("Hello") {
            seen.push_str(std::str::from_utf8(&data.next().await.unwrap().unwrap()).unwrap());
        }
        drop(data);
        let generated = wait_for_cancel(&fx.script).await;
        assert!(
            generated < 6,
            "generated {generated} of 6 tokens after the client left"
        );
        // The queue slot is free again.
        assert_eq!(fx.ctx.queue().in_use(), 0);
    }

    #[tokio::test]
    async fn dropping_an_ndjson_stream_cancels_the_generation() {
        let fx = setup_with(|_, s| s.token_delay = Duration::from_millis(50));
        let (_, _, body) = stream(
            &fx.app,
            Method::POST,
            "/api/generate",
            Some(json!({"model": CHAT, "prompt": "hi"})),
        )
        .await;
        let mut data = body.into_data_stream();
        let first = data.next().await.unwrap().unwrap();
        assert!(std::str::from_utf8(&first).unwrap().ends_with('\n'));
        drop(data);
        assert!(wait_for_cancel(&fx.script).await < 6);
    }

    #[tokio::test]
    async fn dropping_a_non_streamed_request_cancels_too() {
        let fx = setup_with(|_, s| s.token_delay = Duration::from_millis(50));
        let app = fx.app.clone();
        let pending = tokio::spawn(async move {
            post(&app, "/api/chat", json!({"model": CHAT, "stream": false, "messages": [{"role":"user","content":"hi"}]})).await
        });
        tokio::time::sleep(Duration::from_millis(120)).await;
        pending.abort();
        assert!(wait_for_cancel(&fx.script).await < 6);
    }
}

// ---------------------------------------------------------------- pull

#[path = "support/fake_hub.rs"]
mod fake_hub;

mod pull {
    use super::fake_hub::{FakeHub, FakeRepo};
    use super::*;
    use influence::server::pull::{PullObserver, PullSettings};

    async fn hub_and_fixture() -> (FakeHub, Fx) {
        let hub = FakeHub::builder()
            .repo(
                FakeRepo::new("acme/pulled-GGUF").file("pulled.Q8_0.gguf", gguf("llama", "Pulled")),
            )
            .start()
            .await;
        let endpoint = hub.endpoint.clone();
        let fx = setup_in(move |dir, o, _| {
            o.pull = Some(PullSettings {
                endpoint,
                token: None,
                cache_dir: dir.join("hf/hub"),
                data_dir: dir.join("data"),
            })
        });
        (hub, fx)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_streams_progress_then_the_model_is_listed() {
        let (_hub, fx) = hub_and_fixture().await;
        let (s, h, body) = stream(
            &fx.app,
            Method::POST,
            "/api/pull",
            Some(json!({"model": "acme/pulled-GGUF"})),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(h[header::CONTENT_TYPE], "application/x-ndjson");
        let lines: Vec<Value> = records(body, "\n")
            .await
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0], json!({"status": "pulling manifest"}));
        assert_eq!(
            lines.last().unwrap(),
            &json!({"status": "success"}),
            "{lines:?}"
        );
        let size = gguf("llama", "Pulled").len() as u64;
        let progress: Vec<&Value> = lines
            .iter()
            .filter(|l| l.get("completed").is_some())
            .collect();
        assert!(!progress.is_empty(), "{lines:?}");
        for p in &progress {
            assert_eq!(p["status"], "pulling pulled.Q8_0.gguf");
            assert_eq!(p["total"], size);
            assert!(p["digest"].as_str().unwrap().starts_with("sha256:"));
        }
        assert_eq!(progress.last().unwrap()["completed"], size);
        let (_, tags) = get(&fx.app, "/api/tags").await;
        assert!(tags.to_string().contains("acme/pulled-GGUF"), "{tags}");
        // Pulling again is quick and still succeeds (the file is already in the cache).
        let (s, v) = post(
            &fx.app,
            "/api/pull",
            json!({"model": "hf.co/acme/pulled-GGUF:Q8_0", "stream": false}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"status": "success"}));
    }

    /// The app's Downloads pane sees pulls that API clients start (its own queue's ids stay
    /// apart from theirs).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_through_the_api_reach_the_downloads_pane() {
        let hub = FakeHub::builder()
            .repo(
                FakeRepo::new("acme/pulled-GGUF").file("pulled.Q8_0.gguf", gguf("llama", "Pulled")),
            )
            .start()
            .await;
        let endpoint = hub.endpoint.clone();
        let (obs_tx, mut obs_rx) = tokio::sync::mpsc::unbounded_channel();
        let fx = setup_in(move |dir, o, _| {
            o.pull = Some(PullSettings {
                endpoint,
                token: None,
                cache_dir: dir.join("hf/hub"),
                data_dir: dir.join("data"),
            });
            o.pull_observer = Some(PullObserver::new(obs_tx));
        });
        let (s, v) = post(
            &fx.app,
            "/api/pull",
            json!({"model": "acme/pulled-GGUF", "stream": false}),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let mut pane = influence::app::downloads::DownloadsState::default();
        let mut seen = Vec::new();
        while let Ok(ev) = obs_rx.try_recv() {
            seen.push(ev.clone());
            influence::app::downloads::on_event(&mut pane, ev);
        }
        assert_eq!(pane.rows.len(), 1, "{seen:?}");
        let row = &pane.rows[0];
        assert_eq!(row.spec.path, "pulled.Q8_0.gguf");
        assert!(
            row.id >= 1 << 62,
            "apart from the app's own ids: {}",
            row.id
        );
        assert!(
            matches!(row.state, influence::app::downloads::RowState::Done),
            "{:?}",
            row.state
        );
    }

    /// Pause, resume and cancel on a Downloads-pane row of an API pull reach that pull's own
    /// queue: the client sees the cancel, and the row's queue is gone once the pull ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_downloads_pane_steers_pulls_api_clients_start() {
        let size = 4 << 20;
        let hub = FakeHub::builder()
            .repo(
                FakeRepo::new("acme/big-GGUF")
                    .file("big.Q8_0.gguf", super::fake_hub::content("big", size)),
            )
            .start()
            .await;
        hub.faults().slow = Some(128 * 1024);
        let endpoint = hub.endpoint.clone();
        let (obs_tx, mut obs_rx) = tokio::sync::mpsc::unbounded_channel();
        let observer = PullObserver::new(obs_tx);
        let obs = observer.clone();
        let fx = setup_in(move |dir, o, _| {
            o.pull = Some(PullSettings {
                endpoint,
                token: None,
                cache_dir: dir.join("hf/hub"),
                data_dir: dir.join("data"),
            });
            o.pull_observer = Some(obs);
        });
        let app = fx.app.clone();
        let client = tokio::spawn(async move {
            let (s, _, body) = stream(
                &app,
                Method::POST,
                "/api/pull",
                Some(json!({"model": "acme/big-GGUF"})),
            )
            .await;
            assert_eq!(s, StatusCode::OK);
            records(body, "\n").await
        });
        let mut pane = influence::app::downloads::DownloadsState::default();
        let wait_for =
            |pane: &mut influence::app::downloads::DownloadsState,
             rx: &mut tokio::sync::mpsc::UnboundedReceiver<_>,
             what: &str,
             done: &dyn Fn(&influence::app::downloads::Row) -> bool| {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                loop {
                    while let Ok(ev) = rx.try_recv() {
                        influence::app::downloads::on_event(pane, ev);
                    }
                    if pane.rows.first().is_some_and(done) {
                        return;
                    }
                    assert!(
                        std::time::Instant::now() < deadline,
                        "no {what}: {:?}",
                        pane.rows
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            };
        use influence::app::downloads::RowState;
        wait_for(&mut pane, &mut obs_rx, "progress", &|r| r.bytes > 0);
        let id = pane.rows[0].id;
        let (queue, inner) = observer.queue_of(id).expect("the running pull's queue");
        queue.pause(inner);
        wait_for(&mut pane, &mut obs_rx, "pause", &|r| {
            matches!(r.state, RowState::Paused)
        });
        let (queue, inner) = observer.queue_of(id).expect("still running while paused");
        queue.resume(inner);
        wait_for(&mut pane, &mut obs_rx, "resume", &|r| {
            !matches!(r.state, RowState::Paused)
        });
        queue.cancel(inner);
        let lines = tokio::time::timeout(Duration::from_secs(20), client)
            .await
            .expect("the client's stream ends after the cancel")
            .unwrap();
        assert!(
            lines.last().is_some_and(|l| l.contains("cancelled")),
            "{lines:?}"
        );
        // A cancelled row leaves the pane.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !pane.rows.is_empty() {
            while let Ok(ev) = obs_rx.try_recv() {
                influence::app::downloads::on_event(&mut pane, ev);
            }
            assert!(std::time::Instant::now() < deadline, "{:?}", pane.rows);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while observer.queue_of(id).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the ended pull's queue is kept"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            observer.queue_of(5).is_none(),
            "the app's own ids are not API pulls"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pull_errors_are_ollama_shaped() {
        let (_hub, fx) = hub_and_fixture().await;
        let (s, v) = post(&fx.app, "/api/pull", json!({"model": "acme/missing"})).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
        assert_ollama_error(&v, "acme/missing");
        let (s, v) = post(&fx.app, "/api/pull", json!({"model": "not a repo!"})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_ollama_error(&v, "model");
        let (s, v) = post(
            &fx.app,
            "/api/pull",
            json!({"model": "acme/pulled-GGUF:Q2_K"}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_ollama_error(&v, "Q2_K");
        // Without Hub settings the route says so.
        let plain = setup();
        let (s, v) = post(
            &plain.app,
            "/api/pull",
            json!({"model": "acme/pulled-GGUF"}),
        )
        .await;
        assert_eq!(s, StatusCode::NOT_IMPLEMENTED);
        assert_ollama_error(&v, "influence pull");
    }
}

// ---------------------------------------------------------------- served instances

/// Every ```sh block of docs/API.md that starts with `curl` runs against a served fake
/// instance and must succeed (HTTP 2xx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_curl_examples_run() {
    let hub = fake_hub::FakeHub::builder()
        .repo(
            fake_hub::FakeRepo::new("bartowski/Qwen2.5-0.5B-Instruct-GGUF")
                .file(
                    "Qwen2.5-0.5B-Instruct-Q4_K_M.gguf",
                    gguf("qwen2", "Qwen2.5"),
                )
                .file("Qwen2.5-0.5B-Instruct-Q8_0.gguf", gguf("qwen2", "Qwen2.5")),
        )
        .start()
        .await;
    let endpoint = hub.endpoint.clone();
    let fx = setup_in(move |dir, o, _| {
        o.pull = Some(influence::server::pull::PullSettings {
            endpoint,
            token: None,
            cache_dir: dir.join("hf/hub"),
            data_dir: dir.join("data"),
        })
    });
    let handle = ServerHandle::start(fx.ctx.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", handle.addr());
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/API.md")).unwrap();
    let examples = curl_examples(&doc);
    assert!(
        examples.len() >= 20,
        "docs/API.md has only {} curl examples",
        examples.len()
    );
    for ex in examples {
        let cmd = ex.replacen("curl ", "curl -sS --fail-with-body --max-time 20 ", 1);
        let url = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .env("INFLUENCE_URL", url)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "docs example failed:\n{ex}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    handle.stop().await.unwrap();
    let (_, tags) = get(&fx.app, "/api/tags").await;
    assert!(
        tags.to_string().contains("Qwen2.5-0.5B-Instruct-GGUF"),
        "the pull example did not add its model: {tags}"
    );
}

fn curl_examples(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim_start()) {
            (None, l) if l.starts_with("```sh") => block = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                if b.trim_start().starts_with("curl ") {
                    out.push(b.clone());
                }
                block = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_handle_binds_counts_and_stops_gracefully() {
    let fx = setup_with(|_, s| s.token_delay = Duration::from_millis(20));
    let handle = ServerHandle::start(fx.ctx.clone(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = handle.addr();
    assert_ne!(addr.port(), 0);
    // A second server on the same port fails with a message that says what to do.
    let err = ServerHandle::start(fx.ctx.clone(), addr).await.unwrap_err();
    assert!(err.to_string().contains("--port"), "{err}");
    let count = handle.requests();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--fail-with-body", &format!("http://{addr}/health")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success());
    assert_eq!(count.load(std::sync::atomic::Ordering::Relaxed), 1);
    handle.stop().await.unwrap();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening after stop"
    );
}

// ---------------------------------------------------------------- the real binary + Python clients

fn venv_python() -> PathBuf {
    let venv = std::env::var_os("INFLUENCE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/influence-venv")
        });
    let py = venv.join("bin/python");
    assert!(
        py.is_file(),
        "the Python client venv is missing ({}): run scripts/python-clients.sh",
        py.display()
    );
    py
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

struct Served {
    child: std::process::Child,
    port: u16,
    _home: tempfile::TempDir,
}

impl Served {
    /// With `--model MODEL` and the test models folder as a configured model folder, so every
    /// test model has a library name.
    fn start(model: &Path) -> Served {
        let model = model.to_string_lossy().into_owned();
        let config = format!(
            "[paths]\nmodel_dirs = [{:?}]\n",
            test_models().to_string_lossy()
        );
        Served::start_in(&["--model", &model], true, &config)
    }

    /// `influence --serve --port P ARGS`, in a fresh home; stderr goes to the test's stderr or,
    /// with `inherit_stderr = false`, to `stderr.log` in that home.
    fn start_with(args: &[&str], inherit_stderr: bool) -> Served {
        Served::start_in(args, inherit_stderr, "")
    }

    /// Like [`Served::start_with`], with `config` as the home's config.toml.
    fn start_in(args: &[&str], inherit_stderr: bool, config: &str) -> Served {
        let home = tempfile::tempdir().unwrap();
        std::fs::write(home.path().join("config.toml"), config).unwrap();
        let port = free_port();
        let stderr = if inherit_stderr {
            std::process::Stdio::inherit()
        } else {
            std::fs::File::create(home.path().join("stderr.log"))
                .unwrap()
                .into()
        };
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_influence"))
            .args(["--serve", "--port", &port.to_string()])
            .args(args)
            .env("INFLUENCE_HOME", home.path())
            .env("HF_HOME", home.path().join("hf"))
            .env("HOME", home.path())
            .env_remove("INFLUENCE_API_KEY")
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut served = Served {
            child,
            port,
            _home: home,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http_get(port, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                return served;
            }
            if let Ok(Some(status)) = served.child.try_wait() {
                panic!("influence --serve exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "influence --serve did not answer /health in 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self._home.path().join("stderr.log")).unwrap_or_default()
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SIGTERM: graceful shutdown.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("influence --serve did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run_client(py: &Path, script: &str, args: &[String]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = std::process::Command::new(py)
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let cmd = format!("{} {} {}", py.display(), path.display(), args.join(" "));
    assert!(
        out.status.success(),
        "client failed: {cmd}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
}

/// The binary's flags: `--host`, `--port`, `--api-key`; the warning for an open address without
/// a key; SIGTERM stops it cleanly.
#[test]
fn serve_flags_key_and_exposure_warning() {
    let open = Served::start_with(&["--host", "0.0.0.0"], false);
    let status = http_get(open.port, "/v1/models").unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let log = open.stderr();
    assert!(
        log.contains("without an API key"),
        "no warning on stderr:\n{log}"
    );
    assert!(open.stop().success());

    let keyed = Served::start_with(&["--host", "0.0.0.0", "--api-key", "k3y"], false);
    let denied = http_get(keyed.port, "/v1/models").unwrap();
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let health = http_get(keyed.port, "/health").unwrap();
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let log = keyed.stderr();
    assert!(!log.contains("without an API key"), "{log}");
    assert!(
        log.contains("serving the API"),
        "no start line on stderr:\n{log}"
    );
    assert!(keyed.stop().success());
}

/// The names the served library gives the test models (their file stems and folder names).
const SERVED_SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1";
const SERVED_MINILM: &str = "minilm";
const SERVED_QWEN: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m";

/// The official `openai` and `ollama` Python packages against `influence --serve` running the
/// real SmolLM2 (chat) and MiniLM (embeddings), named by their library names; the `--model`
/// path is served under its name, never as a path.
#[test]
fn official_python_clients_against_influence_serve() {
    let py = venv_python();
    let models = test_models();
    let gguf = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let served = Served::start(&gguf);
    let listed = http_get(served.port, "/v1/models").unwrap();
    assert!(listed.contains(SERVED_SMOLLM), "{listed}");
    assert!(
        !listed.contains(&*gguf.to_string_lossy()),
        "a path is an API id: {listed}"
    );
    let base = format!("http://127.0.0.1:{}", served.port);
    let args = vec![base.clone(), SERVED_SMOLLM.into(), SERVED_MINILM.into()];
    run_client(&py, "openai_client.py", &args);
    run_client(&py, "ollama_client.py", &args);
    let status = served.stop();
    assert!(
        status.success(),
        "influence --serve exited with {status} after SIGTERM"
    );
}

/// Tools with the official clients against the real Qwen2.5-Coder-0.5B, whose chat template
/// has a tools section: forced, automatic and streamed calls, a full round trip, and the
/// fields that are refused rather than ignored.
#[test]
fn official_python_clients_call_tools() {
    let py = venv_python();
    let qwen = test_models().join("qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let served = Served::start(&qwen);
    let args = vec![
        format!("http://127.0.0.1:{}", served.port),
        SERVED_QWEN.into(),
    ];
    run_client(&py, "openai_tools.py", &args);
    run_client(&py, "ollama_tools.py", &args);
    assert!(served.stop().success());
}

/// The official `anthropic` package against `/v1/messages`: SmolLM2 for text and streaming,
/// Qwen2.5-Coder for a tool_use round trip.
#[test]
fn official_anthropic_client_against_influence_serve() {
    let py = venv_python();
    let smollm = test_models().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let served = Served::start(&smollm);
    let args = vec![
        format!("http://127.0.0.1:{}", served.port),
        SERVED_SMOLLM.into(),
        SERVED_QWEN.into(),
    ];
    run_client(&py, "anthropic_client.py", &args);
    assert!(served.stop().success());
}
