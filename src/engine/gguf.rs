//! Opening a GGUF file: header, metadata, architecture and integrity checks before any weight
//! is read, plus quant-type statistics for the slow-path warning.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;

use super::EngineError;

/// Architectures the GGUF decoder implements.
pub const SUPPORTED_ARCHS: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "qwen3moe",
    "phi3",
    "gemma2",
    "gemma3",
    "granite",
    "granitemoe",
    "olmo2",
    "smollm3",
    "mamba",
    "mamba2",
];

/// An opened GGUF file whose header has been validated.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub reader: BufReader<File>,
    pub arch: String,
}

fn io_err(path: &Path, e: std::io::Error) -> EngineError {
    if e.kind() == std::io::ErrorKind::NotFound {
        EngineError::NotFound {
            path: path.to_path_buf(),
        }
    } else {
        EngineError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    }
}

/// Reads and checks the header. Fails with `Corrupt` for a non-GGUF file, `Truncated` when a
/// tensor's data lies past the end of the file, `UnsupportedArchitecture` for other families.
pub fn open(path: &Path) -> Result<GgufFile, EngineError> {
    precheck(path)?;
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| header_error(path, file_len, e))?;

    let arch = match content.metadata.get("general.architecture") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(EngineError::Corrupt {
                path: path.to_path_buf(),
                reason: "metadata key `general.architecture` is missing".into(),
            })
        }
    };
    if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
        return Err(EngineError::UnsupportedArchitecture {
            arch,
            supported: SUPPORTED_ARCHS.join(", "),
        });
    }
    check_tensor_extents(path, &content, file_len)?;
    Ok(GgufFile {
        path: path.to_path_buf(),
        content,
        reader,
        arch,
    })
}

/// Checks the header with the library's reader before candle's reads it: candle divides by
/// `general.alignment` and multiplies tensor dimensions without checking, so a crafted file
/// would panic it (a crash, in the TUI a wrecked screen) instead of failing with a reason.
fn precheck(path: &Path) -> Result<(), EngineError> {
    use crate::library::gguf::{read_header, GgufError};
    let corrupt = |reason: String| EngineError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let header = match read_header(path) {
        Ok(h) => h,
        Err(GgufError::Io { source, .. }) => return Err(io_err(path, source)),
        Err(GgufError::Truncated(section)) => {
            return Err(EngineError::Truncated {
                path: path.to_path_buf(),
                reason: format!("the file ends inside the {section}"),
            })
        }
        Err(e) => return Err(corrupt(e.to_string())),
    };
    safe_for_candle(&header).map_err(corrupt)
}

/// Whether candle's GGUF reader can read a header the library's reader accepted without
/// panicking: a power-of-two alignment and tensor sizes that fit in `usize`.
pub fn safe_for_candle(header: &crate::library::gguf::GgufHeader) -> Result<(), String> {
    use crate::library::gguf::MetaValue;
    match header.get("general.alignment") {
        Some(MetaValue::Int(a)) if *a > 0 && *a <= 1 << 30 && (*a as u64).is_power_of_two() => {}
        None => {}
        Some(other) => {
            return Err(format!(
                "`general.alignment` is {other:?}; it must be a power of two"
            ))
        }
    }
    for t in &header.tensors {
        if t.dims
            .iter()
            .try_fold(1usize, |a, d| a.checked_mul(usize::try_from(*d).ok()?))
            // Room for the byte count too: no type takes more than 8 bytes an element.
            .and_then(|n| n.checked_mul(8))
            .is_none()
        {
            return Err(format!(
                "tensor `{}` has an impossible shape {:?}",
                t.name, t.dims
            ));
        }
    }
    Ok(())
}

fn header_error(path: &Path, file_len: u64, e: candle_core::Error) -> EngineError {
    let msg = e.to_string();
    let path = path.to_path_buf();
    if msg.contains("unknown dtype") {
        return EngineError::UnsupportedQuant {
            dtype: msg.replace("unknown dtype for tensor ", "ggml type id "),
        };
    }
    let eof = msg.contains("failed to fill whole buffer")
        || msg.contains("UnexpectedEof")
        || msg.contains("remaining");
    if eof && file_len >= 8 && !msg.contains("magic") {
        EngineError::Truncated {
            path,
            reason: format!("the header ends early ({msg})"),
        }
    } else {
        EngineError::Corrupt {
            path,
            reason: format!("cannot parse the GGUF header: {msg}"),
        }
    }
}

/// Bytes a tensor occupies in the file.
pub fn tensor_bytes(dtype: GgmlDType, elems: usize) -> u64 {
    (elems / dtype.block_size() * dtype.type_size()) as u64
}

fn check_tensor_extents(path: &Path, content: &Content, file_len: u64) -> Result<(), EngineError> {
    let mut needed = content.tensor_data_offset;
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count();
        if elems % info.ggml_dtype.block_size() != 0 {
            return Err(EngineError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("tensor `{name}` has a shape that does not fit its type"),
            });
        }
        let end = content
            .tensor_data_offset
            .saturating_add(info.offset)
            .saturating_add(tensor_bytes(info.ggml_dtype, elems));
        needed = needed.max(end);
    }
    if needed > file_len {
        return Err(EngineError::Truncated {
            path: path.to_path_buf(),
            reason: format!("the tensors need {needed} bytes but the file has only {file_len}"),
        });
    }
    Ok(())
}

/// llama.cpp's spelling of a ggml type.
pub fn dtype_name(d: GgmlDType) -> &'static str {
    match d {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
        #[allow(unreachable_patterns)]
        _ => "other",
    }
}

/// Summary of the weight types of a file.
#[derive(Debug, Clone)]
pub struct QuantStats {
    pub n_params: u64,
    /// Type holding the most bytes among matrices (2-D tensors).
    pub dominant: String,
    /// Warning text when most quantized bytes run on candle's slow generic path (only on a CPU
    /// without the own kernels).
    pub slow_warning: Option<String>,
}

pub fn quant_stats(content: &Content) -> QuantStats {
    let mut bytes: HashMap<&'static str, u64> = HashMap::new();
    let mut n_params = 0u64;
    let mut quant_bytes = 0u64;
    let mut slow_bytes = 0u64;
    for info in content.tensor_infos.values() {
        let elems = info.shape.elem_count();
        n_params = n_params.saturating_add(elems as u64);
        if info.shape.rank() < 2 {
            continue;
        }
        let b = tensor_bytes(info.ggml_dtype, elems);
        let e = bytes.entry(dtype_name(info.ggml_dtype)).or_default();
        *e = e.saturating_add(b);
        if !matches!(
            info.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            quant_bytes = quant_bytes.saturating_add(b);
        }
        if matches!(
            info.ggml_dtype,
            GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
        ) && super::simd::kernel().is_none()
        {
            slow_bytes = slow_bytes.saturating_add(b);
        }
    }
    let dominant = bytes
        .iter()
        .max_by_key(|(_, b)| **b)
        .map(|(n, _)| n.to_string())
        .unwrap_or_else(|| "F32".into());
    let slow_warning = (quant_bytes > 0 && slow_bytes.saturating_mul(2) > quant_bytes).then(|| {
        slow_warning(
            (slow_bytes as u128 * 100 / quant_bytes as u128) as u64,
            super::simd::kernel(),
        )
    });
    QuantStats {
        n_params,
        dominant,
        slow_warning,
    }
}

/// The load-time warning for a file whose quantized bytes are mostly Q4_1/Q5_0/Q5_1 (`percent`
/// of them), naming the kernel variant this CPU runs (`kernel`, `None` for candle's).
fn slow_warning(percent: u64, kernel: Option<super::simd::Kernel>) -> String {
    let fast = match kernel {
        Some(k) => format!(
            "Q8_0, Q4_K and Q6_K run on Influence's own {} kernels on this CPU",
            k.name()
        ),
        None => "this CPU runs candle's kernels for every type (no AVX2 or AVX-512 VNNI, or INFLUENCE_KERNEL=0)".to_string(),
    };
    let requant = match kernel {
        Some(super::simd::Kernel::Avx512) => "measured 1.3-1.6x faster generation and 1.5-1.8x faster prompts with the AVX-512 VNNI Q8_0 kernel this CPU runs".to_string(),
        Some(k) => format!("they then run on the {} Q8_0 kernel this CPU runs; the 1.3-1.6x faster generation measured was with the AVX-512 VNNI variant", k.name()),
        None => "about 1.3x faster generation on candle's kernels".to_string(),
    };
    format!(
        "{percent}% of the quantized weight bytes are Q4_1/Q5_0/Q5_1, which run on candle's generic CPU code (2-4x slower per byte). For speed prefer a Q8_0 or Q4_0 file, or Q4_K_M when the model's row sizes are multiples of 256 (real K-quant rows): {fast}. Or set engine.requant_q8 = true in the config to convert them to Q8_0 at load ({requant}; about 1.5x the memory for those weights)"
    )
}

/// Typed metadata access with errors naming the missing key.
pub struct Meta<'a> {
    pub path: &'a Path,
    pub md: &'a HashMap<String, Value>,
}

impl Meta<'_> {
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.md.get(key)
    }

    fn missing(&self, key: &str) -> EngineError {
        EngineError::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("metadata key `{key}` is missing or has the wrong type"),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize, EngineError> {
        self.opt_usize(key).ok_or_else(|| self.missing(key))
    }

    pub fn opt_usize(&self, key: &str) -> Option<usize> {
        match self.md.get(key)? {
            Value::U8(v) => Some(*v as usize),
            Value::U16(v) => Some(*v as usize),
            Value::U32(v) => Some(*v as usize),
            Value::U64(v) => Some(*v as usize),
            Value::I8(v) if *v >= 0 => Some(*v as usize),
            Value::I16(v) if *v >= 0 => Some(*v as usize),
            Value::I32(v) if *v >= 0 => Some(*v as usize),
            Value::I64(v) if *v >= 0 => Some(*v as usize),
            _ => None,
        }
    }

    pub fn opt_f32(&self, key: &str) -> Option<f32> {
        match self.md.get(key)? {
            Value::F32(v) => Some(*v),
            Value::F64(v) => Some(*v as f32),
            _ => None,
        }
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.md.get(key)? {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<&str> {
        match self.md.get(key)? {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::simd::Kernel;

    #[test]
    fn slow_warning_names_the_kernel_chosen() {
        let avx2 = slow_warning(90, Some(Kernel::Avx2));
        assert!(avx2.starts_with("90% of the quantized"), "{avx2}");
        assert!(avx2.contains("own AVX2 kernels on this CPU"), "{avx2}");
        assert!(
            avx2.contains("on the AVX2 Q8_0 kernel this CPU runs"),
            "{avx2}"
        );
        assert!(
            !avx2.contains("AVX-512 VNNI Q8_0 kernel this CPU runs"),
            "{avx2}"
        );
        let avx512 = slow_warning(90, Some(Kernel::Avx512));
        assert!(
            avx512.contains("own AVX-512 VNNI kernels on this CPU"),
            "{avx512}"
        );
        let none = slow_warning(90, None);
        assert!(none.contains("candle's kernels for every type"), "{none}");
        assert!(!none.contains("this CPU runs;"), "{none}");
    }
}
