//! Local model library: scanning stores, header facts, names, verify, delete, import, CLI output.
//!
//! Uses the real SmolLM2 GGUF and MiniLM folder from `scripts/fetch-test-models.sh`, plus small
//! synthetic stores built in temp folders.

#[path = "support/models.rs"]
mod models;
#[path = "support/torch_zip.rs"]
mod torch_zip;
use models::{minilm, smollm as smol};
use std::io::Write;
use std::path::{Path, PathBuf};

use influence::library::{
    import, verify, FileCheck, Format, Library, LibraryError, LibraryRoots, Location, ModelKind,
    Removal, Runnable, Source,
};
use sha2::Digest;

const SMOL_SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const SMOL_SIZE: u64 = 98_362_432;
const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

// ---------------------------------------------------------------------------------------------
// fixtures

/// A sandbox with every root in its own temp folder; nothing from the real machine leaks in.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    roots: LibraryRoots,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let roots = LibraryRoots {
            hf_hub: root.join("hf/hub"),
            ollama: Some(root.join("ollama/models")),
            lmstudio: vec![root.join("lmstudio/models")],
            extra: vec![root.join("extra")],
            imports_file: root.join("data/imports.json"),
        };
        Sandbox {
            _dir: dir,
            root,
            roots,
        }
    }

    fn scan(&self) -> Library {
        Library::scan(&self.roots)
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.roots
            .hf_hub
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// Adds a blob (named by `etag`) and its snapshot symlink, as huggingface_hub does.
    fn hf_file(&self, repo: &str, commit: &str, rel: &str, etag: &str, content: BlobContent) {
        let repo_dir = self.repo_dir(repo);
        let blob = repo_dir.join("blobs").join(etag);
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        if !blob.exists() {
            match content {
                BlobContent::Bytes(b) => std::fs::write(&blob, b).unwrap(),
                // Saves copying 98 MB: the blob is a link to the fixture.
                BlobContent::LinkTo(p) => std::os::unix::fs::symlink(p, &blob).unwrap(),
            }
        }
        let link = repo_dir.join("snapshots").join(commit).join(rel);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = Path::new(rel).components().count() - 1;
        let target = format!("{}../../blobs/{etag}", "../".repeat(depth));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }

    /// An LFS-style file: blob named by the sha256 of its content.
    fn hf_lfs(&self, repo: &str, commit: &str, rel: &str, bytes: &[u8]) -> String {
        let sha = hex::encode(sha2::Sha256::digest(bytes));
        self.hf_file(repo, commit, rel, &sha, BlobContent::Bytes(bytes.to_vec()));
        sha
    }

    /// A regular git file: blob named by the git blob sha1.
    fn hf_git(&self, repo: &str, commit: &str, rel: &str, bytes: &[u8]) -> String {
        let mut h = sha1::Sha1::new();
        h.update(format!("blob {}\0", bytes.len()).as_bytes());
        h.update(bytes);
        let sha = hex::encode(h.finalize());
        self.hf_file(repo, commit, rel, &sha, BlobContent::Bytes(bytes.to_vec()));
        sha
    }

    fn hf_ref(&self, repo: &str, name: &str, commit: &str) {
        let p = self.repo_dir(repo).join("refs").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, commit).unwrap();
    }

    /// The real SmolLM2 GGUF in the HF cache layout.
    fn hf_smollm2(&self) {
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
        self.hf_file(
            repo,
            COMMIT_A,
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            SMOL_SHA,
            BlobContent::LinkTo(smol()),
        );
        self.hf_git(repo, COMMIT_A, ".gitattributes", b"*.gguf filter=lfs\n");
        self.hf_ref(repo, "main", COMMIT_A);
    }

    fn write(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

enum BlobContent {
    Bytes(Vec<u8>),
    LinkTo(PathBuf),
}

/// A GGUF tensor for the hand-made writer: name, dims (GGUF order), ggml type id, bytes.
struct T(&'static str, Vec<u64>, u32, usize);

enum V {
    S(&'static str),
    U32(u32),
}

/// Writes a small but well-formed GGUF v3 file by hand (any type id, including IQ types candle
/// cannot write), with zeroed tensor data.
fn gguf_bytes(meta: &[(&str, V)], tensors: &[T]) -> Vec<u8> {
    let mut b = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64 + 1).to_le_bytes());
    for (k, v) in meta {
        s(&mut b, k);
        match v {
            V::S(x) => {
                b.extend(8u32.to_le_bytes());
                s(&mut b, x);
            }
            V::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
        }
    }
    // A string array, as a vocabulary would be: the reader must skip it.
    s(&mut b, "tokenizer.ggml.tokens");
    b.extend(9u32.to_le_bytes());
    b.extend(8u32.to_le_bytes());
    b.extend(3u64.to_le_bytes());
    for tok in ["<s>", "</s>", "hello"] {
        s(&mut b, tok);
    }
    let mut offset = 0u64;
    for T(name, dims, ty, bytes) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (*bytes as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    b.resize(b.len() + offset as usize, 0);
    b
}

/// A tiny llama-like GGUF: 2 layers, Q8_0 weights (fast path), 4 KV heads of dim 16.
fn tiny_gguf(arch: &'static str, weight_type: u32, weight_bytes: usize) -> Vec<u8> {
    let ctx_key: &'static str = Box::leak(format!("{arch}.context_length").into_boxed_str());
    let blocks: &'static str = Box::leak(format!("{arch}.block_count").into_boxed_str());
    let heads: &'static str = Box::leak(format!("{arch}.attention.head_count").into_boxed_str());
    let kv: &'static str = Box::leak(format!("{arch}.attention.head_count_kv").into_boxed_str());
    let embd: &'static str = Box::leak(format!("{arch}.embedding_length").into_boxed_str());
    gguf_bytes(
        &[
            ("general.architecture", V::S(arch)),
            ("general.name", V::S("Tiny")),
            (ctx_key, V::U32(2048)),
            (blocks, V::U32(2)),
            (heads, V::U32(4)),
            (kv, V::U32(4)),
            (embd, V::U32(64)),
            ("tokenizer.chat_template", V::S("{{ messages }}")),
        ],
        &[
            T(
                "token_embd.weight",
                vec![64, 256],
                weight_type,
                weight_bytes,
            ),
            T("output_norm.weight", vec![64], 0, 256),
        ],
    )
}

/// A minimal safetensors file with one F32 tensor of `n` elements.
fn safetensors_bytes(name: &str, n: usize) -> Vec<u8> {
    let header = format!(
        r#"{{"{name}":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        n * 4
    );
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend(header.as_bytes());
    b.resize(b.len() + n * 4, 0);
    b
}

// ---------------------------------------------------------------------------------------------

mod inventory {
    use super::*;

    #[test]
    fn hf_cache_smollm2_gguf_is_listed_with_its_header_facts() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let lib = sb.scan();
        assert_eq!(lib.models().len(), 1, "{:#?}", lib.models());
        let m = &lib.models()[0];
        assert_eq!(m.name, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        assert_eq!(m.source, Source::HfCache);
        assert_eq!(m.format, Format::Gguf);
        assert_eq!(m.kind, ModelKind::Generate);
        assert_eq!(m.broken, None);
        assert_eq!(m.info.architecture.as_deref(), Some("llama"));
        assert_eq!(m.info.quant.as_deref(), Some("Q4_1"));
        assert_eq!(m.info.parameters, Some(134_515_008));
        assert_eq!(influence::library::human::params(134_515_008), "134.5M");
        assert_eq!(m.info.context_length, Some(8192));
        assert!(m.info.chat_template);
        assert_eq!(m.info.tensor_types.get("Q4_1"), Some(&210));
        assert_eq!(m.info.tensor_types.get("Q8_0"), Some(&1));
        assert_eq!(m.info.tensor_types.get("F32"), Some(&61));
        // Q4_1 is slow only on candle's generic code, where the own kernels do not run.
        let expected = if influence::engine::own_kernels_run() {
            Runnable::Yes
        } else {
            Runnable::SlowPath {
                types: vec!["Q4_1".into()],
            }
        };
        assert_eq!(m.runnable, expected);
        assert_eq!(m.file_count(), 2);
        assert_eq!(m.size_bytes, SMOL_SIZE + 18);
        assert!(m.modified.is_some());
        assert!(m.load_path.ends_with(
            "snapshots/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa/SmolLM2-135M-Instruct.Q4_1.gguf"
        ));
        assert_eq!(
            (m.info.layers, m.info.kv_heads, m.info.head_dim),
            (Some(30), Some(3), Some(64))
        );
        // The file + the f32 copy of the token embedding (vocab x width x 4 B) + f32 KV cache for
        // 4096 tokens (2 x 30 layers x 3 heads x 64 x 4 B x 4096) + 10%: the estimate the Hub
        // and `pull` make from the same header keys.
        let kv = 2 * 30 * 3 * 64 * 4 * 4096;
        let expected = (SMOL_SIZE + 49_152 * 576 * 4 + kv) * 11 / 10;
        let est = m.memory_estimate.unwrap();
        assert!(est.abs_diff(expected) <= 1, "{est} vs {expected}");
        // The engine holds the file's tensors plus an f32 copy of the token embedding.
        let f32_embd = 49_152 * 576 * 4;
        let tensors = m.info.weight_bytes - f32_embd;
        assert!(tensors > 95_000_000 && tensors <= SMOL_SIZE, "{tensors}");
    }

    #[test]
    fn a_repo_with_several_ggufs_names_each_by_quant() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
        sb.hf_lfs(
            repo,
            COMMIT_A,
            "SmolLM2-135M-Instruct.Q8_0.gguf",
            &tiny_gguf("llama", 8, 17408),
        );
        let lib = sb.scan();
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1",
                "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q8_0"
            ]
        );
        let q8 = &lib.models()[1];
        assert_eq!(q8.runnable, Runnable::Yes);
        assert_eq!(
            q8.file_count(),
            1,
            "a per-quant model owns only its own file"
        );
        assert_eq!(q8.info.parameters, Some(64 * 256 + 64));
    }

    #[test]
    fn minilm_folder_is_an_embedding_model() {
        let sb = Sandbox::new();
        let roots = LibraryRoots {
            extra: vec![minilm()],
            ..sb.roots.clone()
        };
        let lib = Library::scan(&roots);
        assert_eq!(lib.models().len(), 1, "{:#?}", lib.models());
        let m = &lib.models()[0];
        assert_eq!(m.name, "minilm");
        assert_eq!(m.source, Source::Folder);
        assert_eq!(m.format, Format::Safetensors);
        assert_eq!(m.kind, ModelKind::Embedding);
        assert_eq!(m.info.architecture.as_deref(), Some("bert"));
        assert_eq!(m.info.quant.as_deref(), Some("F32"));
        assert_eq!(m.info.context_length, Some(512));
        assert_eq!(m.runnable, Runnable::Yes);
        assert_eq!(m.broken, None);
        assert_eq!(m.load_path, minilm());
        let params = m.info.parameters.unwrap();
        assert_eq!(influence::library::human::params(params), "22.7M");
        // The int64 position_ids buffer is a tensor but not a parameter.
        assert_eq!(m.info.tensor_types.get("I64"), Some(&1));
        assert!(
            m.file_count() >= 12,
            "1_Pooling/config.json is part of the model"
        );
        // An encoder keeps no KV cache: weights + 10%.
        assert_eq!(m.memory_estimate, Some(m.info.weight_bytes * 11 / 10));
    }

    #[test]
    fn pytorch_folders_are_listed_with_their_format_and_refusals() {
        let sb = Sandbox::new();
        let models = sb.root.join("models");
        let tensors = torch_zip::minilm_as_pytorch(&minilm(), &models.join("minilm-bin"), 1);
        // The same weights, but the pickle names a global a tensor archive never needs.
        let evil = models.join("evil-bin");
        torch_zip::minilm_as_pytorch(&minilm(), &evil, 1);
        let mut p = torch_zip::Pickle::default();
        p.op(b"\x80\x02")
            .global("os", "system")
            .text("id")
            .op(b"\x85R.");
        torch_zip::write_with_pickle(&evil.join("pytorch_model.bin"), &tensors, &p.bytes);
        let roots = LibraryRoots {
            extra: vec![models, minilm()],
            ..sb.roots.clone()
        };
        let lib = Library::scan(&roots);
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["evil-bin", "minilm", "minilm-bin"]);
        let (evil, st, bin) = (&lib.models()[0], &lib.models()[1], &lib.models()[2]);
        assert_eq!(bin.format, Format::Pytorch);
        assert_eq!(bin.format.label(), "pytorch");
        assert_eq!(bin.kind, ModelKind::Embedding);
        assert_eq!(bin.runnable, Runnable::Yes);
        assert_eq!(bin.broken, None);
        assert_eq!(bin.info.quant.as_deref(), Some("F32"));
        assert_eq!(bin.info.parameters, st.info.parameters);
        assert_eq!(bin.info.tensor_types, st.info.tensor_types);
        assert_eq!(bin.info.weight_bytes, st.info.weight_bytes);
        assert_eq!(evil.format, Format::Pytorch);
        assert_eq!(evil.broken, None, "intact, but refused");
        match &evil.runnable {
            Runnable::No { reason } => assert!(reason.contains("`os.system`"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let json = serde_json::to_value(bin).unwrap();
        assert_eq!(json["format"], "pytorch");
    }

    #[test]
    fn truncated_and_corrupt_ggufs_are_listed_as_broken_not_a_crash() {
        let sb = Sandbox::new();
        let bytes = std::fs::read(smol()).unwrap();
        sb.write("extra/cut.Q4_1.gguf", &bytes[..10_000_000]);
        sb.write("extra/header-cut.gguf", &bytes[..4096]);
        sb.write("extra/garbage.gguf", b"this is not a model at all");
        let lib = sb.scan();
        let get = |name: &str| {
            lib.models()
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} not listed: {:#?}", lib.models()))
        };
        let cut = get("cut.Q4_1");
        assert_eq!(
            cut.broken.as_deref(),
            Some("cut.Q4_1.gguf: tensor data ends at 98.4 MB but file is 10.0 MB (truncated download? delete it and download again)")
        );
        assert!(!cut.runnable.can_run());
        assert_eq!(cut.memory_estimate, None);
        // The header is intact, so the facts are still known.
        assert_eq!(cut.info.architecture.as_deref(), Some("llama"));
        let head = get("header-cut");
        assert!(
            head.broken.as_deref().unwrap().contains("cut short"),
            "{:?}",
            head.broken
        );
        let garbage = get("garbage");
        assert!(garbage
            .broken
            .as_deref()
            .unwrap()
            .contains("not a GGUF file"));
        let table = influence::commands::list::render_table(lib.models());
        assert!(
            table.contains("broken  cut.Q4_1: cut.Q4_1.gguf: tensor data ends at 98.4 MB"),
            "{table}"
        );
    }

    #[test]
    fn unsupported_types_and_archs_say_why_they_cannot_run() {
        let sb = Sandbox::new();
        // IQ2_XXS (type 16): 256 elements per 66-byte block; candle cannot load it.
        sb.write("extra/iq.IQ2_XXS.gguf", &tiny_gguf("llama", 16, 64 * 66));
        sb.write("extra/rwkv6.Q8_0.gguf", &tiny_gguf("rwkv6", 8, 17408));
        sb.write("extra/qwen.Q8_0.gguf", &tiny_gguf("qwen2", 8, 17408));
        let lib = sb.scan();
        let get = |n: &str| lib.models().iter().find(|m| m.name == n).unwrap();
        let iq = get("iq.IQ2_XXS");
        assert_eq!(iq.broken, None, "IQ files are fine, just not runnable");
        match &iq.runnable {
            Runnable::No { reason } => assert!(reason.contains("IQ2_XXS"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match &get("rwkv6.Q8_0").runnable {
            Runnable::No { reason } => assert!(reason.contains("\"rwkv6\""), "{reason}"),
            other => panic!("{other:?}"),
        }
        let no_vocab = gguf_bytes(
            &[("general.architecture", V::S("llama"))],
            &[T("token_embd.weight", vec![64, 256], 8, 17408)],
        );
        let no_vocab = {
            // gguf_bytes always adds a vocabulary; rename its key so the file has none.
            let mut b = no_vocab;
            let at = b
                .windows(21)
                .position(|w| w == b"tokenizer.ggml.tokens")
                .unwrap();
            b[at..at + 21].copy_from_slice(b"tokenizer.ggml.other_");
            b
        };
        sb.write("extra/novocab.Q8_0.gguf", &no_vocab);
        let lib = sb.scan();
        let get = |n: &str| lib.models().iter().find(|m| m.name == n).unwrap();
        match &get("novocab.Q8_0").runnable {
            Runnable::No { reason } => assert!(reason.contains("vocabulary"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let q = get("qwen.Q8_0");
        assert_eq!(q.runnable, Runnable::Yes);
        assert_eq!(q.info.quant.as_deref(), Some("Q8_0"));
        assert_eq!(q.info.context_length, Some(2048));
        // 2 x 2 layers x 4 heads x (64/4) dim x 4 B x 2048 tokens (context < 4096).
        let kv = 2 * 2 * 4 * 16 * 4 * 2048;
        // Tied embedding: the Q8_0 copy stays as LM head, plus its f32 copy for the lookup.
        let weights = 17408 + 64 * 256 * 4 + 256;
        assert_eq!(q.info.weight_bytes, weights);
        // The file, the f32 embedding copy the header implies (3 tokens x width 64 x 4 B), the
        // KV cache and 10%.
        assert_eq!(
            q.memory_estimate,
            Some((q.size_bytes + 3 * 64 * 4 + kv) * 11 / 10),
            "file + embedding + KV + 10%"
        );
    }

    #[test]
    fn ollama_manifests_are_discovered_read_only() {
        let sb = Sandbox::new();
        let root = sb.roots.ollama.clone().unwrap();
        // A real GGUF written by candle's own writer.
        let gguf = {
            use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
            let t = candle_core::Tensor::zeros(
                (8, 64),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap();
            let q = QTensor::quantize(&t, GgmlDType::Q4_0).unwrap();
            let mut cur = std::io::Cursor::new(Vec::new());
            let arch = gguf_file::Value::String("qwen3".into());
            let ctx = gguf_file::Value::U32(40960);
            let vocab = gguf_file::Value::Array(vec![
                gguf_file::Value::String("a".into()),
                gguf_file::Value::String("b".into()),
            ]);
            gguf_file::write(
                &mut cur,
                &[
                    ("general.architecture", &arch),
                    ("qwen3.context_length", &ctx),
                    ("tokenizer.ggml.tokens", &vocab),
                ],
                &[("token_embd.weight", &q)],
            )
            .unwrap();
            cur.into_inner()
        };
        let gguf_sha = hex::encode(sha2::Sha256::digest(&gguf));
        let tmpl = b"{{ .Prompt }}";
        let tmpl_sha = hex::encode(sha2::Sha256::digest(tmpl));
        sb.write(&format!("ollama/models/blobs/sha256-{gguf_sha}"), &gguf);
        sb.write(&format!("ollama/models/blobs/sha256-{tmpl_sha}"), tmpl);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
               "layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{gguf_sha}","size":{}}},
                         {{"mediaType":"application/vnd.ollama.image.template","digest":"sha256:{tmpl_sha}","size":13}}]}}"#,
            gguf.len()
        );
        sb.write(
            "ollama/models/manifests/registry.ollama.ai/library/qwen3/0.6b",
            manifest.as_bytes(),
        );
        sb.write(
            "ollama/models/manifests/registry.ollama.ai/someone/custom/latest",
            b"{not json",
        );
        let lib = sb.scan();
        assert_eq!(lib.models().len(), 1, "{:#?}", lib.models());
        let m = &lib.models()[0];
        assert_eq!(m.name, "qwen3:0.6b");
        assert_eq!(m.source, Source::Ollama);
        assert_eq!(m.info.architecture.as_deref(), Some("qwen3"));
        assert_eq!(m.info.context_length, Some(40960));
        assert_eq!(m.info.quant.as_deref(), Some("Q4_0"));
        assert_eq!(m.runnable, Runnable::Yes);
        assert_eq!(m.load_path, root.join(format!("blobs/sha256-{gguf_sha}")));
        assert_eq!(m.file_count(), 2);
        assert!(
            lib.warnings()
                .iter()
                .any(|w| w.contains("someone/custom/latest")),
            "a bad manifest is a warning: {:?}",
            lib.warnings()
        );
        let report = verify(m, &mut |_, _| {});
        assert!(report.all_ok(), "{report:?}");
        assert_eq!(report.count(|c| *c == FileCheck::Ok), 2);
    }

    #[test]
    fn lmstudio_folders_are_discovered() {
        let sb = Sandbox::new();
        sb.write(
            "lmstudio/models/lmstudio-community/Tiny-GGUF/Tiny-Q8_0.gguf",
            &tiny_gguf("llama", 8, 17408),
        );
        sb.write(
            "lmstudio/models/lmstudio-community/Tiny-GGUF/Tiny-Q4_0.gguf",
            &tiny_gguf("llama", 2, 9216),
        );
        let lib = sb.scan();
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "lmstudio-community/Tiny-GGUF:Q4_0",
                "lmstudio-community/Tiny-GGUF:Q8_0"
            ]
        );
        assert!(lib.models().iter().all(|m| m.source == Source::Lmstudio));
    }

    #[test]
    fn split_ggufs_are_one_model_and_tied_safetensors_count_once() {
        let sb = Sandbox::new();
        let shard = tiny_gguf("llama", 8, 17408);
        sb.write("extra/big/Big-Q8_0-00001-of-00002.gguf", &shard);
        sb.write("extra/big/Big-Q8_0-00002-of-00002.gguf", &shard);
        // Tied embeddings stored twice: the LM head is not counted again.
        let header = r#"{"model.embed_tokens.weight":{"dtype":"F16","shape":[8,4],"data_offsets":[0,64]},"lm_head.weight":{"dtype":"F16","shape":[8,4],"data_offsets":[64,128]},"model.norm.weight":{"dtype":"F16","shape":[4],"data_offsets":[128,136]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend(header.as_bytes());
        st.resize(st.len() + 136, 0);
        sb.write("extra/tied/model.safetensors", &st);
        sb.write(
            "extra/tied/config.json",
            br#"{"model_type":"qwen2","tie_word_embeddings":true,"max_position_embeddings":32768,"num_hidden_layers":2,"num_attention_heads":2,"num_key_value_heads":1,"hidden_size":4}"#,
        );
        sb.write(
            "extra/tied/tokenizer_config.json",
            br#"{"chat_template":"{{ x }}"}"#,
        );
        sb.write("extra/tied/tokenizer.json", b"{}");
        // A cut safetensors file is broken, with the reason.
        sb.write("extra/cut/model.safetensors", &st[..st.len() - 100]);
        sb.write("extra/cut/config.json", br#"{"model_type":"llama"}"#);
        let lib = sb.scan();
        let big = lib.resolve("Big-Q8_0").unwrap();
        assert_eq!(big.file_count(), 2);
        assert_eq!(big.info.parameters, Some(2 * (64 * 256 + 64)));
        assert!(big.load_path.ends_with("Big-Q8_0-00001-of-00002.gguf"));
        let tied = lib.resolve("tied").unwrap();
        assert_eq!(tied.info.parameters, Some(32 + 4));
        assert_eq!(tied.info.quant.as_deref(), Some("F16"));
        assert_eq!(tied.info.context_length, Some(32768));
        assert!(tied.info.chat_template);
        assert_eq!(tied.runnable, Runnable::Yes);
        // f16 KV cache: 2 x 2 layers x 1 head x 2 dim x 2 B x 4096 tokens.
        assert_eq!(
            tied.memory_estimate,
            Some((136 + 2 * 2 * 2 * 2 * 4096) * 11 / 10)
        );
        let cut = lib.resolve("cut").unwrap();
        assert!(
            cut.broken
                .as_deref()
                .unwrap()
                .contains("tensor data ends at"),
            "{:?}",
            cut.broken
        );
    }

    #[test]
    fn names_sharing_a_file_stay_within_a_store_but_not_across_stores() {
        let sb = Sandbox::new();
        let repo = "org/Tiny-GGUF";
        let gguf = tiny_gguf("llama", 8, 17408);
        sb.hf_lfs(repo, COMMIT_A, "tiny-q8_0.gguf", &gguf);
        sb.hf_lfs(repo, COMMIT_B, "tiny-q8_0.gguf", &gguf);
        sb.hf_ref(repo, "main", COMMIT_B);
        let sha = hex::encode(sha2::Sha256::digest(&gguf));
        sb.write(&format!("ollama/models/blobs/sha256-{sha}"), &gguf);
        let manifest = format!(
            r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{sha}"}}]}}"#
        );
        for tag in ["latest", "q8"] {
            sb.write(
                &format!("ollama/models/manifests/registry.ollama.ai/library/tiny/{tag}"),
                manifest.as_bytes(),
            );
        }
        // model_dirs pointing into the HF cache: already listed from the cache.
        let roots = LibraryRoots {
            extra: vec![sb.roots.hf_hub.clone()],
            ..sb.roots.clone()
        };
        let lib = Library::scan(&roots);
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "org/Tiny-GGUF",
                "org/Tiny-GGUF@aaaaaaa",
                "tiny:latest",
                "tiny:q8"
            ]
        );
    }

    #[test]
    fn rescan_rereads_only_files_whose_size_or_time_changed() {
        let sb = Sandbox::new();
        let path = sb.write("extra/tiny.Q8_0.gguf", &tiny_gguf("llama", 8, 17408));
        let lib = sb.scan();
        assert_eq!(lib.models()[0].info.architecture.as_deref(), Some("llama"));
        let when = std::fs::metadata(&path).unwrap().modified().unwrap();

        // Same size, same time, different arch: a rescan trusts its cache, a scan reads again.
        std::fs::write(&path, tiny_gguf("qwen2", 8, 17408)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(when)
            .unwrap();
        assert_eq!(
            lib.rescan().models()[0].info.architecture.as_deref(),
            Some("llama")
        );
        assert_eq!(
            sb.scan().models()[0].info.architecture.as_deref(),
            Some("qwen2")
        );

        // A changed size (a truncation) is noticed by a rescan.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
        let again = lib.rescan();
        assert!(again.models()[0]
            .broken
            .as_deref()
            .unwrap()
            .contains("tensor data ends at"));
        // New files appear on a rescan too.
        sb.write("extra/second.Q4_0.gguf", &tiny_gguf("llama", 2, 9216));
        assert_eq!(again.rescan().models().len(), 2);
    }

    #[test]
    fn scan_in_background_delivers_the_same_library() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let (tx, rx) = std::sync::mpsc::channel();
        influence::library::scan_in_background(sb.roots.clone(), move |lib| {
            tx.send(lib).unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
        let lib = rx.recv().unwrap();
        assert_eq!(lib.models().len(), 1);
    }
}

mod names {
    use super::*;

    fn library() -> (Sandbox, Library) {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
        sb.hf_lfs(
            repo,
            COMMIT_A,
            "SmolLM2-135M-Instruct.Q8_0.gguf",
            &tiny_gguf("llama", 8, 17408),
        );
        sb.hf_lfs(
            "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
            COMMIT_B,
            "qwen2.5-0.5b-instruct-q4_0.gguf",
            &tiny_gguf("qwen2", 2, 9216),
        );
        sb.hf_ref("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "main", COMMIT_B);
        sb.hf_lfs(
            "Qwen/Qwen2.5-1.5B-Instruct-GGUF",
            COMMIT_B,
            "qwen2.5-1.5b-instruct-q4_0.gguf",
            &tiny_gguf("qwen2", 2, 9216),
        );
        sb.hf_ref("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "main", COMMIT_B);
        let lib = sb.scan();
        (sb, lib)
    }

    #[test]
    fn exact_name_and_quant_suffix() {
        let (_sb, lib) = library();
        let m = lib
            .resolve("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1")
            .unwrap();
        assert_eq!(m.info.quant.as_deref(), Some("Q4_1"));
        let m = lib
            .resolve("huggingfacetb/smollm2-135m-instruct-gguf:q8_0")
            .unwrap();
        assert_eq!(m.name, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q8_0");
        // A single-file repo still answers to its quant.
        let m = lib.resolve("Qwen/Qwen2.5-0.5B-Instruct-GGUF:Q4_0").unwrap();
        assert_eq!(m.name, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        assert!(m.load_path.ends_with("qwen2.5-0.5b-instruct-q4_0.gguf"));
    }

    #[test]
    fn unique_suffix_resolves_and_gguf_suffix_is_optional() {
        let (_sb, lib) = library();
        let m = lib.resolve("Qwen2.5-0.5B-Instruct-GGUF").unwrap();
        assert_eq!(m.name, "Qwen/Qwen2.5-0.5B-Instruct-GGUF");
        let m = lib.resolve("Qwen2.5-1.5B-Instruct").unwrap();
        assert_eq!(m.name, "Qwen/Qwen2.5-1.5B-Instruct-GGUF");
        let m = lib.resolve("SmolLM2-135M-Instruct:Q4_1").unwrap();
        assert_eq!(m.name, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1");
    }

    #[test]
    fn ambiguous_names_list_the_candidates() {
        let (_sb, lib) = library();
        let err = lib.resolve("SmolLM2-135M-Instruct").unwrap_err();
        match &err {
            LibraryError::Ambiguous { candidates, .. } => assert_eq!(
                candidates,
                &[
                    "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1 [hf-cache]",
                    "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q8_0 [hf-cache]"
                ]
            ),
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("matches 2 models"), "{msg}");
    }

    #[test]
    fn unknown_names_suggest_close_matches() {
        let (_sb, lib) = library();
        match lib.resolve("Qwen2.5-0.5B-Instruct-GUF").unwrap_err() {
            LibraryError::NotFound { suggestions, .. } => {
                assert_eq!(
                    suggestions[0], "Qwen/Qwen2.5-0.5B-Instruct-GGUF",
                    "closest first"
                );
                assert!(
                    !suggestions.iter().any(|s| s.contains("SmolLM2")),
                    "{suggestions:?}"
                );
            }
            other => panic!("{other:?}"),
        }
        match lib.resolve("totally-different").unwrap_err() {
            LibraryError::NotFound { suggestions, .. } => assert!(suggestions.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths_resolve_to_the_model_that_holds_them() {
        let (sb, lib) = library();
        let snap = sb
            .repo_dir("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF")
            .join("snapshots")
            .join(COMMIT_A)
            .join("SmolLM2-135M-Instruct.Q4_1.gguf");
        let m = lib.resolve(snap.to_str().unwrap()).unwrap();
        assert_eq!(m.name, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q4_1");
        let outside = sb.write("elsewhere/x.gguf", b"GGUF");
        assert!(matches!(
            lib.resolve(outside.to_str().unwrap()),
            Err(LibraryError::PathNotInLibrary { .. })
        ));
    }
}

mod verify_files {
    use super::*;

    #[test]
    fn hf_cache_blobs_are_checked_by_sha256_and_git_sha1() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let lib = sb.scan();
        let m = lib.resolve("SmolLM2-135M-Instruct-GGUF").unwrap();
        let mut last = (0, 0);
        let report = verify(m, &mut |done, total| last = (done, total));
        assert!(report.all_ok(), "{report:?}");
        assert_eq!(
            report.count(|c| *c == FileCheck::Ok),
            2,
            "gguf (sha256) + .gitattributes (git sha1)"
        );
        assert_eq!(last, (SMOL_SIZE + 18, SMOL_SIZE + 18));
        let text = influence::commands::verify::render_report(&report);
        assert!(text.contains("2 verified, 0 with problems"), "{text}");
    }

    #[test]
    fn tampered_and_missing_blobs_are_reported() {
        let sb = Sandbox::new();
        let repo = "org/tiny";
        let sha = sb.hf_lfs(
            repo,
            COMMIT_A,
            "model.safetensors",
            &safetensors_bytes("w", 16),
        );
        let git = sb.hf_git(repo, COMMIT_A, "config.json", br#"{"model_type":"llama"}"#);
        sb.hf_ref(repo, "main", COMMIT_A);
        let blobs = sb.repo_dir(repo).join("blobs");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(blobs.join(&sha))
            .unwrap();
        f.write_all(b"x").unwrap();
        std::fs::remove_file(blobs.join(&git)).unwrap();
        let lib = sb.scan();
        let m = lib.resolve("org/tiny").unwrap();
        assert!(
            m.broken
                .as_deref()
                .unwrap()
                .contains("config.json is missing"),
            "{:?}",
            m.broken
        );
        let report = verify(m, &mut |_, _| {});
        assert!(!report.all_ok());
        let by_name = |n: &str| {
            &report
                .files
                .iter()
                .find(|f| f.path.ends_with(n))
                .unwrap()
                .check
        };
        assert_eq!(by_name("config.json"), &FileCheck::Missing);
        match by_name("model.safetensors") {
            FileCheck::Mismatch { expected, actual } => {
                assert_eq!(expected, &sha);
                assert_ne!(actual, &sha);
            }
            other => panic!("{other:?}"),
        }
        let text = influence::commands::verify::render_report(&report);
        assert!(
            text.contains("MISMATCH") && text.contains("MISSING"),
            "{text}"
        );
    }
}

mod delete {
    use super::*;

    /// Two snapshots of one repo sharing `config.json`; `main` is the newer one.
    fn two_snapshots(sb: &Sandbox) -> (String, String, String) {
        let repo = "org/tiny";
        let shared = sb.hf_git(repo, COMMIT_A, "config.json", br#"{"model_type":"llama"}"#);
        sb.hf_git(repo, COMMIT_B, "config.json", br#"{"model_type":"llama"}"#);
        let old = sb.hf_lfs(
            repo,
            COMMIT_A,
            "model.safetensors",
            &safetensors_bytes("w", 16),
        );
        let new = sb.hf_lfs(
            repo,
            COMMIT_B,
            "model.safetensors",
            &safetensors_bytes("w", 32),
        );
        sb.hf_ref(repo, "main", COMMIT_B);
        sb.hf_ref(repo, "pr/1", COMMIT_A);
        std::fs::create_dir_all(sb.repo_dir(repo).join(".no_exist").join(COMMIT_A)).unwrap();
        (shared, old, new)
    }

    #[test]
    fn deleting_an_old_snapshot_keeps_shared_blobs() {
        let sb = Sandbox::new();
        let (shared, old, new) = two_snapshots(&sb);
        let lib = sb.scan();
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["org/tiny", "org/tiny@aaaaaaa"]);
        // `org/tiny` is the current revision, not the old one.
        assert_eq!(lib.resolve("tiny").unwrap().name, "org/tiny");

        let old_model = lib.resolve("org/tiny@aaaaaaa").unwrap();
        let plan = lib.delete_plan(old_model).unwrap();
        let repo_dir = sb.repo_dir("org/tiny");
        let paths: Vec<&Path> = plan
            .removals
            .iter()
            .map(|r| match r {
                Removal::File { path, .. } | Removal::Dir { path, .. } => path.as_path(),
                Removal::ImportRecord { .. } => panic!("not an import"),
            })
            .collect();
        assert_eq!(
            paths,
            [
                repo_dir.join("snapshots").join(COMMIT_A).as_path(),
                repo_dir.join("refs/pr/1").as_path(),
                repo_dir.join(".no_exist").join(COMMIT_A).as_path(),
                repo_dir.join("blobs").join(&old).as_path(),
            ]
        );
        assert_eq!(plan.kept_shared, [repo_dir.join("blobs").join(&shared)]);
        assert_eq!(plan.bytes_freed, safetensors_bytes("w", 16).len() as u64);
        let text = influence::commands::rm::render_plan(&plan);
        assert!(text.contains("keep") && text.contains(&shared), "{text}");

        plan.execute().unwrap();
        assert!(!repo_dir.join("snapshots").join(COMMIT_A).exists());
        assert!(!repo_dir.join("blobs").join(&old).exists());
        assert!(repo_dir.join("blobs").join(&shared).exists());
        assert!(repo_dir.join("blobs").join(&new).exists());
        assert!(repo_dir.join("refs/main").exists());
        let lib = sb.scan();
        assert_eq!(lib.models().len(), 1);
        assert!(verify(&lib.models()[0], &mut |_, _| {}).all_ok());

        // The last snapshot takes the whole repo folder with it.
        let plan = lib.delete_plan(&lib.models()[0]).unwrap();
        assert!(matches!(&plan.removals[..], [Removal::Dir { path, .. }] if path == &repo_dir));
        plan.execute().unwrap();
        assert!(!repo_dir.exists());
        assert!(sb.roots.hf_hub.exists());
        assert!(sb.scan().models().is_empty());
    }

    #[test]
    fn deleting_one_quant_keeps_the_others() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let repo = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
        let q8 = sb.hf_lfs(
            repo,
            COMMIT_A,
            "SmolLM2-135M-Instruct.Q8_0.gguf",
            &tiny_gguf("llama", 8, 17408),
        );
        let lib = sb.scan();
        let m = lib.resolve("SmolLM2-135M-Instruct:Q8_0").unwrap();
        let plan = lib.delete_plan(m).unwrap();
        let snap = sb.repo_dir(repo).join("snapshots").join(COMMIT_A);
        assert_eq!(
            plan.removals,
            [
                Removal::File {
                    path: snap.join("SmolLM2-135M-Instruct.Q8_0.gguf"),
                    size: 0
                },
                Removal::File {
                    path: sb.repo_dir(repo).join("blobs").join(&q8),
                    size: tiny_gguf("llama", 8, 17408).len() as u64
                },
            ]
        );
        plan.execute().unwrap();
        let lib = sb.scan();
        let names: Vec<&str> = lib.models().iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"]);
        assert!(
            smol().exists(),
            "the fixture behind the blob link is untouched"
        );
    }

    #[test]
    fn other_apps_stores_are_refused() {
        let sb = Sandbox::new();
        let gguf = tiny_gguf("llama", 8, 17408);
        let sha = hex::encode(sha2::Sha256::digest(&gguf));
        sb.write(&format!("ollama/models/blobs/sha256-{sha}"), &gguf);
        sb.write(
            "ollama/models/manifests/registry.ollama.ai/library/tiny/latest",
            format!(r#"{{"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"sha256:{sha}"}}]}}"#).as_bytes(),
        );
        sb.write("lmstudio/models/pub/Tiny-GGUF/Tiny-Q8_0.gguf", &gguf);
        sb.write("extra/loose.Q8_0.gguf", &gguf);
        let lib = sb.scan();
        assert_eq!(lib.models().len(), 3, "{:#?}", lib.models());
        for (name, store) in [
            ("tiny:latest", "Ollama's store"),
            ("pub/Tiny-GGUF", "LM Studio's store"),
            ("loose.Q8_0", "model_dirs"),
        ] {
            let m = lib.resolve(name).unwrap();
            match lib.delete_plan(m) {
                Err(e @ LibraryError::ForeignStore { .. }) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains(store) && msg.contains("never deletes"),
                        "{msg}"
                    );
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        let m = lib.resolve("tiny:latest").unwrap();
        assert!(lib
            .delete_plan(m)
            .unwrap_err()
            .to_string()
            .contains("ollama rm tiny:latest"));
        assert!(sb
            .root
            .join(format!("ollama/models/blobs/sha256-{sha}"))
            .exists());
    }

    #[test]
    fn rm_confirmation_refuses_without_a_terminal_and_honours_the_answer() {
        let sb = Sandbox::new();
        two_snapshots(&sb);
        let lib = sb.scan();
        let plan = lib.delete_plan(lib.resolve("org/tiny").unwrap()).unwrap();
        let mut out = Vec::new();
        let err = influence::commands::rm::confirm(&plan, false, false, &mut &b""[..], &mut out)
            .unwrap_err();
        assert!(err.to_string().contains("--yes"), "{err}");
        assert!(String::from_utf8_lossy(&out).contains("Deleting org/tiny will:"));
        let mut out = Vec::new();
        assert!(
            !influence::commands::rm::confirm(&plan, false, true, &mut &b"\n"[..], &mut out)
                .unwrap()
        );
        assert!(String::from_utf8_lossy(&out).ends_with("Delete? [y/N] "));
        assert!(influence::commands::rm::confirm(
            &plan,
            false,
            true,
            &mut &b"y\n"[..],
            &mut Vec::new()
        )
        .unwrap());
        assert!(influence::commands::rm::confirm(
            &plan,
            true,
            false,
            &mut &b""[..],
            &mut Vec::new()
        )
        .unwrap());
    }
}

mod imports {
    use super::*;

    #[test]
    fn import_records_a_reference_and_rm_only_forgets_it() {
        let sb = Sandbox::new();
        let file = sb.write(
            "downloads/Tiny-Model.Q8_0.gguf",
            &tiny_gguf("llama", 8, 17408),
        );
        let rec = import(&sb.roots, &file).unwrap();
        assert_eq!(rec.path, std::fs::canonicalize(&file).unwrap());
        let data: Vec<_> = std::fs::read_dir(sb.root.join("data"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(data.len(), 1, "only imports.json, no copy of the model");
        let json = std::fs::read_to_string(&sb.roots.imports_file).unwrap();
        assert!(json.contains("Tiny-Model.Q8_0.gguf"), "{json}");

        let lib = sb.scan();
        let m = lib.resolve("Tiny-Model:Q8_0").unwrap();
        assert_eq!(m.source, Source::Import);
        assert_eq!(m.name, "Tiny-Model.Q8_0");
        assert_eq!(m.load_path, rec.path);
        assert!(matches!(m.location, Location::Import { .. }));

        match import(&sb.roots, &file) {
            Err(LibraryError::AlreadyListed { name, .. }) => assert_eq!(name, "Tiny-Model.Q8_0"),
            other => panic!("{other:?}"),
        }
        let not_model = sb.write("downloads/notes.txt", b"hello");
        assert!(matches!(
            import(&sb.roots, &not_model),
            Err(LibraryError::NotAModel { .. })
        ));

        let plan = lib.delete_plan(m).unwrap();
        assert!(matches!(&plan.removals[..], [Removal::ImportRecord { .. }]));
        plan.execute().unwrap();
        assert!(file.exists(), "rm of an import never touches the file");
        assert!(sb.scan().models().is_empty());
    }

    #[test]
    fn an_imported_folder_and_a_vanished_import() {
        let sb = Sandbox::new();
        import(&sb.roots, &minilm()).unwrap();
        let gone = sb.write("downloads/Gone.Q8_0.gguf", &tiny_gguf("llama", 8, 17408));
        import(&sb.roots, &gone).unwrap();
        std::fs::remove_file(&gone).unwrap();
        let lib = sb.scan();
        let m = lib.resolve("minilm").unwrap();
        assert_eq!((m.source, m.kind), (Source::Import, ModelKind::Embedding));
        let g = lib.resolve("Gone.Q8_0").unwrap();
        assert!(
            g.broken.as_deref().unwrap().contains("no longer exists"),
            "{:?}",
            g.broken
        );
        lib.delete_plan(g).unwrap().execute().unwrap();
        let lib = sb.scan();
        assert_eq!(lib.models().len(), 1);
    }

    #[test]
    fn a_corrupt_imports_file_is_a_warning_not_a_crash() {
        let sb = Sandbox::new();
        sb.write("data/imports.json", b"{ broken");
        let lib = sb.scan();
        assert!(lib.models().is_empty());
        assert!(
            lib.warnings()[0].contains("imports.json"),
            "{:?}",
            lib.warnings()
        );
    }
}

mod cli_output {
    use super::*;

    #[test]
    fn list_table_shows_the_columns() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let roots = LibraryRoots {
            extra: vec![minilm()],
            ..sb.roots.clone()
        };
        let lib = Library::scan(&roots);
        let table = influence::commands::list::render_table(lib.models());
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        for col in ["ARCH", "PARAMS", "QUANT", "CONTEXT", "SIZE", "RUNNABLE"] {
            assert!(lines[0].contains(col), "{table}");
        }
        let smol_row = lines
            .iter()
            .find(|l| l.starts_with("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"))
            .unwrap();
        let cells: Vec<&str> = smol_row.split_whitespace().collect();
        let own = influence::engine::own_kernels_run();
        let runnable = if own { "yes" } else { "slow" };
        assert_eq!(
            cells,
            [
                "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
                "llama",
                "chat",
                "134.5M",
                "Q4_1",
                "8192",
                "98.4",
                "MB",
                runnable,
                "hf-cache"
            ]
        );
        let mini_row = lines.iter().find(|l| l.starts_with("minilm")).unwrap();
        assert!(
            mini_row.contains("bert") && mini_row.contains("embed"),
            "{mini_row}"
        );
        assert_eq!(table.contains("slow    = runs"), !own, "{table}");
        let summary = format!(
            "2 models, {} on disk",
            influence::library::human::bytes(lib.models().iter().map(|m| m.size_bytes).sum())
        );
        assert!(table.contains(&summary), "{table}");
        let empty = influence::commands::list::render_table(&[]);
        assert!(empty.contains("influence import PATH"));
        // --json serializes every model.
        let json = serde_json::to_value(lib.models()).unwrap();
        assert_eq!(json[0]["info"]["parameters"], 134_515_008);
        let status = if own { "yes" } else { "slow-path" };
        assert_eq!(json[0]["runnable"]["status"], status);
    }

    #[test]
    fn show_details_include_runnable_and_memory() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let lib = sb.scan();
        let text = influence::commands::show::render_details(&lib.models()[0]);
        for want in [
            "Architecture:  llama",
            "Parameters:    134.5M (134,515,008)",
            "Quant:         Q4_1",
            "Tensors:       272 (F32 x61, Q4_1 x210, Q8_0 x1)",
            "Context:       8192 tokens",
            "Chat template: yes",
            if influence::engine::own_kernels_run() {
                "Runnable:      yes\n"
            } else {
                "Runnable:      yes, slow path: Q4_1"
            },
            "with a 4096-token context",
            "Layers:        30 (KV heads 3, head dim 64)",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}

mod commands {
    use super::*;
    use influence::commands::{import, list, show, verify as verify_cmd, Context};

    /// `hf_home`, `data_dir` and `model_dirs` come from the context, as `main` will pass them.
    #[test]
    fn subcommands_run_against_a_context() {
        let sb = Sandbox::new();
        sb.hf_smollm2();
        let ctx = Context {
            hf_home: sb.root.join("hf"),
            data_dir: sb.root.join("data"),
            endpoint: "http://127.0.0.1:9".into(),
            token: None,
            threads: 1,
            device: Default::default(),
            model_dirs: vec![sb.root.join("extra")],
        };
        let roots = ctx.library_roots();
        assert_eq!(roots.hf_hub, sb.roots.hf_hub);
        assert_eq!(roots.imports_file, sb.roots.imports_file);
        assert_eq!(roots.extra, sb.roots.extra);

        list::run(list::ListArgs { json: true }, &ctx).unwrap();
        show::run(
            show::ShowArgs {
                model: "SmolLM2-135M-Instruct-GGUF".into(),
                json: false,
            },
            &ctx,
        )
        .unwrap();
        let err = show::run(
            show::ShowArgs {
                model: "no-such-model".into(),
                json: false,
            },
            &ctx,
        )
        .unwrap_err();
        assert!(err.to_string().contains("influence list"), "{err}");

        let file = sb.write("downloads/Tiny.Q8_0.gguf", &tiny_gguf("llama", 8, 17408));
        import::run(import::ImportArgs { path: file.clone() }, &ctx).unwrap();
        verify_cmd::run(
            verify_cmd::VerifyArgs {
                model: "SmolLM2-135M-Instruct-GGUF".into(),
                json: false,
            },
            &ctx,
        )
        .unwrap();
        // A tampered git blob makes verify fail (non-zero exit in the binary).
        let repo = sb.repo_dir("HuggingFaceTB/SmolLM2-135M-Instruct-GGUF");
        let gitattributes = std::fs::read_dir(repo.join("blobs"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().len() == 40)
            .unwrap()
            .path();
        std::fs::write(&gitattributes, b"*.gguf filter=lfs diff=lfs\n").unwrap();
        let err = verify_cmd::run(
            verify_cmd::VerifyArgs {
                model: "SmolLM2-135M-Instruct-GGUF".into(),
                json: false,
            },
            &ctx,
        )
        .unwrap_err();
        assert!(err.to_string().contains("failed verification"), "{err}");
    }
}

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Corrupt bytes anywhere in a GGUF, or a cut at any length, never crash a scan: the
        /// model is listed, broken or not.
        #[test]
        fn corrupt_ggufs_never_crash_a_scan(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = tiny_gguf("llama", 8, 17408);
            let header_len = 600.min(bytes.len());
            for (at, v) in edits {
                let i = at.index(header_len);
                bytes[i] = v;
            }
            let keep = cut.index(bytes.len() + 1);
            let sb = Sandbox::new();
            sb.write("extra/fuzz.Q8_0.gguf", &bytes[..keep.max(1)]);
            let lib = sb.scan();
            prop_assert_eq!(lib.models().len(), 1);
            let m = &lib.models()[0];
            if m.broken.is_some() {
                prop_assert!(!m.runnable.can_run());
            }
        }
    }
}
