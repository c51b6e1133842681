//! Engine-only benchmark: load time, prefill speed on an empty cache, time to first token and
//! greedy decode speed, measured directly on the decoder (no channel, no sampling filters).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::sampling::argmax;
use super::worker::{load_gguf, PREFILL_CHUNK};
use super::EngineError;

/// Results of [`run_bench`]; medians over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub prompt_tok_s: f64,
    pub gen_tok_s: f64,
    pub ttft_ms: f64,
    pub load_ms: f64,
    pub threads: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Loads `path`, then `runs` times: prefill `prompt_tokens` ids on an empty cache and decode
/// `gen_tokens` greedily. One warm-up run is done first and not counted.
pub fn run_bench(
    path: &Path,
    prompt_tokens: usize,
    gen_tokens: usize,
    runs: usize,
    threads: usize,
) -> Result<BenchResult, EngineError> {
    let t = Instant::now();
    let (mut g, info) = load_gguf(path, path.to_string_lossy().to_string())?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    if prompt_tokens == 0 || prompt_tokens + gen_tokens > info.context_length {
        return Err(EngineError::BadParams(format!(
            "prompt_tokens + gen_tokens = {} is out of range; allowed 1..={} (the model's context)",
            prompt_tokens + gen_tokens,
            info.context_length
        )));
    }
    // Real text tokens, repeated to the requested length.
    let seed = g.tok.encode(
        "The quick brown fox jumps over the lazy dog while the committee reviews the annual budget report. ",
    )?;
    let ids: Vec<u32> = seed.iter().copied().cycle().take(prompt_tokens).collect();

    let (mut pp, mut tg, mut ttft) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        g.dec.truncate_cache(0);
        let t0 = Instant::now();
        let mut logits = Vec::new();
        let n_chunks = ids.len().div_ceil(PREFILL_CHUNK);
        for (i, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            if let Some(l) = g.dec.forward(chunk, i + 1 == n_chunks)? {
                logits = l;
            }
        }
        let prefill = t0.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let first = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        for _ in 0..gen_tokens {
            let l = g.dec.forward(&[next], true)?.unwrap_or_default();
            next = argmax(&l);
        }
        let decode = t1.elapsed().as_secs_f64();
        if run == 0 {
            continue; // warm-up
        }
        pp.push(prompt_tokens as f64 / prefill);
        if gen_tokens > 0 {
            tg.push(gen_tokens as f64 / decode);
        }
        ttft.push(first);
    }
    g.dec.truncate_cache(0);
    Ok(BenchResult {
        prompt_tok_s: median(pp),
        gen_tok_s: if tg.is_empty() { 0.0 } else { median(tg) },
        ttft_ms: median(ttft),
        load_ms,
        threads,
    })
}
