//! Decoder-only transformer over GGUF weights (llama, mistral, qwen2, qwen3, phi3).
//!
//! Written for Influence on candle-core/candle-nn ops. Compared with candle-transformers'
//! bundled quantized models it keeps `token_embd` quantized (rows are dequantized per lookup),
//! uses a preallocated, truncatable KV cache, builds RoPE tables for the model's real context,
//! and runs grouped-query attention without copying K/V per query head.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor, D};

use super::device::HOST;
use super::gguf::{GgufFile, Meta};
use super::kq::{self, KMatrix, KType};
use super::kv_cache::KvCache;
use super::legacy::{self, LMatrix, LType};
use super::ops;
use super::q8::{self, Q8Matrix};
use super::EngineError;

mod ssm;

/// Shape and numerics of a decoder, read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope_base: f32,
    pub rope_dim: usize,
    pub context_length: usize,
    /// NeoX-style rotation (halves) rather than GPT-J style (interleaved pairs).
    pub rope_neox: bool,
    /// Gemma: embeddings are multiplied by sqrt(hidden).
    pub embed_scale: Option<f64>,
    /// Gemma 3: local layers attend to the last `window` positions only.
    pub sliding_window: Option<usize>,
    /// Gemma 3: every `sliding_pattern`-th layer is global, the others local.
    pub sliding_pattern: usize,
    /// RoPE base of local layers.
    pub rope_base_local: f32,
    /// GELU (tanh) instead of SiLU in the gated FFN.
    pub gelu: bool,
    /// Attention score scale, where not 1/sqrt(head_dim) (Granite, Gemma 2 27B).
    pub attn_scale: Option<f64>,
    /// Granite: attention and FFN outputs are scaled by this before the residual add.
    pub residual_scale: Option<f64>,
    /// Granite: logits are divided by this.
    pub logit_scale: Option<f32>,
    /// Gemma 2: attention scores become `cap · tanh(score / cap)` before the mask.
    pub attn_softcap: Option<f32>,
    /// Gemma 2: logits become `cap · tanh(logit / cap)`.
    pub final_softcap: Option<f32>,
    /// SmolLM3: every `n`-th layer (1-based) attends without RoPE.
    pub no_rope_step: Option<usize>,
    /// Mixture of experts: experts each token uses (`expert_used_count`).
    pub experts_used: usize,
    /// State-space (Mamba) layers in place of attention.
    pub ssm: Option<ssm::SsmConfig>,
}

impl DecoderConfig {
    pub fn from_meta(meta: &Meta, arch: &str) -> Result<Self, EngineError> {
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = meta.usize(&k("embedding_length"))?;
        let ssm = ssm::SsmConfig::from_meta(meta, arch)?;
        // Mamba files have no attention (their converters write 0 heads).
        let n_head = match ssm {
            Some(_) => 1,
            None => meta.usize(&k("attention.head_count"))?,
        };
        let n_kv_head = match ssm {
            Some(_) => 1,
            None => meta
                .opt_usize(&k("attention.head_count_kv"))
                .unwrap_or(n_head),
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(EngineError::Corrupt {
                path: meta.path.to_path_buf(),
                reason: format!("invalid head counts {n_head}/{n_kv_head}"),
            });
        }
        let head_dim = meta
            .opt_usize(&k("attention.key_length"))
            .unwrap_or(hidden / n_head);
        let rope_dim = match ssm {
            Some(_) => 0,
            None => meta
                .opt_usize(&k("rope.dimension_count"))
                .unwrap_or(head_dim)
                .min(head_dim),
        };
        let n_layer = meta.usize(&k("block_count"))?;
        let gemma = matches!(arch, "gemma2" | "gemma3");
        let granite = matches!(arch, "granite" | "granitemoe");
        let rope_base = meta.opt_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
        let positive = |v: Option<f32>| v.filter(|x| x.is_finite() && *x > 0.0);
        if arch == "olmo2" && meta.opt_usize(&k("attention.sliding_window")).unwrap_or(0) > 0 {
            return Err(EngineError::UnsupportedArchitecture {
                arch: "olmo2 with sliding-window attention (OLMo 3)".into(),
                supported: super::gguf::SUPPORTED_ARCHS.join(", "),
            });
        }
        let attn_scale = match arch {
            "granite" | "granitemoe" => {
                positive(meta.opt_f32(&k("attention.scale"))).map(f64::from)
            }
            // llama.cpp's rule (from gemma_pytorch): the 27B model (46 layers) scales by the
            // hidden size per head, the others by the head size.
            "gemma2" if n_layer == 46 => Some(1.0 / ((hidden / n_head) as f64).sqrt()),
            _ => None,
        };
        Ok(Self {
            n_layer,
            n_head,
            n_kv_head,
            head_dim,
            rms_eps: meta
                .opt_f32(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5) as f64,
            rope_base,
            rope_dim,
            context_length: meta.opt_usize(&k("context_length")).unwrap_or(2048),
            // llama.cpp's llama_model_rope_type: these families use NeoX rotation.
            rope_neox: matches!(
                arch,
                "qwen2" | "qwen3" | "qwen3moe" | "phi3" | "gemma2" | "gemma3" | "olmo2"
            ),
            embed_scale: if gemma {
                Some((hidden as f64).sqrt())
            } else if granite {
                positive(meta.opt_f32(&k("embedding_scale"))).map(f64::from)
            } else {
                None
            },
            sliding_window: if gemma {
                meta.opt_usize(&k("attention.sliding_window"))
            } else {
                None
            },
            sliding_pattern: meta
                .opt_usize(&k("attention.sliding_window_type"))
                .unwrap_or(if arch == "gemma2" { 2 } else { 6 })
                .max(1),
            rope_base_local: meta.opt_f32(&k("rope.local_freq_base")).unwrap_or(
                if arch == "gemma3" {
                    10_000.0
                } else {
                    rope_base
                },
            ),
            gelu: gemma,
            attn_scale,
            residual_scale: if granite {
                positive(meta.opt_f32(&k("residual_scale"))).map(f64::from)
            } else {
                None
            },
            logit_scale: if granite {
                positive(meta.opt_f32(&k("logit_scale")))
            } else {
                None
            },
            attn_softcap: if arch == "gemma2" {
                positive(meta.opt_f32(&k("attn_logit_softcapping")))
            } else {
                None
            },
            final_softcap: if arch == "gemma2" {
                positive(meta.opt_f32(&k("final_logit_softcapping")))
            } else {
                None
            },
            no_rope_step: (arch == "smollm3").then_some(4),
            experts_used: meta.opt_usize(&k("expert_used_count")).unwrap_or(0),
            ssm,
        })
    }
}

/// A weight matrix: Q8_0, Q4_0/Q4_1/Q5_0/Q5_1 and (opt-in) Q4_K/Q6_K on Influence's own
/// kernels where the CPU runs them, otherwise candle's.
enum Linear {
    Q8(Arc<Q8Matrix>),
    K(Arc<KMatrix>),
    L(Arc<LMatrix>),
    Candle(QMatMul),
}

/// A matrix repacked for one of Influence's own kernels (its GGUF copy is dropped).
enum Own {
    Q8(Q8Matrix),
    K(KMatrix),
    L(LMatrix),
}

enum Qkv {
    Separate { q: Linear, k: Linear, v: Linear },
    Fused(Linear),
}

/// A layer's feed-forward block: one gated MLP, or a mixture of experts.
enum Ffn {
    Dense { gate_up: GateUp, down: Linear },
    Moe(Moe),
}

/// Mixture of experts: a router picks `top_k` experts per token and the block's output is
/// their weighted sum. Each expert is its own set of matrices (cut from the file's stacked
/// tensors at load), so a token reads only the experts it chose.
struct Moe {
    /// `ffn_gate_inp`: one logit per expert.
    router: Linear,
    experts: Vec<Expert>,
    top_k: usize,
    /// Renormalise the chosen experts' weights to sum to 1 (qwen3moe, Mixtral, Granite MoE).
    norm: bool,
}

struct Expert {
    gate: Linear,
    up: Linear,
    down: Linear,
}

enum GateUp {
    Separate { gate: Linear, up: Linear },
    Fused(Linear),
}

struct Layer {
    /// Pre-attention norm (OLMo 2 has none: it norms the attention output instead).
    attn_norm: Option<Tensor>,
    qkv: Qkv,
    /// qwen2 projection biases.
    bias: Option<(Tensor, Tensor, Tensor)>,
    /// RMS norms on queries and keys: per head (qwen3), or over all heads at once (OLMo 2,
    /// whose weights span every head).
    qk_norm: Option<(Tensor, Tensor)>,
    /// Applies RoPE (SmolLM3 leaves every fourth layer without).
    rope: bool,
    o: Linear,
    ffn_norm: Option<Tensor>,
    ffn: Ffn,
    /// Gemma 3 norms applied to the attention and FFN outputs before the residual add.
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// Local (sliding-window) attention layer.
    sliding: bool,
}

/// One sequence's part of a batched forward pass: `ids` are fed at positions
/// `slot_len(slot)..` of its KV slot.
#[derive(Debug, Clone, Copy)]
pub struct SeqStep<'a> {
    pub slot: usize,
    pub ids: &'a [u32],
    /// Whether to return the logits of its last position (prefill chunks other than the last
    /// skip the LM head).
    pub logits: bool,
}

/// A loaded decoder with its KV cache.
pub struct Decoder {
    pub cfg: DecoderConfig,
    embed: Embedding,
    layers: Vec<Layer>,
    out_norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    /// RoPE tables of local layers (Gemma 3), when their base differs.
    local_rope: Option<(Tensor, Tensor)>,
    /// KV slots: one cache per layer for each sequence the engine holds.
    slots: Vec<Vec<KvCache>>,
    /// Mamba layers and their per-slot state, in place of `layers`.
    ssm: Option<ssm::SsmStack>,
    /// Where the weights, KV cache, RoPE tables and activations live.
    device: Device,
}

/// Where weights come from. Names are always GGUF names; safetensors folders are mapped to
/// Hugging Face names by [`hf_name`].
enum Source<'a> {
    Gguf(&'a mut GgufFile),
    Dense {
        path: PathBuf,
        tensors: HashMap<String, Tensor>,
    },
}

struct Loader<'a> {
    src: Source<'a>,
    device: Device,
    /// Convert Q4_1/Q5_0/Q5_1 matrices to Q8_0 at load (`INFLUENCE_REQUANT_Q8=1`): they then run
    /// on the Q8_0 kernel (1.3-1.6x faster generation, 1.5-1.8x faster prompts; ~1.3x on candle's
    /// kernels), with ~1.5x the memory for those weights and slightly different outputs.
    requant_q8: bool,
}

/// Whether `INFLUENCE_REQUANT_Q8=1` is set.
pub fn requant_q8_requested() -> bool {
    std::env::var("INFLUENCE_REQUANT_Q8").is_ok_and(|v| v == "1")
}

/// The Hugging Face (transformers) name of a GGUF tensor name.
fn hf_name(gguf: &str) -> String {
    let (stem, suffix) = match gguf.rsplit_once('.') {
        Some((s, x)) => (s, x),
        None => (gguf, ""),
    };
    let mapped = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => match stem.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
            Some((i, part)) => {
                let hf = match part {
                    "attn_norm" => "input_layernorm",
                    "ffn_norm" => "post_attention_layernorm",
                    "attn_q" => "self_attn.q_proj",
                    "attn_k" => "self_attn.k_proj",
                    "attn_v" => "self_attn.v_proj",
                    "attn_qkv" => "self_attn.qkv_proj",
                    "attn_output" => "self_attn.o_proj",
                    "attn_q_norm" => "self_attn.q_norm",
                    "attn_k_norm" => "self_attn.k_norm",
                    "ffn_gate" => "mlp.gate_proj",
                    "ffn_up" => "mlp.up_proj",
                    "ffn_down" => "mlp.down_proj",
                    other => other,
                };
                format!("model.layers.{i}.{hf}")
            }
            None => stem.to_string(),
        },
    };
    if suffix.is_empty() {
        mapped
    } else {
        format!("{mapped}.{suffix}")
    }
}

impl Loader<'_> {
    fn has(&self, name: &str) -> bool {
        match &self.src {
            Source::Gguf(f) => f.content.tensor_infos.contains_key(name),
            Source::Dense { tensors, .. } => {
                tensors.contains_key(&hf_name(name))
                    // phi3 stores its fused gate/up projection under its own name.
                    || (name.ends_with("ffn_up.weight")
                        && tensors.contains_key(&hf_name(name).replace("up_proj", "gate_up_proj")))
            }
        }
    }

    /// The model file or folder, for error messages.
    fn path(&self) -> PathBuf {
        match &self.src {
            Source::Gguf(f) => f.path.clone(),
            Source::Dense { path, .. } => path.clone(),
        }
    }

    fn corrupt(&self, reason: &str) -> EngineError {
        EngineError::Corrupt {
            path: self.path(),
            reason: reason.to_string(),
        }
    }

    /// The experts of a stacked (experts, rows, cols) GGUF tensor, one matrix each: an
    /// expert's rows are contiguous in the file, so each is cut out as its own matrix and
    /// repacked for the own kernels like any other.
    fn experts(&mut self, name: &str) -> Result<Vec<Linear>, EngineError> {
        if !matches!(self.src, Source::Gguf(_)) {
            return Err(EngineError::Candle(format!(
                "mixture-of-experts tensor `{name}` requested from a safetensors model"
            )));
        }
        let q = self.qtensor(name)?;
        let (n_exp, rows, cols) = q.shape().dims3().map_err(|_| {
            self.corrupt(&format!(
                "tensor `{name}` is not a stack of expert matrices"
            ))
        })?;
        let dtype = q.dtype();
        let data = q.data()?;
        if n_exp == 0 || data.len() % n_exp != 0 {
            return Err(self.corrupt(&format!("tensor `{name}` has a ragged expert stack")));
        }
        let per = data.len() / n_exp;
        let mut out = Vec::with_capacity(n_exp);
        for e in 0..n_exp {
            let bytes = std::borrow::Cow::Borrowed(&data[e * per..(e + 1) * per]);
            let storage = candle_core::quantized::QStorage::from_data(bytes, &self.device, dtype)?;
            let qe = QTensor::new(storage, (rows, cols))?;
            let label = format!("{name}[{e}]");
            out.push(if self.device.is_cpu() {
                match self.repack(&label, &qe)? {
                    Some(Own::Q8(m)) => Linear::Q8(Arc::new(m)),
                    Some(Own::K(m)) => Linear::K(Arc::new(m)),
                    Some(Own::L(m)) => Linear::L(Arc::new(m)),
                    None => Linear::Candle(QMatMul::from_qtensor(qe)?),
                }
            } else {
                Linear::Candle(QMatMul::from_qtensor(qe)?)
            });
        }
        Ok(out)
    }

    fn missing(&self, name: &str) -> EngineError {
        let what = match &self.src {
            Source::Gguf(_) => name.to_string(),
            Source::Dense { .. } => hf_name(name),
        };
        EngineError::Corrupt {
            path: self.path(),
            reason: format!(
                "tensor `{what}` is missing (is this really a model of this architecture?)"
            ),
        }
    }

    /// A tensor as stored, in host memory (for the own kernels, dequantizing, lookups).
    fn qtensor(&mut self, name: &str) -> Result<QTensor, EngineError> {
        self.qtensor_on(name, &HOST)
    }

    fn qtensor_on(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        if !self.has(name) {
            return Err(self.missing(name));
        }
        match &mut self.src {
            Source::Gguf(f) => {
                f.content
                    .tensor(&mut f.reader, name, device)
                    .map_err(|e| EngineError::Corrupt {
                        path: f.path.clone(),
                        reason: format!("cannot read tensor `{name}`: {e}"),
                    })
            }
            Source::Dense { .. } => Err(EngineError::Candle(format!(
                "quantized tensor `{name}` requested from a safetensors model"
            ))),
        }
    }

    /// A dense f32 tensor from a safetensors folder.
    fn take_dense(&mut self, name: &str) -> Result<Tensor, EngineError> {
        if !self.has(name) {
            return Err(self.missing(name));
        }
        let Source::Dense { tensors, .. } = &mut self.src else {
            return Err(EngineError::Candle(
                "dense tensor requested from a GGUF".into(),
            ));
        };
        let hf = hf_name(name);
        let t = match tensors.remove(&hf) {
            Some(t) => t,
            None => tensors
                .remove(&hf.replace("up_proj", "gate_up_proj"))
                .ok_or_else(|| EngineError::Candle(format!("tensor `{hf}` vanished")))?,
        };
        Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    fn matmul(&mut self, name: &str) -> Result<Linear, EngineError> {
        match &self.src {
            // A GPU runs candle's quantized matmul on the weights as stored.
            Source::Gguf(_) if !self.device.is_cpu() => {
                let device = self.device.clone();
                Ok(Linear::Candle(QMatMul::from_qtensor(
                    self.qtensor_on(name, &device)?,
                )?))
            }
            Source::Gguf(_) => {
                let mut q = self.qtensor(name)?;
                let slow = matches!(
                    q.dtype(),
                    GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
                );
                if slow && self.requant_q8 {
                    q = QTensor::quantize(&dequantize_parallel(&q)?, GgmlDType::Q8_0)?;
                }
                match self.repack(name, &q)? {
                    Some(Own::Q8(m)) => Ok(Linear::Q8(Arc::new(m))),
                    Some(Own::K(m)) => Ok(Linear::K(Arc::new(m))),
                    Some(Own::L(m)) => Ok(Linear::L(Arc::new(m))),
                    None => Ok(Linear::Candle(QMatMul::from_qtensor(q)?)),
                }
            }
            Source::Dense { .. } => Ok(Linear::Candle(QMatMul::Tensor(self.take_dense(name)?))),
        }
    }

    /// The matrix repacked for one of Influence's own kernels, when its type has one and the CPU
    /// runs it.
    fn repack(&self, name: &str, q: &QTensor) -> Result<Option<Own>, EngineError> {
        let (n, k) = q.shape().dims2()?;
        let corrupt = |reason: String| EngineError::Corrupt {
            path: self.path(),
            reason: format!("tensor `{name}`: {reason}"),
        };
        let kty = match q.dtype() {
            GgmlDType::Q8_0 if q8::available() => {
                return Q8Matrix::from_gguf_bytes(&q.data()?, n, k)
                    .map(|m| Some(Own::Q8(m)))
                    .map_err(corrupt);
            }
            GgmlDType::Q4K => KType::Q4K,
            GgmlDType::Q6K => KType::Q6K,
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1
                if legacy::runs(k) =>
            {
                let lty = match q.dtype() {
                    GgmlDType::Q4_0 => LType::Q4_0,
                    GgmlDType::Q4_1 => LType::Q4_1,
                    GgmlDType::Q5_0 => LType::Q5_0,
                    _ => LType::Q5_1,
                };
                return LMatrix::from_gguf_bytes(&q.data()?, lty, n, k)
                    .map(|m| Some(Own::L(m)))
                    .map_err(corrupt);
            }
            _ => return Ok(None),
        };
        if !kq::runs(k) {
            return Ok(None);
        }
        KMatrix::from_gguf_bytes(&q.data()?, kty, n, k)
            .map(|m| Some(Own::K(m)))
            .map_err(corrupt)
    }

    fn dense(&mut self, name: &str) -> Result<Tensor, EngineError> {
        match &self.src {
            Source::Gguf(_) => Ok(self
                .qtensor(name)?
                .dequantize(&HOST)?
                .to_device(&self.device)?),
            Source::Dense { .. } => self.take_dense(name),
        }
    }

    fn opt_dense(&mut self, name: &str) -> Result<Option<Tensor>, EngineError> {
        if self.has(name) {
            Ok(Some(self.dense(name)?))
        } else {
            Ok(None)
        }
    }

    fn embedding(&mut self, name: &str) -> Result<Embedding, EngineError> {
        match &self.src {
            // On a GPU the table stays quantized in host memory: a lookup dequantizes a few rows
            // and copies them over, so the device holds no second copy unless the output
            // projection is tied to it.
            Source::Gguf(_) if !self.device.is_cpu() => {
                Ok(Embedding::Quantized(Arc::new(self.qtensor(name)?)))
            }
            Source::Gguf(_) => {
                let q = self.qtensor(name)?;
                match self.repack(name, &q)? {
                    Some(Own::Q8(m)) => Ok(Embedding::Q8(Arc::new(m))),
                    Some(Own::K(m)) => Ok(Embedding::K(Arc::new(m))),
                    Some(Own::L(m)) => Ok(Embedding::L(Arc::new(m))),
                    None => Ok(Embedding::Quantized(Arc::new(q))),
                }
            }
            Source::Dense { .. } => Ok(Embedding::Dense(self.take_dense(name)?)),
        }
    }
}

/// Token embedding table: GGUF tables stay quantized and only looked-up rows are dequantized.
enum Embedding {
    Q8(Arc<Q8Matrix>),
    K(Arc<KMatrix>),
    L(Arc<LMatrix>),
    Quantized(Arc<QTensor>),
    Dense(Tensor),
}

impl Embedding {
    /// The rows of `ids`, (1, ids, hidden), on `device`.
    fn lookup(&self, ids: &[u32], device: &Device) -> candle_core::Result<Tensor> {
        match self {
            // The own kernels' tables exist only on the CPU.
            Embedding::Q8(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r)),
            Embedding::K(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r)),
            Embedding::L(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r)),
            Embedding::Quantized(q) => {
                let host = Tensor::new(ids, &HOST)?.unsqueeze(0)?;
                q.embedding(&host)?.to_dtype(DType::F32)?.to_device(device)
            }
            Embedding::Dense(w) => {
                let ids_t = Tensor::new(ids, w.device())?;
                w.index_select(&ids_t, 0)?
                    .reshape((1, ids.len(), w.dim(1)?))
            }
        }
    }

    /// The same table as the output projection (tied embeddings).
    fn as_lm_head(&self) -> candle_core::Result<Linear> {
        Ok(match self {
            Embedding::Q8(m) => Linear::Q8(m.clone()),
            Embedding::K(m) => Linear::K(m.clone()),
            Embedding::L(m) => Linear::L(m.clone()),
            Embedding::Quantized(q) => Linear::Candle(QMatMul::from_arc(q.clone())?),
            Embedding::Dense(w) => Linear::Candle(QMatMul::Tensor(w.clone())),
        })
    }
}

/// The embedding rows of `ids` from a table of `rows × cols` read by `row`.
fn rows_of(
    ids: &[u32],
    rows: usize,
    cols: usize,
    row: impl Fn(usize) -> Vec<f32>,
) -> candle_core::Result<Tensor> {
    let mut data = Vec::with_capacity(ids.len() * cols);
    for &id in ids {
        if id as usize >= rows {
            candle_core::bail!("token id {id} outside the vocabulary ({rows})");
        }
        data.extend(row(id as usize));
    }
    Tensor::from_vec(data, (1, ids.len(), cols), &HOST)
}

fn rope_tables(
    cfg: &DecoderConfig,
    base: f32,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = cfg.rope_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / base.powf((2 * i) as f32 / cfg.rope_dim as f32);
            match freq_factors.and_then(|ff| ff.get(i)) {
                Some(div) if *div > 0.0 => f / div,
                _ => f,
            }
        })
        .collect();
    let n = cfg.context_length;
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for p in 0..n {
        for f in &inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

impl Decoder {
    /// Reads all weights. The caller has already validated the header (`gguf::open`).
    pub fn load(f: &mut GgufFile, device: &Device) -> Result<Self, EngineError> {
        let arch = f.arch.clone();
        let meta = Meta {
            path: &f.path,
            md: &f.content.metadata,
        };
        let cfg = DecoderConfig::from_meta(&meta, &arch)?;
        Self::build(
            cfg,
            Loader {
                src: Source::Gguf(f),
                device: device.clone(),
                // The Q8_0 conversion exists for the own CPU kernels.
                requant_q8: device.is_cpu() && requant_q8_requested(),
            },
            None,
        )
    }

    /// Loads a Hugging Face safetensors folder (f32/f16/bf16 weights, computed in f32).
    pub fn load_safetensors(
        dir: &Path,
        cfg: DecoderConfig,
        tensors: HashMap<String, Tensor>,
        freq_factors: Option<Vec<f32>>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::build(
            cfg,
            Loader {
                src: Source::Dense {
                    path: dir.to_path_buf(),
                    tensors,
                },
                device: device.clone(),
                requant_q8: false,
            },
            freq_factors,
        )
    }

    fn build(
        cfg: DecoderConfig,
        mut l: Loader,
        freq_factors: Option<Vec<f32>>,
    ) -> Result<Self, EngineError> {
        let embed = l.embedding("token_embd.weight")?;
        let gpu_gguf = !l.device.is_cpu() && matches!(l.src, Source::Gguf(_));
        let lm_head = if l.has("output.weight") {
            l.matmul("output.weight")?
        } else if gpu_gguf {
            // Tied embeddings: the lookup table stays in host memory, the projection runs on
            // the device from its own copy.
            l.matmul("token_embd.weight")?
        } else {
            embed.as_lm_head()?
        };
        let out_norm = l.dense("output_norm.weight")?;
        let freq_factors = match l.opt_dense("rope_freqs.weight")? {
            Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => freq_factors,
        };
        let device = l.device.clone();
        let (cos, sin) = rope_tables(&cfg, cfg.rope_base, freq_factors.as_deref(), &device)?;
        let local_rope = match cfg.sliding_window {
            Some(_) if cfg.rope_base_local != cfg.rope_base => {
                Some(rope_tables(&cfg, cfg.rope_base_local, None, &device)?)
            }
            _ => None,
        };

        let ssm = match cfg.ssm {
            Some(sc) => Some(ssm::SsmStack::new(
                sc,
                (0..cfg.n_layer)
                    .map(|i| ssm::load_layer(&mut l, &sc, i))
                    .collect::<Result<_, _>>()?,
            )),
            None => None,
        };
        let attention_layers = if ssm.is_some() { 0 } else { cfg.n_layer };
        let mut layers = Vec::with_capacity(attention_layers);
        for i in 0..attention_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let qkv = if l.has(&p("attn_qkv.weight")) {
                Qkv::Fused(l.matmul(&p("attn_qkv.weight"))?)
            } else {
                Qkv::Separate {
                    q: l.matmul(&p("attn_q.weight"))?,
                    k: l.matmul(&p("attn_k.weight"))?,
                    v: l.matmul(&p("attn_v.weight"))?,
                }
            };
            let bias = match (
                l.opt_dense(&p("attn_q.bias"))?,
                l.opt_dense(&p("attn_k.bias"))?,
                l.opt_dense(&p("attn_v.bias"))?,
            ) {
                (Some(q), Some(k), Some(v)) => Some((q, k, v)),
                _ => None,
            };
            let qk_norm = match (
                l.opt_dense(&p("attn_q_norm.weight"))?,
                l.opt_dense(&p("attn_k_norm.weight"))?,
            ) {
                (Some(q), Some(k)) => Some((q, k)),
                _ => None,
            };
            let ffn = if l.has(&p("ffn_gate_inp.weight")) {
                let (gate, up, down) = (
                    l.experts(&p("ffn_gate_exps.weight"))?,
                    l.experts(&p("ffn_up_exps.weight"))?,
                    l.experts(&p("ffn_down_exps.weight"))?,
                );
                if gate.len() != up.len() || up.len() != down.len() || gate.is_empty() {
                    return Err(
                        l.corrupt("blk.{i}: the expert tensors disagree on the expert count")
                    );
                }
                let top_k = cfg.experts_used.clamp(1, gate.len());
                Ffn::Moe(Moe {
                    router: l.matmul(&p("ffn_gate_inp.weight"))?,
                    experts: gate
                        .into_iter()
                        .zip(up)
                        .zip(down)
                        .map(|((gate, up), down)| Expert { gate, up, down })
                        .collect(),
                    top_k,
                    norm: true,
                })
            } else {
                let gate_up = if l.has(&p("ffn_gate.weight")) {
                    GateUp::Separate {
                        gate: l.matmul(&p("ffn_gate.weight"))?,
                        up: l.matmul(&p("ffn_up.weight"))?,
                    }
                } else {
                    GateUp::Fused(l.matmul(&p("ffn_up.weight"))?)
                };
                Ffn::Dense {
                    gate_up,
                    down: l.matmul(&p("ffn_down.weight"))?,
                }
            };
            layers.push(Layer {
                attn_norm: l.opt_dense(&p("attn_norm.weight"))?,
                qkv,
                bias,
                qk_norm,
                o: l.matmul(&p("attn_output.weight"))?,
                ffn_norm: l.opt_dense(&p("ffn_norm.weight"))?,
                rope: cfg.no_rope_step.is_none_or(|n| (i + 1) % n != 0),
                ffn,
                post_attn_norm: l.opt_dense(&p("post_attention_norm.weight"))?,
                post_ffn_norm: l.opt_dense(&p("post_ffw_norm.weight"))?,
                sliding: cfg.sliding_window.is_some() && (i + 1) % cfg.sliding_pattern != 0,
            });
        }
        Ok(Self {
            cfg,
            embed,
            layers,
            out_norm,
            lm_head,
            cos,
            sin,
            local_rope,
            slots: Vec::new(),
            ssm,
            device,
        })
    }

    /// Whether this decoder computes on the CPU (its own kernels) rather than a GPU.
    pub fn on_cpu(&self) -> bool {
        self.device.is_cpu()
    }

    /// One short forward on a GPU right after loading, so the first answer does not pay for
    /// loading and compiling the device's kernels (Metal compiles its shaders on first use).
    pub fn warm_up(&mut self, token: u32) -> Result<(), EngineError> {
        if self.on_cpu() {
            return Ok(());
        }
        let t = std::time::Instant::now();
        let r = self.forward(&[token, token], true);
        self.release_slot(0);
        r?;
        tracing::info!(ms = t.elapsed().as_millis() as u64, "device warmed up");
        Ok(())
    }

    /// Positions held in KV slot `slot` (0 for a slot never used).
    pub fn slot_len(&self, slot: usize) -> usize {
        if let Some(r) = &self.ssm {
            return r.state.len(slot);
        }
        self.slots
            .get(slot)
            .and_then(|s| s.first())
            .map_or(0, |c| c.len())
    }

    /// Drops slot `slot`'s positions from `n` on (its memory is kept for reuse) and returns
    /// the positions it still holds. A recurrent state cannot be cut at any position: it goes
    /// back to its latest checkpoint at or before `n`, or to nothing, and the caller feeds the
    /// rest again.
    pub fn truncate_slot(&mut self, slot: usize, n: usize) -> usize {
        if let Some(r) = &mut self.ssm {
            return r.state.truncate(slot, n);
        }
        if let Some(s) = self.slots.get_mut(slot) {
            for c in s {
                c.truncate(n);
            }
        }
        self.slot_len(slot)
    }

    /// Empties slot `slot` and frees its memory.
    pub fn release_slot(&mut self, slot: usize) {
        if let Some(r) = &mut self.ssm {
            r.state.release(slot);
        }
        if let Some(s) = self.slots.get_mut(slot) {
            for c in s {
                c.release();
            }
        }
    }

    /// Caps slot `slot`'s growth at `n` positions (what the KV budget reserved for it).
    pub fn limit_slot(&mut self, slot: usize, n: usize) {
        let n = n.min(self.cfg.context_length);
        for c in self.slot_caches(slot) {
            c.set_max(n);
        }
    }

    /// Positions slot `slot` can hold without growing (its allocated memory).
    pub fn slot_capacity(&self, slot: usize) -> usize {
        self.slots
            .get(slot)
            .and_then(|s| s.first())
            .map_or(0, |c| c.capacity())
    }

    /// Positions allocated across every slot (memory held, used or not).
    pub fn kv_allocated(&self) -> usize {
        self.slots
            .iter()
            .filter_map(|s| s.first())
            .map(|c| c.capacity())
            .sum()
    }

    /// Whether prompt chunks of several sequences may share one forward pass without changing
    /// any row's numbers: true unless some matrix runs a lone chunk on a kernel that a packed
    /// batch would not use (see [`linear`]).
    pub fn packs_prompts(&self) -> bool {
        // candle's GPU kernels change with the row count; keep prompt chunks alone there.
        // Mamba's lone chunks take the dense path through its projections.
        if !self.device.is_cpu() || self.ssm.is_some() {
            return false;
        }
        // A lone chunk would take the dense GEMM, or candle's multi-row Q6_K kernel where a
        // packed batch takes its single-row one.
        let dense = |w: &Linear| match w {
            Linear::Candle(QMatMul::QTensor(qt)) => {
                splits_rows(qt.dtype())
                    || (dense_env() && !matches!(qt.dtype(), GgmlDType::Q4K | GgmlDType::Q6K))
            }
            _ => false,
        };
        let layer_dense = |l: &Layer| {
            let qkv = match &l.qkv {
                Qkv::Separate { q, k, v } => dense(q) || dense(k) || dense(v),
                Qkv::Fused(w) => dense(w),
            };
            let ffn = match &l.ffn {
                Ffn::Dense { gate_up, down } => {
                    dense(down)
                        || match gate_up {
                            GateUp::Separate { gate, up } => dense(gate) || dense(up),
                            GateUp::Fused(w) => dense(w),
                        }
                }
                // Experts see each token alone or with others that chose them: candle's
                // kernels would change a row's numbers with that company.
                Ffn::Moe(m) => m.experts.iter().any(|e| {
                    [&e.gate, &e.up, &e.down]
                        .iter()
                        .any(|w| matches!(w, Linear::Candle(_)))
                }),
            };
            qkv || ffn || dense(&l.o)
        };
        !dense(&self.lm_head) && !self.layers.iter().any(layer_dense)
    }

    /// Bytes of K and V one position takes in one slot (f32, every attention layer).
    pub fn kv_bytes_per_token(&self) -> usize {
        self.layers.len() * 2 * self.cfg.n_kv_head * self.cfg.head_dim * 4
    }

    /// Bytes of one sequence's recurrent state (0 without recurrent layers); each checkpoint
    /// takes as much again.
    pub fn state_bytes_per_slot(&self) -> usize {
        self.ssm.as_ref().map_or(0, |r| r.state.state_bytes())
    }

    /// Bytes of recurrent state held across every slot, checkpoints included.
    pub fn state_allocated(&self) -> usize {
        self.ssm.as_ref().map_or(0, |r| r.state.allocated_bytes())
    }

    fn slot_caches(&mut self, slot: usize) -> &mut Vec<KvCache> {
        while self.slots.len() <= slot {
            let n = self.cfg.context_length;
            self.slots
                .push((0..self.cfg.n_layer).map(|_| KvCache::new(n)).collect());
        }
        &mut self.slots[slot]
    }

    /// Single-sequence forward on slot 0 (benchmarks and tools that run one sequence).
    pub fn forward(
        &mut self,
        ids: &[u32],
        want_logits: bool,
    ) -> candle_core::Result<Option<Vec<f32>>> {
        let mut out = self.forward_batch(&[SeqStep {
            slot: 0,
            ids,
            logits: want_logits,
        }])?;
        Ok(out.pop().flatten())
    }

    /// One forward pass over several sequences, each on its own KV slot: the weight matrices
    /// run once over every sequence's rows (one read of the weights per step), attention runs
    /// per sequence over its own positions. Returns, per sequence, the logits of its last
    /// position when it asked for them.
    ///
    /// A sequence's rows go through the same kernels whether it runs alone or in a batch (the
    /// dense-GEMM path is taken only by a single sequence's prompt chunk), so batching never
    /// changes its numbers.
    pub fn forward_batch(
        &mut self,
        seqs: &[SeqStep],
    ) -> candle_core::Result<Vec<Option<Vec<f32>>>> {
        if seqs.is_empty() || seqs.iter().any(|s| s.ids.is_empty()) {
            candle_core::bail!("forward called with no tokens");
        }
        for (i, s) in seqs.iter().enumerate() {
            if seqs[..i].iter().any(|o| o.slot == s.slot) {
                candle_core::bail!("slot {} appears twice in one batch", s.slot);
            }
            let pos = self.slot_len(s.slot);
            if pos + s.ids.len() > self.cfg.context_length {
                candle_core::bail!(
                    "positions {pos}..{} exceed the context length {}",
                    pos + s.ids.len(),
                    self.cfg.context_length
                );
            }
        }
        let dense_ok = seqs.len() == 1;
        let all: Vec<u32> = seqs.iter().flat_map(|s| s.ids.iter().copied()).collect();
        let mut x = self.embed.lookup(&all, &self.device)?;
        if let Some(scale) = self.cfg.embed_scale {
            // llama.cpp scales Gemma's embeddings by sqrt(hidden) in f32, Granite's by its
            // multiplier; either way one multiply.
            x = (x * scale)?;
        }
        // Per-sequence attention inputs: row offset, length, masks and RoPE rows.
        let mut parts = Vec::with_capacity(seqs.len());
        let mut offset = 0;
        for s in seqs {
            let t = s.ids.len();
            let pos = self.slot_len(s.slot);
            parts.push(self.seq_part(s.slot, offset, t, pos)?);
            offset += t;
            self.slot_caches(s.slot);
        }
        if let Some(r) = &mut self.ssm {
            let rs: Vec<ssm::SsmSeq> = parts
                .iter()
                .zip(seqs)
                .map(|(p, s)| ssm::SsmSeq {
                    slot: p.slot,
                    offset: p.offset,
                    t: p.t,
                    // A prompt's last chunk: the turn boundary.
                    checkpoint: s.logits && p.t > 1,
                })
                .collect();
            x = r.forward(x, &rs, self.cfg.rms_eps as f32, dense_ok)?;
        }
        let cfg = &self.cfg;
        let eps = cfg.rms_eps as f32;
        for (li, layer) in self.layers.iter().enumerate() {
            let norm = |x: &Tensor, w: &Option<Tensor>| match w {
                Some(w) => candle_nn::ops::rms_norm(x, w, eps),
                None => Ok(x.clone()),
            };
            let h = norm(&x, &layer.attn_norm)?;
            let mut attn = attention(cfg, layer, li, &h, &parts, &mut self.slots, dense_ok)?;
            if let Some(n) = &layer.post_attn_norm {
                attn = candle_nn::ops::rms_norm(&attn, n, eps)?;
            }
            if let Some(r) = cfg.residual_scale {
                attn = (attn * r)?;
            }
            x = (x + attn)?;
            let h = norm(&x, &layer.ffn_norm)?;
            let act = |g: &Tensor| {
                if cfg.gelu {
                    g.gelu()
                } else {
                    candle_nn::ops::silu(g)
                }
            };
            let mut ff = match &layer.ffn {
                Ffn::Dense { gate_up, down } => {
                    let ff = match gate_up {
                        GateUp::Separate { gate, up } => {
                            let [g, u] = linear_many([gate, up], &h, dense_ok)?;
                            (act(&g)? * u)?
                        }
                        GateUp::Fused(w) => {
                            let gu = linear(w, &h, dense_ok)?;
                            let n = gu.dim(D::Minus1)? / 2;
                            (act(&gu.narrow(D::Minus1, 0, n)?)? * gu.narrow(D::Minus1, n, n)?)?
                        }
                    };
                    linear(down, &ff, dense_ok)?
                }
                Ffn::Moe(moe) => moe_forward(moe, &h, &act)?,
            };
            if let Some(n) = &layer.post_ffn_norm {
                ff = candle_nn::ops::rms_norm(&ff, n, eps)?;
            }
            if let Some(r) = cfg.residual_scale {
                ff = (ff * r)?;
            }
            x = (x + ff)?;
        }
        let wanted: Vec<usize> = (0..seqs.len()).filter(|&i| seqs[i].logits).collect();
        let mut out = vec![None; seqs.len()];
        if wanted.is_empty() {
            return Ok(out);
        }
        let lasts = wanted
            .iter()
            .map(|&i| x.narrow(1, parts[i].offset + parts[i].t - 1, 1))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let last = Tensor::cat(&lasts, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.out_norm, eps)?;
        let mut logits = linear(&self.lm_head, &last, dense_ok)?.to_dtype(DType::F32)?;
        if let Some(s) = self.cfg.logit_scale {
            logits = (logits / s as f64)?;
        }
        if let Some(cap) = self.cfg.final_softcap {
            logits = ((logits / cap as f64)?.tanh()? * cap as f64)?;
        }
        // One copy off the device for every row.
        let all = logits.flatten_all()?.to_vec1::<f32>()?;
        let vocab = all.len() / wanted.len();
        for (row, &i) in wanted.iter().enumerate() {
            out[i] = Some(all[row * vocab..(row + 1) * vocab].to_vec());
        }
        Ok(out)
    }

    /// The masks and RoPE rows of `t` new positions from `pos` on.
    fn seq_part(
        &self,
        slot: usize,
        offset: usize,
        t: usize,
        pos: usize,
    ) -> candle_core::Result<SeqPart> {
        let kv = pos + t;
        let dev = &self.device;
        let mask = (t > 1 && !self.layers.is_empty())
            .then(|| causal_mask(t, pos, None, dev))
            .transpose()?;
        let local_mask = match self.cfg.sliding_window {
            Some(w) if t > 1 || kv > w => Some(causal_mask(t, pos, Some(w), dev)?),
            _ => None,
        };
        let local = match &self.local_rope {
            Some((c, s)) => Some((c.narrow(0, pos, t)?, s.narrow(0, pos, t)?)),
            None => None,
        };
        Ok(SeqPart {
            slot,
            offset,
            t,
            mask,
            local_mask,
            cos: self.cos.narrow(0, pos, t)?,
            sin: self.sin.narrow(0, pos, t)?,
            local,
        })
    }
}

/// What attention needs to know about one sequence of a batch.
struct SeqPart {
    slot: usize,
    /// First row of this sequence in the batch.
    offset: usize,
    t: usize,
    mask: Option<Tensor>,
    local_mask: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
    /// RoPE rows of local layers, when their base differs.
    local: Option<(Tensor, Tensor)>,
}

/// A mixture-of-experts block over every row of `h` (1, rows, hidden): the router's softmax
/// picks each row's `top_k` experts (ties to the lower index, as a stable sort), then every
/// expert runs once over the rows that chose it and its output is added to theirs, weighted.
fn moe_forward(
    moe: &Moe,
    h: &Tensor,
    act: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (_, rows, hidden) = h.dims3()?;
    let n_exp = moe.experts.len();
    let logits = linear(&moe.router, h, false)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // Per expert: the rows that chose it and their weights.
    let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_exp];
    for r in 0..rows {
        let l = &logits[r * n_exp..(r + 1) * n_exp];
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = l.iter().map(|x| (x - max).exp()).collect();
        let sum: f32 = e.iter().sum();
        let probs: Vec<f32> = e.iter().map(|x| x / sum).collect();
        let mut order: Vec<usize> = (0..n_exp).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        let top = &order[..moe.top_k];
        let total: f32 = top.iter().map(|&i| probs[i]).sum();
        // llama.cpp clamps the sum to the smallest f16 normal before dividing.
        let total = total.max(6.103_515_6e-5);
        for &i in top {
            let w = if moe.norm { probs[i] / total } else { probs[i] };
            chosen[i].push((r, w));
        }
    }
    let flat = h.reshape((rows, hidden))?;
    let mut out = vec![0f32; rows * hidden];
    for (e, picks) in chosen.iter().enumerate() {
        if picks.is_empty() {
            continue;
        }
        let ex = &moe.experts[e];
        let idx: Vec<u32> = picks.iter().map(|&(r, _)| r as u32).collect();
        let idx = Tensor::new(idx.as_slice(), h.device())?;
        let x = flat.index_select(&idx, 0)?.unsqueeze(0)?;
        let [g, u] = linear_many([&ex.gate, &ex.up], &x, false)?;
        let y = linear(&ex.down, &(act(&g)? * u)?, false)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (j, &(r, w)) in picks.iter().enumerate() {
            let dst = &mut out[r * hidden..(r + 1) * hidden];
            for (d, v) in dst.iter_mut().zip(&y[j * hidden..(j + 1) * hidden]) {
                *d += w * v;
            }
        }
    }
    Tensor::from_vec(out, (1, rows, hidden), h.device())
}

/// Prompt chunks with at least this many rows use a dense f32 GEMM on weights dequantized for
/// the call: candle's quantized matmul streams the whole weight once per row for most types,
/// which makes prefill barely faster than decoding token by token.
const DENSE_MIN_ROWS: usize = 16;

fn dense_env() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFLUENCE_DENSE_PREFILL").map_or(true, |v| v != "0"))
}

/// `x @ wᵀ` for several matrices sharing one input (q/k/v, gate/up): when all are Q8_0, all
/// Q4_K/Q6_K, or all Q4_0/Q4_1/Q5_0/Q5_1, they run in one parallel region on one quantization
/// of `x`.
fn linear_many<const N: usize>(
    ws: [&Linear; N],
    x: &Tensor,
    dense_ok: bool,
) -> candle_core::Result<[Tensor; N]> {
    let q8: Vec<&Q8Matrix> = ws
        .iter()
        .filter_map(|w| match w {
            Linear::Q8(m) => Some(&**m),
            _ => None,
        })
        .collect();
    let kq: Vec<&KMatrix> = ws
        .iter()
        .filter_map(|w| match w {
            Linear::K(m) => Some(&**m),
            _ => None,
        })
        .collect();
    let lq: Vec<&LMatrix> = ws
        .iter()
        .filter_map(|w| match w {
            Linear::L(m) => Some(&**m),
            _ => None,
        })
        .collect();
    let fused = if lq.len() == N {
        Some(own_matmul(
            x,
            |data, m| legacy::matmul(&lq, data, m),
            lq.iter().map(|w| w.rows()),
        )?)
    } else if q8.len() == N {
        Some(own_matmul(
            x,
            |data, m| q8::matmul(&q8, data, m),
            q8.iter().map(|w| w.rows()),
        )?)
    } else if kq.len() == N {
        Some(own_matmul(
            x,
            |data, m| kq::matmul(&kq, data, m),
            kq.iter().map(|w| w.rows()),
        )?)
    } else {
        None
    };
    if let Some(outs) = fused {
        return outs
            .try_into()
            .map_err(|_| candle_core::Error::Msg("matmul output count".into()));
    }
    let mut outs = Vec::with_capacity(N);
    for w in ws {
        outs.push(linear(w, x, dense_ok)?);
    }
    outs.try_into()
        .map_err(|_| candle_core::Error::Msg("matmul output count".into()))
}

/// Runs an own kernel (`mm(x data, rows of x)`, one output per matrix) on `x`, shaping each
/// output like `x` with its matrix's row count (`rows`) as the last dimension.
fn own_matmul(
    x: &Tensor,
    mm: impl FnOnce(&[f32], usize) -> Vec<Vec<f32>>,
    rows: impl Iterator<Item = usize>,
) -> candle_core::Result<Vec<Tensor>> {
    let mut dims = x.dims().to_vec();
    let k = *dims.last().unwrap_or(&0);
    let m = x.elem_count() / k.max(1);
    let data = x.flatten_all()?.to_vec1::<f32>()?;
    mm(&data, m)
        .into_iter()
        .zip(rows)
        .map(|(out, n)| {
            if let Some(last) = dims.last_mut() {
                *last = n;
            }
            Tensor::from_vec(out, dims.as_slice(), &HOST)
        })
        .collect()
}

/// `x @ wᵀ`, choosing between Influence's own kernels, candle's quantized kernel and a
/// dequantize-then-GEMM path (only when `dense_ok`: one sequence's prompt chunk).
fn linear(w: &Linear, x: &Tensor, dense_ok: bool) -> candle_core::Result<Tensor> {
    let w = match w {
        Linear::Q8(m) => {
            let m = &**m;
            return Ok(
                own_matmul(x, |d, r| q8::matmul(&[m], d, r), [m.rows()].into_iter())?.remove(0),
            );
        }
        Linear::K(m) => {
            let m = &**m;
            return Ok(
                own_matmul(x, |d, r| kq::matmul(&[m], d, r), [m.rows()].into_iter())?.remove(0),
            );
        }
        // Prompts too: the 4 × 4 tiles read each weight once per call and beat dequantizing for
        // a dense GEMM at every row count measured (docs/PERFORMANCE.md).
        Linear::L(m) => {
            let m = &**m;
            return Ok(
                own_matmul(x, |d, r| legacy::matmul(&[m], d, r), [m.rows()].into_iter())?.remove(0),
            );
        }
        Linear::Candle(w) => w,
    };
    // The dense and row-split paths below work around candle's CPU kernels.
    if let (QMatMul::QTensor(qt), true) = (w, x.device().is_cpu()) {
        let rows = x.elem_count() / x.dim(D::Minus1)?;
        // Q4_K and Q6_K have repacked multi-row kernels in candle 0.11 that beat this.
        let fast_batched = matches!(qt.dtype(), GgmlDType::Q4K | GgmlDType::Q6K);
        if dense_ok && rows >= DENSE_MIN_ROWS && !fast_batched && dense_env() {
            let wd = dequantize_parallel(qt)?;
            return x.broadcast_matmul(&wd.t()?);
        }
        if !dense_ok && rows > 1 && splits_rows(qt.dtype()) {
            // Rows of different sequences: each gets the single-row kernel it gets alone.
            let (b, t, k) = x.dims3()?;
            let flat = x.reshape((b * t, k))?;
            let outs = (0..b * t)
                .map(|r| w.forward(&flat.narrow(0, r, 1)?.unsqueeze(0)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            return Tensor::cat(&outs, 1)?.reshape((b, t, ()));
        }
    }
    w.forward(x)
}

/// Types whose candle kernel gives a row different numbers at one row than within several
/// (candle 0.11 runs Q6_K on a compact GEMV for one row and on repacked tiles for more).
fn splits_rows(dtype: GgmlDType) -> bool {
    dtype == GgmlDType::Q6K
}

/// `qt` dequantized to f32 with the rows split across candle's barrier pool: candle's own
/// dequantization runs on one thread, which made 2-thread prompt processing of Q4_1 files slower
/// than 1-thread. Types without a split here fall back to candle.
fn dequantize_parallel(qt: &QTensor) -> candle_core::Result<Tensor> {
    use candle_core::quantized::k_quants::{
        BlockQ4_0, BlockQ4_1, BlockQ5_0, BlockQ5_1, BlockQ8_0, GgmlType,
    };

    fn run<T: GgmlType>(data: &[u8], n: usize, k: usize) -> Option<Vec<f32>> {
        let size = std::mem::size_of::<T>();
        let kb = k / T::BLCK_SIZE;
        if !k.is_multiple_of(T::BLCK_SIZE)
            || data.len() != n * kb * size
            || !(data.as_ptr() as usize).is_multiple_of(std::mem::align_of::<T>())
        {
            return None;
        }
        // SAFETY: the length and alignment were checked; candle stores these blocks as a
        // `Vec<T>` of `#[repr(C)]` plain-data structs, which `data()` exposes as bytes.
        let blocks: &[T] = unsafe { std::slice::from_raw_parts(data.as_ptr() as *const T, n * kb) };
        let mut out = vec![0f32; n * k];
        let dst = out.as_mut_ptr() as usize;
        candle_core::utils::barrier_pool().execute_chunked(n, |rows| {
            // SAFETY: row ranges are disjoint and `out` outlives the parallel region.
            let ys = unsafe {
                std::slice::from_raw_parts_mut(
                    (dst as *mut f32).add(rows.start * k),
                    rows.len() * k,
                )
            };
            T::to_float(&blocks[rows.start * kb..rows.end * kb], ys);
        });
        Some(out)
    }

    let (n, k) = qt.shape().dims2()?;
    let data = qt.data()?;
    let out = match qt.dtype() {
        GgmlDType::Q4_0 => run::<BlockQ4_0>(&data, n, k),
        GgmlDType::Q4_1 => run::<BlockQ4_1>(&data, n, k),
        GgmlDType::Q5_0 => run::<BlockQ5_0>(&data, n, k),
        GgmlDType::Q5_1 => run::<BlockQ5_1>(&data, n, k),
        GgmlDType::Q8_0 => run::<BlockQ8_0>(&data, n, k),
        _ => None,
    };
    match out {
        Some(v) => Tensor::from_vec(v, (n, k), &HOST),
        None => qt.dequantize(&HOST),
    }
}

/// Additive mask (t, pos + t): query i (at absolute position pos + i) sees keys 0..=pos + i,
/// and with a sliding `window` only keys within `window` positions of it.
fn causal_mask(
    t: usize,
    pos: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let kv = pos + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            let q = pos + i;
            (0..kv).map(move |j| {
                // A window of `w` positions includes the query's own (llama.cpp masks
                // `q - j >= w`, as transformers' sliding-window mask does).
                let too_old = window.is_some_and(|w| j + w <= q);
                if j > q || too_old {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(data, (t, kv), device)
}

fn apply_rope(
    cfg: &DecoderConfig,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let rot = |x: &Tensor| {
        let x = x.contiguous()?;
        if cfg.rope_neox {
            candle_nn::rotary_emb::rope(&x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)
        }
    };
    if cfg.rope_dim == cfg.head_dim {
        rot(x)
    } else {
        let head = rot(&x.narrow(D::Minus1, 0, cfg.rope_dim)?)?;
        let tail = x.narrow(D::Minus1, cfg.rope_dim, cfg.head_dim - cfg.rope_dim)?;
        Tensor::cat(&[&head, &tail], D::Minus1)
    }
}

/// Attention of layer `li` for every sequence of the batch: q/k/v and the output projection
/// run over all rows at once, RoPE, the KV append and the score/value products per sequence.
fn attention(
    cfg: &DecoderConfig,
    layer: &Layer,
    li: usize,
    h: &Tensor,
    parts: &[SeqPart],
    slots: &mut [Vec<KvCache>],
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    let (q, k, v) = match &layer.qkv {
        Qkv::Separate { q, k, v } => {
            let [q, k, v] = linear_many([q, k, v], h, dense_ok)?;
            (q, k, v)
        }
        Qkv::Fused(w) => {
            let qkv = linear(w, h, dense_ok)?;
            (
                qkv.narrow(D::Minus1, 0, nh * hd)?,
                qkv.narrow(D::Minus1, nh * hd, nkv * hd)?,
                qkv.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
            )
        }
    };
    let (q, k, v) = match &layer.bias {
        Some((bq, bk, bv)) => (
            q.broadcast_add(bq)?,
            k.broadcast_add(bk)?,
            v.broadcast_add(bv)?,
        ),
        None => (q, k, v),
    };
    let mut ys = Vec::with_capacity(parts.len());
    for p in parts {
        let (mask, cos, sin) = match (layer.sliding, &p.local) {
            (true, Some((c, s))) => (p.local_mask.as_ref(), c, s),
            (true, None) => (p.local_mask.as_ref(), &p.cos, &p.sin),
            (false, _) => (p.mask.as_ref(), &p.cos, &p.sin),
        };
        let rows = |x: &Tensor| {
            if parts.len() == 1 {
                Ok(x.clone())
            } else {
                x.narrow(1, p.offset, p.t)
            }
        };
        let y = seq_attention(
            cfg,
            layer,
            &rows(&q)?,
            &rows(&k)?,
            &rows(&v)?,
            &mut slots[p.slot][li],
            mask,
            cos,
            sin,
        )?;
        ys.push(y);
    }
    let y = if ys.len() == 1 {
        ys.remove(0)
    } else {
        Tensor::cat(&ys, 1)?
    };
    linear(&layer.o, &y, dense_ok)
}

/// One sequence's attention over its own KV slot: `q`, `k`, `v` are its `t` new rows,
/// (1, t, heads × head_dim).
#[allow(clippy::too_many_arguments)]
fn seq_attention(
    cfg: &DecoderConfig,
    layer: &Layer,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut KvCache,
    mask: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let (_, t, _) = q.dims3()?;
    let (nh, nkv, hd) = (cfg.n_head, cfg.n_kv_head, cfg.head_dim);
    let eps = cfg.rms_eps as f32;
    // OLMo 2 norms all heads' queries (keys) as one vector, before splitting them.
    let (q, k) = match &layer.qk_norm {
        Some((qn, kn)) if qn.dim(0)? == nh * hd && nh > 1 => (
            candle_nn::ops::rms_norm(q, qn, eps)?,
            candle_nn::ops::rms_norm(k, kn, eps)?,
        ),
        _ => (q.clone(), k.clone()),
    };
    let q = q.reshape((1, t, nh, hd))?.transpose(1, 2)?.contiguous()?;
    let k = k.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
    let v = v.reshape((1, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
    let (q, k) = match &layer.qk_norm {
        Some((qn, kn)) if qn.dim(0)? == hd => (
            candle_nn::ops::rms_norm(&q, qn, eps)?,
            candle_nn::ops::rms_norm(&k, kn, eps)?,
        ),
        _ => (q, k),
    };
    let (q, k) = if layer.rope {
        (
            apply_rope(cfg, &q, cos, sin)?,
            apply_rope(cfg, &k, cos, sin)?,
        )
    } else {
        (q, k)
    };
    let (k_all, v_all) = cache.append(&k, &v)?;
    let kv_len = k_all.dim(2)?;

    // Grouped-query attention without repeating K/V: query heads sharing a KV head are
    // stacked along the row axis, (1, nkv, n_rep * t, hd).
    let n_rep = nh / nkv;
    let q = q.reshape((1, nkv, n_rep * t, hd))?;
    let scale = cfg.attn_scale.unwrap_or(1.0 / (hd as f64).sqrt());
    let mut att = (q.matmul(&k_all.t()?)? * scale)?;
    if let Some(cap) = cfg.attn_softcap {
        att = ((att / cap as f64)?.tanh()? * cap as f64)?;
    }
    let att = match mask {
        Some(m) => att
            .reshape((1, nkv, n_rep, t, kv_len))?
            .broadcast_add(m)?
            .reshape((1, nkv, n_rep * t, kv_len))?,
        None => att,
    };
    let att = ops::softmax_last_dim(&att)?;
    let y = att.matmul(&v_all)?; // (1, nkv, n_rep * t, hd)
    y.reshape((1, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((1, t, nh * hd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_names() {
        assert_eq!(hf_name("token_embd.weight"), "model.embed_tokens.weight");
        assert_eq!(
            hf_name("blk.3.attn_q.bias"),
            "model.layers.3.self_attn.q_proj.bias"
        );
        assert_eq!(
            hf_name("blk.0.ffn_norm.weight"),
            "model.layers.0.post_attention_layernorm.weight"
        );
        assert_eq!(hf_name("output.weight"), "lm_head.weight");
    }

    #[test]
    fn sliding_window_mask() {
        // 3 new queries at positions 2..5, window 2: query 4 sees keys 3..=4 only.
        let m: Vec<Vec<f32>> = causal_mask(3, 2, Some(2), &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        let seen = |row: &Vec<f32>| row.iter().map(|v| v.is_finite()).collect::<Vec<_>>();
        assert_eq!(seen(&m[0]), [false, true, true, false, false]);
        assert_eq!(seen(&m[2]), [false, false, false, true, true]);
        let full: Vec<Vec<f32>> = causal_mask(2, 1, None, &Device::Cpu)
            .unwrap()
            .to_vec2()
            .unwrap();
        assert_eq!(seen(&full[0]), [true, true, false]);
        assert_eq!(seen(&full[1]), [true, true, true]);
    }

    fn smollm_path() -> PathBuf {
        let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap())
                    .join(".cache/influence-test-models")
            });
        let path = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-test-models.sh",
            path.display()
        );
        path
    }

    /// A sequence's logits are bit-identical alone and in a batch: the property that lets a
    /// seeded request give the same tokens however many others share its steps.
    #[test]
    fn batched_decode_matches_single_sequences_bit_for_bit() {
        let mut f = super::super::gguf::open(&smollm_path()).unwrap();
        let mut dec = Decoder::load(&mut f, &Device::Cpu).unwrap();
        let prompts: [&[u32]; 3] = [&[1, 4093, 198, 1780, 314], &[6403, 1980, 253], &[19556]];
        for (slot, p) in prompts.iter().enumerate() {
            let step = SeqStep {
                slot,
                ids: p,
                logits: false,
            };
            dec.forward_batch(&[step]).unwrap();
        }
        let next = [[260u32], [655], [28]];
        let lens: Vec<usize> = (0..3).map(|s| dec.slot_len(s)).collect();
        let mut alone = Vec::new();
        for (slot, ids) in next.iter().enumerate() {
            let step = SeqStep {
                slot,
                ids,
                logits: true,
            };
            alone.push(dec.forward_batch(&[step]).unwrap().remove(0).unwrap());
            dec.truncate_slot(slot, lens[slot]);
        }
        let steps: Vec<SeqStep> = next
            .iter()
            .enumerate()
            .map(|(slot, ids)| SeqStep {
                slot,
                ids,
                logits: true,
            })
            .collect();
        let batched = dec.forward_batch(&steps).unwrap();
        for (slot, (a, b)) in alone.iter().zip(&batched).enumerate() {
            let b = b.as_ref().unwrap();
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "slot {slot}: batched logits differ from its own");
            assert_eq!(dec.slot_len(slot), lens[slot] + 1);
        }
        assert!(dec
            .forward_batch(&[steps[0], steps[0]])
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn slow_quant_matrices_can_be_requantized_to_q8_0() {
        let path = smollm_path();
        let mut f = super::super::gguf::open(&path).unwrap();
        let name = "blk.0.ffn_up.weight";
        let original = f.content.tensor(&mut f.reader, name, &Device::Cpu).unwrap();
        assert_eq!(original.dtype(), GgmlDType::Q4_1);
        let mut l = Loader {
            src: Source::Gguf(&mut f),
            device: Device::Cpu,
            requant_q8: true,
        };
        let a = original.dequantize(&Device::Cpu).unwrap();
        let b = match l.matmul(name).unwrap() {
            Linear::Q8(m) => {
                let rows: Vec<f32> = (0..m.rows()).flat_map(|r| m.row(r)).collect();
                Tensor::from_vec(rows, (m.rows(), m.cols()), &Device::Cpu).unwrap()
            }
            Linear::Candle(QMatMul::QTensor(q)) => {
                assert_eq!(q.dtype(), GgmlDType::Q8_0);
                q.dequantize(&Device::Cpu).unwrap()
            }
            Linear::K(_) | Linear::L(_) | Linear::Candle(_) => {
                panic!("expected a quantized matrix")
            }
        };
        let err: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 0.02, "requantization error {err}");
    }
}
