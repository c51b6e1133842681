//! The transcript's render cache and row arithmetic, shared by `update` (scroll clamping, keeping
//! the view still while a stream grows above-the-fold) and `ui::chat` (drawing).
//!
//! Finished messages are rendered to width-free logical lines once and wrapped once per width;
//! only the streaming message is re-rendered, and only its uncommitted tail on every frame.
//! Everything is lazy: a frame touches the messages it shows, so a 2,000-message history costs
//! what its last screenful costs.

use std::collections::HashSet;

use ratatui::text::Line;

use super::thinking;
use crate::conversations::Message;
use crate::markdown::{render, wrap_lines, MarkdownStream, MarkdownStyles, WrapCache};

/// Columns the body is indented by, under the role header.
pub const BODY_INDENT: u16 = 2;

/// Identifies what a cache entry was rendered from: a message is replaced (new id) on edit,
/// grows while streaming, and swaps content when paging answers.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    id: String,
    len: usize,
    alt: usize,
    unfolded: bool,
}

/// The key that folds and unfolds thinking, as the folded line names it.
pub const THINKING_KEY: &str = "z";

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    lines: Vec<Line<'static>>,
    wrap: WrapCache,
}

/// One row of the visible window.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// The role/model/speed line above message `i`.
    Header(usize),
    /// A body row of message `i` (already wrapped and indented by the caller).
    Body(usize, Line<'static>),
    /// The blank line between messages.
    Gap,
}

#[derive(Debug, Clone, Default)]
pub struct Transcript {
    styles: Option<MarkdownStyles>,
    entries: Vec<Option<Entry>>,
    stream_wrap: WrapCache,
    /// Messages (by id) whose thinking is shown in full; all others show one folded line.
    unfolded: HashSet<String>,
}

impl Transcript {
    /// Drops every cached rendering when the styles changed (theme switch).
    pub fn sync_styles(&mut self, styles: &MarkdownStyles) {
        if self.styles.as_ref() != Some(styles) {
            self.styles = Some(styles.clone());
            self.entries.clear();
            self.stream_wrap.invalidate();
        }
    }

    /// Forgets everything (another conversation was opened).
    pub fn reset(&mut self) {
        self.entries.clear();
        self.stream_wrap.invalidate();
        self.unfolded.clear();
    }

    /// Folds or unfolds the thinking of message `id`; returns whether it is now unfolded.
    pub fn toggle_thinking(&mut self, id: &str) -> bool {
        if self.unfolded.remove(id) {
            false
        } else {
            self.unfolded.insert(id.to_string());
            true
        }
    }

    pub fn is_unfolded(&self, id: &str) -> bool {
        self.unfolded.contains(id)
    }

    /// The thinking lines of `m` (folded or not), unwrapped; empty when it has none.
    fn thinking_lines(&self, m: &Message) -> Vec<Line<'static>> {
        let parts = thinking::split(&m.content);
        let Some(text) = parts.thinking else {
            return Vec::new();
        };
        let muted = self.styles.clone().unwrap_or_default().muted;
        thinking::lines(
            text,
            parts.closed,
            self.is_unfolded(&m.id),
            muted,
            THINKING_KEY,
        )
    }

    fn body(&mut self, i: usize, m: &Message, width: u16) -> &[Line<'static>] {
        if self.entries.len() <= i {
            self.entries.resize(i + 1, None);
        }
        let key = Key {
            id: m.id.clone(),
            len: m.content.len(),
            alt: m.active_alt,
            unfolded: self.is_unfolded(&m.id),
        };
        let stale = self.entries[i].as_ref().is_none_or(|e| e.key != key);
        if stale {
            let styles = self.styles.clone().unwrap_or_default();
            let mut lines = self.thinking_lines(m);
            lines.extend(render(thinking::split(&m.content).answer, &styles));
            self.entries[i] = Some(Entry {
                key,
                lines,
                wrap: WrapCache::new(),
            });
        }
        let e = self.entries[i].as_mut().expect("filled above");
        e.wrap.wrap(&e.lines, width)
    }

    /// Wrapped rows of the message being streamed: the committed part from the cache, the
    /// tail rendered afresh.
    pub fn stream_rows(&mut self, stream: &MarkdownStream, width: u16) -> Vec<Line<'static>> {
        let mut rows = self.stream_wrap.wrap(stream.committed(), width).to_vec();
        rows.extend(wrap_lines(&stream.tail_lines(), width));
        rows
    }

    /// Number of wrapped rows the stream occupies (for keeping a scrolled-up view still).
    pub fn stream_height(&mut self, stream: &MarkdownStream, width: u16) -> usize {
        let committed = self.stream_wrap.wrap(stream.committed(), width).len();
        committed + wrap_lines(&stream.tail_lines(), width).len()
    }

    /// Rows the message being streamed occupies: its thinking, then the answer's stream.
    pub fn streaming_height(&mut self, m: &Message, stream: &MarkdownStream, width: u16) -> usize {
        wrap_lines(&self.thinking_lines(m), width).len() + self.stream_height(stream, width)
    }

    /// Called when a new stream starts, so its committed rows are not mixed with the last one.
    pub fn start_stream(&mut self) {
        self.stream_wrap.invalidate();
    }

    /// Rows of message `i`, including its header and the gap after it.
    fn message_rows(
        &mut self,
        i: usize,
        m: &Message,
        stream: Option<&MarkdownStream>,
        width: u16,
    ) -> Vec<Row> {
        let body: Vec<Line<'static>> = match stream {
            Some(s) => {
                let mut rows = wrap_lines(&self.thinking_lines(m), width);
                rows.extend(self.stream_rows(s, width));
                rows
            }
            None => self.body(i, m, width).to_vec(),
        };
        let mut rows = Vec::with_capacity(body.len() + 2);
        rows.push(Row::Header(i));
        rows.extend(body.into_iter().map(|l| Row::Body(i, l)));
        rows.push(Row::Gap);
        rows
    }

    fn message_height(
        &mut self,
        i: usize,
        m: &Message,
        stream: Option<&MarkdownStream>,
        width: u16,
    ) -> usize {
        let body = match stream {
            Some(s) => self.streaming_height(m, s, width),
            None => self.body(i, m, width).len(),
        };
        body + 2
    }

    /// The rows of the window `height` rows tall whose bottom is `scroll` rows above the end of
    /// the transcript, top to bottom, and the scroll actually used (clamped at the top).
    /// `stream` is the streaming state of the last message, if it is being generated.
    pub fn window(
        &mut self,
        messages: &[Message],
        stream: Option<&MarkdownStream>,
        body_width: u16,
        height: usize,
        scroll: usize,
    ) -> (Vec<Row>, usize) {
        let scroll = scroll.min(self.max_scroll(messages, stream, body_width, height, scroll));
        let mut out: Vec<Row> = Vec::with_capacity(height);
        // Rows still to skip below the window, then rows still to collect.
        let mut skip = scroll;
        let last = messages.len().saturating_sub(1);
        for i in (0..messages.len()).rev() {
            if out.len() >= height {
                break;
            }
            let s = if i == last { stream } else { None };
            let h = self.message_height(i, &messages[i], s, body_width);
            if skip >= h {
                skip -= h;
                continue;
            }
            let rows = self.message_rows(i, &messages[i], s, body_width);
            let end = rows.len() - skip;
            skip = 0;
            let take = (height - out.len()).min(end);
            out.extend(rows[end - take..end].iter().rev().cloned());
        }
        out.reverse();
        (out, scroll)
    }

    /// The window `height` rows tall starting `top` rows below the first row, and whether it
    /// reaches the end of the transcript. Lays out only the messages down to the window's end,
    /// so jumping to the first message of a long history is cheap.
    pub fn window_from_top(
        &mut self,
        messages: &[Message],
        stream: Option<&MarkdownStream>,
        body_width: u16,
        height: usize,
        top: usize,
    ) -> (Vec<Row>, bool) {
        let mut out: Vec<Row> = Vec::with_capacity(height);
        let mut skip = top;
        let last = messages.len().saturating_sub(1);
        for (i, m) in messages.iter().enumerate() {
            let s = if i == last { stream } else { None };
            let h = self.message_height(i, m, s, body_width);
            if out.len() >= height {
                return (out, false);
            }
            if skip >= h {
                skip -= h;
                continue;
            }
            let rows = self.message_rows(i, m, s, body_width);
            let take = (height - out.len()).min(rows.len() - skip);
            out.extend(rows[skip..skip + take].iter().cloned());
            let ends_here = i == last && skip + take == rows.len();
            skip = 0;
            if ends_here {
                return (out, true);
            }
        }
        (out, true)
    }

    /// The largest useful scroll (the first row at the top of the window), computed only as far
    /// as needed to decide whether `want` is reachable.
    pub fn max_scroll(
        &mut self,
        messages: &[Message],
        stream: Option<&MarkdownStream>,
        body_width: u16,
        height: usize,
        want: usize,
    ) -> usize {
        let need = want.saturating_add(height);
        let mut total = 0usize;
        let last = messages.len().saturating_sub(1);
        for i in (0..messages.len()).rev() {
            let s = if i == last { stream } else { None };
            total += self.message_height(i, &messages[i], s, body_width);
            if total >= need {
                return want;
            }
        }
        total.saturating_sub(height)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conversations::Role;

    fn msgs(n: usize) -> Vec<Message> {
        (0..n)
            .map(|i| {
                Message::new(
                    if i % 2 == 0 {
                        Role::User
                    } else {
                        Role::Assistant
                    },
                    format!("message {i}\n\nsecond paragraph of {i}"),
                )
            })
            .collect()
    }

    #[test]
    fn window_from_bottom_and_clamped_at_top() {
        let m = msgs(10);
        let mut t = Transcript::default();
        t.sync_styles(&MarkdownStyles::dark());
        // Each message: header + 3 body rows + gap = 5 rows; 50 in all.
        let (rows, s) = t.window(&m, None, 40, 7, 0);
        assert_eq!(s, 0);
        assert_eq!(rows.len(), 7);
        assert_eq!(rows.last(), Some(&Row::Gap));
        assert!(rows.contains(&Row::Header(9)));
        let (rows, s) = t.window(&m, None, 40, 7, 1000);
        assert_eq!(s, 43);
        assert_eq!(rows[0], Row::Header(0));
        // A window taller than everything shows everything.
        let (rows, _) = t.window(&m, None, 40, 100, 0);
        assert_eq!(rows.len(), 50);
    }

    #[test]
    fn window_from_top_matches_the_bottom_window() {
        let m = msgs(10);
        let mut t = Transcript::default();
        t.sync_styles(&MarkdownStyles::dark());
        let (rows, end) = t.window_from_top(&m, None, 40, 7, 0);
        assert!(!end);
        assert_eq!(rows[0], Row::Header(0));
        // Starting 43 rows down shows the same as scrolling 0 from the bottom (50 rows).
        let (from_top, end) = t.window_from_top(&m, None, 40, 7, 43);
        assert!(end);
        assert_eq!(from_top, t.window(&m, None, 40, 7, 0).0);
        let (past, end) = t.window_from_top(&m, None, 40, 7, 48);
        assert!(end && past.len() == 2);
    }

    #[test]
    fn thinking_is_one_folded_line_until_unfolded() {
        let mut m = msgs(2);
        m[1].content = "<think>\nstep one\nstep two\nstep three\n</think>\n\nThe answer.".into();
        let mut t = Transcript::default();
        t.sync_styles(&MarkdownStyles::dark());
        let text = |rows: &[Row]| -> Vec<String> {
            rows.iter()
                .filter_map(|r| match r {
                    Row::Body(1, l) => {
                        Some(l.spans.iter().map(|s| s.content.to_string()).collect())
                    }
                    _ => None,
                })
                .collect()
        };
        let folded = text(&t.window(&m, None, 60, 100, 0).0);
        assert!(folded[0].starts_with("▸ Thought (6 words)"), "{folded:?}");
        assert!(!folded.iter().any(|l| l.contains("step two")), "{folded:?}");
        assert!(
            folded.iter().any(|l| l.contains("The answer.")),
            "{folded:?}"
        );
        assert!(t.toggle_thinking(&m[1].id));
        let open = text(&t.window(&m, None, 60, 100, 0).0);
        assert!(open[0].starts_with("▾ Thought"), "{open:?}");
        assert!(open.iter().any(|l| l.contains("step two")), "{open:?}");
        assert!(!t.toggle_thinking(&m[1].id));
        assert_eq!(text(&t.window(&m, None, 60, 100, 0).0), folded);
    }

    #[test]
    fn narrow_width_rewraps() {
        let m = msgs(2);
        let mut t = Transcript::default();
        t.sync_styles(&MarkdownStyles::dark());
        let wide = t.window(&m, None, 80, 100, 0).0.len();
        let narrow = t.window(&m, None, 8, 100, 0).0.len();
        assert!(narrow > wide, "{narrow} > {wide}");
    }
}
