//! Update transitions: no terminal, no IO.

use super::effect::Effect;
use super::msg::Msg;
use super::state::{Pane, State};
use super::update::update;
use crate::config::keymap::Keymap;
use crate::config::theme::{self, Theme};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::BTreeMap;

pub fn empty_roots() -> crate::library::LibraryRoots {
    let p = std::path::Path::new("/nonexistent");
    crate::library::LibraryRoots::detect(p, p, &[])
}

pub fn test_state(w: u16, h: u16) -> State {
    State::new(
        Theme::dark(),
        theme::BUILTIN_NAMES.iter().map(|s| s.to_string()).collect(),
        Keymap::load(&BTreeMap::new()).unwrap(),
        (w, h),
    )
}

fn key(c: KeyCode) -> Msg {
    Msg::Key(KeyEvent::new(c, KeyModifiers::NONE))
}

pub(crate) fn ch(c: char) -> Msg {
    key(KeyCode::Char(c))
}

#[test]
fn tab_and_backtab_cycle_focus_through_all_panes() {
    let mut s = test_state(100, 30);
    let mut seen = vec![s.focus];
    for _ in 0..5 {
        update(&mut s, key(KeyCode::Tab));
        seen.push(s.focus);
    }
    assert_eq!(
        seen,
        vec![
            Pane::Hub,
            Pane::Downloads,
            Pane::Library,
            Pane::Chat,
            Pane::Params,
            Pane::Hub
        ]
    );
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT)),
    );
    assert_eq!(s.focus, Pane::Params);
    // The sidebar takes focus but the main area keeps showing the last main pane.
    assert_eq!(s.main_pane, Pane::Hub);
}

#[test]
fn number_keys_jump() {
    let mut s = test_state(100, 30);
    for (c, p) in [
        ('3', Pane::Library),
        ('4', Pane::Chat),
        ('2', Pane::Downloads),
        ('5', Pane::Params),
        ('1', Pane::Hub),
    ] {
        s.dirty = false;
        update(&mut s, ch(c));
        assert_eq!(s.focus, p);
        assert!(s.dirty);
    }
}

#[test]
fn help_opens_scrolls_and_closes() {
    let mut s = test_state(100, 30);
    update(&mut s, ch('?'));
    assert_eq!(s.help, Some(0));
    // While help is open, pane keys do nothing.
    update(&mut s, ch('3'));
    assert_eq!(s.focus, Pane::Hub);
    update(&mut s, key(KeyCode::Down));
    update(&mut s, key(KeyCode::Down));
    assert_eq!(s.help, Some(2));
    update(&mut s, key(KeyCode::Esc));
    assert_eq!(s.help, None);
    update(&mut s, key(KeyCode::F(1)));
    assert_eq!(s.help, Some(0));
    update(&mut s, ch('q'));
    assert_eq!(s.help, None);
    assert!(!s.quit, "q closes help before it quits");
}

#[test]
fn quit_with_q_and_ctrl_c() {
    let mut s = test_state(100, 30);
    update(&mut s, ch('q'));
    assert!(s.quit);
    let mut s = test_state(100, 30);
    update(&mut s, ch('?'));
    update(
        &mut s,
        Msg::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
    );
    assert!(s.quit, "Ctrl-C quits from anywhere, help included");
}

#[test]
fn resize_marks_dirty_and_too_small() {
    let mut s = test_state(100, 30);
    s.dirty = false;
    update(&mut s, Msg::Resize(40, 10));
    assert!(s.dirty && s.too_small());
    update(&mut s, Msg::Resize(120, 40));
    assert!(!s.too_small());
}

#[test]
fn theme_cycles_through_an_effect() {
    let mut s = test_state(100, 30);
    assert_eq!(
        update(&mut s, ch('t')),
        vec![Effect::LoadTheme("light".into())]
    );
    let light = Theme::load("light", std::path::Path::new("/nonexistent")).unwrap();
    update(&mut s, Msg::ThemeLoaded(Box::new(light)));
    assert_eq!(s.theme.name, "light");
    assert_eq!(
        update(&mut s, ch('t')),
        vec![Effect::LoadTheme("high-contrast".into())]
    );
}

#[test]
fn memory_sample_redraws_only_on_visible_change() {
    let mut s = test_state(100, 30);
    update(&mut s, Msg::Memory(50 << 20));
    s.dirty = false;
    update(&mut s, Msg::Memory((50 << 20) + 10));
    assert!(!s.dirty);
    update(&mut s, Msg::Memory(60 << 20));
    assert!(s.dirty);
}

/// The real test models folder; panics with the fix when it is missing.
pub fn test_models() -> std::path::PathBuf {
    let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            directories::BaseDirs::new()
                .expect("a home folder")
                .home_dir()
                .join(".cache/influence-test-models")
        });
    assert!(
        dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
            .is_file(),
        "test models missing in {}: run scripts/fetch-test-models.sh",
        dir.display()
    );
    dir
}

/// A library with the real SmolLM2 and MiniLM imported by reference, plus a truncated GGUF.
pub fn library_with_models(tmp: &std::path::Path) -> crate::library::Library {
    let models = test_models();
    let data = tmp.join("data");
    let roots = crate::library::LibraryRoots::detect(&tmp.join("hf"), &data, &[]);
    // A link inside the temp dir keeps paths on screen the same length on every machine.
    let smol = tmp.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let real = models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    if std::fs::hard_link(&real, &smol).is_err() {
        std::fs::copy(&real, &smol).unwrap();
    }
    crate::library::import(&roots, &smol).unwrap();
    crate::library::import(&roots, &models.join("minilm")).unwrap();
    let broken = tmp.join("broken.gguf");
    let head = std::fs::read(models.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    std::fs::write(&broken, &head[..4 << 20]).unwrap();
    crate::library::import(&roots, &broken).unwrap();
    crate::library::Library::scan(&roots)
}

mod library_pane {
    use super::*;
    use crate::app::library::{LibraryEffect, LibraryMsg};
    use std::sync::Arc;

    fn scanned(s: &mut State, lib: &crate::library::Library) {
        update(
            s,
            Msg::Library(LibraryMsg::Scanned {
                models: Arc::new(lib.models().to_vec()),
                warnings: vec![],
            }),
        );
    }

    #[test]
    fn focusing_rescans_and_filter_narrows() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(120, 36);
        assert_eq!(
            update(&mut s, ch('3')),
            vec![Effect::Library(LibraryEffect::Scan)]
        );
        scanned(&mut s, &lib);
        assert_eq!(s.library.view.len(), 3);
        update(&mut s, ch('/'));
        assert!(s.typing(), "filtering takes typed keys");
        for c in "smol".chars() {
            update(&mut s, ch(c));
        }
        assert!(!s.quit);
        assert_eq!(s.library.view.len(), 1);
        update(&mut s, key(KeyCode::Enter));
        assert!(!s.typing());
        assert_eq!(s.library.filter, "smol");
        update(&mut s, ch('/'));
        update(&mut s, key(KeyCode::Esc));
        assert_eq!(s.library.view.len(), 3);
    }

    #[test]
    fn sort_keeps_selection_and_delete_needs_confirmation() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(120, 36);
        update(&mut s, ch('3'));
        scanned(&mut s, &lib);
        update(&mut s, key(KeyCode::Down));
        let chosen = s.library.selected_model().unwrap().name.clone();
        update(&mut s, ch('s'));
        assert_eq!(s.library.selected_model().unwrap().name, chosen);
        let eff = update(&mut s, ch('d'));
        assert!(matches!(
            eff.as_slice(),
            [Effect::Library(LibraryEffect::PlanDelete(m))] if m.name == chosen
        ));
        let model = lib.models().iter().find(|m| m.name == chosen).unwrap();
        let plan = lib.delete_plan(model).unwrap();
        update(
            &mut s,
            Msg::Library(LibraryMsg::DeletePlanned(Ok(plan.clone()))),
        );
        // While the question is open, q does not quit and n keeps everything.
        update(&mut s, ch('q'));
        assert!(!s.quit);
        assert!(update(&mut s, ch('n')).is_empty());
        assert!(s.library.confirm.is_none());
        update(&mut s, Msg::Library(LibraryMsg::DeletePlanned(Ok(plan))));
        let eff = update(&mut s, ch('y'));
        assert!(
            matches!(eff.as_slice(), [Effect::Library(LibraryEffect::Delete(p))] if p.model == chosen)
        );
    }

    #[test]
    fn pane_snapshot_lists_models_details_and_broken_file() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = library_with_models(tmp.path());
        let mut s = test_state(130, 40);
        update(&mut s, ch('3'));
        scanned(&mut s, &lib);
        // Select SmolLM2 so the details show its facts.
        while s
            .library
            .selected_model()
            .unwrap()
            .info
            .architecture
            .as_deref()
            != Some("llama")
            || s.library.selected_model().unwrap().broken.is_some()
        {
            update(&mut s, key(KeyCode::Down));
        }
        let screen = crate::ui::tests::text(&s);
        assert!(screen.contains("134.5M") && screen.contains("Q4_1") && screen.contains("8192"));
        assert!(screen.contains("broken"), "{screen}");
        let models = test_models();
        let screen = screen
            .replace(&tmp.path().display().to_string(), "<tmp>")
            .replace(&models.display().to_string(), "<models>");
        insta::assert_snapshot!(screen);
    }
}

mod hub_and_downloads {
    use super::*;
    use crate::app::downloads::DownloadsEffect;
    use crate::app::hub::{HubEffect, HubMsg};
    use crate::downloads::{DownloadEvent, Progress};
    use crate::hub::{Gated, LfsInfo, MemInfo, ModelInfo, ModelSummary, RepoFile};
    use std::time::Duration;

    fn summary(id: &str, downloads: u64) -> ModelSummary {
        serde_json::from_value(serde_json::json!({
            "id": id, "downloads": downloads, "likes": downloads / 100,
            "pipeline_tag": "text-generation", "lastModified": "2025-06-01T00:00:00.000Z",
            "tags": ["gguf"]
        }))
        .unwrap()
    }

    fn lfs(path: &str, size: u64) -> RepoFile {
        RepoFile {
            path: path.into(),
            size: Some(size),
            blob_id: Some("0".repeat(40)),
            lfs: Some(LfsInfo {
                sha256: format!("{:0>64}", size),
                size,
            }),
        }
    }

    fn info() -> ModelInfo {
        ModelInfo {
            id: "acme/tiny-GGUF".into(),
            sha: Some("a".repeat(40)),
            author: Some("acme".into()),
            private: false,
            gated: Gated::Auto,
            disabled: false,
            downloads: Some(5000),
            likes: Some(40),
            tags: vec!["gguf".into(), "llama".into()],
            pipeline_tag: Some("text-generation".into()),
            library_name: None,
            license: Some("apache-2.0".into()),
            last_modified: None,
            files: vec![
                lfs("tiny.Q2_K.gguf", 2_000_000_000),
                lfs("tiny.Q4_K_M.gguf", 4_000_000_000),
                lfs("tiny.Q8_0.gguf", 30_000_000_000),
                RepoFile {
                    path: "config.json".into(),
                    size: Some(22),
                    blob_id: Some("b".repeat(40)),
                    lfs: None,
                },
            ],
            rejected_paths: vec![],
        }
    }

    fn hub_state() -> State {
        let mut s = test_state(120, 36);
        s.hub = crate::app::hub::HubState::new(
            "http://hub.test".into(),
            Some(MemInfo {
                total_bytes: 16_000_000_000,
                available_bytes: 12_000_000_000,
                host_available_bytes: None,
            }),
        );
        s
    }

    #[test]
    fn typing_debounces_and_stale_results_are_dropped() {
        let mut s = hub_state();
        update(&mut s, ch('/'));
        assert!(s.typing());
        let e1 = update(&mut s, ch('l'));
        let e2 = update(&mut s, ch('q'));
        assert_eq!(e1, vec![Effect::Hub(HubEffect::Debounce { seq: 1 })]);
        assert_eq!(e2, vec![Effect::Hub(HubEffect::Debounce { seq: 2 })]);
        assert!(!s.quit, "q is text while typing");
        // The first timer is stale; the second one searches.
        assert!(update(&mut s, Msg::Hub(HubMsg::Debounced { seq: 1 })).is_empty());
        let eff = update(&mut s, Msg::Hub(HubMsg::Debounced { seq: 2 }));
        let seq = match eff.as_slice() {
            [Effect::Hub(HubEffect::Search { seq, query })] => {
                assert_eq!(query.search.as_deref(), Some("lq"));
                assert_eq!(query.filters, vec!["gguf".to_string()]);
                *seq
            }
            other => panic!("{other:?}"),
        };
        // An answer to an older query never replaces a newer one.
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq: seq - 1,
                append: false,
                result: Ok((vec![summary("old/one", 1)], None)),
            }),
        );
        assert!(s.hub.results.is_empty());
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq,
                append: false,
                result: Ok((vec![summary("a/b-GGUF", 10), summary("c/d-GGUF", 5)], None)),
            }),
        );
        assert_eq!(s.hub.results.len(), 2);
    }

    #[test]
    fn a_pytorch_only_repo_offers_its_bin_set() {
        let mut i = info();
        i.files = vec![
            lfs("pytorch_model.bin", 90_000_000),
            lfs("optimizer.bin", 180_000_000),
            i.files[3].clone(),
        ];
        let choices = crate::app::hub::choices(&i, None, None);
        assert_eq!(choices.len(), 1, "{choices:?}");
        assert_eq!(choices[0].label, "pytorch");
        assert_eq!(choices[0].files, ["pytorch_model.bin"]);
        assert_eq!(choices[0].size, 90_000_000);
        let detail = crate::app::hub::Detail {
            repo: i.id.clone(),
            info: Some(Box::new(i)),
            error: None,
            choices: choices.clone(),
            selected: 0,
            shape: None,
            card: crate::app::hub::Card::Absent,
            card_scroll: 0,
        };
        let specs = crate::app::hub::specs_for(&detail, &choices[0]).unwrap();
        let files: Vec<&str> = specs.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(files, ["pytorch_model.bin", "config.json"]);
    }

    #[test]
    fn hub_opens_on_the_most_popular_models() {
        let mut s = hub_state();
        let eff = s.hub.open();
        let seq = match eff.as_slice() {
            [HubEffect::Search { seq, query }] => {
                assert_eq!(query.search, None, "no query: the whole Hub");
                assert_eq!(query.sort, Some(crate::hub::Sort::Downloads));
                assert_eq!(query.filters, vec!["gguf".to_string()]);
                *seq
            }
            other => panic!("{other:?}"),
        };
        let loading = crate::ui::tests::text(&s);
        assert!(loading.contains("Searching…"), "{loading}");
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq,
                append: false,
                result: Ok((
                    vec![
                        summary("bartowski/Llama-3.2-1B-Instruct-GGUF", 2_400_000),
                        summary("Qwen/Qwen2.5-0.5B-Instruct-GGUF", 1_100_000),
                        summary("unsloth/gemma-3-270m-it-GGUF", 650_000),
                    ],
                    None,
                )),
            }),
        );
        let screen = crate::ui::tests::text(&s);
        assert!(screen.contains("Most downloaded"), "{screen}");
        assert!(screen.contains("2.4M"), "{screen}");
        insta::assert_snapshot!("hub_opening_list", screen);
    }

    #[test]
    fn hub_detail_shows_the_model_card_beside_the_quants() {
        let mut s = hub_state();
        s.hub.seq = 1;
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq: 1,
                append: false,
                result: Ok((vec![summary("acme/tiny-GGUF", 5000)], None)),
            }),
        );
        update(&mut s, key(KeyCode::Enter));
        let mut with_card = info();
        with_card.files.push(RepoFile {
            path: "README.md".into(),
            size: Some(900),
            blob_id: Some("c".repeat(40)),
            lfs: None,
        });
        let eff = update(
            &mut s,
            Msg::Hub(HubMsg::Info {
                repo: "acme/tiny-GGUF".into(),
                result: Ok(Box::new(with_card)),
            }),
        );
        assert_eq!(
            eff,
            vec![
                Effect::Hub(HubEffect::Card {
                    repo: "acme/tiny-GGUF".into(),
                    revision: "a".repeat(40),
                }),
                Effect::Hub(HubEffect::Shape {
                    repo: "acme/tiny-GGUF".into(),
                    revision: "a".repeat(40),
                    path: "tiny.Q2_K.gguf".into(),
                }),
            ]
        );
        let loading = crate::ui::tests::text(&s);
        assert!(loading.contains("Loading README.md"), "{loading}");
        assert!(
            loading.contains("Gated: accept its conditions"),
            "{loading}"
        );
        assert!(loading.contains("Licence: apache-2.0"), "{loading}");
        let mut card = String::from(
            "---\nlicense: apache-2.0\n---\n# Tiny GGUF\n\nA **tiny** llama, quantized.\n\n```python\nfrom llama_cpp import Llama\nllm = Llama(\"tiny.Q4_K_M.gguf\")\n```\n\n## Files\n\n",
        );
        for i in 0..40 {
            card.push_str(&format!("- line {i} of the card\n"));
        }
        update(
            &mut s,
            Msg::Hub(HubMsg::Card {
                repo: "acme/tiny-GGUF".into(),
                result: Ok(card),
            }),
        );
        // The header of each GGUF gives the KV-cache shape: the estimate then includes it.
        update(
            &mut s,
            Msg::Hub(HubMsg::Shape {
                repo: "acme/tiny-GGUF".into(),
                result: Ok(Some(crate::library::memory::ModelShape {
                    kv_bytes_per_token: 100_000,
                    context_length: Some(2048),
                    embedding_f32_bytes: 0,
                    state_bytes: 0,
                    windowed: None,
                })),
            }),
        );
        let screen = crate::ui::tests::text(&s);
        assert!(screen.contains("Model card"), "{screen}");
        assert!(
            screen.contains("Tiny GGUF") && screen.contains("from llama_cpp"),
            "{screen}"
        );
        assert!(
            !screen.contains("```") && !screen.contains("license:"),
            "{screen}"
        );
        assert!(screen.contains("Memory @2048 tokens"), "{screen}");
        assert!(screen.contains("2.4 GB · fits"), "{screen}");
        insta::assert_snapshot!("hub_model_card", screen);
        assert!(!screen.contains("line 39 of the card"));
        for _ in 0..3 {
            update(&mut s, key(KeyCode::PageDown));
        }
        let scrolled = crate::ui::tests::text(&s);
        assert!(scrolled.contains("line 39 of the card"), "{scrolled}");
        assert!(!scrolled.contains("Tiny GGUF"), "{scrolled}");
        assert_eq!(
            s.hub.detail.as_ref().unwrap().selected,
            1,
            "paging scrolls the card, not the quant list"
        );
    }

    #[test]
    fn open_detail_queue_preferred_quant_and_follow_progress() {
        let mut s = hub_state();
        s.hub.seq = 1;
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq: 1,
                append: false,
                result: Ok((vec![summary("acme/tiny-GGUF", 5000)], None)),
            }),
        );
        let eff = update(&mut s, key(KeyCode::Enter));
        assert_eq!(
            eff,
            vec![Effect::Hub(HubEffect::Info {
                repo: "acme/tiny-GGUF".into()
            })]
        );
        update(
            &mut s,
            Msg::Hub(HubMsg::Info {
                repo: "acme/tiny-GGUF".into(),
                result: Ok(Box::new(info())),
            }),
        );
        let d = s.hub.detail.as_ref().unwrap();
        assert_eq!(d.choices.len(), 3);
        assert_eq!(d.choices[d.selected].label, "Q4_K_M");
        let detail_screen = crate::ui::tests::text(&s);
        assert!(detail_screen.contains("won't fit"), "{detail_screen}");
        insta::assert_snapshot!("hub_detail", detail_screen);

        let eff = update(&mut s, ch('d'));
        let specs = match eff.as_slice() {
            [Effect::Downloads(DownloadsEffect::Enqueue(specs))] => specs.clone(),
            other => panic!("{other:?}"),
        };
        let paths: Vec<&str> = specs.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, vec!["tiny.Q4_K_M.gguf", "config.json"]);

        // The manager's events drive the Downloads pane.
        update(&mut s, ch('2'));
        for (id, spec) in specs.iter().enumerate() {
            update(
                &mut s,
                Msg::Download(DownloadEvent::Queued {
                    id: id as u64,
                    spec: spec.clone(),
                }),
            );
        }
        update(&mut s, Msg::Download(DownloadEvent::Started { id: 0 }));
        update(
            &mut s,
            Msg::Download(DownloadEvent::Progress(Progress {
                id: 0,
                bytes: 1_000_000_000,
                total: 4_000_000_000,
                bytes_per_sec: 50_000_000.0,
                eta: Some(Duration::from_secs(60)),
            })),
        );
        update(
            &mut s,
            Msg::Download(DownloadEvent::Failed {
                id: 1,
                reason: "checksum mismatch: the file was corrupted in transit; press r to retry"
                    .into(),
            }),
        );
        let queue = crate::ui::tests::text(&s);
        assert!(
            queue.contains("25%") || queue.contains("1.0 GB / 4.0 GB"),
            "{queue}"
        );
        insta::assert_snapshot!("downloads_queue", queue);
        // Retry only applies to the failed row.
        update(&mut s, key(KeyCode::Down));
        assert_eq!(
            update(&mut s, ch('r')),
            vec![Effect::Downloads(DownloadsEffect::Retry(1))]
        );
        update(&mut s, key(KeyCode::Up));
        assert_eq!(
            update(&mut s, ch('p')),
            vec![Effect::Downloads(DownloadsEffect::Pause(0))]
        );
        // A finished file makes the library look again.
        let eff = update(
            &mut s,
            Msg::Download(DownloadEvent::Done {
                id: 0,
                path: "/x".into(),
            }),
        );
        assert_eq!(
            eff,
            vec![Effect::Library(crate::app::library::LibraryEffect::Scan)]
        );
    }

    #[test]
    fn hub_results_snapshot() {
        let mut s = hub_state();
        s.hub.query = "llama".into();
        s.hub.seq = 1;
        update(
            &mut s,
            Msg::Hub(HubMsg::Results {
                seq: 1,
                append: false,
                result: Ok((
                    vec![
                        summary("bartowski/Llama-3-8B-GGUF", 70_000),
                        summary("TheBloke/Llama-2-7B-GGUF", 60_000),
                    ],
                    Some("http://hub.test/api/models?cursor=2".into()),
                )),
            }),
        );
        insta::assert_snapshot!("hub_results", crate::ui::tests::text(&s));
        // Reaching the end of the list asks for the next page, once.
        assert!(matches!(
            update(&mut s, key(KeyCode::Down)).as_slice(),
            [Effect::Hub(HubEffect::NextPage { url, .. })] if url.ends_with("cursor=2")
        ));
        assert!(update(&mut s, key(KeyCode::Down)).is_empty());
    }
}
