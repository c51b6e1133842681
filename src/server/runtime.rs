//! Running servers on this machine: each one (headless `--serve` or the app's toggle) writes a
//! small record with its address under `<data dir>/run/servers/` while it listens, so
//! `influence ps` can find them and ask each its `/api/ps`.

use std::path::{Path, PathBuf};

/// One listening server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServerRecord {
    pub pid: u32,
    /// `host:port` it is bound to.
    pub addr: String,
    /// `serve` for `influence --serve`, `app` for the full-screen app's server.
    pub kind: String,
    /// RFC 3339.
    pub started: String,
    /// Clients must send an API key.
    pub api_key: bool,
}

/// The folder of server records for a data folder.
pub fn records_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("run").join("servers")
}

/// Removes the record when the server stops (or its handle is dropped).
#[derive(Debug)]
pub struct RecordGuard(PathBuf);

impl Drop for RecordGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes the record for this process's server at `addr`.
pub fn record(
    dir: &Path,
    addr: std::net::SocketAddr,
    api_key: bool,
) -> std::io::Result<RecordGuard> {
    let pid = std::process::id();
    let kind = if std::env::args().any(|a| a == "--serve") {
        "serve"
    } else {
        "app"
    };
    let rec = ServerRecord {
        pid,
        addr: addr.to_string(),
        kind: kind.into(),
        started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        api_key,
    };
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{pid}-{}.json", addr.port()));
    let json = serde_json::to_vec_pretty(&rec).map_err(std::io::Error::other)?;
    crate::fsutil::write_atomic(&path, &json)?;
    Ok(RecordGuard(path))
}

/// Every record whose process is still alive. Records of processes that are gone (killed
/// before they could clean up) are deleted; unreadable files are skipped.
pub fn list(dir: &Path) -> Vec<ServerRecord> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(rec) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<ServerRecord>(&b).ok())
        else {
            continue;
        };
        if alive(rec.pid) {
            out.push(rec);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
    out.sort_by(|a, b| (a.pid, &a.addr).cmp(&(b.pid, &b.addr)));
    out
}

fn alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 checks for existence only; nothing is sent.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_live_while_held_and_stale_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let guard = record(dir.path(), "127.0.0.1:4567".parse().unwrap(), false).unwrap();
        let list_now = list(dir.path());
        assert_eq!(list_now.len(), 1);
        assert_eq!(list_now[0].addr, "127.0.0.1:4567");
        assert_eq!(list_now[0].pid, std::process::id());
        // A record left by a process that no longer exists.
        let stale = ServerRecord {
            pid: i32::MAX as u32,
            ..list_now[0].clone()
        };
        let stale_path = dir.path().join("stale.json");
        std::fs::write(&stale_path, serde_json::to_vec(&stale).unwrap()).unwrap();
        std::fs::write(dir.path().join("junk.json"), b"{").unwrap();
        assert_eq!(list(dir.path()).len(), 1);
        assert!(!stale_path.exists());
        drop(guard);
        assert!(list(dir.path()).is_empty());
    }
}
