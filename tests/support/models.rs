//! The real test models fetched by `scripts/fetch-test-models.sh`. Missing files fail the test
//! with the command that fetches them; nothing is skipped.

#![allow(dead_code)]

use std::path::PathBuf;

/// `$INFLUENCE_TEST_MODELS`, or `~/.cache/influence-test-models`, checked to hold every model.
pub fn models_dir() -> PathBuf {
    let dir = std::env::var_os("INFLUENCE_TEST_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/influence-test-models")
        });
    for p in [
        "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "minilm/model.safetensors",
        "gemma3/gemma-3-270m-q4_k_m.gguf",
        "qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    ] {
        assert!(
            dir.join(p).is_file(),
            "missing test model {}: run scripts/fetch-test-models.sh",
            dir.join(p).display()
        );
    }
    dir
}

/// A file or folder inside the models folder.
pub fn fixture(rel: &str) -> PathBuf {
    let p = models_dir().join(rel);
    assert!(
        p.exists(),
        "missing test model {}: run scripts/fetch-test-models.sh",
        p.display()
    );
    p
}

pub fn smollm() -> PathBuf {
    fixture("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// Gemma-3-270M base, Q4_K_M (Q5_0, Q4_K, Q8_0 and Q6_K tensors).
pub fn gemma3() -> PathBuf {
    fixture("gemma3/gemma-3-270m-q4_k_m.gguf")
}

/// Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (mostly Q5_0, with Q4_K, Q6_K and a Q8_0 output matrix).
pub fn qwen2() -> PathBuf {
    fixture("qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

pub fn minilm() -> PathBuf {
    fixture("minilm")
}
