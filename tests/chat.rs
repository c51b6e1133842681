//! The chat end to end: the real binary in a pty with the real SmolLM2 model.

#[path = "support/pty.rs"]
mod pty;

use pty::PtyApp;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn models_dir() -> PathBuf {
    let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var("HOME").expect("HOME is set"))
                .join(".cache/influence-test-models")
        });
    let smol = dir.join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        smol.is_file(),
        "test model missing: {} — run scripts/fetch-test-models.sh",
        smol.display()
    );
    dir
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default()
}

fn spawn(home: &Path, args: &[&str]) -> PtyApp {
    let home_s = home.to_str().unwrap();
    let hf = home.join("hf");
    PtyApp::spawn(
        args,
        &[
            ("INFLUENCE_HOME", home_s),
            ("HF_HOME", hf.to_str().unwrap()),
            ("HOME", home_s),
        ],
        140,
        44,
    )
}

/// The bottom rows: the meter line says "Esc stops" only while an answer streams.
fn generating(screen: &str) -> bool {
    screen.contains("Esc stops")
}

#[test]
fn ask_smollm2_change_temperature_export_and_quit() {
    let smol = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let home = tempfile::tempdir().unwrap();
    // Greedy decoding keeps the answer reproducible; the system prompt is the default one.
    std::fs::write(
        home.path().join("config.toml"),
        "[chat]\ntemperature = 0.0\nmax_tokens = 48\n",
    )
    .unwrap();
    let mut app = spawn(home.path(), &["--model", smol.to_str().unwrap()]);
    app.wait_for("the model to load", Duration::from_secs(60), |s| {
        s.contains("ready") && s.contains("model: SmolLM2-135M-Instruct")
    });
    // The input is focused: letters are text, not commands.
    app.send(b"What is the capital of France?");
    app.wait_for("the typed prompt", Duration::from_secs(5), |s| {
        s.contains("What is the capital of France?")
    });
    app.send(b"\r");
    app.wait_for(
        "a streamed answer naming Paris",
        Duration::from_secs(120),
        |s| s.contains("Paris"),
    );
    app.wait_for("the answer to finish", Duration::from_secs(120), |s| {
        !generating(s) && s.contains("tok/s ·")
    });
    let screen = app.screen();
    assert!(screen.contains("TTFT"), "{screen}");

    // The conversation was saved with the finished answer.
    let convs = files_in(&home.path().join("data/conversations"), "json");
    assert_eq!(convs.len(), 1, "one saved chat");
    let saved = std::fs::read_to_string(&convs[0]).unwrap();
    assert!(
        saved.contains("Paris") && saved.contains("tok_s"),
        "{saved}"
    );

    // Temperature in the sidebar: leave the input, focus Parameters, edit the first field.
    app.send(b"\x1b");
    // A lone Esc needs a pause, or the terminal reads Esc+5 as Alt-5.
    std::thread::sleep(Duration::from_millis(300));
    app.send(b"5");
    app.wait_for("the sidebar focused", Duration::from_secs(5), |s| {
        s.contains("Enter edits")
    });
    app.send(b"\r");
    app.send(&[0x7f; 6]);
    app.send(b"9");
    app.send(b"\r");
    app.wait_for("the range error", Duration::from_secs(5), |s| {
        s.contains("temperature = 9 is out of")
    });
    app.send(&[0x7f; 3]);
    app.send(b"0.2\r");
    app.wait_for("temperature 0.20", Duration::from_secs(5), |s| {
        s.contains("Temperature   0.20") && s.contains("temperature = 0.20")
    });
    let presets = std::fs::read_to_string(home.path().join("data/presets.json"))
        .expect("the preset for the loaded model is saved");
    assert!(presets.contains("\"temperature\": 0.2"), "{presets}");

    // Export from the chat input.
    app.send(b"4");
    app.send(b"i");
    app.send(b"/export\r");
    app.wait_for("the export path", Duration::from_secs(10), |s| {
        s.contains("Exported to")
    });
    let exports = files_in(&home.path().join("data/exports"), "md");
    assert_eq!(exports.len(), 1, "one Markdown export");
    let md = std::fs::read_to_string(&exports[0]).unwrap();
    assert!(md.contains("What is the capital of France?") && md.contains("Paris"));

    app.send(b"\x03");
    assert_eq!(app.wait_exit(Duration::from_secs(15)), 0);
    assert!(!app.parser.screen().alternate_screen());
}
