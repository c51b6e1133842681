//! One JSON file per conversation in a folder, written with `fsutil::write_atomic`.
//!
//! Only `<id>.json` files are conversations; the atomic writer's temp files (`.<name>.<pid>.tmp`)
//! never match. A file that fails to parse is reported in `load_errors()`, skipped, and never
//! overwritten, so a user can still recover it by hand.

use std::path::{Path, PathBuf};

use super::model::{is_valid_id, new_id, Conversation};
use super::{ConversationError, Result};
use crate::fsutil::write_atomic;

/// What the conversation list shows, without loading every message.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    pub id: String,
    pub title: String,
    pub created: String,
    pub updated: String,
    pub message_count: usize,
    pub model: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LoadError {
    pub path: PathBuf,
    pub message: String,
}

/// A search match: in the title (`message_index` None) or in a message of the active path.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub id: String,
    pub title: String,
    pub updated: String,
    pub message_index: Option<usize>,
    /// The matching text with some context, on one line.
    pub snippet: String,
}

#[derive(Debug)]
pub struct ConversationStore {
    dir: PathBuf,
    summaries: Vec<ConversationSummary>,
    errors: Vec<LoadError>,
}

const SNIPPET_CONTEXT_CHARS: usize = 40;
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl ConversationStore {
    /// Opens (creating if needed) the folder and indexes the conversations in it.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| ConversationError::ReadDir {
            path: dir.clone(),
            source,
        })?;
        let mut store = Self {
            dir,
            summaries: Vec::new(),
            errors: Vec::new(),
        };
        store.remove_stale_temp_files();
        store.refresh()?;
        Ok(store)
    }

    /// A write killed midway leaves its temp file (`.<name>.<pid>.tmp`) behind. Old ones are
    /// removed; recent ones may belong to a write in progress in another process.
    fn remove_stale_temp_files(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with('.') && name.ends_with(".tmp")) {
                continue;
            }
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Conversations, most recently updated first.
    pub fn list(&self) -> &[ConversationSummary] {
        &self.summaries
    }

    /// Files that could not be loaded at the last refresh.
    pub fn load_errors(&self) -> &[LoadError] {
        &self.errors
    }

    /// Re-reads the folder.
    pub fn refresh(&mut self) -> Result<()> {
        self.summaries.clear();
        self.errors.clear();
        for path in self.conversation_files()? {
            match read_conversation(&path) {
                Ok(c) => self.summaries.push(summary(&c)),
                Err(e) => self.errors.push(LoadError {
                    path,
                    message: e.to_string(),
                }),
            }
        }
        self.sort();
        Ok(())
    }

    fn sort(&mut self) {
        self.summaries
            .sort_by(|a, b| b.updated.cmp(&a.updated).then_with(|| b.id.cmp(&a.id)));
    }

    fn conversation_files(&self) -> Result<Vec<PathBuf>> {
        let entries =
            std::fs::read_dir(&self.dir).map_err(|source| ConversationError::ReadDir {
                path: self.dir.clone(),
                source,
            })?;
        let mut files = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let is_conversation = path.extension().is_some_and(|e| e == "json")
                && path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(is_valid_id)
                && entry.file_type().is_ok_and(|t| t.is_file());
            if is_conversation {
                files.push(path);
            }
        }
        files.sort();
        Ok(files)
    }

    pub fn path_of(&self, id: &str) -> Result<PathBuf> {
        if !is_valid_id(id) {
            return Err(ConversationError::InvalidId(id.to_string()));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    pub fn load(&self, id: &str) -> Result<Conversation> {
        let path = self.path_of(id)?;
        if !path.exists() {
            return Err(ConversationError::NotFound(id.to_string()));
        }
        read_conversation(&path)
    }

    /// Writes the conversation atomically and updates the list.
    pub fn save(&mut self, conversation: &Conversation) -> Result<()> {
        let path = self.path_of(&conversation.id)?;
        if self.errors.iter().any(|e| e.path == path) {
            return Err(ConversationError::WouldOverwriteCorrupt { path });
        }
        let json =
            serde_json::to_vec_pretty(conversation).map_err(|e| ConversationError::Write {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        write_atomic(&path, &json).map_err(|source| ConversationError::Write {
            path: path.clone(),
            source,
        })?;
        let s = summary(conversation);
        match self.summaries.iter_mut().find(|x| x.id == s.id) {
            Some(existing) => *existing = s,
            None => self.summaries.push(s),
        }
        self.sort();
        Ok(())
    }

    pub fn delete(&mut self, id: &str) -> Result<()> {
        let path = self.path_of(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ConversationError::NotFound(id.to_string()))
            }
            Err(source) => return Err(ConversationError::Delete { path, source }),
        }
        self.summaries.retain(|s| s.id != id);
        self.errors.retain(|e| e.path != path);
        Ok(())
    }

    /// Whether an id is taken by a listed conversation or by any file on disk.
    pub fn contains(&self, id: &str) -> bool {
        self.summaries.iter().any(|s| s.id == id)
            || self.path_of(id).map(|p| p.exists()).unwrap_or(false)
    }

    /// Case-insensitive substring search over titles and the active path's messages, newest
    /// conversations first. An empty query matches nothing.
    pub fn search(&self, query: &str) -> Vec<SearchHit> {
        let needle = fold(query.trim());
        if needle.is_empty() {
            return Vec::new();
        }
        let mut hits = Vec::new();
        for s in &self.summaries {
            let Ok(c) = self.load(&s.id) else { continue };
            if let Some(snippet) = find_snippet(&c.title, &needle) {
                hits.push(SearchHit {
                    id: c.id.clone(),
                    title: c.title.clone(),
                    updated: c.updated.clone(),
                    message_index: None,
                    snippet,
                });
            }
            for (i, m) in c.messages.iter().enumerate() {
                if let Some(snippet) = find_snippet(&m.content, &needle) {
                    hits.push(SearchHit {
                        id: c.id.clone(),
                        title: c.title.clone(),
                        updated: c.updated.clone(),
                        message_index: Some(i),
                        snippet,
                    });
                }
            }
        }
        hits
    }

    /// Saves an imported conversation, giving it a fresh id when its id is taken or unusable.
    pub fn add_imported(&mut self, mut conversation: Conversation) -> Result<Conversation> {
        if !is_valid_id(&conversation.id) || self.contains(&conversation.id) {
            conversation.id = new_id();
        }
        self.save(&conversation)?;
        Ok(conversation)
    }
}

fn read_conversation(path: &Path) -> Result<Conversation> {
    let bytes = std::fs::read(path).map_err(|source| ConversationError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let conversation: Conversation =
        serde_json::from_slice(&bytes).map_err(|e| ConversationError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    conversation
        .validate()
        .map_err(|reason| ConversationError::Corrupt {
            path: path.to_path_buf(),
            reason,
        })?;
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    if conversation.id != stem {
        return Err(ConversationError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "it holds conversation {:?} but is named after {stem:?}",
                conversation.id
            ),
        });
    }
    Ok(conversation)
}

fn summary(c: &Conversation) -> ConversationSummary {
    ConversationSummary {
        id: c.id.clone(),
        title: c.title.clone(),
        created: c.created.clone(),
        updated: c.updated.clone(),
        message_count: c.messages.len(),
        model: c.model.clone(),
    }
}

fn fold(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// Finds `needle` (already lowercased) in `hay` ignoring case and returns a one-line excerpt.
fn find_snippet(hay: &str, needle: &str) -> Option<String> {
    // Lowercase while remembering which original char each folded byte came from, so the
    // excerpt is cut from the original text.
    let mut folded = String::with_capacity(hay.len());
    let mut origin: Vec<usize> = Vec::with_capacity(hay.len());
    let chars: Vec<char> = hay.chars().collect();
    for (ci, c) in chars.iter().enumerate() {
        for l in c.to_lowercase() {
            let before = folded.len();
            folded.push(l);
            origin.extend(std::iter::repeat_n(ci, folded.len() - before));
        }
    }
    let at = folded.find(needle)?;
    let first = origin[at];
    let last = origin[(at + needle.len()).saturating_sub(1).min(origin.len() - 1)];
    let from = first.saturating_sub(SNIPPET_CONTEXT_CHARS);
    let to = (last + 1 + SNIPPET_CONTEXT_CHARS).min(chars.len());
    let mut snippet = String::new();
    if from > 0 {
        snippet.push('…');
    }
    let body: String = chars[from..to]
        .iter()
        .map(|c| if c.is_whitespace() { ' ' } else { *c })
        .collect();
    snippet.push_str(&body);
    if to < chars.len() {
        snippet.push('…');
    }
    Some(snippet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::{MessageStats, Page};
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    fn sample(title: &str, question: &str) -> Conversation {
        let mut c = Conversation::new();
        c.push_user(question);
        c.start_assistant();
        c.append_token("Here is code:\n\n```rust\nfn main() {}\n```\n")
            .unwrap();
        c.finish_assistant(MessageStats {
            model: "m".into(),
            ttft_ms: 5,
            tok_s: 10.0,
            tokens: 7,
        })
        .unwrap();
        c.rename(title);
        c
    }

    #[test]
    fn save_load_round_trip_and_list_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ConversationStore::open(dir.path()).unwrap();
        let mut a = sample("Alpha", "first?");
        a.regenerate().unwrap();
        a.append_token("other answer").unwrap();
        a.edit_user(0, "edited").unwrap();
        a.system_prompt = Some("Be kind".into());
        a.params = serde_json::json!({"temperature": 0.7, "top_p": 0.9});
        store.save(&a).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut b = sample("Beta", "second?");
        b.touch();
        store.save(&b).unwrap();

        let reopened = ConversationStore::open(dir.path()).unwrap();
        assert!(reopened.load_errors().is_empty());
        let titles: Vec<_> = reopened.list().iter().map(|s| s.title.as_str()).collect();
        assert_eq!(titles, ["Beta", "Alpha"]);
        assert_eq!(reopened.list()[1].message_count, 1);
        let loaded = reopened.load(&a.id).unwrap();
        assert_eq!(loaded, a);
        let mut loaded = loaded;
        assert!(loaded.page_branch(0, Page::Prev).unwrap());
        assert_eq!(loaded.messages[0].content, "first?");
        assert_eq!(loaded.messages[1].content, "other answer");
        assert!(loaded.messages[1].alternatives[0]
            .content
            .starts_with("Here is code:"));
    }

    #[test]
    fn delete_and_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ConversationStore::open(dir.path()).unwrap();
        let c = sample("Gone", "q");
        store.save(&c).unwrap();
        store.delete(&c.id).unwrap();
        assert!(store.list().is_empty());
        assert!(!store.path_of(&c.id).unwrap().exists());
        assert!(matches!(
            store.delete(&c.id),
            Err(ConversationError::NotFound(_))
        ));
        assert!(matches!(
            store.load("../../etc/passwd"),
            Err(ConversationError::InvalidId(_))
        ));
    }

    #[test]
    fn corrupt_file_is_reported_skipped_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let good = sample("Good", "q");
        std::fs::write(
            dir.path().join(format!("{}.json", good.id)),
            serde_json::to_vec(&good).unwrap(),
        )
        .unwrap();
        let bad_path = dir.path().join("20260101-000000-000-deadbeef.json");
        std::fs::write(
            &bad_path,
            b"{\"id\": \"20260101-000000-000-deadbeef\", \"tit",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not a conversation").unwrap();

        let mut store = ConversationStore::open(dir.path()).unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.load_errors().len(), 1);
        assert_eq!(store.load_errors()[0].path, bad_path);
        assert!(store.load_errors()[0]
            .message
            .contains("not a valid conversation"));

        let mut clash = sample("Clash", "q");
        clash.id = "20260101-000000-000-deadbeef".into();
        assert!(matches!(
            store.save(&clash),
            Err(ConversationError::WouldOverwriteCorrupt { .. })
        ));
        assert_eq!(
            std::fs::read(&bad_path).unwrap(),
            b"{\"id\": \"20260101-000000-000-deadbeef\", \"tit"
        );
        let imported = store.add_imported(clash).unwrap();
        assert_ne!(imported.id, "20260101-000000-000-deadbeef");
        assert_eq!(store.list().len(), 2);
    }

    #[test]
    fn stale_temp_files_are_removed_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir
            .path()
            .join(".20260101-000000-000-00000000.json.4242.tmp");
        let fresh = dir
            .path()
            .join(".20260101-000000-000-00000001.json.4243.tmp");
        std::fs::write(&stale, b"{\"partial").unwrap();
        std::fs::write(&fresh, b"{\"partial").unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(hour_ago)
            .unwrap();
        let store = ConversationStore::open(dir.path()).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
        assert!(store.list().is_empty() && store.load_errors().is_empty());
    }

    #[test]
    fn search_is_case_insensitive_with_snippets() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ConversationStore::open(dir.path()).unwrap();
        let mut a = sample(
            "Ownership notes",
            "Explain the BORROW checker in detail please",
        );
        a.append_token("").unwrap();
        store.save(&a).unwrap();
        store.save(&sample("Other", "Weather?")).unwrap();

        let hits = store.search("borrow");
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].id, a.id);
        assert_eq!(hits[0].message_index, Some(0));
        assert!(hits[0].snippet.contains("BORROW checker"), "{:?}", hits[0]);

        let title_hits = store.search("OWNERSHIP");
        assert_eq!(title_hits[0].message_index, None);
        assert!(store.search("  ").is_empty());
        assert!(store.search("nowhere-to-be-found").is_empty());
        // Code in answers is searchable too.
        assert_eq!(store.search("fn main").len(), 2);
    }

    #[test]
    fn snippet_cuts_long_text_with_ellipses_and_handles_unicode_case() {
        let text = format!("{}Straße ÄRGER{}", "a".repeat(100), "b".repeat(100));
        let s = find_snippet(&text, &fold("straße ärger")).unwrap();
        assert!(s.starts_with('…') && s.ends_with('…'));
        assert!(s.contains("Straße ÄRGER"));
        assert!(s.chars().count() <= 12 + 2 * SNIPPET_CONTEXT_CHARS + 2);
        assert!(find_snippet("İstanbul", &fold("i̇stanbul")).is_some());
    }

    const CHILD_ENV: &str = "INFLUENCE_TEST_CONVERSATION_WRITER_DIR";

    /// Writes conversations in a loop. Run normally it is a bounded self-check; the kill test
    /// below runs it in a child process (with `CHILD_ENV` set) forever, until killed.
    #[test]
    fn writer_child() {
        let (dir, forever) = match std::env::var(CHILD_ENV) {
            Ok(d) => (PathBuf::from(d), true),
            Err(_) => (
                std::env::temp_dir().join(format!("influence-writer-{}", new_id())),
                false,
            ),
        };
        let mut store = ConversationStore::open(&dir).unwrap();
        let mut convs: Vec<Conversation> = (0..3).map(|i| sample(&format!("c{i}"), "q")).collect();
        for c in &convs {
            store.save(c).unwrap();
        }
        println!("WRITER READY");
        let mut round = 0u64;
        loop {
            for c in convs.iter_mut() {
                // Growing content makes every write longer than the previous one, so a torn
                // write would show as truncated JSON.
                c.push_user(format!("round {round} {}", "x".repeat(2000)));
                store.save(c).unwrap();
            }
            round += 1;
            if !forever && round == 20 {
                break;
            }
        }
        let reopened = ConversationStore::open(&dir).unwrap();
        assert!(reopened.load_errors().is_empty());
        assert_eq!(reopened.list().len(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_kill_during_writes_leaves_no_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let exe = std::env::current_exe().unwrap();
        for attempt in 0..3u64 {
            let mut child = Command::new(&exe)
                .args([
                    "conversations::store::tests::writer_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, dir.path().join(format!("run{attempt}")))
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let mut lines = BufReader::new(stdout).lines();
            let started = Instant::now();
            loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("WRITER READY") => break,
                    Some(_) => {}
                    None => panic!("writer child exited before it was ready"),
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "writer child hung"
                );
            }
            std::thread::sleep(Duration::from_millis(150 + 97 * attempt));
            child.kill().unwrap();
            child.wait().unwrap();

            let run = dir.path().join(format!("run{attempt}"));
            let store = ConversationStore::open(&run).unwrap();
            assert!(
                store.load_errors().is_empty(),
                "a killed write left a broken file: {:?}",
                store.load_errors()
            );
            assert_eq!(store.list().len(), 3);
            for entry in std::fs::read_dir(&run).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    let bytes = std::fs::read(&path).unwrap();
                    serde_json::from_slice::<Conversation>(&bytes)
                        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
                } else {
                    // Only the atomic writer's temp files may remain, and they are not listed.
                    let name = path.file_name().unwrap().to_string_lossy().into_owned();
                    assert!(name.starts_with('.') && name.ends_with(".tmp"), "{name}");
                }
            }
            // The writer made progress beyond the first save before it was killed.
            assert!(store.list().iter().any(|s| s.message_count > 1));
        }
    }
}
