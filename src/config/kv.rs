//! `engine.kv_cache`: the value type the engine's KV caches hold. Parsed here, in the
//! configuration layer, so a bad value is a configuration error naming its source.

/// The element type a KV cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F32,
    F16,
}

impl KvType {
    /// Bytes one value takes.
    pub fn size(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    /// The type `INFLUENCE_KV_CACHE` asks for (`engine.kv_cache` reaches the engine through it);
    /// f32 when it is unset. The config check has already refused other values.
    pub fn from_env() -> Self {
        std::env::var("INFLUENCE_KV_CACHE")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

impl std::str::FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            _ => Err(format!(
                "unknown KV cache type {s:?}: expected \"f32\" or \"f16\""
            )),
        }
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        })
    }
}
