//! The engine thread: owns the loaded models and serves [`EngineCmd`]s one at a time.

use std::path::Path;
use std::sync::mpsc;

use super::{EngineCmd, EngineError, EngineOptions, ModelKind};

pub(crate) fn wrong_kind(path: &Path, actual: ModelKind, wanted: ModelKind) -> EngineError {
    let (actual, wanted, wanted_kind) = match (actual, wanted) {
        (ModelKind::Embed, _) => ("an embedding", "text generation", "generative (chat)"),
        (ModelKind::Generate, _) => ("a generative", "embeddings", "embedding"),
    };
    EngineError::WrongKind {
        path: path.to_path_buf(),
        actual: actual.into(),
        wanted: wanted.into(),
        wanted_kind: wanted_kind.into(),
    }
}

pub(crate) fn run(rx: mpsc::Receiver<EngineCmd>, _opts: EngineOptions) {
    while let Ok(cmd) = rx.recv() {
        // Real model loading lands in the next commit.
        cmd.fail_stopped();
    }
}
