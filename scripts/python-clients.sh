#!/usr/bin/env bash
# Creates (or updates) the Python virtual environment with the official `openai`, `ollama` and
# `anthropic` client packages that tests/server.rs drives against `influence --serve`, and the
# `jsonschema` validator that checks constrained output (tests/clients/validate_schema.py).
#
# The venv lives outside the repository: ${INFLUENCE_VENV:-$HOME/.cache/influence-venv}.
# Idempotent: when the pinned versions are already installed it returns at once.
set -euo pipefail

VENV="${INFLUENCE_VENV:-$HOME/.cache/influence-venv}"
OPENAI_VERSION="3.51.0"
OLLAMA_VERSION="0.6.3"
ANTHROPIC_VERSION="2.10.0"
JSONSCHEMA_VERSION="4.23.0"
STAMP="$VENV/.influence-clients-openai-$OPENAI_VERSION-ollama-$OLLAMA_VERSION-anthropic-$ANTHROPIC_VERSION-jsonschema-$JSONSCHEMA_VERSION"

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ]; then
    echo "python clients ready in $VENV (openai $OPENAI_VERSION, ollama $OLLAMA_VERSION, anthropic $ANTHROPIC_VERSION)"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; install Python 3.8+ (e.g. apt-get install python3 python3-venv)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV"
    "$PYTHON" -m venv "$VENV" || {
        echo "error: could not create a venv; install python3-venv (apt-get install python3-venv)" >&2
        exit 1
    }
fi

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "openai==$OPENAI_VERSION" "ollama==$OLLAMA_VERSION" "anthropic==$ANTHROPIC_VERSION" \
    "jsonschema==$JSONSCHEMA_VERSION"
rm -f "$VENV"/.influence-clients-*
touch "$STAMP"
echo "python clients installed in $VENV (openai $OPENAI_VERSION, ollama $OLLAMA_VERSION, anthropic $ANTHROPIC_VERSION, jsonschema $JSONSCHEMA_VERSION)"
