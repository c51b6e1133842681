//! Untrusted model files and network answers: the crafted files from the security report, and
//! a proptest twin of every fuzz target in `fuzz/` (same checks, see `support/untrusted.rs`),
//! so CI exercises the readers on every run.

#[path = "support/alloc_meter.rs"]
mod alloc_meter;
#[path = "support/crafted.rs"]
mod crafted;
#[path = "support/models.rs"]
mod models;
#[path = "support/untrusted.rs"]
mod untrusted;

#[global_allocator]
static METER: alloc_meter::Meter = alloc_meter::Meter;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use influence::engine::template::ChatTemplate;
use influence::engine::{ChatMessage, EngineError};
use influence::library::{Library, LibraryRoots};
use proptest::prelude::*;

/// A folder holding the five crafted headers, the template-bomb model, a tiny healthy model
/// and (linked) the real SmolLM2, scanned as a configured model folder.
struct Crafted {
    _dir: tempfile::TempDir,
    models: PathBuf,
    roots: LibraryRoots,
}

fn crafted_folder() -> Crafted {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    crafted::write_crafted_headers(&models);
    let smollm = models::smollm();
    crafted::write_tiny_llama(
        &models.join("bomb.gguf"),
        &smollm,
        Some(crafted::TEMPLATE_BOMB),
    );
    crafted::write_tiny_llama(&models.join("tiny.gguf"), &smollm, None);
    let smol = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if std::fs::hard_link(&smollm, &smol).is_err() {
        std::fs::copy(&smollm, &smol).unwrap();
    }
    let roots = LibraryRoots {
        hf_hub: dir.path().join("hf/hub"),
        ollama: None,
        lmstudio: vec![],
        extra: vec![models.clone()],
        imports_file: dir.path().join("imports.json"),
    };
    Crafted {
        _dir: dir,
        models,
        roots,
    }
}

/// Runs `f` on its own thread and fails if it takes more than a second: a hang guard, the
/// work itself takes milliseconds.
fn within_a_second<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_else(|_| panic!("{what} took more than a second"));
    eprintln!("{what}: {:?}", start.elapsed());
    out
}

mod crafted_files {
    use super::*;

    fn model<'a>(lib: &'a Library, file: &str) -> &'a influence::library::Model {
        lib.models()
            .iter()
            .find(|m| m.load_path.file_name().is_some_and(|n| n == file))
            .unwrap_or_else(|| panic!("{file} is not listed: {:#?}", lib.models()))
    }

    #[test]
    fn each_crafted_header_is_broken_and_the_healthy_models_are_listed() {
        let fx = crafted_folder();
        let roots = fx.roots.clone();
        let lib = within_a_second("scanning the crafted folder", move || Library::scan(&roots));
        for (file, _) in crafted::crafted_headers() {
            let m = model(&lib, file);
            let why = m
                .broken
                .as_deref()
                .unwrap_or_else(|| panic!("{file} is not reported broken: {m:#?}"));
            assert!(
                why.contains(file),
                "{file}: the reason names the file: {why}"
            );
            assert!(!m.runnable.can_run(), "{file} is offered to run");
        }
        // The overflowing tensor: no made-up parameter count.
        let huge = model(&lib, "huge-dims.gguf");
        assert_eq!(huge.info.parameters, None, "{huge:#?}");
        assert!(
            huge.broken.as_deref().unwrap().contains("impossible shape")
                || huge
                    .broken
                    .as_deref()
                    .unwrap()
                    .contains("tensor data ends at"),
            "{:?}",
            huge.broken
        );
        let smol = model(&lib, "SmolLM2-135M-Instruct.Q4_1.gguf");
        assert_eq!(smol.broken, None);
        assert_eq!(smol.info.parameters, Some(134_515_008));
        // The bomb's header is sound: it is listed, and its template is refused when rendered.
        assert_eq!(model(&lib, "bomb.gguf").broken, None);
        assert_eq!(model(&lib, "tiny.gguf").broken, None);
    }

    #[test]
    fn the_library_pane_shows_broken_files_beside_healthy_models() {
        use influence::app::library::LibraryMsg;
        use influence::app::msg::Msg;
        use influence::app::state::State;
        use influence::app::update::update;
        use influence::config::keymap::Keymap;
        use influence::config::theme::{self, Theme};
        use ratatui::backend::TestBackend;
        use ratatui::Terminal;

        let fx = crafted_folder();
        let lib = Library::scan(&fx.roots);
        let mut s = State::new(
            Theme::dark(),
            theme::BUILTIN_NAMES.iter().map(|s| s.to_string()).collect(),
            Keymap::load(&Default::default()).unwrap(),
            (140, 40),
        );
        update(
            &mut s,
            Msg::Key(crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::Char('3'),
                crossterm::event::KeyModifiers::NONE,
            )),
        );
        update(
            &mut s,
            Msg::Library(LibraryMsg::Scanned {
                models: std::sync::Arc::new(lib.models().to_vec()),
                warnings: vec![],
            }),
        );
        let mut t = Terminal::new(TestBackend::new(140, 40)).unwrap();
        t.draw(|f| influence::ui::draw(f, &s)).unwrap();
        let buf = t.backend().buffer();
        let rows: Vec<String> = (0..buf.area.height)
            .map(|y| (0..buf.area.width).map(|x| buf[(x, y)].symbol()).collect())
            .collect();
        let row = |name: &str| {
            rows.iter()
                .find(|r| r.contains(name))
                .unwrap_or_else(|| panic!("no row for {name}:\n{}", rows.join("\n")))
                .clone()
        };
        let smol = row("SmolLM2-135M-Instruct.Q4_1");
        assert!(
            smol.contains("134.5M") && !smol.contains("broken"),
            "{smol}"
        );
        for name in [
            "many-tensors",
            "huge-string",
            "huge-array",
            "deep-arrays",
            "huge-dims",
        ] {
            assert!(row(name).contains("broken"), "{}", row(name));
        }
        assert!(row("huge-dims").contains(" ? "), "{}", row("huge-dims"));
        assert!(!row("tiny").contains("broken"), "{}", row("tiny"));
    }

    fn influence_cmd(home: &Path, models: &Path) -> assert_cmd::Command {
        std::fs::write(
            home.join("config.toml"),
            format!(
                "[paths]\nmodel_dirs = [{:?}]\n",
                models.display().to_string()
            ),
        )
        .unwrap();
        let mut c = assert_cmd::Command::cargo_bin("influence").unwrap();
        c.env_clear()
            .env("INFLUENCE_HOME", home)
            .env("HF_HOME", home.join("hf"))
            .env("HOME", home)
            .timeout(Duration::from_secs(60));
        c
    }

    #[test]
    fn influence_list_shows_broken_files_beside_healthy_models() {
        let fx = crafted_folder();
        let home = tempfile::tempdir().unwrap();
        let out = influence_cmd(home.path(), &fx.models)
            .arg("list")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let row = |name: &str| {
            stdout
                .lines()
                .find(|l| l.contains(name))
                .unwrap_or_else(|| panic!("no line for {name}:\n{stdout}"))
        };
        let smol = row("SmolLM2-135M-Instruct.Q4_1");
        assert!(
            smol.contains("134.5M") && !smol.contains("broken"),
            "{smol}"
        );
        for (file, _) in crafted::crafted_headers() {
            let name = file.trim_end_matches(".gguf");
            assert!(row(name).contains("broken"), "{}", row(name));
        }
        assert!(row("huge-dims").contains(" ? "), "{}", row("huge-dims"));
    }

    #[test]
    fn influence_run_refuses_the_template_bomb_naming_the_file() {
        let fx = crafted_folder();
        let home = tempfile::tempdir().unwrap();
        let bomb = fx.models.join("bomb.gguf");
        let out = influence_cmd(home.path(), &fx.models)
            .args(["run", "--max-tokens", "4", "--model"])
            .arg(&bomb)
            .arg("Hello")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "the bomb ran: {stderr}");
        assert!(
            stderr.contains("this model's chat template is too expensive to render"),
            "{stderr}"
        );
        assert!(stderr.contains("bomb.gguf"), "{stderr}");
        // The same model with a raw prompt (no template) still runs.
        influence_cmd(home.path(), &fx.models)
            .args(["run", "--raw", "--max-tokens", "2", "--model"])
            .arg(&bomb)
            .arg("Hello")
            .assert()
            .success();
    }
}

mod chat_templates {
    use super::*;

    fn chat() -> Vec<ChatMessage> {
        vec![ChatMessage::system("Be brief."), ChatMessage::user("Hi")]
    }

    /// A ten-message conversation, the shape the chat and the server render.
    fn conversation() -> Vec<ChatMessage> {
        let mut m = vec![ChatMessage::system(
            "You are a helpful assistant. Answer briefly and cite sources when you can.",
        )];
        for i in 0..4 {
            m.push(ChatMessage::user(format!("Question {i}: what is the capital of a country whose name starts with the letter {}? Explain the history a little.", (b'A' + i) as char)));
            m.push(ChatMessage::assistant(format!("<think>\nThe user asks question {i}.\n</think>\n\nThe capital is somewhere; here is a paragraph of history that goes on for a while to be realistic about length.")));
        }
        m.push(ChatMessage::user("Thanks! And one more: what is 2 + 2?"));
        m
    }

    /// The real templates of the test models render with plenty of room: under a twentieth of
    /// the base fuel and a tenth of the base output cap. The numbers are in docs/FUZZING.md.
    #[test]
    fn real_templates_fit_the_budget_with_room() {
        use influence::engine::template::{RenderBudget, BASE_FUEL, BASE_OUTPUT};
        let msgs = conversation();
        for model in [models::smollm(), models::qwen2(), models::gemma3()] {
            let content = candle_core::quantized::gguf_file::Content::read(
                &mut std::fs::File::open(&model).unwrap(),
            )
            .unwrap();
            // Gemma 3 270M (base) ships none: the built-in Gemma template is measured instead.
            let (src, t) = match content.metadata.get("tokenizer.chat_template") {
                Some(candle_core::quantized::gguf_file::Value::String(s)) => (
                    s.clone(),
                    ChatTemplate::new(s, "<s>", "</s>", &model).unwrap(),
                ),
                _ => (
                    influence::engine::template::GEMMA.to_string(),
                    ChatTemplate::fallback("gemma3", "<bos>", "<eos>"),
                ),
            };
            let (text, cost) = t
                .render_measured(&msgs, true, RenderBudget::for_messages(&msgs))
                .unwrap();
            eprintln!(
                "{}: template {} bytes, fuel {}, output {} bytes",
                model.file_name().unwrap().to_string_lossy(),
                src.len(),
                cost.fuel,
                text.len()
            );
            assert!(cost.fuel * 20 < BASE_FUEL, "{}: {cost:?}", model.display());
            assert!(
                cost.output_bytes * 10 < BASE_OUTPUT,
                "{}: {cost:?}",
                model.display()
            );
        }
    }

    #[test]
    fn a_template_bomb_is_refused_fast_naming_its_file() {
        let t =
            ChatTemplate::new(crafted::TEMPLATE_BOMB, "", "", Path::new("/m/bomb.gguf")).unwrap();
        let err =
            within_a_second("rendering the bomb", move || t.render(&chat(), true)).unwrap_err();
        assert!(
            matches!(err, EngineError::TemplateTooExpensive { .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("/m/bomb.gguf"), "{msg}");
        assert!(
            msg.contains("this model's chat template is too expensive to render"),
            "{msg}"
        );
    }

    #[test]
    fn other_bombs_are_refused_too() {
        for bomb in [
            // Output that grows without looping much.
            "{% set s = 'x' * 1000 %}{% for i in range(100000) %}{{ s }}{% endfor %}",
            // Memory that doubles each step.
            "{% set ns = namespace(s='xx') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
            // Recursion through a macro.
            "{% macro f(n) %}{{ f(n + 1) }}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
            // A loop over a huge list built by the template.
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            // Sorting and joining a big list.
            "{% for i in range(50) %}{{ range(99999) | list | sort | join(',') | length }}{% endfor %}",
        ] {
            let t = ChatTemplate::new(bomb, "", "", Path::new("bomb.jinja")).unwrap();
            let msgs = chat();
            match within_a_second(bomb, move || t.render(&msgs, true)) {
                Err(EngineError::TemplateTooExpensive { .. }) => {}
                // minijinja's own recursion limit stops the macro first.
                Err(EngineError::Template(m)) if m.contains("recursion") => {}
                other => panic!("{bomb}: {other:?}"),
            }
        }
    }

    /// The deepest value a template can build within its fuel, printed, serialised and
    /// dropped, rendered from a thread with the engine thread's stack (the default 2 MiB): no
    /// overflow, on the normal budget and on the largest one a 2 MB request gets.
    #[test]
    fn deeply_nested_values_do_not_overflow_the_engine_stack() {
        use influence::engine::template::RenderBudget;
        let deep = |outer: u32, inner: u32| {
            format!("{{% set ns = namespace(x=[]) %}}{{% for j in range({outer}) %}}{{% for i in range({inner}) %}}{{% set ns.x = [ns.x] %}}{{% endfor %}}{{% endfor %}}")
        };
        for (budget, outer, inner) in [
            (RenderBudget::for_messages(&chat()), 1, 30_000),
            (RenderBudget::for_input(1000, 2 << 20), 2, 100_000),
            (RenderBudget::for_input(1000, 2 << 20), 30, 100_000),
        ] {
            for tail in [
                "",
                "{{ ns.x }}",
                "{{ ns.x | tojson }}",
                "{{ ns.x | length }}",
            ] {
                let src = format!("{}{tail}", deep(outer, inner));
                let t = ChatTemplate::new(&src, "", "", Path::new("deep.jinja")).unwrap();
                let msgs = chat();
                let r = std::thread::Builder::new()
                    .stack_size(2 << 20)
                    .spawn(move || {
                        t.render_measured(&msgs, true, budget)
                            .map(|(s, c)| (s.len(), c.fuel))
                    })
                    .unwrap()
                    .join()
                    .expect("rendering panicked");
                eprintln!(
                    "fuel {} depth {}: {tail:?} -> {r:?}",
                    budget.fuel,
                    outer * inner
                );
                let fits = outer < 30;
                match (fits, tail) {
                    (false, _) => assert!(
                        matches!(r, Err(EngineError::TemplateTooExpensive { .. })),
                        "{r:?}"
                    ),
                    (true, t) if t.contains("tojson") => {
                        assert!(matches!(r, Err(EngineError::Template(_))), "{r:?}")
                    }
                    (true, _) => assert!(r.is_ok(), "{tail}: {r:?}"),
                }
            }
        }
    }
}

mod server {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use influence::engine::{EngineHandle, EngineOptions};
    use influence::server::{router, ServerCtx, ServerOptions};
    use serde_json::{json, Value};
    use std::sync::{Arc, RwLock};
    use tower::ServiceExt;

    async fn post(app: &axum::Router, uri: &str, body: Value) -> (StatusCode, Value) {
        let r = Request::post(uri)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let resp = app.clone().oneshot(r).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// The template bomb answers with a clear error at once, in both dialects, naming the
    /// model by its library name (never its path), and the engine thread is free for the next
    /// request: a healthy model answers it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_template_bomb_gets_a_clear_error_and_the_next_request_is_answered() {
        let fx = crafted_folder();
        let lib = Library::scan(&fx.roots);
        let name = |file: &str| {
            lib.models()
                .iter()
                .find(|m| m.load_path.file_name().is_some_and(|n| n == file))
                .unwrap_or_else(|| panic!("{file} is not listed"))
                .name
                .clone()
        };
        let (bomb, tiny) = (name("bomb.gguf"), name("tiny.gguf"));
        let engine = EngineHandle::spawn(EngineOptions {
            threads: 1,
            max_loaded: 2,
            ..EngineOptions::default()
        });
        let ctx = ServerCtx::new(engine, Arc::new(RwLock::new(lib)), ServerOptions::default());
        let app = router(ctx);
        let chat = |model: &str| json!({"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]});

        let start = Instant::now();
        let (status, body) = post(&app, "/v1/chat/completions", chat(&bomb)).await;
        let took = start.elapsed();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("this model's chat template is too expensive to render"),
            "{body}"
        );
        assert!(msg.contains(&format!("`{bomb}`")), "{body}");
        assert!(!msg.contains("/"), "no path in an API error: {body}");
        assert_eq!(body["error"]["param"], "model", "{body}");
        eprintln!("the bomb was refused in {took:?} (model load included)");

        let (status, body) = post(
            &app,
            "/api/chat",
            json!({
                "model": bomb, "stream": false, "messages": [{"role": "user", "content": "Hi"}]
            }),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("too expensive to render"),
            "{body}"
        );

        let (status, body) = post(&app, "/v1/chat/completions", chat(&tiny)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body["choices"][0]["message"]["content"].is_string(),
            "{body}"
        );
        assert!(
            body["usage"]["completion_tokens"].as_u64().unwrap() >= 1,
            "{body}"
        );
    }
}

/// The proptest twins of the fuzz targets. Inputs are real formats with random damage, so the
/// readers get past their first checks.
mod fuzz_twins {
    use super::*;

    /// Applies `edits` (offset, byte) and then cuts to `cut` (as a fraction of the length).
    fn damage(mut bytes: Vec<u8>, edits: &[(usize, u8)], cut: Option<f64>) -> Vec<u8> {
        if !bytes.is_empty() {
            for (at, b) in edits {
                let i = at % bytes.len();
                bytes[i] = *b;
            }
        }
        if let Some(c) = cut {
            bytes.truncate((bytes.len() as f64 * c) as usize);
        }
        bytes
    }

    fn edits() -> impl Strategy<Value = Vec<(usize, u8)>> {
        prop::collection::vec(
            (
                any::<usize>(),
                prop_oneof![Just(0xff), Just(0), any::<u8>()],
            ),
            0..8,
        )
    }

    /// A small sound GGUF: a few metadata kinds, two tensors.
    fn gguf_seed(alignment: u32, dims: [u64; 2]) -> Vec<u8> {
        let mut g = crafted::RawGguf::new(2, 4);
        g.kv_str("general.architecture", "llama");
        g.str("general.alignment").u32(4).u32(alignment);
        g.str("tokenizer.ggml.tokens")
            .u32(9)
            .u32(8)
            .u64(2)
            .str("a")
            .str("b");
        g.str("llama.context_length").u32(4).u32(2048);
        g.str("token_embd.weight")
            .u32(2)
            .u64(dims[0])
            .u64(dims[1])
            .u32(0)
            .u64(0);
        g.str("output_norm.weight")
            .u32(1)
            .u64(dims[0])
            .u32(0)
            .u64(dims[0].wrapping_mul(dims[1]).wrapping_mul(4));
        g.align();
        g.0.extend(vec![0u8; 256]);
        g.bytes()
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
            "[a-z_ ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("model".to_string()),
                        Just("messages".to_string()),
                        Just("role".to_string()),
                        Just("content".to_string()),
                        Just("prompt".to_string()),
                        Just("input".to_string()),
                        Just("options".to_string()),
                        Just("stream".to_string()),
                        Just("temperature".to_string()),
                        Just("rfilename".to_string()),
                        Just("siblings".to_string()),
                        Just("path".to_string()),
                        Just("type".to_string()),
                        Just("lfs".to_string()),
                        Just("id".to_string()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Jinja fragments, sound and hostile, that templates are stitched from.
    fn template() -> impl Strategy<Value = String> {
        let frag = prop_oneof![
            Just(
                "{% for m in messages %}{{ m.role }}: {{ m.content | trim }}\n{% endfor %}"
                    .to_string()
            ),
            Just("{% if add_generation_prompt %}assistant:{% endif %}".to_string()),
            Just("{{ bos_token }}{{ eos_token }}".to_string()),
            Just("{% set ns = namespace(n=0) %}".to_string()),
            Just(
                "{% for i in range(1000) %}{% for j in range(1000) %}.{% endfor %}{% endfor %}"
                    .to_string()
            ),
            Just("{{ 'ab' * 100000 }}".to_string()),
            Just("{{ messages | tojson }}".to_string()),
            Just("{{ raise_exception('bad') }}".to_string()),
            Just("{{ strftime_now('%d %b %Y') }}{{ strftime_now('%Q %') }}".to_string()),
            Just("{{ messages[0]['content'].split(' ')[-1].upper() }}".to_string()),
            Just(
                "{% macro r(n) %}{% if n < 50 %}{{ r(n + 1) }}{% endif %}{% endmacro %}{{ r(0) }}"
                    .to_string()
            ),
            Just("{{ (messages | list)[::-1] | map(attribute='role') | join(',') }}".to_string()),
            Just("{% for".to_string()),
            Just("}}".to_string()),
            "[ -~]{0,16}",
        ];
        prop::collection::vec(frag, 0..6).prop_map(|v| v.concat())
    }

    const TOKENIZER_SEED: &str = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":0,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true},"post_processor":null,"decoder":{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true},"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"<s>":0,"H":1,"e":2,"l":3,"o":4,"He":5,"ll":6,"Hell":7},"merges":["H e","l l","He ll"]}}"#;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn gguf_header(
            alignment in prop_oneof![Just(32u32), Just(0), Just(3), any::<u32>()],
            dims in [prop_oneof![Just(4u64), Just(1 << 40), any::<u64>()], prop_oneof![Just(8u64), Just(1 << 40), any::<u64>()]],
            e in edits(),
            cut in prop::option::of(0.0..1.0f64),
        ) {
            untrusted::gguf_header(&damage(gguf_seed(alignment, dims), &e, cut));
        }

        #[test]
        fn gguf_header_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut b = b"GGUF\x03\0\0\0".to_vec();
            b.extend(bytes);
            untrusted::gguf_header(&b);
        }

        #[test]
        fn safetensors_header(
            shape in prop::collection::vec(prop_oneof![Just(4u64), Just(u64::MAX), any::<u64>()], 0..4),
            offsets in [any::<u64>(), any::<u64>()],
            dtype in prop_oneof![Just("F32"), Just("BF16"), Just("Q9"), Just("")],
            e in edits(),
            cut in prop::option::of(0.0..1.0f64),
        ) {
            let json = serde_json::json!({
                "__metadata__": {"format": "pt"},
                "w": {"dtype": dtype, "shape": shape, "data_offsets": offsets},
            })
            .to_string();
            let mut b = (json.len() as u64).to_le_bytes().to_vec();
            b.extend(json.as_bytes());
            b.extend([0u8; 64]);
            untrusted::safetensors_header(&damage(b, &e, cut));
        }

        #[test]
        fn tokenizer_files(e in edits(), cut in prop::option::of(0.0..1.0f64), v in json_value()) {
            untrusted::tokenizer_files(&damage(TOKENIZER_SEED.as_bytes().to_vec(), &e, cut));
            let config = serde_json::json!({"bos_token": v.clone(), "eos_token": {"content": v.clone()}, "chat_template": v, "add_bos_token": true});
            untrusted::tokenizer_files(config.to_string().as_bytes());
        }

        #[test]
        fn chat_template(src in template()) {
            untrusted::chat_template(src.as_bytes());
        }

        #[test]
        fn server_json(v in json_value(), e in edits(), cut in prop::option::of(0.0..1.0f64)) {
            let body = serde_json::to_vec(&v).unwrap();
            untrusted::server_json(&body);
            untrusted::server_json(&damage(body, &e, cut));
        }

        #[test]
        fn hub_responses(pick in 0u8..6, v in json_value(), s in "[ -~]{0,64}") {
            let mut b = vec![pick];
            if pick < 3 {
                b.extend(serde_json::to_vec(&v).unwrap());
            } else {
                b.extend(s.as_bytes());
            }
            untrusted::hub_responses(&b);
        }
    }

    /// A tree page with many keys and a 2 MB body of tiny keys must not make the server's
    /// extractor quadratic: it used to re-parse the body once per key to find the culprit.
    #[test]
    fn a_body_of_many_keys_is_refused_quickly() {
        let mut body = String::from("{\"model\":\"m\",\"messages\":5");
        let mut i = 0;
        while body.len() < 2 * 1024 * 1024 - 32 {
            body.push_str(&format!(",\"k{i}\":0"));
            i += 1;
        }
        body.push('}');
        let err = within_a_second("a 2 MB body of tiny keys", move || {
            influence::server::extract::parse::<influence::server::openai::ChatRequest>(
                influence::server::error::Dialect::OpenAi,
                body.as_bytes(),
            )
            .map(|_| ())
        })
        .unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::BAD_REQUEST);
        // The first field the endpoint does not take is the one named.
        assert!(
            err.message.starts_with("k0 is not supported"),
            "{}",
            err.message
        );
    }
}
