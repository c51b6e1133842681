//! A loaded generative model: what the GGUF and safetensors loaders build and the worker runs.

use std::sync::Arc;

use super::constraint::Vocab;
use super::decoder::Decoder;
use super::template::ChatTemplate;
use super::tokenize::TextTokenizer;
use super::EngineError;

/// A generative model with its tokenizer, template and the ids currently in its KV cache.
pub(crate) struct GenModel {
    pub dec: Decoder,
    pub tok: TextTokenizer,
    pub template: ChatTemplate,
    /// Token ids whose keys/values sit in `dec`'s cache, in order.
    pub cached: Vec<u32>,
    /// The vocabulary prepared for constrained decoding, built on the first request that
    /// needs it (a failure is kept too, so it is not retried on every request).
    pub vocab: Option<Result<Arc<Vocab>, EngineError>>,
}

impl GenModel {
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
