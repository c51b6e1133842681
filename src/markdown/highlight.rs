//! Syntax highlighting for code blocks with syntect.
//!
//! The syntax and theme sets are loaded once per process: loading them costs tens of
//! milliseconds and every code block needs them. Highlighting is line by line with a resumable
//! state, so the streaming collector can continue an open code block without re-highlighting
//! the lines it already committed. The size guard is applied as a running budget (first
//! 10,000 lines / 512 KB highlighted, the rest plain) rather than by the block's final size,
//! because the final size is unknown while a block streams and a committed line must never
//! change afterwards.

use std::collections::HashMap;
use std::sync::OnceLock;

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Span;
use syntect::highlighting::{
    FontStyle, HighlightIterator, HighlightState, Highlighter, Theme, ThemeSet,
};
use syntect::parsing::{ParseState, ScopeStack, SyntaxSet};

/// Lines of one block highlighted before the rest falls back to plain text.
const MAX_LINES: usize = 10_000;
/// Bytes of one block highlighted before the rest falls back to plain text.
const MAX_BYTES: usize = 512 * 1024;
/// A single line longer than this is shown plain: regex work on minified blobs is unbounded.
const MAX_LINE_BYTES: usize = 16 * 1024;

const FALLBACK_THEME: &str = "base16-ocean.dark";

fn syntax_set() -> &'static SyntaxSet {
    static SET: OnceLock<SyntaxSet> = OnceLock::new();
    SET.get_or_init(SyntaxSet::load_defaults_newlines)
}

fn theme_set() -> &'static ThemeSet {
    static SET: OnceLock<ThemeSet> = OnceLock::new();
    SET.get_or_init(ThemeSet::load_defaults)
}

/// Highlighters cache the theme's selectors; build one per bundled theme, once.
fn highlighters() -> &'static HashMap<String, Highlighter<'static>> {
    static MAP: OnceLock<HashMap<String, Highlighter<'static>>> = OnceLock::new();
    MAP.get_or_init(|| {
        theme_set()
            .themes
            .iter()
            .map(|(name, theme)| (name.clone(), Highlighter::new(theme)))
            .collect()
    })
}

/// Names of the bundled syntect themes usable as `MarkdownStyles::syntect_theme`.
pub fn theme_names() -> Vec<String> {
    let mut names: Vec<String> = theme_set().themes.keys().cloned().collect();
    names.sort();
    names
}

fn theme_and_highlighter(name: &str) -> (&'static Theme, &'static Highlighter<'static>) {
    let set = theme_set();
    let map = highlighters();
    match (set.themes.get(name), map.get(name)) {
        (Some(t), Some(h)) => (t, h),
        _ => (&set.themes[FALLBACK_THEME], &map[FALLBACK_THEME]),
    }
}

/// Resolves an info string such as `rust`, `rust,ignore`, `py` or `c++` to a syntax.
fn find_syntax(lang: &str) -> Option<&'static syntect::parsing::SyntaxReference> {
    let token = lang
        .split(|c: char| c == ',' || c.is_whitespace() || c == '{')
        .next()
        .unwrap_or("")
        .trim();
    if token.is_empty() {
        return None;
    }
    let set = syntax_set();
    let alias = match token.to_ascii_lowercase().as_str() {
        "c++" => "cpp".to_string(),
        "shell" | "console" | "zsh" => "sh".to_string(),
        "golang" => "go".to_string(),
        "javascript" | "node" => "js".to_string(),
        "python3" => "py".to_string(),
        other => other.to_string(),
    };
    set.find_syntax_by_token(&alias)
        .filter(|s| s.name != "Plain Text")
}

/// Resumable per-block highlighter. `Clone` is what lets the stream save the state after the
/// lines it committed.
#[derive(Clone, Debug)]
pub(crate) struct CodeHighlighter {
    state: Option<(ParseState, HighlightState)>,
    highlighter: Option<&'static Highlighter<'static>>,
    lines: usize,
    bytes: usize,
}

impl CodeHighlighter {
    /// A highlighter for `lang` (an info string); plain text when the language is unknown.
    pub(crate) fn new(lang: Option<&str>, theme: &str) -> Self {
        let Some(syntax) = lang.and_then(find_syntax) else {
            return Self::plain();
        };
        let (_, highlighter) = theme_and_highlighter(theme);
        let parse = ParseState::new(syntax);
        let hl = HighlightState::new(highlighter, ScopeStack::new());
        Self {
            state: Some((parse, hl)),
            highlighter: Some(highlighter),
            lines: 0,
            bytes: 0,
        }
    }

    pub(crate) fn plain() -> Self {
        Self {
            state: None,
            highlighter: None,
            lines: 0,
            bytes: 0,
        }
    }

    /// Highlights one line (without its `\n`). `base` is the plain-text style; every span gets
    /// the code background from `bg`.
    pub(crate) fn line(&mut self, line: &str, base: Style, bg: Style) -> Vec<Span<'static>> {
        self.lines += 1;
        self.bytes += line.len() + 1;
        let plain = || vec![Span::styled(line.to_string(), base.patch(bg))];
        if self.lines > MAX_LINES || self.bytes > MAX_BYTES || line.len() > MAX_LINE_BYTES {
            return plain();
        }
        let (Some((parse, hl)), Some(highlighter)) = (self.state.as_mut(), self.highlighter) else {
            return plain();
        };
        // The "newlines" syntax set expects each line to end with '\n'.
        let with_nl = format!("{line}\n");
        let Ok(ops) = parse.parse_line(&with_nl, syntax_set()) else {
            // A syntax definition failed on this input: stop highlighting this block rather
            // than show half-parsed colors.
            self.state = None;
            return plain();
        };
        let mut spans = Vec::new();
        for (style, text) in HighlightIterator::new(hl, &ops, &with_nl, highlighter) {
            let text = text.strip_suffix('\n').unwrap_or(text);
            if text.is_empty() {
                continue;
            }
            spans.push(Span::styled(
                text.to_string(),
                base.patch(convert(style)).patch(bg),
            ));
        }
        if spans.is_empty() {
            return plain();
        }
        spans
    }
}

fn convert(s: syntect::highlighting::Style) -> Style {
    let mut out = Style::new().fg(Color::Rgb(s.foreground.r, s.foreground.g, s.foreground.b));
    if s.font_style.contains(FontStyle::BOLD) {
        out = out.add_modifier(Modifier::BOLD);
    }
    if s.font_style.contains(FontStyle::ITALIC) {
        out = out.add_modifier(Modifier::ITALIC);
    }
    if s.font_style.contains(FontStyle::UNDERLINE) {
        out = out.add_modifier(Modifier::UNDERLINED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_language_gets_colors_and_unknown_is_plain() {
        let bg = Style::new().bg(Color::Rgb(1, 2, 3));
        let mut rust = CodeHighlighter::new(Some("rust"), "base16-ocean.dark");
        let spans = rust.line("fn main() { let x = 1; }", Style::new(), bg);
        assert!(
            spans.len() > 3,
            "rust should be split into tokens: {spans:?}"
        );
        assert!(spans.iter().all(|s| s.style.bg == bg.bg));
        let mut unknown = CodeHighlighter::new(Some("no-such-lang"), "base16-ocean.dark");
        let spans = unknown.line("fn main() {}", Style::new(), bg);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].content, "fn main() {}");
    }

    #[test]
    fn info_string_variants_resolve() {
        assert!(find_syntax("rust,ignore").is_some());
        assert!(find_syntax("py").is_some());
        assert!(find_syntax("c++").is_some());
        assert!(find_syntax("").is_none());
        assert!(find_syntax("text").is_none());
    }

    #[test]
    fn budget_falls_back_to_plain_after_max_lines() {
        let mut h = CodeHighlighter::new(Some("rust"), "nope-theme");
        for _ in 0..MAX_LINES {
            h.line("let a = 1;", Style::new(), Style::new());
        }
        let spans = h.line("let a = 1;", Style::new(), Style::new());
        assert_eq!(spans.len(), 1);
    }
}
