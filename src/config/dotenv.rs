//! `.env` files: the same variables as the environment, written down once per project folder or
//! per user. Read from the current folder and from the config folder with `dotenvy`.
//!
//! Real environment variables win over either file, and the current folder's file wins over the
//! config folder's. Only Influence's variables are taken (`INFLUENCE_*`, `HF_*` and the few
//! others the docs name), so a project's `.env` full of unrelated secrets changes nothing here.

use std::path::{Path, PathBuf};

use super::{ConfigError, Dirs};

/// The file name looked for in each folder.
pub const FILE_NAME: &str = ".env";

/// Variables outside the `INFLUENCE_` and `HF_` families that Influence documents and reads.
pub const OTHER_KEYS: &[&str] = &[
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "RUST_LOG",
    "OLLAMA_MODELS",
];

/// Whether a `.env` file may set `key`.
pub fn is_taken(key: &str) -> bool {
    key.starts_with("INFLUENCE_") || key.starts_with("HF_") || OTHER_KEYS.contains(&key)
}

/// One `.env` file that was read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DotEnvFile {
    pub path: PathBuf,
    /// The variables taken from it, in file order (the first of a repeated key counts).
    pub vars: Vec<(String, String)>,
    /// Keys the file sets that Influence does not read, so they were left alone.
    pub ignored: Vec<String>,
    /// The line each of `vars` is set on (1-based), for error messages.
    pub lines: Vec<usize>,
}

impl DotEnvFile {
    /// Reads `path`; `Ok(None)` when there is no such file.
    pub fn read(path: &Path) -> Result<Option<DotEnvFile>, ConfigError> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ConfigError::Read {
                    file: path.to_path_buf(),
                    source,
                })
            }
        };
        let mut file = DotEnvFile {
            path: path.to_path_buf(),
            ..Default::default()
        };
        for item in dotenvy::from_read_iter(text.as_slice()) {
            let (key, value) = item.map_err(|e| parse_error(path, &text, e))?;
            if !is_taken(&key) {
                if !file.ignored.contains(&key) {
                    file.ignored.push(key);
                }
            } else if !file.vars.iter().any(|(k, _)| *k == key) {
                file.lines.push(line_setting(&text, &key));
                file.vars.push((key, value));
            }
        }
        Ok(Some(file))
    }

    /// The line that sets `var`, if this file sets it.
    pub fn line_of(&self, var: &str) -> Option<usize> {
        let i = self.vars.iter().position(|(k, _)| k == var)?;
        self.lines.get(i).copied()
    }

    fn get(&self, var: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
    }
}

/// The first line that assigns `key` (`KEY=`, `KEY =`, `export KEY=`); 1 if none is found.
fn line_setting(text: &[u8], key: &str) -> usize {
    String::from_utf8_lossy(text)
        .lines()
        .position(|l| {
            let l = l.trim_start();
            let l = l.strip_prefix("export ").map_or(l, str::trim_start);
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map_or(1, |i| i + 1)
}

/// dotenvy reports the text of the bad line; the user needs its number.
fn parse_error(path: &Path, text: &[u8], e: dotenvy::Error) -> ConfigError {
    match e {
        dotenvy::Error::LineParse(line, _) => {
            let text = String::from_utf8_lossy(text);
            // dotenvy gives the statement's text (from its first line, cut at a comment); an
            // identical earlier line would have failed the same way, so the first match is it.
            let shown = line.lines().next().unwrap_or("").trim_end();
            let lines: Vec<&str> = text.lines().map(|l| l.trim_end()).collect();
            let number = lines
                .iter()
                .position(|l| !shown.is_empty() && *l == shown)
                .or_else(|| {
                    lines
                        .iter()
                        .position(|l| !shown.is_empty() && l.starts_with(shown))
                })
                .map_or(lines.len().max(1), |i| i + 1);
            ConfigError::DotEnv {
                file: path.to_path_buf(),
                line: number,
                message: format!(
                    "cannot parse `{shown}`: expected KEY=VALUE (quote a value that holds spaces, \
                     # or quotes, and close every quote)"
                ),
            }
        }
        dotenvy::Error::Io(source) => ConfigError::Read {
            file: path.to_path_buf(),
            source,
        },
        other => ConfigError::DotEnv {
            file: path.to_path_buf(),
            line: 0,
            message: other.to_string(),
        },
    }
}

/// The `.env` files found, most specific first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DotEnv {
    pub files: Vec<DotEnvFile>,
}

impl DotEnv {
    /// Reads `<cwd>/.env`, then `<config dir>/.env`. The config dir may itself come from
    /// `INFLUENCE_HOME` in the first file, so it is resolved after that file is read.
    pub fn discover(
        env: &dyn Fn(&str) -> Option<String>,
        cwd: Option<&Path>,
        config_flag: Option<&Path>,
    ) -> Result<DotEnv, ConfigError> {
        let mut found = DotEnv::default();
        if let Some(cwd) = cwd {
            found.files.extend(DotEnvFile::read(&cwd.join(FILE_NAME))?);
        }
        let dirs = Dirs::resolve(&|k| found.lookup(env, k), config_flag);
        let in_config = dirs.config_dir.join(FILE_NAME);
        let same = |a: &Path, b: &Path| match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => a == b,
        };
        if !found.files.iter().any(|f| same(&f.path, &in_config)) {
            found.files.extend(DotEnvFile::read(&in_config)?);
        }
        Ok(found)
    }

    /// The value a file supplies for `var`, and that file (the first file that sets it).
    pub fn get(&self, var: &str) -> Option<(&str, &Path)> {
        self.files
            .iter()
            .find_map(|f| f.get(var).map(|v| (v, f.path.as_path())))
    }

    /// `env` first, then the files.
    pub fn lookup(&self, env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
        env(var).or_else(|| self.get(var).map(|(v, _)| v.to_string()))
    }

    /// The variables the files supply that `env` does not set: what the process should export
    /// so every part of Influence (and the HTTP client's proxy settings) sees them.
    pub fn missing_from(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for f in &self.files {
            for (k, v) in &f.vars {
                if env(k).is_none() && !out.iter().any(|(o, _)| o == k) {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join(FILE_NAME);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn takes_only_influence_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "# settings\nINFLUENCE_THEME=light\nexport HF_TOKEN='hf_x'\nDATABASE_URL=postgres://x\n\
             HTTPS_PROXY=\"http://proxy:3128\"\nINFLUENCE_THEME=dark\nPATH=/evil\n",
        );
        let f = DotEnvFile::read(&p).unwrap().unwrap();
        assert_eq!(
            f.vars,
            vec![
                ("INFLUENCE_THEME".to_string(), "light".to_string()),
                ("HF_TOKEN".to_string(), "hf_x".to_string()),
                ("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string()),
            ]
        );
        assert_eq!(f.ignored, vec!["DATABASE_URL", "PATH"]);
        assert_eq!(f.line_of("HF_TOKEN"), Some(3));
        assert_eq!(f.line_of("INFLUENCE_THEME"), Some(2));
        assert!(DotEnvFile::read(&dir.path().join("none"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "INFLUENCE_THEME=light\n\n# ok\nINFLUENCE PORT 9000\nHF_HOME=/x\n",
        );
        let err = DotEnvFile::read(&p).unwrap_err().to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("line 4"), "{err}");
        assert!(err.contains("INFLUENCE PORT 9000"), "{err}");

        let p = write(dir.path(), "INFLUENCE_THEME=light\nHF_TOKEN=\"open\n");
        let err = DotEnvFile::read(&p).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn current_folder_wins_and_config_home_may_come_from_it() {
        let cwd = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        write(
            cwd.path(),
            &format!(
                "INFLUENCE_HOME={}\nINFLUENCE_THEME=light\n",
                home.path().display()
            ),
        );
        write(
            home.path(),
            "INFLUENCE_THEME=dark\nINFLUENCE_PORT=9100\nINFLUENCE_HOST=0.0.0.0\n",
        );
        let real = |k: &str| (k == "INFLUENCE_HOST").then(|| "127.0.0.9".to_string());
        let d = DotEnv::discover(&real, Some(cwd.path()), None).unwrap();
        assert_eq!(d.files.len(), 2);
        assert_eq!(d.get("INFLUENCE_THEME").unwrap().0, "light");
        assert_eq!(d.get("INFLUENCE_PORT").unwrap().0, "9100");
        assert_eq!(d.lookup(&real, "INFLUENCE_HOST").unwrap(), "127.0.0.9");
        let missing = d.missing_from(&real);
        assert!(missing.contains(&("INFLUENCE_PORT".into(), "9100".into())));
        assert!(!missing.iter().any(|(k, _)| k == "INFLUENCE_HOST"));

        // The config folder is the current folder: its file is read once.
        let d = DotEnv::discover(
            &|k| (k == "INFLUENCE_HOME").then(|| home.path().display().to_string()),
            Some(home.path()),
            None,
        )
        .unwrap();
        assert_eq!(d.files.len(), 1);
    }
}
