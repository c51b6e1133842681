//! `engine.gpu_layers`: how many of a model's layers run on the GPU, as llama.cpp's `-ngl`.
//! Parsed here, in the configuration layer, so a bad value is a configuration error naming its
//! source. The file takes a number or `"auto"`; `INFLUENCE_GPU_LAYERS` and `--gpu-layers` the
//! same as text.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// How many layers go to the GPU. The CPU runs the rest with its own kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuLayers {
    /// Every layer when the model fits the GPU's free memory, else as many as fit.
    #[default]
    Auto,
    /// The first `n` layers (all of them when `n` is at least the layer count); a model whose
    /// `n` layers do not fit is refused with the numbers.
    Count(usize),
}

impl GpuLayers {
    /// The setting `INFLUENCE_GPU_LAYERS` holds (`engine.gpu_layers` reaches the engine
    /// through it); `auto` when it is unset. The config check has already refused other values.
    pub fn from_env() -> Self {
        std::env::var("INFLUENCE_GPU_LAYERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

impl std::str::FromStr for GpuLayers {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("auto") {
            return Ok(GpuLayers::Auto);
        }
        s.parse::<usize>().map(GpuLayers::Count).map_err(|_| {
            format!("{s:?} is not a layer count: expected \"auto\" or a number such as 20")
        })
    }
}

impl std::fmt::Display for GpuLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuLayers::Auto => f.write_str("auto"),
            GpuLayers::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for GpuLayers {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            GpuLayers::Auto => s.serialize_str("auto"),
            GpuLayers::Count(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for GpuLayers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = GpuLayers;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"auto\" or a number of layers")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GpuLayers, E> {
                usize::try_from(v)
                    .map(GpuLayers::Count)
                    .map_err(|_| E::custom(format!("{v} layers: expected \"auto\" or 0 or more")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GpuLayers, E> {
                Ok(GpuLayers::Count(v as usize))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<GpuLayers, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_counts_read_as_numbers_or_auto_and_anything_else_is_named() {
        assert_eq!("auto".parse(), Ok(GpuLayers::Auto));
        assert_eq!(" AUTO ".parse(), Ok(GpuLayers::Auto));
        assert_eq!("0".parse(), Ok(GpuLayers::Count(0)));
        assert_eq!("33".parse(), Ok(GpuLayers::Count(33)));
        let err = "-1".parse::<GpuLayers>().unwrap_err();
        assert!(err.contains("\"-1\"") && err.contains("auto"), "{err}");
        assert!("all".parse::<GpuLayers>().is_err());

        #[derive(Deserialize, Serialize)]
        struct T {
            n: GpuLayers,
        }
        let t: T = toml::from_str("n = 12").unwrap();
        assert_eq!(t.n, GpuLayers::Count(12));
        let t: T = toml::from_str("n = \"auto\"").unwrap();
        assert_eq!(t.n, GpuLayers::Auto);
        assert!(toml::from_str::<T>("n = -3").is_err());
        assert!(toml::from_str::<T>("n = true").is_err());
        assert_eq!(
            toml::to_string(&T {
                n: GpuLayers::Count(7)
            })
            .unwrap()
            .trim(),
            "n = 7"
        );
    }
}
