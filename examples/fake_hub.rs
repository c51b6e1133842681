//! Runs the test suite's fake Hugging Face Hub by hand:
//!
//! ```text
//! cargo run --example fake_hub [-- --big-mb 200]
//! HF_ENDPOINT=http://127.0.0.1:PORT influence search llama --gguf
//! HF_ENDPOINT=http://127.0.0.1:PORT influence pull acme/tiny-llama-GGUF --quant Q8_0
//! ```
//!
//! Tokens: `hf_alice` (may use the gated repo `gatekeeper/locked-GGUF`, owns
//! `alice/secret-model`) and `hf_bob` (neither). `--big-mb N` adds `bench/big-GGUF` with an
//! N MB file, for throughput comparisons with curl.

#[path = "../tests/support/mod.rs"]
mod support;

use support::fake_hub::{content, standard_repos, FakeHub, FakeRepo};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let big_mb: usize = args
        .iter()
        .position(|a| a == "--big-mb")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut builder = FakeHub::builder()
        .repos(standard_repos())
        .token("hf_alice", "alice")
        .token("hf_bob", "bob");
    if big_mb > 0 {
        builder = builder.repo(
            FakeRepo::new("bench/big-GGUF")
                .file("big.Q8_0.gguf", content("big", big_mb * 1024 * 1024))
                .tags(&["gguf"]),
        );
    }
    let hub = builder.start().await;
    println!("fake hub: {}   (CDN: {})", hub.endpoint, hub.cdn);
    println!(
        "  HF_ENDPOINT={} influence search llama --gguf",
        hub.endpoint
    );
    println!(
        "  HF_ENDPOINT={} influence pull acme/tiny-llama-GGUF --quant Q8_0",
        hub.endpoint
    );
    if big_mb > 0 {
        println!(
            "  curl -L -o /dev/null {}/bench/big-GGUF/resolve/main/big.Q8_0.gguf",
            hub.endpoint
        );
    }
    println!("tokens: hf_alice (gated access), hf_bob; Ctrl-C stops");
    let _ = tokio::signal::ctrl_c().await;
}
