//! Chat pane frame cost: a 2,000-message transcript with code, an answer streaming in at 60
//! tokens/s (one token per 60 fps frame, fed through `update` like the app does), and the whole
//! screen drawn on `TestBackend` 120×40 each frame. Also: keystroke → drawn frame latency while
//! streaming, the cold first frame, and RSS.
//!
//! Run without a release build: `cargo bench --bench chat_frames` (dev profile: this crate at
//! opt-level 0, deps at opt-level 3, so the numbers are an upper bound).

#[path = "support/corpus.rs"]
mod corpus;
use corpus::message;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use influence::app::chat::{Backend, ChatModel, ChatMsg};
use influence::app::effect::Effect;
use influence::app::msg::Msg;
use influence::app::state::{Pane, State};
use influence::app::update::update;
use influence::config::keymap::Keymap;
use influence::config::theme::Theme;
use influence::conversations::{Conversation, MessageStats};
use influence::engine::GenEvent;
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const MESSAGES: usize = 2_000;
const FRAMES: usize = 600;
const FRAME_BUDGET: Duration = Duration::from_micros(16_667);

/// Splits like a tokenizer would: short pieces, spaces and newlines leading.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if (c == ' ' || c == '\n') && i > start {
            out.push(text[start..i].to_string());
            start = i;
        }
    }
    out.push(text[start..].to_string());
    out
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn stats_line(name: &str, v: &mut [Duration]) {
    v.sort();
    println!(
        "  {name:<28} p50 {:>9.2?}  p95 {:>9.2?}  max {:>9.2?}  (n={})",
        percentile(v, 0.5),
        percentile(v, 0.95),
        v[v.len() - 1],
        v.len()
    );
}

fn mib(b: Option<u64>) -> String {
    b.map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0))
}

fn main() {
    let rss_start = influence::procmem::rss_bytes();
    let mut state = State::new(
        Theme::dark(),
        vec!["dark".into()],
        Keymap::load(&BTreeMap::new()).expect("default keymap"),
        (120, 40),
    );
    state.focus = Pane::Chat;
    state.main_pane = Pane::Chat;
    state.chat.input_focused = true;
    state.chat.model = Some(ChatModel {
        name: "bench".into(),
        backend: Backend::Local("bench.gguf".into()),
        context_length: 8192,
        keeps_thinking: false,
        gpu_layers: None,
    });
    let mut conv = Conversation::new();
    for i in 0..MESSAGES {
        if i.is_multiple_of(2) {
            conv.push_user(message(i));
        } else {
            conv.start_assistant();
            conv.append_token(&message(i)).unwrap();
            conv.finish_assistant(MessageStats {
                model: "bench".into(),
                ttft_ms: 80,
                tok_s: 40.0,
                tokens: 300,
            })
            .unwrap();
        }
    }
    state.chat.conv = conv;
    let mut term = Terminal::new(TestBackend::new(120, 40)).unwrap();

    // Cold first frame: only the visible messages are rendered and wrapped.
    let t = Instant::now();
    term.draw(|f| influence::ui::draw(f, &state)).unwrap();
    let first = t.elapsed();
    let rss_loaded = influence::procmem::rss_bytes();

    // Send a prompt; the answer streams one token per frame.
    for c in "Show me the code again".chars() {
        update(
            &mut state,
            Msg::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)),
        );
    }
    let fx = update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
    );
    let seq = fx
        .iter()
        .find_map(|e| match e {
            Effect::Chat(influence::app::chat::ChatEffect::Generate { seq, .. }) => Some(*seq),
            _ => None,
        })
        .expect("send starts a generation");
    let mut answer = String::new();
    for i in 0..4 {
        answer.push_str(&message(2 * i + 1));
    }
    let toks = tokens(&answer);
    let mut frame = Vec::with_capacity(FRAMES);
    let mut token_and_frame = Vec::with_capacity(FRAMES);
    let mut key_to_screen = Vec::new();
    let mut over_budget = 0;
    for (n, tok) in toks.iter().cycle().take(FRAMES).enumerate() {
        let t0 = Instant::now();
        update(
            &mut state,
            Msg::Chat(ChatMsg::Gen {
                seq,
                elapsed_ms: n as f64 * 16.7,
                event: GenEvent::Token {
                    id: 0,
                    text: tok.clone(),
                    logprob: None,
                },
            }),
        );
        // Every 10th frame the user also types a key while the answer streams.
        let typed = n.is_multiple_of(10);
        if typed {
            update(
                &mut state,
                Msg::Key(KeyEvent::new(KeyCode::Char('x'), KeyModifiers::NONE)),
            );
        }
        let t1 = Instant::now();
        term.draw(|f| influence::ui::draw(f, &state)).unwrap();
        let t2 = Instant::now();
        frame.push(t2 - t1);
        token_and_frame.push(t2 - t0);
        if typed {
            key_to_screen.push(t2 - t0);
            if t2 - t0 > FRAME_BUDGET {
                over_budget += 1;
            }
        }
    }
    // Jumping to the first message lays out only the first screenful.
    update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
    );
    update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
    );
    let t = Instant::now();
    update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE)),
    );
    term.draw(|f| influence::ui::draw(f, &state)).unwrap();
    let home_cold = t.elapsed();
    let t = Instant::now();
    update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::End, KeyModifiers::NONE)),
    );
    update(
        &mut state,
        Msg::Key(KeyEvent::new(KeyCode::Home, KeyModifiers::NONE)),
    );
    term.draw(|f| influence::ui::draw(f, &state)).unwrap();
    let home_warm = t.elapsed();
    let rss_end = influence::procmem::rss_bytes();
    let typed: String = state.chat.input.lines().join("");
    assert!(typed.ends_with("xxxxx"), "typed keys reached the input");

    println!("chat_frames benchmark (dev profile; this crate unoptimized, deps at opt-level 3)");
    println!("  transcript: {MESSAGES} messages with code; screen 120x40; {FRAMES} frames at 1 token/frame (60 tok/s at 60 fps)");
    println!("  cold first frame             {first:>9.2?}");
    stats_line("frame (draw only)", &mut frame);
    stats_line("token + frame", &mut token_and_frame);
    stats_line("keystroke -> drawn frame", &mut key_to_screen);
    println!(
        "  keystrokes over one 16.7 ms frame: {over_budget} of {}",
        key_to_screen.len()
    );
    println!("  Home (first message), cold   {home_cold:>9.2?}");
    println!("  End + Home, warm             {home_warm:>9.2?}");
    println!(
        "  RSS: start {}, transcript loaded {}, after streaming {}",
        mib(rss_start),
        mib(rss_loaded),
        mib(rss_end)
    );
}
