//! Memory of this process and of the machine, read from /proc where available.

/// Resident set size of this process in bytes.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Peak resident set size of this process in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_plausible() {
        let rss = super::rss_bytes().expect("/proc/self/statm is readable on Linux");
        assert!(rss > 100_000 && rss < 100_000_000_000, "{rss}");
        let peak = super::peak_rss_bytes().expect("/proc/self/status has VmHWM on Linux");
        assert!(peak >= rss / 2 && peak < 100_000_000_000, "{peak} vs {rss}");
    }
}
