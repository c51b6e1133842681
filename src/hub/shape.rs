//! A model's shape (KV-cache size, embedding, context) read from the start of one of its GGUF
//! files on the Hub, so the Hub pane and `pull` estimate memory exactly as the Library does.

use super::client::HubClient;
use super::quant::group_gguf;
use super::types::ModelInfo;
use crate::library::gguf::read_metadata_prefix;
use crate::library::memory::ModelShape;

/// How much of a GGUF file is read: the keys that size the model come before the token list,
/// and the list's length before its strings, so a small prefix holds them all.
pub const SHAPE_PREFIX: usize = 256 * 1024;

/// The GGUF file whose header stands for the repo: the first part of its smallest complete model
/// (every quant of a repo shares the shape).
pub fn shape_source(info: &ModelInfo) -> Option<String> {
    group_gguf(&info.files)
        .into_iter()
        .filter(|g| g.complete && !g.is_projector)
        .min_by_key(|g| g.total_size)
        .and_then(|g| g.files.first().map(|f| f.path.clone()))
}

/// Reads the shape from the start of `path`. `Ok(None)` when the header does not say (an
/// architecture without the usual keys); `Err` with a message when it cannot be read.
pub async fn fetch_shape(
    client: &HubClient,
    repo: &str,
    revision: &str,
    path: &str,
) -> Result<Option<ModelShape>, String> {
    let bytes = client
        .read_prefix(repo, revision, path, SHAPE_PREFIX)
        .await
        .map_err(|e| e.to_string())?;
    let meta = read_metadata_prefix(&bytes).map_err(|e| format!("{path}: {e}"))?;
    Ok(ModelShape::from_metadata(&meta))
}
