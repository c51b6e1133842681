//! Markdown for the chat transcript: pulldown-cmark events become width-free logical lines
//! (`render`), a newline-gated collector keeps the streamed message cheap (`MarkdownStream`),
//! and `wrap_lines` reflows logical lines to the pane width at draw time.
//!
//! Lines carry no width, so a resize only rewraps. How the chat pane is meant to use this:
//!
//! ```text
//! finished message:  lines = render(&content, &styles)          // once per message (and theme)
//!                    rows  = msg.wrap_cache.wrap(&lines, width)  // cached per width
//! streamed message:  on each token:  stream.push(delta)          // cheap; commits at '\n'
//!                    on each frame:  rows  = cache.wrap(stream.committed(), width)
//!                                              // committed lines only grow, so only new
//!                                              // lines are wrapped
//!                                    rows += wrap_lines(&stream.tail_lines(), width)
//!                                              // the unfinished block; never cache it
//!                    on GenDone:     stream.finish(); lines = stream.into_lines()
//!                                              // == render(&content, &styles)
//! draw:              only the rows inside the viewport; a row whose `Line::style` has a
//!                    background is a code row and is already padded to the width.
//! ```
//!
//! On a theme change, re-render (and `WrapCache::invalidate`) every message.

pub mod ansi;
mod card;
mod highlight;
mod render;
mod stream;
#[cfg(test)]
mod tests;
mod wrap;

pub use card::{card_text, render_model_card};
pub use highlight::theme_names;
pub use render::render;
pub use stream::MarkdownStream;
pub use wrap::{wrap_lines, WrapCache};

use ratatui::style::{Color, Modifier, Style};

/// Styles by role. The app theme maps onto this; `syntect_theme` names one of syntect's
/// bundled themes (see [`theme_names`]); unknown names fall back to the preset's default.
#[derive(Debug, Clone, PartialEq)]
pub struct MarkdownStyles {
    pub text: Style,
    pub heading: Style,
    pub emphasis: Style,
    pub strong: Style,
    pub code_inline: Style,
    /// Background for fenced and indented code blocks; only its `bg` is used on code lines.
    pub code_bg: Style,
    pub link: Style,
    pub quote: Style,
    pub list_marker: Style,
    pub rule: Style,
    pub muted: Style,
    pub table_border: Style,
    pub syntect_theme: String,
}

impl MarkdownStyles {
    pub fn dark() -> Self {
        Self {
            text: Style::new().fg(Color::Rgb(0xd8, 0xde, 0xe9)),
            heading: Style::new()
                .fg(Color::Rgb(0x88, 0xc0, 0xd0))
                .add_modifier(Modifier::BOLD),
            emphasis: Style::new().add_modifier(Modifier::ITALIC),
            strong: Style::new().add_modifier(Modifier::BOLD),
            code_inline: Style::new()
                .fg(Color::Rgb(0xeb, 0xcb, 0x8b))
                .bg(Color::Rgb(0x3b, 0x42, 0x52)),
            code_bg: Style::new().bg(Color::Rgb(0x2b, 0x30, 0x3b)),
            link: Style::new()
                .fg(Color::Rgb(0x81, 0xa1, 0xc1))
                .add_modifier(Modifier::UNDERLINED),
            quote: Style::new().fg(Color::Rgb(0xa3, 0xbe, 0x8c)),
            list_marker: Style::new().fg(Color::Rgb(0xb4, 0x8e, 0xad)),
            rule: Style::new().fg(Color::Rgb(0x4c, 0x56, 0x6a)),
            muted: Style::new().fg(Color::Rgb(0x7b, 0x88, 0xa1)),
            table_border: Style::new().fg(Color::Rgb(0x4c, 0x56, 0x6a)),
            syntect_theme: "base16-ocean.dark".into(),
        }
    }

    pub fn light() -> Self {
        Self {
            text: Style::new().fg(Color::Rgb(0x24, 0x29, 0x2e)),
            heading: Style::new()
                .fg(Color::Rgb(0x03, 0x66, 0xd6))
                .add_modifier(Modifier::BOLD),
            emphasis: Style::new().add_modifier(Modifier::ITALIC),
            strong: Style::new().add_modifier(Modifier::BOLD),
            code_inline: Style::new()
                .fg(Color::Rgb(0xd7, 0x3a, 0x49))
                .bg(Color::Rgb(0xee, 0xf0, 0xf3)),
            code_bg: Style::new().bg(Color::Rgb(0xf6, 0xf8, 0xfa)),
            link: Style::new()
                .fg(Color::Rgb(0x03, 0x66, 0xd6))
                .add_modifier(Modifier::UNDERLINED),
            quote: Style::new().fg(Color::Rgb(0x22, 0x86, 0x3a)),
            list_marker: Style::new().fg(Color::Rgb(0x6f, 0x42, 0xc1)),
            rule: Style::new().fg(Color::Rgb(0xd1, 0xd5, 0xda)),
            muted: Style::new().fg(Color::Rgb(0x6a, 0x73, 0x7d)),
            table_border: Style::new().fg(Color::Rgb(0xd1, 0xd5, 0xda)),
            syntect_theme: "InspiredGitHub".into(),
        }
    }
}

impl Default for MarkdownStyles {
    fn default() -> Self {
        Self::dark()
    }
}
