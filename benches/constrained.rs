//! Cost per token of constrained decoding on the real SmolLM2-135M (49k-token vocabulary).
//!
//! Alternates unconstrained and JSON-Schema-constrained generations of the same chat prompt
//! (greedy, same machine load) and compares decode speed measured end to end: generated tokens
//! over the time from the first token to the end, so it includes computing the grammar's mask
//! and applying it before every token (the engine's own `gen_tok_s` times the forward pass
//! only). The vocabulary is prepared once, in a warm-up request, as a served model does.
//!
//! Run: `cargo test --bench constrained` (dev profile: dependencies are optimised). Knobs:
//! `BENCH_TOKENS` (default 96), `BENCH_RUNS` (default 5). Needs the test models.

use std::path::PathBuf;

use influence::engine::{
    ChatMessage, Constraint, EngineHandle, EngineOptions, GenParams, GenRequest, Prompt,
};
use serde_json::json;

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

fn cpu_features() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flags = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .unwrap_or_default();
    ["avx2", "avx512f", "avx512_vnni", "avx512vnni"]
        .iter()
        .filter(|f| flags.split_whitespace().any(|x| x == **f))
        .copied()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tokens and decode tokens/s, end to end.
fn run(engine: &EngineHandle, constraint: Option<Box<Constraint>>, tokens: usize) -> (usize, f64) {
    let params = GenParams {
        constraint,
        ..GenParams::greedy(tokens)
    };
    let out = engine
        .generate(GenRequest {
            model: smollm2(),
            prompt: Prompt::Chat(vec![ChatMessage::user(
                "Tell me a long story about a dragon who learns to cook.",
            )]),
            params,
        })
        .collect_blocking()
        .expect("generation");
    let s = out.stats.expect("stats");
    // The first token comes out of prefill; the rest are decode steps.
    let steps = s.generated_tokens.saturating_sub(1).max(1);
    (s.generated_tokens, steps as f64 / (s.gen_ms / 1e3))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let tokens = env_usize("BENCH_TOKENS", 96);
    let runs = env_usize("BENCH_RUNS", 5);
    // One thread: on a shared 2-core machine candle's spinning pool makes two threads noisy.
    let threads = env_usize("BENCH_THREADS", 1);
    let engine = EngineHandle::spawn(EngineOptions {
        threads,
        ..EngineOptions::default()
    });
    let schema = json!({
        "type": "object",
        // Long enough that every run uses its whole token budget, like the unconstrained one.
        "properties": {"title": {"type": "string"}, "story": {"type": "string", "minLength": 2000}},
        "required": ["title", "story"]
    });
    let constrained = || {
        Some(Box::new(Constraint::schema(
            schema.clone(),
            "response_format",
        )))
    };
    let t = std::time::Instant::now();
    run(&engine, constrained(), 4);
    println!(
        "warm-up with vocabulary preparation: {:.0} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    run(&engine, None, 4);
    let (mut free, mut json_) = (Vec::new(), Vec::new());
    let (mut n_free, mut n_json) = (0, 0);
    for _ in 0..runs {
        let (n, r) = run(&engine, None, tokens);
        n_free += n;
        free.push(r);
        let (n, r) = run(&engine, constrained(), tokens);
        n_json += n;
        json_.push(r);
    }
    let (f, j) = (median(free), median(json_));
    println!(
        "SmolLM2-135M Q4_1, {threads} thread(s), CPU: {}",
        cpu_features()
    );
    println!("| decode | tok/s (median of {runs}) | tokens per run | vs unconstrained |");
    println!("|---|---|---|---|");
    println!(
        "| unconstrained | {f:.1} | {:.0} | 1.00 |",
        n_free as f64 / runs as f64
    );
    println!(
        "| json_schema | {j:.1} | {:.0} | {:.3} ({:+.1}%) |",
        n_json as f64 / runs as f64,
        j / f,
        (j / f - 1.0) * 100.0
    );
}
