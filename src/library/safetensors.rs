//! safetensors header reader: the 8-byte length, then the JSON table of tensors. No weights.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// A header over this size is corrupt, not a model (real headers are a few hundred KB; the
/// safetensors format itself allows 100 MB). Parsing one takes at most about 5 times its size.
pub const MAX_HEADER: u64 = 100 * 1024 * 1024;

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

/// The header's JSON object, read straight into tensor entries: no intermediate
/// `serde_json::Value` tree, so memory stays a small multiple of the header's size.
struct RawHeader(BTreeMap<String, RawEntry>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = RawHeader;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object of tensors")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawHeader, A::Error> {
                use serde::de::Error;
                let mut tensors = BTreeMap::new();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "__metadata__" {
                        map.next_value::<serde::de::IgnoredAny>()?;
                        continue;
                    }
                    let entry: RawEntry = map
                        .next_value()
                        .map_err(|e| A::Error::custom(format!("tensor {name}: {e}")))?;
                    if tensors.contains_key(&name) {
                        return Err(A::Error::custom(format!("tensor {name} is listed twice")));
                    }
                    tensors.insert(name, entry);
                }
                Ok(RawHeader(tensors))
            }
        }
        d.deserialize_map(Visit)
    }
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
    let header_len = check_header_len(len, file_size)?;
    let mut buf = vec![0u8; header_len as usize];
    file.read_exact(&mut buf).map_err(io)?;
    parse_header(&buf, file_size)
}

/// Reads a safetensors header from the first bytes of a file of `file_size` bytes; `bytes`
/// may hold the whole file or just its start.
pub fn read_header_from_bytes(
    bytes: &[u8],
    file_size: u64,
) -> Result<SafeHeader, SafetensorsError> {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(SafetensorsError::TooShort(
            file_size.min(bytes.len() as u64),
        ));
    };
    let header_len = check_header_len(*len, file_size)?;
    let json = rest
        .get(..header_len as usize)
        .ok_or(SafetensorsError::HeaderTooLong {
            claimed: header_len,
            file_size: bytes.len() as u64,
        })?;
    parse_header(json, file_size)
}

/// The header length from the first 8 bytes, checked against the cap and the file's size
/// before any buffer is allocated for it.
fn check_header_len(len: [u8; 8], file_size: u64) -> Result<u64, SafetensorsError> {
    let header_len = u64::from_le_bytes(len);
    if header_len > MAX_HEADER || header_len.saturating_add(8) > file_size {
        return Err(SafetensorsError::HeaderTooLong {
            claimed: header_len,
            file_size,
        });
    }
    Ok(header_len)
}

/// Parses the JSON header (the bytes after the length) of a file of `file_size` bytes.
pub fn parse_header(json: &[u8], file_size: u64) -> Result<SafeHeader, SafetensorsError> {
    let raw: RawHeader =
        serde_json::from_slice(json).map_err(|e| SafetensorsError::BadJson(e.to_string()))?;
    let mut tensors = Vec::with_capacity(raw.0.len());
    for (name, entry) in raw.0 {
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
        header_len: json.len() as u64,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut b = (json.len() as u64).to_le_bytes().to_vec();
        b.extend(json.as_bytes());
        b.extend(vec![0u8; data]);
        b
    }

    #[test]
    fn reads_tensors_and_skips_metadata() {
        let b = file(
            r#"{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#,
            16,
        );
        let h = read_header_from_bytes(&b, b.len() as u64).unwrap();
        assert_eq!(h.tensors.len(), 1);
        assert_eq!(h.tensors[0].elements(), 4);
        assert_eq!(h.data_end(), b.len() as u64);
    }

    #[test]
    fn bad_headers_are_clear_errors() {
        let dup = file(
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        let e = read_header_from_bytes(&dup, dup.len() as u64).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let back = file(
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#,
            4,
        );
        let e = read_header_from_bytes(&back, back.len() as u64).unwrap_err();
        assert!(e.to_string().contains("ends before it begins"), "{e}");
        let mut huge = (u64::MAX).to_le_bytes().to_vec();
        huge.extend(b"{}");
        assert!(matches!(
            read_header_from_bytes(&huge, 10),
            Err(SafetensorsError::HeaderTooLong { .. })
        ));
        assert!(matches!(
            read_header_from_bytes(b"abc", 3),
            Err(SafetensorsError::TooShort(3))
        ));
    }

    /// A shape whose element count overflows, or whose bytes do not match its offsets, is an
    /// impossible tensor: the model is broken and its parameter count unknown ("?").
    #[test]
    fn impossible_shapes_mark_the_model_broken_with_no_count() {
        for json in [
            r#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,16]}}"#,
            r#"{"w":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,16]}}"#,
        ] {
            let dir = tempfile::tempdir().unwrap();
            let f = dir.path().join("model.safetensors");
            std::fs::write(&f, file(json, 16)).unwrap();
            let ins = crate::library::inspect::inspect_safetensors(dir.path(), &[f]);
            assert_eq!(ins.info.parameters, None, "{json}");
            let why = ins.broken.unwrap();
            assert!(why.contains("tensor w") && why.contains("corrupt"), "{why}");
        }
    }
}
