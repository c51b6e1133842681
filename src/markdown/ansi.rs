//! The chat's markdown on a plain terminal (`influence run`): committed lines of a
//! [`MarkdownStream`] are printed once, as ANSI-styled rows wrapped to the terminal width, and the
//! block still being written is shown below them as a preview that is erased and redrawn as
//! tokens arrive. The preview is capped to the screen's height, so it can always be erased;
//! everything in it is printed in full once it is committed.

use std::fmt::Write as _;

use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;

use super::{wrap_lines, MarkdownStream, MarkdownStyles};

/// Streams markdown to a terminal of `width` × `height` cells. Each call returns the bytes to
/// write, so the caller owns the output (and tests read it).
pub struct AnsiStream {
    stream: MarkdownStream,
    width: u16,
    height: u16,
    /// Committed lines already printed.
    printed: usize,
    /// Rows of the preview on screen now (0: none; the cursor is at the start of a row).
    preview_rows: usize,
}

impl AnsiStream {
    pub fn new(styles: MarkdownStyles, width: u16, height: u16) -> AnsiStream {
        AnsiStream {
            stream: MarkdownStream::new(styles),
            width: width.max(1),
            height: height.max(3),
            printed: 0,
            preview_rows: 0,
        }
    }

    /// Adds a delta of the answer.
    pub fn push(&mut self, delta: &str) -> String {
        self.stream.push(delta);
        let mut out = self.erase_preview();
        out.push_str(&self.print_committed());
        let preview = wrap_lines(&self.stream.tail_lines(), self.width);
        // Leave a row for the cursor: a preview as tall as the screen could not be erased.
        let keep = preview.len().min(self.height as usize - 1);
        let shown = &preview[preview.len() - keep..];
        for (i, row) in shown.iter().enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            out.push_str(&to_ansi(row));
        }
        self.preview_rows = shown.len();
        out
    }

    /// Ends the answer: the preview gives way to the rest of the rendered lines.
    pub fn finish(&mut self) -> String {
        self.stream.finish();
        let mut out = self.erase_preview();
        out.push_str(&self.print_committed());
        out
    }

    fn erase_preview(&mut self) -> String {
        let rows = std::mem::take(&mut self.preview_rows);
        match rows {
            0 => String::new(),
            1 => "\r\x1b[J".into(),
            n => format!("\x1b[{}A\r\x1b[J", n - 1),
        }
    }

    fn print_committed(&mut self) -> String {
        let new = &self.stream.committed()[self.printed..];
        self.printed += new.len();
        let mut out = String::new();
        for row in wrap_lines(new, self.width) {
            out.push_str(&to_ansi(&row));
            // CR too: the caller's terminal may not translate newlines (raw mode, a parser).
            out.push_str("\r\n");
        }
        out
    }
}

/// One row as text with SGR escapes: each span in its style patched over the line's, then a
/// reset, so nothing leaks into the next row.
pub fn to_ansi(line: &Line) -> String {
    let mut out = String::new();
    for span in &line.spans {
        let style = line.style.patch(span.style);
        let sgr = sgr(style);
        if sgr.is_empty() {
            out.push_str(&span.content);
        } else {
            let _ = write!(out, "\x1b[{sgr}m{}\x1b[0m", span.content);
        }
    }
    out
}

fn sgr(style: Style) -> String {
    let mut codes: Vec<String> = Vec::new();
    let m = style.add_modifier;
    for (flag, code) in [
        (Modifier::BOLD, "1"),
        (Modifier::DIM, "2"),
        (Modifier::ITALIC, "3"),
        (Modifier::UNDERLINED, "4"),
        (Modifier::REVERSED, "7"),
        (Modifier::CROSSED_OUT, "9"),
    ] {
        if m.contains(flag) {
            codes.push(code.into());
        }
    }
    if let Some(c) = style.fg.and_then(|c| color(c, false)) {
        codes.push(c);
    }
    if let Some(c) = style.bg.and_then(|c| color(c, true)) {
        codes.push(c);
    }
    codes.join(";")
}

fn color(c: Color, bg: bool) -> Option<String> {
    let base = if bg { 40 } else { 30 };
    let ext = if bg { 48 } else { 38 };
    let named = |n: u8| Some((base + n as u32).to_string());
    let bright = |n: u8| Some((base + 60 + n as u32).to_string());
    match c {
        Color::Reset => None,
        Color::Black => named(0),
        Color::Red => named(1),
        Color::Green => named(2),
        Color::Yellow => named(3),
        Color::Blue => named(4),
        Color::Magenta => named(5),
        Color::Cyan => named(6),
        Color::Gray => named(7),
        Color::DarkGray => bright(0),
        Color::LightRed => bright(1),
        Color::LightGreen => bright(2),
        Color::LightYellow => bright(3),
        Color::LightBlue => bright(4),
        Color::LightMagenta => bright(5),
        Color::LightCyan => bright(6),
        Color::White => bright(7),
        Color::Indexed(i) => Some(format!("{ext};5;{i}")),
        Color::Rgb(r, g, b) => Some(format!("{ext};2;{r};{g};{b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a terminal of `rows` × 40 shows after `bytes`.
    fn screen(bytes: &str, rows: u16) -> String {
        let mut p = vt100::Parser::new(rows, 40, 0);
        p.process(bytes.as_bytes());
        p.screen().contents()
    }

    fn streamed(src: &str, rows: u16) -> String {
        let mut t = AnsiStream::new(MarkdownStyles::dark(), 40, rows);
        let mut out = String::new();
        for piece in src.split_inclusive([' ', '\n']) {
            out.push_str(&t.push(piece));
        }
        out + &t.finish()
    }

    fn full(src: &str) -> String {
        wrap_lines(&super::super::render(src, &MarkdownStyles::dark()), 40)
            .iter()
            .map(|r| to_ansi(r) + "\r\n")
            .collect()
    }

    #[test]
    fn styles_become_sgr_and_reset() {
        let line = Line::from(vec![
            ratatui::text::Span::styled(
                "a",
                Style::new()
                    .fg(Color::Rgb(1, 2, 3))
                    .add_modifier(Modifier::BOLD),
            ),
            ratatui::text::Span::raw("b"),
        ]);
        assert_eq!(to_ansi(&line), "\x1b[1;38;2;1;2;3ma\x1b[0mb");
        assert_eq!(
            to_ansi(&Line::styled("x", Style::new().bg(Color::Indexed(8)))),
            "\x1b[48;5;8mx\x1b[0m"
        );
    }

    /// Streamed token by token, the terminal ends up showing exactly the full render: fences
    /// gone, code highlighted, the previews erased.
    #[test]
    fn streamed_output_ends_as_the_full_render() {
        let src = "Here:\n\n```python\ndef add(a, b):\n    return a + b\n```\n\nDone.";
        let out = streamed(src, 30);
        assert_eq!(screen(&out, 30), screen(&full(src), 30));
        assert!(screen(&out, 30).contains("return a + b"));
        assert!(!screen(&out, 30).contains("```"), "{out:?}");
        assert!(out.contains("38;2;"), "highlighted: {out:?}");
    }

    /// A block longer than the screen is previewed by its last rows only, so the preview can
    /// always be erased; the final screen is still the full render's.
    #[test]
    fn preview_never_taller_than_the_screen() {
        let src: String = (0..30).map(|i| format!("- item {i}\n")).collect::<String>() + "\nEnd.";
        let mut t = AnsiStream::new(MarkdownStyles::dark(), 40, 6);
        t.push(&src[..src.len() - 8]);
        assert!(t.preview_rows <= 5, "{}", t.preview_rows);
        let out = streamed(&src, 6);
        assert_eq!(screen(&out, 6), screen(&full(&src), 6));
    }
}
