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
    "qwen35",
    "qwen35moe",
    "phi3",
    "gemma2",
    "gemma3",
    "gemma4",
    "granite",
    "granitemoe",
    "granitehybrid",
    "olmo2",
    "smollm3",
    "gpt-oss",
    "mamba",
    "mamba2",
];

/// ggml's type id of MXFP4, which candle 0.11 cannot read: Influence reads these tensors itself.
pub const MXFP4: u32 = 39;

/// A tensor candle cannot read, read by Influence's own code (MXFP4): where it lies.
#[derive(Debug, Clone)]
pub struct RawTensor {
    /// Dimensions outermost first (candle's order, the file's reversed).
    pub dims: Vec<usize>,
    /// Offset from the start of the tensor data.
    pub offset: u64,
    /// Bytes it takes.
    pub bytes: u64,
}

/// An opened GGUF file whose header has been validated.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub reader: BufReader<File>,
    pub arch: String,
    /// MXFP4 tensors, which `content.tensor_infos` leaves out.
    pub mxfp4: HashMap<String, RawTensor>,
}

impl GgufFile {
    /// Whether the file has tensor `name`, of any type.
    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name) || self.mxfp4.contains_key(name)
    }

    /// The raw bytes of MXFP4 tensor `name`.
    pub fn raw_bytes(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u8>), EngineError> {
        use std::io::{Read, Seek, SeekFrom};
        let t = self
            .mxfp4
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::Corrupt {
                path: self.path.clone(),
                reason: format!("tensor `{name}` is missing"),
            })?;
        let io = |e: std::io::Error| EngineError::Corrupt {
            path: self.path.clone(),
            reason: format!("cannot read tensor `{name}`: {e}"),
        };
        let len = usize::try_from(t.bytes).map_err(|_| EngineError::Corrupt {
            path: self.path.clone(),
            reason: format!("tensor `{name}` is too large"),
        })?;
        let mut data = vec![0u8; len];
        self.reader
            .seek(SeekFrom::Start(self.content.tensor_data_offset + t.offset))
            .map_err(io)?;
        self.reader.read_exact(&mut data).map_err(io)?;
        Ok((t.dims, data))
    }
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
    let header = precheck(path)?;
    let file = File::open(path).map_err(|e| io_err(path, e))?;
    let file_len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut reader = BufReader::new(file);
    let mut mxfp4 = HashMap::new();
    let content = if header.tensors.iter().any(|t| t.ty.0 == MXFP4) {
        let (content, own) = read_with_own_types(&mut reader, &header)
            .map_err(|e| header_error(path, file_len, e))?;
        mxfp4 = own;
        content
    } else {
        Content::read(&mut reader).map_err(|e| header_error(path, file_len, e))?
    };

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
    if let Some(end) = mxfp4
        .values()
        .map(|t| {
            content
                .tensor_data_offset
                .saturating_add(t.offset)
                .saturating_add(t.bytes)
        })
        .max()
        .filter(|end| *end > file_len)
    {
        return Err(EngineError::Truncated {
            path: path.to_path_buf(),
            reason: format!("the tensors need {end} bytes but the file has only {file_len}"),
        });
    }
    Ok(GgufFile {
        path: path.to_path_buf(),
        content,
        reader,
        arch,
        mxfp4,
    })
}

/// Reads a header whose tensors include MXFP4, which candle's reader refuses: candle reads the
/// metadata (through a view of the file that declares no tensors), the tensor list comes from
/// the library's reader, candle's types in `Content`, MXFP4 ones apart.
fn read_with_own_types(
    reader: &mut BufReader<File>,
    header: &crate::library::gguf::GgufHeader,
) -> candle_core::Result<(Content, HashMap<String, RawTensor>)> {
    use candle_core::quantized::gguf_file::TensorInfo;
    let count_width = if header.version == 1 { 4 } else { 8 };
    let mut view = NoTensors {
        inner: reader,
        pos: 0,
        hide: 8..8 + count_width,
    };
    let mut content = Content::read(&mut view)?;
    content.tensor_data_offset = header.data_offset;
    let mut own = HashMap::new();
    for t in &header.tensors {
        let mut dims: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
        dims.reverse();
        if t.ty.0 == MXFP4 {
            let bytes = t.ty.bytes_for(t.elements()).unwrap_or(u64::MAX);
            if t.elements() % 32 != 0 {
                candle_core::bail!("tensor `{}` has a shape that does not fit MXFP4", t.name);
            }
            own.insert(
                t.name.clone(),
                RawTensor {
                    dims,
                    offset: t.offset,
                    bytes,
                },
            );
            continue;
        }
        let Some(dtype) = candle_dtype(t.ty.0) else {
            candle_core::bail!("unknown dtype for tensor {}", t.ty.0);
        };
        content.tensor_infos.insert(
            t.name.clone(),
            TensorInfo {
                ggml_dtype: dtype,
                shape: candle_core::Shape::from(dims),
                offset: t.offset,
            },
        );
    }
    Ok((content, own))
}

/// candle's type for a ggml type id it reads.
fn candle_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// A reader over the file that shows the bytes in `hide` (the tensor count) as zeros.
struct NoTensors<'a, R> {
    inner: &'a mut R,
    pos: u64,
    hide: std::ops::Range<u64>,
}

impl<R: std::io::Read> std::io::Read for NoTensors<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, b) in buf[..n].iter_mut().enumerate() {
            if self.hide.contains(&(self.pos + i as u64)) {
                *b = 0;
            }
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: std::io::Seek> std::io::Seek for NoTensors<'_, R> {
    fn seek(&mut self, to: std::io::SeekFrom) -> std::io::Result<u64> {
        self.pos = self.inner.seek(to)?;
        Ok(self.pos)
    }
}

/// Checks the header with the library's reader before candle's reads it: candle divides by
/// `general.alignment` and multiplies tensor dimensions without checking, so a crafted file
/// would panic it (a crash, in the TUI a wrecked screen) instead of failing with a reason.
fn precheck(path: &Path) -> Result<crate::library::gguf::GgufHeader, EngineError> {
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
    safe_for_candle(&header).map_err(corrupt)?;
    Ok(header)
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

pub fn quant_stats(f: &GgufFile) -> QuantStats {
    let content = &f.content;
    let mut bytes: HashMap<&'static str, u64> = HashMap::new();
    let mut n_params = 0u64;
    let mut quant_bytes = 0u64;
    let mut slow_bytes = 0u64;
    for t in f.mxfp4.values() {
        n_params = n_params.saturating_add(t.dims.iter().product::<usize>() as u64);
        let e = bytes.entry("MXFP4").or_default();
        *e = e.saturating_add(t.bytes);
        quant_bytes = quant_bytes.saturating_add(t.bytes);
    }
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
    let slow_warning = (quant_bytes > 0 && slow_bytes.saturating_mul(2) > quant_bytes)
        .then(|| slow_warning((slow_bytes as u128 * 100 / quant_bytes as u128) as u64));
    QuantStats {
        n_params,
        dominant,
        slow_warning,
    }
}

/// The load-time warning for a file whose quantized bytes are mostly Q4_1/Q5_0/Q5_1 (`percent`
/// of them) on a CPU without the own kernels, where they run on candle's generic code.
fn slow_warning(percent: u64) -> String {
    format!(
        "{percent}% of the quantized weight bytes are Q4_1/Q5_0/Q5_1, which run on candle's generic CPU code on this CPU (2-4x slower per byte; Influence's own kernels need AVX2 or AVX-512 VNNI, or INFLUENCE_KERNEL=0 turned them off). For speed prefer a Q8_0 or Q4_0 file, or set engine.requant_q8 = true in the config to convert them to Q8_0 at load (about 1.5x the memory for those weights)"
    )
}

/// A non-negative integer of any width.
fn count(v: &Value) -> Option<usize> {
    match v {
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
        count(self.md.get(key)?)
    }

    /// A per-layer value: an array of `n` counts, or one scalar for every layer. `Ok(None)`
    /// when the key is absent; an array of another length or type is an error.
    pub fn opt_usize_per_layer(
        &self,
        key: &str,
        n: usize,
    ) -> Result<Option<Vec<usize>>, EngineError> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        if let Value::Array(items) = v {
            let vals: Option<Vec<usize>> = items.iter().map(count).collect();
            return match vals {
                Some(v) if v.len() == n => Ok(Some(v)),
                _ => Err(self.bad_array(key, n)),
            };
        }
        match count(v) {
            Some(x) => Ok(Some(vec![x; n])),
            None => Err(self.missing(key)),
        }
    }

    /// An array of `n` flags (Gemma 4's sliding-window pattern). `Ok(None)` when absent.
    pub fn opt_bools(&self, key: &str, n: usize) -> Result<Option<Vec<bool>>, EngineError> {
        let Some(v) = self.md.get(key) else {
            return Ok(None);
        };
        let vals: Option<Vec<bool>> = match v {
            Value::Array(items) => items
                .iter()
                .map(|x| match x {
                    Value::Bool(b) => Some(*b),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        match vals {
            Some(v) if v.len() == n => Ok(Some(v)),
            _ => Err(self.bad_array(key, n)),
        }
    }

    fn bad_array(&self, key: &str, n: usize) -> EngineError {
        EngineError::Corrupt {
            path: self.path.to_path_buf(),
            reason: format!("metadata key `{key}` is not an array of {n} per-layer values"),
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

    #[test]
    fn slow_warning_says_why_and_what_to_do() {
        let w = slow_warning(90);
        assert!(w.starts_with("90% of the quantized"), "{w}");
        assert!(w.contains("candle's generic CPU code on this CPU"), "{w}");
        assert!(w.contains("engine.requant_q8 = true"), "{w}");
        assert!(!w.contains("AVX-512 VNNI Q8_0 kernel this CPU runs"), "{w}");
    }
}
