//! Model files made the way an attacker would make them: GGUF headers that claim absurd
//! sizes, and small runnable models whose chat template never finishes. Built in the tests,
//! never committed.

#![allow(dead_code)]

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The template from the report: 10^8 iterations of nested loops (minijinja refuses a single
/// `range` over 100,000 but not two nested ones).
pub const TEMPLATE_BOMB: &str =
    "{% for a in range(10000) %}{% for b in range(10000) %}x{% endfor %}{% endfor %}";

/// Little-endian GGUF writer for hand-made headers.
#[derive(Default)]
pub struct RawGguf(pub Vec<u8>);

impl RawGguf {
    /// `GGUF`, version 3 and the two counts, exactly as declared (true or not).
    pub fn new(tensors: u64, kvs: u64) -> Self {
        let mut g = RawGguf(b"GGUF".to_vec());
        g.u32(3).u64(tensors).u64(kvs);
        g
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    /// A string metadata entry.
    pub fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.str(key).u32(8).str(value)
    }
    /// Pads to the default 32-byte alignment, where tensor data would start.
    pub fn align(&mut self) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self
    }
    pub fn bytes(&self) -> Vec<u8> {
        self.0.clone()
    }
}

/// The five crafted headers from the report, by file name. Each must be reported broken.
pub fn crafted_headers() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();

    // 2^62 tensors declared in a file of a few dozen bytes.
    let mut g = RawGguf::new(1 << 62, 1);
    g.kv_str("general.architecture", "llama").align();
    out.push(("many-tensors.gguf", g.bytes()));

    // A string claiming 2^60 bytes.
    let mut g = RawGguf::new(0, 2);
    g.kv_str("general.architecture", "llama");
    g.str("general.name").u32(8).u64(1 << 60);
    g.0.extend(b"tiny");
    out.push(("huge-string.gguf", g.bytes()));

    // An array claiming 2^61 elements.
    let mut g = RawGguf::new(0, 2);
    g.kv_str("general.architecture", "llama");
    g.str("tokenizer.ggml.scores").u32(9).u32(6).u64(1 << 61);
    g.0.extend([0u8; 64]);
    out.push(("huge-array.gguf", g.bytes()));

    // Arrays nested 100,000 deep.
    let mut g = RawGguf::new(0, 2);
    g.kv_str("general.architecture", "llama");
    g.str("general.nested").u32(9);
    for _ in 0..100_000 {
        g.u32(9).u64(1);
    }
    g.u32(4).u64(0);
    out.push(("deep-arrays.gguf", g.bytes()));

    // One F32 tensor of 2^40 x 2^40 elements: its element count overflows 64 bits.
    let mut g = RawGguf::new(1, 1);
    g.kv_str("general.architecture", "llama");
    g.str("token_embd.weight").u32(2).u64(1 << 40).u64(1 << 40);
    g.u32(0).u64(0);
    g.align();
    g.0.extend([0u8; 64]);
    out.push(("huge-dims.gguf", g.bytes()));

    out
}

/// Writes every crafted header into `dir`.
pub fn write_crafted_headers(dir: &Path) {
    for (name, bytes) in crafted_headers() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const FFN: usize = 128;

/// A runnable one-layer Llama with random weights and SmolLM2's tokenizer (read from
/// `smollm`), whose chat template is `template`: SmolLM2's own when `None`.
pub fn write_tiny_llama(path: &Path, smollm: &Path, template: Option<&str>) {
    let src = gguf_file::Content::read(&mut std::fs::File::open(smollm).unwrap()).unwrap();
    let vocab = match src.metadata.get("tokenizer.ggml.tokens") {
        Some(Value::Array(t)) => t.len(),
        other => panic!("SmolLM2 has no vocabulary: {other:?}"),
    };
    let mut meta: Vec<(String, Value)> = src
        .metadata
        .into_iter()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .filter(|(k, _)| template.is_none() || k != "tokenizer.chat_template")
        .collect();
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    meta.push(("general.architecture".into(), Value::String("llama".into())));
    meta.push(("general.name".into(), Value::String("tiny".into())));
    for (k, v) in [
        ("block_count", Value::U32(1)),
        ("embedding_length", Value::U32(HIDDEN as u32)),
        ("feed_forward_length", Value::U32(FFN as u32)),
        ("attention.head_count", Value::U32(HEADS as u32)),
        ("attention.head_count_kv", Value::U32(KV_HEADS as u32)),
        ("context_length", Value::U32(512)),
        ("attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("rope.freq_base", Value::F32(10000.0)),
    ] {
        meta.push((format!("llama.{k}"), v));
    }
    let rnd = |shape: (usize, usize)| Tensor::randn(0f32, 0.5, shape, &Device::Cpu).unwrap();
    let ones = || Tensor::ones(HIDDEN, candle_core::DType::F32, &Device::Cpu).unwrap();
    let tensors = vec![
        ("token_embd.weight", rnd((vocab, HIDDEN))),
        ("output_norm.weight", ones()),
        ("blk.0.attn_norm.weight", ones()),
        ("blk.0.ffn_norm.weight", ones()),
        ("blk.0.attn_q.weight", rnd((HEADS * HEAD_DIM, HIDDEN))),
        ("blk.0.attn_k.weight", rnd((KV_HEADS * HEAD_DIM, HIDDEN))),
        ("blk.0.attn_v.weight", rnd((KV_HEADS * HEAD_DIM, HIDDEN))),
        ("blk.0.attn_output.weight", rnd((HIDDEN, HEADS * HEAD_DIM))),
        ("blk.0.ffn_gate.weight", rnd((FFN, HIDDEN))),
        ("blk.0.ffn_up.weight", rnd((FFN, HIDDEN))),
        ("blk.0.ffn_down.weight", rnd((HIDDEN, FFN))),
    ];
    let qts: Vec<(&str, QTensor)> = tensors
        .into_iter()
        .map(|(n, t)| (n, QTensor::quantize(&t, GgmlDType::F32).unwrap()))
        .collect();
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(n, t)| (*n, t)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &t_refs).unwrap();
}
