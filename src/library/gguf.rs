//! GGUF header reader: metadata and tensor infos only, never tensor data.
//!
//! We read the header ourselves instead of calling `candle_core::quantized::gguf_file::Content::read`
//! for two reasons: candle rejects any tensor type it cannot compute (IQ*, TQ*, MXFP4), and the
//! library must still list those files and say *why* they cannot run; and candle materialises every
//! metadata array (a 150k-entry vocabulary is 150k heap strings), while an inventory only needs a
//! few scalar keys, so arrays are skipped with a seek. A unit test checks both readers agree on a
//! real file.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Hard caps so a corrupt header cannot make us allocate gigabytes.
const MAX_STRING: u64 = 1 << 24;
const MAX_COUNT: u64 = 1 << 24;
/// Integer arrays this short are kept whole: room for one value per layer of any real model.
pub const MAX_KEPT_INTS: u64 = 1024;
const MAX_DIMS: u32 = 8;
const DEFAULT_ALIGNMENT: u64 = 32;

/// A ggml tensor type as stored in the file, known or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

impl GgmlType {
    /// The name llama.cpp uses (`Q4_K`, `IQ2_XS`, ...), or `TYPE_<n>` for ids we do not know.
    pub fn name(self) -> String {
        match self.layout() {
            Some((name, _, _)) => name.to_string(),
            None => format!("TYPE_{}", self.0),
        }
    }

    /// (name, elements per block, bytes per block), from ggml's type traits.
    fn layout(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    /// Bytes used by `elements` values of this type, if the type is known.
    pub fn bytes_for(self, elements: u64) -> Option<u64> {
        let (_, block, size) = self.layout()?;
        Some(elements.div_ceil(block).saturating_mul(size))
    }

    /// Elements per block, if the type is known.
    pub fn block_size(self) -> Option<u64> {
        self.layout().map(|(_, block, _)| block)
    }

    /// True for types the engine loads: those candle 0.11.1 reads (`GgmlDType::from_u32`
    /// accepts them) and MXFP4, which the engine reads and computes itself.
    pub fn engine_loads(self) -> bool {
        matches!(self.0, 0..=3 | 6..=15 | 30 | 39)
    }

    /// Types candle computes with generic code only (no hand-written kernel): much slower where
    /// the CPU does not run Influence's own kernels for them ([`crate::engine::own_kernels_run`]).
    pub fn candle_slow_path(self) -> bool {
        matches!(self.0, 3 | 6 | 7)
    }
}

/// A metadata value we keep. Arrays are not kept, only their length, except short integer
/// arrays (per-layer values such as a hybrid's KV heads).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// An integer array of at most [`MAX_KEPT_INTS`] items.
    Ints(Vec<i128>),
    /// A flag array of at most [`MAX_KEPT_INTS`] items (Gemma 4's sliding-window layers).
    Bools(Vec<bool>),
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Array {
        len: u64,
    },
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Int(v) => u64::try_from(*v).ok(),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in GGUF order (innermost first), as stored.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the tensor data section.
    pub offset: u64,
}

impl TensorInfo {
    pub fn elements(&self) -> u64 {
        // Saturating: a corrupt header must not overflow (and panic) here.
        self.dims.iter().fold(1u64, |a, d| a.saturating_mul(*d))
    }
}

/// What a GGUF header says.
#[derive(Debug, Clone)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    /// Absolute file offset where tensor data starts.
    pub data_offset: u64,
    pub file_size: u64,
}

impl GgufHeader {
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// `<arch>.<key>` as an unsigned integer.
    pub fn arch_u64(&self, key: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get(&format!("{arch}.{key}"))
            .and_then(MetaValue::as_u64)
    }

    /// Absolute offset where the last tensor's data ends; `None` if a tensor has an unknown type.
    pub fn data_end(&self) -> Option<u64> {
        let mut end = self.data_offset;
        for t in &self.tensors {
            let bytes = t.ty.bytes_for(t.elements())?;
            end = end.max(
                self.data_offset
                    .saturating_add(t.offset)
                    .saturating_add(bytes),
            );
        }
        Some(end)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a GGUF file (magic {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (this reader knows 2 and 3)")]
    BadVersion(u32),
    #[error(
        "header is cut short: the file ends inside the {0} (the download is probably incomplete)"
    )]
    Truncated(&'static str),
    #[error("header is corrupt: {0}")]
    Corrupt(String),
}

/// Reads the header of the GGUF file at `path`.
pub fn read_header(path: &Path) -> Result<GgufHeader, GgufError> {
    let io = |source| GgufError::Io {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_size = file.metadata().map_err(io)?.len();
    read_header_from(file, file_size, &path.display().to_string())
}

/// Reads a GGUF header from `source`, which holds `file_size` bytes; `name` is used in errors.
///
/// Memory stays bounded by the input, not by what the header claims: counts and lengths are
/// checked against the bytes left before anything is allocated for them, so a header of a few
/// bytes cannot make the reader reserve gigabytes.
pub fn read_header_from<R: Read + Seek>(
    source: R,
    file_size: u64,
    name: &str,
) -> Result<GgufHeader, GgufError> {
    let mut r = Reader::new(source, file_size, name.to_string());
    let (version, tensor_count, kv_count) = r.preamble()?;
    if tensor_count > MAX_COUNT || kv_count > MAX_COUNT {
        return Err(GgufError::Corrupt(format!(
            "{tensor_count} tensors and {kv_count} metadata entries declared"
        )));
    }
    r.section = "metadata";
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let value = r.value(ty, 0)?;
        metadata.insert(key, value);
    }
    r.section = "tensor list";
    // A tensor entry takes at least 24 bytes (name length, dimension count, type, offset).
    let room = r.remaining() / 24;
    let mut tensors = Vec::with_capacity(tensor_count.min(room) as usize);
    for _ in 0..tensor_count {
        let name = r.string()?;
        let n_dims = r.u32()?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::Corrupt(format!(
                "tensor {name} has {n_dims} dimensions"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64()?);
        }
        let ty = GgmlType(r.u32()?);
        let offset = r.u64()?;
        tensors.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
        });
    }
    let position = r.base + r.pos as u64;
    let alignment = metadata
        .get("general.alignment")
        .and_then(MetaValue::as_u64)
        .filter(|a| *a > 0)
        .unwrap_or(DEFAULT_ALIGNMENT);
    Ok(GgufHeader {
        version,
        metadata,
        tensors,
        data_offset: position.div_ceil(alignment) * alignment,
        file_size,
    })
}

/// The metadata of a GGUF file whose first bytes are `prefix` (fetched over HTTP, say): every
/// entry that lies wholly inside it. An entry cut off by the end of the prefix ends the list; a
/// prefix that is not a GGUF start, or metadata that is corrupt, is an error.
pub fn read_metadata_prefix(prefix: &[u8]) -> Result<BTreeMap<String, MetaValue>, GgufError> {
    let mut r = Reader::new(
        std::io::Cursor::new(prefix),
        prefix.len() as u64,
        "the downloaded header".into(),
    );
    let (_, _, kv_count) = r.preamble()?;
    if kv_count > MAX_COUNT {
        return Err(GgufError::Corrupt(format!(
            "{kv_count} metadata entries declared"
        )));
    }
    r.section = "metadata";
    let mut metadata = BTreeMap::new();
    for _ in 0..kv_count {
        let Some(key) = within(r.string())? else {
            break;
        };
        let Some(ty) = within(r.u32())? else { break };
        if ty == 9 {
            // An array's length comes before its items, so a vocabulary cut short still says
            // how many tokens it has.
            let Some((elem, len)) = within(r.u32().and_then(|e| Ok((e, r.u64()?))))? else {
                break;
            };
            metadata.insert(key.clone(), MetaValue::Array { len });
            match within(r.array(elem, len, 0))? {
                Some(v) => metadata.insert(key, v),
                None => break,
            };
            continue;
        }
        let Some(value) = within(r.value(ty, 0))? else {
            break;
        };
        metadata.insert(key, value);
    }
    Ok(metadata)
}

/// `Ok(None)` where a read ran into the end of a prefix.
fn within<T>(res: Result<T, GgufError>) -> Result<Option<T>, GgufError> {
    match res {
        Ok(v) => Ok(Some(v)),
        Err(GgufError::Truncated(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads the file in large chunks and parses from a byte buffer: a vocabulary is ~100k tiny
/// strings, and going through `Read` for each one costs more than the rest of the scan.
struct Reader<R = std::fs::File> {
    file: R,
    /// Bytes of the file from offset `base`; `pos` indexes into it.
    data: Vec<u8>,
    pos: usize,
    base: u64,
    file_size: u64,
    section: &'static str,
    path: String,
}

const CHUNK: usize = 1 << 20;

impl<R: Read + Seek> Reader<R> {
    fn new(file: R, file_size: u64, path: String) -> Self {
        Reader {
            file,
            data: Vec::new(),
            pos: 0,
            base: 0,
            file_size,
            section: "file header",
            path,
        }
    }

    /// The magic, then the version, tensor count and metadata count.
    fn preamble(&mut self) -> Result<(u32, u64, u64), GgufError> {
        self.need(4)?;
        let magic: [u8; 4] = [self.data[0], self.data[1], self.data[2], self.data[3]];
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic(magic));
        }
        self.pos = 4;
        let version = self.u32()?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::BadVersion(version));
        }
        Ok((version, self.u64()?, self.u64()?))
    }

    /// Bytes of the input not yet parsed.
    fn remaining(&self) -> u64 {
        self.file_size
            .saturating_sub(self.base.saturating_add(self.pos as u64))
    }

    fn io_err(&self, source: std::io::Error) -> GgufError {
        GgufError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Makes sure `n` bytes are buffered at `pos`, reading at least a chunk more.
    fn need(&mut self, n: usize) -> Result<(), GgufError> {
        if self.pos + n <= self.data.len() {
            return Ok(());
        }
        let abs = self.base + self.pos as u64;
        if abs + n as u64 > self.file_size {
            return Err(GgufError::Truncated(self.section));
        }
        // Drop what was parsed; keep the unread tail.
        self.data.drain(..self.pos);
        self.base = abs;
        self.pos = 0;
        let have = self.data.len();
        let want = (n - have)
            .max(CHUNK)
            .min((self.file_size - abs) as usize - have);
        // `read_to_end` fills spare capacity without zeroing it byte by byte first.
        self.data.reserve(want);
        let read = (&mut self.file)
            .take(want as u64)
            .read_to_end(&mut self.data);
        if let Err(e) = read {
            return Err(self.io_err(e));
        }
        if self.data.len() < n {
            // The file shrank while we read it.
            return Err(GgufError::Truncated(self.section));
        }
        Ok(())
    }

    fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        let avail = (self.data.len() - self.pos) as u64;
        if n <= avail {
            self.pos += n as usize;
            return Ok(());
        }
        let abs = (self.base + self.pos as u64).saturating_add(n);
        if abs > self.file_size {
            return Err(GgufError::Truncated(self.section));
        }
        self.data.clear();
        self.pos = 0;
        self.base = abs;
        self.file
            .seek(SeekFrom::Start(abs))
            .map_err(|e| self.io_err(e))?;
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, GgufError> {
        self.need(1)?;
        self.pos += 1;
        Ok(self.data[self.pos - 1])
    }
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        self.need(N)?;
        let mut b = [0u8; N];
        b.copy_from_slice(&self.data[self.pos..self.pos + N]);
        self.pos += N;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    fn string_len(&mut self) -> Result<usize, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING {
            return Err(GgufError::Corrupt(format!(
                "a string in the {} claims {len} bytes",
                self.section
            )));
        }
        Ok(len as usize)
    }
    fn string(&mut self) -> Result<String, GgufError> {
        let len = self.string_len()?;
        self.need(len)?;
        let mut v = &self.data[self.pos..self.pos + len];
        self.pos += len;
        while let [rest @ .., 0] = v {
            v = rest;
        }
        Ok(String::from_utf8_lossy(v).into_owned())
    }

    /// Skips `count` strings: the hot loop of a scan (vocabularies and merges). Written with
    /// plain slice indexing and shifts so it stays fast even in unoptimized dev builds, where
    /// every helper call (range indexing, `from_le_bytes`) is a real call.
    fn skip_strings(&mut self, count: u64) -> Result<(), GgufError> {
        let mut left = count;
        while left > 0 {
            let data: &[u8] = &self.data;
            let end = data.len();
            let mut pos = self.pos;
            while left > 0 && pos + 8 <= end {
                let len = (data[pos] as u64)
                    | (data[pos + 1] as u64) << 8
                    | (data[pos + 2] as u64) << 16
                    | (data[pos + 3] as u64) << 24
                    | (data[pos + 4] as u64) << 32
                    | (data[pos + 5] as u64) << 40
                    | (data[pos + 6] as u64) << 48
                    | (data[pos + 7] as u64) << 56;
                if len > MAX_STRING {
                    return Err(GgufError::Corrupt(format!(
                        "a string in the {} claims {len} bytes",
                        self.section
                    )));
                }
                let next = pos + 8 + len as usize;
                if next > end {
                    break;
                }
                pos = next;
                left -= 1;
            }
            self.pos = pos;
            if left > 0 {
                // The next string straddles the buffer's end: take it the slow way.
                let len = self.string_len()?;
                self.skip(len as u64)?;
                left -= 1;
            }
        }
        Ok(())
    }

    /// An array's items: kept when they are a few integers or flags, otherwise skipped (its
    /// length kept).
    fn array(&mut self, elem: u32, len: u64, depth: u32) -> Result<MetaValue, GgufError> {
        if matches!(elem, 0..=5 | 10 | 11) && len <= MAX_KEPT_INTS {
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                if let MetaValue::Int(v) = self.value(elem, depth + 1)? {
                    items.push(v);
                }
            }
            return Ok(MetaValue::Ints(items));
        }
        if elem == 7 && len <= MAX_KEPT_INTS {
            let mut items = Vec::with_capacity(len as usize);
            for _ in 0..len {
                if let MetaValue::Bool(b) = self.value(elem, depth + 1)? {
                    items.push(b);
                }
            }
            return Ok(MetaValue::Bools(items));
        }
        self.array_items(elem, len, depth)?;
        Ok(MetaValue::Array { len })
    }

    fn array_items(&mut self, elem: u32, len: u64, depth: u32) -> Result<(), GgufError> {
        if len > MAX_COUNT * 16 {
            return Err(GgufError::Corrupt(format!(
                "an array claims {len} elements"
            )));
        }
        match (fixed_size(elem), elem) {
            (Some(size), _) => self.skip(len * size),
            (None, 8) => self.skip_strings(len),
            (None, _) => {
                for _ in 0..len {
                    self.value(elem, depth + 1)?;
                }
                Ok(())
            }
        }
    }

    /// Reads one metadata value of GGUF value type `ty`; arrays are skipped.
    fn value(&mut self, ty: u32, depth: u32) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::Int(self.u8()?.into()),
            1 => MetaValue::Int((self.u8()? as i8).into()),
            2 => MetaValue::Int(u16::from_le_bytes(self.bytes()?).into()),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?).into()),
            4 => MetaValue::Int(u32::from_le_bytes(self.bytes()?).into()),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?).into()),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?).into()),
            7 => MetaValue::Bool(self.u8()? != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth > 4 {
                    return Err(GgufError::Corrupt("arrays nested too deeply".into()));
                }
                let elem = self.u32()?;
                let len = self.u64()?;
                self.array(elem, len, depth)?
            }
            10 => MetaValue::Int(u64::from_le_bytes(self.bytes()?).into()),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?).into()),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => {
                return Err(GgufError::Corrupt(format!(
                    "unknown metadata value type {other}"
                )))
            }
        })
    }
}

fn fixed_size(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file;

    fn smollm2() -> std::path::PathBuf {
        let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                    .join(".cache/influence-test-models")
            });
        let p = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            p.is_file(),
            "missing test model {}: run scripts/fetch-test-models.sh",
            p.display()
        );
        p
    }

    /// A prefix of a real file gives the same metadata as the whole header, up to where it
    /// ends, and the vocabulary's length even when its strings are cut off.
    #[test]
    fn metadata_prefix_of_smollm2() {
        let path = smollm2();
        let full = read_header(&path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let head = read_metadata_prefix(&bytes[..64 * 1024]).unwrap();
        for key in [
            "general.architecture",
            "llama.block_count",
            "llama.context_length",
        ] {
            assert_eq!(head.get(key), full.get(key), "{key}");
        }
        assert_eq!(
            head.get("tokenizer.ggml.tokens"),
            Some(&MetaValue::Array { len: 49152 })
        );
        let whole = read_metadata_prefix(&bytes[..full.data_offset as usize]).unwrap();
        assert_eq!(whole, full.metadata);
        assert!(matches!(
            read_metadata_prefix(b"<html>not a model</html>"),
            Err(GgufError::BadMagic(_))
        ));
        assert!(matches!(
            read_metadata_prefix(b"GG"),
            Err(GgufError::Truncated(_))
        ));
    }

    /// Our reader must agree with candle's on a real file: same tensors, types, shapes, offsets,
    /// and the same start of tensor data.
    #[test]
    fn header_matches_candles_reader_on_smollm2() {
        let path = smollm2();
        let ours = read_header(&path).unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let theirs = gguf_file::Content::read(&mut f).unwrap();
        assert_eq!(ours.data_offset, theirs.tensor_data_offset);
        assert_eq!(ours.tensors.len(), theirs.tensor_infos.len());
        for t in &ours.tensors {
            let c = &theirs.tensor_infos[&t.name];
            assert_eq!(t.offset, c.offset, "{}", t.name);
            assert_eq!(
                t.ty.name(),
                format!("{:?}", c.ggml_dtype).replace('K', "_K"),
                "{}",
                t.name
            );
            let mut dims: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
            dims.reverse();
            assert_eq!(dims, c.shape.dims(), "{}", t.name);
            let candle_bytes =
                c.shape.elem_count() / c.ggml_dtype.block_size() * c.ggml_dtype.type_size();
            assert_eq!(t.ty.bytes_for(t.elements()), Some(candle_bytes as u64));
        }
        assert_eq!(ours.metadata.len(), theirs.metadata.len());
        assert_eq!(ours.architecture(), Some("llama"));
        assert_eq!(ours.arch_u64("context_length"), Some(8192));
        let params: u64 = ours.tensors.iter().map(TensorInfo::elements).sum();
        assert_eq!(params, 134_515_008);
        assert_eq!(ours.data_end(), Some(ours.file_size));
    }

    /// Absurd dimensions and counts in an otherwise valid header: no overflow panic.
    #[test]
    fn absurd_dimensions_do_not_overflow() {
        let mut b = Vec::new();
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // metadata
        b.extend(20u64.to_le_bytes());
        b.extend(b"general.architecture");
        b.extend(8u32.to_le_bytes());
        b.extend(5u64.to_le_bytes());
        b.extend(b"llama");
        b.extend(6u64.to_le_bytes());
        b.extend(b"weight");
        b.extend(4u32.to_le_bytes());
        for _ in 0..4 {
            b.extend(u64::MAX.to_le_bytes());
        }
        b.extend(8u32.to_le_bytes());
        b.extend(u64::MAX.to_le_bytes());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        std::fs::write(&p, &b).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.tensors[0].elements(), u64::MAX);
        assert_eq!(h.data_end(), Some(u64::MAX));
        let ins = crate::library::inspect::inspect_gguf(&[p]);
        assert_eq!(ins.info.parameters, None, "an overflowing count shows as ?");
        assert!(ins
            .broken
            .as_deref()
            .unwrap()
            .contains("tensor data ends at"));
    }

    #[test]
    fn garbage_and_cut_headers_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.gguf");
        std::fs::write(&bad, b"NOTAGGUFFILE").unwrap();
        assert!(matches!(read_header(&bad), Err(GgufError::BadMagic(_))));

        let bytes = std::fs::read(smollm2()).unwrap();
        for cut in [3usize, 10, 30, 5000, 1_000_000] {
            std::fs::write(&bad, &bytes[..cut]).unwrap();
            match read_header(&bad) {
                Err(GgufError::Truncated(_)) => {}
                other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
            }
        }
    }
}
