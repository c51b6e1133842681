//! Tokenizers for generative models: from `tokenizer.json` next to the model or from the GGUF's
//! embedded vocabulary, plus a streaming detokenizer that only emits complete UTF-8.

use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::tokenizer::TokenizerFromGguf;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::Tokenizer;

use super::gguf::Meta;
use super::EngineError;

/// End-of-turn markers used by common chat templates; generation stops on any that exist.
pub const TEMPLATE_END_TOKENS: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<end_of_turn>",
    "<|end|>",
    "<|eom_id|>",
];

pub struct TextTokenizer {
    tok: Tokenizer,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    add_bos: bool,
    /// Ids that end a generation.
    pub stop_ids: Vec<u32>,
}

fn tok_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Prefers `tokenizer.json` beside the model file; otherwise builds one from GGUF metadata.
    pub fn for_gguf(path: &Path, content: &Content) -> Result<Self, EngineError> {
        let meta = Meta {
            path,
            md: &content.metadata,
        };
        let side = path.parent().map(|d| d.join("tokenizer.json"));
        let tok = match side {
            Some(p) if p.is_file() => Tokenizer::from_file(&p)
                .map_err(|e| EngineError::Tokenizer(format!("cannot read {}: {e}", p.display())))?,
            _ => from_gguf_metadata(path, content, &meta)?,
        };
        let model_kind = meta.opt_str("tokenizer.ggml.model").unwrap_or("gpt2");
        // llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not.
        let add_bos = meta
            .opt_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(model_kind == "llama");
        let bos_id = meta
            .opt_usize("tokenizer.ggml.bos_token_id")
            .map(|v| v as u32);
        let eos_id = meta
            .opt_usize("tokenizer.ggml.eos_token_id")
            .map(|v| v as u32);
        let mut stop_ids: Vec<u32> = eos_id.into_iter().collect();
        for key in ["tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = meta.opt_usize(key) {
                stop_ids.push(id as u32);
            }
        }
        for t in TEMPLATE_END_TOKENS {
            if let Some(id) = tok.token_to_id(t) {
                stop_ids.push(id);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Ok(Self {
            tok,
            bos_id,
            eos_id,
            add_bos,
            stop_ids,
        })
    }

    /// Opens a GGUF file (header only) and builds its tokenizer; for tools and tests.
    pub fn from_gguf_path(path: &Path) -> Result<Self, EngineError> {
        let f = super::gguf::open(path)?;
        Self::for_gguf(path, &f.content)
    }

    /// Encodes text without the tokenizer's own special-token post-processing; special tokens
    /// written in the text (e.g. `<|im_start|>`) are still recognised. Adds BOS when the model
    /// asks for it and the text does not already start with it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let enc = self.tok.encode(text, false).map_err(tok_err)?;
        let mut ids = enc.get_ids().to_vec();
        if let (true, Some(bos)) = (self.add_bos, self.bos_id) {
            if ids.first() != Some(&bos) {
                ids.insert(0, bos);
            }
        }
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.tok.decode(ids, false).map_err(tok_err)
    }

    pub fn token_text(&self, id: u32) -> Option<String> {
        self.tok.id_to_token(id)
    }

    pub fn is_stop(&self, id: u32) -> bool {
        self.stop_ids.contains(&id)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tok
    }
}

fn from_gguf_metadata(
    path: &Path,
    content: &Content,
    meta: &Meta,
) -> Result<Tokenizer, EngineError> {
    let kind = match meta.opt_str("tokenizer.ggml.model") {
        Some(k) => k.to_string(),
        None => {
            return Err(EngineError::MissingTokenizer {
                path: path.to_path_buf(),
            })
        }
    };
    if kind != "gpt2" {
        // SentencePiece ("llama") and other vocabularies are not rebuilt from metadata.
        return Err(EngineError::MissingTokenizer {
            path: path.to_path_buf(),
        });
    }
    let mut tok = Tokenizer::from_gguf(content).map_err(|e| {
        EngineError::Tokenizer(format!(
            "cannot build the tokenizer from GGUF metadata: {e}"
        ))
    })?;
    let pre = meta.opt_str("tokenizer.ggml.pre").unwrap_or("gpt2");
    if matches!(pre, "smollm" | "starcoder") {
        // candle falls back to GPT-2's ByteLevel(add_prefix_space = true) for these; the
        // reference tokenizer.json splits digits individually and adds no prefix space.
        let seq: PreTokenizerWrapper = Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ])
        .into();
        tok.with_pre_tokenizer(Some(seq));
    }
    Ok(tok)
}

/// Turns a stream of token ids into text pieces that are always complete UTF-8.
///
/// Decodes a sliding window that starts one token before the unemitted ones, so tokenizers
/// that strip a leading space at the start of a decode (SentencePiece) still print spaces.
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prev: usize,
    cur: usize,
}

impl Detokenizer {
    pub fn push(&mut self, tok: &TextTokenizer, id: u32) -> Result<String, EngineError> {
        let prev_text = if self.cur > self.prev {
            tok.decode(&self.ids[self.prev..self.cur])?
        } else {
            String::new()
        };
        self.ids.push(id);
        let text = tok.decode(&self.ids[self.prev..])?;
        if text.len() > prev_text.len() && !text.ends_with('\u{FFFD}') {
            let piece = text[prev_text.len()..].to_string();
            self.prev = self.cur;
            self.cur = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}
