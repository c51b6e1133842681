//! Human-readable numbers for tables and details: `134.5M` parameters, `98.4 MB`.

use std::time::SystemTime;

/// Parameter counts: `134.5M`, `1.5B`, `22.7M`, `900K`.
pub fn params(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.1}B", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.0}K", f / 1e3)
    } else {
        n.to_string()
    }
}

/// Sizes in decimal units, as the Hub shows them: `98.4 MB`, `1.2 GB`.
pub fn bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1e12 {
        format!("{:.1} TB", f / 1e12)
    } else if f >= 1e9 {
        format!("{:.1} GB", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.1} MB", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1} KB", f / 1e3)
    } else {
        format!("{n} B")
    }
}

/// RFC 3339 in UTC, or `None`.
pub fn time(t: Option<SystemTime>) -> Option<String> {
    t.map(|t| {
        chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

pub(crate) fn serialize_time<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match time(*t) {
        Some(v) => s.serialize_str(&v),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_and_bytes_read_like_the_hub() {
        assert_eq!(params(134_515_008), "134.5M");
        assert_eq!(params(1_543_714_304), "1.5B");
        assert_eq!(params(22_713_216), "22.7M");
        assert_eq!(params(999), "999");
        assert_eq!(bytes(98_362_432), "98.4 MB");
        assert_eq!(bytes(10_000_000), "10.0 MB");
        assert_eq!(bytes(512), "512 B");
    }
}
