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
    /// Recurrent layers (Mamba): the state one sequence carries in place of a KV cache, f32.
    pub state_bytes: u64,
    /// Sliding-window layers (Gemma 2/3, gpt-oss), whose caches keep only their window.
    pub windowed: Option<Windowed>,
}

/// The sliding-window layers' share of [`ModelShape::kv_bytes_per_token`]: their caches stop
/// growing at [`crate::engine::window_rows`] of `window` positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowed {
    pub window: u64,
    pub kv_bytes_per_token: u64,
}

impl ModelShape {
    /// KV-cache bytes of one sequence at `ctx` positions.
    pub fn kv_bytes(&self, ctx: u64) -> u64 {
        let Some(w) = self.windowed else {
            return self.kv_bytes_per_token.saturating_mul(ctx);
        };
        let window = usize::try_from(w.window).unwrap_or(usize::MAX / 4);
        let rows = crate::engine::window_rows(window, crate::engine::PREFILL_CHUNK);
        let full = self.kv_bytes_per_token.saturating_sub(w.kv_bytes_per_token);
        full.saturating_mul(ctx).saturating_add(
            w.kv_bytes_per_token
                .saturating_mul(ctx.min(u64::try_from(rows).unwrap_or(u64::MAX))),
        )
    }
}

/// Copies of a sequence's recurrent state the engine holds: the live one and two checkpoints
/// at the last turn boundaries.
pub const STATES_PER_SEQUENCE: u64 = 3;

/// What the layers of a GGUF architecture are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Attention,
    /// Mamba's selective state space (its first version).
    Mamba,
    Mamba2,
    /// Qwen3.5's Gated DeltaNet: linear attention with a key × value state per head.
    DeltaNet,
}

impl LayerKind {
    /// The kind of an architecture's recurrent layers (a hybrid's), else attention.
    pub fn of_arch(arch: &str) -> LayerKind {
        match arch {
            "mamba" => LayerKind::Mamba,
            "mamba2" | "granitehybrid" => LayerKind::Mamba2,
            "qwen35" | "qwen35moe" => LayerKind::DeltaNet,
            _ => LayerKind::Attention,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            LayerKind::Attention => "attention",
            LayerKind::Mamba => "Mamba (state space)",
            LayerKind::Mamba2 => "Mamba-2 (state space)",
            LayerKind::DeltaNet => "Gated DeltaNet (linear attention)",
        }
    }
}

/// A file's layers as (recurrent, attention) counts. A Granite hybrid lists its KV heads per
/// layer, 0 marking a recurrent layer (llama.cpp's rule); `None` when that list is missing or
/// does not cover the layers. Qwen3.5 attends every `full_attention_interval`-th layer (4 by
/// default) of its trunk (`block_count` less the `nextn_predict_layers` drafting blocks).
/// Other files are all one kind. `key` reads `{arch}.{key}` counts.
pub fn layer_split(
    arch: &str,
    layers: u64,
    kv_heads: Option<&MetaValue>,
    key: impl Fn(&str) -> Option<u64>,
) -> Option<(u64, u64)> {
    match (arch, LayerKind::of_arch(arch)) {
        (_, LayerKind::DeltaNet) => {
            let trunk = layers.saturating_sub(key("nextn_predict_layers").unwrap_or(0));
            let every = key("full_attention_interval").unwrap_or(4);
            let attention = trunk.checked_div(every)?;
            Some((trunk - attention, attention))
        }
        ("granitehybrid", _) => match kv_heads? {
            MetaValue::Ints(v) if v.len() as u64 == layers => {
                let recurrent = v.iter().filter(|&&h| h == 0).count() as u64;
                Some((recurrent, layers - recurrent))
            }
            _ => None,
        },
        (_, LayerKind::Attention) => Some((0, layers)),
        _ => Some((layers, 0)),
    }
}

/// KV heads of a hybrid's attention layers: the first non-zero per-layer value.
pub fn attention_kv_heads(kv_heads: Option<&MetaValue>) -> Option<u64> {
    match kv_heads? {
        MetaValue::Ints(v) => v
            .iter()
            .find(|&&h| h > 0)
            .and_then(|&h| u64::try_from(h).ok()),
        other => other.as_u64(),
    }
}

/// Label of a file's layer mix: the recurrent kind alone, or a hybrid's counts of each.
pub fn layer_mix_label(kind: LayerKind, recurrent: u64, attention: u64) -> String {
    if attention == 0 {
        kind.label().to_string()
    } else {
        format!("{recurrent} {} + {attention} attention", kind.label())
    }
}

/// Bytes of one sequence's state over `layers` recurrent layers (f32): each keeps its
/// convolution window (`conv_kernel - 1` inputs of its x, and in Mamba-2 its B and C, channels)
/// and its `inner × state` SSM state. A Gated DeltaNet layer's window spans its queries, keys
/// (`group_count` heads of `state_size` each) and values (`inner_size`), and its state is a
/// `state_size`² matrix per value head: `inner × state` again. `None` when a key is missing.
pub fn ssm_state_bytes(
    kind: LayerKind,
    layers: u64,
    key: impl Fn(&str) -> Option<u64>,
) -> Option<u64> {
    let conv = key("ssm.conv_kernel")?.checked_sub(1)?;
    let inner = key("ssm.inner_size")?;
    let state = key("ssm.state_size")?;
    let channels = match kind {
        LayerKind::Attention => return None,
        LayerKind::Mamba => inner,
        LayerKind::Mamba2 | LayerKind::DeltaNet => inner.saturating_add(
            2u64.saturating_mul(key("ssm.group_count")?)
                .saturating_mul(state),
        ),
    };
    let per_layer = conv
        .saturating_mul(channels)
        .saturating_add(inner.saturating_mul(state));
    Some(per_layer.saturating_mul(layers).saturating_mul(4))
}

impl ModelShape {
    /// Reads the shape from GGUF metadata. `None` when the keys that size the KV cache are absent,
    /// which happens when the metadata was cut short before them.
    pub fn from_metadata(meta: &BTreeMap<String, MetaValue>) -> Option<ModelShape> {
        let arch = meta.get("general.architecture")?.as_str()?;
        let key = |k: &str| meta.get(&format!("{arch}.{k}")).and_then(MetaValue::as_u64);
        let layers = key("block_count")?;
        let vocab = match meta.get("tokenizer.ggml.tokens") {
            Some(MetaValue::Array { len }) => *len,
            _ => 0,
        };
        let kind = LayerKind::of_arch(arch);
        let kv_meta = meta.get(&format!("{arch}.attention.head_count_kv"));
        let (recurrent, attention) = layer_split(arch, layers, kv_meta, key)?;
        // Recurrent layers keep a fixed-size state per sequence instead of a KV cache.
        let state_bytes = if recurrent > 0 {
            ssm_state_bytes(kind, recurrent, key)?
        } else {
            0
        };
        let width = key("embedding_length");
        let mut windowed = None;
        let kv_bytes_per_token = if arch == "gemma4" {
            // Layers of two widths and KV head counts, a per-layer window list and layers that
            // read others' caches: the engine's own layout, not a sum over uniform layers.
            let (all, swa) = engine_caches(meta, arch)?;
            windowed = swa;
            all
        } else if attention > 0 {
            let heads = key("attention.head_count");
            // Only a hybrid's per-layer list is read here (Gemma 4's counts its heads).
            let kv_heads = if recurrent > 0 {
                attention_kv_heads(kv_meta)
            } else {
                key("attention.head_count_kv")
            }
            .or(heads)?;
            let head_dim = key("attention.key_length").or_else(|| width?.checked_div(heads?))?;
            // The engine's caches hold f32, or f16 with `engine.kv_cache = "f16"`.
            let value = crate::config::kv::KvType::from_env().size() as u64;
            let all = kv_per_token(attention, kv_heads, head_dim, value);
            let swa = sliding_layers(arch, layers, key).filter(|_| recurrent == 0);
            windowed = swa.map(|(window, n)| Windowed {
                window,
                kv_bytes_per_token: kv_per_token(n, kv_heads, head_dim, value),
            });
            all
        } else {
            0
        };
        Some(ModelShape {
            kv_bytes_per_token,
            context_length: key("context_length"),
            embedding_f32_bytes: vocab.saturating_mul(width.unwrap_or(0)).saturating_mul(4),
            state_bytes,
            windowed,
        })
    }
}

/// KV bytes per position of every cache the engine allocates for this file, and the windowed
/// caches' share: the decoder's layout from the same metadata
/// ([`crate::engine::caches_from_metadata`]). `None` when the engine would not load it.
fn engine_caches(
    meta: &BTreeMap<String, MetaValue>,
    arch: &str,
) -> Option<(u64, Option<Windowed>)> {
    use candle_core::quantized::gguf_file::Value;
    let prefix = format!("{arch}.");
    let md: std::collections::HashMap<String, Value> = meta
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .filter_map(|(k, v)| {
            let int = |i: i128| match u64::try_from(i) {
                Ok(u) => Some(Value::U64(u)),
                Err(_) => i64::try_from(i).ok().map(Value::I64),
            };
            let value = match v {
                MetaValue::Int(i) => int(*i)?,
                MetaValue::Float(f) => Value::F64(*f),
                MetaValue::Bool(b) => Value::Bool(*b),
                MetaValue::Str(s) => Value::String(s.clone()),
                MetaValue::Ints(items) => {
                    Value::Array(items.iter().map(|&i| int(i)).collect::<Option<_>>()?)
                }
                MetaValue::Bools(items) => {
                    Value::Array(items.iter().map(|&b| Value::Bool(b)).collect())
                }
                MetaValue::Array { .. } => return None,
            };
            Some((k.clone(), value))
        })
        .collect();
    let caches = crate::engine::caches_from_metadata(&md, arch).ok()?;
    let value = crate::config::kv::KvType::from_env().size() as u64;
    let bytes =
        |c: &crate::engine::CacheShape| (c.floats_per_position as u64).saturating_mul(value);
    let all = caches.iter().map(bytes).fold(0u64, u64::saturating_add);
    // One window serves every windowed cache (the file's `attention.sliding_window`).
    let window = caches.iter().find_map(|c| c.window);
    let windowed = window.map(|w| Windowed {
        window: w as u64,
        kv_bytes_per_token: caches
            .iter()
            .filter(|c| c.window.is_some())
            .map(bytes)
            .fold(0u64, u64::saturating_add),
    });
    Some((all, windowed))
}

/// A file's sliding-window layers as (window, count), as the engine places them: every layer
/// but each `pattern`-th (gpt-oss and Gemma 2: every other, Gemma 3: five of six). Gemma 4
/// takes the engine's own layout instead ([`engine_caches`]).
fn sliding_layers(
    arch: &str,
    layers: u64,
    key: impl Fn(&str) -> Option<u64>,
) -> Option<(u64, u64)> {
    let (pattern_key, default) = match arch {
        "gpt-oss" => ("attention.sliding_window_pattern", 2),
        "gemma2" => ("attention.sliding_window_type", 2),
        "gemma3" => ("attention.sliding_window_type", 6),
        _ => return None,
    };
    let window = key("attention.sliding_window").filter(|&w| w > 0)?;
    let pattern = key(pattern_key).unwrap_or(default).max(1);
    Some((window, layers - layers / pattern))
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
/// weights (widened where the engine widens them) + the f32 embedding copy + the KV cache
/// (for recurrent layers: one sequence's states, [`STATES_PER_SEQUENCE`]), plus 10% for
/// buffers. Without a shape it is the weights and 10% only: a lower bound.
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
                ModelKind::Generate => s
                    .kv_bytes(ctx)
                    .saturating_add(s.state_bytes.saturating_mul(STATES_PER_SEQUENCE)),
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

    /// gpt-oss-20b: every other layer of 24 slides over 128 positions, so at 4096 positions
    /// half the layers hold 4096 and the other half only their window's rows.
    #[test]
    fn sliding_window_layers_count_only_their_window() {
        let m = meta(&[
            ("general.architecture", MetaValue::Str("gpt-oss".into())),
            ("gpt-oss.block_count", MetaValue::Int(24)),
            ("gpt-oss.attention.head_count", MetaValue::Int(64)),
            ("gpt-oss.attention.head_count_kv", MetaValue::Int(8)),
            ("gpt-oss.attention.key_length", MetaValue::Int(64)),
            ("gpt-oss.embedding_length", MetaValue::Int(2880)),
            ("gpt-oss.context_length", MetaValue::Int(131072)),
            ("gpt-oss.attention.sliding_window", MetaValue::Int(128)),
        ]);
        let s = ModelShape::from_metadata(&m).unwrap();
        let per_layer = 2 * 8 * 64 * 4;
        assert_eq!(s.kv_bytes_per_token, 24 * per_layer);
        assert_eq!(
            s.windowed,
            Some(Windowed {
                window: 128,
                kv_bytes_per_token: 12 * per_layer
            })
        );
        let rows = crate::engine::window_rows(128, crate::engine::PREFILL_CHUNK) as u64;
        assert!(rows < 4096);
        assert_eq!(
            s.kv_bytes(4096),
            12 * per_layer * 4096 + 12 * per_layer * rows
        );
        // Below the window's rows every layer holds every position.
        assert_eq!(s.kv_bytes(100), 24 * per_layer * 100);
        // Gemma 3: five of six layers slide; llama has no window.
        let g3 = meta(&[
            ("general.architecture", MetaValue::Str("gemma3".into())),
            ("gemma3.block_count", MetaValue::Int(26)),
            ("gemma3.attention.head_count", MetaValue::Int(4)),
            ("gemma3.attention.head_count_kv", MetaValue::Int(1)),
            ("gemma3.attention.key_length", MetaValue::Int(256)),
            ("gemma3.attention.sliding_window", MetaValue::Int(512)),
        ]);
        let s = ModelShape::from_metadata(&g3).unwrap();
        assert_eq!(
            s.windowed.map(|w| w.kv_bytes_per_token),
            Some(22 * 2 * 256 * 4)
        );
    }

    /// Gemma 4 at 26B-A4B-like numbers (30 layers, every sixth full; sliding layers 8 KV heads
    /// of 256, full layers 2 of 512 with a 1024 window): the engine's layout, where counting
    /// every layer with the query heads at the full width would give 30 × 16 × 512 × 2 × 4
    /// bytes a position. A pattern of the wrong length (the engine would refuse the file)
    /// gives no shape rather than a wrong one.
    #[test]
    fn gemma4_shape_is_the_engine_s_cache_layout() {
        let pattern = |n: usize| MetaValue::Bools((0..n).map(|i| (i + 1) % 6 != 0).collect());
        let kv: Vec<i128> = (0..30)
            .map(|i| if (i + 1) % 6 != 0 { 8 } else { 2 })
            .collect();
        let m = |pattern: MetaValue| {
            meta(&[
                ("general.architecture", MetaValue::Str("gemma4".into())),
                ("gemma4.block_count", MetaValue::Int(30)),
                ("gemma4.embedding_length", MetaValue::Int(2816)),
                ("gemma4.attention.head_count", MetaValue::Int(16)),
                (
                    "gemma4.attention.head_count_kv",
                    MetaValue::Ints(kv.clone()),
                ),
                ("gemma4.attention.key_length", MetaValue::Int(512)),
                ("gemma4.attention.key_length_swa", MetaValue::Int(256)),
                ("gemma4.attention.sliding_window", MetaValue::Int(1024)),
                ("gemma4.attention.sliding_window_pattern", pattern),
                ("gemma4.attention.shared_kv_layers", MetaValue::Int(0)),
                ("gemma4.context_length", MetaValue::Int(262_144)),
                ("gemma4.expert_count", MetaValue::Int(128)),
                ("gemma4.expert_used_count", MetaValue::Int(8)),
            ])
        };
        let s = ModelShape::from_metadata(&m(pattern(30))).unwrap();
        let (swa, full) = (2 * 8 * 256 * 4, 2 * 2 * 512 * 4);
        assert_eq!(s.kv_bytes_per_token, 25 * swa + 5 * full);
        assert_eq!(
            s.windowed,
            Some(Windowed {
                window: 1024,
                kv_bytes_per_token: 25 * swa
            })
        );
        let rows = crate::engine::window_rows(1024, crate::engine::PREFILL_CHUNK) as u64;
        assert_eq!(s.kv_bytes(4096), 5 * full * 4096 + 25 * swa * rows);
        assert!(s.kv_bytes(4096) < 30 * 16 * 512 * 2 * 4 * 4096 / 2);
        assert!(ModelShape::from_metadata(&m(pattern(29))).is_none());
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

    /// Granite 4.0 H Micro's shape: 40 layers, 4 of them attention (8 KV heads of 128), the
    /// rest Mamba-2 (inner 5120, state 128, one group): the state of 36 layers plus the KV
    /// cache of 4. Without the per-layer KV-head list the mix is unknown, so is the shape.
    #[test]
    fn granite_hybrid_shape_counts_state_and_kv_by_layer_kind() {
        let kv: Vec<i128> = (0..40).map(|i| if i % 10 == 5 { 8 } else { 0 }).collect();
        let pairs = |kv: MetaValue| {
            meta(&[
                (
                    "general.architecture",
                    MetaValue::Str("granitehybrid".into()),
                ),
                ("granitehybrid.block_count", MetaValue::Int(40)),
                ("granitehybrid.embedding_length", MetaValue::Int(2560)),
                ("granitehybrid.attention.head_count", MetaValue::Int(40)),
                ("granitehybrid.attention.head_count_kv", kv),
                ("granitehybrid.ssm.conv_kernel", MetaValue::Int(4)),
                ("granitehybrid.ssm.inner_size", MetaValue::Int(5120)),
                ("granitehybrid.ssm.state_size", MetaValue::Int(128)),
                ("granitehybrid.ssm.group_count", MetaValue::Int(1)),
            ])
        };
        let s = ModelShape::from_metadata(&pairs(MetaValue::Ints(kv))).unwrap();
        assert_eq!(s.kv_bytes_per_token, 2 * 4 * 8 * 64 * 4);
        assert_eq!(s.state_bytes, 36 * (3 * (5120 + 256) + 5120 * 128) * 4);
        assert!(ModelShape::from_metadata(&pairs(MetaValue::Array { len: 40 })).is_none());
        assert!(ModelShape::from_metadata(&pairs(MetaValue::Ints(vec![8; 39]))).is_none());
    }

    /// Qwen3.5-2B-shaped (assumed): 24 layers, every fourth gated attention with 2 KV heads
    /// of 256, the other 18 Gated DeltaNet (16 key and 16 value heads of 128, conv 4): their
    /// state instead of KV. Multi-token-prediction blocks in `block_count` are not layers.
    #[test]
    fn qwen35_shape_counts_delta_net_state_and_attention_kv() {
        let pairs = |blocks: i128, nextn: Option<i128>| {
            let mut m = vec![
                ("general.architecture", MetaValue::Str("qwen35".into())),
                ("qwen35.block_count", MetaValue::Int(blocks)),
                ("qwen35.embedding_length", MetaValue::Int(2048)),
                ("qwen35.attention.head_count", MetaValue::Int(8)),
                ("qwen35.attention.head_count_kv", MetaValue::Int(2)),
                ("qwen35.attention.key_length", MetaValue::Int(256)),
                ("qwen35.full_attention_interval", MetaValue::Int(4)),
                ("qwen35.ssm.conv_kernel", MetaValue::Int(4)),
                ("qwen35.ssm.inner_size", MetaValue::Int(2048)),
                ("qwen35.ssm.state_size", MetaValue::Int(128)),
                ("qwen35.ssm.time_step_rank", MetaValue::Int(16)),
                ("qwen35.ssm.group_count", MetaValue::Int(16)),
            ];
            if let Some(n) = nextn {
                m.push(("qwen35.nextn_predict_layers", MetaValue::Int(n)));
            }
            meta(&m)
        };
        let s = ModelShape::from_metadata(&pairs(24, None)).unwrap();
        assert_eq!(s.kv_bytes_per_token, 2 * 6 * 2 * 256 * 4);
        let per_layer = 3 * (2048 + 2 * 16 * 128) + 16 * 128 * 128;
        assert_eq!(s.state_bytes, 18 * per_layer * 4);
        assert_eq!(ModelShape::from_metadata(&pairs(25, Some(1))), Some(s));
        assert_eq!(layer_split("qwen35moe", 40, None, |_| None), Some((30, 10)));
    }

    /// Mamba-2 1.3B: 48 layers of a 3-wide window over 4096 + 2·128 channels and a
    /// 4096 × 128 state, in f32: about 103 MB a sequence and no KV cache.
    #[test]
    fn mamba2_shape_counts_state_instead_of_kv() {
        let m = meta(&[
            ("general.architecture", MetaValue::Str("mamba2".into())),
            ("mamba2.block_count", MetaValue::Int(48)),
            ("mamba2.embedding_length", MetaValue::Int(2048)),
            ("mamba2.attention.head_count", MetaValue::Int(0)),
            ("mamba2.ssm.conv_kernel", MetaValue::Int(4)),
            ("mamba2.ssm.inner_size", MetaValue::Int(4096)),
            ("mamba2.ssm.state_size", MetaValue::Int(128)),
            ("mamba2.ssm.group_count", MetaValue::Int(1)),
            ("mamba2.context_length", MetaValue::Int(1 << 20)),
        ]);
        let s = ModelShape::from_metadata(&m).unwrap();
        assert_eq!(s.kv_bytes_per_token, 0);
        assert_eq!(s.state_bytes, 48 * (3 * (4096 + 256) + 4096 * 128) * 4);
        let facts = MemoryFacts::new(1000, Some("Q4_K_M"), Some(s));
        let total = 1000 + 3 * s.state_bytes;
        assert_eq!(
            estimate(&facts, ModelKind::Generate, 4096),
            total + total / 10
        );
        // Mamba (v1) has no groups; without the state keys there is no shape.
        let v1 = |keys: bool| {
            let mut pairs = vec![
                ("general.architecture", MetaValue::Str("mamba".into())),
                ("mamba.block_count", MetaValue::Int(24)),
            ];
            if keys {
                pairs.extend([
                    ("mamba.ssm.conv_kernel", MetaValue::Int(4)),
                    ("mamba.ssm.inner_size", MetaValue::Int(1536)),
                    ("mamba.ssm.state_size", MetaValue::Int(16)),
                ]);
            }
            ModelShape::from_metadata(&meta(&pairs))
        };
        assert_eq!(
            v1(true).unwrap().state_bytes,
            24 * (3 * 1536 + 1536 * 16) * 4
        );
        assert!(v1(false).is_none());
    }

    #[test]
    fn estimate_adds_kv_embedding_and_a_tenth() {
        let shape = ModelShape {
            kv_bytes_per_token: 1000,
            context_length: Some(2048),
            embedding_f32_bytes: 5000,
            state_bytes: 0,
            windowed: None,
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
