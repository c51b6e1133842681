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

use super::decode_attn;
use super::device::HOST;
use super::gguf::{GgufFile, Meta};
use super::kq::{self, KMatrix, KType};
use super::kv_cache::{widened, KvCache, KvType};
use super::legacy::{self, LMatrix, LType};
use super::mxfp4::{self, MxMatrix};
use super::ops;
use super::prompt_attn;
use super::q8::{self, Q8Matrix};
use super::recurrent;
use super::EngineError;

mod delta_net;
mod recurrent_device;
mod recurrent_host;
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
    /// gpt-oss: the router's softmax runs over the chosen experts' logits only, and the
    /// experts' gated unit is OpenAI's clamped SwiGLU (`swiglu_oai`).
    pub oai_moe: bool,
    /// gpt-oss: `post_attention_norm` is the norm in front of the FFN (Gemma's is applied to
    /// the attention output).
    pub post_attn_norm_feeds_ffn: bool,
    /// YaRN rope scaling, where the file declares it.
    pub yarn: Option<Yarn>,
    /// Gemma 4: which layers attend through the sliding window, as the file lists them
    /// (otherwise `sliding_pattern` decides).
    pub swa_layers: Option<Vec<bool>>,
    /// Gemma 4: KV heads of each layer, where they differ by layer type.
    pub kv_heads_per_layer: Option<Vec<usize>>,
    /// Head and RoPE widths of sliding-window layers (Gemma 4's differ from its full layers').
    pub head_dim_swa: usize,
    pub rope_dim_swa: usize,
    /// Gemma 4: only layers `..kv_layers` keep a KV cache; each later one reads the cache of the
    /// last such layer of its own type (llama.cpp's `n_layer_kv_from_start`).
    pub kv_layers: usize,
    /// Gemma 4: values are RMS-normed (no weight) like the keys.
    pub v_norm: bool,
    /// Gemma 4 E2B/E4B: width of each layer's slice of the per-layer token embeddings (0: none).
    pub per_layer_input: usize,
    /// Phi's long-context RoPE: cos and sin are scaled by this (`rope.scaling.attn_factor`).
    pub rope_attn_factor: f32,
    /// The context the model was trained at before extension: above it Phi's long RoPE factors
    /// apply, at or below it the short ones (llama.cpp decides by the context it runs at).
    pub rope_orig_context: usize,
    /// State-space (Mamba) layers in place of attention.
    pub ssm: Option<ssm::SsmConfig>,
    /// Which layers are state-space ones: all of a Mamba file's, those a Granite hybrid lists
    /// with no KV heads (llama.cpp's rule); none elsewhere.
    pub recurrent: Vec<bool>,
    /// Attention without RoPE (Granite 4.0 hybrids write `rope.scaling.finetuned` false).
    pub no_rope: bool,
    /// Qwen3.5: Gated DeltaNet (linear-attention) layers in place of attention.
    pub delta_net: Option<delta_net::DeltaConfig>,
    /// Qwen3.5: the query projection gives each head its queries and then as many output-gate
    /// logits; the attention output is multiplied by their sigmoid before `attn_output`.
    pub attn_output_gate: bool,
    /// Qwen3.5's interleaved M-RoPE (`rope.dimension_sections`): which position (time,
    /// height, width, or the extra one, 0 for text) turns each pair. Text gives the first
    /// three the token's position, so only pairs that fall to the extra one stay unturned.
    pub mrope_sections: Option<[usize; 4]>,
}

/// One KV cache of a slot: the f32 values of K and V a position takes, and the window that
/// caps its rows where it keeps only that (see [`window_rows`](super::kv_cache::window_rows)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub floats_per_position: usize,
    pub window: Option<usize>,
}

/// The KV caches a slot of this model would hold, from its metadata alone: what the decoder
/// allocates, for estimates made before (or without) loading it. Errors as loading would.
pub fn caches_from_metadata(
    md: &HashMap<String, candle_core::quantized::gguf_file::Value>,
    arch: &str,
) -> Result<Vec<CacheShape>, EngineError> {
    let meta = Meta {
        path: Path::new("(metadata)"),
        md,
    };
    Ok(DecoderConfig::from_meta(&meta, arch)?.caches())
}

/// YaRN rope scaling (llama.cpp's `rope_yarn` with its context's attention factor).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    /// `rope.scaling.factor`: positions are stretched by this.
    pub factor: f32,
    /// `rope.scaling.original_context_length`.
    pub orig_ctx: usize,
    pub beta_fast: f32,
    pub beta_slow: f32,
    /// `rope.scaling.attn_factor` (1 when absent).
    pub attn_factor: f32,
}

impl DecoderConfig {
    pub fn from_meta(meta: &Meta, arch: &str) -> Result<Self, EngineError> {
        let k = |s: &str| format!("{arch}.{s}");
        let hidden = meta.usize(&k("embedding_length"))?;
        let ssm = ssm::SsmConfig::from_meta(meta, arch)?;
        let delta = delta_net::DeltaConfig::from_meta(meta, arch)?;
        let qwen35 = delta.is_some();
        let hybrid = arch == "granitehybrid";
        // Mamba files have no attention (their converters write 0 heads).
        let pure_ssm = ssm.is_some() && !hybrid;
        let n_head = if pure_ssm {
            1
        } else {
            meta.usize(&k("attention.head_count"))?
        };
        // Qwen3.5 files may carry multi-token-prediction blocks after the trunk (counted in
        // `block_count`); they draft tokens and are not part of the forward pass.
        let n_layer = meta.usize(&k("block_count"))?.saturating_sub(if qwen35 {
            meta.opt_usize(&k("nextn_predict_layers")).unwrap_or(0)
        } else {
            0
        });
        let corrupt = |reason: String| EngineError::Corrupt {
            path: meta.path.to_path_buf(),
            reason,
        };
        let kv_heads = if pure_ssm {
            vec![1; n_layer]
        } else {
            meta.opt_usize_per_layer(&k("attention.head_count_kv"), n_layer)?
                .unwrap_or_else(|| vec![n_head; n_layer])
        };
        let recurrent: Vec<bool> = if hybrid {
            kv_heads.iter().map(|&kv| kv == 0).collect()
        } else if qwen35 {
            // llama.cpp's rule: the listed recurrent layers, else every layer but each
            // `full_attention_interval`-th (1-based).
            match meta.opt_bools(&k("attention.recurrent_layers"), n_layer)? {
                Some(v) => v,
                None => {
                    let every = meta.opt_usize(&k("full_attention_interval")).unwrap_or(4);
                    if every == 0 {
                        return Err(corrupt(format!(
                            "metadata key `{}` is 0",
                            k("full_attention_interval")
                        )));
                    }
                    (0..n_layer).map(|i| (i + 1) % every != 0).collect()
                }
            }
        } else {
            vec![pure_ssm; n_layer]
        };
        if (hybrid || qwen35) && recurrent.iter().all(|&r| r) {
            return Err(corrupt(format!(
                "a {arch} file marks every layer recurrent: no attention layer"
            )));
        }
        let attn_kv = || kv_heads.iter().zip(&recurrent).filter(|(_, &r)| !r);
        let n_kv_head = attn_kv().map(|(&kv, _)| kv).next().unwrap_or(n_head);
        if let Some((&bad, _)) = attn_kv()
            .find(|(&kv, _)| n_head == 0 || kv == 0 || n_head % kv != 0)
            .or((n_head == 0).then_some((&n_kv_head, &false)))
        {
            return Err(corrupt(format!("invalid head counts {n_head}/{bad}")));
        }
        let head_dim = meta
            .opt_usize(&k("attention.key_length"))
            .unwrap_or(hidden / n_head);
        // llama.cpp's Granite loaders take `rope.scaling.finetuned` as the switch for RoPE.
        // Without it no RoPE tables are built (Granite 4.0 H files claim a 1M context).
        let no_rope = hybrid && meta.opt_bool(&k("rope.scaling.finetuned")) == Some(false);
        let rope_dim = if pure_ssm || no_rope {
            0
        } else {
            meta.opt_usize(&k("rope.dimension_count"))
                .unwrap_or(head_dim)
                .min(head_dim)
        };
        let gemma = matches!(arch, "gemma2" | "gemma3" | "gemma4");
        let gpt_oss = arch == "gpt-oss";
        let gemma4 = arch == "gemma4";
        // Gemma 4 lists its sliding-window layers; llama.cpp requires the list.
        let swa_layers = if gemma4 {
            let v = meta.opt_bools(&k("attention.sliding_window_pattern"), n_layer)?;
            let missing = |key: &str| corrupt(format!("metadata key `{}` is missing", k(key)));
            if meta.opt_usize(&k("attention.sliding_window")).is_none() {
                return Err(missing("attention.sliding_window"));
            }
            Some(v.ok_or_else(|| missing("attention.sliding_window_pattern"))?)
        } else {
            None
        };
        let head_dim_swa = meta
            .opt_usize(&k("attention.key_length_swa"))
            .unwrap_or(head_dim);
        let rope_dim_swa = meta
            .opt_usize(&k("rope.dimension_count_swa"))
            .unwrap_or(rope_dim)
            .min(head_dim_swa);
        let shared_kv = if gemma4 {
            meta.opt_usize(&k("attention.shared_kv_layers"))
                .unwrap_or(0)
        } else {
            0
        };
        let granite = matches!(arch, "granite" | "granitemoe" | "granitehybrid");
        let rope_base = meta.opt_f32(&k("rope.freq_base")).unwrap_or(10_000.0);
        let positive = |v: Option<f32>| v.filter(|x| x.is_finite() && *x > 0.0);
        if arch == "olmo2" && meta.opt_usize(&k("attention.sliding_window")).unwrap_or(0) > 0 {
            return Err(EngineError::UnsupportedArchitecture {
                arch: "olmo2 with sliding-window attention (OLMo 3)".into(),
                supported: super::gguf::SUPPORTED_ARCHS.join(", "),
            });
        }
        let attn_scale = match arch {
            "granite" | "granitemoe" | "granitehybrid" => {
                positive(meta.opt_f32(&k("attention.scale"))).map(f64::from)
            }
            // llama.cpp's rule (from gemma_pytorch): the 27B model (46 layers) scales by the
            // hidden size per head, the others by the head size.
            "gemma2" if n_layer == 46 => Some(1.0 / ((hidden / n_head) as f64).sqrt()),
            "gemma4" => Some(1.0),
            _ => None,
        };
        let cfg = Self {
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
                "qwen2"
                    | "qwen3"
                    | "qwen3moe"
                    | "phi3"
                    | "gemma2"
                    | "gemma3"
                    | "gemma4"
                    | "olmo2"
                    | "gpt-oss"
                    | "qwen35"
                    | "qwen35moe"
            ),
            embed_scale: if gemma {
                Some((hidden as f64).sqrt())
            } else if granite {
                positive(meta.opt_f32(&k("embedding_scale"))).map(f64::from)
            } else {
                None
            },
            sliding_window: if gemma || gpt_oss {
                meta.opt_usize(&k("attention.sliding_window"))
                    .filter(|w| *w > 0)
            } else {
                None
            },
            sliding_pattern: meta
                .opt_usize(&k(if gpt_oss {
                    "attention.sliding_window_pattern"
                } else {
                    "attention.sliding_window_type"
                }))
                .unwrap_or(if arch == "gemma2" || gpt_oss { 2 } else { 6 })
                .max(1),
            rope_base_local: meta
                .opt_f32(&k("rope.local_freq_base"))
                .or_else(|| meta.opt_f32(&k("rope.freq_base_swa")))
                .unwrap_or(if arch == "gemma3" {
                    10_000.0
                } else {
                    rope_base
                }),
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
            final_softcap: if matches!(arch, "gemma2" | "gemma4") {
                positive(meta.opt_f32(&k("final_logit_softcapping")))
            } else {
                None
            },
            no_rope_step: (arch == "smollm3").then_some(4),
            experts_used: meta.opt_usize(&k("expert_used_count")).unwrap_or(0),
            oai_moe: gpt_oss,
            // Qwen3.5's `post_attention_norm` is its pre-FFN norm, as gpt-oss's.
            post_attn_norm_feeds_ffn: gpt_oss || qwen35,
            yarn: match meta.opt_str(&k("rope.scaling.type")) {
                Some("yarn") => positive(meta.opt_f32(&k("rope.scaling.factor")))
                    .filter(|f| *f > 1.0)
                    .map(|factor| Yarn {
                        factor,
                        orig_ctx: meta
                            .opt_usize(&k("rope.scaling.original_context_length"))
                            .or_else(|| meta.opt_usize(&k("context_length")))
                            .unwrap_or(2048),
                        beta_fast: 32.0,
                        beta_slow: 1.0,
                        attn_factor: positive(meta.opt_f32(&k("rope.scaling.attn_factor")))
                            .unwrap_or(1.0),
                    }),
                _ => None,
            },
            kv_heads_per_layer: kv_heads.iter().any(|&h| h != n_kv_head).then_some(kv_heads),
            swa_layers,
            head_dim_swa,
            rope_dim_swa,
            kv_layers: n_layer.saturating_sub(shared_kv),
            v_norm: gemma4,
            rope_attn_factor: positive(meta.opt_f32(&k("rope.scaling.attn_factor"))).unwrap_or(1.0),
            rope_orig_context: meta
                .opt_usize(&k("rope.scaling.original_context_length"))
                .unwrap_or(usize::MAX),
            per_layer_input: if gemma4 {
                meta.opt_usize(&k("embedding_length_per_layer_input"))
                    .unwrap_or(0)
            } else {
                0
            },
            ssm,
            recurrent,
            no_rope,
            delta_net: delta,
            attn_output_gate: qwen35,
            mrope_sections: if qwen35 {
                mrope_sections(meta, &k("rope.dimension_sections")).map_err(corrupt)?
            } else {
                None
            },
        };
        cfg.check_shared_kv().map_err(corrupt)?;
        Ok(cfg)
    }

    /// Whether the layers may be split between a GPU and the CPU (`engine.gpu_layers`): not
    /// with recurrent layers, whose state would straddle the crossing.
    pub fn splits(&self) -> bool {
        self.ssm.is_none() && self.delta_net.is_none()
    }

    /// Whether layer `i` is a state-space layer rather than attention.
    pub fn is_recurrent(&self, i: usize) -> bool {
        self.recurrent.get(i).copied().unwrap_or(false)
    }

    /// Whether layer `i` attends through the sliding window.
    pub fn is_swa(&self, i: usize) -> bool {
        match &self.swa_layers {
            Some(v) => v.get(i).copied().unwrap_or(false),
            None => self.sliding_window.is_some() && !(i + 1).is_multiple_of(self.sliding_pattern),
        }
    }

    pub fn layer_head_dim(&self, i: usize) -> usize {
        if self.is_swa(i) {
            self.head_dim_swa
        } else {
            self.head_dim
        }
    }

    pub fn layer_kv_heads(&self, i: usize) -> usize {
        self.kv_heads_per_layer
            .as_ref()
            .and_then(|v| v.get(i).copied())
            .unwrap_or(self.n_kv_head)
    }

    /// The layer whose KV cache layer `i` reads: its own, or for Gemma 4's shared-KV layers
    /// the last cache-owning layer of its type (full: the last, sliding: the one before).
    pub fn kv_source(&self, i: usize) -> usize {
        if i < self.kv_layers {
            i
        } else {
            self.kv_layers - if self.is_swa(i) { 2 } else { 1 }
        }
    }

    /// f32 values of K and V one position takes in one slot: cache-owning attention layers,
    /// every one counted in full (the unit recurrent state is counted in; see
    /// `Decoder::slot_state_positions`).
    pub fn kv_floats_per_token(&self) -> usize {
        (0..self.kv_layers.min(self.n_layer))
            .filter(|&i| !self.is_recurrent(i))
            .map(|i| 2 * self.layer_kv_heads(i) * self.layer_head_dim(i))
            .sum()
    }

    /// The window of cache `i` when it may keep only that many positions: a sliding-window
    /// layer's cache that no full-attention layer reads (Gemma 4 shares caches by layer type).
    pub fn cache_window(&self, i: usize) -> Option<usize> {
        let w = self.sliding_window?;
        let sliding_readers = (0..self.n_layer).all(|j| self.kv_source(j) != i || self.is_swa(j));
        (self.is_swa(i) && !self.is_recurrent(i) && sliding_readers).then_some(w)
    }

    /// f32 values of K and V layer `i`'s own cache holds at `positions` positions, fed in
    /// prompt chunks of at most `chunk`: 0 for a layer that owns none (a recurrent one, or one
    /// that reads another layer's), a windowed cache at most
    /// [`window_rows`](super::kv_cache::window_rows) of them.
    pub fn layer_kv_floats(&self, i: usize, positions: usize, chunk: usize) -> usize {
        if i >= self.kv_layers.min(self.n_layer) || self.is_recurrent(i) {
            return 0;
        }
        let rows = match self.cache_window(i) {
            Some(w) => positions.min(super::kv_cache::window_rows(w, chunk)),
            None => positions,
        };
        2 * self.layer_kv_heads(i) * self.layer_head_dim(i) * rows
    }

    /// The KV caches one slot holds, in layer order: cache-owning attention layers only.
    pub fn caches(&self) -> Vec<CacheShape> {
        (0..self.kv_layers.min(self.n_layer))
            .filter(|&i| !self.is_recurrent(i))
            .map(|i| CacheShape {
                floats_per_position: 2 * self.layer_kv_heads(i) * self.layer_head_dim(i),
                window: self.cache_window(i),
            })
            .collect()
    }

    /// Shared-KV layers must find a cache of their own kind (llama.cpp asserts the same).
    fn check_shared_kv(&self) -> Result<(), String> {
        if self.kv_layers == self.n_layer {
            return Ok(());
        }
        if self.kv_layers < 2 {
            return Err(format!(
                "{} of {} layers share an earlier layer's KV cache; at least 2 must own one",
                self.n_layer - self.kv_layers,
                self.n_layer
            ));
        }
        for i in self.kv_layers..self.n_layer {
            let src = self.kv_source(i);
            if self.is_swa(src) != self.is_swa(i)
                || self.layer_kv_heads(src) != self.layer_kv_heads(i)
            {
                return Err(format!(
                    "layer {i} shares the KV cache of layer {src}, which is of another kind"
                ));
            }
        }
        Ok(())
    }
}

/// A weight matrix: Q8_0, Q4_0/Q4_1/Q5_0/Q5_1 and Q4_K/Q5_K/Q6_K on Influence's own
/// kernels where the CPU runs them, otherwise candle's.
enum Linear {
    Q8(Arc<Q8Matrix>),
    K(Arc<KMatrix>),
    L(Arc<LMatrix>),
    /// MXFP4 (gpt-oss's experts): always the own kernel, which candle lacks.
    Mx(Arc<MxMatrix>),
    Candle(QMatMul),
}

/// A matrix repacked for one of Influence's own kernels (its GGUF copy is dropped).
enum Own {
    Q8(Q8Matrix),
    K(KMatrix),
    L(LMatrix),
}

enum Qkv {
    Separate {
        q: Linear,
        k: Linear,
        v: Linear,
    },
    Fused(Linear),
    /// Gemma 4 layers without `attn_v`: the values are the keys' projection (normed apart).
    KeyIsValue {
        q: Linear,
        k: Linear,
    },
    /// Gemma 4's shared-KV layers: queries only, attending over an earlier layer's cache.
    QueryOnly(Linear),
    /// A Granite hybrid's state-space layer: no attention; its mixer is this layer of the
    /// decoder's SSM stack (which holds its norm and output projection too).
    Recurrent(usize),
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
    router: Router,
    /// gpt-oss: added to the router's logits.
    router_bias: Option<Vec<f32>>,
    experts: Vec<Expert>,
    top_k: usize,
    /// Renormalise the chosen experts' weights to sum to 1 (qwen3moe, Mixtral, Granite MoE).
    norm: bool,
    /// gpt-oss: weights are the softmax of the chosen experts' logits, the gated unit is
    /// [`swiglu_oai`].
    oai: bool,
    /// An expert every token uses beside the routed ones, its output added to theirs
    /// (Granite 4.0 H Tiny/Small: `ffn_*_shexp`).
    shared: Option<Expert>,
    /// Qwen3.5 MoE: the shared expert's output is scaled by `sigmoid(h · w)` per token
    /// (`ffn_gate_inp_shexp`, one weight per hidden value).
    shared_gate: Option<Tensor>,
    /// Gemma 4: each branch reads the block's input through its own norm and is normed again
    /// before the two are added.
    gemma4: Option<Box<Gemma4Moe>>,
}

/// What Gemma 4's block adds around the experts (llama.cpp's `gemma4` graph): the shared
/// MLP is the layer's dense FFN behind `ffn_norm`, normed by `post_ffw_norm_1`; the experts
/// read the input through `pre_ffw_norm_2` and are normed by `post_ffw_norm_2`; the router
/// reads the input RMS-normed without a weight, times 1/sqrt(hidden), times its own scale.
struct Gemma4Moe {
    expert_norm: Tensor,
    shared_post_norm: Tensor,
    routed_post_norm: Tensor,
    /// `ffn_gate_inp.scale`: one factor per hidden value.
    router_scale: Tensor,
}

/// A mixture-of-experts router's weights.
enum Router {
    /// Float weights on the CPU, one row per expert: each token's logits are dot products in
    /// one fixed order whatever rows share the call. candle's f32 GEMM sums in another order
    /// at one row than at several, which can flip a near-tie between two experts, so a prompt
    /// resumed from a checkpoint would not give the numbers of the same prompt read whole.
    Host { w: Vec<f32>, hidden: usize },
    /// Quantized weights (the decoder's kernels) or a GPU's.
    Linear(Linear),
}

impl Router {
    fn load(l: &mut Loader, name: &str) -> Result<Router, EngineError> {
        let m = l.matmul(name)?;
        let w = match &m {
            Linear::Candle(QMatMul::Tensor(w) | QMatMul::TensorF16(w))
                if w.device().is_cpu() && w.rank() == 2 =>
            {
                w
            }
            _ => return Ok(Router::Linear(m)),
        };
        let hidden = w.dim(1)?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Router::Host { w, hidden })
    }

    /// Logits of every row of `h` (1, rows, hidden), row-major.
    fn logits(&self, h: &Tensor) -> candle_core::Result<Vec<f32>> {
        let (w, hidden) = match self {
            Router::Linear(m) => {
                return linear(m, h, false)?
                    .to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()
            }
            Router::Host { w, hidden } => (w, *hidden),
        };
        if h.dim(D::Minus1)? != hidden {
            candle_core::bail!(
                "the router reads {hidden} values per token, the layer gives {}",
                h.dim(D::Minus1)?
            );
        }
        let x = h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let n_exp = w.len() / hidden;
        let n = x.len() / hidden * n_exp;
        let mut out = vec![0f32; n];
        let out_ptr = out.as_mut_ptr() as usize;
        let work = |items: std::ops::Range<usize>| {
            for i in items {
                let (r, e) = (i / n_exp, i % n_exp);
                let v = dot8(
                    &x[r * hidden..(r + 1) * hidden],
                    &w[e * hidden..(e + 1) * hidden],
                );
                // SAFETY: each item writes its own element; ranges are disjoint.
                unsafe { *(out_ptr as *mut f32).add(i) = v };
            }
        };
        if n * hidden < 1 << 16 {
            work(0..n);
        } else {
            super::pool::run_chunked(n, work);
        }
        Ok(out)
    }
}

/// `Σ a·b` in 8 partial sums (vectorised), added in a fixed order.
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let whole = a.len() / 8 * 8;
    for (x, y) in a[..whole].chunks_exact(8).zip(b[..whole].chunks_exact(8)) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in a[whole..].iter().zip(&b[whole..]) {
        sum += x * y;
    }
    sum
}

struct Expert {
    gate: Linear,
    up: Linear,
    down: Linear,
    /// gpt-oss: biases of the gate, up and down projections.
    bias: Option<[Vec<f32>; 3]>,
    /// Gemma 4: the expert's output is multiplied by this before its routing weight
    /// (`ffn_down_exps.scale`, one value per expert).
    scale: Option<f32>,
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
    /// whose weights span every head). Gemma 4's shared-KV layers norm queries only.
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    /// Applies RoPE (SmolLM3 leaves every fourth layer without).
    rope: bool,
    /// None on recurrent layers only.
    o: Option<Linear>,
    /// gpt-oss: the output projection's bias.
    o_bias: Option<Tensor>,
    /// gpt-oss: one learned logit per query head that joins the softmax over keys and takes
    /// its share of the weight without adding a value.
    sinks: Option<Tensor>,
    ffn_norm: Option<Tensor>,
    ffn: Ffn,
    /// Gemma 3 norms applied to the attention and FFN outputs before the residual add.
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    /// Local (sliding-window) attention layer.
    sliding: bool,
    /// This layer's head width and KV heads (Gemma 4's differ between layer types).
    head_dim: usize,
    n_kv_head: usize,
    /// The KV cache (layer index) this layer appends to or, when shared, reads.
    kv_src: usize,
    /// Gemma 4: a scalar the layer's whole output is multiplied by.
    out_scale: Option<f64>,
    /// Gemma 4 E2B/E4B: the block that mixes the layer's per-layer input into the stream.
    per_layer: Option<PerLayerBlock>,
}

/// Gemma 4's per-layer embeddings: every token has a small extra embedding for each layer,
/// mixed with a projection of its main embedding.
struct PerLayerInput {
    /// `per_layer_token_embd`: (vocab, layers × width).
    embd: Embedding,
    /// `per_layer_model_proj`: hidden → layers × width.
    model_proj: Linear,
    proj_norm: Tensor,
    width: usize,
}

/// One layer's use of its per-layer input: `x + norm(proj(gelu(gate(x)) · input))`.
struct PerLayerBlock {
    gate: Linear,
    proj: Linear,
    post_norm: Tensor,
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
    rope: RopeTable,
    /// RoPE of local layers, when their base or width differs or the full layers' table
    /// carries frequency factors (Gemma 3, Gemma 4).
    local_rope: Option<RopeTable>,
    /// Gemma 4 E2B/E4B per-layer embeddings.
    per_layer: Option<PerLayerInput>,
    /// KV slots: one cache per layer for each sequence the engine holds.
    slots: Vec<Vec<KvCache>>,
    /// Sliding-window layers keep every position, as full layers do (tests compare the two).
    full_swa_cache: bool,
    /// What the KV caches hold (`engine.kv_cache`).
    kv_type: KvType,
    /// Mamba layers and their per-slot state, in place of `layers`.
    ssm: Option<ssm::SsmStack>,
    /// The device the first `on_device` layers compute on with candle's kernels: their
    /// weights, KV caches, RoPE rows and masks live there. The other layers run on the host
    /// with the own kernels. The output head goes with the last layer.
    device: Device,
    /// Layers on `device`: 0 on the CPU, all of them on a GPU that holds the whole model, fewer
    /// when it does not (`engine.gpu_layers`). With `device` the CPU and `on_device` above 0,
    /// those layers take the GPU path on the CPU (tests compare the two paths this way).
    on_device: usize,
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
    /// Where the tensors being loaded go.
    device: Device,
    /// Whether they run on the own CPU kernels (repacked at load) rather than candle's.
    own: bool,
    /// Convert Q4_1/Q5_0/Q5_1 matrices to Q8_0 at load (`INFLUENCE_REQUANT_Q8=1`): they then run
    /// on the Q8_0 kernel (1.3-1.6x faster generation, 1.5-1.8x faster prompts; ~1.3x on candle's
    /// kernels), with ~1.5x the memory for those weights and slightly different outputs.
    requant_q8: bool,
}

/// Whether `INFLUENCE_REQUANT_Q8=1` is set. It only acts on a CPU without the own kernels: with
/// them, Q4_1/Q5_0/Q5_1 decode as fast as Q8_0 per byte and a conversion would only cost memory.
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
            Source::Gguf(f) => f.has_tensor(name),
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
        let mut parts = self.expert_parts(name, 1)?;
        Ok(parts.pop().unwrap_or_default())
    }

    /// The experts of a stack whose matrices are `parts` matrices one above the other (Gemma
    /// 4's `ffn_gate_up_exps`: each expert's gate rows, then its up rows), cut apart: one list
    /// per part, each with one matrix per expert. Rows lie whole in the file, so each part of
    /// an expert is a contiguous run of its bytes.
    fn expert_parts(&mut self, name: &str, parts: usize) -> Result<Vec<Vec<Linear>>, EngineError> {
        if !matches!(self.src, Source::Gguf(_)) {
            return Err(EngineError::Candle(format!(
                "mixture-of-experts tensor `{name}` requested from a safetensors model"
            )));
        }
        if let Source::Gguf(f) = &self.src {
            if f.mxfp4.contains_key(name) {
                return self.mx_experts(name, parts);
            }
        }
        let q = self.qtensor(name)?;
        let (n_exp, rows, cols) = q.shape().dims3().map_err(|_| {
            self.corrupt(&format!(
                "tensor `{name}` is not a stack of expert matrices"
            ))
        })?;
        let dtype = q.dtype();
        let data = q.data()?;
        let parts = parts.max(1);
        if n_exp == 0 || data.len() % (n_exp * parts) != 0 || rows % parts != 0 {
            return Err(self.corrupt(&format!("tensor `{name}` has a ragged expert stack")));
        }
        let per = data.len() / (n_exp * parts);
        let mut out: Vec<Vec<Linear>> = (0..parts).map(|_| Vec::with_capacity(n_exp)).collect();
        for (i, chunk) in data.chunks_exact(per).enumerate() {
            let (e, part) = (i / parts, i % parts);
            let bytes = std::borrow::Cow::Borrowed(chunk);
            let storage = candle_core::quantized::QStorage::from_data(bytes, &self.device, dtype)?;
            let qe = QTensor::new(storage, (rows / parts, cols))?;
            let label = format!("{name}[{e}]");
            out[part].push(if self.own {
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

    /// The experts of a stacked MXFP4 tensor, each repacked for the own MXFP4 kernel (cut into
    /// `parts` as [`Loader::expert_parts`] cuts).
    fn mx_experts(&mut self, name: &str, parts: usize) -> Result<Vec<Vec<Linear>>, EngineError> {
        let (dims, data) = self.mx_bytes(name)?;
        let &[n_exp, rows, cols] = dims.as_slice() else {
            return Err(self.corrupt(&format!(
                "tensor `{name}` is not a stack of expert matrices"
            )));
        };
        let parts = parts.max(1);
        if n_exp == 0 || data.len() % (n_exp * parts) != 0 || rows % parts != 0 {
            return Err(self.corrupt(&format!("tensor `{name}` has a ragged expert stack")));
        }
        let per = data.len() / (n_exp * parts);
        let mut out: Vec<Vec<Linear>> = (0..parts).map(|_| Vec::with_capacity(n_exp)).collect();
        for (i, bytes) in data.chunks_exact(per).enumerate() {
            let (e, part) = (i / parts, i % parts);
            let m = MxMatrix::from_gguf_bytes(bytes, rows / parts, cols)
                .map_err(|r| self.corrupt(&format!("tensor `{name}[{e}]`: {r}")))?;
            out[part].push(Linear::Mx(Arc::new(m)));
        }
        Ok(out)
    }

    /// The shape and bytes of MXFP4 tensor `name`; MXFP4 runs on the CPU only.
    fn mx_bytes(&mut self, name: &str) -> Result<(Vec<usize>, Vec<u8>), EngineError> {
        if !self.own {
            return Err(EngineError::UnsupportedQuant {
                dtype: format!(
                    "MXFP4 (tensor `{name}`) on a GPU: Influence computes MXFP4 on the CPU only; run this model with --device cpu"
                ),
            });
        }
        match &mut self.src {
            Source::Gguf(f) => f.raw_bytes(name),
            Source::Dense { .. } => Err(self.missing(name)),
        }
    }

    /// Rows of a stacked per-expert vector tensor (expert biases), one `Vec` per expert.
    fn expert_rows(&mut self, name: &str) -> Result<Vec<Vec<f32>>, EngineError> {
        let t = self.qtensor(name)?.dequantize(&HOST)?;
        let (n_exp, len) = t
            .dims2()
            .map_err(|_| self.corrupt(&format!("tensor `{name}` is not one vector per expert")))?;
        let all = t.flatten_all()?.to_vec1::<f32>()?;
        Ok((0..n_exp)
            .map(|e| all[e * len..(e + 1) * len].to_vec())
            .collect())
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
            Source::Gguf(_) if !self.own => {
                let device = self.device.clone();
                Ok(Linear::Candle(QMatMul::from_qtensor(
                    self.qtensor_on(name, &device)?,
                )?))
            }
            Source::Gguf(f) if f.mxfp4.contains_key(name) => {
                let (dims, data) = self.mx_bytes(name)?;
                let &[n, k] = dims.as_slice() else {
                    return Err(self.corrupt(&format!("tensor `{name}` is not a matrix")));
                };
                MxMatrix::from_gguf_bytes(&data, n, k)
                    .map(|m| Linear::Mx(Arc::new(m)))
                    .map_err(|r| self.corrupt(&format!("tensor `{name}`: {r}")))
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
            GgmlDType::Q5K => KType::Q5K,
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
            Source::Gguf(_) if !self.own => Ok(Embedding::Quantized(Arc::new(self.qtensor(name)?))),
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
            // The own kernels' tables exist only on the host; with the first layers on a GPU
            // the rows go over.
            Embedding::Q8(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r))?.to_device(device),
            Embedding::K(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r))?.to_device(device),
            Embedding::L(m) => rows_of(ids, m.rows(), m.cols(), |r| m.row(r))?.to_device(device),
            Embedding::Quantized(q) => {
                let host = Tensor::new(ids, &HOST)?.unsqueeze(0)?;
                q.embedding(&host)?.to_dtype(DType::F32)?.to_device(device)
            }
            Embedding::Dense(w) => {
                let ids_t = Tensor::new(ids, w.device())?;
                w.index_select(&ids_t, 0)?
                    .reshape((1, ids.len(), w.dim(1)?))?
                    .to_device(device)
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

/// What RoPE's angles come from, for one kind of layer: the rows of the positions a batch
/// needs are computed per batch ([`RopeTable::rows`]) instead of a table of every position of
/// `context_length` kept for the model's life (2 MB on SmolLM2's 8,192 positions, 67 MB at
/// Llama 3.2's 131,072), at the cost of `rope_dim / 2` sines and cosines per new position.
struct RopeTable {
    /// Inverse frequency of each rotated pair (frequency factors applied).
    inv: Vec<f32>,
    /// Whether pair `i` turns with the position (M-RoPE: only the text sections do).
    turns: Vec<bool>,
    /// YaRN's (low, high, scale, mscale), when the model scales that way.
    yarn: Option<(f32, f32, f32, f32)>,
    /// Phi's `rope.scaling.attn_factor` (1 for the rest).
    attn_factor: f32,
}

/// The RoPE of layers that rotate `rope_dim` values of each head at `base` (frequency factors
/// divide the pairs' frequencies).
fn rope_tables(
    cfg: &DecoderConfig,
    rope_dim: usize,
    base: f32,
    freq_factors: Option<&[f32]>,
) -> RopeTable {
    let half = rope_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| {
            let f = 1.0 / base.powf((2 * i) as f32 / rope_dim as f32);
            match freq_factors.and_then(|ff| ff.get(i)) {
                Some(div) if *div > 0.0 => f / div,
                _ => f,
            }
        })
        .collect();
    let yarn = cfg
        .yarn
        .as_ref()
        .map(|y| yarn_params(y, cfg.rope_dim, base));
    let turns: Vec<bool> = (0..half)
        .map(|i| {
            cfg.mrope_sections
                .is_none_or(|s| mrope_text_pair_turns(&s, i))
        })
        .collect();
    RopeTable {
        inv,
        turns,
        yarn,
        attn_factor: cfg.rope_attn_factor,
    }
}

impl RopeTable {
    /// cos and sin of positions `pos..pos + t`, (t, rope_dim / 2) each, on `device`.
    fn rows(&self, pos: usize, t: usize, device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv.len();
        let mut cos = Vec::with_capacity(t * half);
        let mut sin = Vec::with_capacity(t * half);
        let m = self.attn_factor;
        for p in pos..pos + t {
            for (i, f) in self.inv.iter().enumerate() {
                let extrap = if self.turns[i] { p as f32 * f } else { 0.0 };
                match &self.yarn {
                    None => {
                        cos.push(extrap.cos() * m);
                        sin.push(extrap.sin() * m);
                    }
                    Some((low, high, scale, mscale)) => {
                        // ggml's rope_yarn: interpolated angles for the slow dimensions,
                        // extrapolated for the fast ones, a ramp between.
                        let interp = (1.0 / scale) * extrap;
                        let y = (i as f32 - low) / (high - low).max(0.001);
                        let mix = 1.0 - y.clamp(0.0, 1.0);
                        let theta = interp * (1.0 - mix) + extrap * mix;
                        cos.push(theta.cos() * mscale);
                        sin.push(theta.sin() * mscale);
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (t, half), device)?,
            Tensor::from_vec(sin, (t, half), device)?,
        ))
    }
}

/// Reads `rope.dimension_sections` (up to four counts; absent: plain RoPE).
fn mrope_sections(meta: &Meta, key: &str) -> Result<Option<[usize; 4]>, String> {
    use candle_core::quantized::gguf_file::Value;
    let Some(v) = meta.get(key) else {
        return Ok(None);
    };
    let bad = || format!("metadata key `{key}` is not an array of up to 4 section sizes");
    let Value::Array(items) = v else {
        return Err(bad());
    };
    if items.len() > 4 {
        return Err(bad());
    }
    let mut out = [0usize; 4];
    for (o, item) in out.iter_mut().zip(items) {
        *o = match item {
            Value::I32(x) => usize::try_from(*x).map_err(|_| bad())?,
            Value::U32(x) => *x as usize,
            _ => return Err(bad()),
        };
    }
    if out.iter().sum::<usize>() == 0 || out.iter().any(|&x| x > 1 << 16) {
        return Err(bad());
    }
    Ok(Some(out))
}

/// Whether pair `i` of a head turns for a text token under interleaved M-RoPE (ggml's
/// `ggml_mrope_cache_init` with `is_imrope`): pairs cycle time, height, width within each
/// section's share; the rest take the extra position, which is 0 for text.
fn mrope_text_pair_turns(sections: &[usize; 4], i: usize) -> bool {
    let sector = i % sections.iter().sum::<usize>();
    match sector % 3 {
        0 => sector < 3 * sections[0],
        1 => sector < 3 * sections[1],
        _ => sector < 3 * sections[2],
    }
}

/// YaRN's correction range (first and last dimension pair of the ramp), the scale factor and
/// the magnitude the tables carry, as llama.cpp computes them (`ggml_rope_yarn_corr_dims`, and
/// the context's attention factor, which cancels `rope_yarn`'s own `1 + 0.1 ln s` when the
/// file sets no log multiplier, leaving that factor times `rope.scaling.attn_factor`).
fn yarn_params(y: &Yarn, dims: usize, base: f32) -> (f32, f32, f32, f32) {
    let corr = |rot: f32| {
        dims as f32 * (y.orig_ctx as f32 / (rot * 2.0 * std::f32::consts::PI)).ln()
            / (2.0 * base.ln())
    };
    let low = corr(y.beta_fast).floor().max(0.0);
    let high = corr(y.beta_slow).ceil().min(dims as f32 - 1.0);
    let ln = (1.0 / (1.0 / y.factor)).ln();
    let attn = (0.1 * y.factor.ln() + 1.0) * (1.0 / (1.0 + 0.1 * y.factor.ln())) * y.attn_factor;
    (low, high, y.factor, attn * (1.0 + 0.1 * ln))
}

impl Decoder {
    /// Reads all weights, every layer on `device`. The caller has already validated the
    /// header (`gguf::open`).
    #[cfg(test)]
    pub fn load(f: &mut GgufFile, device: &Device) -> Result<Self, EngineError> {
        let all = if device.is_cpu() { 0 } else { usize::MAX };
        Self::load_split(f, device, all)
    }

    /// Reads all weights, the first `on_device` layers (and the output head when that is all
    /// of them) on `device`, the rest on the host.
    pub fn load_split(
        f: &mut GgufFile,
        device: &Device,
        on_device: usize,
    ) -> Result<Self, EngineError> {
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
                own: device.is_cpu(),
                // The Q8_0 conversion exists for the own CPU kernels.
                requant_q8: device.is_cpu()
                    && requant_q8_requested()
                    && super::simd::kernel().is_none(),
            },
            None,
            on_device,
        )
    }

    /// Loads a Hugging Face safetensors folder (f32/f16/bf16 weights, computed in f32), the
    /// first `on_device` layers on `device` as [`load_split`](Self::load_split) places them.
    pub fn load_safetensors(
        dir: &Path,
        cfg: DecoderConfig,
        tensors: HashMap<String, Tensor>,
        freq_factors: Option<Vec<f32>>,
        device: &Device,
        on_device: usize,
    ) -> Result<Self, EngineError> {
        Self::build(
            cfg,
            Loader {
                src: Source::Dense {
                    path: dir.to_path_buf(),
                    tensors,
                },
                device: device.clone(),
                own: device.is_cpu(),
                requant_q8: false,
            },
            freq_factors,
            on_device,
        )
    }

    fn build(
        cfg: DecoderConfig,
        mut l: Loader,
        freq_factors_hf: Option<Vec<f32>>,
        on_device: usize,
    ) -> Result<Self, EngineError> {
        let device = l.device.clone();
        let on_device = on_device.min(cfg.n_layer);
        let split = on_device > 0 && on_device < cfg.n_layer;
        if split && !cfg.splits() {
            return Err(EngineError::Device(format!(
                "{on_device} of {} layers on the GPU: Influence splits attention models only, \
                 and this one has recurrent layers; set engine.gpu_layers to \"auto\" or {} \
                 (all), or use --device cpu",
                cfg.n_layer, cfg.n_layer
            )));
        }
        // Each part is loaded where it runs: `on(true)` the device, `on(false)` the host.
        let place = |l: &mut Loader, on_dev: bool| {
            l.device = if on_dev { device.clone() } else { HOST };
            l.own = !on_dev;
        };
        // The embedding table, the output head and whatever is not in a layer go with the last
        // layer: the head is most of a small model's bytes and the first to leave the GPU.
        let head_on_device = on_device > 0 && on_device == cfg.n_layer;
        place(&mut l, head_on_device);
        let embed = l.embedding("token_embd.weight")?;
        let gpu_gguf = !l.own && matches!(l.src, Source::Gguf(_));
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
        // Llama 3.x (and Gemma 4's full layers) carry `rope_freqs`; Phi-3.5/Phi-4-mini carry
        // factors for short and long contexts and use those of the context the engine runs at.
        let phi_factors = if cfg.context_length > cfg.rope_orig_context {
            "rope_factors_long.weight"
        } else {
            "rope_factors_short.weight"
        };
        let freq_factors = match l.opt_dense("rope_freqs.weight")? {
            Some(t) => Some(t),
            None => l.opt_dense(phi_factors)?,
        };
        let freq_factors = match freq_factors {
            Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => freq_factors_hf,
        };
        let rope = rope_tables(&cfg, cfg.rope_dim, cfg.rope_base, freq_factors.as_deref());
        // Gemma 4's frequency factors are for its full layers only.
        let local_differs = cfg.rope_base_local != cfg.rope_base
            || cfg.rope_dim_swa != cfg.rope_dim
            || freq_factors.is_some();
        let local_rope = match cfg.sliding_window {
            Some(_) if local_differs => Some(rope_tables(
                &cfg,
                cfg.rope_dim_swa,
                cfg.rope_base_local,
                None,
            )),
            _ => None,
        };
        let per_layer = if cfg.per_layer_input > 0 {
            Some(PerLayerInput {
                embd: l.embedding("per_layer_token_embd.weight")?,
                model_proj: l.matmul("per_layer_model_proj.weight")?,
                proj_norm: l.dense("per_layer_proj_norm.weight")?,
                width: cfg.per_layer_input,
            })
        } else {
            None
        };

        let recurrent_layers: Vec<usize> =
            (0..cfg.n_layer).filter(|&i| cfg.is_recurrent(i)).collect();
        let ssm = match (cfg.ssm, cfg.delta_net) {
            (Some(sc), _) => Some(ssm::SsmStack::new(
                sc,
                recurrent_layers
                    .iter()
                    .map(|&i| ssm::load_layer(&mut l, &sc, i))
                    .collect::<Result<_, _>>()?,
                &l.device,
            )?),
            (None, Some(dc)) => Some(ssm::SsmStack::delta_net(
                dc,
                recurrent_layers
                    .iter()
                    .map(|&i| delta_net::load_layer(&mut l, &dc, i))
                    .collect::<Result<_, _>>()?,
                &l.device,
            )?),
            (None, None) => None,
        };
        // A Mamba file is its SSM stack alone; a hybrid's layers each add an FFN to their mixer.
        let pure_ssm = (0..cfg.n_layer).all(|i| cfg.is_recurrent(i));
        let attention_layers = if pure_ssm { 0 } else { cfg.n_layer };
        let mut layers = Vec::with_capacity(attention_layers);
        for i in 0..attention_layers {
            place(&mut l, i < on_device);
            let p = |s: &str| format!("blk.{i}.{s}");
            let kv_src = cfg.kv_source(i);
            let recurrent = cfg.is_recurrent(i);
            let qkv = if recurrent {
                Qkv::Recurrent((0..i).filter(|&j| cfg.is_recurrent(j)).count())
            } else if kv_src != i {
                // Whatever K/V projections the file has for this layer go unused.
                Qkv::QueryOnly(l.matmul(&p("attn_q.weight"))?)
            } else if l.has(&p("attn_qkv.weight")) {
                Qkv::Fused(l.matmul(&p("attn_qkv.weight"))?)
            } else if cfg.v_norm && !l.has(&p("attn_v.weight")) {
                Qkv::KeyIsValue {
                    q: l.matmul(&p("attn_q.weight"))?,
                    k: l.matmul(&p("attn_k.weight"))?,
                }
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
            let q_norm = l.opt_dense(&p("attn_q_norm.weight"))?;
            let k_norm = if kv_src == i {
                l.opt_dense(&p("attn_k_norm.weight"))?
            } else {
                None
            };
            if q_norm.is_some() != k_norm.is_some() && kv_src == i {
                return Err(l.corrupt(&format!(
                    "blk.{i} has only one of attn_q_norm and attn_k_norm"
                )));
            }
            let per_layer_block = if cfg.per_layer_input > 0 {
                Some(PerLayerBlock {
                    gate: l.matmul(&p("inp_gate.weight"))?,
                    proj: l.matmul(&p("proj.weight"))?,
                    post_norm: l.dense(&p("post_norm.weight"))?,
                })
            } else {
                None
            };
            let out_scale = match l.opt_dense(&p("layer_output_scale.weight"))? {
                Some(t) => Some(t.flatten_all()?.get(0)?.to_scalar::<f32>()? as f64),
                None => None,
            };
            let ffn = if l.has(&p("ffn_gate_inp.weight")) {
                // Gemma 4 files stack each expert's gate and up rows in one tensor.
                let (gate, up) = if l.has(&p("ffn_gate_up_exps.weight")) {
                    let mut gu = l.expert_parts(&p("ffn_gate_up_exps.weight"), 2)?;
                    let up = gu.pop().unwrap_or_default();
                    (gu.pop().unwrap_or_default(), up)
                } else {
                    (
                        l.experts(&p("ffn_gate_exps.weight"))?,
                        l.experts(&p("ffn_up_exps.weight"))?,
                    )
                };
                let down = l.experts(&p("ffn_down_exps.weight"))?;
                if gate.len() != up.len() || up.len() != down.len() || gate.is_empty() {
                    return Err(l.corrupt(&format!(
                        "blk.{i}: the expert tensors disagree on the expert count"
                    )));
                }
                let top_k = cfg.experts_used.clamp(1, gate.len());
                let n_exp = gate.len();
                let mut biases = match (
                    l.has(&p("ffn_gate_exps.bias")),
                    l.has(&p("ffn_up_exps.bias")),
                    l.has(&p("ffn_down_exps.bias")),
                ) {
                    (true, true, true) => {
                        let (g, u, d) = (
                            l.expert_rows(&p("ffn_gate_exps.bias"))?,
                            l.expert_rows(&p("ffn_up_exps.bias"))?,
                            l.expert_rows(&p("ffn_down_exps.bias"))?,
                        );
                        if g.len() != n_exp || u.len() != n_exp || d.len() != n_exp {
                            return Err(l.corrupt(&format!(
                                "blk.{i}: the expert biases disagree on the expert count"
                            )));
                        }
                        g.into_iter()
                            .zip(u)
                            .zip(d)
                            .map(|((g, u), d)| Some([g, u, d]))
                            .collect()
                    }
                    _ => vec![None; n_exp],
                };
                let router_bias = match l.opt_dense(&p("ffn_gate_inp.bias"))? {
                    Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
                    None => None,
                };
                let scales = match l.opt_dense(&p("ffn_down_exps.scale"))? {
                    Some(t) => {
                        let v = t.flatten_all()?.to_vec1::<f32>()?;
                        if v.len() != n_exp {
                            return Err(l.corrupt(&format!(
                                "blk.{i}.ffn_down_exps.scale has {} values for {n_exp} experts",
                                v.len()
                            )));
                        }
                        v.into_iter().map(Some).collect()
                    }
                    None => vec![None; n_exp],
                };
                let gemma4 = match l.opt_dense(&p("ffn_gate_inp.scale"))? {
                    Some(router_scale) => Some(Box::new(Gemma4Moe {
                        expert_norm: l.dense(&p("pre_ffw_norm_2.weight"))?,
                        shared_post_norm: l.dense(&p("post_ffw_norm_1.weight"))?,
                        routed_post_norm: l.dense(&p("post_ffw_norm_2.weight"))?,
                        router_scale,
                    })),
                    None => None,
                };
                Ffn::Moe(Moe {
                    router: Router::load(&mut l, &p("ffn_gate_inp.weight"))?,
                    router_bias,
                    experts: gate
                        .into_iter()
                        .zip(up)
                        .zip(down)
                        .zip(biases.iter_mut())
                        .zip(scales)
                        .map(|((((gate, up), down), bias), scale)| Expert {
                            gate,
                            up,
                            down,
                            bias: bias.take(),
                            scale,
                        })
                        .collect(),
                    top_k,
                    norm: !cfg.oai_moe,
                    oai: cfg.oai_moe,
                    shared_gate: l.opt_dense(&p("ffn_gate_inp_shexp.weight"))?,
                    shared: if l.has(&p("ffn_up_shexp.weight")) {
                        Some(Expert {
                            gate: l.matmul(&p("ffn_gate_shexp.weight"))?,
                            up: l.matmul(&p("ffn_up_shexp.weight"))?,
                            down: l.matmul(&p("ffn_down_shexp.weight"))?,
                            bias: None,
                            scale: None,
                        })
                    } else if gemma4.is_some() {
                        // Gemma 4's shared MLP is the layer's dense FFN.
                        Some(Expert {
                            gate: l.matmul(&p("ffn_gate.weight"))?,
                            up: l.matmul(&p("ffn_up.weight"))?,
                            down: l.matmul(&p("ffn_down.weight"))?,
                            bias: None,
                            scale: None,
                        })
                    } else {
                        None
                    },
                    gemma4,
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
            let (ffn_norm, post_attn_norm) = if cfg.post_attn_norm_feeds_ffn {
                (l.opt_dense(&p("post_attention_norm.weight"))?, None)
            } else {
                (
                    l.opt_dense(&p("ffn_norm.weight"))?,
                    l.opt_dense(&p("post_attention_norm.weight"))?,
                )
            };
            let sinks = l.opt_dense(&p("attn_sinks.weight"))?;
            if let Some(s) = &sinks {
                if s.elem_count() != cfg.n_head {
                    return Err(l.corrupt(&format!(
                        "blk.{i}.attn_sinks has {} values for {} heads",
                        s.elem_count(),
                        cfg.n_head
                    )));
                }
            }
            layers.push(Layer {
                // A recurrent layer's norm belongs to its mixer.
                attn_norm: if recurrent {
                    None
                } else {
                    l.opt_dense(&p("attn_norm.weight"))?
                },
                qkv,
                bias,
                q_norm,
                k_norm,
                o: if recurrent {
                    None
                } else {
                    Some(l.matmul(&p("attn_output.weight"))?)
                },
                o_bias: l.opt_dense(&p("attn_output.bias"))?,
                sinks,
                ffn_norm,
                rope: !cfg.no_rope && cfg.no_rope_step.is_none_or(|n| (i + 1) % n != 0),
                ffn,
                post_attn_norm,
                post_ffn_norm: l.opt_dense(&p("post_ffw_norm.weight"))?,
                sliding: cfg.sliding_window.is_some() && cfg.is_swa(i),
                head_dim: cfg.layer_head_dim(i),
                n_kv_head: cfg.layer_kv_heads(i),
                kv_src,
                out_scale,
                per_layer: per_layer_block,
            });
        }
        Ok(Self {
            cfg,
            embed,
            layers,
            out_norm,
            lm_head,
            rope,
            local_rope,
            per_layer,
            slots: Vec::new(),
            full_swa_cache: false,
            kv_type: KvType::from_env(),
            ssm,
            device,
            on_device,
        })
    }

    /// Holds new KV caches in `kind` (f32 or f16) from now on; slots already allocated are
    /// released first, so set it before decoding. (Loading takes `engine.kv_cache`.)
    #[cfg(test)]
    pub fn set_kv_type(&mut self, kind: KvType) {
        if kind != self.kv_type {
            for slot in 0..self.slots.len() {
                self.release_slot(slot);
            }
            for c in self.slots.iter_mut().flatten() {
                c.hold(kind);
            }
            self.kv_type = kind;
        }
    }

    /// What the KV caches hold.
    pub fn kv_type(&self) -> KvType {
        self.kv_type
    }

    /// Whether this decoder computes on the CPU alone (its own kernels), no layer on a GPU.
    pub fn on_cpu(&self) -> bool {
        self.on_device == 0
    }

    /// Layers on the device and layers in all (`engine.gpu_layers` as it was applied).
    pub fn layers_on_device(&self) -> (usize, usize) {
        (self.on_device, self.cfg.n_layer)
    }

    /// Where layer `li` computes.
    fn layer_device(&self, li: usize) -> &Device {
        if li < self.on_device {
            &self.device
        } else {
            &HOST
        }
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
        // A hybrid's attention layers follow its state back to where the state could go.
        let n = match &mut self.ssm {
            Some(r) => r.state.truncate(slot, n),
            None => n,
        };
        if let Some(s) = self.slots.get_mut(slot) {
            // A windowed cache may have dropped what a shorter prefix would need again.
            let n = s.iter().map(|c| c.keepable(n)).min().unwrap_or(n);
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
        // A hybrid's recurrent layers keep their (empty) caches, windowed caches stop at
        // their window: ask a full attention layer's, else a windowed one's.
        let attends = |i: &usize| !self.cfg.is_recurrent(*i);
        let first = (0..self.caches_per_slot())
            .filter(attends)
            .find(|&i| self.cfg.cache_window(i).is_none() || self.full_swa_cache)
            .or_else(|| (0..self.cfg.n_layer).find(attends))
            .unwrap_or(0);
        self.slots
            .get(slot)
            .and_then(|s| s.get(first))
            .map_or(0, |c| c.capacity())
    }

    /// Bytes of K and V buffers allocated across every slot (what the caches really hold).
    pub fn kv_bytes_allocated(&self) -> usize {
        self.slots.iter().flatten().map(KvCache::bytes).sum()
    }

    /// Whether prompt chunks of several sequences may share one forward pass without changing
    /// any row's numbers: true unless some matrix runs a lone chunk on a kernel that a packed
    /// batch would not use (see [`linear`]).
    pub fn packs_prompts(&self) -> bool {
        // candle's GPU kernels change with the row count; keep prompt chunks alone there.
        // Mamba's lone chunks take the dense path through its projections.
        if !self.on_cpu() || self.ssm.is_some() {
            return false;
        }
        // A lone chunk would take the dense GEMM, or candle's multi-row Q6_K kernel where a
        // packed batch takes its single-row one. Only candle's matrices can: the own kernels
        // (every K-quant included, wherever they run) give a row the same numbers in any batch.
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
                Qkv::KeyIsValue { q, k } => dense(q) || dense(k),
                Qkv::Fused(w) | Qkv::QueryOnly(w) => dense(w),
                Qkv::Recurrent(_) => false,
            };
            let per_layer = l
                .per_layer
                .as_ref()
                .is_some_and(|b| dense(&b.gate) || dense(&b.proj));
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
                Ffn::Moe(m) => {
                    m.experts.iter().any(|e| {
                        [&e.gate, &e.up, &e.down]
                            .iter()
                            .any(|w| matches!(w, Linear::Candle(_)))
                    }) || m
                        .shared
                        .as_ref()
                        .is_some_and(|e| dense(&e.gate) || dense(&e.up) || dense(&e.down))
                }
            };
            qkv || ffn || per_layer || l.o.as_ref().is_some_and(dense)
        };
        let per_layer_dense = self
            .per_layer
            .as_ref()
            .is_some_and(|p| dense(&p.model_proj));
        !dense(&self.lm_head) && !per_layer_dense && !self.layers.iter().any(layer_dense)
    }

    /// KV caches a slot holds: one per layer, less Gemma 4's shared-KV layers.
    pub fn caches_per_slot(&self) -> usize {
        self.cfg.kv_layers.min(self.cfg.n_layer)
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

    /// `bytes` of recurrent state as the KV positions that take as many bytes, so that one
    /// budget in positions bounds both. A model without attention layers has no positions to
    /// count in: its states are bounded by the slot count alone (0 here).
    fn as_positions(&self, bytes: usize) -> usize {
        let per = self.cfg.kv_floats_per_token() * self.kv_type.size();
        if per == 0 {
            0
        } else {
            bytes.div_ceil(per)
        }
    }

    /// Slot `slot`'s recurrent state and checkpoints now, in KV positions (see `as_positions`).
    pub fn slot_state_positions(&self, slot: usize) -> usize {
        self.as_positions(self.ssm.as_ref().map_or(0, |r| r.state.slot_bytes(slot)))
    }

    /// What one sequence's recurrent state grows to with its full share of checkpoints, in KV
    /// positions: what a sequence reserves on top of its prompt and answer.
    pub fn state_positions_reserve(&self) -> usize {
        self.as_positions((1 + recurrent::CHECKPOINTS_PER_SLOT) * self.state_bytes_per_slot())
    }

    fn slot_caches(&mut self, slot: usize) -> &mut Vec<KvCache> {
        while self.slots.len() <= slot {
            let n = self.cfg.context_length;
            let caches = self.caches_per_slot();
            let cfg = &self.cfg;
            let full = self.full_swa_cache;
            let kind = self.kv_type;
            self.slots.push(
                (0..caches)
                    .map(|i| match cfg.cache_window(i).filter(|_| !full) {
                        Some(w) => KvCache::windowed(n, w).holding(kind),
                        None => KvCache::new(n).holding(kind),
                    })
                    .collect(),
            );
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
        let first = self.layer_device(0).clone();
        let head = self
            .layer_device(self.cfg.n_layer.saturating_sub(1))
            .clone();
        let mut x = self.embed.lookup(&all, &first)?;
        if let Some(scale) = self.cfg.embed_scale {
            // llama.cpp scales Gemma's embeddings by sqrt(hidden) in f32, Granite's by its
            // multiplier; either way one multiply.
            x = (x * scale)?;
        }
        // Gemma 4's per-layer inputs are made where the head is, and each layer takes its own.
        let per_layer_inputs = match &self.per_layer {
            Some(p) => Some(per_layer_inputs(
                p,
                &all,
                &x.to_device(&head)?,
                &self.cfg,
                &head,
                dense_ok,
            )?),
            None => None,
        };
        // Per-sequence attention inputs: row offset, length, masks and RoPE rows; a second set
        // on the host when the layers are split between a GPU and the CPU.
        let split = self.on_device > 0 && self.on_device < self.layers.len();
        let mut parts = Vec::with_capacity(seqs.len());
        let mut host_parts = Vec::new();
        let mut offset = 0;
        for s in seqs {
            let t = s.ids.len();
            let pos = self.slot_len(s.slot);
            parts.push(self.seq_part(s.slot, offset, t, pos, &first)?);
            if split {
                host_parts.push(self.seq_part(s.slot, offset, t, pos, &HOST)?);
            }
            offset += t;
            self.slot_caches(s.slot);
        }
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
        if let Some(r) = &mut self.ssm {
            if self.layers.is_empty() {
                x = r.forward(x, &rs, self.cfg.rms_eps as f32, dense_ok)?;
            }
        }
        // A hybrid's recurrent layers run inside the loop below and end the pass after it.
        let mut snaps = ssm::SsmStack::snapshots(&rs);
        let cfg = &self.cfg;
        let eps = cfg.rms_eps as f32;
        for (li, layer) in self.layers.iter().enumerate() {
            // The one crossing of a split model: its activations leave the GPU once per step.
            let parts = if split && li >= self.on_device {
                if x.device().same_device(&self.device) {
                    x = x.to_device(&HOST)?;
                }
                &host_parts
            } else {
                &parts
            };
            let norm = |x: &Tensor, w: &Option<Tensor>| match w {
                Some(w) => ops::rms_norm(x, w, eps),
                None => Ok(x.clone()),
            };
            let mut attn = match (&layer.qkv, &mut self.ssm) {
                (Qkv::Recurrent(r), Some(stack)) => {
                    stack.mix(*r, &x, &rs, &mut snaps, eps, dense_ok)?
                }
                (Qkv::Recurrent(_), None) => {
                    candle_core::bail!("layer {li} is recurrent but the model has no SSM layers")
                }
                _ => {
                    let h = norm(&x, &layer.attn_norm)?;
                    attention(cfg, layer, &h, parts, &mut self.slots, dense_ok)?
                }
            };
            if let Some(n) = &layer.post_attn_norm {
                attn = ops::rms_norm(&attn, n, eps)?;
            }
            if let Some(r) = cfg.residual_scale {
                attn = (attn * r)?;
            }
            x = ops::add(&x, &attn)?;
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
                            if cfg.gelu {
                                (act(&g)? * u)?
                            } else {
                                ops::silu_mul(&g, &u)?
                            }
                        }
                        GateUp::Fused(w) => {
                            let gu = linear(w, &h, dense_ok)?;
                            let n = gu.dim(D::Minus1)? / 2;
                            if cfg.gelu {
                                (act(&gu.narrow(D::Minus1, 0, n)?)?
                                    * gu.narrow(D::Minus1, n, n)?)?
                            } else {
                                ops::silu_mul_halves(&gu, n)?
                            }
                        }
                    };
                    linear(down, &ff, dense_ok)?
                }
                Ffn::Moe(moe) => {
                    let routed = match &moe.gemma4 {
                        Some(g4) => {
                            let experts_in = ops::rms_norm(&x, &g4.expert_norm, eps)?;
                            let hidden = x.dim(D::Minus1)?;
                            let ones = Tensor::ones(hidden, DType::F32, x.device())?;
                            let router_in = (ops::rms_norm(&x, &ones, eps)?
                                * (1.0 / (hidden as f64).sqrt()))?
                            .broadcast_mul(&g4.router_scale)?;
                            let routed = moe_forward(moe, &experts_in, &router_in, &act)?;
                            ops::rms_norm(&routed, &g4.routed_post_norm, eps)?
                        }
                        None => moe_forward(moe, &h, &h, &act)?,
                    };
                    match &moe.shared {
                        Some(e) => {
                            let [g, u] = linear_many([&e.gate, &e.up], &h, dense_ok)?;
                            let glu = if cfg.gelu {
                                (act(&g)? * u)?
                            } else {
                                ops::silu_mul(&g, &u)?
                            };
                            let shared = linear(&e.down, &glu, dense_ok)?;
                            let shared = match (&moe.shared_gate, &moe.gemma4) {
                                (Some(w), _) => {
                                    let logit = h.broadcast_mul(w)?.sum_keepdim(D::Minus1)?;
                                    shared.broadcast_mul(&candle_nn::ops::sigmoid(&logit)?)?
                                }
                                (None, Some(g4)) => {
                                    ops::rms_norm(&shared, &g4.shared_post_norm, eps)?
                                }
                                (None, None) => shared,
                            };
                            (shared + routed)?
                        }
                        None => routed,
                    }
                }
            };
            if let Some(n) = &layer.post_ffn_norm {
                ff = ops::rms_norm(&ff, n, eps)?;
            }
            if let Some(r) = cfg.residual_scale {
                ff = (ff * r)?;
            }
            x = ops::add(&x, &ff)?;
            if let (Some(b), Some(inputs)) = (&layer.per_layer, &per_layer_inputs) {
                let own = inputs.narrow(2, li, 1)?.squeeze(2)?.to_device(x.device())?;
                let g = (linear(&b.gate, &x, dense_ok)?.gelu()? * own)?;
                let out = linear(&b.proj, &g, dense_ok)?;
                x = ops::add(&x, &ops::rms_norm(&out, &b.post_norm, eps)?)?;
            }
            if let Some(s) = layer.out_scale {
                x = (x * s)?;
            }
        }
        if let Some(r) = &mut self.ssm {
            if !self.layers.is_empty() {
                r.finish(&rs, snaps);
            }
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
        let last = ops::rms_norm(&last, &self.out_norm, eps)?;
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
        dev: &Device,
    ) -> candle_core::Result<SeqPart> {
        let kv = pos + t;
        let mask = (t > 1 && !self.layers.is_empty())
            .then(|| causal_mask(t, pos, None, dev))
            .transpose()?;
        let local_mask = match self.cfg.sliding_window {
            Some(w) if t > 1 || kv > w => Some(causal_mask(t, pos, Some(w), dev)?),
            _ => None,
        };
        let local = match &self.local_rope {
            Some(r) => Some(r.rows(pos, t, dev)?),
            None => None,
        };
        let (cos, sin) = self.rope.rows(pos, t, dev)?;
        Ok(SeqPart {
            slot,
            offset,
            t,
            mask,
            local_mask,
            cos,
            sin,
            local,
        })
    }
}

/// Gemma 4's per-layer inputs of every row, (1, rows, layers, width): the token's per-layer
/// embedding (times sqrt(width)) plus the normed projection of its scaled main embedding `x`
/// (times 1/sqrt(hidden)), the sum over sqrt(2), as llama.cpp and transformers compute them.
fn per_layer_inputs(
    p: &PerLayerInput,
    ids: &[u32],
    x: &Tensor,
    cfg: &DecoderConfig,
    device: &Device,
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let (_, rows, hidden) = x.dims3()?;
    let shape = (1, rows, cfg.n_layer, p.width);
    let tok = (p.embd.lookup(ids, device)?.reshape(shape)? * (p.width as f64).sqrt())?;
    let proj = (linear(&p.model_proj, x, dense_ok)? * (1.0 / (hidden as f64).sqrt()))?;
    let proj = candle_nn::ops::rms_norm(&proj.reshape(shape)?, &p.proj_norm, cfg.rms_eps as f32)?;
    (proj + tok)? * std::f64::consts::FRAC_1_SQRT_2
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
/// over its logits of `router_in` (`h` itself but in Gemma 4) picks each row's `top_k`
/// experts (ties to the lower index, as a stable sort), then every expert runs once over the
/// rows that chose it and its output is added to theirs, weighted.
fn moe_forward(
    moe: &Moe,
    h: &Tensor,
    router_in: &Tensor,
    act: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (_, rows, hidden) = h.dims3()?;
    let n_exp = moe.experts.len();
    let mut logits = moe.router.logits(router_in)?;
    if let Some(b) = &moe.router_bias {
        for row in logits.chunks_exact_mut(n_exp) {
            for (l, b) in row.iter_mut().zip(b) {
                *l += b;
            }
        }
    }
    // Per expert: the rows that chose it and their weights.
    let mut chosen: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n_exp];
    for r in 0..rows {
        let l = &logits[r * n_exp..(r + 1) * n_exp];
        if moe.oai {
            // gpt-oss (llama.cpp's SOFTMAX_WEIGHT gating): the top k by logit, weighted by
            // the softmax of their logits alone.
            let mut order: Vec<usize> = (0..n_exp).collect();
            order.sort_by(|&a, &b| l[b].total_cmp(&l[a]));
            let top = &order[..moe.top_k];
            let max = l[top[0]];
            let e: Vec<f32> = top.iter().map(|&i| (l[i] - max).exp()).collect();
            let sum: f32 = e.iter().sum();
            for (&i, v) in top.iter().zip(&e) {
                chosen[i].push((r, v * (1.0 / sum)));
            }
            continue;
        }
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
    let mut out = vec![0f32; rows * hidden];
    let picked: Vec<usize> = (0..n_exp).filter(|&e| !chosen[e].is_empty()).collect();
    let ys = match rows {
        1 => moe_row(moe, &picked, h, act)?,
        _ => None,
    };
    let ys = match ys {
        Some(ys) => ys,
        None => expert_outputs(moe, &picked, &chosen, h, act)?,
    };
    for ((&e, mut y), picks) in picked
        .iter()
        .zip(ys)
        .zip(picked.iter().map(|&e| &chosen[e]))
    {
        let ex = &moe.experts[e];
        if let Some([_, _, db]) = &ex.bias {
            for row in y.chunks_exact_mut(hidden) {
                for (v, b) in row.iter_mut().zip(db) {
                    *v += b;
                }
            }
        }
        // llama.cpp scales the down projection's output, then weights it.
        if let Some(s) = ex.scale {
            for v in y.iter_mut() {
                *v *= s;
            }
        }
        for (j, &(r, w)) in picks.iter().enumerate() {
            let dst = &mut out[r * hidden..(r + 1) * hidden];
            for (d, v) in dst.iter_mut().zip(&y[j * hidden..(j + 1) * hidden]) {
                *d += w * v;
            }
        }
    }
    Tensor::from_vec(out, (1, rows, hidden), h.device())
}

/// One row (decoding) through its chosen experts on host vectors, when they all run on one
/// own kernel type: the gate and up projections in one call on one quantization of the row,
/// the down projections in one parallel region. Bit-identical to [`expert_outputs`] (the same
/// kernels on the same values, without the tensors around them); `None` for other experts.
fn moe_row(
    moe: &Moe,
    picked: &[usize],
    h: &Tensor,
    act: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Option<Vec<Vec<f32>>>> {
    let gu: Vec<&Linear> = picked
        .iter()
        .flat_map(|&e| [&moe.experts[e].gate, &moe.experts[e].up])
        .collect();
    let downs: Vec<&Linear> = picked.iter().map(|&e| &moe.experts[e].down).collect();
    fn mx<'a>(ws: &[&'a Linear]) -> Option<Vec<&'a MxMatrix>> {
        ws.iter()
            .map(|w| match w {
                Linear::Mx(m) => Some(&**m),
                _ => None,
            })
            .collect()
    }
    fn kq<'a>(ws: &[&'a Linear]) -> Option<Vec<&'a KMatrix>> {
        ws.iter()
            .map(|w| match w {
                Linear::K(m) => Some(&**m),
                _ => None,
            })
            .collect()
    }
    let x = h.flatten_all()?.to_vec1::<f32>()?;
    let gate_up = if let (Some(g), Some(d)) = (mx(&gu), mx(&downs)) {
        if g.iter().any(|w| w.cols() != x.len()) {
            return Ok(None);
        }
        (mxfp4::matmul(&g, &x, 1), Kind::Mx(d))
    } else if let (Some(g), Some(d)) = (kq(&gu), kq(&downs)) {
        if g.iter().any(|w| w.cols() != x.len()) {
            return Ok(None);
        }
        (kq::matmul(&g, &x, 1), Kind::K(d))
    } else {
        return Ok(None);
    };
    enum Kind<'a> {
        Mx(Vec<&'a MxMatrix>),
        K(Vec<&'a KMatrix>),
    }
    let (outs, downs) = gate_up;
    let mut glus = Vec::with_capacity(picked.len());
    for (&e, pair) in picked.iter().zip(outs.chunks_exact(2)) {
        let (g, u) = (&pair[0], &pair[1]);
        glus.push(if moe.oai {
            swiglu_oai_row(g, u, g.len(), moe.experts[e].bias.as_ref())
        } else {
            let t = |v: &Vec<f32>| Tensor::from_slice(v, (1, 1, v.len()), h.device());
            (act(&t(g)?)? * t(u)?)?.flatten_all()?.to_vec1::<f32>()?
        });
    }
    let rows: Vec<&[f32]> = glus.iter().map(|g| g.as_slice()).collect();
    Ok(Some(match downs {
        Kind::Mx(d) if d.iter().all(|w| w.cols() == rows[0].len()) => mxfp4::matmul_each(&d, &rows),
        Kind::K(d) if d.iter().all(|w| w.cols() == rows[0].len()) => kq::matmul_each(&d, &rows),
        _ => return Ok(None),
    }))
}

/// Every picked expert's down-projected output over the rows that chose it (`chosen[e]`'s
/// order), each `rows × hidden` row-major.
fn expert_outputs(
    moe: &Moe,
    picked: &[usize],
    chosen: &[Vec<(usize, f32)>],
    h: &Tensor,
    act: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let (_, rows, hidden) = h.dims3()?;
    let n_exp = moe.experts.len();
    let flat = h.reshape((rows, hidden))?;
    // One row: every chosen expert reads the same input, so their gate and up projections run
    // in one call on one quantization of it, instead of one call per expert.
    let mut shared: Vec<Option<(Tensor, Tensor)>> = vec![None; n_exp];
    if rows == 1 && picked.len() > 1 {
        let ws: Vec<&Linear> = picked
            .iter()
            .flat_map(|&e| [&moe.experts[e].gate, &moe.experts[e].up])
            .collect();
        let mut outs = linear_slice(&ws, h, false)?.into_iter();
        for &e in picked {
            if let (Some(g), Some(u)) = (outs.next(), outs.next()) {
                shared[e] = Some((g, u));
            }
        }
    }
    // Each picked expert's gated unit over the rows that chose it.
    let mut glus = Vec::with_capacity(picked.len());
    for &e in picked {
        let ex = &moe.experts[e];
        let [g, u] = match shared[e].take() {
            Some((g, u)) => [g, u],
            None => {
                let idx: Vec<u32> = chosen[e].iter().map(|&(r, _)| r as u32).collect();
                let idx = Tensor::new(idx.as_slice(), h.device())?;
                let x = flat.index_select(&idx, 0)?.unsqueeze(0)?;
                linear_many([&ex.gate, &ex.up], &x, false)?
            }
        };
        glus.push(if moe.oai {
            swiglu_oai(&g, &u, ex.bias.as_ref())?
        } else {
            (act(&g)? * u)?
        });
    }
    let downs: Vec<&Linear> = picked.iter().map(|&e| &moe.experts[e].down).collect();
    down_projections(&downs, &glus, rows == 1)
}

/// The experts' down projections, each on its own input. Decoding one row, matrices of one own
/// kernel type run in one parallel region (`matmul_each`), bit-identical to one call each.
fn down_projections(
    downs: &[&Linear],
    inputs: &[Tensor],
    one_row: bool,
) -> candle_core::Result<Vec<Vec<f32>>> {
    let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
    if one_row && downs.len() > 1 {
        let kq: Vec<&KMatrix> = downs
            .iter()
            .filter_map(|w| match w {
                Linear::K(m) => Some(&**m),
                _ => None,
            })
            .collect();
        let mx: Vec<&MxMatrix> = downs
            .iter()
            .filter_map(|w| match w {
                Linear::Mx(m) => Some(&**m),
                _ => None,
            })
            .collect();
        if kq.len() == downs.len() || mx.len() == downs.len() {
            let data = inputs
                .iter()
                .map(flat)
                .collect::<candle_core::Result<Vec<_>>>()?;
            let rows: Vec<&[f32]> = data.iter().map(|d| d.as_slice()).collect();
            let fits = |k: usize| rows.iter().all(|r| r.len() == k);
            if kq.len() == downs.len() && fits(kq[0].cols()) {
                return Ok(kq::matmul_each(&kq, &rows));
            }
            if mx.len() == downs.len() && fits(mx[0].cols()) {
                return Ok(mxfp4::matmul_each(&mx, &rows));
            }
        }
    }
    downs
        .iter()
        .zip(inputs)
        .map(|(w, x)| flat(&linear(w, x, false)?))
        .collect()
}

/// OpenAI's gated unit (llama.cpp's `swiglu_oai`, α = 1.702, limit 7) on gate and up
/// projections `g` and `u` plus their biases: `x · σ(α·x) · (y + 1)` with `x = min(g, 7)` and
/// `y = clamp(u, −7, 7)`.
fn swiglu_oai(g: &Tensor, u: &Tensor, bias: Option<&[Vec<f32>; 3]>) -> candle_core::Result<Tensor> {
    let dims = g.dims().to_vec();
    let n = *dims.last().unwrap_or(&1);
    let gv = g.flatten_all()?.to_vec1::<f32>()?;
    let uv = u.flatten_all()?.to_vec1::<f32>()?;
    Tensor::from_vec(
        swiglu_oai_row(&gv, &uv, n, bias),
        dims.as_slice(),
        g.device(),
    )
}

/// [`swiglu_oai`] on host rows of `n` values (the biases' length).
fn swiglu_oai_row(g: &[f32], u: &[f32], n: usize, bias: Option<&[Vec<f32>; 3]>) -> Vec<f32> {
    const ALPHA: f32 = 1.702;
    const LIMIT: f32 = 7.0;
    let n = n.max(1);
    let zero = vec![0f32; n];
    let (gb, ub) = match bias {
        Some([gb, ub, _]) => (gb.as_slice(), ub.as_slice()),
        None => (zero.as_slice(), zero.as_slice()),
    };
    let mut out = Vec::with_capacity(g.len());
    for (gr, ur) in g.chunks(n).zip(u.chunks(n)) {
        out.extend(
            gr.iter()
                .zip(ur)
                .zip(gb.iter().zip(ub))
                .map(|((&g, &u), (&gb, &ub))| {
                    let x = (g + gb).min(LIMIT);
                    let y = (u + ub).clamp(-LIMIT, LIMIT);
                    x / (1.0 + (ALPHA * -x).exp()) * (y + 1.0)
                }),
        );
    }
    out
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
/// Q4_K/Q5_K/Q6_K, or all Q4_0/Q4_1/Q5_0/Q5_1, they run in one parallel region on one
/// quantization of `x`.
fn linear_many<const N: usize>(
    ws: [&Linear; N],
    x: &Tensor,
    dense_ok: bool,
) -> candle_core::Result<[Tensor; N]> {
    linear_slice(&ws, x, dense_ok)?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("matmul output count".into()))
}

/// [`linear_many`] over any number of matrices (a token's chosen experts).
fn linear_slice(ws: &[&Linear], x: &Tensor, dense_ok: bool) -> candle_core::Result<Vec<Tensor>> {
    let n = ws.len();
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
    let mx: Vec<&MxMatrix> = ws
        .iter()
        .filter_map(|w| match w {
            Linear::Mx(m) => Some(&**m),
            _ => None,
        })
        .collect();
    let fused = if mx.len() == n {
        Some(own_matmul(
            x,
            |data, m| mxfp4::matmul(&mx, data, m),
            mx.iter().map(|w| w.rows()),
        )?)
    } else if lq.len() == n {
        Some(own_matmul(
            x,
            |data, m| legacy::matmul(&lq, data, m),
            lq.iter().map(|w| w.rows()),
        )?)
    } else if q8.len() == n {
        Some(own_matmul(
            x,
            |data, m| q8::matmul(&q8, data, m),
            q8.iter().map(|w| w.rows()),
        )?)
    } else if kq.len() == n {
        Some(own_matmul(
            x,
            |data, m| kq::matmul(&kq, data, m),
            kq.iter().map(|w| w.rows()),
        )?)
    } else {
        None
    };
    if let Some(outs) = fused {
        return Ok(outs);
    }
    ws.iter().map(|w| linear(w, x, dense_ok)).collect()
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
        Linear::Mx(m) => {
            let m = &**m;
            return Ok(
                own_matmul(x, |d, r| mxfp4::matmul(&[m], d, r), [m.rows()].into_iter())?.remove(0),
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
/// (candle 0.11 runs Q6_K on a compact GEMV for one row and on repacked tiles for more). Only
/// asked of matrices left on candle's kernels (`INFLUENCE_KERNEL=0`, `INFLUENCE_KQUANT=0`, or a
/// CPU without AVX2): the own Q6_K kernel is row-independent, so its rows share one call.
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
        super::pool::run_chunked(n, |rows| {
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

/// RoPE on the first `2 · cos.dim(1)` values of each head of `x` (the rest pass through).
fn apply_rope(
    cfg: &DecoderConfig,
    x: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let rot = |x: &Tensor| {
        let x = x.contiguous()?;
        if let Some(y) = ops::rope(&x, cos, sin, cfg.rope_neox) {
            return y;
        }
        if cfg.rope_neox {
            candle_nn::rotary_emb::rope(&x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)
        }
    };
    let head_dim = x.dim(D::Minus1)?;
    let rope_dim = 2 * cos.dim(D::Minus1)?;
    if rope_dim == head_dim {
        rot(x)
    } else {
        let head = rot(&x.narrow(D::Minus1, 0, rope_dim)?)?;
        let tail = x.narrow(D::Minus1, rope_dim, head_dim - rope_dim)?;
        Tensor::cat(&[&head, &tail], D::Minus1)
    }
}

/// Attention of layer `li` for every sequence of the batch: q/k/v and the output projection
/// run over all rows at once, RoPE, the KV append and the score/value products per sequence.
fn attention(
    cfg: &DecoderConfig,
    layer: &Layer,
    h: &Tensor,
    parts: &[SeqPart],
    slots: &mut [Vec<KvCache>],
    dense_ok: bool,
) -> candle_core::Result<Tensor> {
    let (nh, nkv, hd) = (cfg.n_head, layer.n_kv_head, layer.head_dim);
    let (q, kv) = match &layer.qkv {
        Qkv::Separate { q, k, v } => {
            let [q, k, v] = linear_many([q, k, v], h, dense_ok)?;
            (q, Some((k, v)))
        }
        Qkv::Fused(w) => {
            let qkv = linear(w, h, dense_ok)?;
            (
                qkv.narrow(D::Minus1, 0, nh * hd)?,
                Some((
                    qkv.narrow(D::Minus1, nh * hd, nkv * hd)?,
                    qkv.narrow(D::Minus1, (nh + nkv) * hd, nkv * hd)?,
                )),
            )
        }
        Qkv::KeyIsValue { q, k } => {
            let [q, k] = linear_many([q, k], h, dense_ok)?;
            (q, Some((k.clone(), k)))
        }
        Qkv::QueryOnly(q) => (linear(q, h, dense_ok)?, None),
        Qkv::Recurrent(_) => candle_core::bail!("attention called on a recurrent layer"),
    };
    let (q, kv) = match (&layer.bias, kv) {
        (Some((bq, bk, bv)), Some((k, v))) => (
            q.broadcast_add(bq)?,
            Some((k.broadcast_add(bk)?, v.broadcast_add(bv)?)),
        ),
        (_, kv) => (q, kv),
    };
    // Qwen3.5: each head's queries are followed by its output-gate logits.
    let (q, gate) = if cfg.attn_output_gate {
        let rows = q.dim(1)?;
        if q.dim(D::Minus1)? != 2 * nh * hd {
            candle_core::bail!(
                "attn_q gives {} values per token, queries and gates need {}",
                q.dim(D::Minus1)?,
                2 * nh * hd
            );
        }
        let qg = q.reshape((1, rows, nh, 2 * hd))?;
        (
            qg.narrow(3, 0, hd)?.reshape((1, rows, nh * hd))?,
            Some(qg.narrow(3, hd, hd)?.reshape((1, rows, nh * hd))?),
        )
    } else {
        (q, None)
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
        let kv = match &kv {
            Some((k, v)) => Some((rows(k)?, rows(v)?)),
            None => None,
        };
        let y = seq_attention(
            cfg,
            layer,
            &rows(&q)?,
            kv,
            &mut slots[p.slot][layer.kv_src],
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
    let y = match gate {
        Some(g) => (y * candle_nn::ops::sigmoid(&g)?)?,
        None => y,
    };
    let Some(o) = &layer.o else {
        candle_core::bail!("attention layer without an output projection");
    };
    let out = linear(o, &y, dense_ok)?;
    match &layer.o_bias {
        Some(b) => out.broadcast_add(b),
        None => Ok(out),
    }
}

/// One sequence's attention over its KV slot: `q` and (for a layer that owns its cache) `k`,
/// `v` are its `t` new rows, (1, t, heads × head_dim). A layer without `k`, `v` attends over
/// the cache as the layer it shares it with left it.
#[allow(clippy::too_many_arguments)]
fn seq_attention(
    cfg: &DecoderConfig,
    layer: &Layer,
    q: &Tensor,
    kv: Option<(Tensor, Tensor)>,
    cache: &mut KvCache,
    mask: Option<&Tensor>,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Tensor> {
    let (_, t, _) = q.dims3()?;
    let (nh, nkv, hd) = (cfg.n_head, layer.n_kv_head, layer.head_dim);
    let eps = cfg.rms_eps as f32;
    // OLMo 2 norms all heads' queries (keys) as one vector, before splitting them.
    let whole = match &layer.q_norm {
        Some(qn) => qn.dim(0)? == nh * hd && nh > 1,
        None => false,
    };
    let norm = |x: &Tensor, w: &Option<Tensor>| match w {
        Some(w) => ops::rms_norm(x, w, eps),
        None => Ok(x.clone()),
    };
    let heads = |x: &Tensor, n: usize| x.reshape((1, t, n, hd))?.transpose(1, 2)?.contiguous();
    let q = if whole {
        heads(&norm(q, &layer.q_norm)?, nh)?
    } else {
        norm(&heads(q, nh)?, &layer.q_norm)?
    };
    let q = if layer.rope {
        apply_rope(cfg, &q, cos, sin)?
    } else {
        q
    };
    let (k_all, v_all) = match kv {
        Some((k, v)) => {
            let k = if whole {
                heads(&norm(&k, &layer.k_norm)?, nkv)?
            } else {
                norm(&heads(&k, nkv)?, &layer.k_norm)?
            };
            let v = heads(&v, nkv)?;
            // Gemma 4 norms values without a weight.
            let v = if cfg.v_norm {
                let ones = Tensor::ones(hd, DType::F32, v.device())?;
                candle_nn::ops::rms_norm(&v, &ones, eps)?
            } else {
                v
            };
            let k = if layer.rope {
                apply_rope(cfg, &k, cos, sin)?
            } else {
                k
            };
            cache.append(&k, &v)?
        }
        // A shared cache may sit on the other side of a split.
        None => {
            let (k, v) = cache.view()?;
            (k.to_device(q.device())?, v.to_device(q.device())?)
        }
    };
    let kv_len = k_all.dim(2)?;
    let scale = cfg.attn_scale.unwrap_or(1.0 / (hd as f64).sqrt());
    // One pass per KV head over the cache, read in place, for a decoded row of a layer with
    // sinks (gpt-oss: candle's path concatenates the sink column and softmaxes on every layer)
    // and for any decoded row past one depth block of candle's GEMM (512 positions), where
    // `prompt_attn` no longer gives candle's bits and candle's ops took about 40 % of a
    // decoded token at 1,024 positions (SmolLM2: 62 tok/s with them, 101 without). Shorter
    // contexts take `prompt_attn`, which gives candle's bits: this pass sums in another
    // order, which moved near-tied greedy choices of the real-model goldens (SmolLM2, Gemma 3).
    let long = kv_len > prompt_attn::ONE_CHAIN && !prompt_attn::forced_candle();
    if t == 1 && (layer.sinks.is_some() || long) {
        let sinks = match &layer.sinks {
            Some(s) => Some(s.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        let shape = decode_attn::Shape {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: scale as f32,
            softcap: cfg.attn_softcap,
            // The row's mask, as `seq_part` builds it: the window on local layers only.
            window: cfg.sliding_window.filter(|_| layer.sliding),
            sinks: sinks.as_deref(),
        };
        if let Some(y) = decode_attn::attend(&q, &k_all, &v_all, &shape) {
            return y;
        }
    }

    // A prompt chunk's attention on the own pool, bit-identical to the path below.
    if layer.sinks.is_none() && cfg.attn_softcap.is_none() {
        let shape = prompt_attn::Shape {
            heads: nh,
            kv_heads: nkv,
            head_dim: hd,
            scale: scale as f32,
        };
        if let Some(y) = prompt_attn::attend(&q, &k_all, &v_all, mask, &shape) {
            return y;
        }
    }

    // Grouped-query attention without repeating K/V: query heads sharing a KV head are
    // stacked along the row axis, (1, nkv, n_rep * t, hd).
    let (k_all, v_all) = (widened(&k_all)?, widened(&v_all)?);
    let n_rep = nh / nkv;
    let q = q.reshape((1, nkv, n_rep * t, hd))?;
    let mut att = (q.matmul(&k_all.t()?)? * scale)?;
    if let Some(cap) = cfg.attn_softcap {
        att = ((att / cap as f64)?.tanh()? * cap as f64)?;
    }
    // A windowed cache's views start past position 0: the mask's columns of dropped
    // positions (masked for every row of the chunk) go too.
    let narrowed = match mask {
        Some(m) if m.dim(1)? > kv_len => {
            let cols = m.dim(1)?;
            Some(m.narrow(1, cols - kv_len, kv_len)?.contiguous()?)
        }
        _ => None,
    };
    let mask = narrowed.as_ref().or(mask);
    let att = match mask {
        Some(m) => ops::add_mask(&att.reshape((1, nkv, n_rep, t, kv_len))?, m)?.reshape((
            1,
            nkv,
            n_rep * t,
            kv_len,
        ))?,
        None => att,
    };
    let att = match &layer.sinks {
        // The sink joins each query head's softmax as one more logit (llama.cpp's
        // `ggml_soft_max_add_sinks`: in the max and the sum) and is dropped after it.
        Some(sinks) => {
            let col = sinks
                .reshape((1, nkv, n_rep, 1, 1))?
                .broadcast_as((1, nkv, n_rep, t, 1))?
                .reshape((1, nkv, n_rep * t, 1))?;
            let with = Tensor::cat(&[&att, &col.to_dtype(att.dtype())?], D::Minus1)?;
            ops::softmax_last_dim(&with)?.narrow(D::Minus1, 0, kv_len)?
        }
        None => ops::softmax_last_dim(&att)?,
    };
    let y = att.contiguous()?.matmul(&v_all)?; // (1, nkv, n_rep * t, hd)
    y.reshape((1, nh, t, hd))?
        .transpose(1, 2)?
        .reshape((1, t, nh * hd))
}

/// The test-model generator (seeded GGUF files of every family), for the decoder's tests.
#[cfg(test)]
#[allow(dead_code, clippy::all)]
#[path = "../../tests/support/synth.rs"]
mod test_synth;

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

    /// ggml's interleaved M-RoPE for text: pairs cycle time, height, width while each
    /// section lasts; pairs past a section take the extra position (0 for text) and stay put.
    #[test]
    fn interleaved_mrope_turns_the_pairs_its_sections_cover() {
        // Qwen3.5: 32 pairs, sections 11/11/10: every pair turns.
        assert!((0..32).all(|i| mrope_text_pair_turns(&[11, 11, 10, 0], i)));
        // Height runs out early: pair 4, a height slot past its section, falls to the extra
        // position; the cycle restarts after the sections' sum (5).
        let s = [3, 1, 1, 0];
        let turns: Vec<bool> = (0..7).map(|i| mrope_text_pair_turns(&s, i)).collect();
        assert_eq!(turns, [true, true, true, true, false, true, true]);
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

    /// gpt-oss-20b's YaRN (factor 32 over 4096 positions, base 150000, 64-dim heads): llama.cpp
    /// ramps between dimension pairs 8 and 18 and scales the tables by 1 + 0.1 ln 32.
    #[test]
    fn yarn_correction_range_and_magnitude_follow_llama_cpp() {
        let y = Yarn {
            factor: 32.0,
            orig_ctx: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attn_factor: 1.0,
        };
        let (low, high, factor, mscale) = yarn_params(&y, 64, 150_000.0);
        assert_eq!((low, high, factor), (8.0, 18.0, 32.0));
        assert!((mscale - (1.0 + 0.1 * 32f32.ln())).abs() < 1e-6, "{mscale}");
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

    /// gpt-oss's sliding-window layers (window 8 in the tiny file) keep only what their window
    /// sees: decoding far past the window (and the windowed caches' first slide at 256
    /// positions) gives the logits a decoder keeping every position gives, bit for bit; a
    /// prompt chunk after a slide (the mask cut to the held positions) matches to float
    /// rounding; a cut the window cannot serve falls back to nothing; and the windowed slot
    /// holds less.
    #[test]
    fn windowed_sliding_caches_decode_as_full_caches_past_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            test_synth::Spec::preset(&test_synth::GPT_OSS, "tiny", test_synth::Mix::Mxfp4Moe, 7)
                .unwrap();
        let plan = test_synth::Plan::new(spec).unwrap();
        let path = dir.path().join("gpt-oss.gguf");
        test_synth::write_file(&plan, &path, 1).unwrap();
        let load = |full| {
            let mut f = super::super::gguf::open(&path).unwrap();
            let mut d = Decoder::load(&mut f, &Device::Cpu).unwrap();
            d.full_swa_cache = full;
            d
        };
        let (mut win, mut full) = (load(false), load(true));
        let w = win.cfg.sliding_window.unwrap();
        assert!((0..win.cfg.n_layer).any(|i| win.cfg.cache_window(i) == Some(w)));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let prompt = [5u32, 17, 99, 3];
        let mut a = win.forward(&prompt, true).unwrap().unwrap();
        let b = full.forward(&prompt, true).unwrap().unwrap();
        assert_eq!(bits(&a), bits(&b));
        for step in 0..300 {
            let next = a
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map_or(0, |(i, _)| i as u32);
            a = win.forward(&[next], true).unwrap().unwrap();
            let b = full.forward(&[next], true).unwrap().unwrap();
            assert_eq!(bits(&a), bits(&b), "step {step}");
        }
        assert!(win.slots[0].iter().any(|c| c.start() > 0), "no cache slid");
        assert!(win.kv_bytes_allocated() < full.kv_bytes_allocated());
        // A cut the window still serves keeps the positions.
        let len = win.slot_len(0) - 1;
        assert_eq!(win.truncate_slot(0, len), len);
        assert_eq!(full.truncate_slot(0, len), len);
        let chunk = [7u32, 8, 9, 10, 11, 12];
        let a = win.forward(&chunk, true).unwrap().unwrap();
        let b = full.forward(&chunk, true).unwrap().unwrap();
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < 1e-3,
            "prompt chunk after a slide: logits differ by {worst}"
        );
        // Back to a point the windowed caches dropped: the slot starts over.
        assert_eq!(win.truncate_slot(0, 10), 0);
        assert_eq!(full.truncate_slot(0, 10), 10);
    }

    /// An f16 KV cache (`engine.kv_cache = "f16"`) takes half the bytes of an f32 one and moves
    /// the logits only by its rounding: through the prompt path and the short-context decode
    /// path (candle's, on the widened values) alike; greedy choices differ only at near-ties.
    #[test]
    fn an_f16_kv_cache_halves_the_bytes_and_moves_logits_by_its_rounding_only() {
        let path = smollm_path();
        let tok = super::super::tokenize::TextTokenizer::from_gguf_path(&path).unwrap();
        let load = |kind| {
            let mut f = super::super::gguf::open(&path).unwrap();
            let mut d = Decoder::load(&mut f, &Device::Cpu).unwrap();
            d.set_kv_type(kind);
            d
        };
        let (mut full, mut half) = (load(KvType::F32), load(KvType::F16));
        assert_eq!(half.kv_type(), KvType::F16);
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .map_or(0, |(i, _)| i as u32)
        };
        // A short prompt decodes on candle's path (few scores), a long one on the own pool's.
        let long = "The history of the bicycle spans more than two centuries. Early designs had \
                    no pedals: riders pushed against the ground with their feet. Pedals on the \
                    front wheel came next, then the chain drive, which let both wheels be the \
                    same size and made the machine far safer. Pneumatic tyres followed.";
        for text in ["Paris is the capital of", long] {
            let ids = tok.encode(text).unwrap();
            full.truncate_slot(0, 0);
            half.truncate_slot(0, 0);
            let mut a = full.forward(&ids, true).unwrap().unwrap();
            let mut b = half.forward(&ids, true).unwrap().unwrap();
            let (mut worst, mut same) = (0f32, 0);
            for step in 0..24 {
                let moved = a
                    .iter()
                    .zip(&b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                worst = worst.max(moved);
                let (x, y) = (argmax(&a), argmax(&b));
                // SmolLM2 sits on near-ties: a choice may flip only where f32's own margin
                // between the two tokens is within what the rounding moved.
                let margin = a[x as usize] - a[y as usize];
                assert!(
                    margin <= 2.0 * moved,
                    "{text:?} step {step}: {x} vs {y}, margin {margin}"
                );
                same += usize::from(x == y);
                // Both continue from the f32 choice, so each step compares the same context.
                a = full.forward(&[x], true).unwrap().unwrap();
                b = half.forward(&[x], true).unwrap().unwrap();
            }
            assert!(same >= 20, "{text:?}: {same} of 24 greedy choices agree");
            assert!(
                worst > 0.0,
                "f16 rounding changed no logit: was the cache f16?"
            );
            // Measured 0.5-1.4 here: a cache read at the wrong place or stride
            // moves them by far more.
            assert!(worst < 3.0, "{text:?}: logits moved by {worst}");
            assert_eq!(
                half.kv_bytes_allocated() * 2,
                full.kv_bytes_allocated(),
                "{text:?}"
            );
        }
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

    /// Greedy ids of `steps` tokens after `prompt` and the logits behind them, two sequences
    /// at once (slots 0 and 1, the second prompt one token shorter).
    fn greedy_pair(dec: &mut Decoder, prompt: &[u32], steps: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let argmax = |v: &[f32]| {
            v.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(i, _)| i as u32)
        };
        let first = dec
            .forward_batch(&[
                SeqStep {
                    slot: 0,
                    ids: prompt,
                    logits: true,
                },
                SeqStep {
                    slot: 1,
                    ids: &prompt[1..],
                    logits: true,
                },
            ])
            .unwrap();
        let mut logits: Vec<Vec<f32>> = first.into_iter().map(Option::unwrap).collect();
        let (mut ids, mut all) = (Vec::new(), Vec::new());
        for _ in 0..steps {
            let next: Vec<u32> = logits.iter().map(|l| argmax(l)).collect();
            ids.extend(&next);
            all.append(&mut logits);
            logits = dec
                .forward_batch(&[
                    SeqStep {
                        slot: 0,
                        ids: &next[..1],
                        logits: true,
                    },
                    SeqStep {
                        slot: 1,
                        ids: &next[1..],
                        logits: true,
                    },
                ])
                .unwrap()
                .into_iter()
                .map(Option::unwrap)
                .collect();
        }
        (ids, all)
    }

    /// `engine.gpu_layers`: a model split between the device and the host computes what the
    /// host alone computes. On the CPU the device's layers take the GPU path (candle's
    /// kernels, quantized weights as stored, the embedding table in host memory, masks and
    /// RoPE rows of their own), so this checks the split itself: the crossing, per-device
    /// masks, a shared KV cache read across it (Gemma 4), per-layer inputs (Gemma 4),
    /// experts (Qwen3-MoE), two sequences batched. With f32 weights both sides run the same
    /// kernels and every logit must match bit for bit. Quantized, candle's kernels round
    /// activations their own way (Q8_0 by 32-value blocks with f16 scales, the own kernel with
    /// f32 ones: 0.8 % of the largest logit here, 6 % on Gemma 4's outliers, which is left
    /// out): synthetic models decode with clear margins, so the greedy ids must agree, and the
    /// logits within 2 % of their largest magnitude.
    #[test]
    fn a_model_split_between_device_and_host_decodes_as_the_host_does() {
        use test_synth::Mix;
        let dir = tempfile::tempdir().unwrap();
        // Every attention family the generator writes (gpt-oss's MXFP4 runs on the CPU only).
        let families = [
            &test_synth::LLAMA,
            &test_synth::GRANITE,
            &test_synth::SMOLLM3,
            &test_synth::GEMMA2,
            &test_synth::OLMO2,
            &test_synth::QWEN3MOE,
            &test_synth::GRANITEMOE,
            &test_synth::GEMMA4,
            &test_synth::PHI3,
        ];
        let quantized = [
            (&test_synth::LLAMA, Mix::Q8_0),
            (&test_synth::GEMMA4, Mix::Q4KM),
            (&test_synth::LLAMA, Mix::Q4KM),
            (&test_synth::QWEN3MOE, Mix::Q4_0),
            (&test_synth::GRANITEMOE, Mix::Q4KM),
            (&test_synth::PHI3, Mix::Q6K),
        ];
        let cases = families.into_iter().map(|f| (f, Mix::F32)).chain(quantized);
        for (family, mix) in cases {
            let spec = test_synth::Spec::preset(family, "tiny", mix, 11).unwrap();
            let plan = test_synth::Plan::new(spec).unwrap();
            let path = dir.path().join(format!("{}-{mix:?}.gguf", family.arch));
            test_synth::write_file(&plan, &path, 2).unwrap();
            let load = |on_device| {
                let mut f = super::super::gguf::open(&path).unwrap();
                Decoder::load_split(&mut f, &Device::Cpu, on_device).unwrap()
            };
            let mut host = load(0);
            let n = host.cfg.n_layer;
            assert!(n >= 2, "{}: {n} layers", family.arch);
            let prompt = [3u32, 41, 7, 19, 5, 23];
            let (want, want_logits) = greedy_pair(&mut host, &prompt, 12);
            let scale = want_logits
                .iter()
                .flatten()
                .fold(0f32, |m, x| m.max(x.abs()));
            let mut splits = vec![1, n / 2, n - 1, n];
            splits.dedup();
            for on_device in splits {
                let what = format!("{} {mix:?}, {on_device} of {n} layers", family.arch);
                let mut dec = load(on_device);
                assert_eq!(dec.layers_on_device(), (on_device, n));
                assert!(!dec.on_cpu() && !dec.packs_prompts());
                let (got, logits) = greedy_pair(&mut dec, &prompt, 12);
                assert_eq!(got, want, "{what}");
                let pairs = logits.iter().flatten().zip(want_logits.iter().flatten());
                if mix == Mix::F32 {
                    assert!(
                        pairs.into_iter().all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{what}"
                    );
                } else {
                    let worst = pairs.map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(worst <= 0.02 * scale, "{what}: {worst} of {scale}");
                }
            }
        }
    }

    /// A recurrent model is not split: the state's layers would straddle the crossing.
    #[test]
    fn a_recurrent_model_refuses_a_split_with_what_to_set() {
        let dir = tempfile::tempdir().unwrap();
        let spec =
            test_synth::Spec::preset(&test_synth::MAMBA, "tiny", test_synth::Mix::Q8_0, 3).unwrap();
        let plan = test_synth::Plan::new(spec).unwrap();
        let path = dir.path().join("mamba.gguf");
        test_synth::write_file(&plan, &path, 1).unwrap();
        let mut f = super::super::gguf::open(&path).unwrap();
        let err = match Decoder::load_split(&mut f, &Device::Cpu, 1) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a Mamba model split at layer 1 loaded"),
        };
        assert!(
            err.contains("recurrent") && err.contains("engine.gpu_layers"),
            "{err}"
        );
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
            own: true,
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
            Linear::K(_) | Linear::L(_) | Linear::Mx(_) | Linear::Candle(_) => {
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
