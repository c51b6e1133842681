//! How long does `Library::scan` take over 200 GGUF models? Target: under 200 ms.
//!
//! Builds a temp store with realistic headers (a 32k-token vocabulary, 20k merges, a chat
//! template, 201 tensor infos for a 22-layer llama) written by candle's own GGUF writer, with tiny
//! tensor data. 150 models sit in the HF cache layout (blob + snapshot symlink + refs/main) and 50
//! are loose files in a `model_dirs` folder. Prints the median of several scans, and of
//! rescans (which reuse the header facts of unchanged files).
//!
//! Run without recompiling candle in release mode:
//! `cargo bench --profile dev --bench library_scan`
//! The dev profile builds this crate without optimizations (dependencies are optimized), which
//! makes the header walk several times slower than in a release build. For a release-like number
//! without rebuilding dependencies, optimize just this crate:
//! `cargo bench --profile dev --bench library_scan --config 'profile.dev.package.influence.opt-level=3'`

use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use influence::library::{Library, LibraryRoots};

const HF_MODELS: usize = 150;
const LOOSE_MODELS: usize = 50;
const RUNS: usize = 9;
const TARGET: Duration = Duration::from_millis(200);

fn realistic_gguf() -> Vec<u8> {
    let layers = 22u32;
    let mut meta: Vec<(String, gguf_file::Value)> = vec![
        (
            "general.architecture".into(),
            gguf_file::Value::String("llama".into()),
        ),
        (
            "general.name".into(),
            gguf_file::Value::String("Bench Llama 1B".into()),
        ),
        ("general.file_type".into(), gguf_file::Value::U32(2)),
        ("llama.context_length".into(), gguf_file::Value::U32(4096)),
        ("llama.block_count".into(), gguf_file::Value::U32(layers)),
        ("llama.embedding_length".into(), gguf_file::Value::U32(2048)),
        (
            "llama.feed_forward_length".into(),
            gguf_file::Value::U32(5632),
        ),
        (
            "llama.attention.head_count".into(),
            gguf_file::Value::U32(32),
        ),
        (
            "llama.attention.head_count_kv".into(),
            gguf_file::Value::U32(4),
        ),
        (
            "llama.rope.freq_base".into(),
            gguf_file::Value::F32(10000.0),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            gguf_file::Value::F32(1e-5),
        ),
        (
            "tokenizer.ggml.model".into(),
            gguf_file::Value::String("gpt2".into()),
        ),
        (
            "tokenizer.chat_template".into(),
            gguf_file::Value::String(
                "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}".repeat(8),
            ),
        ),
    ];
    let tokens: Vec<gguf_file::Value> = (0..32_000)
        .map(|i| gguf_file::Value::String(format!("tok{i}")))
        .collect();
    let types: Vec<gguf_file::Value> = (0..32_000).map(|_| gguf_file::Value::I32(1)).collect();
    let merges: Vec<gguf_file::Value> = (0..20_000)
        .map(|i| gguf_file::Value::String(format!("t{} k{}", i % 97, i)))
        .collect();
    meta.push((
        "tokenizer.ggml.tokens".into(),
        gguf_file::Value::Array(tokens),
    ));
    meta.push((
        "tokenizer.ggml.token_type".into(),
        gguf_file::Value::Array(types),
    ));
    meta.push((
        "tokenizer.ggml.merges".into(),
        gguf_file::Value::Array(merges),
    ));

    // Real names and count (9 per layer + 3), tiny shapes: the scan never reads tensor data.
    let small = Tensor::zeros((4, 32), DType::F32, &Device::Cpu).expect("tensor");
    let q = QTensor::quantize(&small, GgmlDType::Q4_0).expect("quantize");
    let norm = QTensor::quantize(
        &Tensor::zeros(32, DType::F32, &Device::Cpu).expect("tensor"),
        GgmlDType::F32,
    )
    .expect("quantize");
    let mut names = vec![
        "token_embd.weight".to_string(),
        "output_norm.weight".into(),
        "output.weight".into(),
    ];
    for l in 0..layers {
        for t in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
            "attn_norm",
            "ffn_norm",
        ] {
            names.push(format!("blk.{l}.{t}.weight"));
        }
    }
    let tensors: Vec<(&str, &QTensor)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                if n.ends_with("norm.weight") {
                    &norm
                } else {
                    &q
                },
            )
        })
        .collect();
    let meta_refs: Vec<(&str, &gguf_file::Value)> =
        meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cur = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut cur, &meta_refs, &tensors).expect("write gguf");
    cur.into_inner()
}

fn build_store(root: &Path, gguf: &[u8]) -> LibraryRoots {
    let hub = root.join("hf/hub");
    let sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let commit = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
    for i in 0..HF_MODELS {
        let repo = hub.join(format!("models--bench-org--Model-{i}-GGUF"));
        std::fs::create_dir_all(repo.join("blobs")).expect("mkdir");
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).expect("mkdir");
        std::fs::create_dir_all(repo.join("refs")).expect("mkdir");
        std::fs::write(repo.join("blobs").join(sha), gguf).expect("write blob");
        std::os::unix::fs::symlink(
            format!("../../blobs/{sha}"),
            repo.join("snapshots")
                .join(commit)
                .join(format!("model-{i}.Q4_0.gguf")),
        )
        .expect("symlink");
        std::fs::write(repo.join("refs/main"), commit).expect("write ref");
    }
    let extra = root.join("models");
    std::fs::create_dir_all(&extra).expect("mkdir");
    for i in 0..LOOSE_MODELS {
        std::fs::write(extra.join(format!("loose-{i}.Q4_0.gguf")), gguf).expect("write");
    }
    LibraryRoots {
        hf_hub: hub,
        ollama: None,
        lmstudio: Vec::new(),
        extra: vec![extra],
        imports_file: root.join("data/imports.json"),
    }
}

/// CPU time of this process: on a busy machine wall time also measures the neighbours.
fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let gguf = realistic_gguf();
    let roots = build_store(dir.path(), &gguf);
    let total = HF_MODELS + LOOSE_MODELS;

    let mut times = Vec::with_capacity(RUNS);
    let mut cpu = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let cpu_start = process_cpu_time();
        let lib = Library::scan(&roots);
        times.push(start.elapsed());
        cpu.push(process_cpu_time().saturating_sub(cpu_start));
        assert_eq!(lib.models().len(), total, "every model is listed");
        assert!(lib.models().iter().all(|m| m.broken.is_none()));
        assert_eq!(lib.models()[0].info.tensor_count, 201);
    }
    // A rescan (after a download finishes) re-reads only changed files.
    let base = Library::scan(&roots);
    let mut rescans = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let start = Instant::now();
        let lib = base.rescan();
        rescans.push(start.elapsed());
        assert_eq!(lib.models().len(), total);
    }
    rescans.sort();
    times.sort();
    cpu.sort();
    let median = times[RUNS / 2];
    println!(
        "library_scan: {total} GGUF models ({} KB header each), median {:.1} ms over {RUNS} runs (min {:.1} ms, max {:.1} ms; median CPU time {:.1} ms); target < {} ms: {}",
        gguf.len() / 1024,
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
        cpu[RUNS / 2].as_secs_f64() * 1e3,
        TARGET.as_millis(),
        if median < TARGET { "met" } else { "MISSED" }
    );
    println!(
        "library_rescan: {total} unchanged models, median {:.1} ms over {RUNS} runs",
        rescans[RUNS / 2].as_secs_f64() * 1e3
    );
}
