//! Checks on names that come from the user or the network before they reach the disk or a URL.
//!
//! A repo id or file path from a Hub answer ends up joined onto the cache folder, so anything that
//! could escape it (`..`, absolute paths, backslashes, control characters) is refused outright.

use super::error::HubError;

const MAX_PATH_LEN: usize = 1024;

/// Accepts `name` or `org/name`, each part made of ASCII letters, digits, `-`, `_` and `.`,
/// not starting or ending with `.`/`-` and without `..` or `--` (the cache folder uses `--`
/// as its separator, so a name with `--` could collide with another repo's folder).
pub fn validate_repo_id(id: &str) -> Result<(), HubError> {
    let bad = |reason: &str| HubError::InvalidRepoId {
        id: id.to_string(),
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 96 {
        return Err(bad("it must be 1 to 96 characters long"));
    }
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(bad("it must look like `org/name`"));
    }
    for part in parts {
        if part.is_empty() {
            return Err(bad("it must look like `org/name`"));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(bad(
                "only letters, digits, `-`, `_` and `.` are allowed in each part",
            ));
        }
        if part.starts_with(['.', '-']) || part.ends_with(['.', '-']) {
            return Err(bad("a part may not start or end with `.` or `-`"));
        }
        if part.contains("..") || part.contains("--") {
            return Err(bad("`..` and `--` are not allowed"));
        }
    }
    Ok(())
}

/// Accepts a relative path inside a repo: `/`-separated, no empty, `.` or `..` segments, no
/// backslash, no control characters and nothing that would be absolute on any platform.
pub fn validate_repo_path(path: &str) -> Result<(), HubError> {
    let bad = |reason: &str| HubError::InvalidPath {
        path: path.escape_debug().to_string(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("the path is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad("the path is too long"));
    }
    if path.starts_with('/') {
        return Err(bad("absolute paths are not allowed"));
    }
    if path.contains('\\') {
        return Err(bad("backslashes are not allowed"));
    }
    if path.chars().any(|c| c.is_control()) {
        return Err(bad("control characters are not allowed"));
    }
    // `C:foo` would be a drive-relative path on Windows.
    if path.as_bytes().get(1) == Some(&b':') {
        return Err(bad("drive letters are not allowed"));
    }
    for seg in path.split('/') {
        match seg {
            "" => return Err(bad("empty path segments are not allowed")),
            "." | ".." => return Err(bad("`.` and `..` segments are not allowed")),
            _ => {}
        }
    }
    Ok(())
}

/// A revision is a branch, tag or commit; it becomes `refs/<revision>` on disk, so it gets the
/// same checks as a path (`refs/pr/1` is fine, `../x` is not).
pub fn validate_revision(rev: &str) -> Result<(), HubError> {
    validate_repo_path(rev).map_err(|_| HubError::InvalidRevision {
        revision: rev.escape_debug().to_string(),
    })
}

/// True for a non-empty string of lowercase or uppercase hex digits of exactly `len` characters.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// True for a 40-hex commit id.
pub fn is_commit(s: &str) -> bool {
    is_hex(s, 40)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for ok in ["gpt2", "org/name", "TheBloke/Llama-2-7B-GGUF", "a.b/c_d"] {
            validate_repo_id(ok).unwrap();
        }
        for bad in [
            "",
            "/x",
            "x/",
            "a/b/c",
            "../x",
            "a/..",
            "a b/c",
            "a/b\0",
            "a/.hidden",
            "a--b/c",
            "org/na$me",
            "-a/b",
        ] {
            assert!(validate_repo_id(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn repo_paths() {
        for ok in [
            "model.gguf",
            "a/b/c.json",
            "Q4_K_M/model-00001-of-00002.gguf",
            "x..y",
        ] {
            validate_repo_path(ok).unwrap();
        }
        for bad in [
            "",
            "../evil",
            "a/../../b",
            "/etc/passwd",
            "a\\b",
            "a/\0b",
            "a//b",
            "./a",
            "a/.",
            "C:evil",
            "a\nb",
            "a/",
        ] {
            assert!(
                validate_repo_path(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    proptest::proptest! {
        /// Whatever passes the check can be joined onto a folder without escaping it.
        #[test]
        fn accepted_paths_stay_inside(path in "[a-zA-Z0-9._/\\\\:~ -]{0,24}") {
            if validate_repo_path(&path).is_ok() {
                let p = std::path::Path::new(&path);
                proptest::prop_assert!(p
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
                proptest::prop_assert!(std::path::Path::new("/base").join(p).starts_with("/base"));
            }
        }

        #[test]
        fn accepted_repo_ids_make_one_cache_folder(id in "[a-zA-Z0-9._/-]{0,20}") {
            if validate_repo_id(&id).is_ok() {
                let folder = format!("models--{}", id.replace('/', "--"));
                proptest::prop_assert!(!folder.contains('/') && !folder.contains(".."));
            }
        }
    }

    #[test]
    fn hex() {
        assert!(is_commit("0123456789abcdef0123456789abcdef01234567"));
        assert!(!is_commit("0123456789abcdef0123456789abcdef0123456g"));
        assert!(!is_hex("ab", 3));
    }
}
