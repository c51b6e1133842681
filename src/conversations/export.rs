//! Export to Markdown (for reading and sharing) and to JSON (lossless, re-importable).

use std::fmt::Write as _;

use super::model::{Conversation, Role, FORMAT_VERSION};
use super::{ConversationError, Result};

/// A readable Markdown document: a header with title, model, parameters and dates, then each
/// message of the active path under a role heading. Message text is kept verbatim, so code
/// blocks survive unchanged.
pub fn export_markdown(c: &Conversation) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", one_line(&c.title));
    let _ = writeln!(
        out,
        "- Model: {}",
        c.model
            .as_deref()
            .map(one_line)
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(params) = params_line(&c.params) {
        let _ = writeln!(out, "- Parameters: {params}");
    }
    let _ = writeln!(out, "- Created: {}", c.created);
    let _ = writeln!(out, "- Updated: {}", c.updated);
    let _ = writeln!(out, "- Exported from Influence, conversation `{}`", c.id);
    if let Some(sp) = c.system_prompt.as_ref().filter(|s| !s.trim().is_empty()) {
        let _ = write!(out, "\n## System\n\n{}\n", sp.trim_end());
    }
    for m in &c.messages {
        let heading = match m.role {
            Role::System => "System",
            Role::User => "User",
            Role::Assistant => "Assistant",
        };
        let _ = write!(out, "\n## {heading}\n\n");
        if !m.content.is_empty() {
            out.push_str(&m.content);
            if !m.content.ends_with('\n') {
                out.push('\n');
            }
            if open_fence(&m.content) {
                // Close a fence the model left open so it cannot swallow the next heading.
                out.push_str("```\n");
            }
        }
        let mut notes = Vec::new();
        if m.interrupted {
            notes.push("stopped before the end".to_string());
        }
        if let Some(s) = &m.stats {
            notes.push(format!(
                "{} · {} tokens · {:.1} tok/s · first token {} ms",
                s.model, s.tokens, s.tok_s, s.ttft_ms
            ));
        }
        if m.alternatives.len() + 1 > 1 {
            let (at, of) = m.alternative_position();
            notes.push(format!("answer {at} of {of}"));
        }
        if !notes.is_empty() {
            let _ = write!(out, "\n*{}*\n", notes.join(" · "));
        }
    }
    out
}

/// The lossless format: the same JSON the store writes (alternatives and branches included).
pub fn export_json(c: &Conversation) -> String {
    serde_json::to_string_pretty(c).unwrap_or_else(|e| {
        // Serializing plain data cannot fail; keep the signature infallible for callers.
        format!("{{\"error\": \"{e}\"}}")
    })
}

/// Parses and validates an exported conversation. The caller decides on the id
/// (`ConversationStore::add_imported` gives a fresh one on collision).
pub fn import_json(text: &str) -> Result<Conversation> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| ConversationError::Import(format!("the file is not valid JSON ({e})")))?;
    if let Some(v) = value.get("version").and_then(|v| v.as_u64()) {
        if v > u64::from(FORMAT_VERSION) {
            return Err(ConversationError::Import(format!(
                "it was written by a newer Influence (format {v}, this one reads up to {FORMAT_VERSION})"
            )));
        }
    }
    let mut c: Conversation = serde_json::from_value(value).map_err(|e| {
        ConversationError::Import(format!("it is not an Influence conversation ({e})"))
    })?;
    if c.id.is_empty() {
        c.id = super::model::new_id();
    }
    if let Err(reason) = c.validate() {
        if !super::model::is_valid_id(&c.id) {
            c.id = super::model::new_id();
            c.validate().map_err(ConversationError::Import)?;
        } else {
            return Err(ConversationError::Import(reason));
        }
    }
    Ok(c)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn params_line(params: &serde_json::Value) -> Option<String> {
    match params {
        serde_json::Value::Null => None,
        serde_json::Value::Object(map) if map.is_empty() => None,
        serde_json::Value::Object(map) => Some(
            map.iter()
                .map(|(k, v)| match v {
                    serde_json::Value::String(s) => format!("{k}={s}"),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        other => Some(other.to_string()),
    }
}

/// Whether the text ends inside a fenced code block (an odd number of fence lines).
fn open_fence(text: &str) -> bool {
    let mut open: Option<(char, usize)> = None;
    for line in text.lines() {
        let t = line.trim_start();
        if line.len() - t.len() > 3 {
            continue;
        }
        let Some(ch) = t.chars().next().filter(|c| *c == '`' || *c == '~') else {
            continue;
        };
        let run = t.chars().take_while(|c| *c == ch).count();
        if run < 3 {
            continue;
        }
        match open {
            None => open = Some((ch, run)),
            Some((oc, orun)) if oc == ch && run >= orun && t[run..].trim().is_empty() => {
                open = None
            }
            _ => {}
        }
    }
    open.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::{ConversationStore, MessageStats};

    fn rich() -> Conversation {
        let mut c = Conversation::new();
        c.system_prompt = Some("You are terse.".into());
        c.params = serde_json::json!({"temperature": 0.7, "max_tokens": 256});
        c.push_user("Show me a loop");
        c.start_assistant();
        c.append_token("```rust\nfor i in 0..3 {\n    println!(\"{i}\");\n}\n```\n")
            .unwrap();
        c.finish_assistant(MessageStats {
            model: "SmolLM2-135M".into(),
            ttft_ms: 80,
            tok_s: 55.25,
            tokens: 30,
        })
        .unwrap();
        c.regenerate().unwrap();
        c.append_token("Second try").unwrap();
        c.mark_interrupted(None).unwrap();
        c
    }

    #[test]
    fn markdown_has_header_roles_and_verbatim_code() {
        let mut c = rich();
        c.page_alternative(1, crate::conversations::Page::Prev)
            .unwrap();
        let md = export_markdown(&c);
        assert!(md.starts_with("# Show me a loop\n"));
        assert!(md.contains("- Model: SmolLM2-135M"));
        assert!(md.contains("- Parameters: "), "{md}");
        assert!(
            md.contains("max_tokens=256") && md.contains("temperature=0.7"),
            "{md}"
        );
        assert!(md.contains(&format!("- Created: {}", c.created)));
        assert!(md.contains("## System\n\nYou are terse.\n"));
        assert!(md.contains("## User\n\nShow me a loop\n"));
        assert!(md.contains(
            "## Assistant\n\n```rust\nfor i in 0..3 {\n    println!(\"{i}\");\n}\n```\n"
        ));
        assert!(md.contains("SmolLM2-135M · 30 tokens · 55.2 tok/s · first token 80 ms"));
        assert!(md.contains("answer 1 of 2"));
    }

    #[test]
    fn markdown_closes_a_fence_left_open() {
        let mut c = Conversation::new();
        c.push_user("q");
        c.start_assistant();
        c.append_token("```python\nprint(1)").unwrap();
        c.mark_interrupted(None).unwrap();
        let md = export_markdown(&c);
        assert!(md.contains("print(1)\n```\n"), "{md}");
        assert!(md.contains("stopped before the end"));
        assert!(!open_fence(&md));
    }

    #[test]
    fn json_round_trip_keeps_everything() {
        let c = rich();
        let back = import_json(&export_json(&c)).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn import_rejects_garbage_and_future_versions() {
        assert!(matches!(
            import_json("not json"),
            Err(ConversationError::Import(m)) if m.contains("not valid JSON")
        ));
        assert!(matches!(
            import_json("{\"hello\": 1}"),
            Err(ConversationError::Import(m)) if m.contains("not an Influence conversation")
        ));
        let mut v: serde_json::Value = serde_json::from_str(&export_json(&rich())).unwrap();
        v["version"] = serde_json::json!(FORMAT_VERSION + 1);
        assert!(matches!(
            import_json(&v.to_string()),
            Err(ConversationError::Import(m)) if m.contains("newer Influence")
        ));
        let mut v: serde_json::Value = serde_json::from_str(&export_json(&rich())).unwrap();
        v["messages"][1]["active_alt"] = serde_json::json!(7);
        assert!(import_json(&v.to_string()).is_err());
    }

    #[test]
    fn import_gets_a_new_id_on_collision_and_for_unsafe_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ConversationStore::open(dir.path()).unwrap();
        let c = rich();
        store.save(&c).unwrap();
        let again = store
            .add_imported(import_json(&export_json(&c)).unwrap())
            .unwrap();
        assert_ne!(again.id, c.id);
        assert_eq!(again.messages, c.messages);
        assert_eq!(store.list().len(), 2);

        let mut v: serde_json::Value = serde_json::from_str(&export_json(&c)).unwrap();
        v["id"] = serde_json::json!("../../evil");
        let unsafe_id = import_json(&v.to_string()).unwrap();
        assert!(super::super::model::is_valid_id(&unsafe_id.id));
        let saved = store.add_imported(unsafe_id).unwrap();
        assert!(store.path_of(&saved.id).unwrap().starts_with(dir.path()));
    }
}
