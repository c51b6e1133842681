//! The chat end to end: the real binary in a pty with the real SmolLM2 model.

#[path = "support/pty.rs"]
mod pty;

#[path = "support/models.rs"]
mod models;
use models::models_dir;
use pty::PtyApp;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Kills the `--serve` process when the test ends, pass or fail.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_same_chat_against_influence_serve_over_openai_and_ollama() {
    let smol = models_dir().join("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let smol = smol.to_str().unwrap();
    let server_home = tempfile::tempdir().unwrap();
    std::fs::write(
        server_home.path().join("config.toml"),
        "[chat]\ntemperature = 0.0\nmax_tokens = 48\n",
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        std::process::Command::new(env!("CARGO_BIN_EXE_influence"))
            .args(["--serve", "--port", &port.to_string(), "--model", smol])
            .env("INFLUENCE_HOME", server_home.path())
            .env("HF_HOME", server_home.path().join("hf"))
            .env("HOME", server_home.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start influence --serve"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "influence --serve did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let home = tempfile::tempdir().unwrap();
    std::fs::write(
        home.path().join("config.toml"),
        "[chat]\ntemperature = 0.0\nmax_tokens = 48\n",
    )
    .unwrap();
    // The server names a `--model` path by its file stem; the API refuses paths.
    let served = "SmolLM2-135M-Instruct.Q4_1";
    let openai = format!("openai:http://127.0.0.1:{port}/v1#{served}");
    let mut app = spawn(home.path(), &["--model", &openai]);
    app.wait_for("the remote model", Duration::from_secs(30), |s| {
        s.contains("Ask anything.") && s.contains(&format!("{served}@127.0.0.1:{port}"))
    });
    app.send(b"What is the capital of France?\r");
    app.wait_for("Paris over OpenAI SSE", Duration::from_secs(120), |s| {
        s.contains("Paris")
    });
    app.wait_for("the answer to finish", Duration::from_secs(120), |s| {
        !generating(s) && s.contains("tok/s ·") && s.contains(" tok/s │")
    });

    // Same server, Ollama dialect, in a new chat.
    app.send(b"/new\r");
    app.wait_for("a new chat", Duration::from_secs(5), |s| {
        s.contains("Chat · New chat") && s.contains("Ask anything.")
    });
    app.send(format!("/model ollama:http://127.0.0.1:{port}#{served}\r").as_bytes());
    app.wait_for("the Ollama model", Duration::from_secs(30), |s| {
        s.contains("ready") || s.contains(&format!("{served}@127.0.0.1"))
    });
    app.send(b"What is the capital of France?\r");
    app.wait_for("Paris over Ollama NDJSON", Duration::from_secs(120), |s| {
        s.contains("Paris")
    });
    app.wait_for("the answer to finish", Duration::from_secs(120), |s| {
        !generating(s) && s.contains("tok/s ·") && s.contains(" tok/s │")
    });
    app.send(b"\x03");
    assert_eq!(app.wait_exit(Duration::from_secs(15)), 0);
}
