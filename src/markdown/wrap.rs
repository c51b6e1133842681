//! Draw-time wrapping of logical lines by display width.
//!
//! Prose wraps at spaces with a hanging indent under list markers and quote bars; code lines
//! (those whose `Line::style` carries a background) wrap by character so nothing is lost and
//! are padded to the full width so the block background reads as one box. Thematic breaks are
//! stretched or cut to the width instead of wrapping.

use ratatui::style::Style;
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthStr;

use super::render::RULE_CHAR;

/// Wraps logical lines to `width` columns. Width 0 yields no rows; a grapheme wider than the
/// width gets a row of its own (the terminal clips it) so wrapping always makes progress.
pub fn wrap_lines(lines: &[Line], width: u16) -> Vec<Line<'static>> {
    let mut out = Vec::with_capacity(lines.len());
    if width == 0 {
        return out;
    }
    for line in lines {
        wrap_one(line, width as usize, &mut out);
    }
    out
}

/// Per-message cache of wrapped rows for one width.
///
/// `wrap` reuses the rows of lines it already wrapped when the input only grew since the last
/// call (the committed lines of a [`super::MarkdownStream`] and finished messages both have
/// that property). Call [`WrapCache::invalidate`] when a message's lines are replaced, e.g.
/// after a theme change or an edit.
#[derive(Debug, Default, Clone)]
pub struct WrapCache {
    width: u16,
    source_lines: usize,
    rows: Vec<Line<'static>>,
}

impl WrapCache {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn wrap(&mut self, lines: &[Line], width: u16) -> &[Line<'static>] {
        if width != self.width || lines.len() < self.source_lines {
            self.invalidate();
            self.width = width;
        }
        if lines.len() > self.source_lines && width > 0 {
            for line in &lines[self.source_lines..] {
                wrap_one(line, width as usize, &mut self.rows);
            }
        }
        self.source_lines = lines.len();
        &self.rows
    }

    pub fn invalidate(&mut self) {
        self.source_lines = 0;
        self.rows.clear();
    }

    /// Rows currently cached (for the pane's scroll math without rewrapping).
    pub fn rows(&self) -> &[Line<'static>] {
        &self.rows
    }
}

struct G<'a> {
    sym: &'a str,
    style: Style,
    width: usize,
}

fn is_space(sym: &str) -> bool {
    sym.chars().all(char::is_whitespace)
}

fn wrap_one(line: &Line, width: usize, out: &mut Vec<Line<'static>>) {
    let code = line.style.bg.is_some();
    let gs: Vec<G> = line
        .spans
        .iter()
        .flat_map(|s| s.styled_graphemes(Style::default()))
        .map(|g| G {
            sym: g.symbol,
            width: g.symbol.width(),
            style: g.style,
        })
        .collect();
    let finish = |row: Vec<(&str, Style)>, out: &mut Vec<Line<'static>>| {
        let mut l = Line::from(spans_of(
            &row,
            if code {
                Some((line.style, width))
            } else {
                None
            },
        ));
        l.style = line.style;
        l.alignment = line.alignment;
        out.push(l);
    };
    if gs.is_empty() {
        finish(Vec::new(), out);
        return;
    }
    let mut prefix_len = if code {
        code_prefix_len(line)
    } else {
        prose_prefix_len(&gs)
    };
    let mut prefix_w: usize = gs[..prefix_len].iter().map(|g| g.width).sum();
    if prefix_w >= width {
        // No room for text after the prefix: wrap the whole line as content.
        prefix_len = 0;
        prefix_w = 0;
    }

    if !code
        && prefix_len < gs.len()
        && gs[prefix_len..]
            .iter()
            .all(|g| g.sym.starts_with(RULE_CHAR))
    {
        let mut row: Vec<(&str, Style)> = Vec::new();
        let mut w = 0;
        for g in &gs[..prefix_len] {
            if w + g.width > width {
                break;
            }
            w += g.width;
            row.push((g.sym, g.style));
        }
        let style = gs[prefix_len].style;
        for _ in w..width {
            row.push((gs[prefix_len].sym, style));
        }
        finish(row, out);
        return;
    }

    // Continuation rows repeat quote bars and indent under list markers; dropped when the
    // prefix would leave no room for text.
    let cont: Vec<(&str, Style)> = if prefix_w < width {
        gs[..prefix_len]
            .iter()
            .flat_map(|g| {
                if g.sym == "│" {
                    vec![(g.sym, g.style)]
                } else {
                    std::iter::repeat_n((" ", Style::default()), g.width).collect()
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    let cont_w = cont.len();

    let mut row: Vec<(&str, Style)> = Vec::new();
    let mut row_w = 0usize;
    // Index in `row` where content starts (after the prefix) and the last space in content.
    let mut content_start = prefix_len;
    let mut last_space: Option<usize> = None;
    for (i, g) in gs.iter().enumerate() {
        if i < prefix_len {
            row.push((g.sym, g.style));
            row_w += g.width;
            continue;
        }
        let fresh_row = row.len() == content_start;
        if fresh_row && !code && is_space(g.sym) && i > prefix_len {
            // Spaces that fall at a wrap point are dropped.
            continue;
        }
        if row_w + g.width > width && !fresh_row {
            if !code && is_space(g.sym) {
                trim_end(&mut row, content_start);
                finish(std::mem::replace(&mut row, cont.clone()), out);
                row_w = cont_w;
                content_start = row.len();
                last_space = None;
                continue;
            }
            let carried: Vec<(&str, Style)> = match last_space {
                Some(sp) if !code => {
                    let tail = row.split_off(sp + 1);
                    trim_end(&mut row, content_start);
                    tail
                }
                _ => Vec::new(),
            };
            finish(std::mem::replace(&mut row, cont.clone()), out);
            content_start = row.len();
            row_w = cont_w + carried.iter().map(|(s, _)| s.width()).sum::<usize>();
            row.extend(carried);
            last_space = None;
            // A carried word that still does not fit is broken by character.
            while row_w + g.width > width && row.len() > content_start {
                let take = fit_prefix(&row[content_start..], width.saturating_sub(cont_w));
                let take = take.max(1);
                let rest = row.split_off(content_start + take);
                finish(std::mem::replace(&mut row, cont.clone()), out);
                row_w = cont_w + rest.iter().map(|(s, _)| s.width()).sum::<usize>();
                row.extend(rest);
                if row_w + g.width <= width {
                    break;
                }
            }
        }
        if row.len() == content_start && row_w > 0 && row_w + g.width > width {
            // The prefix leaves no room for this grapheme: a first-row prefix goes on a row
            // of its own, a continuation indent is dropped.
            if i == prefix_len {
                finish(std::mem::take(&mut row), out);
            }
            row.clear();
            row_w = 0;
            content_start = 0;
            last_space = None;
        }
        if !code && is_space(g.sym) {
            last_space = Some(row.len());
        }
        row.push((g.sym, g.style));
        row_w += g.width;
    }
    finish(row, out);
}

/// How many leading graphemes of `row` fit in `width` columns.
fn fit_prefix(row: &[(&str, Style)], width: usize) -> usize {
    let mut w = 0;
    for (i, (s, _)) in row.iter().enumerate() {
        w += s.width();
        if w > width {
            return i;
        }
    }
    row.len()
}

fn trim_end(row: &mut Vec<(&str, Style)>, keep: usize) {
    while row.len() > keep && row.last().is_some_and(|(s, _)| is_space(s)) {
        row.pop();
    }
}

/// Code lines: the container prefix is the leading spans without a background.
fn code_prefix_len(line: &Line) -> usize {
    let mut n = 0;
    for span in &line.spans {
        if span.style.bg.is_some() {
            break;
        }
        n += span.styled_graphemes(Style::default()).count();
    }
    n
}

/// Prose lines: quote bars, indentation, a list marker and a task box form the prefix.
fn prose_prefix_len(gs: &[G]) -> usize {
    let mut i = 0;
    let mut after_marker = false;
    loop {
        let rest = &gs[i..];
        let sym = |k: usize| rest.get(k).map(|g| g.sym).unwrap_or("");
        if sym(0) == "│" || sym(0) == " " {
            i += 1;
            continue;
        }
        if matches!(sym(0), "•" | "◦" | "▪") && sym(1) == " " {
            i += 2;
            after_marker = true;
            continue;
        }
        let digits = rest
            .iter()
            .take_while(|g| g.sym.len() == 1 && g.sym.as_bytes()[0].is_ascii_digit())
            .count();
        if digits > 0 && digits < 10 && sym(digits) == "." && sym(digits + 1) == " " {
            i += digits + 2;
            after_marker = true;
            continue;
        }
        if after_marker
            && sym(0) == "["
            && matches!(sym(1), " " | "x")
            && sym(2) == "]"
            && sym(3) == " "
        {
            i += 4;
            continue;
        }
        break;
    }
    i
}

fn spans_of(row: &[(&str, Style)], pad: Option<(Style, usize)>) -> Vec<Span<'static>> {
    let mut spans: Vec<Span<'static>> = Vec::new();
    let mut cur = String::new();
    let mut cur_style = None;
    let mut w = 0;
    for (sym, style) in row {
        w += sym.width();
        if cur_style != Some(*style) {
            if let Some(s) = cur_style {
                spans.push(Span::styled(std::mem::take(&mut cur), s));
            }
            cur_style = Some(*style);
        }
        cur.push_str(sym);
    }
    if let Some(s) = cur_style {
        spans.push(Span::styled(cur, s));
    }
    if let Some((line_style, width)) = pad {
        if w < width {
            spans.push(Span::styled(
                " ".repeat(width - w),
                Style::new().bg(line_style.bg.unwrap_or_default()),
            ));
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::markdown::{render, MarkdownStyles};
    use ratatui::style::Color;

    fn rows(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    #[test]
    fn words_wrap_at_spaces() {
        let got = wrap_lines(&[Line::from("the quick brown fox jumps")], 10);
        assert_eq!(rows(&got), ["the quick", "brown fox", "jumps"]);
    }

    #[test]
    fn long_words_break_by_character() {
        let got = wrap_lines(&[Line::from("abcdefghijkl xy")], 5);
        assert_eq!(rows(&got), ["abcde", "fghij", "kl xy"]);
    }

    #[test]
    fn wide_characters_never_overflow() {
        let got = wrap_lines(&[Line::from("漢字漢字漢字 emoji 👩‍👩‍👧‍👦👍 ok")], 5);
        for r in rows(&got) {
            assert!(r.width() <= 5, "{r:?} is wider than 5");
        }
        assert_eq!(
            rows(&got).concat().replace(' ', ""),
            "漢字漢字漢字emoji👩‍👩‍👧‍👦👍ok"
        );
    }

    #[test]
    fn zero_and_one_width_do_not_panic() {
        let st = MarkdownStyles::dark();
        let lines = render(
            "# T\n\n- 漢字 item\n\n> q 👍\n\n```rust\nfn x() {}\n```\n\n---\n\n|a|b|\n|-|-|\n|1|2|",
            &st,
        );
        assert!(wrap_lines(&lines, 0).is_empty());
        let one = wrap_lines(&lines, 1);
        assert!(!one.is_empty());
        let two = wrap_lines(&lines, 2);
        assert!(two.len() >= lines.len());
    }

    #[test]
    fn list_continuation_hangs_under_the_text() {
        let st = MarkdownStyles::dark();
        let lines = render("- [ ] alpha beta gamma\n\n> one two three four", &st);
        let got = rows(&wrap_lines(&lines, 12));
        assert_eq!(
            got,
            [
                "• [ ] alpha",
                "      beta",
                "      gamma",
                "",
                "│ one two",
                "│ three four"
            ]
        );
    }

    #[test]
    fn code_lines_wrap_by_char_and_keep_background() {
        let st = MarkdownStyles::dark();
        let lines = render("```zzz\n  let value = 12345;\n```", &st);
        let got = wrap_lines(&lines, 8);
        assert_eq!(rows(&got), ["zzz     ", "  let va", "lue = 12", "345;    "]);
        for row in &got {
            assert_eq!(row.style.bg, st.code_bg.bg);
            assert!(row.spans.iter().all(|s| s.style.bg == st.code_bg.bg));
        }
    }

    #[test]
    fn rules_fill_the_width() {
        let st = MarkdownStyles::dark();
        let got = wrap_lines(&render("---", &st), 7);
        assert_eq!(rows(&got), ["───────"]);
        let quoted = wrap_lines(&render("> ---", &st), 5);
        assert_eq!(rows(&quoted), ["│ ───"]);
    }

    #[test]
    fn styles_survive_wrapping() {
        let red = Style::new().fg(Color::Red);
        let line = Line::from(vec![Span::raw("aaa "), Span::styled("bbb ccc", red)]);
        let got = wrap_lines(&[line], 5);
        assert_eq!(rows(&got), ["aaa", "bbb", "ccc"]);
        assert_eq!(got[1].spans[0].style, red);
        assert_eq!(got[2].spans[0].style, red);
    }

    #[test]
    fn cache_appends_and_resets_on_width_change() {
        let mut cache = WrapCache::new();
        let mut lines = vec![Line::from("one two three")];
        assert_eq!(cache.wrap(&lines, 7).len(), 2);
        lines.push(Line::from("four"));
        assert_eq!(rows(cache.wrap(&lines, 7)), ["one two", "three", "four"]);
        assert_eq!(rows(cache.wrap(&lines, 80)), ["one two three", "four"]);
    }
}
