//! Continuous batching under concurrent clients, against llama-server on the same file.
//!
//! For each client count N (`BENCH_CLIENTS`, default `1,4,8,16`) it starts an Influence server
//! whose engine decodes up to N sequences together (`engine.parallel = N`), sends N concurrent
//! streaming `/v1/chat/completions` requests (each a different question, greedy, `BENCH_TOKENS`
//! tokens max, default 64), and reports aggregate tokens/s and the slowest and median time to
//! first token. With `LLAMA_SERVER` set to a llama-server binary it then runs the same clients
//! against `llama-server -np N` on the same model file in the same run, and prints the ratios.
//!
//! Run it with `cargo test --release --bench batching` or, like the other benches, in the dev
//! profile (`cargo test --bench batching`: dependencies are built with opt-level 3). Other knobs:
//! `BENCH_MODEL` (a GGUF; default the SmolLM2 Q4_1 test model), `BENCH_THREADS` (default 2).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use influence::engine::{EngineHandle, EngineOptions};
use influence::library::Library;
use influence::server::{ServerCtx, ServerHandle, ServerOptions};
use serde_json::{json, Value};

const TOPICS: [&str; 16] = [
    "a dragon who learns to cook",
    "a lighthouse keeper and a storm",
    "a robot that paints",
    "a city under the sea",
    "a clockmaker's last clock",
    "a fox who collects maps",
    "a train that never stops",
    "a garden on the moon",
    "a violin found in an attic",
    "a baker who bakes bread for giants",
    "an island of talking birds",
    "a detective who is a cat",
    "the last tree in a desert",
    "a library that moves at night",
    "a knight afraid of horses",
    "a comet that visits every year",
];

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn model() -> PathBuf {
    if let Some(p) = std::env::var_os("BENCH_MODEL") {
        return PathBuf::from(p);
    }
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

#[derive(Debug, Clone, Copy)]
struct Run {
    ttft: Duration,
    tokens: usize,
}

/// One streaming request; tokens are the usage the server reports, else the content chunks.
async fn stream(client: &reqwest::Client, url: &str, model: &str, i: usize, max: usize) -> Run {
    let start = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&json!({
            "model": model,
            "messages": [{"role": "user", "content": format!("Tell me a long story about {}.", TOPICS[i % TOPICS.len()])}],
            "temperature": 0, "max_tokens": max, "stream": true,
            "stream_options": {"include_usage": true}
        }))
        .send()
        .await
        .expect("request failed");
    assert!(resp.status().is_success(), "HTTP {}", resp.status());
    let mut body = resp.bytes_stream();
    let mut buf = String::new();
    let (mut ttft, mut chunks, mut usage) = (None, 0, None);
    'outer: while let Some(chunk) = body.next().await {
        buf.push_str(std::str::from_utf8(&chunk.expect("stream broke")).expect("utf-8"));
        while let Some(i) = buf.find("\n\n") {
            let event = buf[..i].trim_start_matches("data: ").to_string();
            buf.drain(..i + 2);
            if event == "[DONE]" {
                break 'outer;
            }
            let Ok(v) = serde_json::from_str::<Value>(&event) else {
                continue;
            };
            if v["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty())
            {
                ttft.get_or_insert_with(|| start.elapsed());
                chunks += 1;
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                usage = Some(n as usize);
            }
        }
    }
    Run {
        ttft: ttft.unwrap_or_default(),
        tokens: usage.unwrap_or(chunks),
    }
}

#[derive(Debug, Clone, Copy)]
struct Round {
    tok_s: f64,
    slowest_ttft_ms: f64,
    median_ttft_ms: f64,
    tokens: usize,
}

async fn round(url: &str, model: &str, clients: usize, max: usize) -> Round {
    let client = reqwest::Client::new();
    // Warm-up: the first request pays for lazy set-up on either server.
    stream(&client, url, model, 99, 4).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (client, url, model) = (client.clone(), url.to_string(), model.to_string());
            tokio::spawn(async move { stream(&client, &url, &model, i, max).await })
        })
        .collect();
    let mut runs = Vec::new();
    for t in tasks {
        runs.push(t.await.expect("client task"));
    }
    let wall = start.elapsed().as_secs_f64();
    let tokens: usize = runs.iter().map(|r| r.tokens).sum();
    let mut ttfts: Vec<f64> = runs.iter().map(|r| r.ttft.as_secs_f64() * 1e3).collect();
    ttfts.sort_by(|a, b| a.total_cmp(b));
    Round {
        tok_s: tokens as f64 / wall,
        slowest_ttft_ms: *ttfts.last().unwrap_or(&0.0),
        median_ttft_ms: ttfts[ttfts.len() / 2],
        tokens,
    }
}

struct Llama(Child);

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_llama(bin: &str, model: &str, threads: usize, np: usize, port: u16) -> Llama {
    let child = Command::new(bin)
        .args([
            "-m",
            model,
            "-t",
            &threads.to_string(),
            "-np",
            &np.to_string(),
        ])
        .args(["-c", &(2048 * np).to_string(), "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--no-ui"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let guard = Llama(child);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if up {
            return guard;
        }
        assert!(Instant::now() < deadline, "llama-server did not come up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn main() {
    let list = std::env::var("BENCH_CLIENTS").unwrap_or_else(|_| "1,4,8,16".into());
    let counts: Vec<usize> = list
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let max = env_usize("BENCH_TOKENS", 64);
    let threads = env_usize("BENCH_THREADS", 2);
    let llama = std::env::var("LLAMA_SERVER").ok();
    let model = model();
    let name = model.to_string_lossy().into_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    println!(
        "model {}, {threads} threads, {max} tokens max per client, greedy",
        model.display()
    );
    println!("clients | influence tok/s | slowest TTFT | median TTFT | llama-server tok/s | slowest TTFT | median TTFT | tok/s ratio");
    rt.block_on(async {
        for &n in &counts {
            let engine = EngineHandle::spawn(EngineOptions {
                threads,
                parallel: n,
                ..EngineOptions::default()
            });
            engine
                .load(model.clone())
                .await
                .expect("engine answers")
                .expect("the model loads");
            let opts = ServerOptions {
                max_queue: n,
                parallel: n,
                allow_paths: true,
                ..ServerOptions::default()
            };
            let ctx = ServerCtx::new(engine, Arc::new(RwLock::new(Library::default())), opts);
            let server = ServerHandle::start(ctx, "127.0.0.1:0".parse().expect("address"))
                .await
                .expect("server starts");
            let ours = round(&format!("http://{}", server.addr()), &name, n, max).await;
            server.stop().await.expect("server stops");
            let theirs = match &llama {
                Some(bin) => {
                    let port = 18_200 + n as u16;
                    let _l = start_llama(bin, &name, threads, n, port).await;
                    Some(round(&format!("http://127.0.0.1:{port}"), &name, n, max).await)
                }
                None => None,
            };
            let cell = |r: &Round| {
                format!(
                    "{:>8.1} ({} tok) | {:>9.0} ms | {:>8.0} ms",
                    r.tok_s, r.tokens, r.slowest_ttft_ms, r.median_ttft_ms
                )
            };
            match theirs {
                Some(t) => println!(
                    "{n:>7} | {} | {} | {:.2}x",
                    cell(&ours),
                    cell(&t),
                    ours.tok_s / t.tok_s
                ),
                None => println!("{n:>7} | {} | (set LLAMA_SERVER to compare)", cell(&ours)),
            }
        }
    });
}
