//! Which device the engine computes on: parsing `--device`, choosing one under `auto`, naming it
//! and reading its free memory. The only module that names a concrete backend; everything else
//! takes the [`Device`] chosen here.
//!
//! `auto` takes CUDA when this build has it and a GPU answers, else Metal when built, else the
//! CPU, and says why. An explicit `cuda` or `metal` that cannot start is an error: a user who
//! asked for the GPU should not silently get the CPU.

use candle_core::Device;

use super::EngineError;
pub use crate::config::device::{Backend, DeviceRequest};

/// Host memory: where GGUF bytes are read, embedding tables are looked up and the own CPU
/// kernels run, whatever device computes.
pub const HOST: Device = Device::Cpu;

/// The GPU backends compiled into this binary.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(all(feature = "metal", target_os = "macos")) {
        v.push("metal");
    }
    v
}

/// The device the engine runs on, its name and why it was chosen.
#[derive(Debug, Clone)]
pub struct DeviceChoice {
    pub device: Device,
    /// `cpu`, `cuda:0 NVIDIA H200`, `metal:0`.
    pub label: String,
    /// Why this device: what was asked and, under `auto`, why a GPU was not taken.
    pub reason: String,
    /// Chosen by `auto` rather than named.
    pub auto: bool,
}

impl DeviceChoice {
    pub fn cpu(reason: impl Into<String>) -> Self {
        Self {
            device: Device::Cpu,
            label: "cpu".into(),
            reason: reason.into(),
            auto: false,
        }
    }

    pub fn is_gpu(&self) -> bool {
        !self.device.is_cpu()
    }

    /// Free and total memory of the device, bytes: the GPU's own for CUDA, the system's for the
    /// CPU and for Apple GPUs (which share it).
    pub fn memory(&self) -> Option<(u64, u64)> {
        gpu_memory(&self.device)
            .or_else(|| crate::hub::MemInfo::read().map(|m| (m.available_bytes, m.total_bytes)))
    }
}

fn missing_backend(name: &str, feature: &str) -> EngineError {
    let how = if feature == "cuda" {
        "cargo build --release --features cuda (or scripts/build-cuda.sh without a CUDA toolkit)"
    } else {
        "cargo build --release --features metal (macOS only)"
    };
    EngineError::Device(format!(
        "this build of Influence has no {name} support; rebuild it with {how}, or use --device cpu"
    ))
}

/// Starts the device `req` names. See the module docs for `auto`.
pub fn select(req: DeviceRequest) -> Result<DeviceChoice, EngineError> {
    let index = req.index.unwrap_or(0);
    match req.backend {
        Backend::Cpu => Ok(DeviceChoice::cpu("asked for the CPU")),
        Backend::Cuda => cuda(index).map_err(|e| match e {
            GpuStart::NotBuilt => missing_backend("CUDA", "cuda"),
            GpuStart::Failed(why) => EngineError::Device(format!(
                "CUDA device {index} did not start: {why}. Check `nvidia-smi`, the driver, and the \
                 device number; or use --device cpu"
            )),
        }),
        Backend::Metal => metal(index).map_err(|e| match e {
            GpuStart::NotBuilt => missing_backend("Metal", "metal"),
            GpuStart::Failed(why) => EngineError::Device(format!(
                "Metal device {index} did not start: {why}; use --device cpu"
            )),
        }),
        Backend::Auto => {
            let mut why = Vec::new();
            match cuda(index) {
                Ok(c) => {
                    return Ok(DeviceChoice {
                        auto: true,
                        reason: "auto: a CUDA GPU answered".into(),
                        ..c
                    })
                }
                Err(GpuStart::Failed(e)) => why.push(format!("CUDA did not start ({e})")),
                Err(GpuStart::NotBuilt) => {}
            }
            match metal(index) {
                Ok(c) => {
                    return Ok(DeviceChoice {
                        auto: true,
                        reason: "auto: the Apple GPU answered".into(),
                        ..c
                    })
                }
                Err(GpuStart::Failed(e)) => why.push(format!("Metal did not start ({e})")),
                Err(GpuStart::NotBuilt) => {}
            }
            let reason = if why.is_empty() {
                "auto: this build has no GPU backend (build with --features cuda or metal)".into()
            } else {
                format!("auto: {}; using the CPU", why.join("; "))
            };
            if !why.is_empty() {
                tracing::warn!("{reason}");
            }
            Ok(DeviceChoice {
                auto: true,
                ..DeviceChoice::cpu(reason)
            })
        }
    }
}

enum GpuStart {
    NotBuilt,
    #[cfg_attr(not(any(feature = "cuda", feature = "metal")), allow(dead_code))]
    Failed(String),
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> Result<DeviceChoice, GpuStart> {
    // candle reports a missing driver as an error, and a driver without GPUs too.
    let device = Device::new_cuda(index).map_err(|e| GpuStart::Failed(e.to_string()))?;
    let name = device
        .as_cuda_device()
        .ok()
        .and_then(|d| d.cuda_stream().context().name().ok())
        .unwrap_or_else(|| "GPU".into());
    Ok(DeviceChoice {
        device,
        label: format!("cuda:{index} {name}"),
        reason: "asked for CUDA".into(),
        auto: false,
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> Result<DeviceChoice, GpuStart> {
    Err(GpuStart::NotBuilt)
}

#[cfg(all(feature = "metal", target_os = "macos"))]
fn metal(index: usize) -> Result<DeviceChoice, GpuStart> {
    let device = Device::new_metal(index).map_err(|e| GpuStart::Failed(e.to_string()))?;
    Ok(DeviceChoice {
        device,
        label: format!("metal:{index}"),
        reason: "asked for Metal".into(),
        auto: false,
    })
}

#[cfg(not(all(feature = "metal", target_os = "macos")))]
fn metal(_index: usize) -> Result<DeviceChoice, GpuStart> {
    Err(GpuStart::NotBuilt)
}

/// Free and total bytes of a CUDA GPU's own memory; `None` for other devices.
#[cfg(feature = "cuda")]
pub fn gpu_memory(device: &Device) -> Option<(u64, u64)> {
    let d = device.as_cuda_device().ok()?;
    let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
    Some((free as u64, total as u64))
}

/// Free and total bytes of a CUDA GPU's own memory; `None` for other devices.
#[cfg(not(feature = "cuda"))]
pub fn gpu_memory(_device: &Device) -> Option<(u64, u64)> {
    None
}

/// Positions of KV cache counted when checking that a model fits a GPU: the Library's memory
/// estimate counts the same (a model's full context would refuse most models that run).
const FIT_CONTEXT: u64 = 4096;

/// Refuses a model whose weights and a 4096-position KV cache exceed the GPU's free memory,
/// before any weight is read. `weights` are the bytes that go to the device.
/// `kv_bytes(positions)` is one sequence's KV cache at that many positions.
pub fn check_fits(
    device: &Device,
    weights: u64,
    kv_bytes: impl Fn(u64) -> u64,
    context: u64,
) -> Result<(), EngineError> {
    let Some((free, total)) = gpu_memory(device) else {
        return Ok(());
    };
    let kv = kv_bytes(context.min(FIT_CONTEXT));
    let need = weights + kv;
    if need > free {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        return Err(EngineError::Device(format!(
            "the model needs about {:.1} GiB of GPU memory ({:.1} GiB of weights + {:.1} GiB of KV \
             cache for {} positions) but the GPU has {:.1} GiB free of {:.1} GiB; pick a smaller \
             quantization, free GPU memory, or use --device cpu",
            gib(need),
            gib(weights),
            gib(kv),
            context.min(FIT_CONTEXT),
            gib(free),
            gib(total)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(any(feature = "cuda", feature = "metal")))]
    #[test]
    fn a_cpu_build_runs_auto_on_the_cpu_and_refuses_gpus_by_feature_name() {
        let auto = select(DeviceRequest::default()).unwrap();
        assert!(auto.device.is_cpu());
        assert_eq!(auto.label, "cpu");
        assert!(auto.reason.contains("no GPU backend"), "{}", auto.reason);

        let err = select("cuda".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
        assert!(err.contains("build-cuda.sh"), "{err}");
        let err = select("metal".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("--features metal"), "{err}");
        assert!(compiled_backends().is_empty());
    }

    #[test]
    fn the_cpu_reports_system_memory() {
        let (free, total) = DeviceChoice::cpu("test").memory().unwrap();
        assert!(free > 0 && free <= total, "{free} / {total}");
    }
}
