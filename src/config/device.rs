//! `engine.device`, `--device` and `--device-index`: which device the user asks the engine for.
//! Parsed here, in the configuration layer, so a bad value is a configuration error naming its
//! source; the engine (`engine::device`) starts what was asked for.

use std::fmt;
use std::str::FromStr;

/// A backend a user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Auto,
    Cpu,
    Cuda,
    Metal,
}

/// What the user asked for: `auto`, `cpu`, `cuda`, `cuda:N`, `metal`, `metal:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRequest {
    pub backend: Backend,
    /// GPU ordinal; `None` means the first (0).
    pub index: Option<usize>,
}

impl Default for DeviceRequest {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            index: None,
        }
    }
}

impl DeviceRequest {
    pub const CPU: DeviceRequest = DeviceRequest {
        backend: Backend::Cpu,
        index: None,
    };

    /// The request with `--device-index N` applied. An index that contradicts `cuda:M` (M ≠ N),
    /// or any index on `cpu`, is an error.
    pub fn with_index(self, index: Option<usize>) -> Result<Self, String> {
        let Some(n) = index else { return Ok(self) };
        match (self.backend, self.index) {
            (Backend::Cpu, _) => Err(format!(
                "--device-index {n} names a GPU, but the device is `cpu`"
            )),
            (_, Some(m)) if m != n => Err(format!(
                "--device-index {n} contradicts the device `{self}`; give the index once"
            )),
            _ => Ok(Self {
                index: Some(n),
                ..self
            }),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.backend {
            Backend::Auto => "auto",
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        };
        match self.index {
            Some(i) => write!(f, "{name}:{i}"),
            None => f.write_str(name),
        }
    }
}

impl FromStr for DeviceRequest {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i.parse::<usize>().map_err(|_| {
                    format!("`{s}`: the part after `:` must be a GPU number, as in cuda:0")
                })?;
                (n, Some(i))
            }
            None => (s.as_str(), None),
        };
        let backend = match name {
            "auto" => Backend::Auto,
            "cpu" => Backend::Cpu,
            "cuda" | "gpu" => Backend::Cuda,
            "metal" | "mps" => Backend::Metal,
            _ => {
                return Err(format!(
                    "unknown device `{s}`: expected auto, cpu, cuda, cuda:N or metal"
                ))
            }
        };
        if backend == Backend::Cpu && index.is_some() {
            return Err(format!("`{s}`: the CPU takes no number; use `cpu`"));
        }
        Ok(Self { backend, index })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling() {
        let p = |s: &str| s.parse::<DeviceRequest>();
        assert_eq!(p("auto").unwrap(), DeviceRequest::default());
        assert_eq!(p("CPU").unwrap(), DeviceRequest::CPU);
        assert_eq!(
            p("cuda:1").unwrap(),
            DeviceRequest {
                backend: Backend::Cuda,
                index: Some(1)
            }
        );
        assert_eq!(p("metal").unwrap().backend, Backend::Metal);
        assert_eq!(p("cuda:1").unwrap().to_string(), "cuda:1");
        assert!(p("cuda:x").unwrap_err().contains("GPU number"));
        assert!(p("cpu:0").unwrap_err().contains("no number"));
        assert!(p("tpu").unwrap_err().contains("auto, cpu, cuda"));
    }

    #[test]
    fn device_index_applies_once() {
        let cuda: DeviceRequest = "cuda".parse().unwrap();
        assert_eq!(cuda.with_index(Some(2)).unwrap().to_string(), "cuda:2");
        assert_eq!(
            "cuda:2"
                .parse::<DeviceRequest>()
                .unwrap()
                .with_index(Some(2))
                .unwrap()
                .index,
            Some(2)
        );
        assert!("cuda:1"
            .parse::<DeviceRequest>()
            .unwrap()
            .with_index(Some(2))
            .unwrap_err()
            .contains("contradicts"));
        assert!(DeviceRequest::CPU.with_index(Some(0)).is_err());
        assert_eq!(
            DeviceRequest::CPU.with_index(None).unwrap(),
            DeviceRequest::CPU
        );
    }
}
