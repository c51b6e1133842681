//! How much memory this machine has, from `/proc/meminfo`.

/// Total and currently available memory in bytes: the machine's RAM, or a GPU's own memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    pub total_bytes: u64,
    pub available_bytes: u64,
    /// For a GPU's memory: the RAM available now to the layers that do not fit it (the engine
    /// splits such a model under `engine.gpu_layers = "auto"`); `None` for the RAM itself.
    pub host_available_bytes: Option<u64>,
}

impl MemInfo {
    /// Reads `/proc/meminfo`. `None` where it does not exist or cannot be parsed (non-Linux).
    pub fn read() -> Option<MemInfo> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        MemInfo::parse(&text)
    }

    /// Parses the `MemTotal` and `MemAvailable` lines (values in kB). Kernels older than 3.14 lack
    /// `MemAvailable`; `MemFree + Buffers + Cached` stands in for it there.
    pub fn parse(text: &str) -> Option<MemInfo> {
        let field = |name: &str| {
            text.lines().find_map(|l| {
                let rest = l.strip_prefix(name)?.strip_prefix(':')?;
                let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
                Some(kb * 1024)
            })
        };
        let total = field("MemTotal")?;
        let available = field("MemAvailable").or_else(|| {
            Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0))
        })?;
        Some(MemInfo {
            total_bytes: total,
            available_bytes: available.min(total),
            host_available_bytes: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let m = MemInfo::parse(
            "MemTotal:       16000000 kB\nMemFree: 1000 kB\nMemAvailable:    8000000 kB\n",
        )
        .unwrap();
        assert_eq!(m.total_bytes, 16_000_000 * 1024);
        assert_eq!(m.available_bytes, 8_000_000 * 1024);
        let old =
            MemInfo::parse("MemTotal: 100 kB\nMemFree: 10 kB\nBuffers: 5 kB\nCached: 20 kB\n")
                .unwrap();
        assert_eq!(old.available_bytes, 35 * 1024);
        assert!(MemInfo::parse("garbage").is_none());
    }

    #[test]
    fn reads_this_machine() {
        let m = MemInfo::read().expect("/proc/meminfo is readable on Linux");
        assert!(m.total_bytes > 0 && m.available_bytes <= m.total_bytes);
    }
}
