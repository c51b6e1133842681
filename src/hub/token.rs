//! Where the Hub token comes from, in the same order as Python `huggingface_hub`.

use std::path::{Path, PathBuf};

/// The token from `HF_TOKEN` (or the legacy `HUGGING_FACE_HUB_TOKEN`), else the file named by
/// `HF_TOKEN_PATH`, else `<hf_home>/token`. Whitespace is trimmed; an empty value counts as none.
pub fn read_token(hf_home: &Path) -> Option<String> {
    token_from(|k| std::env::var(k).ok(), hf_home)
}

/// [`read_token`] with the environment passed in, so tests need not touch the process env.
pub fn token_from(env: impl Fn(&str) -> Option<String>, hf_home: &Path) -> Option<String> {
    let clean = |s: String| {
        let t = s.trim().to_string();
        (!t.is_empty()).then_some(t)
    };
    for var in ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"] {
        if let Some(t) = env(var).and_then(clean) {
            return Some(t);
        }
    }
    let path = env("HF_TOKEN_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| hf_home.join("token"));
    std::fs::read_to_string(path).ok().and_then(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_then_file() {
        let dir = tempfile::tempdir().unwrap();
        let none = |_: &str| None;
        assert_eq!(token_from(none, dir.path()), None);
        std::fs::write(dir.path().join("token"), "hf_file\n").unwrap();
        assert_eq!(token_from(none, dir.path()).as_deref(), Some("hf_file"));
        let env = |k: &str| (k == "HF_TOKEN").then(|| " hf_env ".to_string());
        assert_eq!(token_from(env, dir.path()).as_deref(), Some("hf_env"));
        let other = dir.path().join("other");
        std::fs::write(&other, "hf_path").unwrap();
        let p = other.to_string_lossy().into_owned();
        let env = move |k: &str| (k == "HF_TOKEN_PATH").then(|| p.clone());
        assert_eq!(token_from(env, dir.path()).as_deref(), Some("hf_path"));
    }
}
