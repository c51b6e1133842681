//! The app: state, messages, the pure update, effects and the event loop that ties them.

pub mod chat;
pub mod downloads;
pub mod effect;
pub mod hub;
pub mod library;
pub mod msg;
pub mod server;
pub mod state;
pub mod update;

use crate::tui::frame::FrameClock;
use effect::EffectRunner;
use futures::{Stream, StreamExt};
use msg::Msg;
use ratatui::backend::Backend;
use ratatui::Terminal;
use state::State;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// What one run of the loop did, for tests and the frame-time benchmark.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoopStats {
    pub frames: u64,
    pub msgs: u64,
}

/// Runs until `state.quit`. Waits on terminal events, service messages and the next frame
/// deadline; drains everything queued, then draws at most once per frame interval, and only
/// when something changed. Generic over the backend so tests drive it on `TestBackend`.
pub async fn run<B, S>(
    terminal: &mut Terminal<B>,
    state: &mut State,
    mut events: S,
    rx: &mut UnboundedReceiver<Msg>,
    runner: &mut EffectRunner,
    mut clock: FrameClock,
) -> std::io::Result<LoopStats>
where
    B: Backend,
    S: Stream<Item = Msg> + Unpin,
{
    let mut stats = LoopStats::default();
    let mut events_open = true;
    loop {
        if state.dirty && clock.due(Instant::now()) {
            terminal.draw(|f| crate::ui::draw(f, state))?;
            state.dirty = false;
            clock.drawn(Instant::now());
            stats.frames += 1;
        }
        if state.quit {
            return Ok(stats);
        }
        let deadline = clock.next(Instant::now());
        let first = tokio::select! {
            ev = events.next(), if events_open => match ev {
                Some(m) => Some(m),
                None => { events_open = false; None }
            },
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline), if state.dirty => None,
        };
        let mut batch: Vec<Msg> = first.into_iter().collect();
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
        }
        for m in batch {
            stats.msgs += 1;
            let effects = update::update(state, m);
            runner.run(effects);
            if state.quit {
                break;
            }
        }
        if !events_open && rx.is_closed() && !state.dirty {
            // Nothing can ever wake us again.
            return Ok(stats);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
