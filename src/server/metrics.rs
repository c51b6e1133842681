//! Prometheus counters: requests by route and status, latency histogram, tokens, queue depth.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;

use super::ServerCtx;

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    pub tokens_generated: AtomicU64,
    pub prompt_tokens: AtomicU64,
    /// Every request answered, for the TUI's status bar.
    pub requests_total: Arc<AtomicU64>,
    in_flight: AtomicU64,
}

impl Metrics {
    pub fn record_tokens(&self, prompt: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.tokens_generated
            .fetch_add(generated as u64, Ordering::Relaxed);
    }

    fn record_status(&self, route: &str, status: u16) {
        let mut map = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.to_string(), status)).or_default() += 1;
    }

    fn record_latency(&self, route: &str, secs: f64) {
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let h = map.entry(route.to_string()).or_default();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += secs;
    }

    /// The Prometheus text exposition.
    pub fn render(&self, queue_depth: usize, engine: &crate::engine::EngineStats) -> String {
        let mut out = String::new();
        out.push_str("# HELP influence_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE influence_http_requests_total counter\n");
        for ((route, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "influence_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        out.push_str("# HELP influence_http_request_duration_seconds Time from request to the end of the response body.\n");
        out.push_str("# TYPE influence_http_request_duration_seconds histogram\n");
        for (route, h) in self
            .latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let r = escape(route);
            for (i, le) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "influence_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"{le}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "influence_http_request_duration_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "influence_http_request_duration_seconds_sum{{route=\"{r}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "influence_http_request_duration_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let counters = [
            (
                "influence_tokens_generated_total",
                "Tokens generated for API requests.",
                "counter",
                self.tokens_generated.load(Ordering::Relaxed),
            ),
            (
                "influence_prompt_tokens_total",
                "Prompt tokens of API requests (including cached ones).",
                "counter",
                self.prompt_tokens.load(Ordering::Relaxed),
            ),
            (
                "influence_queue_depth",
                "Requests waiting for the engine.",
                "gauge",
                queue_depth as u64,
            ),
            (
                "influence_requests_in_flight",
                "Requests being answered now.",
                "gauge",
                self.in_flight.load(Ordering::Relaxed),
            ),
            (
                "influence_engine_active_sequences",
                "Sequences holding a KV slot now (prefilling or decoding), the app's chat included.",
                "gauge",
                engine.active as u64,
            ),
            (
                "influence_engine_waiting_sequences",
                "Requests the engine holds until a slot or KV budget frees up.",
                "gauge",
                engine.waiting as u64,
            ),
            (
                "influence_engine_parallel",
                "API sequences one model decodes together (engine.parallel).",
                "gauge",
                engine.parallel as u64,
            ),
            (
                "influence_engine_steps_total",
                "Scheduler steps (one batched decode and at most one prompt chunk each).",
                "counter",
                engine.steps,
            ),
            (
                "influence_engine_decode_steps_total",
                "Batched decode forwards.",
                "counter",
                engine.decode_steps,
            ),
            (
                "influence_engine_decode_rows_total",
                "Sequences carried by decode forwards (divided by the steps: the mean batch size).",
                "counter",
                engine.decode_rows,
            ),
            (
                "influence_engine_max_batch",
                "The largest decode batch so far.",
                "gauge",
                engine.max_batch as u64,
            ),
            (
                "influence_engine_prefill_chunks_total",
                "Prompt chunks fed between decode steps.",
                "counter",
                engine.prefill_chunks,
            ),
            (
                "influence_engine_kv_used_positions",
                "KV cache positions reserved by running sequences or held by idle slots.",
                "gauge",
                engine.kv_used as u64,
            ),
            (
                "influence_engine_kv_budget_positions",
                "KV cache positions a model may use (engine.kv_budget).",
                "gauge",
                engine.kv_budget as u64,
            ),
            (
                "influence_engine_kv_bytes",
                "KV cache memory allocated.",
                "gauge",
                engine.kv_bytes as u64,
            ),
            (
                "influence_engine_kv_evictions_total",
                "Idle KV slots evicted (least recently used first) to make room.",
                "counter",
                engine.evictions,
            ),
        ];
        for (name, help, kind, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Records when the response body is finished or dropped (client gone).
struct Finish {
    metrics: Arc<Metrics>,
    route: String,
    start: Instant,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.metrics
            .record_latency(&self.route, self.start.elapsed().as_secs_f64());
        self.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn track(State(ctx): State<ServerCtx>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let metrics = ctx.metrics().clone();
    metrics.requests_total.fetch_add(1, Ordering::Relaxed);
    metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    let finish = Finish {
        metrics: metrics.clone(),
        route: route.clone(),
        start: Instant::now(),
    };
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    metrics.record_status(&route, resp.status().as_u16());
    tracing::info!(
        target: "influence::server::access",
        "{method} {path} {} ({:.1} ms to first byte)",
        resp.status().as_u16(),
        finish.start.elapsed().as_secs_f64() * 1e3
    );
    let (parts, body) = resp.into_parts();
    let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
        let _keep = &finish;
        chunk
    }));
    Response::from_parts(parts, body)
}

pub async fn handler(State(ctx): State<ServerCtx>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        ctx.metrics()
            .render(ctx.queue().depth(), &ctx.engine().stats()),
    )
}
