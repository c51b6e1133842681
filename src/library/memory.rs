//! The one memory estimate: the Library, the Hub pane and `pull` all call [`estimate`] on facts
//! derived the same way ([`ModelShape::from_metadata`]), so one file gets one number everywhere.
//!
//! The Library reads the facts from the header on disk; the Hub and `pull` from the first bytes of
//! the same header fetched over HTTP (the keys it needs precede the long token lists), and fall
//! back to the file size alone while that read is pending or when it fails.

use std::collections::BTreeMap;

use super::gguf::MetaValue;
use super::ModelKind;

/// The context the estimate assumes (or the model's own limit, if smaller).
pub const DEFAULT_CONTEXT: u64 = 4096;

/// The facts of a model that do not depend on which quantization of it is chosen: every GGUF
/// file of one repo shares them, so the Hub reads them from one header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelShape {
    /// KV-cache bytes per token of context: 2 (K and V) × layers × kv heads × head dim × value
    /// size. 0 for encoders, which keep no cache.
    pub kv_bytes_per_token: u64,
    /// The model's own context limit.
    pub context_length: Option<u64>,
    /// The token embedding the engine dequantizes to f32 for lookups: vocab × width × 4.
    pub embedding_f32_bytes: u64,
}

impl ModelShape {
    /// Reads the shape from GGUF metadata. `None` when the keys that size the KV cache are absent,
    /// which happens when the metadata was cut short before them.
    pub fn from_metadata(meta: &BTreeMap<String, MetaValue>) -> Option<ModelShape> {
        let arch = meta.get("general.architecture")?.as_str()?;
        let key = |k: &str| meta.get(&format!("{arch}.{k}")).and_then(MetaValue::as_u64);
        let layers = key("block_count")?;
        let heads = key("attention.head_count");
        let kv_heads = key("attention.head_count_kv").or(heads)?;
        let width = key("embedding_length");
        let head_dim = key("attention.key_length").or_else(|| width?.checked_div(heads?))?;
        let vocab = match meta.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array { len }) => *len,
            _ => 0,
        };
        Some(ModelShape {
            // candle's quantized models compute in f32, so their KV cache holds f32 values.
            kv_bytes_per_token: kv_per_token(layers, kv_heads, head_dim, 4),
            context_length: key("context_length"),
            embedding_f32_bytes: vocab.saturating_mul(width.unwrap_or(0)).saturating_mul(4),
        })
    }
}

/// 2 (K and V) × layers × kv heads × head dim × bytes per value, saturating (untrusted headers).
pub fn kv_per_token(layers: u64, kv_heads: u64, head_dim: u64, value_bytes: u64) -> u64 {
    [layers, kv_heads, head_dim, value_bytes]
        .iter()
        .fold(2u64, |a, x| a.saturating_mul(*x))
}

/// Everything an estimate is computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryFacts {
    /// Bytes of the weight files (every part of a split GGUF).
    pub file_bytes: u64,
    /// The engine widens the weights to f32 on load (F16 and BF16 GGUF files), doubling them.
    pub widened: bool,
    /// The quantization-independent part, when known.
    pub shape: Option<ModelShape>,
}

impl MemoryFacts {
    /// Facts for a weight file of `file_bytes` with quant label `quant` (`Q4_K_M`, `F16`, …).
    pub fn new(file_bytes: u64, quant: Option<&str>, shape: Option<ModelShape>) -> MemoryFacts {
        MemoryFacts {
            file_bytes,
            widened: quant
                .is_some_and(|q| q.eq_ignore_ascii_case("F16") || q.eq_ignore_ascii_case("BF16")),
            shape,
        }
    }
}

/// Bytes needed to run a model with a `context`-token context (or its own limit, if smaller):
/// weights (widened where the engine widens them) + the f32 embedding copy + the KV cache,
/// plus 10% for buffers. Without a shape it is the weights and 10% only: a lower bound.
pub fn estimate(facts: &MemoryFacts, kind: ModelKind, context: u64) -> u64 {
    let weights = if facts.widened {
        facts.file_bytes.saturating_mul(2)
    } else {
        facts.file_bytes
    };
    let (embedding, kv) = match facts.shape {
        Some(s) => {
            let ctx = s.context_length.map_or(context, |c| c.min(context));
            let kv = match kind {
                ModelKind::Generate => s.kv_bytes_per_token.saturating_mul(ctx),
                ModelKind::Embedding => 0,
            };
            (s.embedding_f32_bytes, kv)
        }
        None => (0, 0),
    };
    let total = weights.saturating_add(embedding).saturating_add(kv);
    total.saturating_add(total / 10)
}

/// The context an estimate for a model with limit `context_length` assumes.
pub fn context_for(context_length: Option<u64>) -> u64 {
    context_length.map_or(DEFAULT_CONTEXT, |c| c.min(DEFAULT_CONTEXT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, MetaValue)]) -> BTreeMap<String, MetaValue> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn shape_from_llama_metadata() {
        let m = meta(&[
            ("general.architecture", MetaValue::Str("llama".into())),
            ("llama.block_count", MetaValue::Int(30)),
            ("llama.attention.head_count", MetaValue::Int(9)),
            ("llama.attention.head_count_kv", MetaValue::Int(3)),
            ("llama.embedding_length", MetaValue::Int(576)),
            ("llama.context_length", MetaValue::Int(8192)),
            ("tokenizer.ggml.tokens", MetaValue::Array { len: 49152 }),
        ]);
        let s = ModelShape::from_metadata(&m).unwrap();
        assert_eq!(s.kv_bytes_per_token, 2 * 30 * 3 * 64 * 4);
        assert_eq!(s.context_length, Some(8192));
        assert_eq!(s.embedding_f32_bytes, 49152 * 576 * 4);
        // Cut before the layer count: no shape rather than a wrong one.
        assert!(ModelShape::from_metadata(&meta(&[(
            "general.architecture",
            MetaValue::Str("llama".into())
        )]))
        .is_none());
    }

    #[test]
    fn estimate_adds_kv_embedding_and_a_tenth() {
        let shape = ModelShape {
            kv_bytes_per_token: 1000,
            context_length: Some(2048),
            embedding_f32_bytes: 5000,
        };
        let q4 = MemoryFacts::new(100_000, Some("Q4_K_M"), Some(shape));
        let ctx = context_for(shape.context_length);
        assert_eq!(ctx, 2048);
        let total = 100_000 + 5000 + 1000 * 2048;
        assert_eq!(estimate(&q4, ModelKind::Generate, ctx), total + total / 10);
        let f16 = MemoryFacts::new(100_000, Some("f16"), Some(shape));
        assert!(estimate(&f16, ModelKind::Generate, ctx) > estimate(&q4, ModelKind::Generate, ctx));
        assert_eq!(
            estimate(
                &MemoryFacts::new(100, None, None),
                ModelKind::Generate,
                4096
            ),
            110
        );
        let huge = MemoryFacts::new(u64::MAX, Some("F16"), Some(shape));
        assert_eq!(estimate(&huge, ModelKind::Generate, ctx), u64::MAX);
    }
}
