//! Download failures, worded so the user knows what to do next.

use std::path::PathBuf;
use std::time::Duration;

use crate::hub::{human_bytes, HubError};

/// Why a download did not complete.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(
        "not enough disk space in {}: need {}, have {}; free {} and retry",
        dir.display(), human_bytes(*need), human_bytes(*have), human_bytes(need.saturating_sub(*have))
    )]
    DiskFull { dir: PathBuf, need: u64, have: u64 },
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checksum mismatch for {file}: expected {expected}, got {actual}; the corrupt data was \
         discarded (if this repeats, the server or a proxy is altering the file)"
    )]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "size mismatch for {file}: expected {expected} bytes, received {got}; the data was discarded"
    )]
    SizeMismatch {
        file: String,
        expected: u64,
        got: u64,
    },
    #[error("no data received for {} s; the connection looks stalled", .0.as_secs())]
    Stalled(Duration),
    #[error("connection dropped during the transfer ({0}); the partial file is kept for resuming")]
    Interrupted(String),
    #[error("{file} changed on the Hub between two requests; starting it again")]
    RemoteChanged { file: String },
    #[error("the download was cancelled")]
    Cancelled,
    #[error("the download queue file {} is unusable: {reason}", path.display())]
    Store { path: PathBuf, reason: String },
    #[error("the download manager has stopped; restart Influence")]
    ManagerGone,
}

impl DownloadError {
    /// Whether another attempt may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            DownloadError::Hub(e) => e.is_transient(),
            DownloadError::Stalled(_)
            | DownloadError::Interrupted(_)
            | DownloadError::RemoteChanged { .. }
            | DownloadError::ChecksumMismatch { .. }
            | DownloadError::SizeMismatch { .. } => true,
            _ => false,
        }
    }

    /// Corrupt data: retried once, not with the full backoff budget.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            DownloadError::ChecksumMismatch { .. } | DownloadError::SizeMismatch { .. }
        )
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        DownloadError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_says_how_much_to_free() {
        let e = DownloadError::DiskFull {
            dir: "/x".into(),
            need: 5_000_000_000,
            have: 2_000_000_000,
        };
        let s = e.to_string();
        assert!(s.contains("need 5.0 GB, have 2.0 GB; free 3.0 GB"), "{s}");
        assert!(!e.is_transient());
        assert!(DownloadError::Stalled(Duration::from_secs(3)).is_transient());
    }
}
