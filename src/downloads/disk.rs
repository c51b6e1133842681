//! Free-space checks before and during a download.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::error::DownloadError;

/// Bytes available to an unprivileged user on the filesystem holding `path` (or its nearest
/// existing ancestor).
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    let mut p = path;
    while !p.exists() {
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses to start when `dir` has less than `need` bytes free.
pub fn ensure_space(dir: &Path, need: u64) -> Result<(), DownloadError> {
    let have = free_space(dir).map_err(|e| DownloadError::io("check free space in", dir, e))?;
    if have < need {
        return Err(DownloadError::DiskFull {
            dir: dir.to_path_buf(),
            need,
            have,
        });
    }
    Ok(())
}

/// Turns ENOSPC/EDQUOT during a write into the "free N GB" error.
pub fn map_write_error(dir: &Path, remaining: u64, e: std::io::Error) -> DownloadError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => DownloadError::DiskFull {
            dir: dir.to_path_buf(),
            need: remaining,
            have: free_space(dir).unwrap_or(0),
        },
        _ => DownloadError::io("write", dir, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_free_space_and_refuses_impossible_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(&dir.path().join("not/yet/created")).unwrap();
        assert!(free > 0);
        ensure_space(dir.path(), 1).unwrap();
        let err = ensure_space(dir.path(), u64::MAX / 2).unwrap_err();
        assert!(matches!(err, DownloadError::DiskFull { .. }));
        assert!(err.to_string().contains("free "));
        let e = map_write_error(
            dir.path(),
            10,
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert!(matches!(e, DownloadError::DiskFull { need: 10, .. }));
    }
}
