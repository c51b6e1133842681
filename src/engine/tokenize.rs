//! Tokenizers for generative models: from `tokenizer.json` next to the model or from the GGUF's
//! embedded vocabulary, plus a streaming detokenizer that only emits complete UTF-8.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value as GValue};
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
    "<turn|>",
    "<|end|>",
    "<|eom_id|>",
];

/// The turn ends of OpenAI's harmony format (gpt-oss), when the vocabulary has both.
const HARMONY_STOPS: [&str; 2] = ["<|return|>", "<|call|>"];

/// A `tokenizer.json` over this size is refused unread; the largest real ones (Gemma's
/// 262k-token vocabulary) are about 35 MB.
pub const MAX_TOKENIZER_BYTES: u64 = 256 * 1024 * 1024;

/// Parses a `tokenizer.json` read from `path` (named in errors).
pub fn tokenizer_from_bytes(bytes: &[u8], path: &Path) -> Result<Tokenizer, EngineError> {
    // tokenizers 0.23 panics (`expect("Helper")`) on any JSON error inside `decoder`; a full
    // check first turns every such file into an error (found by fuzzing).
    serde_json::from_slice::<JsonCheck>(bytes).map_err(|e| {
        EngineError::Tokenizer(format!(
            "cannot read {}: not valid JSON ({e})",
            path.display()
        ))
    })?;
    check_bpe_merges(bytes)
        .map_err(|e| EngineError::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
    Tokenizer::from_bytes(bytes)
        .map_err(|e| EngineError::Tokenizer(format!("cannot read {}: {e}", path.display())))
}

/// tokenizers 0.23 builds each BPE merge in a buffer as long as the longest vocabulary token
/// and panics on a merge that does not fit (found by fuzzing). Real merges always produce a
/// vocabulary token, so one that cannot is refused here. Files whose `model` is not a BPE of
/// the expected shape are left to tokenizers to judge.
fn check_bpe_merges(bytes: &[u8]) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct File {
        model: Model,
    }
    #[derive(serde::Deserialize)]
    struct Model {
        #[serde(rename = "type", default)]
        kind: Option<String>,
        vocab: MaxKeyLen,
        merges: Vec<Merge>,
        #[serde(default)]
        continuing_subword_prefix: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Merge {
        Pair(String, String),
        Line(String),
    }
    let Ok(file) = serde_json::from_slice::<File>(bytes) else {
        return Ok(());
    };
    let m = file.model;
    if m.kind.as_deref().is_some_and(|k| k != "BPE") {
        return Ok(());
    }
    let prefix = m.continuing_subword_prefix.map_or(0, |p| p.len());
    for merge in &m.merges {
        let (a, b) = match merge {
            Merge::Pair(a, b) => (a.as_str(), b.as_str()),
            Merge::Line(l) => match l.split_once(' ') {
                Some(ab) => ab,
                None => continue,
            },
        };
        if b.len() < prefix || a.len() + b.len() - prefix > m.vocab.0 {
            return Err(format!(
                "the merge `{a} {b}` makes a token longer than any in the vocabulary"
            ));
        }
    }
    Ok(())
}

/// The length of the longest key of a JSON object, keeping none of them.
struct MaxKeyLen(usize);

impl<'de> serde::Deserialize<'de> for MaxKeyLen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = MaxKeyLen;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a vocabulary object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<MaxKeyLen, A::Error> {
                let mut max = 0;
                while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    max = max.max(k.len());
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Ok(MaxKeyLen(max))
            }
        }
        d.deserialize_map(V)
    }
}

/// Accepts any valid JSON and keeps nothing. Unlike `IgnoredAny`, it decodes every string, so
/// invalid UTF-8 and lone surrogate escapes are caught too.
struct JsonCheck;

impl<'de> serde::Deserialize<'de> for JsonCheck {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonCheckVisitor)
    }
}

struct JsonCheckVisitor;

impl<'de> serde::de::Visitor<'de> for JsonCheckVisitor {
    type Value = JsonCheck;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_i64<E>(self, _: i64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_u64<E>(self, _: u64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_f64<E>(self, _: f64) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_str<E>(self, _: &str) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_unit<E>(self) -> Result<JsonCheck, E> {
        Ok(JsonCheck)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonCheck, A::Error> {
        while seq.next_element::<JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<JsonCheck, A::Error> {
        while map.next_entry::<JsonCheck, JsonCheck>()?.is_some() {}
        Ok(JsonCheck)
    }
}

/// Reads and parses the `tokenizer.json` at `path`, refusing one over [`MAX_TOKENIZER_BYTES`].
pub fn read_tokenizer(path: &Path) -> Result<Tokenizer, EngineError> {
    let bytes = crate::fsutil::read_limited(path, MAX_TOKENIZER_BYTES)
        .map_err(|e| EngineError::Tokenizer(format!("cannot read {}: {e}", path.display())))?;
    tokenizer_from_bytes(&bytes, path)
}

/// What the engine takes from a `tokenizer_config.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub add_bos_token: Option<bool>,
    pub chat_template: Option<String>,
}

impl TokenizerConfig {
    /// Parses the file's bytes; the error says what is wrong with them.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON ({e})"))?;
        if !json.is_object() {
            return Err("not a JSON object".into());
        }
        Ok(TokenizerConfig {
            bos_token: token_string(json.get("bos_token")),
            eos_token: token_string(json.get("eos_token")),
            add_bos_token: json.get("add_bos_token").and_then(|v| v.as_bool()),
            chat_template: super::template::template_from_json(&json),
        })
    }
}

/// `bos_token` / `eos_token` written as a string or as `{"content": ...}`.
fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

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
            Some(p) if p.is_file() => read_tokenizer(&p)?,
            _ => from_gguf_metadata(path, content, &meta)?,
        };
        let model_kind = meta.opt_str("tokenizer.ggml.model").unwrap_or("gpt2");
        // llama.cpp's default: SentencePiece vocabularies add BOS, BPE ones do not.
        // llama.cpp adds BOS to every Gemma 4 prompt whatever the file says.
        let add_bos = model_kind == "gemma4"
            || meta
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
        Ok(Self::with_stops(tok, bos_id, eos_id, add_bos, stop_ids))
    }

    /// Adds the chat templates' end-of-turn tokens the vocabulary has to `stop_ids`.
    fn with_stops(
        tok: Tokenizer,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        add_bos: bool,
        mut stop_ids: Vec<u32>,
    ) -> Self {
        // Harmony (gpt-oss) ends each message with `<|end|>` and the turn with `<|return|>` or
        // `<|call|>`: the reasoning message's end must not stop the answer that follows
        // (llama.cpp drops `<|end|>` from its end-of-generation tokens for the same reason).
        let harmony: Vec<u32> = HARMONY_STOPS
            .iter()
            .filter_map(|t| tok.token_to_id(t))
            .collect();
        let harmony_end = (harmony.len() == HARMONY_STOPS.len())
            .then(|| tok.token_to_id("<|end|>"))
            .flatten();
        stop_ids.extend(
            TEMPLATE_END_TOKENS
                .iter()
                .filter_map(|t| tok.token_to_id(t)),
        );
        if harmony.len() == HARMONY_STOPS.len() {
            stop_ids.extend(harmony);
            stop_ids.retain(|id| Some(*id) != harmony_end);
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        Self {
            tok,
            bos_id,
            eos_id,
            add_bos,
            stop_ids,
        }
    }

    /// A `tokenizer.json` with ids taken from the model's config files (safetensors folders).
    pub fn from_file(
        path: &Path,
        bos_id: Option<u32>,
        eos_ids: &[u32],
        add_bos: bool,
    ) -> Result<Self, EngineError> {
        let tok = read_tokenizer(path)?;
        Ok(Self::with_stops(
            tok,
            bos_id,
            eos_ids.first().copied(),
            add_bos,
            eos_ids.to_vec(),
        ))
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
    if kind == "llama" {
        return sentencepiece_bpe(path, meta);
    }
    if kind == "gemma4" {
        return gemma4_bpe(path, meta);
    }
    if kind != "gpt2" {
        // Unigram / WordPiece GGUF vocabularies are not rebuilt from metadata.
        return Err(EngineError::MissingTokenizer {
            path: path.to_path_buf(),
        });
    }
    let mut tok = Tokenizer::from_gguf(content).map_err(|e| {
        EngineError::Tokenizer(format!(
            "cannot build the tokenizer from GGUF metadata: {e}"
        ))
    })?;
    // llama.cpp reads a file without the key as its `default` pre-tokenizer.
    let pre = meta.opt_str("tokenizer.ggml.pre").unwrap_or("default");
    if let Some((normalizer, pt)) = pre_tokenizer_for(pre)? {
        if let Some(n) = normalizer {
            tok.with_normalizer(Some(n)).map_err(tok_err)?;
        }
        tok.with_pre_tokenizer(Some(pt));
    }
    if IGNORE_MERGES.contains(&pre) {
        if let tokenizers::models::ModelWrapper::BPE(bpe) = tok.get_model() {
            let mut bpe = bpe.clone();
            bpe.ignore_merges = true;
            tok.with_model(bpe);
        }
    }
    Ok(tok)
}

/// Pre-tokenizer names for which llama.cpp emits a word that is a whole vocabulary token as
/// that token before trying merges (its `ignore_merges`, as these models' `tokenizer.json`
/// say); BPE's merges can reach a different split of the same word.
const IGNORE_MERGES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "tekken",
    "glm4",
    "glm5",
];

const REGEX_LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const REGEX_GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// o200k (gpt-4o, gpt-oss, Llama 4) as llama.cpp adapts it: a letter run splits before an
/// upper-case letter that follows lower-case ones, and a contraction stays on its word. The
/// original's `\p{Lu}…`/`\p{Ll}…` classes become "a letter but not a-z" / "not A-Z", so every
/// non-ASCII letter counts as both cases; llama.cpp matches on that adaptation, so we do too.
const REGEX_GPT4O: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Mistral's tekken: o200k's case split without the contractions, one digit at a time.
const REGEX_TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

type PreTokenizerFix = Option<(Option<tokenizers::NormalizerWrapper>, PreTokenizerWrapper)>;

/// The `tokenizer.ggml.pre` names llama.cpp (0c1e570) maps to GPT-2's split, to a digit split
/// before GPT-2's (starcoder), to Llama 3's, to Qwen 2's and to o200k's.
const PRE_GPT2: &[&str] = &[
    "gpt2",
    "gpt-2",
    "phi-2",
    "jina-es",
    "jina-de",
    "gigachat",
    "jina-v2-es",
    "jina-v2-de",
    "a.x-4.0",
    "mellum",
    "modern-bert",
    "mpt",
    "olmo",
    "jais",
    "trillion",
    "granite-docling",
    "exaone4",
    "jina-v1-en",
    "jina-v2-code",
    "roberta-bpe",
];
const PRE_STARCODER: &[&str] = &[
    "smollm",
    "starcoder",
    "refact",
    "command-r",
    "codeshell",
    "exaone",
    "minerva-7b",
    "mellum2",
];
const PRE_LLAMA3: &[&str] = &[
    "llama-bpe",
    "llama-v3",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "jina-v5-nano",
    "dbrx",
    "chatglm-bpe",
    "glm4",
    "glm5",
];
const PRE_QWEN2: &[&str] = &[
    "kormo",
    "f2llmv2",
    "megrez",
    "stablelm2",
    "hunyuan",
    "solar-open",
];
const PRE_GPT4O: &[&str] = &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"];

/// Pre-tokenizers for `tokenizer.ggml.pre` values that candle's `from_gguf` gets wrong: it
/// falls back to GPT-2's ByteLevel with `add_prefix_space = true` for every name it does not
/// know, while llama.cpp adds no prefix space. `None` keeps candle's choice (qwen2, llama3).
/// A name this table does not know keeps GPT-2's split with a warning: llama.cpp refuses such
/// a file, but its text may still tokenize close enough to be useful.
fn pre_tokenizer_for(pre: &str) -> Result<PreTokenizerFix, EngineError> {
    use tokenizers::normalizers::unicode::NFC;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::SplitDelimiterBehavior;
    let split = |re: &str| -> Result<PreTokenizerWrapper, EngineError> {
        Ok(Split::new(
            SplitPattern::Regex(re.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(tok_err)?
        .into())
    };
    // After a regex split, bytes map to GPT-2's characters without a second split.
    let regex_then_bytes = |re: &str| -> Result<PreTokenizerFix, EngineError> {
        Ok(Some((
            None,
            Sequence::new(vec![split(re)?, ByteLevel::new(false, true, false).into()]).into(),
        )))
    };
    let gpt2 = || Some((None, ByteLevel::new(false, true, true).into()));
    Ok(match pre {
        "qwen2" | "llama3" | "smaug-bpe" | "lfm2" => None,
        "deepseek-r1-qwen" => Some((
            Some(NFC.into()),
            Sequence::new(vec![
                split(REGEX_QWEN2)?,
                ByteLevel::new(false, false, false).into(),
            ])
            .into(),
        )),
        "tekken" => regex_then_bytes(REGEX_TEKKEN)?,
        // Each split refines the previous one's pieces, as llama.cpp applies its list.
        "default" => Some((
            None,
            Sequence::new(vec![
                split(r"[\p{P}\$\+<=>\^~\|]+")?,
                split(REGEX_GPT2)?,
                split(r"\p{N}+")?,
                split("[0-9][0-9][0-9]")?,
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
        )),
        p if PRE_STARCODER.contains(&p) => Some((
            None,
            Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
        )),
        p if PRE_LLAMA3.contains(&p) => regex_then_bytes(REGEX_LLAMA3)?,
        p if PRE_QWEN2.contains(&p) => regex_then_bytes(REGEX_QWEN2)?,
        p if PRE_GPT4O.contains(&p) => regex_then_bytes(REGEX_GPT4O)?,
        p if PRE_GPT2.contains(&p) => gpt2(),
        other => {
            tracing::warn!(
                "unknown pre-tokenizer `{other}` (tokenizer.ggml.pre): splitting text as GPT-2 \
                 does, so tokens may differ from the model's own tokenizer"
            );
            gpt2()
        }
    })
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
            // Normally `text` extends `prev_text`; if a decoder rewrote earlier characters,
            // emit from the first difference, always on a character boundary.
            let common = text
                .char_indices()
                .zip(prev_text.chars())
                .take_while(|((_, a), b)| a == b)
                .last()
                .map_or(0, |((i, c), _)| i + c.len_utf8());
            let piece = text[common..].to_string();
            self.prev = self.cur;
            self.cur = self.ids.len();
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }
}

fn string_array(meta: &Meta, key: &str) -> Option<Vec<String>> {
    match meta.get(key)? {
        GValue::Array(a) => a
            .iter()
            .map(|v| match v {
                GValue::String(s) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

fn number_array(meta: &Meta, key: &str) -> Option<Vec<f64>> {
    match meta.get(key)? {
        GValue::Array(a) => a
            .iter()
            .map(|v| match v {
                GValue::F32(x) => Some(*x as f64),
                GValue::F64(x) => Some(*x),
                GValue::I32(x) => Some(*x as f64),
                GValue::U32(x) => Some(*x as f64),
                GValue::I8(x) => Some(*x as f64),
                GValue::U8(x) => Some(*x as f64),
                GValue::I64(x) => Some(*x as f64),
                GValue::U64(x) => Some(*x as f64),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Rebuilds a SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`: Llama 2, Mistral,
/// TinyLlama, Phi-3, Gemma) as a `tokenizers` BPE: GGUF stores tokens and scores but no
/// merges, so every split of a token into two vocabulary pieces becomes a merge ranked by the
/// merged token's score (the ordering SentencePiece applies), with byte fallback for the rest.
fn sentencepiece_bpe(path: &Path, meta: &Meta) -> Result<Tokenizer, EngineError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::strip::Strip;
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
    use tokenizers::AddedToken;

    let missing = || EngineError::MissingTokenizer {
        path: path.to_path_buf(),
    };
    let tokens = string_array(meta, "tokenizer.ggml.tokens").ok_or_else(missing)?;
    let scores = number_array(meta, "tokenizer.ggml.scores")
        .filter(|s| s.len() == tokens.len())
        .unwrap_or_else(|| (0..tokens.len()).map(|i| -(i as f64)).collect());
    let types = number_array(meta, "tokenizer.ggml.token_type")
        .filter(|t| t.len() == tokens.len())
        .map(|t| t.into_iter().map(|x| x as u32).collect::<Vec<u32>>());
    let add_space_prefix = meta
        .opt_bool("tokenizer.ggml.add_space_prefix")
        .unwrap_or(true);

    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    // Only normal tokens (type 1) are built by merges; control, byte and user tokens are not.
    let is_normal = |i: usize| types.as_ref().is_none_or(|t| t[i] == 1);
    let mut ranked: Vec<(f64, u32, u32, String, String)> = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !is_normal(i) {
            continue;
        }
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                ranked.push((scores[i], li, ri, l.to_string(), r.to_string()));
            }
        }
    }
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = ranked.into_iter().map(|m| (m.3, m.4)).collect();

    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = meta
        .opt_usize("tokenizer.ggml.unknown_token_id")
        .or_else(|| meta.opt_usize("tokenizer.ggml.unk_token_id"))
        .and_then(|i| tokens.get(i))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder.build().map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);

    let replace = Replace::new(" ", "\u{2581}").map_err(tok_err)?;
    if add_space_prefix {
        tok.with_normalizer(Some(NormSequence::new(vec![
            Prepend::new("\u{2581}".into()).into(),
            replace.into(),
        ])))
        .map_err(tok_err)?;
    } else {
        tok.with_normalizer(Some(replace)).map_err(tok_err)?;
    }
    let mut decoders = vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ];
    if add_space_prefix {
        decoders.push(DecoderWrapper::Strip(Strip::new(' ', 1, 0)));
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));

    if let Some(types) = &types {
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(_, ty)| **ty == 3)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(special).map_err(tok_err)?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(_, ty)| **ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), false))
            .collect();
        tok.add_tokens(user).map_err(tok_err)?;
    }
    Ok(tok)
}

/// Gemma 4's vocabulary (`tokenizer.ggml.model = gemma4`): a BPE over raw UTF-8 with its merges
/// in the file, spaces written as `▁`, and no word splitting but at newlines (llama.cpp's
/// `gemma4` pre-tokenizer), with byte fallback.
fn gemma4_bpe(path: &Path, meta: &Meta) -> Result<Tokenizer, EngineError> {
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecoderSequence;
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::models::bpe::{Vocab, BPE};
    use tokenizers::normalizers::Replace;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::{AddedToken, SplitDelimiterBehavior};

    let missing = || EngineError::MissingTokenizer {
        path: path.to_path_buf(),
    };
    let tokens = string_array(meta, "tokenizer.ggml.tokens").ok_or_else(missing)?;
    let merges: Vec<(String, String)> = string_array(meta, "tokenizer.ggml.merges")
        .ok_or_else(missing)?
        .into_iter()
        .filter_map(|m| {
            // As llama.cpp reads them: split at the first space after the first character
            // (a merge may join a space token to something).
            let (at, _) = m.char_indices().skip(1).find(|&(_, c)| c == ' ')?;
            Some((m[..at].to_string(), m[at + 1..].to_string()))
        })
        .collect();
    let types = number_array(meta, "tokenizer.ggml.token_type")
        .filter(|t| t.len() == tokens.len())
        .map(|t| t.into_iter().map(|x| x as u32).collect::<Vec<u32>>());
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(i as u32);
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .build()
        .map_err(tok_err)?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_normalizer(Some(Replace::new(" ", "\u{2581}").map_err(tok_err)?))
        .map_err(tok_err)?;
    let newlines = Split::new(
        SplitPattern::Regex("\n+".into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(tok_err)?;
    tok.with_pre_tokenizer(Some(newlines));
    tok.with_decoder(Some(DecoderSequence::new(vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(tok_err)?),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ])));
    if let Some(types) = &types {
        let special: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(_, ty)| **ty == 3)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tok.add_special_tokens(special).map_err(tok_err)?;
        let user: Vec<AddedToken> = tokens
            .iter()
            .zip(types)
            .filter(|(_, ty)| **ty == 4)
            .map(|(t, _)| AddedToken::from(t.clone(), false))
            .collect();
        tok.add_tokens(user).map_err(tok_err)?;
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::tokenizer::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn splits(pre: &str, input: &str) -> Vec<String> {
        let (_, pt) = pre_tokenizer_for(pre).unwrap().unwrap();
        let mut s = PreTokenizedString::from(input);
        pt.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(s, _, _)| s.to_string())
            .collect()
    }

    /// Regression (found by the `tokenizer_files` fuzz twin): a control character inside the
    /// `decoder` object made tokenizers panic instead of returning an error.
    #[test]
    fn a_broken_decoder_is_an_error_not_a_panic() {
        let json = "{\"version\":\"1.0\",\"decoder\":{\"type\":\"Byte\u{1}Level\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}";
        let err = tokenizer_from_bytes(json.as_bytes(), Path::new("t/tokenizer.json")).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("t/tokenizer.json") && msg.contains("not valid JSON"),
            "{msg}"
        );
    }

    /// Regression (fuzz twin): invalid UTF-8 or a lone surrogate inside `decoder` passed a
    /// syntax-only check and still reached the panic.
    #[test]
    fn strings_inside_the_decoder_are_checked_too() {
        for bad in [&b"\"Byte\xffLevel\""[..], b"\"Byte\\ud800Level\""] {
            let mut json = br#"{"version":"1.0","decoder":{"type":"#.to_vec();
            json.extend(bad);
            json.extend(br#"},"model":{"type":"BPE","vocab":{},"merges":[]}}"#);
            let err = tokenizer_from_bytes(&json, Path::new("tokenizer.json")).unwrap_err();
            assert!(err.to_string().contains("not valid JSON"), "{err}");
        }
    }

    /// Regression (fuzz target `tokenizer_files`, crash-fb83933d): a merge longer than every
    /// vocabulary token made tokenizers index past its buffer.
    #[test]
    fn a_merge_longer_than_the_vocabulary_is_an_error_not_a_panic() {
        for merges in [r#"["He ll"]"#, r#"[["He", "ll"]]"#] {
            let json = format!(
                r#"{{"version":"1.0","model":{{"type":"BPE","vocab":{{"<s>":0,"H":1,"e":2,"l":3,"He":4,"ll":5}},"merges":{merges}}}}}"#
            );
            let err =
                tokenizer_from_bytes(json.as_bytes(), Path::new("tokenizer.json")).unwrap_err();
            assert!(err.to_string().contains("longer than any"), "{err}");
        }
        // The real shape still loads.
        let ok = r#"{"version":"1.0","model":{"type":"BPE","vocab":{"H":0,"e":1,"He":2},"merges":["H e"]}}"#;
        tokenizer_from_bytes(ok.as_bytes(), Path::new("tokenizer.json")).unwrap();
    }

    #[test]
    fn tokenizer_config_fields_and_errors() {
        let c = TokenizerConfig::parse(
            br#"{"bos_token": {"content": "<s>"}, "eos_token": "</s>", "add_bos_token": true,
                "chat_template": [{"name": "default", "template": "T"}]}"#,
        )
        .unwrap();
        assert_eq!(c.bos_token.as_deref(), Some("<s>"));
        assert_eq!(c.eos_token.as_deref(), Some("</s>"));
        assert_eq!(c.add_bos_token, Some(true));
        assert_eq!(c.chat_template.as_deref(), Some("T"));
        assert!(TokenizerConfig::parse(b"[1]")
            .unwrap_err()
            .contains("JSON object"));
        assert!(TokenizerConfig::parse(b"{")
            .unwrap_err()
            .contains("not valid JSON"));
    }

    #[test]
    fn llama_bpe_groups_digits_by_three_without_prefix_space() {
        assert_eq!(
            splits("llama-bpe", "Hi 12345"),
            ["Hi", "\u{120}", "123", "45"]
        );
    }

    #[test]
    fn smollm_splits_digits_individually() {
        assert_eq!(splits("smollm", "a 123"), ["a", "\u{120}", "1", "2", "3"]);
    }

    #[test]
    fn unknown_pre_adds_no_prefix_space() {
        assert_eq!(
            splits("no-such-pre", "Hello world"),
            ["Hello", "\u{120}world"]
        );
        assert_eq!(splits("default", "Hello world"), ["Hello", "\u{120}world"]);
    }

    /// llama.cpp's `default`: punctuation runs first, then GPT-2's split, then digit runs in
    /// threes from the left.
    #[test]
    fn default_pre_splits_punctuation_then_digits_by_three() {
        assert_eq!(
            splits("default", "a+=b 12345"),
            ["a", "+=", "b", "\u{120}", "123", "45"]
        );
    }

    /// o200k: a case change splits a word, a contraction stays on it, digits go by three with
    /// no space before them, and `/` joins the punctuation run before a newline.
    #[test]
    fn gpt_4o_splits_case_changes_contractions_and_digits() {
        assert_eq!(
            splits("gpt-4o", "helloWorld I'm 12345 a/\n"),
            [
                "hello",
                "World",
                "\u{120}I'm",
                "\u{120}",
                "123",
                "45",
                "\u{120}a",
                "/\u{10a}",
            ]
        );
    }

    #[test]
    fn known_pipelines_are_left_to_candle() {
        assert!(pre_tokenizer_for("qwen2").unwrap().is_none());
    }
}
