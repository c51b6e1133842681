//! Streaming equals full rendering, for any split; style snapshots of the presets.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use ratatui::text::Line;

use super::{render, wrap_lines, MarkdownStream, MarkdownStyles};

/// Failing seeds are kept next to this file (`tests.regressions`) and replayed first.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

const CORPUS: &[&str] = &[
    // Headings, emphasis, links, a table and code in two languages.
    "# Rust ownership 🦀\n\nOwnership has **three** rules, see [the book](https://doc.rust-lang.org/book/) \
or <https://rust-lang.org>.\n\n## Rules\n\n1. Each value has an *owner*.\n2. One owner at a time.\n   Continued line.\n   \
\n   Second paragraph in item two.\n3. Dropped at scope end.\n\n| Rule | 説明 | ok |\n|:-----|:----:|---:|\n| move | 所有権の移動 | ✅ |\n\
| borrow | `&T` | 👍🏽 |\n\n```rust\nfn main() {\n    let s = String::from(\"hi\");\n    takes(s);\n}\n```\n\n\
```python\ndef f(x):\n    return x * 2  # 二倍\n```\n\nDone.",
    // Nested lists, tasks, quotes with code inside.
    "- top\n  - nested **bold**\n    - deeper `code`\n  - back\n- [ ] task open\n- [x] task done\n\n\
> A quote with *emphasis*\n> spanning lines\n>\n> > nested quote\n>\n> ```\n> quoted code\n> ```\n\n\
Paragraph after.\n",
    // Unknown language, tildes, an unclosed fence at the end with blank lines inside.
    "Intro text\nsoft broken.\n\n~~~zig\nconst x = 1;\n~~~\n\n```unknown-lang\nwhatever {{ }}\n\n\nmore\n```\n\n\
Text between.\n\n```js\nconsole.log('open fence');\n\nlet a = `tpl`;\n\n",
    // Loose list, rule, setext heading, html, hard break, strikethrough.
    "Title\n=====\n\n* item one\n\n* item two\n\n  second para of two\n\n* item three\n\n---\n\n\
<div>\nhtml block\n</div>\n\nline with hard break  \nnext ~~gone~~ here\n\nSub\n---\n\nend",
    // Reference links defined after use, broken brackets, CJK and emoji sequences.
    "See [the guide][g] and [missing] and arr[0].\n\n中文段落，包含全角字符。\n\n\
👨‍👩‍👧‍👦 family, 🇯🇵 flag, e\u{301} accent.\n\n[g]: https://example.com/guide \"Guide\"\n\nAfter defs [g].\n",
    // Ordered list starting at 7, code inside a list item, table without trailing pipes.
    "7. seven\n8. eight\n\n   ```sh\n   echo hi\n   ```\n9. nine\n\na | b\n--|--\n1 | 2\n3 | 4\n\n    indented code block\n    \tsecond line\n\nfinal paragraph with trailing spaces   ",
    // A table that arrives row by row after a paragraph, then an emoji heading.
    "Lead-in paragraph\n\n| h1 | h2 |\n| --- | --- |\n| a | b |\n| c | d |\n\n### 🎉 Party\n\nbye\n",
    // Fence that ends the message unclosed, with a long line.
    "```rust\nfn long() { let v = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17]; }\n// trailing",
];

const FRAGMENTS: &[&str] = &[
    "",
    "",
    "plain text",
    "more *emph",
    "asis* here",
    "# heading",
    "Setext",
    "===",
    "---",
    "***",
    "- item",
    "  - nested",
    "    continued",
    "1. first",
    "2) second",
    "10. tenth",
    "- [ ] task",
    "> quote",
    "> > deeper",
    ">",
    "lazy line",
    "```rust",
    "```",
    "~~~",
    "~~~python",
    "````",
    "let x = [1, 2];",
    "    indented code",
    "\tTabbed",
    "| a | b |",
    "|---|:-:|",
    "| 1 | 漢字 |",
    "a | b",
    "<div>",
    "</div>",
    "<!-- comment -->",
    "[ref]: https://example.com/r",
    "[ref] and [other][ref] and [nope]",
    "[nope]: /late",
    "see <https://auto.link>",
    "emoji 👩‍💻 and e\u{301}",
    "trailing hard  ",
    "\\escaped \\* star",
    "- > quote in a list",
    "  > indented quote",
    "+ plus item",
    "* star item",
    "   - three-space item",
    "  ```",
    "1. ```py",
    "<pre>",
    "</pre>",
    "[multi]:",
    "  https://example.com/multi \"title\"",
    "[multi] use",
    "* * *",
    "text with `code",
    "close` tick",
    "![img](/x.png) image",
    "line ending in backslash\\",
    "&amp; entity &copy;",
];

fn stream_with_splits(text: &str, cuts: &[usize], styles: &MarkdownStyles) -> Vec<Line<'static>> {
    let mut s = MarkdownStream::new(styles.clone());
    let mut committed_so_far: Vec<Line<'static>> = Vec::new();
    let mut pos = 0;
    for &cut in cuts {
        let mut end = cut.min(text.len()).max(pos);
        while !text.is_char_boundary(end) {
            end += 1;
        }
        s.push(&text[pos..end]);
        pos = end;
        // Committed lines never change once committed.
        assert!(
            s.committed().starts_with(&committed_so_far),
            "committed lines changed after pushing up to byte {pos}"
        );
        committed_so_far = s.committed().to_vec();
        // What the pane shows is always exactly the render of what has arrived.
        let mut shown = s.committed().to_vec();
        shown.extend(s.tail_lines());
        assert_eq!(
            shown,
            render(&text[..pos], styles),
            "committed + tail differs from render after {pos} bytes"
        );
    }
    s.push(&text[pos..]);
    s.finish();
    assert!(s.committed().starts_with(&committed_so_far));
    s.committed().to_vec()
}

#[test]
fn streamed_equals_full_at_every_char_boundary() {
    let styles = MarkdownStyles::dark();
    for text in CORPUS {
        let full = render(text, &styles);
        let boundaries: Vec<usize> = text.char_indices().map(|(i, _)| i).skip(1).collect();
        // One push per char: every boundary, including inside emoji ZWJ sequences, flags,
        // combining accents and fence markers, is a split point.
        let got = stream_with_splits(text, &boundaries, &styles);
        assert_eq!(
            got,
            full,
            "mismatch for corpus entry starting {:?}",
            &text[..20]
        );
    }
}

#[test]
fn streamed_equals_full_for_line_sized_chunks() {
    let styles = MarkdownStyles::light();
    for text in CORPUS {
        let cuts: Vec<usize> = text.match_indices('\n').map(|(i, _)| i + 1).collect();
        assert_eq!(
            stream_with_splits(text, &cuts, &styles),
            render(text, &styles)
        );
    }
}

#[test]
fn stream_commits_before_the_end() {
    // Committing must actually happen, or the per-push cost is the whole message.
    let text = CORPUS[0];
    let mut s = MarkdownStream::new(MarkdownStyles::dark());
    // Stop inside the open rust fence: everything above it and its finished lines are final.
    let cut = text.find("    takes(s)").unwrap() + 4;
    s.push(&text[..cut]);
    let committed: Vec<String> = s
        .committed()
        .iter()
        .map(|l| l.spans.iter().map(|s| s.content.as_ref()).collect())
        .collect();
    assert_eq!(committed.len(), 24, "{committed:#?}");
    assert_eq!(committed[22], "fn main() {");
    assert_eq!(committed[23], "    let s = String::from(\"hi\");");
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn streamed_equals_full_for_random_splits(
        idx in 0..CORPUS.len(),
        mut cuts in proptest::collection::vec(0usize..2000, 0..60),
        repeat in 1usize..3,
    ) {
        let text = CORPUS[idx].repeat(repeat);
        let styles = MarkdownStyles::dark();
        cuts.sort_unstable();
        let got = stream_with_splits(&text, &cuts, &styles);
        prop_assert_eq!(got, render(&text, &styles));
    }

    #[test]
    fn mixed_documents_stream_like_they_render(
        parts in proptest::collection::vec(0..CORPUS.len(), 1..4),
        chunk in 1usize..24,
    ) {
        let text: String = parts.iter().map(|&i| CORPUS[i]).collect::<Vec<_>>().join("\n");
        let styles = MarkdownStyles::dark();
        let cuts: Vec<usize> = (1..text.len() / chunk + 1).map(|k| k * chunk).collect();
        prop_assert_eq!(stream_with_splits(&text, &cuts, &styles), render(&text, &styles));
    }

    #[test]
    fn wrapping_never_panics_or_overflows(idx in 0..CORPUS.len(), width in 0u16..50) {
        let lines = render(CORPUS[idx], &MarkdownStyles::dark());
        let rows = wrap_lines(&lines, width);
        if width == 0 {
            prop_assert!(rows.is_empty());
        }
        for row in &rows {
            let w: usize = row.spans.iter().map(|s| unicode_width::UnicodeWidthStr::width(s.content.as_ref())).sum();
            // Only a single grapheme wider than the pane may overflow it.
            prop_assert!(w <= width.max(2) as usize, "row {:?} is {} wide at width {}", row, w, width);
        }
        // Nothing is lost or duplicated: only spaces at break points, padding and repeated
        // quote bars differ (rules are stretched to the width instead).
        let squash = |s: &str| s.chars().filter(|c| !c.is_whitespace() && *c != '│').collect::<String>();
        for line in &lines {
            let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
            if width == 0 || text.trim_start_matches(['│', ' ']).starts_with('─') {
                continue;
            }
            let rows: String = wrap_lines(std::slice::from_ref(line), width)
                .iter()
                .flat_map(|r| r.spans.iter().map(|s| s.content.to_string()))
                .collect();
            prop_assert_eq!(squash(&rows), squash(&text));
        }
    }
}

proptest! {
    // Cheap cases that find block-boundary bugs the corpus misses; run more of them.
    #![proptest_config(config(256))]

    /// Random text dense in markdown punctuation: no panics, and streaming still matches.
    #[test]
    fn punctuation_noise_streams_like_it_renders(
        text in "[\\[\\]`*_#>|\\-\n \t~0-9a-z:/!<()=.+\u{1b}漢👍]{0,300}",
        chunk in 1usize..7,
    ) {
        let styles = MarkdownStyles::dark();
        let cuts: Vec<usize> = (1..text.len() / chunk + 1).map(|k| k * chunk).collect();
        let lines = stream_with_splits(&text, &cuts, &styles);
        prop_assert_eq!(&lines, &render(&text, &styles));
        let _ = wrap_lines(&lines, 7);
    }

    /// Random documents built from lines that open, continue and close every construct, to
    /// hit block boundaries the hand-written corpus does not.
    #[test]
    fn random_line_soup_streams_like_it_renders(
        picks in proptest::collection::vec(0..FRAGMENTS.len(), 1..40),
        chunk in 1usize..9,
    ) {
        let text: String = picks.iter().map(|&i| FRAGMENTS[i]).collect::<Vec<_>>().join("\n");
        let styles = MarkdownStyles::dark();
        let cuts: Vec<usize> = (1..text.len() / chunk + 1).map(|k| k * chunk).collect();
        prop_assert_eq!(stream_with_splits(&text, &cuts, &styles), render(&text, &styles));
    }
}

/// One line per logical line, then its spans with their styles: a readable, style-aware dump.
fn dump(lines: &[Line]) -> String {
    let mut out = String::new();
    for line in lines {
        let text: String = line.spans.iter().map(|s| s.content.as_ref()).collect();
        out.push_str(&format!("{text:?}"));
        if line.style != Default::default() {
            out.push_str(&format!("  line={:?}", line.style));
        }
        out.push('\n');
        for span in &line.spans {
            out.push_str(&format!("    {:?} {:?}\n", span.content, span.style));
        }
    }
    out
}

const SNAPSHOT_DOC: &str = "# Heading\n\nSome *em* and **strong** and ~~del~~ with `code` and \
[a link](https://example.com).\n\n> quoted\n\n- [x] done\n  1. inner\n\n| a | b |\n|---|--:|\n| 1 | 22 |\n\n\
```rust\nlet x = 1;\n```\n\n---\n";

#[test]
fn snapshot_dark_preset() {
    insta::assert_snapshot!(dump(&render(SNAPSHOT_DOC, &MarkdownStyles::dark())));
}

#[test]
fn snapshot_light_preset() {
    insta::assert_snapshot!(dump(&render(SNAPSHOT_DOC, &MarkdownStyles::light())));
}

/// The flow the chat pane follows (see the module docs): cached rows for committed lines,
/// the tail wrapped per frame, and the finished stream equal to a fresh render.
#[test]
fn chat_pane_flow_matches_a_full_render_at_every_frame() {
    let styles = MarkdownStyles::dark();
    let text = CORPUS[0];
    let width = 24;
    let mut stream = MarkdownStream::new(styles.clone());
    let mut cache = super::WrapCache::new();
    for (i, piece) in text.split_inclusive(' ').enumerate() {
        stream.push(piece);
        let mut rows = cache.wrap(stream.committed(), width).to_vec();
        rows.extend(wrap_lines(&stream.tail_lines(), width));
        if i % 7 == 0 {
            let arrived = stream.source().to_string();
            assert_eq!(rows, wrap_lines(&render(&arrived, &styles), width));
        }
    }
    stream.finish();
    let rows = cache.wrap(stream.committed(), width).to_vec();
    assert_eq!(rows, wrap_lines(&render(text, &styles), width));
    assert_eq!(stream.into_lines(), render(text, &styles));
}
