//! A loaded generative model: what the GGUF and safetensors loaders build and the worker runs.

use super::decoder::Decoder;
use super::template::ChatTemplate;
use super::tokenize::TextTokenizer;

/// A generative model with its tokenizer, template and the ids currently in its KV cache.
pub(crate) struct GenModel {
    pub dec: Decoder,
    pub tok: TextTokenizer,
    pub template: ChatTemplate,
    /// Token ids whose keys/values sit in `dec`'s cache, in order.
    pub cached: Vec<u32>,
}
