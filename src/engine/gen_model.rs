//! A loaded generative model: what the GGUF and safetensors loaders build and the worker runs.

use std::sync::Arc;

use super::constraint::Vocab;
use super::decoder::Decoder;
use super::scheduler::Batcher;
use super::template::ChatTemplate;
use super::tokenize::TextTokenizer;
use super::EngineError;

/// A generative model with its tokenizer, template and the scheduler of its sequences.
pub(crate) struct GenModel {
    pub dec: Decoder,
    pub tok: TextTokenizer,
    pub template: ChatTemplate,
    /// Its running and waiting sequences and their KV slots.
    pub batch: Batcher,
    /// The vocabulary prepared for constrained decoding, built on the first request that
    /// needs it (a failure is kept too, so it is not retried on every request).
    pub vocab: Option<Result<Arc<Vocab>, EngineError>>,
}

impl GenModel {
    /// One sequence at a time within the model's context, until the engine configures it.
    pub fn new(dec: Decoder, tok: TextTokenizer, template: ChatTemplate) -> Self {
        let ctx = dec.cfg.context_length;
        let state = dec.state_bytes_per_slot();
        if state > 0 {
            tracing::info!(
                mib = state as f64 / (1 << 20) as f64,
                checkpoints = super::recurrent::CHECKPOINTS_PER_SLOT,
                "recurrent state per sequence; each turn checkpoint takes as much again"
            );
        }
        Self {
            dec,
            tok,
            template,
            batch: Batcher::new(1, ctx),
            vocab: None,
        }
    }

    pub fn vocab(&mut self) -> Result<Arc<Vocab>, EngineError> {
        if self.vocab.is_none() {
            let t = std::time::Instant::now();
            let v = Vocab::build(&self.tok).map(Arc::new);
            tracing::info!(
                ms = t.elapsed().as_millis() as u64,
                ok = v.is_ok(),
                "vocabulary prepared for constrained decoding"
            );
            self.vocab = Some(v);
        }
        self.vocab
            .clone()
            .unwrap_or(Err(EngineError::EngineStopped))
    }
}
