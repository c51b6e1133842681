//! What `/api/ps` (Ollama) and `/v1/models` (OpenAI) both report about loaded models: one
//! function, so the two dialects answer the same facts.

use serde_json::{json, Value};

use super::models::ModelEntry;
use super::{Dialect, ServerCtx};

/// A model loaded in the engine now.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub name: String,
    pub entry: Option<ModelEntry>,
    pub info: crate::engine::ModelInfo,
    /// The Library's estimate (weights, KV cache for its context, buffers), or the file size.
    pub memory_bytes: u64,
}

/// Requests generating now and waiting for their turn, across all models (one engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Activity {
    pub running: usize,
    pub waiting: usize,
}

pub async fn loaded(ctx: &ServerCtx) -> Vec<Loaded> {
    ctx.loaded_models()
        .await
        .into_iter()
        .map(|info| {
            let name = ctx.name_for_path(&info.id);
            let entry = ctx.resolve_model(Some(&name), Dialect::Ollama).ok();
            let memory_bytes = entry.as_ref().map_or(0, |e| {
                e.model
                    .as_ref()
                    .and_then(|m| m.memory_estimate)
                    .unwrap_or_else(|| e.size())
            });
            Loaded {
                name,
                entry,
                info,
                memory_bytes,
            }
        })
        .collect()
}

pub fn activity(ctx: &ServerCtx) -> Activity {
    let q = ctx.queue();
    let waiting = q.depth();
    Activity {
        running: q.in_use().saturating_sub(waiting),
        waiting,
    }
}

/// The facts both dialects attach to a loaded model.
pub fn facts(ctx: &ServerCtx, m: &Loaded) -> Value {
    let mut v = json!({
        "device": ctx.engine().device().label,
        "memory_bytes": m.memory_bytes,
        "context_length": m.info.context_length,
    });
    // On a GPU: how many of its layers run there (the CPU runs the rest).
    if let Some((n, all)) = m.info.gpu_layers {
        v["gpu_layers"] = json!(n);
        v["layers"] = json!(all);
    }
    v
}

/// The engine's streams and KV use: every sequence it decodes (the app's chat included), not
/// only this server's requests.
pub fn engine_facts(s: &crate::engine::EngineStats) -> Value {
    json!({
        "active_sequences": s.active,
        "waiting_sequences": s.waiting,
        "parallel": s.parallel,
        "max_batch": s.max_batch,
        "kv_used_positions": s.kv_used,
        "kv_budget_positions": s.kv_budget,
        "kv_bytes": s.kv_bytes,
        "kv_evictions": s.evictions,
    })
}
