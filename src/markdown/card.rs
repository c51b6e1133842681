//! Model cards: a repo's README.md from the Hub, rendered with the chat's markdown renderer.
//! The text is untrusted, so everything a card goes through is here, in two functions.

use ratatui::text::Line;

use super::{render, MarkdownStyles};

/// The card's text from the bytes fetched (at most `max`): invalid UTF-8 replaced, a cut-off
/// card marked as such.
pub fn card_text(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() >= max;
    let text = match std::str::from_utf8(bytes) {
        Ok(s) => s.to_string(),
        // A cut can split a character: keep what is whole, replace what is really broken.
        Err(e) if cut && e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    };
    if cut {
        format!(
            "{text}\n\n*(The card continues on the Hub; only its first {} KB are shown.)*\n",
            max / 1024
        )
    } else {
        text
    }
}

/// The lines of a model card: the YAML front matter (metadata the pane shows as facts) is
/// dropped, the rest rendered as markdown.
pub fn render_model_card(source: &str, styles: &MarkdownStyles) -> Vec<Line<'static>> {
    render(strip_front_matter(source), styles)
}

fn strip_front_matter(s: &str) -> &str {
    let Some(rest) = s
        .strip_prefix("---\n")
        .or_else(|| s.strip_prefix("---\r\n"))
    else {
        return s;
    };
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        offset += line.len();
        if line.trim_end() == "---" {
            return &rest[offset..];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_dropped_and_cuts_are_marked() {
        let card = "---\nlicense: apache-2.0\ntags: [gguf]\n---\n# Tiny\n\nHello **there**.\n";
        let lines = render_model_card(card, &MarkdownStyles::dark());
        let text: String = lines
            .iter()
            .flat_map(|l| l.spans.iter().map(|s| s.content.to_string()))
            .collect();
        assert!(text.contains("Tiny") && text.contains("there"), "{text}");
        assert!(!text.contains("license"), "{text}");
        // An unterminated front matter is just text.
        assert_eq!(strip_front_matter("---\nno end"), "---\nno end");

        let e_acute = "é".as_bytes();
        let bytes = [b"ab".as_slice(), &e_acute[..1]].concat();
        let t = card_text(&bytes, 3);
        assert!(t.starts_with("ab\n") && t.contains("first 0 KB"), "{t:?}");
        assert_eq!(card_text(b"whole", 10), "whole");
        assert_eq!(card_text(b"bad \xff here", 100), "bad \u{fffd} here");
    }
}
