//! Engine-only benchmark: load time, prefill speed on an empty cache, time to first token of a
//! first and of a second chat turn, greedy decode speed and peak memory, measured directly on
//! the decoder (no channel, no sampling filters).

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::device::DeviceChoice;
use super::sampling::argmax;
use super::scheduler::PREFILL_CHUNK;
use super::worker::load_gguf;
use super::EngineError;

/// Results of [`run_bench`]; medians over the runs.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub prompt_tok_s: f64,
    pub gen_tok_s: f64,
    pub ttft_ms: f64,
    /// Time to first token of a second turn: `turn2_tokens` new tokens after the first turn's
    /// prompt and answer, which stay in the KV cache (prefix reuse).
    pub ttft_turn2_ms: f64,
    pub load_ms: f64,
    pub threads: usize,
    /// Peak resident memory of the process, MiB.
    pub peak_rss_mib: f64,
    /// `cpu` or the GPU, as in `cuda:0 NVIDIA H200`.
    pub device: String,
    /// GPU memory taken while the model was loaded and run (the device's free memory before
    /// loading minus after the runs), MiB; absent on the CPU.
    pub gpu_mem_mib: Option<f64>,
    /// The own CPU kernels' variant (`AVX-512 VNNI`, `AVX2`), absent where candle's kernels run (a
    /// GPU, a CPU without AVX2, `INFLUENCE_KERNEL=0`).
    pub cpu_kernel: Option<&'static str>,
    /// What the KV cache held: `f32` or `f16` (`engine.kv_cache`).
    pub kv_cache: String,
    /// On a GPU: the layers that ran there (`engine.gpu_layers` as applied; the CPU ran the
    /// rest); absent on the CPU.
    pub gpu_layers: Option<usize>,
    /// The model's layers.
    pub layers: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Loads `path`, then `runs` times: prefill `prompt_tokens` ids on an empty cache, decode
/// `gen_tokens` greedily, then feed `turn2_tokens` more ids as a second turn and take its first
/// token. One warm-up run is done first and not counted.
pub fn run_bench(
    path: &Path,
    prompt_tokens: usize,
    gen_tokens: usize,
    turn2_tokens: usize,
    runs: usize,
    threads: usize,
    device: &DeviceChoice,
) -> Result<BenchResult, EngineError> {
    let free_before = device.is_gpu().then(|| device.memory()).flatten();
    let t = Instant::now();
    let (mut g, info) = load_gguf(path, path.to_string_lossy().to_string(), &device.device)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let total = prompt_tokens + gen_tokens + turn2_tokens;
    if prompt_tokens == 0 || turn2_tokens == 0 || total > info.context_length {
        return Err(EngineError::BadParams(format!(
            "prompt, generated and turn-2 tokens add up to {total}; each part must be at least 1 \
             (generated may be 0) and the sum at most {} (the model's context)",
            info.context_length
        )));
    }
    // Real text tokens, repeated to the requested length.
    let seed = g.tok.encode(
        "The quick brown fox jumps over the lazy dog while the committee reviews the annual budget report. ",
    )?;
    let ids: Vec<u32> = seed.iter().copied().cycle().take(prompt_tokens).collect();
    let turn2: Vec<u32> = seed.iter().copied().cycle().take(turn2_tokens).collect();

    let (mut pp, mut tg, mut ttft, mut ttft2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        g.dec.truncate_slot(0, 0);
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
        // The second turn's prompt is its new tokens only: everything before stays cached.
        let t2 = Instant::now();
        let l = g.dec.forward(&turn2, true)?.unwrap_or_default();
        std::hint::black_box(argmax(&l));
        let second = t2.elapsed().as_secs_f64() * 1e3;
        if run == 0 {
            continue; // warm-up
        }
        pp.push(prompt_tokens as f64 / prefill);
        if gen_tokens > 0 {
            tg.push(gen_tokens as f64 / decode);
        }
        ttft.push(first);
        ttft2.push(second);
    }
    g.dec.truncate_slot(0, 0);
    let (on_device, layers) = g.dec.layers_on_device();
    let gpu_mem_mib = match (free_before, device.memory()) {
        (Some((before, _)), Some((after, _))) => {
            Some(before.saturating_sub(after) as f64 / (1 << 20) as f64)
        }
        _ => None,
    };
    Ok(BenchResult {
        prompt_tok_s: median(pp),
        gen_tok_s: if tg.is_empty() { 0.0 } else { median(tg) },
        ttft_ms: median(ttft),
        ttft_turn2_ms: median(ttft2),
        load_ms,
        threads,
        peak_rss_mib: crate::procmem::peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64,
        device: device.label.clone(),
        gpu_mem_mib,
        cpu_kernel: (on_device < layers)
            .then(super::simd::kernel)
            .flatten()
            .map(|k| k.name()),
        kv_cache: g.dec.kv_type().to_string(),
        gpu_layers: info.gpu_layers.map(|(n, _)| n),
        layers,
    })
}
