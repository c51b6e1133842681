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
    // The home is also the working folder, so a `.env` in the checkout never leaks in.
    c.env_clear()
        .env("INFLUENCE_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HOME", home)
        .current_dir(home);
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
        .stdout(predicate::str::is_match(r"server.max_queue\s+= 16\s+# default").unwrap())
        .stdout(predicate::str::is_match(r"engine.parallel\s+= 4\s+# default").unwrap())
        .stdout(
            predicate::str::is_match(
                r"engine.kv_budget\s+= 0\s+# default \(each model's context × 5 positions\)",
            )
            .unwrap(),
        );
}

#[test]
fn dotenv_files_supply_values_and_config_names_them() {
    let home = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    let project_env = project.path().join(".env");
    std::fs::write(
        &project_env,
        "# for this project\nINFLUENCE_THEME=light\nINFLUENCE_PORT=9100\nAWS_SECRET_KEY=x\n",
    )
    .unwrap();
    std::fs::write(
        home.path().join(".env"),
        "INFLUENCE_THREADS=3\nINFLUENCE_THEME=dark\n",
    )
    .unwrap();
    let out = influence(home.path())
        .current_dir(project.path())
        .env("INFLUENCE_PORT", "9200")
        .arg("config")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).unwrap();
    let line = |key: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{key} ")))
            .unwrap_or_else(|| panic!("no {key} in {out}"))
            .to_string()
    };
    assert!(
        line("theme").ends_with(&format!("# {} (INFLUENCE_THEME)", project_env.display())),
        "{out}"
    );
    assert!(
        line("server.port").contains("= 9200"),
        "the real environment wins: {out}"
    );
    assert!(
        line("server.port").ends_with("# env INFLUENCE_PORT"),
        "{out}"
    );
    assert!(
        line("engine.threads").ends_with(&format!(
            "# {} (INFLUENCE_THREADS)",
            home.path().join(".env").display()
        )),
        "{out}"
    );
    assert!(out.contains("ignored: AWS_SECRET_KEY"), "{out}");

    std::fs::write(
        &project_env,
        "INFLUENCE_THEME=light\nthis is not a setting\n",
    )
    .unwrap();
    influence(home.path())
        .current_dir(project.path())
        .arg("config")
        .assert()
        .code(2)
        .stderr(predicate::str::contains(format!(
            "{}: line 2",
            project_env.display()
        )))
        .stderr(predicate::str::contains("this is not a setting"));
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
        .stdout(predicate::str::contains("8192"))
        // The device and whether the model fits its memory (a 135M model fits any machine).
        .stdout(
            predicate::str::is_match(r"Device:\s+cpu \(auto: .*\): fits: needs about").unwrap(),
        );
    let out = influence(home.path())
        .args(["show", "SmolLM2-135M-Instruct", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["device"]["name"], "cpu");
    assert_eq!(v["device"]["fits"], true);
    assert!(v["device"]["free_bytes"].as_u64().unwrap() > 0);
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
    // A CPU build runs `auto` on the CPU and says so; there is no GPU memory to report.
    assert_eq!(v["device"], "cpu", "{text}");
    assert!(v["gpu_mem_mib"].is_null(), "{text}");
    // The own kernels' variant is named where the CPU runs them (x86-64 with AVX2 or AVX-512).
    let own = cpu_runs_own_kernels()
        && !matches!(
            std::env::var("INFLUENCE_KERNEL").as_deref(),
            Ok("0" | "off" | "candle")
        );
    assert_eq!(v["cpu_kernel"].is_string(), own, "{text}");
    // The model (98 MB of weights) is resident at its peak.
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 90.0, "{text}");
    assert_eq!(v["kv_cache"], "f32", "{text}");
    // The CPU runs every layer: no GPU layer count, SmolLM2's 30 layers.
    assert!(v["gpu_layers"].is_null(), "{text}");
    assert_eq!(v["layers"], 30, "{text}");

    // A second turn longer than the context is refused with the numbers.
    influence(home.path())
        .args(["bench", "--model"])
        .arg(models::smollm())
        .args(["--prompt-tokens", "8000", "--turn2-tokens", "900"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("8964"));
}

#[test]
fn devices_are_chosen_reported_and_refused_by_feature_name() {
    let home = tempfile::tempdir().unwrap();
    // `config` says what `auto` resolves to and why.
    influence(home.path())
        .arg("config")
        .assert()
        .success()
        .stdout(predicate::str::is_match(r#"engine.device\s+= "auto"\s+# default"#).unwrap())
        .stdout(predicate::str::contains(
            "# device:      cpu (auto: this build has no GPU backend",
        ))
        .stdout(predicate::str::contains(
            "GPU backends built: none (CPU only)",
        ));
    influence(home.path())
        .env("INFLUENCE_DEVICE", "cuda")
        .args(["--device-index", "1", "config"])
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r#"engine.device\s+= "cuda:1"\s+# flag --device-index"#)
                .unwrap(),
        )
        .stdout(predicate::str::contains("--features cuda"));

    // A GPU the build lacks is refused before any weight is read, naming the feature.
    for (device, feature) in [("cuda", "--features cuda"), ("metal", "--features metal")] {
        influence(home.path())
            .args(["--device", device, "run", "--max-tokens", "1", "--model"])
            .arg(models::smollm())
            .arg("hi")
            .assert()
            .failure()
            .stderr(predicate::str::contains(feature))
            .stderr(predicate::str::contains("--device cpu"));
    }
    influence(home.path())
        .args(["--device", "cuda", "bench", "--model"])
        .arg(models::smollm())
        .assert()
        .failure()
        .stderr(predicate::str::contains("--features cuda"));
    // A bad name is a configuration error naming the flag.
    influence(home.path())
        .args(["--device", "tpu", "config"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("engine.device"))
        .stderr(predicate::str::contains("--device"));
    // `--device cpu` runs; a GPU layer count changes nothing there.
    influence(home.path())
        .args([
            "--device",
            "cpu",
            "--gpu-layers",
            "4",
            "run",
            "--max-tokens",
            "2",
        ])
        .arg("--model")
        .arg(models::smollm())
        .arg("hi")
        .assert()
        .success();
    // The layer count shows where it came from; a bad one names its variable.
    influence(home.path())
        .env("INFLUENCE_GPU_LAYERS", "12")
        .arg("config")
        .assert()
        .success()
        .stdout(
            predicate::str::is_match(r#"engine.gpu_layers\s+= 12\s+# env INFLUENCE_GPU_LAYERS"#)
                .unwrap(),
        );
    influence(home.path())
        .env("INFLUENCE_GPU_LAYERS", "half")
        .arg("config")
        .assert()
        .failure()
        .stderr(predicate::str::contains("INFLUENCE_GPU_LAYERS"))
        .stderr(predicate::str::contains("\"auto\" or a number"));
}

/// Kills a `--serve` child when the test ends, pass or fail.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `influence --serve --port P ARGS` in `home`, once it answers `/health`.
fn serve(home: &std::path::Path, port: u16, args: &[&str]) -> Served {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_influence"))
        .args(["--serve", "--port", &port.to_string()])
        .args(args)
        .env("INFLUENCE_HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("HOME", home)
        .env_remove("INFLUENCE_API_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start influence --serve");
    let mut served = Served(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !http(port, "GET", "/health", None).starts_with("HTTP/1.1 200") {
        if let Ok(Some(status)) = served.0.try_wait() {
            panic!("influence --serve exited early: {status}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "influence --serve did not answer /health on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    served
}

/// One HTTP/1.1 request; the whole answer (status line, headers, body), or "" when nothing
/// listens.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let body = body.unwrap_or("");
    let _ = write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn cp_gives_a_second_name_that_resolves_in_the_cli_and_the_api() {
    let home = tempfile::tempdir().unwrap();
    let smol = models::smollm();
    influence(home.path())
        .arg("import")
        .arg(&smol)
        .assert()
        .success();
    influence(home.path())
        .args(["cp", "SmolLM2-135M-Instruct", "tiny"])
        .assert()
        .success()
        .stdout(predicate::str::contains("tiny is now another name for"));
    // Nothing was copied: the only file under the home is the alias list (and the imports).
    let aliases = std::fs::read_to_string(home.path().join("data/aliases.json")).unwrap();
    assert!(aliases.contains("\"tiny\""), "{aliases}");
    influence(home.path())
        .args(["show", "tiny"])
        .assert()
        .success()
        .stdout(predicate::str::contains("8192"));
    influence(home.path())
        .args(["list"])
        .assert()
        .success()
        .stdout(predicate::str::contains("alias   tiny → "));
    influence(home.path())
        .args([
            "--threads",
            "1",
            "run",
            "--model",
            "tiny",
            "--temperature",
            "0",
        ])
        .args(["--max-tokens", "3", "Hello"])
        .assert()
        .success();
    // A model's own name is never shadowed, and a path-like name is refused.
    influence(home.path())
        .args(["cp", "tiny", "SmolLM2-135M-Instruct.Q4_1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already the name of a model"));
    influence(home.path())
        .args(["cp", "tiny", "./x"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("read as a path"));

    // The API resolves it too, and answers with the name it was asked for.
    let port = free_port();
    let server = serve(home.path(), port, &[]);
    let show = http(port, "POST", "/api/show", Some(r#"{"model":"tiny"}"#));
    assert!(show.starts_with("HTTP/1.1 200"), "{show}");
    assert!(show.contains("llama"), "{show}");
    drop(server);

    // rm removes the name only.
    influence(home.path())
        .args(["rm", "tiny"])
        .assert()
        .success()
        .stdout(predicate::str::contains("Removed the name tiny"));
    assert!(smol.is_file());
    influence(home.path())
        .args(["show", "tiny"])
        .assert()
        .failure();
}

#[test]
fn run_renders_markdown_on_a_terminal_and_stays_plain_when_piped() {
    let home = tempfile::tempdir().unwrap();
    let qwen = models::qwen2();
    let qwen = qwen.to_str().unwrap();
    let args = [
        "--threads",
        "2",
        "run",
        "--model",
        qwen,
        "--temperature",
        "0",
        "--max-tokens",
        "60",
        "Write a Python function that adds two numbers.",
    ];
    let piped = influence(home.path())
        .args(args)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let piped = String::from_utf8(piped).unwrap();
    assert!(
        piped.contains("```python"),
        "the model writes a fence: {piped}"
    );
    assert!(
        !piped.contains('\x1b'),
        "piped output has no escapes: {piped:?}"
    );

    let home_s = home.path().to_str().unwrap();
    let mut app = PtyApp::spawn(
        &args,
        &[("INFLUENCE_HOME", home_s), ("HOME", home_s)],
        100,
        40,
    );
    assert_eq!(app.wait_exit(Duration::from_secs(180)), 0);
    let screen = app.screen();
    assert!(
        !screen.contains("```"),
        "fences are rendered away:\n{screen}"
    );
    // Row by row: a padded code row fills the width, so `contents()` runs it into the next.
    let rows: Vec<String> = app.parser.screen().rows(0, 100).collect();
    let (row, col) = rows
        .iter()
        .enumerate()
        .find_map(|(r, l)| l.find("def ").map(|b| (r, l[..b].chars().count())))
        .unwrap_or_else(|| panic!("no code on screen:\n{screen}"));
    let cell = app
        .parser
        .screen()
        .cell(row as u16, col as u16)
        .expect("a cell");
    assert!(
        matches!(cell.fgcolor(), vt100::Color::Rgb(..)),
        "`def` is highlighted: {:?}\n{screen}",
        cell.fgcolor()
    );
    assert!(
        matches!(cell.bgcolor(), vt100::Color::Rgb(..)),
        "code rows have the code background"
    );
}

#[test]
fn ps_lists_the_models_of_running_servers_and_both_dialects_agree() {
    let home = tempfile::tempdir().unwrap();
    influence(home.path())
        .arg("ps")
        .assert()
        .success()
        .stdout(predicate::str::contains("No Influence server is running"));

    let smol = models::smollm();
    let port = free_port();
    let server = serve(home.path(), port, &["--model", smol.to_str().unwrap()]);
    // The default model loads in the background.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !http(port, "GET", "/api/ps", None).contains("\"context_length\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the model did not load: {}",
            http(port, "GET", "/api/ps", None)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let table = influence(home.path())
        .arg("ps")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let table = String::from_utf8(table).unwrap();
    assert!(table.contains(&format!("127.0.0.1:{port}")), "{table}");
    assert!(table.contains("serve"), "{table}");
    assert!(table.contains("0 generating, 0 waiting"), "{table}");
    assert!(table.contains("SmolLM2-135M-Instruct"), "{table}");
    assert!(table.contains("cpu") && table.contains("8192"), "{table}");

    let json = influence(home.path())
        .args(["ps", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let list: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let ollama = &list[0]["ps"]["models"][0];
    let memory = ollama["memory_bytes"].as_u64().unwrap();
    assert!(memory > 98_000_000, "weights and cache: {memory}");
    assert_eq!(ollama["size"].as_u64(), Some(memory));

    // The OpenAI dialect answers the same facts for the same model.
    let models = http(port, "GET", "/v1/models", None);
    let body = &models[models.find("\r\n\r\n").unwrap() + 4..];
    let body = body.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c.is_whitespace());
    let v: serde_json::Value = serde_json::Deserializer::from_str(body)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let loaded: Vec<&serde_json::Value> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["loaded"] == true)
        .collect();
    assert_eq!(loaded.len(), 1, "{v}");
    for key in ["device", "memory_bytes", "context_length"] {
        assert_eq!(loaded[0][key], ollama[key], "{key}");
    }
    assert_eq!(v["active_requests"], 0);

    // Once it stops, it is gone from the list.
    drop(server);
    influence(home.path())
        .arg("ps")
        .assert()
        .success()
        .stdout(predicate::str::contains("No Influence server is running"));
}

/// Whether this CPU runs Influence's own kernels (AVX2 + FMA + F16C, or AVX-512 VNNI), as
/// `engine::simd` decides without an override.
fn cpu_runs_own_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        (is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c"))
            || (is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
