//! Re-hashes a model's files and compares them with the hashes their store recorded.

use std::io::Read;
use std::path::PathBuf;

use sha1::Digest as _;

use super::{FileHash, Model};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum FileCheck {
    Ok,
    Mismatch {
        expected: String,
        actual: String,
    },
    Missing,
    /// The store recorded no hash for this file (LM Studio, plain folders, copied snapshots).
    NoRecordedHash,
    Unreadable {
        error: String,
    },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FileVerdict {
    pub path: PathBuf,
    pub size: u64,
    pub check: FileCheck,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct VerifyReport {
    pub model: String,
    pub files: Vec<FileVerdict>,
}

impl VerifyReport {
    /// True when no file is missing, unreadable or different from its recorded hash.
    pub fn all_ok(&self) -> bool {
        self.files
            .iter()
            .all(|f| matches!(f.check, FileCheck::Ok | FileCheck::NoRecordedHash))
    }

    pub fn count(&self, pred: impl Fn(&FileCheck) -> bool) -> usize {
        self.files.iter().filter(|f| pred(&f.check)).count()
    }
}

/// Hashes every file of `model` that has a recorded hash. `progress(done, total)` is called
/// after each chunk with bytes hashed so far, for a gauge.
pub fn verify(model: &Model, progress: &mut dyn FnMut(u64, u64)) -> VerifyReport {
    let total: u64 = model
        .files
        .iter()
        .filter(|f| f.hash.is_some() && f.exists)
        .map(|f| f.size)
        .sum();
    let mut done = 0u64;
    let mut files = Vec::with_capacity(model.files.len());
    for f in &model.files {
        let check = if !f.blob.is_file() {
            FileCheck::Missing
        } else {
            match &f.hash {
                None => FileCheck::NoRecordedHash,
                Some(expected) => match hash_file(&f.blob, expected, &mut |n| {
                    done += n;
                    progress(done, total);
                }) {
                    Ok(actual) => {
                        let want = match expected {
                            FileHash::Sha256(h) | FileHash::GitSha1(h) => h,
                        };
                        if &actual == want {
                            FileCheck::Ok
                        } else {
                            FileCheck::Mismatch {
                                expected: want.clone(),
                                actual,
                            }
                        }
                    }
                    Err(e) => FileCheck::Unreadable {
                        error: e.to_string(),
                    },
                },
            }
        };
        files.push(FileVerdict {
            path: f.path.clone(),
            size: f.size,
            check,
        });
    }
    VerifyReport {
        model: model.name.clone(),
        files,
    }
}

/// Whether the file at `path` has the hash `expected`.
pub fn file_matches(path: &std::path::Path, expected: &FileHash) -> std::io::Result<bool> {
    let actual = hash_file(path, expected, &mut |_| {})?;
    Ok(match expected {
        FileHash::Sha256(h) | FileHash::GitSha1(h) => actual.eq_ignore_ascii_case(h),
    })
}

/// Streams the file through sha256, or through git's blob sha1 (`"blob {len}\0" + content`).
fn hash_file(
    path: &std::path::Path,
    algo: &FileHash,
    on_chunk: &mut dyn FnMut(u64),
) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut sha256 = sha2::Sha256::new();
    let mut sha1 = sha1::Sha1::new();
    let git = matches!(algo, FileHash::GitSha1(_));
    if git {
        sha1.update(format!("blob {len}\0").as_bytes());
    }
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if git {
            sha1.update(&buf[..n]);
        } else {
            sha256.update(&buf[..n]);
        }
        on_chunk(n as u64);
    }
    Ok(if git {
        hex::encode(sha1.finalize())
    } else {
        hex::encode(sha256.finalize())
    })
}
