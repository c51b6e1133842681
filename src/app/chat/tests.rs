//! Chat transitions: Msgs in, State and Effects out. No runtime, no terminal.

use super::*;
use crate::app::effect::Effect;
use crate::app::msg::Msg;
use crate::app::tests::test_state;
use crate::app::update::update;
use crate::engine::{FinishReason, GenStats};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

fn typ(s: &mut State, text: &str) {
    for c in text.chars() {
        update(s, ch(c));
    }
}

fn local_model() -> ChatModel {
    ChatModel {
        name: "fake".into(),
        backend: Backend::Local("fake/chat.gguf".into()),
        context_length: 100,
        keeps_thinking: false,
        gpu_layers: None,
    }
}

/// A state with the chat focused, a model loaded and the input focused.
fn chat_state() -> State {
    let mut s = test_state(100, 30);
    update(&mut s, ch('4'));
    update(&mut s, ch('i'));
    s.chat.model = Some(local_model());
    s
}

fn gen(seq: u64, ms: f64, event: GenEvent) -> Msg {
    Msg::Chat(ChatMsg::Gen {
        seq,
        elapsed_ms: ms,
        event,
    })
}

fn tok(seq: u64, ms: f64, t: &str) -> Msg {
    gen(
        seq,
        ms,
        GenEvent::Token {
            id: 1,
            text: t.into(),
            logprob: None,
        },
    )
}

fn stats(n: usize, finish: FinishReason) -> GenStats {
    GenStats {
        prompt_tokens: 10,
        cached_tokens: 0,
        generated_tokens: n,
        ttft_ms: 50.0,
        prompt_ms: 40.0,
        gen_ms: 100.0,
        prompt_tok_s: 250.0,
        gen_tok_s: 30.0,
        finish,
    }
}

fn generate_seq(effects: &[Effect]) -> Option<u64> {
    effects.iter().find_map(|e| match e {
        Effect::Chat(ChatEffect::Generate { seq, .. }) => Some(*seq),
        _ => None,
    })
}

fn has_save(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Chat(ChatEffect::Save(_))))
}

/// Sends `text` and streams `tokens` to completion; returns the generation's seq.
fn exchange(s: &mut State, text: &str, tokens: &[&str]) -> u64 {
    typ(s, text);
    let fx = update(s, key(KeyCode::Enter));
    let seq = generate_seq(&fx).expect("send starts a generation");
    update(
        s,
        gen(
            seq,
            5.0,
            GenEvent::Started {
                prompt_tokens: 10,
                cached_tokens: 0,
                dropped_messages: 0,
            },
        ),
    );
    for (i, t) in tokens.iter().enumerate() {
        update(s, tok(seq, 50.0 + i as f64 * 10.0, t));
    }
    let fx = update(
        s,
        gen(
            seq,
            200.0,
            GenEvent::Done(stats(tokens.len(), FinishReason::Stop)),
        ),
    );
    assert!(has_save(&fx), "a finished answer is saved");
    seq
}

#[test]
fn typing_in_the_input_captures_q_but_ctrl_c_quits() {
    let mut s = chat_state();
    assert!(s.typing());
    typ(&mut s, "q?1");
    assert_eq!(s.chat.input_text(), "q?1");
    assert!(!s.quit && s.help.is_none() && s.focus == Pane::Chat);
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(s.quit);
}

#[test]
fn send_appends_user_and_streaming_answer_and_asks_for_generate_and_save() {
    let mut s = chat_state();
    typ(&mut s, "What is the capital of France?");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert_eq!(s.chat.input_text(), "", "the input is cleared");
    let msgs = &s.chat.conv.messages;
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].content, "What is the capital of France?");
    assert_eq!(msgs[1].role, ConvRole::Assistant);
    assert!(msgs[1].content.is_empty());
    assert!(s.chat.running.is_some());
    match &fx[0] {
        Effect::Chat(ChatEffect::Generate {
            messages, params, ..
        }) => {
            // The config's system prompt (empty in the test state) is omitted; the user turn is
            // last and the empty answer is not sent.
            assert_eq!(messages.last().unwrap().content, msgs[0].content);
            assert_eq!(messages.len(), 1);
            assert_eq!(params, &s.params.params);
        }
        other => panic!("expected Generate first, got {other:?}"),
    }
    assert!(has_save(&fx));
    assert_eq!(s.chat.prompt_history, vec![msgs[0].content.clone()]);
}

#[test]
fn system_prompt_and_params_go_with_the_request() {
    let mut s = chat_state();
    s.params.system_prompt = "You are a helpful assistant.".into();
    s.params.set(params::Field::Temperature, "0.25").unwrap();
    typ(&mut s, "hi");
    let fx = update(&mut s, key(KeyCode::Enter));
    let Effect::Chat(ChatEffect::Generate {
        messages, params, ..
    }) = &fx[0]
    else {
        panic!("{fx:?}")
    };
    assert_eq!(messages[0].role, crate::engine::Role::System);
    assert_eq!(messages[0].content, "You are a helpful assistant.");
    assert_eq!(params.temperature, 0.25);
}

#[test]
fn tokens_stream_into_the_answer_and_done_stores_stats() {
    let mut s = chat_state();
    let seq = exchange(&mut s, "hi", &["Par", "is", " is\n", "the **capital**."]);
    let m = &s.chat.conv.messages[1];
    assert_eq!(m.content, "Paris is\nthe **capital**.");
    let st = m.stats.as_ref().unwrap();
    assert_eq!((st.ttft_ms, st.tokens, st.model.as_str()), (50, 4, "fake"));
    assert!(!m.interrupted);
    assert!(s.chat.running.is_none() && s.chat.stream.is_none());
    assert_eq!(s.chat.last_tok_s, Some(30.0));
    assert_eq!(s.chat.context.used, 14);
    // Late events of a finished generation are ignored.
    update(&mut s, tok(seq, 300.0, "junk"));
    assert_eq!(
        s.chat.conv.messages[1].content,
        "Paris is\nthe **capital**."
    );
}

#[test]
fn send_without_a_model_explains_and_keeps_the_text() {
    let mut s = chat_state();
    s.chat.model = None;
    typ(&mut s, "hello");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert!(fx.is_empty());
    assert_eq!(s.chat.input_text(), "hello");
    let n = s.status.notice.as_ref().unwrap();
    assert!(n.error && n.text.contains("/model"), "{}", n.text);
}

#[test]
fn esc_stops_at_once_keeps_the_partial_answer_and_drops_later_tokens() {
    let mut s = chat_state();
    typ(&mut s, "count");
    let seq = generate_seq(&update(&mut s, key(KeyCode::Enter))).unwrap();
    update(&mut s, tok(seq, 40.0, "one"));
    update(&mut s, tok(seq, 60.0, " two"));
    let fx = update(&mut s, key(KeyCode::Esc));
    assert!(fx.contains(&Effect::Chat(ChatEffect::Cancel { seq })));
    assert!(has_save(&fx));
    assert!(s.chat.running.is_none());
    let m = &s.chat.conv.messages[1];
    assert_eq!(m.content, "one two");
    assert!(m.interrupted);
    assert_eq!(m.stats.as_ref().unwrap().tokens, 2);
    assert!(
        s.chat.input_focused,
        "Esc while generating stops, it does not leave"
    );
    update(&mut s, tok(seq, 80.0, " three"));
    update(
        &mut s,
        gen(seq, 90.0, GenEvent::Done(stats(3, FinishReason::Cancelled))),
    );
    assert_eq!(s.chat.conv.messages[1].content, "one two");
    // A second Esc, now idle, leaves the input so normal keys work.
    update(&mut s, key(KeyCode::Esc));
    assert!(!s.typing());
    update(&mut s, ch('q'));
    assert!(s.quit);
}

#[test]
fn regenerate_keeps_the_old_answer_as_an_alternative() {
    let mut s = chat_state();
    exchange(&mut s, "hi", &["first"]);
    update(&mut s, key(KeyCode::Esc)); // leave the input
    let fx = update(&mut s, ch('r'));
    let seq = generate_seq(&fx).expect("regenerate starts a generation");
    let Effect::Chat(ChatEffect::Generate { messages, .. }) = &fx[0] else {
        panic!()
    };
    assert_eq!(messages.len(), 1, "the old answer is not sent back");
    update(&mut s, tok(seq, 10.0, "second"));
    update(
        &mut s,
        gen(seq, 20.0, GenEvent::Done(stats(1, FinishReason::Stop))),
    );
    let m = &s.chat.conv.messages[1];
    assert_eq!(m.content, "second");
    assert_eq!(m.alternative_position(), (2, 2));
    // Page back to the first answer and forward again.
    update(&mut s, ch('h'));
    assert_eq!(s.chat.conv.messages[1].content, "first");
    update(&mut s, ch('l'));
    assert_eq!(s.chat.conv.messages[1].content, "second");
}

#[test]
fn edit_and_resend_keeps_the_old_branch() {
    let mut s = chat_state();
    exchange(&mut s, "first question", &["a1"]);
    exchange(&mut s, "second question", &["a2"]);
    update(&mut s, key(KeyCode::Esc));
    // Select the first user message: from the bottom, [ four times.
    for _ in 0..4 {
        update(&mut s, ch('['));
    }
    assert_eq!(s.chat.selected, Some(0));
    update(&mut s, ch('e'));
    assert!(s.typing());
    assert_eq!(s.chat.input_text(), "first question");
    assert_eq!(s.chat.editing, Some(0));
    for _ in 0.."question".len() {
        update(&mut s, key(KeyCode::Backspace));
    }
    typ(&mut s, "try");
    let fx = update(&mut s, key(KeyCode::Enter));
    let seq = generate_seq(&fx).unwrap();
    let msgs = &s.chat.conv.messages;
    assert_eq!(msgs.len(), 2, "the later turns left the active path");
    assert_eq!(msgs[0].content, "first try");
    assert_eq!(msgs[0].branch_position(), (2, 2));
    assert_eq!(msgs[0].branches[0].len(), 4, "the old branch is kept whole");
    update(&mut s, tok(seq, 1.0, "b1"));
    update(
        &mut s,
        gen(seq, 2.0, GenEvent::Done(stats(1, FinishReason::Stop))),
    );
    // Paging the branch brings the old conversation back.
    update(&mut s, key(KeyCode::Esc));
    s.chat.selected = Some(0);
    update(&mut s, ch('h'));
    assert_eq!(s.chat.conv.messages.len(), 4);
    assert_eq!(s.chat.conv.messages[0].content, "first question");
}

#[test]
fn scroll_follows_until_the_user_scrolls_up_then_holds_still() {
    let mut s = chat_state();
    for i in 0..20 {
        exchange(
            &mut s,
            &format!("question {i}"),
            &["line one\n", "line two\n"],
        );
    }
    assert_eq!(s.chat.scroll, 0, "following the stream");
    update(&mut s, key(KeyCode::PageUp));
    let up = s.chat.scroll;
    assert!(up > 0);
    // A new answer streams while the user reads above: the view stays on the same rows.
    typ(&mut s, "more");
    let seq = generate_seq(&update(&mut s, key(KeyCode::Enter))).unwrap();
    assert_eq!(s.chat.scroll, 0, "sending jumps back to the bottom");
    update(&mut s, key(KeyCode::PageUp));
    let before = s.chat.scroll;
    for _ in 0..5 {
        update(&mut s, tok(seq, 1.0, "a new paragraph\n\n"));
    }
    assert!(
        s.chat.scroll >= before + 5,
        "scroll {} should have grown by the 5 new rows from {before}",
        s.chat.scroll
    );
    // End jumps to the bottom and follows again.
    update(&mut s, key(KeyCode::Esc)); // stops the generation
    update(&mut s, key(KeyCode::Esc)); // leaves the input
    update(&mut s, key(KeyCode::End));
    assert_eq!(s.chat.scroll, 0);
    // Scrolling far up is clamped at the first row.
    for _ in 0..100 {
        update(&mut s, key(KeyCode::PageUp));
    }
    let top = s.chat.scroll;
    update(&mut s, ch('k'));
    assert_eq!(s.chat.scroll, top);
    update(&mut s, ch('j'));
    assert_eq!(s.chat.scroll, top - 1);
    // Home anchors at the first row without laying out the rest; scrolling down to the end
    // follows the stream again.
    update(&mut s, key(KeyCode::Home));
    assert_eq!(s.chat.top, Some(0));
    update(&mut s, ch('k'));
    assert_eq!(s.chat.top, Some(0));
    update(&mut s, ch('j'));
    assert_eq!(s.chat.top, Some(1));
    for _ in 0..100 {
        update(&mut s, key(KeyCode::PageDown));
    }
    assert_eq!((s.chat.top, s.chat.scroll), (None, 0));
}

#[test]
fn mouse_wheel_scrolls_the_transcript_not_the_history() {
    use crossterm::event::{MouseEvent, MouseEventKind};
    let mut s = chat_state();
    for i in 0..10 {
        exchange(&mut s, &format!("q{i}"), &["a\n", "b\n"]);
    }
    let wheel = |kind| {
        Msg::Mouse(MouseEvent {
            kind,
            column: 5,
            row: 5,
            modifiers: KeyModifiers::NONE,
        })
    };
    update(&mut s, wheel(MouseEventKind::ScrollUp));
    assert_eq!(s.chat.scroll, 3);
    assert_eq!(s.chat.input_text(), "");
    update(&mut s, wheel(MouseEventKind::ScrollDown));
    assert_eq!(s.chat.scroll, 0);
}

#[test]
fn prompt_history_with_up_and_down_at_the_edges() {
    let mut s = chat_state();
    exchange(&mut s, "one", &["x"]);
    exchange(&mut s, "two", &["y"]);
    typ(&mut s, "dra");
    update(&mut s, key(KeyCode::Up));
    assert_eq!(s.chat.input_text(), "two");
    update(&mut s, key(KeyCode::Up));
    assert_eq!(s.chat.input_text(), "one");
    update(&mut s, key(KeyCode::Down));
    update(&mut s, key(KeyCode::Down));
    assert_eq!(s.chat.input_text(), "dra", "the draft comes back");
    // Inside a multi-line message Up moves the cursor.
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)),
    );
    typ(&mut s, "ft");
    assert_eq!(s.chat.input_text(), "dra\nft");
    update(&mut s, key(KeyCode::Up));
    assert_eq!(s.chat.input_text(), "dra\nft");
    assert_eq!(s.chat.input.cursor().0, 0);
}

#[test]
fn paste_goes_into_the_input() {
    let mut s = chat_state();
    update(&mut s, Msg::Paste("line 1\r\nline 2".into()));
    assert_eq!(s.chat.input_text(), "line 1\nline 2");
}

#[test]
fn slash_commands_complete_set_and_report() {
    let mut s = chat_state();
    typ(&mut s, "/set te");
    update(&mut s, key(KeyCode::Tab));
    assert_eq!(s.chat.input_text(), "/set temperature ");
    typ(&mut s, "3");
    update(&mut s, key(KeyCode::Enter));
    let n = s.status.notice.clone().unwrap();
    assert!(n.error && n.text.contains("temperature"), "{}", n.text);
    assert_eq!(s.params.params.temperature, 0.7, "invalid value refused");
    assert_eq!(s.chat.input_text(), "/set temperature 3", "kept to fix it");
    update(&mut s, key(KeyCode::Backspace));
    typ(&mut s, "0.1");
    update(&mut s, key(KeyCode::Enter));
    assert_eq!(s.params.params.temperature, 0.1);
    typ(&mut s, "/system Be brief.");
    update(&mut s, key(KeyCode::Enter));
    assert_eq!(s.params.system_prompt, "Be brief.");
    typ(&mut s, "/export");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert!(matches!(
        &fx[..],
        [Effect::Chat(ChatEffect::Export {
            format: ExportFormat::Markdown,
            ..
        })]
    ));
    typ(&mut s, "/model openai:http://127.0.0.1:9#m");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert!(matches!(
        &fx[..],
        [Effect::Chat(ChatEffect::LoadModel { .. })]
    ));
    typ(&mut s, "/quit");
    update(&mut s, key(KeyCode::Enter));
    assert!(s.quit);
}

#[test]
fn model_loaded_applies_its_preset_and_stale_loads_are_ignored() {
    let mut s = chat_state();
    s.chat.model = None;
    let mut p = s.params.clone();
    p.set(params::Field::MaxTokens, "33").unwrap();
    s.params.presets.insert("smol".into(), p.preset());
    typ(&mut s, "/model smol");
    let fx = update(&mut s, key(KeyCode::Enter));
    let Effect::Chat(ChatEffect::LoadModel { seq, .. }) = fx[0].clone() else {
        panic!()
    };
    let model = ChatModel {
        name: "smol".into(),
        backend: Backend::Local("/m/smol.gguf".into()),
        context_length: 2048,
        keeps_thinking: false,
        gpu_layers: None,
    };
    update(
        &mut s,
        Msg::Chat(ChatMsg::ModelLoaded {
            seq: seq + 100,
            result: Ok(model.clone()),
        }),
    );
    assert!(s.chat.model.is_none(), "a stale load is dropped");
    update(
        &mut s,
        Msg::Chat(ChatMsg::ModelLoaded {
            seq,
            result: Ok(model),
        }),
    );
    assert_eq!(s.chat.model.as_ref().unwrap().name, "smol");
    assert_eq!(s.params.params.max_tokens, 33);
}

#[test]
fn a_model_split_between_gpu_and_cpu_says_so_when_ready() {
    let mut s = chat_state();
    typ(&mut s, "/model big");
    let fx = update(&mut s, key(KeyCode::Enter));
    let Effect::Chat(ChatEffect::LoadModel { seq, .. }) = fx[0].clone() else {
        panic!()
    };
    let model = ChatModel {
        name: "big".into(),
        backend: Backend::Local("/m/big.gguf".into()),
        context_length: 8192,
        keeps_thinking: false,
        gpu_layers: Some((20, 32)),
    };
    update(
        &mut s,
        Msg::Chat(ChatMsg::ModelLoaded {
            seq,
            result: Ok(model),
        }),
    );
    let notice = &s.status.notice.as_ref().unwrap().text;
    assert!(
        notice.contains("20 of 32 layers on the GPU, the rest on the CPU"),
        "{notice}"
    );
}

#[test]
fn sidebar_edits_validate_in_place_and_save_the_preset() {
    let mut s = chat_state();
    s.params.preset_for = Some("fake".into());
    update(&mut s, key(KeyCode::Esc)); // leave the input
    update(&mut s, ch('5'));
    assert_eq!(s.focus, Pane::Params);
    update(&mut s, key(KeyCode::Enter));
    assert!(s.typing());
    for _ in 0..5 {
        update(&mut s, key(KeyCode::Backspace));
    }
    typ(&mut s, "hot");
    update(&mut s, key(KeyCode::Enter));
    assert!(s.params.error.as_ref().unwrap().contains("number"));
    assert_eq!(s.params.params.temperature, 0.7);
    assert!(s.typing(), "the field stays open to fix it");
    for _ in 0..3 {
        update(&mut s, key(KeyCode::Backspace));
    }
    typ(&mut s, "0.4");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert_eq!(s.params.params.temperature, 0.4);
    assert!(!s.typing());
    assert!(
        matches!(&fx[..], [Effect::Chat(ChatEffect::SavePresets(p))] if p["fake"].params.temperature == 0.4)
    );
    update(&mut s, ch('j'));
    assert_eq!(s.params.field(), params::Field::TopP);
}

#[test]
fn context_meter_warns_near_the_limit_and_shows_dropped_messages() {
    let mut s = chat_state();
    typ(&mut s, "long");
    let seq = generate_seq(&update(&mut s, key(KeyCode::Enter))).unwrap();
    update(
        &mut s,
        gen(
            seq,
            1.0,
            GenEvent::Started {
                prompt_tokens: 85,
                cached_tokens: 0,
                dropped_messages: 2,
            },
        ),
    );
    assert_eq!(s.chat.context.dropped, 2);
    assert!(s.status.notice.as_ref().unwrap().text.contains("2 oldest"));
    update(&mut s, tok(seq, 2.0, "x"));
    update(
        &mut s,
        gen(
            seq,
            3.0,
            GenEvent::Done(GenStats {
                prompt_tokens: 85,
                generated_tokens: 1,
                ..stats(1, FinishReason::Stop)
            }),
        ),
    );
    let n = s.status.notice.as_ref().unwrap();
    assert!(n.text.contains("86/100"), "{}", n.text);
}

#[test]
fn copy_actions_ask_the_runner_for_osc52() {
    let mut s = chat_state();
    exchange(
        &mut s,
        "code please",
        &[
            "Here:\n",
            "```rust\nfn a() {}\n```\n",
            "and\n",
            "```\nb\n```\n",
        ],
    );
    update(&mut s, key(KeyCode::Esc));
    let fx = update(&mut s, ch('Y'));
    assert_eq!(fx, vec![Effect::Chat(ChatEffect::Copy("b\n".into()))]);
    let fx = update(&mut s, ch('y'));
    assert!(matches!(&fx[..], [Effect::Chat(ChatEffect::Copy(t))] if t.starts_with("Here:")));
    update(&mut s, ch('i'));
    typ(&mut s, "/copy 1");
    let fx = update(&mut s, key(KeyCode::Enter));
    assert_eq!(
        fx,
        vec![Effect::Chat(ChatEffect::Copy("fn a() {}\n".into()))]
    );
}

#[test]
fn picker_searches_and_opens() {
    let mut s = chat_state();
    update(&mut s, key(KeyCode::Esc));
    update(&mut s, ch('o'));
    assert!(s.typing());
    let fx = update(&mut s, ch('p'));
    assert_eq!(fx, vec![Effect::Chat(ChatEffect::Search("p".into()))]);
    update(
        &mut s,
        Msg::Chat(ChatMsg::SearchResults {
            query: "p".into(),
            hits: vec![SearchHit {
                id: "20260101-000000-000-00000001".into(),
                title: "Paris".into(),
                updated: String::new(),
                message_index: Some(1),
                snippet: "…Paris…".into(),
            }],
        }),
    );
    let fx = update(&mut s, key(KeyCode::Enter));
    assert_eq!(
        fx,
        vec![Effect::Chat(ChatEffect::Open(
            "20260101-000000-000-00000001".into()
        ))]
    );
    assert!(s.chat.picker.is_none());
}

/// Runs effects and feeds the results back until `done(state)` holds.
async fn drive(
    s: &mut State,
    runner: &mut crate::app::runner::EffectRunner,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Msg>,
    effects: Vec<Effect>,
    done: impl Fn(&State) -> bool,
) {
    runner.run(effects);
    while !done(s) {
        let m = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("the runner answers within 10 s")
            .expect("channel open");
        let fx = update(s, m);
        runner.run(fx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chat_saves_after_each_finished_message_and_exports_and_copies() {
    use crate::conversations::ConversationStore;
    use crate::engine::{EngineHandle, FakeScript};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let clip: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = clip.clone();
    let chat = crate::app::runner::chat::ChatRunner::new(
        EngineHandle::fake(FakeScript::simple()),
        dir.path().into(),
    )
    .with_clipboard(Box::new(move |b| {
        sink.lock().unwrap().extend_from_slice(b);
        Ok(())
    }));
    let mut runner = crate::app::runner::EffectRunner::new(
        tx,
        "/nonexistent".into(),
        crate::app::tests::empty_roots(),
    )
    .with_chat(chat);
    let mut s = chat_state();
    s.chat.model = None;
    typ(&mut s, "/model fake/chat.gguf");
    let fx = update(&mut s, key(KeyCode::Enter));
    drive(&mut s, &mut runner, &mut rx, fx, |s| {
        s.chat.loading.is_none()
    })
    .await;
    assert_eq!(s.chat.model.as_ref().unwrap().context_length, 2048);

    let file = dir
        .path()
        .join("conversations")
        .join(format!("{}.json", s.chat.conv.id));
    for (round, prompt) in ["hello", "again"].iter().enumerate() {
        typ(&mut s, prompt);
        let fx = update(&mut s, key(KeyCode::Enter));
        drive(&mut s, &mut runner, &mut rx, fx, |s| {
            s.chat.running.is_none()
        })
        .await;
        // The Save that follows Done has run: the file holds the finished answer.
        let saved = ConversationStore::open(dir.path().join("conversations"))
            .unwrap()
            .load(&s.chat.conv.id)
            .unwrap();
        assert!(file.exists());
        assert_eq!(saved.messages.len(), 2 * (round + 1));
        let answer = saved.messages.last().unwrap();
        assert_eq!(answer.content, "Hello from the fake engine.");
        assert_eq!(answer.stats.as_ref().unwrap().tokens, 6);
    }
    assert_eq!(s.chat.list.len(), 1, "the list follows the saves");

    typ(&mut s, "/export");
    let fx = update(&mut s, key(KeyCode::Enter));
    drive(&mut s, &mut runner, &mut rx, fx, |s| {
        s.status
            .notice
            .as_ref()
            .is_some_and(|n| n.text.starts_with("Exported"))
    })
    .await;
    let text = s.status.notice.clone().unwrap().text;
    let path = std::path::PathBuf::from(text.trim_start_matches("Exported to "));
    assert!(path.starts_with(dir.path().join("exports")), "{text}");
    let md = std::fs::read_to_string(&path).unwrap();
    assert!(md.contains("Hello from the fake engine."), "{md}");

    update(&mut s, key(KeyCode::Esc));
    let fx = update(&mut s, ch('y'));
    drive(&mut s, &mut runner, &mut rx, fx, |s| {
        s.status
            .notice
            .as_ref()
            .is_some_and(|n| n.text.starts_with("Copied"))
    })
    .await;
    assert_eq!(
        clip.lock().unwrap().as_slice(),
        crate::app::runner::chat::osc52("Hello from the fake engine.").as_slice()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_budget_drops_the_oldest_turns_or_refuses() {
    use crate::engine::{ContextPolicy, EngineHandle, FakeScript};
    let dir = tempfile::tempdir().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let chat = crate::app::runner::chat::ChatRunner::new(
        EngineHandle::fake(FakeScript::simple()),
        dir.path().into(),
    );
    let mut runner = crate::app::runner::EffectRunner::new(
        tx,
        "/nonexistent".into(),
        crate::app::tests::empty_roots(),
    )
    .with_chat(chat);
    let mut s = chat_state();
    s.chat.model = Some(ChatModel {
        name: "fake".into(),
        backend: Backend::Local("fake/chat.gguf".into()),
        context_length: 2048,
        keeps_thinking: false,
        gpu_layers: None,
    });
    s.params.set(params::Field::MaxTokens, "20").unwrap();
    s.params.set(params::Field::Context, "128").unwrap();
    s.params.params.context_policy = ContextPolicy::DropOldest;
    // Three turns of 50 words each: with the budget of 128 (20 reserved for the answer) the
    // fake engine's word count forces the oldest out.
    let long = vec!["word"; 50].join(" ");
    for _ in 0..3 {
        typ(&mut s, &long);
        let fx = update(&mut s, key(KeyCode::Enter));
        drive(&mut s, &mut runner, &mut rx, fx, |s| {
            s.chat.running.is_none()
        })
        .await;
    }
    assert!(s.chat.context.dropped > 0, "{:?}", s.chat.context);
    assert_eq!(
        s.chat.conv.messages.len(),
        6,
        "left out of the request, not deleted"
    );
    let last = s.chat.conv.messages.last().unwrap();
    assert_eq!(last.content, "Hello from the fake engine.");

    s.params.params.context_policy = ContextPolicy::Error;
    typ(&mut s, &long);
    let fx = update(&mut s, key(KeyCode::Enter));
    drive(&mut s, &mut runner, &mut rx, fx, |s| {
        s.chat.running.is_none()
    })
    .await;
    let n = s.status.notice.clone().unwrap();
    assert!(
        n.error && n.text.contains("context budget is 128"),
        "{}",
        n.text
    );
    assert!(s.chat.conv.messages.last().unwrap().interrupted);
}

#[test]
fn thinking_streams_folded_unfolds_on_its_key_and_stays_out_of_later_turns() {
    let mut s = chat_state();
    typ(&mut s, "why?");
    let fx = update(&mut s, key(KeyCode::Enter));
    let seq = generate_seq(&fx).unwrap();
    for t in [
        "<th",
        "ink>\nweigh the",
        " options\n</think>",
        "\n\nBecause",
        " it is.",
    ] {
        update(&mut s, tok(seq, 60.0, t));
    }
    // Only the answer reaches the markdown stream; the thinking is drawn folded above it.
    let streamed: String = s
        .chat
        .stream
        .as_ref()
        .unwrap()
        .tail_lines()
        .iter()
        .flat_map(|l| l.spans.iter().map(|sp| sp.content.to_string()))
        .collect();
    assert_eq!(streamed.trim(), "Because it is.");
    update(
        &mut s,
        gen(seq, 90.0, GenEvent::Done(stats(5, FinishReason::Stop))),
    );
    let answer = s.chat.conv.messages.last().unwrap().clone();
    assert!(answer.content.starts_with("<think>"), "stored as written");
    assert!(!s.chat.view.borrow().is_unfolded(&answer.id));
    update(&mut s, key(KeyCode::Esc));
    update(&mut s, ch('z'));
    assert!(s.chat.view.borrow().is_unfolded(&answer.id));
    update(&mut s, ch('z'));
    assert!(!s.chat.view.borrow().is_unfolded(&answer.id));
    // The next request carries the answer without its thinking.
    update(&mut s, ch('i'));
    typ(&mut s, "and?");
    let fx = update(&mut s, key(KeyCode::Enter));
    let sent = fx
        .iter()
        .find_map(|e| match e {
            Effect::Chat(ChatEffect::Generate { messages, .. }) => Some(messages.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(sent[1].content, "Because it is.");
}

#[test]
fn a_late_closer_turns_what_streamed_into_thinking() {
    let mut s = chat_state();
    typ(&mut s, "q");
    let fx = update(&mut s, key(KeyCode::Enter));
    let seq = generate_seq(&fx).unwrap();
    // The template opened the block, so the output starts inside it with no `<think>`.
    for t in ["let me see", "</think>\n\n", "Yes."] {
        update(&mut s, tok(seq, 60.0, t));
    }
    let streamed: String = s
        .chat
        .stream
        .as_ref()
        .unwrap()
        .tail_lines()
        .iter()
        .flat_map(|l| l.spans.iter().map(|sp| sp.content.to_string()))
        .collect();
    assert_eq!(streamed.trim(), "Yes.");
}
