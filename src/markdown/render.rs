//! pulldown-cmark events → logical lines with styled spans and no width.
//!
//! Top-level blocks render independently of each other (a blank line separates them), which
//! is what lets `stream` commit finished blocks and re-render only the open one.

use std::ops::Range;

use pulldown_cmark::{
    Alignment, BrokenLink, CodeBlockKind, Event, HeadingLevel, LinkType, Options, Parser, Tag,
    TagEnd,
};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use unicode_width::UnicodeWidthStr;

use super::highlight::CodeHighlighter;
use super::MarkdownStyles;

/// Length of a thematic break as stored; `wrap_lines` stretches or cuts it to the pane width.
pub(crate) const RULE_LEN: usize = 3;
pub(crate) const RULE_CHAR: char = '─';

const BULLETS: [&str; 3] = ["• ", "◦ ", "▪ "];

/// Renders a whole message to logical lines.
pub fn render(text: &str, styles: &MarkdownStyles) -> Vec<Line<'static>> {
    render_blocks(text, styles, &RenderOptions::default())
        .blocks
        .into_iter()
        .flat_map(|b| b.lines)
        .collect()
}

pub(crate) fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_TASKLISTS
}

/// Highlighting state of a top-level fenced code block after its last rendered line.
#[derive(Clone, Debug)]
pub(crate) struct CodeResume {
    /// Code lines already emitted (label line not counted).
    pub lines: usize,
    pub highlighter: CodeHighlighter,
}

#[derive(Default)]
pub(crate) struct RenderOptions<'a> {
    /// A block precedes this source (already committed), so the first block gets a separator.
    pub leading_separator: bool,
    /// The first rendered (not skipped) block is a fenced code block whose separator, label
    /// and first `lines` code lines the caller already has: skip them and continue
    /// highlighting from this state.
    pub resume: Option<&'a CodeResume>,
    /// Top-level blocks starting before this offset are parsed but not rendered (their
    /// `lines` come back empty): the caller already holds their lines.
    pub skip_before: usize,
}

pub(crate) struct Block {
    /// Byte range of the block in the parsed source.
    pub range: Range<usize>,
    /// End of the last text the block shows; the range may run further (over trailing
    /// definitions, fences, blank lines).
    pub content_end: usize,
    pub lines: Vec<Line<'static>>,
    /// Some for a top-level fenced code block: the state after its last line.
    pub code: Option<CodeResume>,
    /// The block holds a `[label]` that a later link reference definition could turn into a
    /// link, so its rendering is not final until the message is.
    pub unresolved_reference: bool,
}

pub(crate) struct Rendered {
    pub blocks: Vec<Block>,
    /// `RenderOptions::resume` was applied (its block's lines exclude what the caller has).
    pub resumed: bool,
    /// Source ranges of link reference definitions (they render nothing but apply document-wide).
    pub definitions: Vec<Range<usize>>,
}

pub(crate) fn render_blocks(src: &str, styles: &MarkdownStyles, opts: &RenderOptions) -> Rendered {
    let mut broken: Vec<Range<usize>> = Vec::new();
    let mut definitions = Vec::new();
    let events: Vec<(Event, Range<usize>)> = {
        let callback = |link: BrokenLink| {
            broken.push(link.span.clone());
            None
        };
        let mut iter = Parser::new_with_broken_link_callback(src, options(), Some(callback))
            .into_offset_iter();
        let events: Vec<_> = iter.by_ref().collect();
        for (_, def) in iter.reference_definitions().iter() {
            definitions.push(def.span.clone());
        }
        events
    };
    definitions.sort_by_key(|r| r.start);

    let mut w = Writer::new(styles);
    if opts.leading_separator {
        w.block_counts[0] = 1;
    }
    let mut blocks = Vec::new();
    let mut depth = 0usize;
    let mut block_start = 0usize;
    let mut block_range = 0..0;
    let mut content_end = 0usize;
    let mut skipping = false;
    let mut rendered_any = false;
    let mut resumed = false;
    let mut given_resume = false;
    for (i, (event, range)) in events.iter().enumerate() {
        if depth == 0 {
            skipping = range.start < opts.skip_before;
            block_start = w.out.len();
            block_range = range.clone();
            content_end = range.start;
            w.code_result = None;
            w.resume = if skipping || rendered_any {
                None
            } else {
                opts.resume.cloned()
            };
            rendered_any |= !skipping;
            given_resume = w.resume.is_some();
        }
        match event {
            Event::Start(_) => depth += 1,
            Event::End(_) => depth = depth.saturating_sub(1),
            _ => content_end = content_end.max(range.end),
        }
        if skipping {
            if depth == 0 {
                // Counted, so the next rendered block still gets its separator.
                w.block_counts[0] += 1;
            }
        } else {
            w.event(event, &events[i + 1..]);
        }
        if depth == 0 {
            w.flush_line();
            resumed |= given_resume && w.resume.is_none();
            w.resume = None;
            let unresolved_reference = broken
                .iter()
                .any(|b| b.start < block_range.end && b.end > block_range.start);
            blocks.push(Block {
                range: block_range.clone(),
                content_end,
                lines: w.out.split_off(block_start),
                code: w.code_result.take(),
                unresolved_reference,
            });
        }
    }
    if depth != 0 {
        // pulldown-cmark always balances its events; this only guards against a future change.
        w.flush_line();
        blocks.push(Block {
            range: block_range,
            content_end,
            lines: w.out.split_off(block_start),
            code: w.code_result.take(),
            unresolved_reference: true,
        });
    }
    Rendered {
        blocks,
        resumed,
        definitions,
    }
}

enum Container {
    Quote,
    Item {
        marker: Span<'static>,
        emitted: bool,
        width: usize,
        loose: bool,
    },
}

struct ListCtx {
    next: Option<u64>,
    loose: bool,
    items: usize,
}

struct CodeCtx {
    resumed: bool,
    /// A fenced block directly in the document: the only kind the stream commits line by line.
    top_level: bool,
    lang: Option<String>,
    text: String,
}

struct TableCtx {
    aligns: Vec<Alignment>,
    rows: Vec<Vec<Vec<Span<'static>>>>,
    header_rows: usize,
    in_head: bool,
}

struct LinkCtx {
    dest: String,
    text: String,
    kind: LinkType,
    image: bool,
}

struct Writer<'s> {
    st: &'s MarkdownStyles,
    out: Vec<Line<'static>>,
    cur: Option<Vec<Span<'static>>>,
    /// Patches applied to inline text, innermost last.
    inline: Vec<Style>,
    containers: Vec<Container>,
    /// Blocks seen so far per nesting level (index 0 = document).
    block_counts: Vec<usize>,
    lists: Vec<ListCtx>,
    code: Option<CodeCtx>,
    table: Option<TableCtx>,
    links: Vec<LinkCtx>,
    resume: Option<CodeResume>,
    code_result: Option<CodeResume>,
    /// Inside an HTML block: text keeps its own line breaks.
    html: bool,
}

impl<'s> Writer<'s> {
    fn new(st: &'s MarkdownStyles) -> Self {
        Self {
            st,
            out: Vec::new(),
            cur: None,
            inline: Vec::new(),
            containers: Vec::new(),
            block_counts: vec![0],
            lists: Vec::new(),
            code: None,
            table: None,
            links: Vec::new(),
            resume: None,
            code_result: None,
            html: false,
        }
    }

    fn in_quote(&self) -> bool {
        self.containers
            .iter()
            .any(|c| matches!(c, Container::Quote))
    }

    fn base_style(&self) -> Style {
        let mut s = self.st.text;
        if self.in_quote() {
            s = s.patch(self.st.quote);
        }
        s
    }

    fn inline_style(&self) -> Style {
        self.inline
            .iter()
            .fold(self.base_style(), |acc, p| acc.patch(*p))
    }

    /// Prefix spans for a new line: quote bars, list markers (first line of an item) or the
    /// hanging indent under them.
    fn prefix(&mut self) -> Vec<Span<'static>> {
        let quote = self.st.quote;
        let mut spans = Vec::new();
        for c in self.containers.iter_mut() {
            match c {
                Container::Quote => spans.push(Span::styled("│ ", quote)),
                Container::Item {
                    marker,
                    emitted,
                    width,
                    ..
                } => {
                    if *emitted {
                        spans.push(Span::raw(" ".repeat(*width)));
                    } else {
                        *emitted = true;
                        spans.push(marker.clone());
                    }
                }
            }
        }
        spans
    }

    fn start_line(&mut self) {
        if self.cur.is_none() {
            let p = self.prefix();
            self.cur = Some(p);
        }
    }

    fn flush_line(&mut self) {
        if let Some(spans) = self.cur.take() {
            self.out.push(Line::from(merge(spans)));
        }
    }

    /// An empty separator line that keeps the quote bars of the enclosing containers.
    fn blank_line(&mut self) {
        self.flush_line();
        let mut spans: Vec<Span<'static>> = Vec::new();
        let mut pending_indent = 0usize;
        for c in &self.containers {
            match c {
                Container::Quote => {
                    if pending_indent > 0 {
                        spans.push(Span::raw(" ".repeat(pending_indent)));
                        pending_indent = 0;
                    }
                    spans.push(Span::styled("│ ", self.st.quote));
                }
                Container::Item { width, .. } => pending_indent += *width,
            }
        }
        if let Some(last) = spans.last_mut() {
            last.content = last.content.trim_end().to_string().into();
        }
        self.out.push(Line::from(spans));
    }

    /// Called when a block starts in the innermost container: separates it from the previous
    /// block where markdown would show a gap.
    fn begin_block(&mut self) {
        self.flush_line();
        let level = self.containers.len();
        let separate = match self.containers.last() {
            None | Some(Container::Quote) => true,
            Some(Container::Item { loose, .. }) => *loose,
        };
        let count = self.block_counts[level];
        if count > 0 && separate {
            self.blank_line();
        }
        self.block_counts[level] += 1;
    }

    fn push_container(&mut self, c: Container) {
        self.containers.push(c);
        self.block_counts.push(0);
    }

    fn pop_container(&mut self) {
        self.flush_line();
        if let Some(Container::Item { emitted: false, .. }) = self.containers.last() {
            // An empty item still shows its marker.
            self.start_line();
            self.flush_line();
        }
        self.containers.pop();
        self.block_counts.pop();
    }

    /// Inline text outside any explicit paragraph (tight list items) opens an implicit block.
    fn ensure_inline_line(&mut self) {
        if self.cur.is_none() {
            let level = self.containers.len();
            if self.block_counts[level] == 0 {
                self.block_counts[level] = 1;
            }
            self.start_line();
        }
    }

    fn push_span(&mut self, text: &str, style: Style) {
        if text.is_empty() {
            return;
        }
        if let Some(link) = self.links.last_mut() {
            link.text.push_str(text);
        }
        if let Some(table) = self.table.as_mut() {
            if let Some(cell) = table.rows.last_mut().and_then(|r| r.last_mut()) {
                cell.push(Span::styled(sanitize(text), style));
            }
            return;
        }
        let mut first = true;
        for part in text.split('\n') {
            if !first {
                self.flush_line();
            }
            first = false;
            if part.is_empty() {
                continue;
            }
            self.ensure_inline_line();
            if let Some(cur) = self.cur.as_mut() {
                cur.push(Span::styled(sanitize(part), style));
            }
        }
    }

    fn event(&mut self, event: &Event, rest: &[(Event, Range<usize>)]) {
        if let Some(code) = self.code.as_mut() {
            match event {
                Event::Text(t) => {
                    code.text.push_str(t);
                    return;
                }
                Event::End(TagEnd::CodeBlock) => {}
                _ => return,
            }
        }
        match event {
            Event::Start(tag) => self.start(tag, rest),
            Event::End(tag) => self.end(tag),
            Event::Text(t) => {
                let style = if self.html {
                    self.st.muted
                } else {
                    self.inline_style()
                };
                self.push_span(t, style);
            }
            Event::Code(t) => {
                let style = self.inline_style().patch(self.st.code_inline);
                self.push_span(t, style);
            }
            Event::Html(t) if self.html => {
                // HTML blocks are shown as source, line by line.
                let style = self.inline_style().patch(self.st.muted);
                for piece in t.split_inclusive('\n') {
                    match piece.strip_suffix('\n') {
                        Some(line) => {
                            self.ensure_inline_line();
                            self.push_span(line, style);
                            self.flush_line();
                        }
                        None => self.push_span(piece, style),
                    }
                }
            }
            Event::Html(t) | Event::InlineHtml(t) => {
                let style = self.inline_style().patch(self.st.muted);
                self.push_span(t, style);
            }
            Event::InlineMath(t) | Event::DisplayMath(t) | Event::FootnoteReference(t) => {
                let style = self.inline_style();
                self.push_span(t, style);
            }
            Event::SoftBreak => {
                let style = self.inline_style();
                self.push_span(" ", style);
            }
            Event::HardBreak => {
                if self.table.is_some() {
                    let style = self.inline_style();
                    self.push_span(" ", style);
                } else {
                    self.ensure_inline_line();
                    self.flush_line();
                }
            }
            Event::Rule => {
                self.begin_block();
                self.start_line();
                let rule = RULE_CHAR.to_string().repeat(RULE_LEN);
                if let Some(cur) = self.cur.as_mut() {
                    cur.push(Span::styled(rule, self.st.rule));
                }
                self.flush_line();
            }
            Event::TaskListMarker(done) => {
                let (mark, style) = if *done {
                    ("[x] ", self.st.list_marker)
                } else {
                    ("[ ] ", self.st.list_marker)
                };
                self.push_span(mark, style);
            }
        }
    }

    fn start(&mut self, tag: &Tag, rest: &[(Event, Range<usize>)]) {
        match tag {
            Tag::Paragraph => {
                self.begin_block();
            }
            Tag::Heading { level, .. } => {
                self.begin_block();
                self.start_line();
                let n = heading_level(*level);
                let marker = format!("{} ", "#".repeat(n));
                let style = self.base_style().patch(self.st.heading);
                if let Some(cur) = self.cur.as_mut() {
                    cur.push(Span::styled(marker, style));
                }
                self.inline.push(self.st.heading);
            }
            Tag::BlockQuote(_) => {
                self.begin_block();
                self.push_container(Container::Quote);
            }
            Tag::CodeBlock(kind) => {
                let (fenced, lang) = match kind {
                    CodeBlockKind::Fenced(info) => {
                        let lang = info.split_whitespace().next().unwrap_or("").to_string();
                        (true, (!lang.is_empty()).then_some(lang))
                    }
                    CodeBlockKind::Indented => (false, None),
                };
                let top_level = fenced && self.containers.is_empty();
                let resumed = top_level && self.resume.is_some();
                if resumed {
                    // Separator and label were committed with the earlier lines.
                    self.flush_line();
                    self.block_counts[0] += 1;
                } else {
                    self.begin_block();
                }
                self.code = Some(CodeCtx {
                    resumed,
                    top_level,
                    lang,
                    text: String::new(),
                });
            }
            Tag::HtmlBlock => {
                self.begin_block();
                self.html = true;
            }
            Tag::List(start) => {
                self.begin_block();
                self.lists.push(ListCtx {
                    next: *start,
                    loose: list_is_loose(rest),
                    items: 0,
                });
            }
            Tag::Item => {
                self.flush_line();
                let depth = self.lists.len().saturating_sub(1);
                let (marker_text, loose, separate) = match self.lists.last_mut() {
                    Some(list) => {
                        let text = match list.next.as_mut() {
                            Some(n) => {
                                let t = format!("{n}. ");
                                *n += 1;
                                t
                            }
                            None => BULLETS[depth % BULLETS.len()].to_string(),
                        };
                        let separate = list.loose && list.items > 0;
                        list.items += 1;
                        (text, list.loose, separate)
                    }
                    None => (BULLETS[0].to_string(), false, false),
                };
                if separate {
                    self.blank_line();
                }
                let width = marker_text.width();
                self.push_container(Container::Item {
                    marker: Span::styled(marker_text, self.st.list_marker),
                    emitted: false,
                    width,
                    loose,
                });
            }
            Tag::Table(aligns) => {
                self.begin_block();
                self.table = Some(TableCtx {
                    aligns: aligns.clone(),
                    rows: Vec::new(),
                    header_rows: 0,
                    in_head: false,
                });
            }
            Tag::TableHead => {
                if let Some(t) = self.table.as_mut() {
                    t.in_head = true;
                    t.rows.push(Vec::new());
                }
                self.inline.push(self.st.strong);
            }
            Tag::TableRow => {
                if let Some(t) = self.table.as_mut() {
                    t.rows.push(Vec::new());
                }
            }
            Tag::TableCell => {
                if let Some(row) = self.table.as_mut().and_then(|t| t.rows.last_mut()) {
                    row.push(Vec::new());
                }
            }
            Tag::Emphasis => self.inline.push(self.st.emphasis),
            Tag::Strong => self.inline.push(self.st.strong),
            Tag::Strikethrough => self
                .inline
                .push(Style::new().add_modifier(Modifier::CROSSED_OUT)),
            Tag::Link {
                link_type,
                dest_url,
                ..
            } => {
                self.links.push(LinkCtx {
                    dest: dest_url.to_string(),
                    text: String::new(),
                    kind: *link_type,
                    image: false,
                });
                self.inline.push(self.st.link);
            }
            Tag::Image { dest_url, .. } => {
                let style = self.inline_style().patch(self.st.muted);
                self.push_span("[image: ", style);
                self.links.push(LinkCtx {
                    dest: dest_url.to_string(),
                    text: String::new(),
                    kind: LinkType::Inline,
                    image: true,
                });
                self.inline.push(self.st.muted);
            }
            Tag::FootnoteDefinition(_)
            | Tag::DefinitionList
            | Tag::DefinitionListTitle
            | Tag::DefinitionListDefinition
            | Tag::MetadataBlock(_) => {
                // Not enabled in `options()`; treated as plain blocks if they ever appear.
                self.begin_block();
            }
        }
    }

    fn end(&mut self, tag: &TagEnd) {
        match tag {
            TagEnd::Paragraph => self.flush_line(),
            TagEnd::Heading(_) => {
                self.inline.pop();
                self.flush_line();
            }
            TagEnd::BlockQuote(_) => self.pop_container(),
            TagEnd::CodeBlock => {
                if let Some(code) = self.code.take() {
                    self.emit_code(code);
                }
            }
            TagEnd::HtmlBlock => {
                self.html = false;
                self.flush_line();
            }
            TagEnd::List(_) => {
                self.flush_line();
                self.lists.pop();
            }
            TagEnd::Item => self.pop_container(),
            TagEnd::Table => {
                if let Some(t) = self.table.take() {
                    self.emit_table(t);
                }
            }
            TagEnd::TableHead => {
                self.inline.pop();
                if let Some(t) = self.table.as_mut() {
                    t.in_head = false;
                    t.header_rows += 1;
                }
            }
            TagEnd::TableRow | TagEnd::TableCell => {}
            TagEnd::Emphasis | TagEnd::Strong | TagEnd::Strikethrough => {
                self.inline.pop();
            }
            TagEnd::Link => {
                self.inline.pop();
                if let Some(link) = self.links.pop() {
                    let shown = link.text.trim();
                    let autolink = matches!(link.kind, LinkType::Autolink | LinkType::Email);
                    if !link.dest.is_empty() && !autolink && shown != link.dest {
                        let style = self.inline_style().patch(self.st.muted);
                        self.push_span(&format!(" ({})", link.dest), style);
                    }
                }
            }
            TagEnd::Image => {
                self.inline.pop();
                if let Some(link) = self.links.pop() {
                    let style = self.inline_style().patch(self.st.muted);
                    let tail = if link.dest.is_empty() || !link.image {
                        "]".to_string()
                    } else {
                        format!("] ({})", link.dest)
                    };
                    self.push_span(&tail, style);
                }
            }
            TagEnd::FootnoteDefinition
            | TagEnd::DefinitionList
            | TagEnd::DefinitionListTitle
            | TagEnd::DefinitionListDefinition
            | TagEnd::MetadataBlock(_) => self.flush_line(),
        }
    }

    fn emit_code(&mut self, code: CodeCtx) {
        let bg = Style::new().bg(self.st.code_bg.bg.unwrap_or(ratatui::style::Color::Reset));
        let line_style = if self.st.code_bg.bg.is_some() {
            bg
        } else {
            Style::new()
        };
        let base = self.base_style();
        let top_level_fenced = code.top_level;
        let resume = if code.resumed {
            self.resume.take()
        } else {
            None
        };
        let (skip, mut hl) = match resume {
            Some(r) => (r.lines, r.highlighter),
            None => {
                let hl = CodeHighlighter::new(code.lang.as_deref(), &self.st.syntect_theme);
                // Label line: the language, so users can tell what they are copying.
                let label = code.lang.clone().unwrap_or_else(|| "code".into());
                let mut spans = self.prefix();
                spans.push(Span::styled(
                    sanitize(&label),
                    base.patch(self.st.muted).patch(bg),
                ));
                self.out.push(Line::from(spans).style(line_style));
                (0, hl)
            }
        };
        let body = code.text.strip_suffix('\n').unwrap_or(&code.text);
        let mut count = 0usize;
        if !code.text.is_empty() {
            for raw in body.split('\n') {
                count += 1;
                if count <= skip {
                    continue;
                }
                let text = sanitize(raw);
                let mut spans = self.prefix();
                spans.extend(hl.line(&text, base, bg));
                self.out.push(Line::from(merge(spans)).style(line_style));
            }
        }
        if top_level_fenced {
            self.code_result = Some(CodeResume {
                lines: count.max(skip),
                highlighter: hl,
            });
        }
    }

    fn emit_table(&mut self, t: TableCtx) {
        let cols = t
            .aligns
            .len()
            .max(t.rows.iter().map(|r| r.len()).max().unwrap_or(0));
        if cols == 0 {
            return;
        }
        let mut widths = vec![1usize; cols];
        for row in &t.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(spans_width(cell));
            }
        }
        let border = self.st.table_border;
        let rule = |l: &str, m: &str, r: &str| -> String {
            let mut s = l.to_string();
            for (i, w) in widths.iter().enumerate() {
                if i > 0 {
                    s.push_str(m);
                }
                s.push_str(&"─".repeat(w + 2));
            }
            s.push_str(r);
            s
        };
        let top = rule("┌", "┬", "┐");
        let mid = rule("├", "┼", "┤");
        let bottom = rule("└", "┴", "┘");
        self.push_bordered(vec![Span::styled(top, border)]);
        for (ri, row) in t.rows.iter().enumerate() {
            let mut spans = vec![Span::styled("│", border)];
            for (ci, w) in widths.iter().enumerate() {
                let cell: &[Span<'static>] = row.get(ci).map(|c| c.as_slice()).unwrap_or(&[]);
                let pad = w.saturating_sub(spans_width(cell));
                let (left, right) = match t.aligns.get(ci) {
                    Some(Alignment::Right) => (pad, 0),
                    Some(Alignment::Center) => (pad / 2, pad - pad / 2),
                    _ => (0, pad),
                };
                spans.push(Span::raw(" ".repeat(left + 1)));
                spans.extend(cell.iter().cloned());
                spans.push(Span::raw(" ".repeat(right + 1)));
                spans.push(Span::styled("│", border));
            }
            self.push_bordered(spans);
            if ri + 1 == t.header_rows && t.rows.len() > t.header_rows {
                self.push_bordered(vec![Span::styled(mid.clone(), border)]);
            }
        }
        self.push_bordered(vec![Span::styled(bottom, border)]);
    }

    fn push_bordered(&mut self, body: Vec<Span<'static>>) {
        self.flush_line();
        let mut spans = self.prefix();
        spans.extend(body);
        self.out.push(Line::from(merge(spans)));
    }
}

/// A list is loose when any of its own items holds a paragraph (pulldown-cmark only wraps
/// item text in paragraphs for loose lists).
fn list_is_loose(rest: &[(Event, Range<usize>)]) -> bool {
    // `rest` starts right after `Start(List)`; depth 0 = directly in the list, 1 = in an item.
    let mut depth = 0usize;
    for (event, _) in rest {
        match event {
            Event::Start(tag) => {
                if depth == 1 && matches!(tag, Tag::Paragraph) {
                    return true;
                }
                depth += 1;
            }
            Event::End(_) => {
                if depth == 0 {
                    return false;
                }
                depth -= 1;
            }
            _ => {}
        }
    }
    false
}

fn heading_level(level: HeadingLevel) -> usize {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

fn spans_width(spans: &[Span]) -> usize {
    spans.iter().map(|s| s.content.width()).sum()
}

/// Terminal safety: tabs become spaces (their width is undefined in a cell grid) and other
/// control characters are dropped, so model output can never emit escape sequences.
pub(crate) fn sanitize(text: &str) -> String {
    if !text.chars().any(|c| c.is_control()) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\t' => out.push_str("    "),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Joins neighbouring spans of the same style so lines stay small.
fn merge(spans: Vec<Span<'static>>) -> Vec<Span<'static>> {
    let mut out: Vec<Span<'static>> = Vec::with_capacity(spans.len());
    for span in spans {
        if span.content.is_empty() {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.style == span.style => {
                let mut s = last.content.to_string();
                s.push_str(&span.content);
                last.content = s.into();
            }
            _ => out.push(span),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(lines: &[Line]) -> Vec<String> {
        lines
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
            .collect()
    }

    fn plain(src: &str) -> Vec<String> {
        text_of(&render(src, &MarkdownStyles::dark()))
    }

    #[test]
    fn heading_keeps_marker_and_blocks_are_separated() {
        assert_eq!(plain("# Title\n\nBody text"), ["# Title", "", "Body text"]);
        let lines = render("## Sub", &MarkdownStyles::dark());
        let st = MarkdownStyles::dark();
        assert!(lines[0].spans.iter().all(|s| s.style.fg == st.heading.fg));
        assert!(lines[0].spans[0]
            .style
            .add_modifier
            .contains(Modifier::BOLD));
    }

    #[test]
    fn soft_breaks_join_and_hard_breaks_split() {
        assert_eq!(plain("one\ntwo"), ["one two"]);
        assert_eq!(plain("one  \ntwo"), ["one", "two"]);
    }

    #[test]
    fn nested_lists_get_markers_and_hanging_indent() {
        let src = "- a\n  - b\n    - c\n- d\n\n1. x\n2. y\n   more";
        assert_eq!(
            plain(src),
            ["• a", "  ◦ b", "    ▪ c", "• d", "", "1. x", "2. y more"]
        );
    }

    #[test]
    fn loose_list_items_are_separated() {
        assert_eq!(plain("- a\n\n- b"), ["• a", "", "• b"]);
    }

    #[test]
    fn task_list_markers() {
        assert_eq!(
            plain("- [ ] todo\n- [x] done"),
            ["• [ ] todo", "• [x] done"]
        );
    }

    #[test]
    fn block_quote_prefixes_every_line() {
        assert_eq!(
            plain("> quoted\n>\n> second\n> > inner"),
            ["│ quoted", "│", "│ second", "│", "│ │ inner"]
        );
    }

    #[test]
    fn links_show_text_and_muted_url() {
        let st = MarkdownStyles::dark();
        let lines = render("see [docs](https://x.dev) and <https://y.dev>", &st);
        assert_eq!(
            text_of(&lines),
            ["see docs (https://x.dev) and https://y.dev"]
        );
        let url = lines[0]
            .spans
            .iter()
            .find(|s| s.content.contains("(https://x.dev)"))
            .unwrap();
        assert_eq!(url.style.fg, st.muted.fg);
    }

    #[test]
    fn table_columns_align_by_display_width() {
        let src = "| name | 值 |\n|:-----|---:|\n| 漢字漢字 | 1 |\n| a | 22 |";
        let got = plain(src);
        assert_eq!(
            got,
            [
                "┌──────────┬────┐",
                "│ name     │ 值 │",
                "├──────────┼────┤",
                "│ 漢字漢字 │  1 │",
                "│ a        │ 22 │",
                "└──────────┴────┘",
            ]
        );
        let widths: Vec<usize> = got.iter().map(|l| l.width()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{widths:?}");
    }

    #[test]
    fn code_block_has_label_background_and_verbatim_text() {
        let st = MarkdownStyles::dark();
        let lines = render("```rust\nfn main() {\n\tlet x = 1;\n}\n```", &st);
        assert_eq!(
            text_of(&lines),
            ["rust", "fn main() {", "    let x = 1;", "}"]
        );
        for l in &lines {
            assert_eq!(l.style.bg, st.code_bg.bg);
            assert!(l.spans.iter().all(|s| s.style.bg == st.code_bg.bg));
        }
        assert!(lines[1].spans.len() > 1, "rust code is highlighted");
        let unknown = render("```zzz\nplain words\n```", &st);
        assert_eq!(text_of(&unknown), ["zzz", "plain words"]);
        assert_eq!(unknown[1].spans.len(), 1);
    }

    #[test]
    fn rule_and_emphasis_styles() {
        let st = MarkdownStyles::dark();
        let lines = render("*it* **bold** ~~gone~~ `code`\n\n---", &st);
        let spans = &lines[0].spans;
        assert!(spans[0].style.add_modifier.contains(Modifier::ITALIC));
        assert!(spans[2].style.add_modifier.contains(Modifier::BOLD));
        assert!(spans[4].style.add_modifier.contains(Modifier::CROSSED_OUT));
        assert_eq!(spans[6].style.bg, st.code_inline.bg);
        assert_eq!(text_of(&lines)[2], "───");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        let got = plain("evil \u{1b}[2J text");
        assert_eq!(got, ["evil [2J text"]);
    }

    #[test]
    fn empty_input_renders_nothing() {
        assert!(plain("").is_empty());
        assert!(plain("\n\n").is_empty());
    }
}
