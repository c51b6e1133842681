//! The worker threads Influence's own matmul kernels run on: spin briefly, then park.
//!
//! candle's barrier pool waits for its workers by spinning without end, and its workers spin
//! 25,000 times before they sleep. On a 2-core machine with a third runnable thread (a compile,
//! a second process), whichever of our threads the scheduler takes off a core leaves the other
//! spinning through its time slice: decode fell several-fold under such load. Here every wait
//! (a worker waiting for work, the caller waiting for the workers) spins for at most
//! [`spin_budget`] and then parks, so a descheduled thread costs the others a wake-up instead
//! of a time slice.
//!
//! The pool has `CANDLE_NUM_THREADS − 1` workers (the caller is the last thread), the count
//! `--threads` sets. One job runs at a time; a second caller meanwhile, or a call from inside a
//! job, runs its work on its own thread.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long a wait spins before it parks: `INFLUENCE_SPIN_US` microseconds, default 100 — longer
/// than the gap between two matmuls of a decode step on small models (so a quiet machine never
/// pays a wake-up inside a token), and short against a scheduler time slice (milliseconds).
pub fn spin_budget() -> Duration {
    static D: OnceLock<Duration> = OnceLock::new();
    *D.get_or_init(|| {
        let us = std::env::var("INFLUENCE_SPIN_US")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(100);
        Duration::from_micros(us)
    })
}

/// Threads a job runs on, the caller included.
pub fn threads() -> usize {
    std::env::var("CANDLE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(candle_core::utils::get_num_threads)
        .max(1)
}

/// One call's work: `f` over `0..n`, handed out in chunks from a shared cursor so a fast thread
/// takes over a slow one's share.
struct Job<'a> {
    f: &'a (dyn Fn(Range<usize>) + Sync),
    n: usize,
    chunk: usize,
    cursor: AtomicUsize,
}

impl Job<'_> {
    fn work(&self) {
        loop {
            let start = self.cursor.fetch_add(self.chunk, Ordering::Relaxed);
            if start >= self.n {
                return;
            }
            (self.f)(start..self.n.min(start + self.chunk));
        }
    }
}

struct Shared {
    /// Bumped once per job; workers wait for it to change.
    generation: AtomicUsize,
    /// The current job (a `*const Job` with its lifetime erased), 0 once the caller has no more
    /// chunks to hand out.
    job: AtomicUsize,
    /// Workers inside a job. A worker counts itself in before it reads `job`, and the caller
    /// clears `job` before it waits for this to reach zero, so no worker touches a job that
    /// has returned. A worker the scheduler has taken off its core never holds the caller up:
    /// the caller does the chunks itself and does not wait for workers that never joined.
    active: AtomicUsize,
    /// Whether a worker panicked in the current job.
    panicked: AtomicBool,
    /// The caller of the current job, woken by the last worker to finish.
    caller: Mutex<Option<Thread>>,
}

struct Pool {
    shared: &'static Shared,
    workers: Vec<Thread>,
    /// Held for the duration of a job.
    busy: Mutex<()>,
}

thread_local! {
    static IN_WORKER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Spins on `done` for the spin budget, then parks until it holds. Whoever makes it hold must
/// unpark this thread afterwards.
fn wait_until(done: impl Fn() -> bool) {
    let budget = spin_budget();
    let start = Instant::now();
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) || start.elapsed() < budget {
            std::hint::spin_loop();
        } else {
            // A token left by an earlier unpark makes this return at once; the loop re-checks.
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            generation: AtomicUsize::new(0),
            job: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            caller: Mutex::new(None),
        }));
        let workers = (1..threads())
            .filter_map(|i| {
                std::thread::Builder::new()
                    .name(format!("influence-mm-{i}"))
                    .spawn(move || worker(shared))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        Pool {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    })
}

fn worker(shared: &'static Shared) {
    IN_WORKER.with(|w| w.set(true));
    let mut seen = 0usize;
    loop {
        wait_until(|| shared.generation.load(Ordering::Acquire) != seen);
        seen = shared.generation.load(Ordering::Acquire);
        shared.active.fetch_add(1, Ordering::SeqCst);
        let ptr = shared.job.load(Ordering::SeqCst);
        if ptr != 0 {
            // SAFETY: `job` is non-zero only while the caller's job is alive, and the caller
            // waits for `active` (counted in above, before the load) to drop to zero.
            let job = unsafe { &*(ptr as *const Job) };
            if catch_unwind(AssertUnwindSafe(|| job.work())).is_err() {
                shared.panicked.store(true, Ordering::Release);
            }
        }
        if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            if let Some(t) = shared.caller.lock().ok().and_then(|c| c.clone()) {
                t.unpark();
            }
        }
    }
}

/// The driver the own matmul kernels share: one row-major `m × n` output per matrix (`ns`
/// holds each matrix's `n`), work split into tiles of `rows` output columns numbered across all
/// the matrices (so fused q/k/v or gate/up calls share one parallel region), run on the pool
/// unless the product (columns × `m` × `k` multiply-adds) is too small to pay for it.
/// `tile(j, t, out)` fills tile `t` of matrix `j`, where `out` is that matrix's output buffer.
///
/// The outputs are not zeroed first (zeroing them was 1-2 % of a prompt's time, every value
/// being written anyway).
///
/// # Safety
/// `tile(j, t, out)` must write every value of its tile — columns `t·rows .. min((t+1)·rows,
/// n)` of all `m` rows — and no other, and must not read what it has not written.
pub unsafe fn tiled<F: Fn(usize, usize, *mut f32) + Sync>(
    ns: &[usize],
    m: usize,
    k: usize,
    rows: usize,
    tile: F,
) -> Vec<Vec<f32>> {
    let mut outs: Vec<Vec<f32>> = ns.iter().map(|n| Vec::with_capacity(m * n)).collect();
    let tiles: Vec<usize> = ns.iter().map(|n| n.div_ceil(rows)).collect();
    let total: usize = tiles.iter().sum();
    // Addresses, so the closure is Sync; each unit writes only its own tile's columns.
    let dsts: Vec<usize> = outs.iter_mut().map(|o| o.as_mut_ptr() as usize).collect();
    let run = |range: Range<usize>| {
        for unit in range {
            let (mut j, mut t) = (0, unit);
            while t >= tiles[j] {
                t -= tiles[j];
                j += 1;
            }
            tile(j, t, dsts[j] as *mut f32);
        }
    };
    // Counted in columns, not tiles, so kernels with wider tiles split the same products.
    if total * rows * m * k < 1 << 18 {
        run(0..total);
    } else {
        run_chunked(total, run);
    }
    for (o, n) in outs.iter_mut().zip(ns) {
        // SAFETY: the tiles cover every column of every row, and each wrote all of its
        // values (the caller's promise).
        unsafe { o.set_len(m * n) };
    }
    outs
}

/// Runs `f(i, part)` for every `part` of `out.chunks_mut(chunk)` on the pool's threads (load-time
/// work such as repacking weights, where each part is written by exactly one call).
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let parts: Vec<Mutex<&mut [T]>> = out.chunks_mut(chunk.max(1)).map(Mutex::new).collect();
    run_chunked(parts.len(), |range| {
        for i in range {
            // Each index is handed out once, so the lock is never contended: it only lets the
            // threads share the list of disjoint parts.
            let mut part = parts[i].lock().unwrap_or_else(|e| e.into_inner());
            f(i, &mut part);
        }
    });
}

/// Runs `f` over `0..n` in chunks on the pool's threads and the calling thread; returns when
/// every chunk is done.
pub fn run_chunked<F: Fn(Range<usize>) + Sync>(n: usize, f: F) {
    if n == 0 {
        return;
    }
    if IN_WORKER.with(|w| w.get()) {
        return f(0..n);
    }
    let p = pool();
    let Ok(_busy) = p.busy.try_lock() else {
        // Another thread's job holds the workers (tests run in parallel): do it here.
        return f(0..n);
    };
    if p.workers.is_empty() {
        return f(0..n);
    }
    let threads = p.workers.len() + 1;
    let job = Job {
        f: &f,
        n,
        // ~8 grabs per thread: little contention on the cursor, a small tail.
        chunk: n.div_ceil(threads * 8).max(1),
        cursor: AtomicUsize::new(0),
    };
    let s = p.shared;
    if let Ok(mut c) = s.caller.lock() {
        *c = Some(std::thread::current());
    }
    s.panicked.store(false, Ordering::Relaxed);
    s.job.store(&job as *const Job as usize, Ordering::SeqCst);
    s.generation.fetch_add(1, Ordering::SeqCst);
    for w in &p.workers {
        w.unpark();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| job.work()));
    // Every chunk is handed out. The job lives on this stack: unpublish it, then wait for the
    // workers still inside it.
    s.job.store(0, Ordering::SeqCst);
    wait_until(|| s.active.load(Ordering::SeqCst) == 0);
    if let Err(e) = mine {
        std::panic::resume_unwind(e);
    }
    if s.panicked.load(Ordering::Acquire) {
        panic!("a matmul worker thread panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_exactly_once() {
        for n in [1usize, 7, 100, 10_000] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..20 {
                run_chunked(n, |r| {
                    for i in r {
                        hits[i].fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 20),
                "n = {n}"
            );
        }
    }

    #[test]
    fn every_chunk_is_filled_once() {
        let mut out = vec![0usize; 1003];
        for_each_chunk_mut(&mut out, 10, |i, part| {
            for (j, v) in part.iter_mut().enumerate() {
                *v += 10 * i + j + 1;
            }
        });
        assert!(out.iter().enumerate().all(|(j, &v)| v == j + 1));
    }

    #[test]
    fn nested_calls_run_inline() {
        let total = AtomicUsize::new(0);
        run_chunked(8, |r| {
            for _ in r {
                run_chunked(4, |r2| {
                    total.fetch_add(r2.len(), Ordering::Relaxed);
                });
            }
        });
        assert_eq!(total.load(Ordering::Relaxed), 32);
    }

    #[test]
    fn waits_park_after_the_spin_budget() {
        // A worker idle far longer than the budget must still pick up the next job.
        run_chunked(4, |_| {});
        std::thread::sleep(spin_budget() * 5 + Duration::from_millis(5));
        let done = AtomicUsize::new(0);
        run_chunked(64, |r| {
            done.fetch_add(r.len(), Ordering::Relaxed);
        });
        assert_eq!(done.load(Ordering::Relaxed), 64);
    }
}
