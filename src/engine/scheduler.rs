//! Continuous batching for one loaded model.
//!
//! Every [`Batcher::step`] runs one batched decode forward over every sequence that has a token
//! to feed (the weights are read once for all of them), then at most one prompt chunk of one
//! sequence that is still prefilling. So a long prompt that arrives mid-stream delays running
//! streams by one chunk per step, and a finished or cancelled sequence leaves its slot at once.
//!
//! Each sequence owns a KV slot of the decoder. A slot keeps the token ids whose keys and values
//! it holds after its sequence ends, so a returning conversation lands on the slot with its
//! prefix and prefills only the rest. Slots live inside a budget of KV positions: admission
//! reserves `prompt + max_tokens` positions, and idle slots are evicted least recently used
//! first when a new sequence needs their room.
//!
//! Interactive requests (the app's chat) come first: one slot beyond `parallel` is theirs alone,
//! they are admitted before waiting API requests, and their prompt chunks run before others'.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedSender;

use super::constraint::{SeqConstraint, Step};
use super::decoder::{Decoder, SeqStep};
use super::sampling::Sampler;
use super::stop::StopMatcher;
use super::tokenize::{Detokenizer, TextTokenizer};
use super::{CancelToken, EngineError, FinishReason, GenEvent, GenParams, GenStats};

/// Prompt tokens fed per forward pass during prefill: bounds attention memory, lets a cancel
/// land between chunks and bounds how long one step delays running streams.
pub const PREFILL_CHUNK: usize = 128;

/// Who is waiting for a generation: the person at the keyboard, or an API client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Priority {
    Interactive,
    #[default]
    Background,
}

/// Counters and gauges of the engine's scheduling, shared with `/metrics`, `influence ps` and
/// the status bar. Written by the engine thread only.
#[derive(Debug, Default)]
pub struct EngineCounters {
    pub steps: AtomicU64,
    /// Batched decode forwards, and the rows they carried (their sum / steps = mean batch).
    pub decode_steps: AtomicU64,
    pub decode_rows: AtomicU64,
    pub max_batch: AtomicUsize,
    pub prefill_chunks: AtomicU64,
    /// The most prompt chunks any decoding sequence waited through between two of its tokens.
    pub max_chunks_between_tokens: AtomicUsize,
    pub evictions: AtomicU64,
    pub active: AtomicUsize,
    pub waiting: AtomicUsize,
    pub kv_used: AtomicUsize,
    pub kv_budget: AtomicUsize,
    pub kv_bytes: AtomicUsize,
    pub parallel: AtomicUsize,
}

/// A snapshot of [`EngineCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct EngineStats {
    pub steps: u64,
    pub decode_steps: u64,
    pub decode_rows: u64,
    pub max_batch: usize,
    pub prefill_chunks: u64,
    pub max_chunks_between_tokens: usize,
    pub evictions: u64,
    /// Sequences holding a slot now (prefilling or decoding).
    pub active: usize,
    /// Requests waiting for a slot.
    pub waiting: usize,
    /// KV positions reserved or held, and the budget they live in.
    pub kv_used: usize,
    pub kv_budget: usize,
    /// Bytes of KV memory allocated.
    pub kv_bytes: usize,
    pub parallel: usize,
}

impl EngineCounters {
    pub fn snapshot(&self) -> EngineStats {
        let r = Ordering::Relaxed;
        EngineStats {
            steps: self.steps.load(r),
            decode_steps: self.decode_steps.load(r),
            decode_rows: self.decode_rows.load(r),
            max_batch: self.max_batch.load(r),
            prefill_chunks: self.prefill_chunks.load(r),
            max_chunks_between_tokens: self.max_chunks_between_tokens.load(r),
            evictions: self.evictions.load(r),
            active: self.active.load(r),
            waiting: self.waiting.load(r),
            kv_used: self.kv_used.load(r),
            kv_budget: self.kv_budget.load(r),
            kv_bytes: self.kv_bytes.load(r),
            parallel: self.parallel.load(r),
        }
    }
}

/// A request that passed validation and waits for a slot.
pub(crate) struct Pending {
    pub ids: Vec<u32>,
    pub dropped: usize,
    pub params: GenParams,
    pub constraint: Option<SeqConstraint>,
    pub events: UnboundedSender<GenEvent>,
    pub cancel: CancelToken,
    pub priority: Priority,
    pub start: Instant,
    /// KV positions it reserves: prompt + max_tokens, at most the context.
    pub need: usize,
}

impl Pending {
    fn gone(&self) -> bool {
        self.cancel.is_cancelled() || self.events.is_closed()
    }
}

struct Slot {
    /// Token ids whose keys and values the slot holds, in order.
    ids: Vec<u32>,
    busy: bool,
    last_used: u64,
}

enum Phase {
    /// Prompt tokens `fed..` are still to be fed.
    Prefill { fed: usize },
    /// `next` is to be fed at the next decode step.
    Decode { next: u32 },
}

struct Seq {
    req: Pending,
    slot: usize,
    phase: Phase,
    sampler: Sampler,
    history: Vec<u32>,
    detok: Detokenizer,
    stop: StopMatcher,
    stats: GenStats,
    last_id: u32,
    decode_steps: usize,
    decode_ms: f64,
    first_token_at: Option<Instant>,
    /// Prompt chunks run since this sequence's last token.
    chunks_since_token: usize,
    /// The step that last gave it a prompt chunk (round-robin among prefilling sequences).
    last_chunk_step: u64,
}

/// What sampling one position decided.
enum After {
    Continue(u32),
    Finish(FinishReason),
}

/// The scheduler of one model: its slots, running sequences and waiting requests.
pub(crate) struct Batcher {
    parallel: usize,
    budget: usize,
    slots: Vec<Slot>,
    running: Vec<Seq>,
    waiting: VecDeque<Pending>,
    clock: u64,
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

impl Batcher {
    /// `parallel` API sequences at once (plus one interactive) within `budget` KV positions.
    pub fn new(parallel: usize, budget: usize) -> Self {
        let parallel = parallel.max(1);
        Self {
            parallel,
            budget: budget.max(1),
            slots: (0..=parallel)
                .map(|_| Slot {
                    ids: Vec::new(),
                    busy: false,
                    last_used: 0,
                })
                .collect(),
            running: Vec::new(),
            waiting: VecDeque::new(),
            clock: 0,
        }
    }

    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Sequences running or waiting.
    pub fn has_work(&self) -> bool {
        !self.running.is_empty() || !self.waiting.is_empty()
    }

    /// Queues a request; the caller checked that `need` fits the budget.
    pub fn submit(&mut self, p: Pending) {
        self.waiting.push_back(p);
    }

    /// Fails every sequence and request (after a panic, or when the model is unloaded) and
    /// forgets every slot's contents.
    pub fn fail_all(&mut self, dec: &mut Decoder, err: impl Fn() -> Option<EngineError>) {
        for s in self.running.drain(..) {
            finish_event(s.req.events.clone(), err(), &s.stats);
        }
        for p in self.waiting.drain(..) {
            let stats = empty_stats(&p);
            finish_event(p.events, err(), &stats);
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.ids.clear();
            slot.busy = false;
            dec.release_slot(i);
        }
    }

    /// Positions a slot holds against the budget: what is allocated, or what its sequence
    /// reserved; plus its recurrent state and checkpoints counted as the positions of as many
    /// bytes (what they hold now, or what a running sequence's may grow to).
    fn held(&self, dec: &Decoder, i: usize) -> usize {
        let running = self.running.iter().any(|s| s.slot == i);
        let reserved = self
            .running
            .iter()
            .find(|s| s.slot == i)
            .map_or(0, |s| s.req.need);
        let kv = dec
            .slot_capacity(i)
            .max(reserved)
            .max(self.slots[i].ids.len());
        let state = if running {
            dec.state_positions_reserve()
        } else {
            0
        };
        kv + dec.slot_state_positions(i).max(state)
    }

    fn used(&self, dec: &Decoder) -> usize {
        (0..self.slots.len()).map(|i| self.held(dec, i)).sum()
    }

    /// One scheduling step: admit, decode every running sequence once, feed one prompt chunk.
    pub fn step(&mut self, dec: &mut Decoder, tok: &TextTokenizer, counters: &EngineCounters) {
        self.clock += 1;
        counters.steps.fetch_add(1, Ordering::Relaxed);
        self.reap(dec);
        self.admit(dec, counters);
        self.decode(dec, tok, counters);
        self.prefill(dec, tok, counters);
        self.publish(dec, counters);
    }

    /// Ends cancelled sequences and drops requests whose client left.
    fn reap(&mut self, dec: &mut Decoder) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].req.gone() {
                let mut s = self.running.swap_remove(i);
                s.stats.finish = FinishReason::Cancelled;
                self.end(dec, s, None);
            } else {
                i += 1;
            }
        }
        self.waiting.retain(|p| {
            if p.gone() {
                let stats = GenStats {
                    finish: FinishReason::Cancelled,
                    ..empty_stats(p)
                };
                let _ = p.events.send(GenEvent::Done(stats));
                false
            } else {
                true
            }
        });
    }

    fn admit(&mut self, dec: &mut Decoder, counters: &EngineCounters) {
        loop {
            let busy = self.running.len();
            let background = self
                .running
                .iter()
                .filter(|s| s.req.priority == Priority::Background)
                .count();
            let pick = self
                .waiting
                .iter()
                .position(|p| p.priority == Priority::Interactive && busy < self.slots.len())
                .or_else(|| {
                    (background < self.parallel && busy < self.slots.len())
                        .then(|| {
                            self.waiting
                                .iter()
                                .position(|p| p.priority == Priority::Background)
                        })
                        .flatten()
                });
            let Some(at) = pick else { return };
            let slot = self.choose_slot(&self.waiting[at].ids);
            if !self.make_room(dec, slot, self.waiting[at].need, counters) {
                // FIFO within a class: a large request is not overtaken forever.
                return;
            }
            let p = self
                .waiting
                .remove(at)
                .expect("the picked request is in the queue");
            self.start(dec, p, slot);
        }
    }

    /// Where a request goes: the free slot that holds most of its prefix when that is more
    /// than half of what the slot holds (a returning conversation); else an empty slot; else
    /// the free slot sharing the longest prefix, least recently used on ties (so a shared
    /// system prompt does not pull every new conversation onto one slot).
    fn choose_slot(&self, ids: &[u32]) -> usize {
        let lcp = |s: &Slot| s.ids.iter().zip(ids).take_while(|(a, b)| a == b).count();
        let free = || self.slots.iter().enumerate().filter(|(_, s)| !s.busy);
        if let Some((i, _)) = free()
            .map(|(i, s)| (i, lcp(s), s.ids.len()))
            .filter(|&(_, n, len)| n > 0 && 2 * n > len)
            .max_by_key(|&(i, n, _)| (n, std::cmp::Reverse(i)))
            .map(|(i, n, _)| (i, n))
        {
            return i;
        }
        if let Some((i, _)) = free().find(|(_, s)| s.ids.is_empty()) {
            return i;
        }
        free()
            .max_by_key(|(_, s)| (lcp(s), std::cmp::Reverse(s.last_used)))
            .map(|(i, _)| i)
            .expect("admission checked that a slot is free")
    }

    /// Evicts idle slots, least recently used first, until `need` positions fit on `slot`.
    fn make_room(
        &mut self,
        dec: &mut Decoder,
        slot: usize,
        need: usize,
        counters: &EngineCounters,
    ) -> bool {
        loop {
            let others: usize = (0..self.slots.len())
                .filter(|&i| i != slot)
                .map(|i| self.held(dec, i))
                .sum();
            let state = dec.state_positions_reserve();
            if others + need.max(dec.slot_capacity(slot)) + state <= self.budget {
                return true;
            }
            let victim = (0..self.slots.len())
                .filter(|&i| i != slot && !self.slots[i].busy && self.held(dec, i) > 0)
                .min_by_key(|&i| self.slots[i].last_used);
            let Some(v) = victim else {
                // What is left belongs to running sequences; the chosen slot's own memory can go
                // when that is what stands in the way.
                if dec.slot_capacity(slot) > need && others + need + state <= self.budget {
                    dec.release_slot(slot);
                    self.slots[slot].ids.clear();
                    counters.evictions.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                return false;
            };
            dec.release_slot(v);
            self.slots[v].ids.clear();
            counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(&mut self, dec: &mut Decoder, p: Pending, slot: usize) {
        let s = &mut self.slots[slot];
        let lcp = s.ids.iter().zip(&p.ids).take_while(|(a, b)| a == b).count();
        // At least one prompt token is fed again to get logits.
        // A recurrent slot may keep less than asked (its latest checkpoint).
        let keep = dec.truncate_slot(slot, lcp.min(p.ids.len() - 1));
        s.ids.truncate(keep);
        s.busy = true;
        s.last_used = self.clock;
        dec.limit_slot(slot, p.need);
        let _ = p.events.send(GenEvent::Started {
            prompt_tokens: p.ids.len(),
            cached_tokens: keep,
            dropped_messages: p.dropped,
        });
        let stats = GenStats {
            cached_tokens: keep,
            ..empty_stats(&p)
        };
        self.running.push(Seq {
            sampler: Sampler::new(&p.params),
            history: p.ids.clone(),
            stop: StopMatcher::new(&p.params.stop),
            detok: Detokenizer::default(),
            req: p,
            slot,
            phase: Phase::Prefill { fed: keep },
            stats,
            last_id: 0,
            decode_steps: 0,
            decode_ms: 0.0,
            first_token_at: None,
            chunks_since_token: 0,
            last_chunk_step: 0,
        });
    }

    /// One batched forward over every sequence with a token to feed.
    fn decode(&mut self, dec: &mut Decoder, tok: &TextTokenizer, counters: &EngineCounters) {
        let rows: Vec<usize> = (0..self.running.len())
            .filter(|&i| matches!(self.running[i].phase, Phase::Decode { .. }))
            .collect();
        if rows.is_empty() {
            return;
        }
        let nexts: Vec<[u32; 1]> = rows
            .iter()
            .map(|&i| match self.running[i].phase {
                Phase::Decode { next } => [next],
                Phase::Prefill { .. } => unreachable!("filtered to decoding sequences"),
            })
            .collect();
        let steps: Vec<SeqStep> = rows
            .iter()
            .zip(&nexts)
            .map(|(&i, next)| SeqStep {
                slot: self.running[i].slot,
                ids: next,
                logits: true,
            })
            .collect();
        let t = Instant::now();
        let out = dec.forward_batch(&steps);
        let took = ms(t);
        counters.decode_steps.fetch_add(1, Ordering::Relaxed);
        counters
            .decode_rows
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        counters.max_batch.fetch_max(rows.len(), Ordering::Relaxed);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let e = EngineError::from(e);
                self.fail(dec, &rows, &e);
                return;
            }
        };
        let mut done = Vec::new();
        for ((&i, next), logits) in rows.iter().zip(&nexts).zip(out) {
            let s = &mut self.running[i];
            self.slots[s.slot].ids.push(next[0]);
            s.decode_steps += 1;
            s.decode_ms += took;
            counters
                .max_chunks_between_tokens
                .fetch_max(s.chunks_since_token, Ordering::Relaxed);
            s.chunks_since_token = 0;
            if let Some(end) = advance(s, tok, logits, dec) {
                done.push((i, end));
            }
        }
        self.remove(dec, done);
    }

    /// Feeds prompt chunks: interactive sequences first, then those served longest ago. One
    /// forward pass carries at most [`PREFILL_CHUNK`] prompt rows: one sequence's next chunk,
    /// or, when the model allows it without changing numbers ([`Decoder::packs_prompts`]),
    /// the whole next chunks of several short prompts.
    fn prefill(&mut self, dec: &mut Decoder, tok: &TextTokenizer, counters: &EngineCounters) {
        let mut order: Vec<usize> = (0..self.running.len())
            .filter(|&i| matches!(self.running[i].phase, Phase::Prefill { .. }))
            .collect();
        if order.is_empty() {
            return;
        }
        order.sort_by_key(|&i| {
            let s = &self.running[i];
            (
                s.req.priority != Priority::Interactive,
                s.last_chunk_step,
                i,
            )
        });
        let chunk = |s: &Seq| match s.phase {
            Phase::Prefill { fed } => (fed, (fed + PREFILL_CHUNK).min(s.req.ids.len())),
            Phase::Decode { .. } => unreachable!("filtered to prefilling sequences"),
        };
        let packs = dec.packs_prompts();
        let mut chosen = vec![order[0]];
        let (f, e) = chunk(&self.running[order[0]]);
        let mut rows = e - f;
        if packs {
            for &i in &order[1..] {
                let (f, e) = chunk(&self.running[i]);
                if rows + (e - f) <= PREFILL_CHUNK {
                    chosen.push(i);
                    rows += e - f;
                }
            }
        }
        let spans: Vec<(usize, usize)> = chosen.iter().map(|&i| chunk(&self.running[i])).collect();
        let steps: Vec<SeqStep> = chosen
            .iter()
            .zip(&spans)
            .map(|(&i, &(f, e))| {
                let s = &self.running[i];
                SeqStep {
                    slot: s.slot,
                    ids: &s.req.ids[f..e],
                    logits: e == s.req.ids.len(),
                }
            })
            .collect();
        let t = Instant::now();
        let out = dec.forward_batch(&steps);
        let took = ms(t);
        counters.prefill_chunks.fetch_add(1, Ordering::Relaxed);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                let e = EngineError::from(e);
                self.fail(dec, &chosen, &e);
                return;
            }
        };
        for (j, other) in self.running.iter_mut().enumerate() {
            if !chosen.contains(&j) && matches!(other.phase, Phase::Decode { .. }) {
                other.chunks_since_token += 1;
            }
        }
        let clock = self.clock;
        let mut done = Vec::new();
        for ((&i, &(f, e)), logits) in chosen.iter().zip(&spans).zip(out) {
            let s = &mut self.running[i];
            self.slots[s.slot].ids.extend_from_slice(&s.req.ids[f..e]);
            s.stats.prompt_ms += took;
            s.last_chunk_step = clock;
            if e < s.req.ids.len() {
                s.phase = Phase::Prefill { fed: e };
                continue;
            }
            let fed_now = s.req.ids.len() - s.stats.cached_tokens;
            if s.stats.prompt_ms > 0.0 {
                s.stats.prompt_tok_s = fed_now as f64 / (s.stats.prompt_ms / 1e3);
            }
            if let Some(end) = advance(s, tok, logits, dec) {
                done.push((i, end));
            }
        }
        self.remove(dec, done);
    }

    /// Fails the sequences at `idx` after a forward error; their slots may hold a partial
    /// chunk, so they are forgotten.
    fn fail(&mut self, dec: &mut Decoder, idx: &[usize], e: &EngineError) {
        self.remove(dec, idx.iter().map(|&i| (i, Err(e.clone()))).collect());
    }

    /// Ends the sequences at the given indices (any order).
    fn remove(&mut self, dec: &mut Decoder, mut done: Vec<(usize, Result<(), EngineError>)>) {
        done.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, r) in done {
            let s = self.running.swap_remove(i);
            self.end(dec, s, r.err());
        }
    }

    fn end(&mut self, dec: &mut Decoder, mut s: Seq, err: Option<EngineError>) {
        let slot = &mut self.slots[s.slot];
        slot.busy = false;
        slot.last_used = self.clock;
        if err.is_some() {
            slot.ids.clear();
            dec.truncate_slot(s.slot, 0);
        } else {
            let rest = s.stop.flush();
            if !rest.is_empty() && s.stats.finish != FinishReason::Stop {
                let _ = s.req.events.send(GenEvent::Token {
                    id: s.last_id,
                    text: rest,
                    logprob: None,
                });
            }
            if let Some(t) = s.first_token_at {
                s.stats.gen_ms = ms(t);
            }
            if s.decode_ms > 0.0 {
                s.stats.gen_tok_s = s.decode_steps as f64 / (s.decode_ms / 1e3);
            }
        }
        finish_event(s.req.events, err, &s.stats);
    }

    fn publish(&self, dec: &Decoder, counters: &EngineCounters) {
        let r = Ordering::Relaxed;
        counters.active.store(self.running.len(), r);
        counters.waiting.store(self.waiting.len(), r);
        counters.kv_used.store(self.used(dec), r);
        counters.kv_budget.store(self.budget, r);
        counters
            .kv_bytes
            .store(dec.kv_bytes_allocated() + dec.state_allocated(), r);
        counters.parallel.store(self.parallel, r);
    }
}

fn empty_stats(p: &Pending) -> GenStats {
    GenStats {
        prompt_tokens: p.ids.len(),
        cached_tokens: 0,
        generated_tokens: 0,
        ttft_ms: 0.0,
        prompt_ms: 0.0,
        gen_ms: 0.0,
        prompt_tok_s: 0.0,
        gen_tok_s: 0.0,
        finish: FinishReason::Stop,
    }
}

fn finish_event(events: UnboundedSender<GenEvent>, err: Option<EngineError>, stats: &GenStats) {
    let _ = events.send(match err {
        Some(e) => GenEvent::Failed(e),
        None => GenEvent::Done(stats.clone()),
    });
}

/// Moves `s` on from the logits of its last position: samples and sends its next token, which
/// the next decode step feeds. `Some` when the sequence ends (finished, or failed).
fn advance(
    s: &mut Seq,
    tok: &TextTokenizer,
    logits: Option<Vec<f32>>,
    dec: &Decoder,
) -> Option<Result<(), EngineError>> {
    let result = match logits {
        Some(l) => sample(s, tok, l, dec.slot_len(s.slot), dec.cfg.context_length),
        None => Err(EngineError::Candle("the decoder returned no logits".into())),
    };
    match result {
        Ok(After::Continue(id)) => {
            s.phase = Phase::Decode { next: id };
            None
        }
        Ok(After::Finish(f)) => {
            s.stats.finish = f;
            Some(Ok(()))
        }
        Err(e) => Some(Err(e)),
    }
}

/// Samples the token after `logits` for `s`, sends it, and says whether the sequence goes on.
/// `len` is the positions its slot holds.
fn sample(
    s: &mut Seq,
    tok: &TextTokenizer,
    mut logits: Vec<f32>,
    len: usize,
    ctx: usize,
) -> Result<After, EngineError> {
    let p = &s.req.params;
    if let Some(c) = &mut s.req.constraint {
        c.mask(&mut logits)?;
    }
    let id = s.sampler.sample(&mut logits, &s.history);
    let logprob = p
        .logprobs
        .map(|n| Box::new(token_logprob(tok, &logits, id, n as usize)));
    if tok.is_stop(id) {
        return Ok(After::Finish(FinishReason::Stop));
    }
    s.last_id = id;
    s.history.push(id);
    s.stats.generated_tokens += 1;
    let piece = s.detok.push(tok, id)?;
    let complete = match &mut s.req.constraint {
        Some(c) => c.accept(id, &piece)? == Step::Complete,
        None => false,
    };
    let (mut text, hit) = s.stop.push(&piece);
    if complete && !hit {
        // Nothing may follow a complete grammar: text held for a stop string is final.
        text.push_str(&s.stop.flush());
    }
    if s.stats.generated_tokens == 1 {
        s.stats.ttft_ms = ms(s.req.start);
        s.first_token_at = Some(Instant::now());
    }
    if hit || complete {
        if !text.is_empty() {
            let _ = s.req.events.send(GenEvent::Token { id, text, logprob });
        }
        return Ok(After::Finish(FinishReason::Stop));
    }
    if s.req
        .events
        .send(GenEvent::Token { id, text, logprob })
        .is_err()
    {
        return Ok(After::Finish(FinishReason::Cancelled));
    }
    if s.stats.generated_tokens >= p.max_tokens || len + 1 > ctx {
        return Ok(After::Finish(FinishReason::Length));
    }
    if s.req.cancel.is_cancelled() {
        return Ok(After::Finish(FinishReason::Cancelled));
    }
    Ok(After::Continue(id))
}

fn token_logprob(tok: &TextTokenizer, logits: &[f32], id: u32, top: usize) -> super::TokenLogprob {
    let text = |i: u32| tok.decode(&[i]).unwrap_or_default();
    let (logprob, best) = super::sampling::logprobs(logits, id, top);
    super::TokenLogprob {
        id,
        text: text(id),
        logprob,
        top: best
            .into_iter()
            .map(|(i, logprob)| super::TopLogprob {
                id: i,
                text: text(i),
                logprob,
            })
            .collect(),
    }
}
