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
pub use crate::config::gpu_layers::GpuLayers;

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
pub const FIT_CONTEXT: u64 = 4096;

/// GPU memory kept free for activations, logits and the CUDA libraries' workspaces.
pub const GPU_RESERVE: u64 = 256 << 20;

/// What a model puts on a GPU, bytes: per layer its weights and its KV cache at the fit
/// context, and what goes with the last layer (the output head and norms; a tied embedding's
/// copy). The embedding table stays in host memory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuBytes {
    pub layers: Vec<(u64, u64)>,
    pub head: u64,
    /// KV positions the layers' KV bytes count.
    pub positions: u64,
}

impl GpuBytes {
    /// `n_layer` layers with no weights counted yet, each with its KV cache at the fit context
    /// (at most `context`): `kv_floats(i, positions)` values of `engine.kv_cache`'s size.
    pub fn kv_only(
        n_layer: usize,
        context: usize,
        kv_floats: impl Fn(usize, usize) -> usize,
    ) -> GpuBytes {
        let positions = (context as u64).min(FIT_CONTEXT);
        let per_value = super::KvType::from_env().size();
        let layers = (0..n_layer)
            .map(|i| (0, (kv_floats(i, positions as usize) * per_value) as u64))
            .collect();
        GpuBytes {
            layers,
            head: 0,
            positions,
        }
    }

    /// Bytes on the GPU with the first `k` layers there (the head too when that is all).
    pub fn with_layers(&self, k: usize) -> u64 {
        let layers: u64 = self.layers.iter().take(k).map(|(w, kv)| w + kv).sum();
        let head = if k >= self.layers.len() { self.head } else { 0 };
        layers + head
    }

    /// The most layers whose bytes fit in `budget`.
    fn most_that_fit(&self, budget: u64) -> usize {
        (0..=self.layers.len())
            .rev()
            .find(|&k| self.with_layers(k) <= budget)
            .unwrap_or(0)
    }
}

/// How many layers go to the GPU, checked before any weight is read: `free` is the GPU's free
/// memory (`None` when the device cannot say), `splittable` whether the model may run split
/// (attention models; recurrent ones may not). `auto` takes every layer when they fit and
/// else as many as fit (possibly none: the CPU runs the model); a number takes that many
/// (all at most) and refuses, with the numbers, when they do not fit.
pub fn plan_layers(
    free: Option<(u64, u64)>,
    req: GpuLayers,
    bytes: &GpuBytes,
    splittable: bool,
) -> Result<usize, EngineError> {
    let n = bytes.layers.len();
    let want = match req {
        GpuLayers::Auto => n,
        GpuLayers::Count(c) => c.min(n),
    };
    if !splittable && want > 0 && want < n {
        return Err(EngineError::Device(format!(
            "engine.gpu_layers = {want} of {n} layers: Influence splits attention models only, \
             and this one has recurrent layers; set it to \"auto\" or {n} (all), or use --device cpu"
        )));
    }
    let Some((free, total)) = free else {
        return Ok(want);
    };
    let budget = free.saturating_sub(GPU_RESERVE);
    if bytes.with_layers(want) <= budget {
        return Ok(want);
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let fit = bytes.most_that_fit(budget);
    if req == GpuLayers::Auto && splittable {
        tracing::warn!(
            layers = fit,
            of = n,
            "the model does not fit the GPU's {:.1} GiB free: {fit} of {n} layers go to the GPU, the CPU runs the rest",
            gib(free)
        );
        return Ok(fit);
    }
    let need = bytes.with_layers(want);
    let kv: u64 = bytes.layers.iter().take(want).map(|(_, kv)| kv).sum();
    let advice = if splittable && fit > 0 {
        format!("set engine.gpu_layers to {fit} or \"auto\" (the CPU runs the rest), ")
    } else {
        String::new()
    };
    Err(EngineError::Device(format!(
        "{want} of {n} layers need about {:.1} GiB of GPU memory ({:.1} GiB of weights + {:.1} GiB \
         of KV cache for {} positions, {:.2} GiB kept for activations) but the GPU has \
         {:.1} GiB free of {:.1} GiB; {advice}pick a smaller quantization, free GPU memory, or use \
         --device cpu",
        gib(need + GPU_RESERVE),
        gib(need - kv),
        gib(kv),
        bytes.positions,
        gib(GPU_RESERVE),
        gib(free),
        gib(total)
    )))
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

    fn model() -> GpuBytes {
        // Four layers of 100 bytes and 20 of KV each, a 50-byte head.
        GpuBytes {
            layers: vec![(100, 20); 4],
            head: 50,
            positions: 4096,
        }
    }

    #[test]
    fn auto_takes_every_layer_that_fits_and_splits_the_rest() {
        let m = model();
        let r = GPU_RESERVE;
        assert_eq!(m.with_layers(4), 530);
        assert_eq!(m.with_layers(2), 240);
        let plan = |free: u64| plan_layers(Some((free, 1 << 40)), GpuLayers::Auto, &m, true);
        assert_eq!(plan(r + 530).unwrap(), 4);
        // Without room for the head the last layer stays on the CPU with it.
        assert_eq!(plan(r + 529).unwrap(), 3);
        assert_eq!(plan(r + 250).unwrap(), 2);
        assert_eq!(plan(r + 100).unwrap(), 0);
        // A device that cannot report its memory takes what was asked.
        assert_eq!(plan_layers(None, GpuLayers::Auto, &m, true).unwrap(), 4);
        assert_eq!(plan_layers(None, GpuLayers::Count(2), &m, true).unwrap(), 2);
    }

    #[test]
    fn a_layer_count_that_does_not_fit_is_refused_with_the_count_that_does() {
        let m = model();
        let free = Some((GPU_RESERVE + 300, 1 << 30));
        assert_eq!(plan_layers(free, GpuLayers::Count(2), &m, true).unwrap(), 2);
        assert_eq!(plan_layers(free, GpuLayers::Count(0), &m, true).unwrap(), 0);
        let err = plan_layers(free, GpuLayers::Count(9), &m, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("4 of 4 layers"), "{err}");
        assert!(err.contains("engine.gpu_layers to 2"), "{err}");
        assert!(err.contains("GiB free of 1.0 GiB"), "{err}");
    }

    #[test]
    fn a_recurrent_model_runs_whole_on_the_gpu_or_not_at_all() {
        let m = model();
        let free = Some((GPU_RESERVE + 300, 1 << 30));
        let err = plan_layers(free, GpuLayers::Auto, &m, false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("4 of 4 layers") && !err.contains("gpu_layers to"),
            "{err}"
        );
        let err = plan_layers(None, GpuLayers::Count(2), &m, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("recurrent"), "{err}");
        assert_eq!(
            plan_layers(None, GpuLayers::Count(0), &m, false).unwrap(),
            0
        );
        assert_eq!(
            plan_layers(free, GpuLayers::Count(0), &m, false).unwrap(),
            0
        );
    }
}
