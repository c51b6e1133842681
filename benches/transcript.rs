//! Transcript rendering cost: a 2,000-message history with code, then 60 streamed tokens into
//! the last message, measuring per-push + wrap of the visible window the way the chat pane
//! does it (cached rows for finished messages, incremental wrap of committed lines, the tail
//! re-rendered every frame).
//!
//! Run without a release build: `cargo test --bench transcript` (dev profile, deps at
//! opt-level 3, this crate at opt-level 0, so the numbers are an upper bound).

#[path = "support/corpus.rs"]
mod corpus;
use corpus::message;
use std::time::{Duration, Instant};

use influence::markdown::{render, wrap_lines, MarkdownStream, MarkdownStyles, WrapCache};
use ratatui::text::Line;

const MESSAGES: usize = 2_000;
const WIDTH: u16 = 100;
const VISIBLE_ROWS: usize = 50;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn main() {
    let styles = MarkdownStyles::dark();

    // Warm syntect's lazily loaded sets so they do not count against the first message.
    let t = Instant::now();
    let _ = render("```rust\nfn main() {}\n```", &styles);
    let warm = t.elapsed();

    let t = Instant::now();
    let history: Vec<Vec<Line<'static>>> = (0..MESSAGES)
        .map(|i| render(&message(i), &styles))
        .collect();
    let render_all = t.elapsed();
    let logical: usize = history.iter().map(Vec::len).sum();

    let t = Instant::now();
    let mut caches: Vec<WrapCache> = history
        .iter()
        .map(|lines| {
            let mut c = WrapCache::new();
            c.wrap(lines, WIDTH);
            c
        })
        .collect();
    let wrap_all = t.elapsed();
    let rows: usize = caches.iter().map(|c| c.rows().len()).sum();

    println!("transcript benchmark (dev profile; this crate unoptimized, deps at opt-level 3)");
    println!("  syntect first use          {warm:>10.2?}");
    println!("  render {MESSAGES} messages       {render_all:>10.2?}  ({logical} logical lines)");
    println!("  wrap all at width {WIDTH}     {wrap_all:>10.2?}  ({rows} rows)");

    let last = message(MESSAGES + 1);
    stream_scenario("streaming", &last, &styles, &mut caches);
    // An unresolved `[1]` early in the message keeps the rest uncommitted (a later definition
    // could turn it into a link), which is the stream's slow path.
    let held = last.replace("with `?`.", "with `?` [1].");
    stream_scenario("held [1]", &held, &styles, &mut caches);
}

/// 60 tokens that cross a list and a code fence, each followed by one frame: committed rows
/// (incremental), the tail, and enough cached history rows above to fill the window.
fn stream_scenario(name: &str, last: &str, styles: &MarkdownStyles, caches: &mut [WrapCache]) {
    let all_tokens = split_tokens(last);
    let mut stream = MarkdownStream::new(styles.clone());
    // The first tokens arrive before the measurement, so the measured ones run through the
    // list and into the code block.
    for tok in &all_tokens[..30] {
        stream.push(tok);
    }
    let tokens = &all_tokens[30..90];
    let mut stream_cache = WrapCache::new();
    let mut push_times = Vec::new();
    let mut frame_times = Vec::new();
    for tok in tokens {
        let t = Instant::now();
        stream.push(tok);
        let pushed = t.elapsed();
        let committed_rows = stream_cache.wrap(stream.committed(), WIDTH).len();
        let tail_rows = wrap_lines(&stream.tail_lines(), WIDTH);
        let mut visible = committed_rows + tail_rows.len();
        for c in caches.iter_mut().rev() {
            if visible >= VISIBLE_ROWS {
                break;
            }
            visible += c.rows().len();
        }
        std::hint::black_box(visible);
        push_times.push(pushed);
        frame_times.push(t.elapsed());
    }
    let t = Instant::now();
    stream.finish();
    let finish = t.elapsed();
    assert_eq!(
        stream.committed(),
        render(stream.source(), styles).as_slice()
    );

    push_times.sort();
    frame_times.sort();
    println!("  {name}:");
    println!(
        "    push only   p50 {:>9.2?}  p95 {:>9.2?}  max {:>9.2?}",
        percentile(&push_times, 0.5),
        percentile(&push_times, 0.95),
        push_times[push_times.len() - 1]
    );
    println!(
        "    push+frame  p50 {:>9.2?}  p95 {:>9.2?}  max {:>9.2?}",
        percentile(&frame_times, 0.5),
        percentile(&frame_times, 0.95),
        frame_times[frame_times.len() - 1]
    );
    println!("    finish                   {finish:>10.2?}");
}

/// Splits like a tokenizer would: short pieces, newlines kept attached.
fn split_tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if (c == ' ' || c == '\n') && i > start {
            out.push(&text[start..i]);
            start = i;
        }
    }
    out.push(&text[start..]);
    out
}
