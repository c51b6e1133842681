//! Can Influence's engine (candle 0.11.1) run a model, and how much memory will it take?

use super::inspect::Inspection;
use super::{Format, ModelKind, Runnable};

/// GGUF architectures the engine has a quantized model for (Mistral GGUFs say `llama`).
pub use crate::engine::gguf::SUPPORTED_ARCHS as SUPPORTED_GGUF_ARCHS;

/// `model_type`s the engine loads from safetensors or PyTorch weights (plus BERT-family
/// embedding models).
pub const SUPPORTED_SAFETENSORS_ARCHS: &[&str] = &["llama", "mistral", "qwen2", "phi3"];

/// Embedding architectures the engine loads from safetensors or PyTorch weights.
const SUPPORTED_EMBEDDING_ARCHS: &[&str] = &["bert"];

pub(crate) fn assess(ins: &Inspection) -> Runnable {
    if let Some(reason) = &ins.broken {
        return Runnable::No {
            reason: format!("the files are damaged: {reason}"),
        };
    }
    let arch = ins.info.architecture.as_deref().unwrap_or("");
    match ins.format {
        Format::Gguf => {
            let unsupported: Vec<String> = ins
                .gguf_types
                .iter()
                .filter(|t| !t.engine_loads())
                .map(|t| t.name())
                .collect();
            if !unsupported.is_empty() {
                return Runnable::No {
                    reason: format!(
                        "uses {} tensors, which the engine cannot compute; pick a Q4_K_M, Q8_0 or Q4_0 file instead",
                        unsupported.join(", ")
                    ),
                };
            }
            if ins.kind == ModelKind::Embedding {
                return Runnable::No {
                    reason: format!(
                        "{arch} embedding models run from safetensors only; use the safetensors version of this model"
                    ),
                };
            }
            if !SUPPORTED_GGUF_ARCHS.contains(&arch) {
                return Runnable::No {
                    reason: format!(
                        "architecture \"{arch}\" is not supported (GGUF: {})",
                        SUPPORTED_GGUF_ARCHS.join(", ")
                    ),
                };
            }
            if !ins.has_tokenizer {
                return Runnable::No {
                    reason: "the file has no embedded vocabulary (tokenizer.ggml.tokens), so the engine cannot tokenize text for it".into(),
                };
            }
            let slow: Vec<String> = ins
                .gguf_types
                .iter()
                .filter(|t| t.candle_slow_path() && !crate::engine::own_kernels_run())
                .map(|t| t.name())
                .collect();
            if slow.is_empty() {
                Runnable::Yes
            } else {
                Runnable::SlowPath { types: slow }
            }
        }
        Format::Safetensors | Format::Pytorch => {
            if let Some(reason) = &ins.refused {
                return Runnable::No {
                    reason: reason.clone(),
                };
            }
            let supported = if ins.kind == ModelKind::Embedding {
                SUPPORTED_EMBEDDING_ARCHS.contains(&arch)
            } else {
                SUPPORTED_SAFETENSORS_ARCHS.contains(&arch)
            };
            if !supported {
                let list: Vec<&str> = SUPPORTED_SAFETENSORS_ARCHS
                    .iter()
                    .chain(SUPPORTED_EMBEDDING_ARCHS)
                    .copied()
                    .collect();
                return Runnable::No {
                    reason: if arch.is_empty() {
                        "no config.json says which architecture this is".to_string()
                    } else {
                        format!(
                            "architecture \"{arch}\" is not supported (safetensors and PyTorch: {})",
                            list.join(", ")
                        )
                    },
                };
            }
            let bad: Vec<&str> = ins
                .st_dtypes
                .iter()
                .map(String::as_str)
                .filter(|d| !matches!(*d, "F32" | "F16" | "BF16" | "I64" | "I32"))
                .collect();
            if !bad.is_empty() {
                return Runnable::No {
                    reason: format!(
                        "weights stored as {} (quantized safetensors); the engine loads F32/F16/BF16 only",
                        bad.join(", ")
                    ),
                };
            }
            if !ins.has_tokenizer {
                return Runnable::No {
                    reason:
                        "no tokenizer.json next to the weights; download it from the model's repo"
                            .into(),
                };
            }
            Runnable::Yes
        }
    }
}
