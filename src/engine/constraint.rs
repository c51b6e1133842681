//! Constrained decoding: a grammar (a JSON Schema or a Lark grammar) decides, before each token
//! is drawn, which tokens may come next; the rest get a logit of −∞.
//!
//! The grammar engine is llguidance (MIT, the one llama.cpp, vLLM and SGLang use; see
//! docs/API.md). Two pieces, on two lifetimes:
//! - [`Vocab`]: the model's vocabulary as a token trie plus llguidance's `ParserFactory`. Built
//!   once per model, on the first constrained request, and kept with the model.
//! - [`SeqConstraint`]: one sequence's matcher. It belongs to the sequence being decoded, not to
//!   the engine, so a batched decoder can hold one per sequence.
//!
//! A constraint may be *lazy*: it only starts once the model has written its trigger text (the
//! tool-call opener in `tool_choice: auto`). It then constrains until its grammar is complete and
//! waits for the trigger again, so every call the model opens comes out well formed.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use super::tokenize::TextTokenizer;
use super::EngineError;

/// What the output must match.
#[derive(Debug, Clone, PartialEq)]
pub enum Grammar {
    /// A JSON Schema (draft 2020-12 subset llguidance supports). `true`/`{}` = any JSON value.
    JsonSchema(Value),
    /// A grammar in llguidance's Lark syntax (it may embed `%json { schema }`).
    Lark(String),
}

/// A grammar the output (or, when lazy, the part after a trigger) must match.
#[derive(Debug, Clone, PartialEq)]
pub struct Constraint {
    pub grammar: Grammar,
    /// Start constraining only after the output contains this text; `None` = from the first
    /// token.
    pub trigger: Option<String>,
    /// With a trigger: once the grammar is complete, wait for the trigger again (tool calls,
    /// of which an answer may hold several) instead of ending the output.
    pub repeat: bool,
    /// The request field that asked for it: errors about the grammar name it.
    pub field: String,
}

impl Constraint {
    /// Any JSON object (OpenAI's `json_object`, Ollama's `"json"`).
    pub fn json_object(field: &str) -> Self {
        Self::schema(serde_json::json!({"type": "object"}), field)
    }

    /// Output matching `schema`, written compactly so a model cannot wander in whitespace.
    pub fn schema(schema: Value, field: &str) -> Self {
        Constraint {
            grammar: Grammar::JsonSchema(compact(schema)),
            trigger: None,
            repeat: false,
            field: field.to_string(),
        }
    }

    pub fn lark(grammar: impl Into<String>, field: &str) -> Self {
        Constraint {
            grammar: Grammar::Lark(grammar.into()),
            trigger: None,
            repeat: false,
            field: field.to_string(),
        }
    }

    fn top_level(&self) -> TopLevelGrammar {
        match &self.grammar {
            Grammar::JsonSchema(s) => TopLevelGrammar::from_json_schema(s.clone()),
            Grammar::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }
}

/// JSON compile options written into the schema: fixed separators (`, ` and `: `, as models
/// write them) and no free whitespace, unless the schema already says otherwise.
pub fn compact(mut schema: Value) -> Value {
    if let Value::Object(o) = &mut schema {
        o.entry("x-guidance").or_insert_with(|| {
            serde_json::json!({
                "item_separator": ", ",
                "key_separator": ": ",
                "whitespace_flexible": false,
            })
        });
    }
    schema
}

/// The tokenizer as llguidance sees it: a trie of every token's bytes, and our tokenizer for
/// turning text into tokens.
struct Env {
    trie: TokTrie,
    tok: tokenizers::Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.tok.encode(text, false) {
                Ok(enc) => enc.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// A model's vocabulary prepared for constraints.
pub(crate) struct Vocab {
    factory: Arc<ParserFactory>,
    vocab_size: usize,
}

fn grammar_error(msg: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(format!(
        "constrained decoding is not available for this model's tokenizer: {msg}"
    ))
}

/// Runs llguidance code that may panic on input it did not expect; a panic becomes an error.
fn guarded<T>(what: &str, f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("{what} failed unexpectedly")),
    }
}

impl Vocab {
    /// Reads every token's bytes from the tokenizer (byte-level BPE or SentencePiece with byte
    /// fallback) and builds the trie; the model's stop tokens count as end of sequence.
    pub fn build(tok: &TextTokenizer) -> Result<Vocab, EngineError> {
        let inner = tok.inner();
        let json: Value = inner
            .to_string(false)
            .map_err(grammar_error)
            .and_then(|s| serde_json::from_str(&s).map_err(grammar_error))?;
        let mut words = guarded("reading the vocabulary", || {
            llguidance::token_bytes_from_tokenizer_json(&json)
        })
        .map_err(grammar_error)?;
        let vocab_size = words.len().max(inner.get_vocab_size(true));
        words.resize(vocab_size, Vec::new());
        let mut stops: Vec<TokenId> = tok
            .stop_ids
            .iter()
            .copied()
            .filter(|&i| (i as usize) < vocab_size)
            .collect();
        if stops.is_empty() {
            return Err(grammar_error("it has no end-of-sequence token"));
        }
        stops.sort_unstable();
        let info = TokRxInfo::new(vocab_size as u32, stops[0]);
        let factory = guarded("building the token trie", || {
            let trie = TokTrie::from(&info, &words).with_eos_tokens(&stops);
            let env: TokEnv = Arc::new(Env {
                trie,
                tok: inner.clone(),
            });
            let mut f = ParserFactory::new_simple(&env)?;
            f.quiet();
            Ok(f)
        })
        .map_err(grammar_error)?;
        Ok(Vocab {
            factory: Arc::new(factory),
            vocab_size,
        })
    }

    /// Compiles `c` for one sequence. A grammar that does not compile is the request's fault,
    /// reported against its field.
    pub fn start(&self, c: &Constraint) -> Result<SeqConstraint, EngineError> {
        let bad = |e: String| {
            EngineError::BadParams(format!("{}: the grammar cannot be used: {e}", c.field))
        };
        let matcher = guarded("compiling the grammar", || {
            let parser = self.factory.create_parser(c.top_level())?;
            let m = Matcher::new(Ok(parser));
            if let Some(e) = m.get_error() {
                anyhow::bail!("{e}");
            }
            Ok(m)
        })
        .map_err(bad)?;
        Ok(SeqConstraint {
            matcher,
            trigger: c.trigger.clone(),
            repeat: c.repeat && c.trigger.is_some(),
            active: c.trigger.is_none(),
            tail: String::new(),
            vocab_size: self.vocab_size,
        })
    }
}

/// What the constraint says after a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Go on.
    Continue,
    /// The grammar is complete and nothing more may follow: end the generation.
    Complete,
}

/// One sequence's constraint state.
pub struct SeqConstraint {
    matcher: Matcher,
    trigger: Option<String>,
    repeat: bool,
    active: bool,
    /// Recent output text, searched for the trigger while inactive.
    tail: String,
    vocab_size: usize,
}

impl SeqConstraint {
    /// Whether the next token is constrained.
    pub fn active(&self) -> bool {
        self.active
    }

    /// Sets the logits of every token the grammar forbids next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), EngineError> {
        if !self.active {
            return Ok(());
        }
        let mask = self
            .matcher
            .compute_mask()
            .map_err(|e| EngineError::Candle(format!("the grammar failed: {e}")))?;
        if self.repeat && self.only_end(&mask) {
            // A lazy grammar that is complete lets the model go on freely (another call, or
            // text), constrained again from the next trigger.
            return self.rearm();
        }
        let n = logits.len();
        mask.iter_unset_entries(|i| {
            if i < n {
                logits[i] = f32::NEG_INFINITY;
            }
        });
        for l in logits.iter_mut().skip(self.vocab_size.min(n)) {
            *l = f32::NEG_INFINITY;
        }
        Ok(())
    }

    /// Records the token just drawn (`text` is what it printed).
    pub fn accept(&mut self, id: u32, text: &str) -> Result<Step, EngineError> {
        if !self.active {
            let Some(trigger) = &self.trigger else {
                return Ok(Step::Continue);
            };
            self.tail.push_str(text);
            let Some(at) = self.tail.find(trigger.as_str()) else {
                // Keep only what could still be the start of the trigger.
                let keep = self.tail.len().saturating_sub(trigger.len());
                let cut = (keep..=self.tail.len())
                    .find(|&i| self.tail.is_char_boundary(i))
                    .unwrap_or(self.tail.len());
                self.tail.drain(..cut);
                return Ok(Step::Continue);
            };
            let after = self.tail[at + trigger.len()..].to_string();
            self.tail.clear();
            self.active = true;
            if !after.is_empty() {
                let ids = self
                    .matcher
                    .tok_env()
                    .map(|e| e.tokenize_bytes(after.as_bytes()));
                if ids
                    .and_then(|ids| self.matcher.consume_tokens(&ids))
                    .is_err()
                {
                    // The model wrote past the trigger in one token, in a way the grammar
                    // cannot read; leave this opening unconstrained.
                    tracing::debug!("constraint: text after the trigger does not fit the grammar");
                    self.rearm()?;
                }
            }
            return Ok(Step::Continue);
        }
        self.matcher
            .consume_token(id)
            .map_err(|e| EngineError::Candle(format!("the grammar failed: {e}")))?;
        if self.matcher.is_stopped() {
            if self.repeat {
                self.rearm()?;
                return Ok(Step::Continue);
            }
            return Ok(Step::Complete);
        }
        Ok(Step::Continue)
    }

    fn only_end(&self, mask: &llguidance::toktrie::SimpleVob) -> bool {
        let Ok(env) = self.matcher.tok_env() else {
            return false;
        };
        let eos = env.tok_trie().eos_tokens();
        let allowed_eos = eos.iter().filter(|&&t| mask.is_allowed(t)).count();
        allowed_eos > 0 && mask.num_set() == allowed_eos
    }

    /// A lazy constraint waits for its trigger again.
    fn rearm(&mut self) -> Result<(), EngineError> {
        self.active = false;
        self.tail.clear();
        self.matcher
            .reset()
            .map_err(|e| EngineError::Candle(format!("the grammar failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_adds_options_once() {
        let s = compact(serde_json::json!({"type": "object"}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        let mine =
            serde_json::json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(compact(mine.clone()), mine);
        assert_eq!(compact(Value::Bool(true)), Value::Bool(true));
    }
}
