#!/usr/bin/env bash
# Everything CI checks, in the order a failure is cheapest to see:
# fetch test models → format → lints → all tests (unit, integration, pty end-to-end).
set -euo pipefail
cd "$(dirname "$0")/.."

export INFLUENCE_TEST_MODELS="${INFLUENCE_TEST_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/influence-test-models}"
scripts/fetch-test-models.sh >/dev/null
# The official OpenAI and Ollama Python clients, pinned, in a venv outside the repository.
scripts/python-clients.sh >/dev/null

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
