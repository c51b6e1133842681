//! Writes PyTorch checkpoints (`torch.save` of a state dict: a zip with `archive/data.pkl`, the
//! pickle protocol 2 that torch writes, and one raw storage per tensor) without torch, so tests
//! can turn the MiniLM safetensors into the `pytorch_model.bin` an older repo would ship.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use candle_core::{DType, Tensor};

/// A protocol-2 pickle, written opcode by opcode as torch's pickler does.
#[derive(Default)]
pub struct Pickle {
    pub bytes: Vec<u8>,
    memo: Vec<(String, u8)>,
}

impl Pickle {
    pub fn op(&mut self, b: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(b);
        self
    }
    pub fn text(&mut self, s: &str) -> &mut Self {
        self.bytes.push(b'X');
        self.bytes
            .extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(s.as_bytes());
        self
    }
    pub fn int(&mut self, v: usize) -> &mut Self {
        self.bytes.push(b'J');
        self.bytes
            .extend_from_slice(&i32::try_from(v).unwrap().to_le_bytes());
        self
    }
    /// GLOBAL the first time (memoized with BINPUT), BINGET after that, as torch writes it.
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        let key = format!("{module}.{name}");
        if let Some((_, id)) = self.memo.iter().find(|(k, _)| *k == key) {
            let id = *id;
            return self.op(&[b'h', id]);
        }
        let id = self.memo.len() as u8;
        self.memo.push((key, id));
        self.bytes.push(b'c');
        self.bytes
            .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        self.op(&[b'q', id])
    }
    pub fn tuple(&mut self, values: &[usize]) -> &mut Self {
        self.op(b"(");
        for v in values {
            self.int(*v);
        }
        self.op(b"t")
    }
}

fn storage_of(t: &Tensor) -> (&'static str, Vec<u8>) {
    let flat = t.flatten_all().unwrap();
    match t.dtype() {
        DType::F32 => (
            "FloatStorage",
            flat.to_vec1::<f32>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        DType::I64 => (
            "LongStorage",
            flat.to_vec1::<i64>()
                .unwrap()
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        ),
        other => panic!("the test writer does not write {other:?} tensors"),
    }
}

/// The state dict's pickle for `tensors` (storage `i` holds tensor `i`).
pub fn state_dict_pickle(tensors: &[(String, Tensor)]) -> Vec<u8> {
    let mut p = Pickle::default();
    p.op(b"\x80\x02");
    p.global("collections", "OrderedDict").op(b")R").op(b"(");
    for (i, (name, t)) in tensors.iter().enumerate() {
        let (storage, _) = storage_of(t);
        let dims = t.dims().to_vec();
        let mut stride = vec![1usize; dims.len()];
        for k in (0..dims.len().saturating_sub(1)).rev() {
            stride[k] = stride[k + 1] * dims[k + 1];
        }
        p.text(name);
        p.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        p.op(b"(").text("storage").global("torch", storage);
        p.text(&i.to_string()).text("cpu").int(t.elem_count());
        p.op(b"tQ").int(0).tuple(&dims).tuple(&stride).op(b"\x89");
        p.global("collections", "OrderedDict").op(b")R");
        p.op(b"tR");
    }
    p.op(b"u");
    // torch.save's state dicts carry `_metadata` as the OrderedDict's state: a BUILD.
    p.op(b"}").text("_metadata");
    p.global("collections", "OrderedDict").op(b")R");
    p.op(b"sb.");
    p.bytes
}

/// Writes `tensors` as a `torch.save` zip at `path`, with `pickle` as its `data.pkl`
/// (normally [`state_dict_pickle`] of the same tensors).
pub fn write_with_pickle(path: &Path, tensors: &[(String, Tensor)], pickle: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/byteorder", opts).unwrap();
    zip.write_all(b"little").unwrap();
    for (i, (_, t)) in tensors.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        zip.write_all(&storage_of(t).1).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

/// Writes `tensors` as `torch.save(state_dict)` would.
pub fn write_checkpoint(path: &Path, tensors: &[(String, Tensor)]) {
    write_with_pickle(path, tensors, &state_dict_pickle(tensors));
}

/// A copy of the MiniLM folder at `src` in `dest`, with its safetensors turned into
/// `pytorch_model.bin` (or `shards` shards plus their index). Returns the tensors written.
pub fn minilm_as_pytorch(src: &Path, dest: &Path, shards: usize) -> Vec<(String, Tensor)> {
    std::fs::create_dir_all(dest).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_file() && !name.ends_with(".safetensors") {
            std::fs::copy(&p, dest.join(&name)).unwrap();
        }
    }
    let map =
        candle_core::safetensors::load(src.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let mut tensors: Vec<(String, Tensor)> = map.into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    if shards <= 1 {
        write_checkpoint(&dest.join("pytorch_model.bin"), &tensors);
        return tensors;
    }
    let per = tensors.len().div_ceil(shards);
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("pytorch_model-{:05}-of-{shards:05}.bin", k + 1);
        write_checkpoint(&dest.join(&file), chunk);
        for (name, _) in chunk {
            weight_map.insert(name.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dest.join("pytorch_model.bin.index.json"),
        serde_json::to_vec_pretty(&index).unwrap(),
    )
    .unwrap();
    tensors
}
