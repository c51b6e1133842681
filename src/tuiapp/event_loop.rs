//! The event loop: the one place that joins the pure app to the terminal and the drawing code.

use crate::app::msg::Msg;
use crate::app::runner::EffectRunner;
use crate::app::state::State;
use crate::app::update;
use crate::tui::frame::FrameClock;
use futures::{Stream, StreamExt};
use ratatui::backend::Backend;
use ratatui::Terminal;
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
mod tests {
    use super::*;
    use crate::app::tests::{ch, empty_roots, test_state};
    use ratatui::backend::TestBackend;

    #[tokio::test(flavor = "current_thread")]
    async fn loop_coalesces_many_messages_into_few_frames() {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
        let mut state = test_state(100, 30);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into(), empty_roots());
        // 500 visible changes queued at once, then quit.
        for i in 0..500u64 {
            tx.send(Msg::Memory((i + 1) << 20)).unwrap();
        }
        tx.send(ch('q')).unwrap();
        let events = futures::stream::pending::<Msg>();
        let stats = super::run(
            &mut terminal,
            &mut state,
            events,
            &mut rx,
            &mut runner,
            FrameClock::new(60),
        )
        .await
        .unwrap();
        assert_eq!(stats.msgs, 501);
        assert!(stats.frames <= 2, "drew {} frames", stats.frames);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn loop_draws_the_screen_and_quits_on_keys() {
        let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
        let mut state = test_state(100, 30);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut runner = EffectRunner::new(tx.clone(), "/nonexistent".into(), empty_roots());
        let events = futures::stream::iter(vec![ch('3')]).chain(futures::stream::iter(vec![]));
        let handle = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            tx.send(ch('q')).unwrap();
        });
        use futures::StreamExt;
        super::run(
            &mut terminal,
            &mut state,
            events.chain(futures::stream::pending()),
            &mut rx,
            &mut runner,
            FrameClock::new(60),
        )
        .await
        .unwrap();
        handle.await.unwrap();
        assert!(state.quit);
        let screen = format!("{:?}", terminal.backend().buffer());
        assert!(screen.contains("Library"));
    }
}
