//! safetensors header reader: the 8-byte length, then the JSON table of tensors. No weights.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A header over this size is corrupt, not a model (real headers are a few hundred KB).
const MAX_HEADER: u64 = 100 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SafeTensor {
    pub name: String,
    /// `F32`, `F16`, `BF16`, `I64`, `U8`, ...
    pub dtype: String,
    pub shape: Vec<u64>,
    pub begin: u64,
    pub end: u64,
}

impl SafeTensor {
    pub fn elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |a, d| a.saturating_mul(*d))
    }
}

#[derive(Debug, Clone)]
pub struct SafeHeader {
    pub tensors: Vec<SafeTensor>,
    pub header_len: u64,
    pub file_size: u64,
}

impl SafeHeader {
    /// Absolute offset where the last tensor's bytes end.
    pub fn data_end(&self) -> u64 {
        let base = 8 + self.header_len;
        base.saturating_add(self.tensors.iter().map(|t| t.end).max().unwrap_or(0))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("file is {0} bytes, too short to hold a safetensors header (the download is probably incomplete)")]
    TooShort(u64),
    #[error("header claims {claimed} bytes but the file is {file_size} bytes (truncated or not safetensors)")]
    HeaderTooLong { claimed: u64, file_size: u64 },
    #[error("header is not valid safetensors JSON: {0}")]
    BadJson(String),
}

#[derive(serde::Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Reads the header of the safetensors file at `path`.
pub fn read_header(path: &Path) -> Result<SafeHeader, SafetensorsError> {
    let io = |source| SafetensorsError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    if file_size < 8 {
        return Err(SafetensorsError::TooShort(file_size));
    }
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(io)?;
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || 8 + header_len > file_size {
        return Err(SafetensorsError::HeaderTooLong {
            claimed: header_len,
            file_size,
        });
    }
    let mut buf = vec![0u8; header_len as usize];
    file.read_exact(&mut buf).map_err(io)?;
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&buf).map_err(|e| SafetensorsError::BadJson(e.to_string()))?;
    let mut tensors = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if name == "__metadata__" {
            continue;
        }
        let entry: RawEntry = serde_json::from_value(value)
            .map_err(|e| SafetensorsError::BadJson(format!("tensor {name}: {e}")))?;
        if entry.data_offsets[1] < entry.data_offsets[0] {
            return Err(SafetensorsError::BadJson(format!(
                "tensor {name} ends before it begins"
            )));
        }
        tensors.push(SafeTensor {
            name,
            dtype: entry.dtype,
            shape: entry.shape,
            begin: entry.data_offsets[0],
            end: entry.data_offsets[1],
        });
    }
    Ok(SafeHeader {
        tensors,
        header_len,
        file_size,
    })
}

/// Bytes per element of a safetensors dtype.
pub fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Weight dtypes (integer tensors such as `position_ids` are buffers, not parameters).
pub fn is_float(dtype: &str) -> bool {
    matches!(
        dtype,
        "F64" | "F32" | "F16" | "BF16" | "F8_E4M3" | "F8_E5M2"
    )
}
