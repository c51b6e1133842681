//! Slash commands typed into the chat input, and their Tab completion.

use super::params::Field;

/// Every command with its one-line help, in the order `/help` lists them.
pub const COMMANDS: [(&str, &str); 16] = [
    ("/help", "list the slash commands"),
    ("/clear", "remove every message of this chat"),
    ("/new", "start a new chat"),
    ("/save", "save now; /save TITLE also renames"),
    ("/load", "open a chat: /load ID-OR-TITLE, or the list"),
    ("/history", "show saved chats (type to search)"),
    ("/rename", "rename this chat: /rename TITLE"),
    ("/delete", "delete this chat from disk"),
    ("/export", "export this chat: /export [md|json]"),
    ("/import", "import a chat: /import FILE.json"),
    ("/set", "set a parameter: /set KEY VALUE"),
    ("/system", "set the system prompt: /system TEXT"),
    (
        "/model",
        "load a model: /model NAME|PATH|openai:URL#MODEL|ollama:URL#MODEL",
    ),
    ("/copy", "copy the answer, or code block N: /copy [N]"),
    ("/quit", "leave Influence"),
    ("/stop", "stop the answer being generated"),
];

#[derive(Debug, Clone, PartialEq)]
pub enum Slash {
    Help,
    Clear,
    New,
    Save(Option<String>),
    Load(Option<String>),
    History,
    Rename(String),
    Delete,
    Export(ExportFormat),
    Import(String),
    Set(Field, String),
    System(String),
    Model(String),
    Copy(Option<usize>),
    Quit,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Markdown,
    Json,
}

impl ExportFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Markdown => "md",
            ExportFormat::Json => "json",
        }
    }
}

/// Parses a line starting with `/`. The error says what is wrong and what to type instead.
pub fn parse(line: &str) -> Result<Slash, String> {
    let line = line.trim();
    let (cmd, rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    let arg = || (!rest.is_empty()).then(|| rest.to_string());
    let need = |what: &str| -> Result<String, String> {
        arg().ok_or_else(|| format!("{cmd} needs {what}; try /help"))
    };
    Ok(match cmd {
        "/help" | "/?" => Slash::Help,
        "/clear" => Slash::Clear,
        "/new" => Slash::New,
        "/save" => Slash::Save(arg()),
        "/load" | "/open" => Slash::Load(arg()),
        "/history" | "/list" => Slash::History,
        "/rename" => Slash::Rename(need("a title")?),
        "/delete" => Slash::Delete,
        "/export" => Slash::Export(match rest.to_ascii_lowercase().as_str() {
            "" | "md" | "markdown" => ExportFormat::Markdown,
            "json" => ExportFormat::Json,
            other => return Err(format!("/export takes md or json, not {other:?}")),
        }),
        "/import" => Slash::Import(need("a JSON file path")?),
        "/set" => {
            let (key, value) = match rest.find(char::is_whitespace) {
                Some(i) => (&rest[..i], rest[i..].trim()),
                None => (rest, ""),
            };
            let keys: Vec<&str> = Field::ALL.iter().map(|f| f.key()).collect();
            let field = Field::parse(key).ok_or_else(|| {
                format!("/set: unknown key {key:?}; keys: {}", keys.join(", "))
            })?;
            if value.is_empty() && field != Field::SystemPrompt {
                return Err(format!("/set {} needs a value", field.key()));
            }
            Slash::Set(field, value.to_string())
        }
        "/system" => Slash::System(rest.to_string()),
        "/model" => Slash::Model(need("a model name or path")?),
        "/copy" => Slash::Copy(match rest {
            "" => None,
            n => Some(
                n.parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("/copy takes a code block number, not {n:?}"))?,
            ),
        }),
        "/quit" | "/exit" | "/q" => Slash::Quit,
        "/stop" => Slash::Stop,
        other => {
            return Err(format!(
                "unknown command {other}; type /help for the list (start with a space to send a message that begins with /)"
            ))
        }
    })
}

/// Commands (or `/set` keys) that start with what was typed, for the hint line.
pub fn candidates(input: &str) -> Vec<String> {
    if !input.starts_with('/') || input.contains('\n') {
        return Vec::new();
    }
    if let Some(rest) = input.strip_prefix("/set ") {
        if rest.contains(char::is_whitespace) {
            return Vec::new();
        }
        return Field::ALL
            .iter()
            .map(|f| format!("/set {}", f.key()))
            .filter(|c| c.starts_with(input))
            .collect();
    }
    if input.contains(char::is_whitespace) {
        return Vec::new();
    }
    COMMANDS
        .iter()
        .map(|(c, _)| c.to_string())
        .filter(|c| c.starts_with(input))
        .collect()
}

/// Tab: the completed input, when it extends what was typed. A unique match gets a space.
pub fn complete(input: &str) -> Option<String> {
    let c = candidates(input);
    match c.len() {
        0 => None,
        1 => Some(format!("{} ", c[0])),
        _ => {
            let first = &c[0];
            let mut n = first.len();
            for other in &c[1..] {
                n = n.min(
                    first
                        .bytes()
                        .zip(other.bytes())
                        .take_while(|(a, b)| a == b)
                        .count(),
                );
            }
            (n > input.len()).then(|| first[..n].to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_explains_mistakes() {
        assert_eq!(parse("/clear").unwrap(), Slash::Clear);
        assert_eq!(
            parse("/set temperature 0.2").unwrap(),
            Slash::Set(Field::Temperature, "0.2".into())
        );
        assert_eq!(
            parse("/system  Be brief.").unwrap(),
            Slash::System("Be brief.".into())
        );
        assert_eq!(
            parse("/export json").unwrap(),
            Slash::Export(ExportFormat::Json)
        );
        assert_eq!(parse("/copy 2").unwrap(), Slash::Copy(Some(2)));
        assert!(parse("/set warmth 3").unwrap_err().contains("temperature"));
        assert!(parse("/model").unwrap_err().contains("needs"));
        assert!(parse("/frobnicate").unwrap_err().contains("/help"));
    }

    #[test]
    fn tab_completes_commands_and_keys() {
        assert_eq!(complete("/cl").as_deref(), Some("/clear "));
        assert_eq!(
            complete("/s"),
            None,
            "/save, /set, /system, /stop share only /s"
        );
        assert_eq!(complete("/sy").as_deref(), Some("/system "));
        assert_eq!(complete("/set te").as_deref(), Some("/set temperature "));
        assert_eq!(complete("/set top").as_deref(), Some("/set top_"));
        assert_eq!(complete("hello"), None);
        assert_eq!(candidates("/e"), vec!["/export".to_string()]);
    }
}
