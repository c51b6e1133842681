//! Generative models stored as Hugging Face folders: `config.json`, `*.safetensors` or
//! `pytorch_model*.bin` (f32/f16/bf16), `tokenizer.json`, `tokenizer_config.json`. Run by the
//! same decoder as GGUF files, in f32.

use std::path::Path;

use serde_json::Value as Json;

use super::decoder::{Decoder, DecoderConfig};
use super::gen_model::GenModel;
use super::template::ChatTemplate;
use super::tokenize::{TextTokenizer, TokenizerConfig};
use super::{EngineError, ModelInfo, ModelKind};

/// `model_type`s this loader runs.
pub const SUPPORTED_FOLDER_TYPES: &[&str] = &["llama", "mistral", "qwen2", "qwen3", "phi3"];

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn read_json(path: &Path) -> Option<Json> {
    let bytes = crate::fsutil::read_limited(path, super::template::MAX_CONFIG_BYTES).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn num(cfg: &Json, key: &str) -> Option<usize> {
    cfg.get(key)?.as_u64().map(|v| v as usize)
}

/// Token ids from a number or an array of numbers.
fn ids(v: Option<&Json>) -> Vec<u32> {
    match v {
        Some(Json::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        Some(Json::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64())
            .map(|x| x as u32)
            .collect(),
        _ => Vec::new(),
    }
}

fn config(dir: &Path, cfg: &Json) -> Result<(DecoderConfig, Option<Vec<f32>>), EngineError> {
    let need = |k: &str| {
        num(cfg, k).ok_or_else(|| corrupt(&dir.join("config.json"), format!("`{k}` is missing")))
    };
    let hidden = need("hidden_size")?;
    let n_head = need("num_attention_heads")?;
    let n_kv_head = num(cfg, "num_key_value_heads").unwrap_or(n_head);
    let head_dim = num(cfg, "head_dim").unwrap_or(hidden / n_head.max(1));
    let partial = cfg
        .get("partial_rotary_factor")
        .and_then(|v| v.as_f64())
        .unwrap_or(1.0);
    let rope_base = cfg
        .get("rope_theta")
        .and_then(|v| v.as_f64())
        .unwrap_or(10_000.0) as f32;
    let rope_dim = ((head_dim as f64 * partial) as usize).min(head_dim);
    let context_length = num(cfg, "max_position_embeddings").unwrap_or(4096);
    if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
        return Err(corrupt(
            dir,
            format!("invalid head counts {n_head}/{n_kv_head}"),
        ));
    }
    let n_layer = need("num_hidden_layers")?;
    let dc = DecoderConfig {
        n_layer,
        n_head,
        n_kv_head,
        head_dim,
        rms_eps: cfg
            .get("rms_norm_eps")
            .and_then(|v| v.as_f64())
            .unwrap_or(1e-6),
        rope_base,
        rope_dim,
        context_length,
        // Hugging Face checkpoints keep the unpermuted Q/K layout: rotate halves.
        rope_neox: true,
        embed_scale: None,
        sliding_window: None,
        sliding_pattern: 1,
        rope_base_local: rope_base,
        gelu: false,
        attn_scale: None,
        residual_scale: None,
        logit_scale: None,
        attn_softcap: None,
        final_softcap: None,
        no_rope_step: None,
        experts_used: 0,
        oai_moe: false,
        post_attn_norm_feeds_ffn: false,
        yarn: None,
        swa_layers: None,
        kv_heads_per_layer: None,
        head_dim_swa: head_dim,
        rope_dim_swa: rope_dim,
        kv_layers: n_layer,
        v_norm: false,
        per_layer_input: 0,
        rope_attn_factor: 1.0,
        rope_orig_context: usize::MAX,
        ssm: None,
        recurrent: Vec::new(),
        no_rope: false,
        delta_net: None,
        attn_output_gate: false,
        mrope_sections: None,
    };
    let factors = llama3_rope_factors(cfg.get("rope_scaling"), rope_base, rope_dim);
    Ok((dc, factors))
}

/// Per-frequency divisors of Llama 3.x "llama3" RoPE scaling.
fn llama3_rope_factors(scaling: Option<&Json>, base: f32, rope_dim: usize) -> Option<Vec<f32>> {
    let s = scaling?;
    let kind = s.get("rope_type").or_else(|| s.get("type"))?.as_str()?;
    if kind != "llama3" {
        return None;
    }
    let f = |k: &str, d: f64| s.get(k).and_then(|v| v.as_f64()).unwrap_or(d) as f32;
    let factor = f("factor", 8.0);
    let low = f("low_freq_factor", 1.0);
    let high = f("high_freq_factor", 4.0);
    let orig = f("original_max_position_embeddings", 8192.0);
    let (low_wl, high_wl) = (orig / low, orig / high);
    Some(
        (0..rope_dim / 2)
            .map(|i| {
                let freq = 1.0 / base.powf((2 * i) as f32 / rope_dim as f32);
                let wl = 2.0 * std::f32::consts::PI / freq;
                let scaled = if wl < high_wl {
                    freq
                } else if wl > low_wl {
                    freq / factor
                } else {
                    let smooth = (orig / wl - low) / (high - low);
                    (1.0 - smooth) * freq / factor + smooth * freq
                };
                freq / scaled
            })
            .collect(),
    )
}

/// What a folder's weights put on a GPU (see [`GpuBytes`](super::device::GpuBytes)): each
/// tensor in f32, the dtype the decoder computes in; `model.layers.N.*` are layer N's, everything
/// else (the embedding table too: the dense path keeps it on the device) goes with the head.
fn gpu_bytes(
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
    cfg: &super::decoder::DecoderConfig,
) -> super::device::GpuBytes {
    let mut bytes = super::device::GpuBytes::kv_only(cfg.n_layer, cfg.context_length, |i, n| {
        cfg.layer_kv_floats(i, n, super::scheduler::PREFILL_CHUNK)
    });
    for (name, t) in tensors {
        let size = (t.elem_count() * 4) as u64;
        let layer = name
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(i, _)| i.parse::<usize>().ok());
        match layer {
            Some(i) if i < bytes.layers.len() => bytes.layers[i].0 += size,
            _ => bytes.head += size,
        }
    }
    bytes
}

/// Loads a generative Hugging Face folder whose `config.json` declares `model_type`.
pub(crate) fn load(
    dir: &Path,
    model_type: &str,
    id: String,
    device: &candle_core::Device,
) -> Result<(GenModel, ModelInfo), EngineError> {
    let cfg_json = read_json(&dir.join("config.json"))
        .ok_or_else(|| corrupt(dir, "config.json is not valid JSON"))?;
    let tok_path = dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(EngineError::MissingTokenizer {
            path: dir.to_path_buf(),
        });
    }
    let tok_cfg = crate::fsutil::read_limited(
        &dir.join("tokenizer_config.json"),
        super::template::MAX_CONFIG_BYTES,
    )
    .ok()
    .and_then(|b| TokenizerConfig::parse(&b).ok())
    .unwrap_or_default();
    let gen_cfg = read_json(&dir.join("generation_config.json")).unwrap_or(Json::Null);
    let mut eos = ids(cfg_json.get("eos_token_id"));
    eos.extend(ids(gen_cfg.get("eos_token_id")));
    let bos = ids(cfg_json.get("bos_token_id")).first().copied();
    let add_bos = tok_cfg.add_bos_token.unwrap_or(false);
    let tok = TextTokenizer::from_file(&tok_path, bos, &eos, add_bos)?;

    let (dc, factors) = config(dir, &cfg_json)?;

    let bos_s = tok_cfg.bos_token.unwrap_or_default();
    let eos_s = tok_cfg.eos_token.unwrap_or_default();
    let template = match ChatTemplate::source_for(&dir.join("config.json"), None) {
        Some(src) => ChatTemplate::new(&src.text, &bos_s, &eos_s, &src.origin)?,
        None => ChatTemplate::fallback(model_type, &bos_s, &eos_s),
    };

    let tensors = super::weights::load_folder(dir)?;
    let n_params: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
    let quant = tensors
        .get("model.embed_tokens.weight")
        .map(|t| format!("{:?}", t.dtype()).to_uppercase())
        .unwrap_or_else(|| "F32".into());
    let on_device = if device.is_cpu() {
        0
    } else {
        super::device::plan_layers(
            super::device::gpu_memory(device),
            super::device::GpuLayers::from_env(),
            &gpu_bytes(&tensors, &dc),
            dc.splits(),
        )?
    };
    let mut dec = Decoder::load_safetensors(dir, dc, tensors, factors, device, on_device)?;
    dec.warm_up(tok.bos_id.unwrap_or(0))?;
    let info = ModelInfo {
        id,
        arch: model_type.to_string(),
        kind: ModelKind::Generate,
        context_length: dec.cfg.context_length,
        n_params,
        quant,
        slow_quant_warning: None,
        chat_template: Some(template.source().to_string()),
        gpu_layers: (!device.is_cpu()).then(|| dec.layers_on_device()),
    };
    Ok((GenModel::new(dec, tok, template), info))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder's GPU bytes: each layer's tensors in f32 with its KV cache at the fit context,
    /// and everything outside the layers (the embedding table too) with the head.
    #[test]
    fn a_folder_s_bytes_are_counted_per_layer_in_f32() {
        let json: Json = serde_json::from_str(
            r#"{"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "num_hidden_layers": 2, "max_position_embeddings": 1024}"#,
        )
        .unwrap();
        let (dc, _) = config(Path::new("/m"), &json).unwrap();
        let t = |n: usize, dtype| {
            candle_core::Tensor::zeros(n, dtype, &candle_core::Device::Cpu).unwrap()
        };
        let tensors: std::collections::HashMap<String, candle_core::Tensor> = [
            (
                "model.embed_tokens.weight",
                t(1000, candle_core::DType::BF16),
            ),
            ("model.norm.weight", t(64, candle_core::DType::F32)),
            (
                "model.layers.0.mlp.up_proj.weight",
                t(300, candle_core::DType::F16),
            ),
            (
                "model.layers.1.mlp.up_proj.weight",
                t(200, candle_core::DType::F16),
            ),
            (
                "model.layers.1.input_layernorm.weight",
                t(64, candle_core::DType::F32),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let b = gpu_bytes(&tensors, &dc);
        // K and V: 2 KV heads of 16 values at 1,024 positions, 4 bytes each (the f32 default).
        let kv = 2 * 2 * 16 * 1024 * super::super::KvType::from_env().size() as u64;
        assert_eq!(b.positions, 1024);
        assert_eq!(b.layers, vec![(300 * 4, kv), (264 * 4, kv)]);
        assert_eq!(b.head, 1064 * 4);
    }
}
