//! Admission in front of the engine: at most `parallel` generations run (the engine batches
//! them), `max_queue` more may wait, and anything beyond that is turned away with 503 at once
//! instead of piling up.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug, Clone)]
pub struct GenQueue {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
    capacity: usize,
}

/// A request allowed in; it waits for its turn with [`Admitted::turn`].
#[derive(Debug)]
pub struct Admitted {
    admit: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
    waiting: WaitingGuard,
}

/// Holding this means the engine is ours; dropping it lets the next request run.
#[derive(Debug)]
pub struct Turn {
    _admit: OwnedSemaphorePermit,
    _run: OwnedSemaphorePermit,
}

#[derive(Debug)]
struct WaitingGuard(Arc<AtomicUsize>);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GenQueue {
    /// `max_queue` requests may wait while `parallel` run.
    pub fn new(max_queue: usize, parallel: usize) -> Self {
        let parallel = parallel.max(1);
        let capacity = max_queue + parallel;
        Self {
            admitted: Arc::new(Semaphore::new(capacity)),
            running: Arc::new(Semaphore::new(parallel)),
            waiting: Arc::new(AtomicUsize::new(0)),
            capacity,
        }
    }

    /// `None` when the queue is full.
    pub fn try_admit(&self) -> Option<Admitted> {
        let admit = self.admitted.clone().try_acquire_owned().ok()?;
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Some(Admitted {
            admit,
            running: self.running.clone(),
            waiting: WaitingGuard(self.waiting.clone()),
        })
    }

    /// Requests admitted but not yet running.
    pub fn depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests admitted, running or waiting.
    pub fn in_use(&self) -> usize {
        self.capacity - self.admitted.available_permits()
    }
}

impl Admitted {
    /// Waits until the engine is free. Dropping the future (client gone) leaves the queue.
    pub async fn turn(self) -> Turn {
        let run = self
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the queue's semaphore is never closed");
        drop(self.waiting);
        Turn {
            _admit: self.admit,
            _run: run,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn full_queue_refuses_and_frees_on_drop() {
        let q = GenQueue::new(1, 1);
        let a = q.try_admit().unwrap();
        let b = q.try_admit().unwrap();
        assert!(q.try_admit().is_none());
        assert_eq!(q.depth(), 2);
        let ta = a.turn().await;
        assert_eq!(q.depth(), 1);
        let waiting = tokio::spawn(b.turn());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(ta);
        let tb = waiting.await.unwrap();
        assert_eq!(q.depth(), 0);
        assert_eq!(q.in_use(), 1);
        drop(tb);
        assert_eq!(q.in_use(), 0);
        assert!(q.try_admit().is_some());
    }

    #[tokio::test]
    async fn parallel_requests_run_together() {
        let q = GenQueue::new(1, 2);
        let a = q.try_admit().unwrap().turn().await;
        let b = q.try_admit().unwrap().turn().await;
        let c = q.try_admit().unwrap();
        assert!(q.try_admit().is_none());
        let waiting = tokio::spawn(c.turn());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(a);
        let _c = waiting.await.unwrap();
        drop(b);
        assert_eq!(q.in_use(), 1);
    }
}
