//! The real binary: configuration errors, `config`, and the TUI in a pty.

#[path = "support/pty.rs"]
mod pty;

#[path = "support/models.rs"]
mod models;
use assert_cmd::Command;
use models::models_dir;
use predicates::prelude::*;
use pty::PtyApp;
use std::time::Duration;

fn influence(home: &std::path::Path) -> Command {
    let mut c = Command::cargo_bin("influence").unwrap();
    c.env_clear()
        .env("INFLUENCE_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HOME", home);
    c
}

#[test]
fn version_and_help() {
    let home = tempfile::tempdir().unwrap();
    influence(home.path())
        .arg("--version")
        .assert()
        .success()
        .stdout(predicate::str::contains(env!("CARGO_PKG_VERSION")));
    influence(home.path())
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("config"));
}

#[test]
fn subcommand_help_lists_its_own_options_before_the_global_ones() {
    let home = tempfile::tempdir().unwrap();
    let out = influence(home.path())
        .args(["pull", "--help"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let help = String::from_utf8(out).unwrap();
    let at = |needle: &str| {
        help.find(needle)
            .unwrap_or_else(|| panic!("{needle} missing from:\n{help}"))
    };
    assert!(at("--quant") < at("Global options:"), "{help}");
    assert!(at("--revision") < at("Global options:"), "{help}");
    assert!(at("Global options:") < at("--theme"), "{help}");
    // Flags of the app itself (not of pull) are not offered at all.
    assert!(!help.contains("--serve"), "{help}");
}

#[test]
fn config_prints_values_and_sources() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("config.toml"), "theme = \"light\"\n").unwrap();
    influence(home.path())
        .env("INFLUENCE_PORT", "9999")
        .args(["--threads", "3", "config"])
        .assert()
        .success()
        .stdout(predicate::str::is_match(r#"theme\s+= "light"\s+# .*config.toml"#).unwrap())
        .stdout(predicate::str::is_match(r"server.port\s+= 9999\s+# env INFLUENCE_PORT").unwrap())
        .stdout(predicate::str::is_match(r"engine.threads\s+= 3\s+# flag --threads").unwrap())
        .stdout(predicate::str::is_match(r"server.max_queue\s+= 16\s+# default").unwrap());
}

#[test]
fn malformed_config_names_file_line_and_key() {
    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "theme = \"dark\"\n[chat]\ntemperature = \"hot\"\n",
    )
    .unwrap();
    influence(home.path())
        .arg("config")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("config.toml"))
        .stderr(predicate::str::contains("line 3"))
        .stderr(predicate::str::contains("chat.temperature"))
        .stderr(predicate::str::contains("f32"));

    std::fs::write(home.path().join("config.toml"), "[server]\nport = 0\n").unwrap();
    influence(home.path())
        .arg("config")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("server.port"))
        .stderr(predicate::str::contains("1 to 65535"));

    std::fs::write(home.path().join("config.toml"), "theme = [\n").unwrap();
    influence(home.path())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("line 1"));
}

#[test]
fn tui_shows_five_panes_and_ctrl_c_exits_cleanly() {
    let home = tempfile::tempdir().unwrap();
    let home_s = home.path().to_str().unwrap();
    let hf = home.path().join("hf");
    let mut app = PtyApp::spawn(
        &[],
        &[
            ("INFLUENCE_HOME", home_s),
            ("HF_HOME", hf.to_str().unwrap()),
            ("HOME", home_s),
        ],
        120,
        36,
    );
    app.wait_for("the five pane titles", Duration::from_secs(20), |s| {
        ["Hub", "Downloads", "Library", "Chat", "Parameters"]
            .iter()
            .all(|t| s.contains(t))
    });
    assert!(app.parser.screen().alternate_screen());
    app.send(b"?");
    app.wait_for("the help", Duration::from_secs(5), |s| s.contains("Keys"));
    app.send(b"\x1b");
    app.wait_for("the help to close", Duration::from_secs(5), |s| {
        !s.contains("Esc closes")
    });
    app.send(b"\x03");
    assert_eq!(app.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        !app.parser.screen().alternate_screen(),
        "the alternate screen was not left"
    );
}

#[test]
fn import_list_show_and_name_errors_through_the_binary() {
    let home = tempfile::tempdir().unwrap();
    let smol = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    influence(home.path())
        .arg("import")
        .arg(&smol)
        .assert()
        .success();
    let out = influence(home.path())
        .args(["list", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let list: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let text = list.to_string();
    assert!(
        text.contains("\"llama\"") && text.contains("Q4_1"),
        "{text}"
    );
    influence(home.path())
        .args(["show", "SmolLM2-135M-Instruct"])
        .assert()
        .success()
        .stdout(predicate::str::contains("8192"));
    influence(home.path())
        .args(["show", "no-such-model"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("no-such-model"));
}

#[test]
fn bench_prints_one_json_line_with_every_measurement() {
    let home = tempfile::tempdir().unwrap();
    let out = influence(home.path())
        .args(["--threads", "1", "bench", "--model"])
        .arg(models::smollm())
        .args(["--prompt-tokens", "20", "--gen-tokens", "4"])
        .args(["--turn2-tokens", "6", "--runs", "1", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    for key in [
        "prompt_tok_s",
        "gen_tok_s",
        "ttft_ms",
        "ttft_turn2_ms",
        "load_ms",
        "peak_rss_mib",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {text}"));
        assert!(x > 0.0 && x.is_finite(), "{key} = {x}");
    }
    assert_eq!(v["threads"], 1);
    // The model (98 MB of weights) is resident at its peak.
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 90.0, "{text}");

    // A second turn longer than the context is refused with the numbers.
    influence(home.path())
        .args(["bench", "--model"])
        .arg(models::smollm())
        .args(["--prompt-tokens", "8000", "--turn2-tokens", "900"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("8964"));
}
