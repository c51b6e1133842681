//! A reasoning model's thinking inside a chat answer: where it is, how it is drawn, and what is
//! sent back to the model in later turns.
//!
//! The answer is stored as the model wrote it, thinking included, so nothing is lost and an
//! export shows it. Thinking is a leading `<think>…</think>` (or `[THINK]…[/THINK]`) block, or
//! everything before a `</think>` that has no opener (templates whose generation prompt opens
//! the block). gpt-oss writes OpenAI's harmony format instead: its `analysis` channel
//! (`<|channel|>analysis<|message|>…<|end|>`) is the thinking, the `final` channel's text after
//! it the answer. It is drawn dimmed and folded to one line until unfolded.

use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};

const MARKERS: [(&str, &str); 2] = [("<think>", "</think>"), ("[THINK]", "[/THINK]")];

/// An answer taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// The thinking text, without its markers; `None` when the answer has none.
    pub thinking: Option<&'a str>,
    /// Whether the block was closed (false while a model is still thinking).
    pub closed: bool,
    /// What the model answered after thinking.
    pub answer: &'a str,
}

const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
/// What ends a harmony message (the turn's last may also end with the text).
const ENDS: [&str; 3] = ["<|end|>", "<|return|>", "<|call|>"];

/// The text of a harmony message body up to its end marker, and what follows the marker.
fn harmony_body(body: &str) -> (&str, Option<&str>) {
    match ENDS
        .iter()
        .filter_map(|m| body.find(m).map(|at| (at, m.len())))
        .min()
    {
        Some((at, len)) => (&body[..at], Some(&body[at + len..])),
        None => (body, None),
    }
}

/// Harmony output (gpt-oss): the first message's channel decides whether it is thinking; the
/// answer is the text of the message after it.
fn split_harmony(lead: &str) -> Parts<'_> {
    let Some(at) = lead.find(MESSAGE) else {
        // The first header is still arriving.
        return Parts {
            thinking: Some(""),
            closed: false,
            answer: "",
        };
    };
    let channel = lead[CHANNEL.len().min(at)..at]
        .split([' ', '<'])
        .next()
        .unwrap_or("");
    let (text, rest) = harmony_body(&lead[at + MESSAGE.len()..]);
    if channel != "analysis" {
        return Parts {
            thinking: None,
            closed: true,
            answer: text,
        };
    }
    let Some(rest) = rest else {
        return Parts {
            thinking: Some(text),
            closed: false,
            answer: "",
        };
    };
    let answer = match rest.find(MESSAGE) {
        Some(m) => harmony_body(&rest[m + MESSAGE.len()..]).0,
        None => "",
    };
    Parts {
        thinking: Some(text),
        closed: true,
        answer,
    }
}

/// Splits `content` into thinking and answer.
pub fn split(content: &str) -> Parts<'_> {
    let lead = content.trim_start();
    if lead.starts_with(CHANNEL) || (!lead.is_empty() && CHANNEL.starts_with(lead)) {
        return split_harmony(lead);
    }
    for (open, close) in MARKERS {
        if let Some(body) = lead.strip_prefix(open) {
            return match body.find(close) {
                Some(at) => Parts {
                    thinking: Some(&body[..at]),
                    closed: true,
                    answer: body[at + close.len()..].trim_start(),
                },
                None => Parts {
                    thinking: Some(body),
                    closed: false,
                    answer: "",
                },
            };
        }
        // Still arriving: `<thi` may become `<think>`.
        if !lead.is_empty() && open.starts_with(lead) {
            return Parts {
                thinking: Some(""),
                closed: false,
                answer: "",
            };
        }
    }
    // The template opened the block: the output starts inside it.
    for (open, close) in MARKERS {
        if let Some(at) = content.find(close) {
            if !content[..at].contains(open) {
                return Parts {
                    thinking: Some(&content[..at]),
                    closed: true,
                    answer: content[at + close.len()..].trim_start(),
                };
            }
        }
    }
    Parts {
        thinking: None,
        closed: true,
        answer: content,
    }
}

/// What an earlier answer contributes to the next request: its answer only, unless the
/// model's chat template reads earlier thinking itself (it then gets the text as written).
pub fn for_history(content: &str, template_keeps_thinking: bool) -> String {
    if template_keeps_thinking {
        return content.to_string();
    }
    split(content).answer.to_string()
}

/// Whether a chat template handles earlier thinking itself: it reads `reasoning_content` or
/// cuts answers at `</think>` (Qwen3, DeepSeek-R1 and their kin).
pub fn template_keeps_thinking(source: &str) -> bool {
    source.contains("reasoning_content") || source.contains("</think>")
}

/// Words in the thinking, for the folded line.
fn words(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Logical (unwrapped) lines that show `thinking`: one dimmed summary line when folded, the
/// whole text dimmed under it when unfolded. `key` names the key that toggles it.
pub fn lines(
    thinking: &str,
    closed: bool,
    unfolded: bool,
    muted: Style,
    key: &str,
) -> Vec<Line<'static>> {
    let dim = muted.add_modifier(Modifier::DIM | Modifier::ITALIC);
    let status = if closed { "Thought" } else { "Thinking…" };
    let n = words(thinking);
    let (arrow, hint) = if unfolded {
        ("▾", format!("{key} to fold"))
    } else {
        ("▸", format!("{key} to unfold"))
    };
    let mut out = vec![Line::from(vec![
        Span::styled(format!("{arrow} {status} ({n} words)"), dim),
        Span::styled(format!("  {hint}"), muted.add_modifier(Modifier::DIM)),
    ])];
    if unfolded {
        out.extend(
            thinking
                .trim()
                .lines()
                .map(|l| Line::from(Span::styled(format!("│ {l}"), dim))),
        );
    }
    out.push(Line::default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_blocks_split_off() {
        let p = split("<think>\nplan it\n</think>\n\nThe answer.");
        assert_eq!(p.thinking, Some("\nplan it\n"));
        assert!(p.closed);
        assert_eq!(p.answer, "The answer.");
        let p = split("  [THINK]x[/THINK]y");
        assert_eq!((p.thinking, p.answer), (Some("x"), "y"));
    }

    #[test]
    fn open_blocks_while_streaming() {
        let p = split("<think>still going");
        assert_eq!(p.thinking, Some("still going"));
        assert!(!p.closed);
        assert_eq!(p.answer, "");
        // A marker still arriving is not shown as text.
        let p = split("<thi");
        assert_eq!(p.thinking, Some(""));
        assert_eq!(p.answer, "");
    }

    /// gpt-oss's harmony output, whole and while it streams in.
    #[test]
    fn harmony_analysis_is_thinking_and_final_is_the_answer() {
        let full = "<|channel|>analysis<|message|>User wants 2+2.<|end|><|start|>assistant<|channel|>final<|message|>4.";
        let p = split(full);
        assert_eq!(p.thinking, Some("User wants 2+2."));
        assert!(p.closed);
        assert_eq!(p.answer, "4.");
        assert_eq!(split(&format!("{full}<|return|>")).answer, "4.");
        assert_eq!(for_history(full, false), "4.");
        let p = split("<|channel|>analysis<|message|>still thinking");
        assert_eq!(
            (p.thinking, p.closed, p.answer),
            (Some("still thinking"), false, "")
        );
        let p = split("<|chan");
        assert_eq!((p.thinking, p.answer), (Some(""), ""));
        let p = split("<|channel|>analysis<|message|>done<|end|><|start|>assistant<|chan");
        assert_eq!((p.thinking, p.closed, p.answer), (Some("done"), true, ""));
        // An answer straight in the final channel has no thinking.
        let p = split("<|channel|>final<|message|>Hi");
        assert_eq!((p.thinking, p.answer), (None, "Hi"));
    }

    #[test]
    fn template_opened_blocks_end_at_the_closer() {
        let p = split("reasoning here</think>\n\nAnswer");
        assert_eq!(p.thinking, Some("reasoning here"));
        assert_eq!(p.answer, "Answer");
    }

    #[test]
    fn plain_answers_and_later_markers_are_text() {
        let p = split("Hello <think> is a tag");
        assert_eq!(p.thinking, None);
        assert_eq!(p.answer, "Hello <think> is a tag");
        assert_eq!(split("").thinking, None);
    }

    #[test]
    fn history_drops_thinking_unless_the_template_wants_it() {
        let c = "<think>secret plan</think>\n\nHi!";
        assert_eq!(for_history(c, false), "Hi!");
        assert_eq!(for_history(c, true), c);
        assert_eq!(for_history("plain", false), "plain");
        assert!(template_keeps_thinking(
            "{% if '</think>' in content %}{% endif %}"
        ));
        assert!(!template_keeps_thinking("{{ messages }}"));
    }

    #[test]
    fn folded_is_one_line_unfolded_shows_the_text() {
        let folded = lines("a b c\nd", true, false, Style::new(), "z");
        assert_eq!(folded.len(), 2);
        let text: String = folded[0].spans.iter().map(|s| s.content.as_ref()).collect();
        assert!(
            text.contains("Thought (4 words)") && text.contains("z to unfold"),
            "{text}"
        );
        let open = lines("a b c\nd", false, true, Style::new(), "z");
        assert_eq!(open.len(), 4);
        let head: String = open[0].spans.iter().map(|s| s.content.as_ref()).collect();
        assert!(head.contains("Thinking…"), "{head}");
        assert!(open[0].spans[0].style.add_modifier.contains(Modifier::DIM));
    }
}
