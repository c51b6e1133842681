//! The Hugging Face cache layout, shared with Python `huggingface_hub` and the `hf-hub` crate:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>
//! <cache>/models--org--name/snapshots/<commit>/<path>  -> ../../blobs/<etag> (relative symlink)
//! <cache>/models--org--name/refs/<revision>            (file holding the commit)
//! <cache>/.locks/models--org--name/<etag>.lock
//! ```
//!
//! Influence's partial files are `blobs/<etag>.influence.part`, a name no other client uses, so
//! we never adopt another client's half-written file and they never adopt ours.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::error::DownloadError;
use crate::hub::validate::{is_commit, is_hex, validate_repo_path, validate_revision};

/// Suffix of Influence's own partial downloads.
pub const PARTIAL_SUFFIX: &str = ".influence.part";

/// `models--org--name` for `org/name` (`models--gpt2` for a repo without a namespace).
pub fn repo_folder_name(repo: &str) -> String {
    format!("models--{}", repo.replace('/', "--"))
}

/// Paths of one model repo inside a cache root (`$HF_HOME/hub`).
#[derive(Debug, Clone)]
pub struct RepoCache {
    root: PathBuf,
    folder: String,
}

impl RepoCache {
    /// The caller validates `repo` first (see [`crate::hub::validate_repo_id`]).
    pub fn new(cache_root: &Path, repo: &str) -> Self {
        RepoCache {
            root: cache_root.to_path_buf(),
            folder: repo_folder_name(repo),
        }
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.root.join(&self.folder)
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.repo_dir().join("blobs")
    }

    pub fn blob_path(&self, etag: &str) -> PathBuf {
        self.blobs_dir().join(etag)
    }

    pub fn partial_path(&self, etag: &str) -> PathBuf {
        self.blobs_dir().join(format!("{etag}{PARTIAL_SUFFIX}"))
    }

    pub fn snapshot_path(&self, commit: &str, path: &str) -> PathBuf {
        self.repo_dir().join("snapshots").join(commit).join(path)
    }

    pub fn ref_path(&self, revision: &str) -> PathBuf {
        self.repo_dir().join("refs").join(revision)
    }

    fn lock_path(&self, etag: &str) -> PathBuf {
        self.root
            .join(".locks")
            .join(&self.folder)
            .join(format!("{etag}.lock"))
    }

    /// The commit a revision points to in this cache, if known (offline fallback).
    pub fn read_ref(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        let s = std::fs::read_to_string(self.ref_path(revision)).ok()?;
        let s = s.trim();
        is_commit(s).then(|| s.to_string())
    }

    /// Length of our partial file for `etag` (0 when there is none).
    pub fn partial_len(&self, etag: &str) -> u64 {
        std::fs::metadata(self.partial_path(etag))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Waits for the cross-process lock on `etag` (the same lock file Python and hf-hub 1.0
    /// take), giving up when `cancel` fires.
    pub async fn lock(
        &self,
        etag: &str,
        cancel: &CancellationToken,
    ) -> Result<BlobLock, DownloadError> {
        let path = self.lock_path(etag);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DownloadError::io("create the lock folder", dir, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| DownloadError::io("open the lock file", &path, e))?;
        loop {
            // SAFETY: flock on a file descriptor we own; released when `file` is closed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(BlobLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(DownloadError::io("lock", &path, err));
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(DownloadError::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// Moves a verified partial file into `blobs/<etag>` (atomic rename; an existing blob with
    /// the same content-addressed name wins).
    pub fn commit_blob(&self, partial: &Path, etag: &str) -> Result<PathBuf, DownloadError> {
        let blob = self.blob_path(etag);
        std::fs::rename(partial, &blob)
            .map_err(|e| DownloadError::io("move the finished download to", &blob, e))?;
        if let Ok(d) = File::open(self.blobs_dir()) {
            let _ = d.sync_all();
        }
        Ok(blob)
    }

    /// Points `snapshots/<commit>/<path>` at `blobs/<etag>` with a relative symlink (or a copy
    /// where symlinks are not supported) and records `refs/<revision>` when the revision is a
    /// name rather than the commit itself. Returns the snapshot path.
    pub fn link(
        &self,
        commit: &str,
        path: &str,
        etag: &str,
        revision: &str,
    ) -> Result<PathBuf, DownloadError> {
        validate_repo_path(path)?;
        validate_revision(revision)?;
        if !is_commit(commit) || !(is_hex(etag, 64) || is_hex(etag, 40)) {
            return Err(DownloadError::Store {
                path: self.repo_dir(),
                reason: format!("refusing commit `{commit}` / etag `{etag}`: not hex"),
            });
        }
        let snap = self.snapshot_path(commit, path);
        let dir = snap.parent().expect("snapshot path has a parent");
        std::fs::create_dir_all(dir).map_err(|e| DownloadError::io("create", dir, e))?;
        let depth = path.split('/').count() + 1;
        let target: PathBuf = std::iter::repeat_n("..", depth)
            .collect::<PathBuf>()
            .join("blobs")
            .join(etag);
        let name = snap.file_name().expect("file name").to_string_lossy();
        let tmp = dir.join(format!(".{name}.{}.influence-tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let made = std::os::unix::fs::symlink(&target, &tmp).or_else(|_| {
            // Filesystems without symlinks get a copy, as Python does.
            std::fs::copy(self.blob_path(etag), &tmp).map(|_| ())
        });
        made.and_then(|_| std::fs::rename(&tmp, &snap))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                DownloadError::io("create the snapshot entry", &snap, e)
            })?;
        if revision != commit {
            let r = self.ref_path(revision);
            write_ref(&r, commit).map_err(|e| DownloadError::io("write", &r, e))?;
        }
        Ok(snap)
    }
}

/// Atomic write with a temp name unique per call: several files of one repo finish at the same
/// time and all record `refs/main`, so a per-process temp name would collide.
fn write_ref(path: &Path, commit: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("ref path has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.{:016x}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id(),
        rand::random::<u64>()
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(commit.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Held while a blob is being written; dropping it releases the lock.
#[derive(Debug)]
pub struct BlobLock {
    _file: File,
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn layout_matches_huggingface_hub() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoCache::new(dir.path(), "org/name");
        let etag = "a".repeat(64);
        std::fs::create_dir_all(c.blobs_dir()).unwrap();
        std::fs::write(c.partial_path(&etag), b"hello").unwrap();
        assert_eq!(c.partial_len(&etag), 5);
        c.commit_blob(&c.partial_path(&etag), &etag).unwrap();
        let snap = c.link(COMMIT, "sub/dir/f.bin", &etag, "main").unwrap();
        assert_eq!(
            snap,
            dir.path()
                .join("models--org--name/snapshots")
                .join(COMMIT)
                .join("sub/dir/f.bin")
        );
        let target = std::fs::read_link(&snap).unwrap();
        assert_eq!(target, Path::new("../../../../blobs").join(&etag));
        assert_eq!(std::fs::read(&snap).unwrap(), b"hello");
        assert_eq!(c.read_ref("main").as_deref(), Some(COMMIT));
        let top = c.link(COMMIT, "f.bin", &etag, COMMIT).unwrap();
        assert_eq!(
            std::fs::read_link(&top).unwrap(),
            Path::new("../../blobs").join(&etag)
        );
        assert_eq!(repo_folder_name("gpt2"), "models--gpt2");
        assert!(c.link(COMMIT, "../x", &etag, "main").is_err());
    }

    #[tokio::test]
    async fn lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let c = RepoCache::new(dir.path(), "org/name");
        let cancel = CancellationToken::new();
        let held = c.lock("abc", &cancel).await.unwrap();
        let c2 = c.clone();
        let cancel2 = cancel.clone();
        let waiter = tokio::spawn(async move { c2.lock("abc", &cancel2).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(!waiter.is_finished(), "second lock must wait");
        drop(held);
        waiter.await.unwrap().unwrap();
    }
}
