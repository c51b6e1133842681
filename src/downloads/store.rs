//! The download queue on disk: one JSON file written atomically after every state change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::DownloadError;
use super::{DownloadId, DownloadSpec};

pub const QUEUE_FILE: &str = "downloads.json";
const VERSION: u32 = 1;

/// A job as saved. A job that was running when the app stopped is saved as `Queued`, so it
/// resumes from its partial file on the next start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    pub id: DownloadId,
    pub spec: DownloadSpec,
    pub state: StoredState,
    /// Commit the revision resolved to on the first attempt; later attempts download by commit
    /// so a moving branch cannot mix two versions.
    #[serde(default)]
    pub commit: Option<String>,
    /// Cache blob name (sha256 or git sha1), which also names the partial file.
    #[serde(default)]
    pub etag: Option<String>,
    #[serde(default)]
    pub total: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StoredState {
    Queued,
    Paused,
    Done { path: PathBuf },
    Failed { reason: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct QueueFile {
    pub version: u32,
    pub next_id: DownloadId,
    pub jobs: Vec<StoredJob>,
}

/// Loads the queue. A missing file is an empty queue; an unreadable one is moved aside to
/// `downloads.json.corrupt` (so nothing is lost) and the queue starts empty.
pub fn load(data_dir: &Path) -> Result<(QueueFile, Option<String>), DownloadError> {
    let path = data_dir.join(QUEUE_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((
                QueueFile {
                    version: VERSION,
                    next_id: 1,
                    jobs: vec![],
                },
                None,
            ))
        }
        Err(e) => return Err(DownloadError::io("read", &path, e)),
    };
    match serde_json::from_slice::<QueueFile>(&bytes) {
        Ok(mut q) => {
            let max = q.jobs.iter().map(|j| j.id).max().unwrap_or(0);
            q.next_id = q.next_id.max(max + 1);
            Ok((q, None))
        }
        Err(e) => {
            let aside = path.with_extension("json.corrupt");
            let _ = std::fs::rename(&path, &aside);
            Ok((
                QueueFile {
                    version: VERSION,
                    next_id: 1,
                    jobs: vec![],
                },
                Some(format!(
                    "the download queue {} was unreadable ({e}); it was moved to {} and the queue \
                     starts empty",
                    path.display(),
                    aside.display()
                )),
            ))
        }
    }
}

pub fn save(data_dir: &Path, next_id: DownloadId, jobs: &[StoredJob]) -> Result<(), DownloadError> {
    let path = data_dir.join(QUEUE_FILE);
    let q = QueueFile {
        version: VERSION,
        next_id,
        jobs: jobs.to_vec(),
    };
    let bytes = serde_json::to_vec_pretty(&q).map_err(|e| DownloadError::Store {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    crate::fsutil::write_atomic(&path, &bytes).map_err(|e| DownloadError::io("save", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corrupt_file() {
        let dir = tempfile::tempdir().unwrap();
        let (q, warn) = load(dir.path()).unwrap();
        assert!(q.jobs.is_empty() && warn.is_none());
        let job = StoredJob {
            id: 7,
            spec: DownloadSpec::new("org/m", "a.gguf"),
            state: StoredState::Failed { reason: "x".into() },
            commit: None,
            etag: Some("e".into()),
            total: Some(3),
        };
        save(dir.path(), 3, std::slice::from_ref(&job)).unwrap();
        let (q, _) = load(dir.path()).unwrap();
        assert_eq!(q.jobs, vec![job]);
        assert_eq!(q.next_id, 8, "next id is above every saved id");
        std::fs::write(dir.path().join(QUEUE_FILE), b"{not json").unwrap();
        let (q, warn) = load(dir.path()).unwrap();
        assert!(q.jobs.is_empty());
        assert!(warn.unwrap().contains("corrupt"));
        assert!(dir.path().join("downloads.json.corrupt").exists());
    }
}
