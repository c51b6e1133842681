//! Newline-gated markdown collector for the message being streamed.
//!
//! `push` only buffers until a delta brings a newline. Then the uncommitted source up to the
//! last newline is parsed, and every top-level block that a later line can no longer change
//! is committed: all blocks but the last (CommonMark never reopens a closed block), plus the
//! finished lines of a top-level fenced code block that is still open (its highlighter state
//! is kept, so those lines are never highlighted twice). Three things can still change a closed
//! block's rendering or the parse after it, and all are handled:
//!
//! - link reference definitions apply document-wide: definitions found in committed text are
//!   replayed in front of every later parse, and a block holding an unresolved `[label]` is
//!   held back (with everything after it) until a definition resolves it or the message ends.
//!   Held blocks, and an open code block after them, are rendered once and reused by later
//!   commits and frames until a new definition appears;
//! - the separator before a block depends on whether one precedes it, which is passed in;
//! - a definition can be continued by the next line into a paragraph, so a parse never starts
//!   just after one.
//!
//! The result: after `finish`, `committed()` equals `render(source)` exactly, committed lines
//! never change, and each commit re-renders only the open block.

use ratatui::text::Line;

use super::render::{render_blocks, CodeResume, RenderOptions, Rendered};
use super::MarkdownStyles;

#[derive(Debug, Clone)]
pub struct MarkdownStream {
    styles: MarkdownStyles,
    source: String,
    committed: Vec<Line<'static>>,
    /// Start of the uncommitted source; always the start of a line.
    pending: usize,
    /// Some block was committed before `pending`.
    any_block: bool,
    /// The block at `pending` is an open fenced code block with some lines committed.
    code: Option<CodeResume>,
    /// Source of link reference definitions found in committed text, replayed before parses.
    definitions: String,
    /// Closed blocks held back by an unresolved `[label]`, rendered once and reused until a
    /// new definition appears, so a held block does not cost a render per frame.
    held: Option<Held>,
    finished: bool,
}

#[derive(Debug, Clone)]
struct Held {
    /// Source offset where the last held block ends.
    end: usize,
    lines: Vec<Line<'static>>,
    /// Definitions known when `lines` were rendered.
    definitions: usize,
    /// The open fenced code block after the held blocks: its lines so far and the
    /// highlighter state after them, so each frame highlights only new lines.
    code: Option<HeldCode>,
}

#[derive(Debug, Clone)]
struct HeldCode {
    resume: CodeResume,
    lines: Vec<Line<'static>>,
}

/// What `render_pending` reused from the held cache.
#[derive(Clone, Copy, PartialEq)]
enum Reuse {
    Nothing,
    /// Held blocks were skipped: their lines are `Held::lines`.
    Held,
    /// Also the open code block was resumed: its first lines are `HeldCode::lines`.
    HeldAndCode,
}

impl MarkdownStream {
    pub fn new(styles: MarkdownStyles) -> Self {
        Self {
            styles,
            source: String::new(),
            committed: Vec::new(),
            pending: 0,
            any_block: false,
            code: None,
            definitions: String::new(),
            held: None,
            finished: false,
        }
    }

    /// Appends a delta. Work happens only when the delta contains a newline, and then only on
    /// the uncommitted part of the message. Deltas pushed after `finish` are ignored: start a
    /// new stream (e.g. to continue a message, push its text into a fresh one).
    pub fn push(&mut self, delta: &str) {
        if self.finished || delta.is_empty() {
            return;
        }
        self.source.push_str(delta);
        if delta.contains('\n') {
            let end = self.source.rfind('\n').map_or(0, |i| i + 1);
            if end > self.pending {
                self.commit(end, false);
            }
        }
    }

    /// Lines that will never change.
    pub fn committed(&self) -> &[Line<'static>] {
        &self.committed
    }

    /// The not-yet-committed part rendered as it would look if the message ended now. Does not
    /// change the stream; draw it below `committed()` and do not cache it.
    pub fn tail_lines(&self) -> Vec<Line<'static>> {
        if self.finished || self.pending >= self.source.len() {
            return Vec::new();
        }
        let (rendered, reuse) = self.render_pending(self.source.len());
        let mut lines = Vec::new();
        if let Some(held) = self.held.as_ref().filter(|_| reuse != Reuse::Nothing) {
            lines.extend(held.lines.iter().cloned());
            if let Some(code) = held.code.as_ref().filter(|_| reuse == Reuse::HeldAndCode) {
                lines.extend(code.lines.iter().cloned());
            }
        }
        lines.extend(rendered.blocks.into_iter().flat_map(|b| b.lines));
        lines
    }

    /// Commits everything; afterwards `committed()` equals `render(self.source())`.
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        if self.pending < self.source.len() {
            self.commit(self.source.len(), true);
        }
        self.finished = true;
    }

    /// The rendered message, for caching once the stream is done. Before `finish` this holds
    /// only the committed lines.
    pub fn into_lines(self) -> Vec<Line<'static>> {
        self.committed
    }

    pub fn styles(&self) -> &MarkdownStyles {
        &self.styles
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn is_finished(&self) -> bool {
        self.finished
    }

    fn parse_input(&self, end: usize) -> String {
        let mut input = String::with_capacity(self.definitions.len() + end - self.pending);
        input.push_str(&self.definitions);
        input.push_str(&self.source[self.pending..end]);
        input
    }

    /// Parses `source[pending..end]` and renders it, skipping the held blocks (and resuming
    /// the open code block after them) while their cached lines are still valid.
    fn render_pending(&self, end: usize) -> (Rendered, Reuse) {
        let input = self.parse_input(end);
        let shift = self.definitions.len();
        let full = RenderOptions {
            leading_separator: self.any_block,
            resume: self.code.as_ref(),
            skip_before: 0,
        };
        let Some(held) = &self.held else {
            return (render_blocks(&input, &self.styles, &full), Reuse::Nothing);
        };
        let mut opts = RenderOptions {
            leading_separator: self.any_block,
            resume: held.code.as_ref().map(|c| &c.resume),
            skip_before: held.end.saturating_sub(self.pending) + shift,
        };
        let rendered = render_blocks(&input, &self.styles, &opts);
        if rendered.definitions.len() != held.definitions {
            // A new definition may resolve a held `[label]`: render everything again.
            return (render_blocks(&input, &self.styles, &full), Reuse::Nothing);
        }
        if held.code.is_none() {
            return (rendered, Reuse::Held);
        }
        if rendered.resumed {
            return (rendered, Reuse::HeldAndCode);
        }
        opts.resume = None;
        (render_blocks(&input, &self.styles, &opts), Reuse::Held)
    }

    fn commit(&mut self, end: usize, all: bool) {
        let shift = self.definitions.len();
        let input = self.parse_input(end);
        let (mut rendered, mut reuse) = self.render_pending(end);
        let held_before = self
            .held
            .as_ref()
            .map_or(0, |h| h.end.saturating_sub(self.pending) + shift);
        let first_open = |r: &Rendered| {
            r.blocks
                .iter()
                .take(r.blocks.len().saturating_sub(1))
                .take_while(|b| !b.unresolved_reference)
                .count()
        };
        if reuse != Reuse::Nothing && (all || first_open(&rendered) > 0) {
            // Held blocks are about to be committed: they need their lines.
            let opts = RenderOptions {
                leading_separator: self.any_block,
                resume: self.code.as_ref(),
                skip_before: 0,
            };
            rendered = render_blocks(&input, &self.styles, &opts);
            reuse = Reuse::Nothing;
        }
        let definitions_seen = rendered.definitions.len();
        let blocks = rendered.blocks;
        let region = &input[shift..];
        let line_start = |pos: usize| -> usize {
            let rel = pos.saturating_sub(shift).min(region.len());
            region[..rel].rfind('\n').map_or(0, |i| i + 1)
        };

        // Closed blocks, up to the first one a later definition could still change.
        let mut take = if all {
            blocks.len()
        } else {
            blocks
                .iter()
                .take(blocks.len().saturating_sub(1))
                .take_while(|b| !b.unresolved_reference)
                .count()
        };
        // The next parse starts at a line start; never split a line between two blocks.
        while !all && take > 0 && take < blocks.len() {
            if line_start(blocks[take].range.start) + shift >= blocks[take - 1].range.end {
                break;
            }
            take -= 1;
        }
        let open_code = !all
            && take + 1 == blocks.len()
            && blocks[take].code.is_some()
            && !blocks[take].unresolved_reference;

        let mut new_pending_rel = if all {
            region.len()
        } else if take < blocks.len() {
            line_start(blocks[take].range.start)
        } else {
            0
        };
        if !all {
            // A link reference definition after the last committed block's text opens a
            // paragraph that the next lines may continue ("[a]: /u\n2) text" is one
            // paragraph, not a list), and pulldown-cmark may count it into the previous
            // block's range. The next parse must start at it, not after it. In that gap only
            // a definition can begin with `[`: any other such line would have produced text.
            let gap_from = if take > 0 {
                blocks[take - 1]
                    .content_end
                    .saturating_sub(shift)
                    .min(region.len())
            } else {
                0
            };
            let gap_to = new_pending_rel.max(gap_from);
            let mut at = line_start(shift + gap_from);
            if at < gap_from {
                at = region[gap_from..]
                    .find('\n')
                    .map_or(region.len(), |i| gap_from + i + 1);
            }
            while at < gap_to {
                let line = &region[at..];
                let indent = line.len() - line.trim_start_matches(' ').len();
                if indent <= 3 && line[indent..].starts_with('[') {
                    new_pending_rel = new_pending_rel.min(at);
                    break;
                }
                at = line.find('\n').map_or(region.len(), |i| at + i + 1);
            }
        }
        // Complete blocks left uncommitted are held: keep their lines for the next renders,
        // and the lines of an open code block after them.
        let held_range = if all || open_code {
            take..take
        } else {
            take..blocks.len().saturating_sub(1).max(take)
        };
        let old_held = self.held.take();
        if !held_range.is_empty() {
            let (mut lines, mut old_code_lines) = match old_held {
                Some(old) if reuse != Reuse::Nothing => (
                    old.lines,
                    old.code
                        .filter(|_| reuse == Reuse::HeldAndCode)
                        .map(|c| c.lines),
                ),
                _ => (Vec::new(), None),
            };
            // A block's full lines: the first rendered block after the held ones may have
            // been resumed, so its cached lines come first.
            let mut full_lines = |b: &super::render::Block| -> Option<Vec<Line<'static>>> {
                if reuse != Reuse::Nothing && b.range.start < held_before {
                    return None;
                }
                let mut out = old_code_lines.take().unwrap_or_default();
                out.extend(b.lines.iter().cloned());
                Some(out)
            };
            for b in &blocks[held_range.clone()] {
                if let Some(l) = full_lines(b) {
                    lines.extend(l);
                }
            }
            let code = blocks
                .last()
                .filter(|b| b.code.is_some() && blocks.len() > held_range.end)
                .and_then(|b| {
                    Some(HeldCode {
                        resume: b.code.clone()?,
                        lines: full_lines(b)?,
                    })
                });
            self.held = Some(Held {
                end: self.pending + blocks[held_range.end - 1].range.end - shift,
                lines,
                definitions: definitions_seen,
                code,
            });
        }
        if take == 0 && !open_code {
            return;
        }

        for (start, end_) in rendered
            .definitions
            .iter()
            .map(|r| (r.start, r.end))
            .filter(|(s, _)| *s >= shift && *s - shift < new_pending_rel)
        {
            self.definitions.push_str(&input[start..end_]);
            self.definitions.push_str("\n\n");
        }

        let mut blocks = blocks.into_iter();
        for block in blocks.by_ref().take(take) {
            self.committed.extend(block.lines);
            self.any_block = true;
            self.code = None;
        }
        if open_code {
            if let Some(block) = blocks.next() {
                if !block.lines.is_empty() {
                    self.any_block = true;
                }
                self.committed.extend(block.lines);
                self.code = block.code;
            }
        }
        self.pending += new_pending_rel;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markdown::render;

    fn streamed(text: &str, chunks: &[usize]) -> (Vec<Line<'static>>, MarkdownStream) {
        let mut s = MarkdownStream::new(MarkdownStyles::dark());
        let mut pos = 0;
        for &c in chunks {
            let mut end = (pos + c).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            s.push(&text[pos..end]);
            pos = end;
        }
        s.push(&text[pos..]);
        s.finish();
        (s.committed().to_vec(), s)
    }

    #[test]
    fn committed_lines_wait_for_a_newline() {
        let mut s = MarkdownStream::new(MarkdownStyles::dark());
        s.push("# Title");
        assert!(s.committed().is_empty());
        assert_eq!(s.tail_lines().len(), 1);
        s.push("\n\nSecond para");
        // The heading is closed by the paragraph's start only once that line is complete.
        assert!(s.committed().is_empty());
        s.push(" goes on\n\nthird");
        assert_eq!(s.committed().len(), 1, "{:?}", s.committed());
        s.finish();
        assert_eq!(
            s.committed(),
            render(
                "# Title\n\nSecond para goes on\n\nthird",
                &MarkdownStyles::dark()
            )
        );
    }

    #[test]
    fn open_code_fence_commits_line_by_line() {
        let mut s = MarkdownStream::new(MarkdownStyles::dark());
        s.push("Intro\n\n```rust\nfn a() {}\n");
        // Intro + separator + label + first code line.
        assert_eq!(s.committed().len(), 4, "{:?}", s.committed());
        s.push("let b = 2;\n");
        assert_eq!(s.committed().len(), 5);
        assert!(s.tail_lines().is_empty());
        s.push("```\n\nafter");
        s.finish();
        let full = render(
            "Intro\n\n```rust\nfn a() {}\nlet b = 2;\n```\n\nafter",
            &MarkdownStyles::dark(),
        );
        assert_eq!(s.committed(), full);
    }

    #[test]
    fn late_reference_definition_is_honoured() {
        let text =
            "See [the docs][d] now.\n\nMore text.\n\nEven more.\n\n[d]: https://example.com\n";
        for step in 1..8 {
            let chunks = vec![step; text.len() / step + 1];
            let (got, _) = streamed(text, &chunks);
            assert_eq!(got, render(text, &MarkdownStyles::dark()), "step {step}");
        }
    }

    #[test]
    fn definitions_in_committed_text_still_resolve_later_links() {
        let text = "[d]: https://example.com\n\nfirst\n\nsecond\n\nthird [x][d]\n\nlast\n";
        let (got, _) = streamed(text, &[1; 200]);
        assert_eq!(got, render(text, &MarkdownStyles::dark()));
        let joined: String = got
            .iter()
            .flat_map(|l| l.spans.iter().map(|s| s.content.to_string()))
            .collect();
        assert!(joined.contains("(https://example.com)"), "{joined}");
    }

    #[test]
    fn held_blocks_and_the_code_after_them_are_rendered_once() {
        let styles = MarkdownStyles::dark();
        let mut s = MarkdownStream::new(styles.clone());
        s.push("Cited [1] here.\n\nNext para.\n\n```rust\nfn a() {}\n");
        // `[1]` could still be defined later, so nothing is final yet.
        assert!(s.committed().is_empty());
        let held = s.held.as_ref().expect("blocks are held");
        assert_eq!(held.lines.len(), 3, "{:?}", held.lines);
        assert_eq!(held.code.as_ref().map(|c| c.lines.len()), Some(3));
        s.push("let b = 2;\n");
        assert_eq!(
            s.held
                .as_ref()
                .and_then(|h| h.code.as_ref())
                .map(|c| c.lines.len()),
            Some(4)
        );
        let mut shown = s.committed().to_vec();
        shown.extend(s.tail_lines());
        assert_eq!(shown, render(s.source(), &styles));
        // A definition for the label releases everything.
        s.push("```\n\n[1]: https://example.com/cite\n\nEnd.\n");
        assert_eq!(s.committed().len(), 7, "{:?}", s.committed());
        s.finish();
        assert_eq!(s.committed(), render(s.source(), &styles));
    }

    #[test]
    fn push_after_finish_is_ignored_and_finish_is_idempotent() {
        let mut s = MarkdownStream::new(MarkdownStyles::dark());
        s.push("a\n\nb");
        s.finish();
        let before = s.committed().to_vec();
        s.push("more\n");
        s.finish();
        assert_eq!(s.committed(), before);
        assert!(s.tail_lines().is_empty());
    }
}
