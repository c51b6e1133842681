//! Names everywhere: a path, `org/name`, `org/name:QUANT`, or a unique suffix.

use std::path::Path;

use super::{LibraryError, Model};

/// Resolution order; the first step with any match decides:
/// 1. a path (file or folder) → the model loaded from / containing it; a path that starts with
///    `/`, `./`, `../` or `~` is only ever a path;
/// 2. the exact name (then the exact name ignoring case);
/// 3. `repo:QUANT` against each model's repo and quant tag, ignoring case;
/// 4. a suffix at a `/` boundary of the name or repo, also with a trailing `-GGUF` dropped
///    (`SmolLM2-135M-Instruct` finds `HuggingFaceTB/SmolLM2-135M-Instruct-GGUF`);
/// 5. any suffix of the name, ignoring case.
pub(crate) fn resolve<'a>(models: &'a [Model], query: &str) -> Result<&'a Model, LibraryError> {
    let query = query.trim();
    if explicit_path(query) {
        return by_path(models, query);
    }
    // A bare word that happens to name a file in the current folder is tried as a path first,
    // then as a name.
    if Path::new(query).exists() {
        if let Ok(m) = by_path(models, query) {
            return Ok(m);
        }
    }
    resolve_name(models, query)
}

/// Steps 2-5 of [`resolve`]: names only, never the file system (what the API server uses, so a
/// request cannot probe paths).
pub(crate) fn resolve_name<'a>(
    models: &'a [Model],
    query: &str,
) -> Result<&'a Model, LibraryError> {
    let query = query.trim();
    let q = query.to_lowercase();
    let steps: [&dyn Fn(&Model) -> bool; 5] = [
        &|m| m.name == query,
        &|m| m.name.to_lowercase() == q,
        &|m| match q.rsplit_once(':') {
            Some((repo, quant)) => {
                repo_matches(&m.repo, repo)
                    && m.quant_tag
                        .as_deref()
                        .is_some_and(|t| t.to_lowercase() == quant)
            }
            None => false,
        },
        &|m| {
            keys(m)
                .iter()
                .any(|k| k == &q || k.ends_with(&format!("/{q}")))
        },
        &|m| m.name.to_lowercase().ends_with(&q),
    ];
    for step in steps {
        let mut found: Vec<&Model> = models.iter().filter(|m| step(m)).collect();
        // `org/name` means the current revision, not an older snapshot kept in the cache.
        if found.len() > 1 {
            let current: Vec<&Model> = found
                .iter()
                .copied()
                .filter(|m| !is_old_revision(m))
                .collect();
            if current.len() == 1 {
                found = current;
            }
        }
        match found.len() {
            0 => continue,
            1 => return Ok(found[0]),
            _ => {
                return Err(LibraryError::Ambiguous {
                    query: query.to_string(),
                    candidates: found.iter().map(|m| describe(m)).collect(),
                })
            }
        }
    }
    Err(LibraryError::NotFound {
        query: query.to_string(),
        suggestions: close_matches(models, &q),
    })
}

fn is_old_revision(m: &Model) -> bool {
    m.source == super::Source::HfCache && m.name.contains('@')
}

/// Whether `q` can only mean a path: it starts with `/`, `./`, `../` or `~`, or holds a
/// backslash or a NUL (never part of a model name).
pub(crate) fn explicit_path(q: &str) -> bool {
    q.contains('\\') || q.contains('\0') || explicit_path_prefix(q)
}

fn explicit_path_prefix(q: &str) -> bool {
    q.starts_with('/') || q.starts_with("./") || q.starts_with("../") || q.starts_with('~')
}

fn by_path<'a>(models: &'a [Model], query: &str) -> Result<&'a Model, LibraryError> {
    let target = std::fs::canonicalize(query).unwrap_or_else(|_| query.into());
    let same = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| c == target);
    let found: Vec<&Model> = models.iter().filter(|m| same(&m.load_path)).collect();
    let found = if found.is_empty() {
        models
            .iter()
            .filter(|m| m.files.iter().any(|f| same(&f.path)))
            .collect()
    } else {
        found
    };
    match found.as_slice() {
        [m] => Ok(m),
        [] => Err(LibraryError::PathNotInLibrary {
            path: query.to_string(),
        }),
        many => Err(LibraryError::Ambiguous {
            query: query.to_string(),
            candidates: many.iter().map(|m| describe(m)).collect(),
        }),
    }
}

/// `HuggingFaceTB/SmolLM2-135M-Instruct-GGUF` matches `smollm2-135m-instruct-gguf`,
/// `huggingfacetb/smollm2-135m-instruct-gguf` and `smollm2-135m-instruct`.
fn repo_matches(repo: &str, q: &str) -> bool {
    repo_keys(repo)
        .iter()
        .any(|k| k == q || k.ends_with(&format!("/{q}")))
}

fn repo_keys(repo: &str) -> Vec<String> {
    let r = repo.to_lowercase();
    let mut keys = vec![r.clone()];
    for suffix in ["-gguf", ".gguf", "_gguf"] {
        if let Some(stripped) = r.strip_suffix(suffix) {
            keys.push(stripped.to_string());
        }
    }
    keys
}

fn keys(m: &Model) -> Vec<String> {
    let mut k = repo_keys(&m.repo);
    k.push(m.name.to_lowercase());
    k
}

fn describe(m: &Model) -> String {
    format!("{} [{}]", m.name, m.source.label())
}

/// Names that contain the query, or are within a small edit distance of it.
fn close_matches(models: &[Model], q: &str) -> Vec<String> {
    let mut scored: Vec<(usize, &str)> = models
        .iter()
        .filter_map(|m| {
            let name = m.name.to_lowercase();
            let last = name.rsplit('/').next().unwrap_or(&name).to_string();
            if !q.is_empty() && (name.contains(q) || q.contains(&last)) {
                return Some((0, m.name.as_str()));
            }
            let d = levenshtein(&last, q).min(levenshtein(&name, q));
            (d <= q.chars().count().max(3) / 3).then_some((d, m.name.as_str()))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored
        .into_iter()
        .take(5)
        .map(|(_, n)| n.to_string())
        .collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levenshtein_counts_edits() {
        assert_eq!(levenshtein("smollm2", "smollm3"), 1);
        assert_eq!(levenshtein("", "abc"), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }
}
