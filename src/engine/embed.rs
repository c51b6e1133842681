//! Sentence embeddings with BERT-family encoders from a Hugging Face folder (`config.json`,
//! `model.safetensors` or `pytorch_model.bin`, `tokenizer.json`): mean pooling over real tokens,
//! then L2 normalisation — the sentence-transformers recipe.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::Tokenizer;

use super::{EngineError, ModelInfo, ModelKind};

pub struct Embedder {
    model: BertModel,
    tok: Tokenizer,
    max_len: usize,
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The `model_type` a folder's `config.json` declares, if readable.
pub fn folder_model_type(dir: &Path) -> Result<String, EngineError> {
    let cfg_path = dir.join("config.json");
    let bytes = std::fs::read(&cfg_path).map_err(|_| {
        corrupt(
            dir,
            "the folder has no config.json; expected a Hugging Face model folder or a .gguf file",
        )
    })?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(&cfg_path, format!("config.json is not valid JSON: {e}")))?;
    Ok(v.get("model_type")
        .and_then(|m| m.as_str())
        .unwrap_or("unknown")
        .to_string())
}

impl Embedder {
    pub fn load(dir: &Path, id: String, device: &Device) -> Result<(Self, ModelInfo), EngineError> {
        let cfg_path = dir.join("config.json");
        let cfg: Config =
            serde_json::from_slice(&std::fs::read(&cfg_path).map_err(|e| corrupt(&cfg_path, e))?)
                .map_err(|e| corrupt(&cfg_path, format!("not a BERT config: {e}")))?;
        let tok_path = dir.join("tokenizer.json");
        if !tok_path.is_file() {
            return Err(EngineError::MissingTokenizer {
                path: dir.to_path_buf(),
            });
        }
        let mut tok = Tokenizer::from_file(&tok_path).map_err(|e| {
            EngineError::Tokenizer(format!("cannot read {}: {e}", tok_path.display()))
        })?;
        // The sentence-transformers tokenizer.json pads to 128; pooling must see only real tokens.
        tok.with_padding(None);
        tok.with_truncation(None)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;

        let tensors = super::weights::load_folder(dir)?;
        let n_params: u64 = tensors.values().map(|t| t.elem_count() as u64).sum();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let model = BertModel::load(vb, &cfg).map_err(|e| corrupt(dir, e))?;
        let info = ModelInfo {
            id,
            arch: "bert".into(),
            kind: ModelKind::Embed,
            context_length: cfg.max_position_embeddings,
            n_params,
            quant: "F32".into(),
            slow_quant_warning: None,
            chat_template: None,
            gpu_layers: None,
        };
        Ok((
            Self {
                model,
                tok,
                max_len: cfg.max_position_embeddings,
            },
            info,
        ))
    }

    /// One L2-normalised vector per text. Texts longer than the model's positions are cut.
    pub fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EngineError> {
        texts.iter().map(|t| self.embed_one(t)).collect()
    }

    fn embed_one(&self, text: &str) -> Result<Vec<f32>, EngineError> {
        let enc = self
            .tok
            .encode(text, true)
            .map_err(|e| EngineError::Tokenizer(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        if ids.len() > self.max_len {
            // Keep [CLS] … and the final [SEP].
            let last = ids[ids.len() - 1];
            ids.truncate(self.max_len);
            ids[self.max_len - 1] = last;
        }
        let n = ids.len();
        let ids = Tensor::new(ids.as_slice(), &self.model.device)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let mask = ids.ones_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (1, n, dim)
        let mean = (hidden.sum(1)? / n as f64)?.squeeze(0)?;
        let norm = mean.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
        let v = (mean / norm.max(1e-12) as f64)?;
        Ok(v.to_vec1()?)
    }
}
