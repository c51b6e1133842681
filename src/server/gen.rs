//! Running one generation for a request: queue, load, start, then events until done.
//!
//! The [`GenStream`] holds the request's place in the engine queue. Dropping it (the client
//! hung up, so hyper dropped the response body or the handler future) cancels the generation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedReceiver;

use crate::engine::{
    CancelToken, EngineError, GenEvent, GenParams, GenRequest, GenStats, ModelInfo, Prompt,
    TokenLogprob,
};

use super::error::{ApiError, Dialect};
use super::metrics::Metrics;
use super::models::ModelEntry;
use super::queue::Turn;
use super::ServerCtx;

/// A generation that has started (the engine accepted it and reported its prompt size).
pub struct GenStream {
    events: UnboundedReceiver<GenEvent>,
    cancel: CancelToken,
    _turn: Turn,
    metrics: Arc<Metrics>,
    finished: bool,
    pub prompt_tokens: usize,
    pub cached_tokens: usize,
    /// When the request arrived.
    pub request_start: Instant,
    /// Time spent making sure the model is loaded.
    pub load: Duration,
    pub info: ModelInfo,
}

impl Drop for GenStream {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

/// One step of a running generation, as the dialects render it.
pub enum Frame {
    /// Text (possibly empty while a character is incomplete) and, when asked for, the token's
    /// log-probability.
    Token(String, Option<Box<TokenLogprob>>),
    Done(GenStats),
    Failed(EngineError),
}

impl GenStream {
    /// The next token, the end, or a failure. `None` after the end.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if self.finished {
            return None;
        }
        loop {
            match self.events.recv().await {
                Some(GenEvent::Token { text, logprob, .. }) => {
                    if !text.is_empty() || logprob.is_some() {
                        return Some(Frame::Token(text, logprob));
                    }
                }
                Some(GenEvent::Started { .. }) => {}
                Some(GenEvent::Done(stats)) => {
                    self.finished = true;
                    self.metrics
                        .record_tokens(stats.prompt_tokens, stats.generated_tokens);
                    return Some(Frame::Done(stats));
                }
                Some(GenEvent::Failed(e)) => {
                    self.finished = true;
                    return Some(Frame::Failed(e));
                }
                None => {
                    self.finished = true;
                    return Some(Frame::Failed(EngineError::EngineStopped));
                }
            }
        }
    }
}

/// A request's turn at the engine with its model loaded.
pub struct Ready {
    turn: Turn,
    /// What the engine reported for the model (its chat template included).
    pub info: ModelInfo,
    load: Duration,
    request_start: Instant,
}

/// Waits in the queue (503 when it is full), then makes sure the model is loaded.
pub async fn admit_and_load(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
) -> Result<Ready, ApiError> {
    let request_start = Instant::now();
    let admitted = ctx
        .queue()
        .try_admit()
        .ok_or_else(|| ApiError::busy(dialect, ctx.options().retry_after_secs))?;
    let turn = admitted.turn().await;
    let t0 = Instant::now();
    let info = ctx
        .engine()
        .load(model.path.clone())
        .await
        .unwrap_or(Err(EngineError::EngineStopped))
        .map_err(|e| ApiError::from_engine(dialect, &model.name, e))?;
    ctx.note_loaded(&info);
    Ok(Ready {
        turn,
        info,
        load: t0.elapsed(),
        request_start,
    })
}

/// How `max_tokens` relates to the room left in the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The client chose `max_tokens`; the engine enforces the context.
    AsGiven,
    /// The client chose nothing: the default, but no more than fits.
    CapToRoom,
    /// Generate until the context is full (Ollama's `num_predict: -1`).
    Room,
}

/// Token budget of a generation.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Ollama's `num_ctx`: prompt + generated tokens stay under it (and under the model's).
    pub num_ctx: Option<usize>,
    pub fit: Fit,
}

impl Budget {
    pub fn as_given() -> Self {
        Budget {
            num_ctx: None,
            fit: Fit::AsGiven,
        }
    }
}

/// Starts generating on a loaded model (see [`admit_and_load`]), fitting `max_tokens` to the
/// room `budget` allows.
pub async fn begin(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
    ready: Ready,
    prompt: Prompt,
    mut params: GenParams,
    budget: Budget,
) -> Result<GenStream, ApiError> {
    let engine = ctx.engine();
    if budget.num_ctx.is_some() || budget.fit != Fit::AsGiven {
        let used = engine
            .count_tokens(model.path.clone(), prompt.clone())
            .await
            .unwrap_or(Err(EngineError::EngineStopped))
            .map_err(|e| ApiError::from_engine(dialect, &model.name, e))?;
        let context = ready.info.context_length.max(1);
        let limit = budget.num_ctx.map_or(context, |n| n.min(context));
        let room = limit.saturating_sub(used);
        if room == 0 {
            if let Some(n) = budget.num_ctx {
                return Err(ApiError::bad_field(
                    dialect,
                    "num_ctx",
                    format!("the prompt needs {used} tokens but num_ctx is {n}; raise num_ctx or shorten the prompt"),
                ));
            }
            // Too long for the model: the engine's context policy decides (drop or refuse).
        } else {
            match budget.fit {
                Fit::Room => params.max_tokens = room,
                Fit::CapToRoom => params.max_tokens = params.max_tokens.min(room),
                Fit::AsGiven if budget.num_ctx.is_some() => {
                    params.max_tokens = params.max_tokens.min(room)
                }
                Fit::AsGiven => {}
            }
        }
    }
    let mut generation = engine.generate(GenRequest {
        model: model.path.clone(),
        prompt,
        params,
    });
    let (prompt_tokens, cached_tokens) = loop {
        match generation.events.recv().await {
            Some(GenEvent::Started {
                prompt_tokens,
                cached_tokens,
                ..
            }) => break (prompt_tokens, cached_tokens),
            Some(GenEvent::Failed(e)) => {
                return Err(ApiError::from_engine(dialect, &model.name, e))
            }
            Some(_) => continue,
            None => {
                return Err(ApiError::from_engine(
                    dialect,
                    &model.name,
                    EngineError::EngineStopped,
                ))
            }
        }
    };
    Ok(GenStream {
        events: generation.events,
        cancel: generation.cancel,
        _turn: ready.turn,
        metrics: ctx.metrics().clone(),
        finished: false,
        prompt_tokens,
        cached_tokens,
        request_start: ready.request_start,
        load: ready.load,
        info: ready.info,
    })
}

/// What an embedding request produced.
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub load: Duration,
    pub total: Duration,
}

/// Embeds `texts` under the same queue rules as generations.
pub async fn embed(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
    texts: Vec<String>,
) -> Result<Embedded, ApiError> {
    let ready = admit_and_load(ctx, dialect, model).await?;
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        ctx.engine()
            .embed(model.path.clone(), texts)
            .await
            .unwrap_or(Err(EngineError::EngineStopped))
            .map_err(|e| ApiError::from_engine(dialect, &model.name, e))?
    };
    drop(ready.turn);
    Ok(Embedded {
        vectors,
        load: ready.load,
        total: ready.request_start.elapsed(),
    })
}

/// Loads a model without generating (Ollama's empty-prompt "load" requests).
pub async fn load_only(
    ctx: &ServerCtx,
    dialect: Dialect,
    model: &ModelEntry,
) -> Result<(Duration, Duration), ApiError> {
    let ready = admit_and_load(ctx, dialect, model).await?;
    Ok((ready.load, ready.request_start.elapsed()))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The sampling fields every dialect shares, with the same names and meaning in each.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct SamplingFields {
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub min_p: Option<f32>,
    #[serde(default)]
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<StopSpec>,
}

impl SamplingFields {
    /// The keys these fields take in a request body.
    pub const NAMES: &'static [&'static str] = &[
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "repeat_penalty",
        "seed",
        "stop",
    ];

    /// With the dialect's own `max_tokens` and `repeat_last_n`.
    pub fn input(self, max_tokens: Option<usize>, repeat_last_n: Option<usize>) -> ParamInput {
        ParamInput {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            repeat_last_n,
            max_tokens,
            seed: self.seed.map(|s| s as u64),
            stop: self.stop.map(StopSpec::into_vec),
        }
    }
}

/// Sampling fields as a request gave them; `None` keeps the server's default.
#[derive(Debug, Default)]
pub struct ParamInput {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<usize>,
    pub max_tokens: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Option<Vec<String>>,
}

/// Fills `defaults` with the request's values and validates them. `rename` maps engine field
/// names to the request's own (`max_tokens` → `num_predict`), so the 400 names what the client
/// sent.
pub fn build_params(
    defaults: &GenParams,
    input: ParamInput,
    rename: &[(&str, &str)],
    dialect: Dialect,
) -> Result<GenParams, ApiError> {
    let mut p = defaults.clone();
    if let Some(v) = input.temperature {
        p.temperature = v;
    }
    if let Some(v) = input.top_p {
        p.top_p = v;
    }
    if let Some(v) = input.top_k {
        p.top_k = v;
    }
    if let Some(v) = input.min_p {
        p.min_p = v;
    }
    if let Some(v) = input.repeat_penalty {
        p.repeat_penalty = v;
    }
    if let Some(v) = input.repeat_last_n {
        p.repeat_last_n = v;
    }
    if let Some(v) = input.max_tokens {
        p.max_tokens = v;
    }
    if input.seed.is_some() {
        p.seed = input.seed;
    }
    if let Some(v) = input.stop {
        p.stop = v;
    }
    p.validate().map_err(|msg| {
        let field = msg.split([' ', ':']).next().unwrap_or_default().to_string();
        match rename.iter().find(|(from, _)| *from == field) {
            Some((from, to)) => {
                ApiError::bad_field(dialect, to, format!("{to}{}", &msg[from.len()..]))
            }
            None => ApiError::bad_field(dialect, &field, msg),
        }
    })?;
    Ok(p)
}

/// `"\n"` or `["\n", "END"]`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}
