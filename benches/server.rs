//! HTTP server benchmark on the real SmolLM2 model.
//!
//! 1. A single stream, alternating direct engine calls and `/v1/chat/completions` streamed over
//!    a real socket (same engine, same prompt, greedy), so both see the same machine load: the
//!    ratio of their wall times is the server's overhead (target: under 5%).
//! 2. Eight concurrent streaming clients: total tokens/s and time to first token (p50/p95;
//!    the engine batches `engine.parallel` of them, default 4, so later clients include their
//!    queue wait). `benches/batching.rs` sweeps the client count against llama-server.
//! 3. The server's own cost per token, isolated: the scripted test engine (no model, no delay)
//!    streams 2000 tokens directly and over HTTP; the difference per token is what the server
//!    adds, to set against the real model's time per token from part 1. On a busy machine the
//!    wall-time ratio of part 1 is noisy; this number is not.
//!
//! Run it with `cargo test --bench server` (dev profile: deps are built with opt-level 3, and
//! `cargo bench` would rebuild candle in release mode). Knobs: `BENCH_TOKENS` (default 48), `BENCH_RUNS` (default 4),
//! `BENCH_CLIENTS` (default 8). Needs the test models (`scripts/fetch-test-models.sh`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use influence::engine::fake::fake_model;
use influence::engine::{
    ChatMessage, EngineHandle, EngineOptions, FakeScript, GenEvent, GenParams, GenRequest,
    ModelKind, Prompt,
};
use influence::library::Library;
use influence::server::{ServerCtx, ServerHandle, ServerOptions};
use serde_json::{json, Value};

const SYSTEM: &str = "You are a helpful assistant.";
const QUESTION: &str = "Tell me a long story about a dragon who learns to cook.";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn smollm2() -> PathBuf {
    let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/influence-test-models")
        });
    let p = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "missing test model {}: run scripts/fetch-test-models.sh",
        p.display()
    );
    p
}

/// Wall time, time to first token, tokens.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    ttft: Duration,
    tokens: usize,
}

async fn direct(engine: &EngineHandle, model: &Path, max_tokens: usize) -> Run {
    let start = Instant::now();
    let mut g = engine.generate(GenRequest {
        model: model.to_path_buf(),
        prompt: Prompt::Chat(vec![
            ChatMessage::system(SYSTEM),
            ChatMessage::user(QUESTION),
        ]),
        params: GenParams::greedy(max_tokens),
    });
    let mut ttft = None;
    let mut tokens = 0;
    while let Some(ev) = g.events.recv().await {
        match ev {
            GenEvent::Token { .. } => {
                ttft.get_or_insert_with(|| start.elapsed());
                tokens += 1;
            }
            GenEvent::Done(_) => break,
            GenEvent::Failed(e) => panic!("engine failed: {e}"),
            GenEvent::Started { .. } => {}
        }
    }
    Run {
        wall: start.elapsed(),
        ttft: ttft.unwrap_or_default(),
        tokens,
    }
}

async fn over_http(client: &reqwest::Client, url: &str, model: &str, max_tokens: usize) -> Run {
    let start = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "temperature": 0, "repeat_penalty": 1.0, "max_tokens": max_tokens, "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .expect("request failed");
    assert!(resp.status().is_success(), "HTTP {}", resp.status());
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let mut ttft = None;
    let mut tokens = 0;
    'outer: while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.expect("stream broke")).expect("utf-8"));
        while let Some(i) = buf.find("\n\n") {
            let event = buf[..i].trim_start_matches("data: ").to_string();
            buf.drain(..i + 2);
            if event == "[DONE]" {
                break 'outer;
            }
            let v: Value = serde_json::from_str(&event).expect("chunk is JSON");
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                ttft.get_or_insert_with(|| start.elapsed());
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = n as usize;
            }
        }
    }
    Run {
        wall: start.elapsed(),
        ttft: ttft.unwrap_or_default(),
        tokens,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let tokens = env_usize("BENCH_TOKENS", 48);
    let runs = env_usize("BENCH_RUNS", 4);
    let clients = env_usize("BENCH_CLIENTS", 8);
    let model = smollm2();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let engine = EngineHandle::spawn(EngineOptions::default());
        engine.load(model.clone()).await.unwrap().expect("SmolLM2 loads");
        let opts = ServerOptions {
            max_queue: clients.max(1),
            parallel: EngineOptions::default().parallel,
            // The bench names the model file directly, with no library around it.
            allow_paths: true,
            ..ServerOptions::default()
        };
        let ctx = ServerCtx::new(engine.clone(), Arc::new(RwLock::new(Library::default())), opts);
        let server = ServerHandle::start(ctx, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        let url = format!("http://{}", server.addr());
        let name = model.to_string_lossy().into_owned();
        let client = reqwest::Client::new();

        // Warm-up: fills caches and the prompt prefix cache for both paths alike.
        direct(&engine, &model, 4).await;
        over_http(&client, &url, &name, 4).await;

        println!("single stream, {tokens} tokens max, {runs} alternating runs each:");
        let (mut d_runs, mut s_runs) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let d = direct(&engine, &model, tokens).await;
            let s = over_http(&client, &url, &name, tokens).await;
            assert_eq!(d.tokens, s.tokens, "greedy runs should produce the same tokens");
            println!(
                "  direct {:>7.1} ms ({} tok, ttft {:>6.1} ms)   server {:>7.1} ms ({} tok, ttft {:>6.1} ms)",
                d.wall.as_secs_f64() * 1e3, d.tokens, d.ttft.as_secs_f64() * 1e3,
                s.wall.as_secs_f64() * 1e3, s.tokens, s.ttft.as_secs_f64() * 1e3
            );
            d_runs.push(d);
            s_runs.push(s);
        }
        let ratios: Vec<f64> = d_runs
            .iter()
            .zip(&s_runs)
            .map(|(d, s)| s.wall.as_secs_f64() / d.wall.as_secs_f64())
            .collect();
        let per_tok: Vec<f64> = d_runs
            .iter()
            .zip(&s_runs)
            .map(|(d, s)| (s.wall.as_secs_f64() - d.wall.as_secs_f64()) * 1e3 / d.tokens.max(1) as f64)
            .collect();
        let d_med = median(d_runs.iter().map(|r| r.wall.as_secs_f64()).collect());
        let s_med = median(s_runs.iter().map(|r| r.wall.as_secs_f64()).collect());
        println!(
            "  median wall: direct {:.1} ms, server {:.1} ms; server/direct ratio median {:.3} (per-run {:?}); overhead per token median {:.3} ms",
            d_med * 1e3,
            s_med * 1e3,
            median(ratios.clone()),
            ratios.iter().map(|r| format!("{r:.3}")).collect::<Vec<_>>(),
            median(per_tok)
        );

        // Other processes only ever add time, so the fastest run of each is the least disturbed.
        let d_min = d_runs.iter().map(|r| r.wall).min().unwrap_or_default();
        let s_min = s_runs.iter().map(|r| r.wall).min().unwrap_or_default();
        println!(
            "  fastest run: direct {:.1} ms, server {:.1} ms: ratio {:.3}",
            d_min.as_secs_f64() * 1e3,
            s_min.as_secs_f64() * 1e3,
            s_min.as_secs_f64() / d_min.as_secs_f64().max(1e-9)
        );

        println!("{clients} concurrent streaming clients, {tokens} tokens max each:");
        let start = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let client = client.clone();
                let url = url.clone();
                let name = name.clone();
                tokio::spawn(async move { over_http(&client, &url, &name, tokens).await })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let wall = start.elapsed();
        let total: usize = results.iter().map(|r| r.tokens).sum();
        let mut ttfts: Vec<Duration> = results.iter().map(|r| r.ttft).collect();
        ttfts.sort();
        println!(
            "  {total} tokens in {:.2} s = {:.1} tokens/s; TTFT p50 {:.0} ms, p95 {:.0} ms",
            wall.as_secs_f64(),
            total as f64 / wall.as_secs_f64(),
            pct(&ttfts, 0.5).as_secs_f64() * 1e3,
            pct(&ttfts, 0.95).as_secs_f64() * 1e3
        );
        server.stop().await.unwrap();

        let per_token_ms = d_runs
            .iter()
            .map(|r| {
                (r.wall - r.ttft).as_secs_f64() * 1e3 / r.tokens.saturating_sub(1).max(1) as f64
            })
            .fold(f64::INFINITY, f64::min);
        server_cost_per_token(per_token_ms).await;
    });
}

/// Part 3: what the server adds per token, with an engine that costs nothing per token.
async fn server_cost_per_token(model_ms_per_token: f64) {
    const N: usize = 2000;
    // Requests may name a model by an absolute path that exists; the scripted engine accepts it.
    let file = tempfile::NamedTempFile::new().expect("a temp file");
    let id = file.path().to_string_lossy().into_owned();
    let id = id.as_str();
    let mut script = FakeScript::simple();
    script.models = vec![fake_model(id, ModelKind::Generate)];
    script.tokens = (0..N).map(|i| format!(" w{i}")).collect();
    let engine = EngineHandle::fake(script);
    let ctx = ServerCtx::new(
        engine.clone(),
        Arc::new(RwLock::new(Library::default())),
        ServerOptions::default(),
    );
    let server = ServerHandle::start(ctx, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", server.addr());
    let client = reqwest::Client::new();
    let path = PathBuf::from(id);
    let (mut d, mut s) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        d.push(direct(&engine, &path, N).await.wall.as_secs_f64());
        let r = over_http(&client, &url, id, N).await;
        assert_eq!(r.tokens, N);
        s.push(r.wall.as_secs_f64());
    }
    let added_us = (median(s.clone()) - median(d.clone())) * 1e6 / N as f64;
    println!("server cost per token (scripted engine, {N} tokens, median of 5):");
    println!(
        "  direct {:.1} ms, over HTTP {:.1} ms: the server adds {added_us:.1} µs per token = {:.3}% of SmolLM2's {model_ms_per_token:.1} ms per token (fastest direct run)",
        median(d) * 1e3,
        median(s) * 1e3,
        added_us / 1e3 / model_ms_per_token * 100.0
    );
    server.stop().await.unwrap();
}
