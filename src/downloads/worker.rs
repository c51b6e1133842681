//! One file's download: resolve, resume with Range, hash while writing on a blocking thread,
//! verify, then place atomically into the cache. Retries transient failures with backoff.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cache::RepoCache;
use super::disk::{ensure_space, map_write_error};
use super::error::DownloadError;
use super::{DownloadId, DownloadSpec, ManagerConfig, Progress};
use crate::hub::client::error_chain;
use crate::hub::{HubClient, HubError};

/// Batches buffered between the network and the writer thread.
const WRITE_QUEUE: usize = 8;
const BATCH_BYTES: usize = 1 << 20;
/// Read size when hashing a resumed prefix.
const PREFIX_READ: usize = 1 << 20;
/// Bytes written between two writeback kicks.
const WRITEBACK_STEP: u64 = 16 << 20;

pub(crate) struct WorkerCtx {
    hub: HubClient,
    cache_dir: PathBuf,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_max: Duration,
    max_retry_after: Duration,
    stall_timeout: Duration,
    progress_interval: Duration,
}

impl WorkerCtx {
    pub(crate) fn from_config(c: &ManagerConfig) -> Self {
        WorkerCtx {
            hub: c.hub.clone(),
            cache_dir: c.cache_dir.clone(),
            max_attempts: c.max_attempts.max(1),
            backoff_base: c.backoff_base,
            backoff_max: c.backoff_max,
            max_retry_after: c.max_retry_after,
            stall_timeout: c.stall_timeout,
            progress_interval: c.progress_interval,
        }
    }
}

/// What the worker needs from the job record.
pub(crate) struct Task {
    pub id: DownloadId,
    pub spec: DownloadSpec,
    pub commit: Option<String>,
    pub etag: Option<String>,
}

pub(crate) enum WorkerMsg {
    /// Learned from the Hub; the manager persists it so a restart resumes the same blob.
    Meta {
        id: DownloadId,
        commit: String,
        etag: String,
        total: u64,
    },
    Progress(Progress),
    Retrying {
        id: DownloadId,
        attempt: u32,
        wait: Duration,
        reason: String,
    },
    Finished {
        id: DownloadId,
        result: Result<PathBuf, DownloadError>,
    },
}

pub(crate) async fn run(
    ctx: std::sync::Arc<WorkerCtx>,
    mut task: Task,
    cancel: CancellationToken,
    tx: mpsc::UnboundedSender<WorkerMsg>,
) {
    let result = download(&ctx, &mut task, &cancel, &tx).await;
    let _ = tx.send(WorkerMsg::Finished {
        id: task.id,
        result,
    });
}

async fn download(
    ctx: &WorkerCtx,
    task: &mut Task,
    cancel: &CancellationToken,
    tx: &mpsc::UnboundedSender<WorkerMsg>,
) -> Result<PathBuf, DownloadError> {
    let mut attempt = 0u32;
    let mut integrity_failures = 0u32;
    loop {
        if cancel.is_cancelled() {
            return Err(DownloadError::Cancelled);
        }
        let mut progressed = false;
        let err = match attempt_once(ctx, task, cancel, tx, &mut progressed).await {
            Ok(path) => return Ok(path),
            Err(e) => e,
        };
        if cancel.is_cancelled() || matches!(err, DownloadError::Cancelled) {
            return Err(DownloadError::Cancelled);
        }
        if err.is_integrity() {
            // Corrupt data is retried once from scratch, then reported.
            integrity_failures += 1;
            if integrity_failures >= 2 {
                return Err(err);
            }
        } else if !err.is_transient() {
            return Err(err);
        }
        if progressed {
            attempt = 0;
        }
        attempt += 1;
        if attempt >= ctx.max_attempts {
            return Err(err);
        }
        let wait = match retry_after(&err) {
            Some(d) if d <= ctx.max_retry_after => d,
            Some(_) => return Err(err),
            None => backoff(ctx.backoff_base, ctx.backoff_max, attempt),
        };
        let _ = tx.send(WorkerMsg::Retrying {
            id: task.id,
            attempt,
            wait,
            reason: err.to_string(),
        });
        tokio::select! {
            _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn retry_after(e: &DownloadError) -> Option<Duration> {
    match e {
        DownloadError::Hub(h) => h.retry_after(),
        _ => None,
    }
}

/// `base * 2^(attempt-1)`, capped, plus up to 25% jitter so many clients do not retry in step.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(max);
    let jitter_ms = (capped.as_millis() as u64 / 4).max(1);
    capped + Duration::from_millis(rand::random_range(0..jitter_ms))
}

async fn attempt_once(
    ctx: &WorkerCtx,
    task: &mut Task,
    cancel: &CancellationToken,
    tx: &mpsc::UnboundedSender<WorkerMsg>,
    progressed: &mut bool,
) -> Result<PathBuf, DownloadError> {
    let spec = task.spec.clone();
    let cache = RepoCache::new(&ctx.cache_dir, &spec.repo);
    if let (Some(commit), Some(etag)) = (&task.commit, &task.etag) {
        if cache.blob_path(etag).is_file() {
            return cache.link(commit, &spec.path, etag, &spec.revision);
        }
    }
    // Once resolved, ask by commit so a branch moving mid-download cannot mix versions.
    let rev = task.commit.clone().unwrap_or_else(|| spec.revision.clone());
    let meta = tokio::select! {
        _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
        r = ctx.hub.file_meta(&spec.repo, &rev, &spec.path) => r,
    };
    let meta = match meta {
        Ok(m) => m,
        Err(e @ (HubError::Network { .. } | HubError::Timeout { .. })) => {
            // Offline: a file already in the cache at this revision is as good as downloaded.
            let commit = task
                .commit
                .clone()
                .or_else(|| cache.read_ref(&spec.revision));
            if let Some(commit) = commit {
                let snap = cache.snapshot_path(&commit, &spec.path);
                if snap.is_file() {
                    return Ok(snap);
                }
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    if task.etag.as_deref().is_some_and(|old| old != meta.etag) {
        // The file changed on the Hub since the partial was started.
        let old = task.etag.take().unwrap_or_default();
        let _ = std::fs::remove_file(cache.partial_path(&old));
    }
    task.commit = Some(meta.commit.clone());
    task.etag = Some(meta.etag.clone());
    let _ = tx.send(WorkerMsg::Meta {
        id: task.id,
        commit: meta.commit.clone(),
        etag: meta.etag.clone(),
        total: meta.size,
    });
    let blobs = cache.blobs_dir();
    std::fs::create_dir_all(&blobs).map_err(|e| DownloadError::io("create", &blobs, e))?;
    if cache.blob_path(&meta.etag).is_file() {
        return cache.link(&meta.commit, &spec.path, &meta.etag, &spec.revision);
    }
    let _lock = cache.lock(&meta.etag, cancel).await?;
    if cache.blob_path(&meta.etag).is_file() {
        // Another process finished it while we waited.
        return cache.link(&meta.commit, &spec.path, &meta.etag, &spec.revision);
    }
    let part = cache.partial_path(&meta.etag);
    let mut have = cache.partial_len(&meta.etag);
    if have >= meta.size && meta.size > 0 {
        // Too long to be a prefix we can extend (or complete but unverified): start over.
        let _ = std::fs::remove_file(&part);
        have = 0;
    }
    let opened = tokio::select! {
        _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
        r = ctx.hub.open_file(&spec.repo, &meta.commit, &spec.path, have) => r?,
    };
    if opened.meta.etag != meta.etag || opened.meta.size != meta.size {
        return Err(DownloadError::RemoteChanged {
            file: spec.path.clone(),
        });
    }
    let start = opened.start;
    ensure_space(&blobs, meta.size.saturating_sub(start))?;
    let file = if start == 0 {
        std::fs::File::create(&part)
    } else {
        std::fs::OpenOptions::new().append(true).open(&part)
    }
    .map_err(|e| DownloadError::io("open", &part, e))?;

    let sink = Sink::spawn(
        file,
        part.clone(),
        start,
        Hasher::new(&meta.etag, meta.size),
    );

    let mut meter = Meter::new(task.id, start, meta.size, ctx.progress_interval);
    let _ = tx.send(WorkerMsg::Progress(meter.snapshot(start)));
    let mut response = opened.response;
    let mut received = start;
    // Chunks go to the writer in batches: one wake-up of the writer thread per ~1 MB instead of
    // one per network read, which matters on machines with few cores.
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_bytes = 0usize;
    let outcome: Result<(), DownloadError> = loop {
        let next = tokio::select! {
            biased;
            _ = cancel.cancelled() => break Err(DownloadError::Cancelled),
            r = tokio::time::timeout(ctx.stall_timeout, response.chunk()) => r,
        };
        match next {
            Err(_) => break Err(DownloadError::Stalled(ctx.stall_timeout)),
            Ok(Err(e)) => break Err(DownloadError::Interrupted(error_chain(&e))),
            Ok(Ok(None)) => break Ok(()),
            Ok(Ok(Some(chunk))) => {
                received += chunk.len() as u64;
                if received > meta.size {
                    break Err(DownloadError::SizeMismatch {
                        file: spec.path.clone(),
                        expected: meta.size,
                        got: received,
                    });
                }
                batch_bytes += chunk.len();
                batch.push(chunk);
                if batch_bytes >= BATCH_BYTES {
                    batch_bytes = 0;
                    if !sink.send(std::mem::take(&mut batch)).await {
                        // The writer stopped; its error is collected below.
                        break Ok(());
                    }
                }
                *progressed = true;
                if let Some(p) = meter.tick(received) {
                    let _ = tx.send(WorkerMsg::Progress(p));
                }
            }
        }
    };
    if !batch.is_empty() {
        // Whatever arrived is kept, so a resume starts after it.
        sink.send(batch).await;
    }
    drop(response);
    let written = sink.finish().await;
    let (hasher, on_disk) = match (outcome, written) {
        (_, Err(e)) => return Err(map_write_error(&blobs, meta.size - start, e)),
        (Err(e @ DownloadError::SizeMismatch { .. }), Ok(_)) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        // Interrupted, stalled or cancelled: the partial file stays for resuming.
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(w)) => w,
    };
    if on_disk < meta.size {
        return Err(DownloadError::Interrupted(format!(
            "the server ended the body at {on_disk} of {} bytes",
            meta.size
        )));
    }
    let actual = hasher.finish_hex();
    if actual != meta.etag {
        let _ = std::fs::remove_file(&part);
        return Err(DownloadError::ChecksumMismatch {
            file: spec.path.clone(),
            expected: meta.etag.clone(),
            actual,
        });
    }
    let _ = tx.send(WorkerMsg::Progress(meter.snapshot(meta.size)));
    cache.commit_blob(&part, &meta.etag)?;
    cache.link(&meta.commit, &spec.path, &meta.etag, &spec.revision)
}

/// The two consumers of a download's bytes, each on its own blocking thread and fed the same
/// batches (cloning a `Bytes` is a reference-count bump): one hashes, one writes. The checksum is
/// ready when the last byte is on disk, without a second read of the file.
struct Sink {
    write_tx: mpsc::Sender<Vec<Bytes>>,
    hash_tx: mpsc::Sender<Vec<Bytes>>,
    writer: tokio::task::JoinHandle<std::io::Result<u64>>,
    hasher: tokio::task::JoinHandle<std::io::Result<Hasher>>,
}

impl Sink {
    fn spawn(file: std::fs::File, path: PathBuf, start: u64, hasher: Hasher) -> Sink {
        let (write_tx, write_rx) = mpsc::channel(WRITE_QUEUE);
        let (hash_tx, hash_rx) = mpsc::channel(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || write_loop(file, start, write_rx));
        let hasher = tokio::task::spawn_blocking(move || hash_loop(&path, start, hasher, hash_rx));
        Sink {
            write_tx,
            hash_tx,
            writer,
            hasher,
        }
    }

    /// False when a consumer has stopped (its error comes from [`Sink::finish`]).
    async fn send(&self, batch: Vec<Bytes>) -> bool {
        self.hash_tx.send(batch.clone()).await.is_ok() && self.write_tx.send(batch).await.is_ok()
    }

    /// Waits for both threads: the hasher state and the file length, or the first I/O error.
    async fn finish(self) -> std::io::Result<(Hasher, u64)> {
        drop(self.write_tx);
        drop(self.hash_tx);
        let written = joined(self.writer.await)?;
        let hasher = joined(self.hasher.await)?;
        Ok((hasher, written))
    }
}

fn joined<T>(r: Result<std::io::Result<T>, tokio::task::JoinError>) -> std::io::Result<T> {
    r.unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
}

/// Hashes the resumed prefix (read back from the partial file), then every batch as it arrives.
fn hash_loop(
    path: &Path,
    start: u64,
    mut hasher: Hasher,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<Hasher> {
    if start > 0 {
        let mut prefix = std::fs::File::open(path)?.take(start);
        let mut buf = vec![0u8; PREFIX_READ];
        let mut n_total = 0u64;
        loop {
            let n = prefix.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            n_total += n as u64;
        }
        if n_total != start {
            return Err(std::io::Error::other(
                "the partial file shrank while resuming",
            ));
        }
    }
    while let Some(batch) = rx.blocking_recv() {
        for piece in &batch {
            hasher.update(piece);
        }
    }
    Ok(hasher)
}

/// Appends every batch with one `writev`, starts writeback early and syncs at the end, so a
/// blob renamed into the cache is on disk.
fn write_loop(
    mut file: std::fs::File,
    start: u64,
    mut rx: mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<u64> {
    let mut written = start;
    let mut flushed_to = start;
    while let Some(batch) = rx.blocking_recv() {
        write_all_vectored(&mut file, &batch)?;
        written += batch.iter().map(|b| b.len() as u64).sum::<u64>();
        if written - flushed_to >= WRITEBACK_STEP {
            start_writeback(&file, flushed_to, written - flushed_to);
            flushed_to = written;
        }
    }
    file.sync_data()?;
    Ok(written)
}

fn write_all_vectored(file: &mut std::fs::File, batch: &[Bytes]) -> std::io::Result<()> {
    let mut idx = 0;
    let mut offset = 0;
    while idx < batch.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&batch[idx][offset..])
            .chain(batch[idx + 1..].iter().map(|b| &b[..]))
            .take(512)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < batch.len() {
            let left = batch[idx].len() - offset;
            if n >= left {
                n -= left;
                idx += 1;
                offset = 0;
            } else {
                offset += n;
                n = 0;
            }
        }
        while idx < batch.len() && batch[idx].len() == offset {
            idx += 1;
            offset = 0;
        }
    }
    Ok(())
}

/// Asks the kernel to start writing a range to disk without waiting, so the final fsync (needed
/// before the blob is renamed into the cache) finds little left to do.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::unix::io::AsRawFd;
    // SAFETY: plain syscall on a file descriptor we own; failure only loses the optimisation.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &std::fs::File, _offset: u64, _len: u64) {}

/// sha256 for LFS files (64-hex etag), git blob sha1 for regular files (40-hex etag).
pub(crate) enum Hasher {
    Sha256(Sha256),
    GitSha1(Sha1),
}

impl Hasher {
    pub(crate) fn new(etag: &str, size: u64) -> Self {
        if etag.len() == 64 {
            Hasher::Sha256(Sha256::new())
        } else {
            let mut h = Sha1::new();
            h.update(format!("blob {size}\0").as_bytes());
            Hasher::GitSha1(h)
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::GitSha1(h) => h.update(data),
        }
    }

    pub(crate) fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::GitSha1(h) => hex::encode(h.finalize()),
        }
    }
}

/// Throttled progress with a smoothed rate.
struct Meter {
    id: DownloadId,
    total: u64,
    interval: Duration,
    last_at: Instant,
    last_bytes: u64,
    rate: f64,
}

impl Meter {
    fn new(id: DownloadId, start: u64, total: u64, interval: Duration) -> Self {
        Meter {
            id,
            total,
            interval,
            last_at: Instant::now(),
            last_bytes: start,
            rate: 0.0,
        }
    }

    fn tick(&mut self, bytes: u64) -> Option<Progress> {
        let dt = self.last_at.elapsed();
        if dt < self.interval {
            return None;
        }
        let inst = (bytes - self.last_bytes) as f64 / dt.as_secs_f64();
        self.rate = if self.rate == 0.0 {
            inst
        } else {
            0.6 * self.rate + 0.4 * inst
        };
        self.last_at = Instant::now();
        self.last_bytes = bytes;
        Some(self.snapshot(bytes))
    }

    fn snapshot(&self, bytes: u64) -> Progress {
        let left = self.total.saturating_sub(bytes);
        let eta = (self.rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / self.rate));
        Progress {
            id: self.id,
            bytes,
            total: self.total,
            bytes_per_sec: self.rate,
            eta: if left == 0 { Some(Duration::ZERO) } else { eta },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_sha1_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        let mut h = Hasher::new(&"0".repeat(40), 6);
        h.update(b"hello\n");
        assert_eq!(h.finish_hex(), "ce013625030ba8dba906f756967f9e9ca394464a");
        let mut h = Hasher::new(&"0".repeat(64), 0);
        h.update(b"abc");
        assert_eq!(
            h.finish_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn vectored_write_keeps_order_and_empty_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let mut f = std::fs::File::create(&p).unwrap();
        let mut want = Vec::new();
        let mut batch = Vec::new();
        for i in 0..1500u32 {
            let piece: Vec<u8> = (0..(i % 7)).map(|j| (i + j) as u8).collect();
            want.extend_from_slice(&piece);
            batch.push(Bytes::from(piece));
        }
        write_all_vectored(&mut f, &batch).unwrap();
        drop(f);
        assert_eq!(std::fs::read(&p).unwrap(), want);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(1);
        assert!(backoff(b, m, 1) < Duration::from_millis(130));
        let third = backoff(b, m, 3);
        assert!(third >= Duration::from_millis(400) && third < Duration::from_millis(510));
        assert!(backoff(b, m, 30) <= Duration::from_millis(1250));
    }

    #[test]
    fn meter_throttles_and_estimates() {
        let mut m = Meter::new(1, 0, 1000, Duration::from_millis(20));
        assert!(m.tick(10).is_none());
        std::thread::sleep(Duration::from_millis(25));
        let p = m.tick(500).unwrap();
        assert!(p.bytes_per_sec > 0.0);
        assert!(p.eta.is_some());
        assert_eq!(m.snapshot(1000).eta, Some(Duration::ZERO));
    }
}
