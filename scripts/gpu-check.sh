#!/usr/bin/env bash
# GPU check: the same generated models on `--device cpu` and `--device cuda` of one binary.
#
# Runs on a GPU machine with no Rust toolchain and no network, from one folder (≤ 64 MiB) that
# holds this script, the stripped CUDA `influence` binary and the stripped `gen_gguf` example.
# Model files are too big to carry, so gen_gguf writes seeded random-weight Llama-3-shaped
# GGUFs there (1B- and 8B-shaped, Q4_K_M and Q8_0; see tests/support/synth.rs), and for each:
#   - greedy tokens for 16 steps on both devices (`influence run --json`): they agree, or the
#     first step where they differ is printed with each device's gap between its top two
#     log-probabilities (a small gap is float rounding; a large one is a bug). The generated
#     models give the greedy token a margin of several nats, so tokens agree even where the
#     layers' numbers do not; the largest difference in the runner-up's log-probability shows
#     those (hundredths are rounding, more than 0.5 is flagged);
#   - the same on `--device cuda --gpu-layers $SPLIT_LAYERS` ("split"): the first layers on the
#     GPU, the rest on the CPU (engine.gpu_layers), against the CPU alone;
#   - `influence bench --json` on both devices: one table of prompt and decode tok/s, load time,
#     peak RSS, GPU memory (as bench reports it, and nvidia-smi's peak for the process) and
#     decode as a fraction of the bandwidth limit (decode tok/s × file size ÷ bandwidth).
#
# Assemble the folder on the build machine (build-cuda.sh builds both binaries for x86-64-v3,
# not this machine's CPU, and strips them):
#   scripts/build-cuda.sh --out gpu-check && cp scripts/gpu-check.sh gpu-check/
# Run it there:
#   OUT=/some/dir gpu-check/gpu-check.sh
#
# Settings (environment):
#   OUT          where results go (default: $WORK/results): table.md, *.jsonl, bench-*.json, log
#   WORK         scratch folder for the models, about 16 GB (default: a new folder under $TMPDIR)
#   MODELS       preset:quant list (default "1b:q4_k_m 1b:q8_0 8b:q4_k_m 8b:q8_0")
#   DEVICES      default "cpu cuda split"; "cpu" alone checks the script on a machine without a GPU
#   SPLIT_LAYERS layers on the GPU for "split" (default 8: half of the 1B shape, a quarter of 8B)
#   STEPS        greedy steps compared (default 16)
#   BUDGET_S     stop starting new steps after this many seconds (default 540)
#   BANDWIDTH_GBS  the card's memory bandwidth, GB/s (default: from the GPU's name)
#   INFLUENCE, GEN_GGUF  the binaries (default: beside this script)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
INFLUENCE="${INFLUENCE:-$HERE/influence}"
GEN_GGUF="${GEN_GGUF:-$HERE/gen_gguf}"
MODELS="${MODELS:-1b:q4_k_m 1b:q8_0 8b:q4_k_m 8b:q8_0}"
DEVICES="${DEVICES:-cpu cuda split}"
SPLIT_LAYERS="${SPLIT_LAYERS:-8}"
STEPS="${STEPS:-16}"
BUDGET_S="${BUDGET_S:-540}"
SEED=1
PROMPT="The quick brown fox jumps over the lazy dog"

die() { echo "gpu-check: $*" >&2; exit 2; }

for b in "$INFLUENCE" "$GEN_GGUF"; do
  [ -x "$b" ] || die "missing executable $b (see the header of this script for the folder's contents)"
done
for tool in awk timeout; do
  command -v "$tool" >/dev/null || die "this machine lacks $tool"
done

WORK="${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
OUT="${OUT:-$WORK/results}"
mkdir -p "$WORK" "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
# The binary's config, history and data stay in the scratch folder, not the machine's home.
export INFLUENCE_HOME="$WORK/home"
mkdir -p "$INFLUENCE_HOME"

say() { echo "$*" | tee -a "$LOG"; }
over_budget() { [ "$SECONDS" -ge "$BUDGET_S" ]; }

# A binary built before device selection knows no --device: fine for the CPU, not for a GPU.
if "$INFLUENCE" --help 2>&1 | grep -q -- '--device'; then
  HAS_DEVICE=1
else
  HAS_DEVICE=0
  for d in $DEVICES; do
    [ "$d" = cpu ] || die "$INFLUENCE has no --device flag; build it with device selection and --features cuda"
  done
fi
if [[ " $DEVICES " == *" split "* ]] && ! "$INFLUENCE" --help 2>&1 | grep -q -- '--gpu-layers'; then
  die "$INFLUENCE has no --gpu-layers flag; drop \"split\" from DEVICES or rebuild it"
fi
device_args() {
  if [ "$HAS_DEVICE" = 0 ]; then return; fi
  case "$1" in
    split) echo "--device cuda --gpu-layers $SPLIT_LAYERS" ;;
    *) echo "--device $1" ;;
  esac
}

HAS_SMI=0
if command -v nvidia-smi >/dev/null; then HAS_SMI=1; fi
GPU_NAME=""
if [ "$HAS_SMI" = 1 ]; then
  GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)"
fi
if [ -z "${BANDWIDTH_GBS:-}" ]; then
  case "$GPU_NAME" in
    *H200*) BANDWIDTH_GBS=4800 ;;
    *H100*PCIe*) BANDWIDTH_GBS=2000 ;;
    *H100*) BANDWIDTH_GBS=3350 ;;
    *A100*80GB*) BANDWIDTH_GBS=2039 ;;
    *A100*) BANDWIDTH_GBS=1555 ;;
    *L40S*) BANDWIDTH_GBS=864 ;;
    *) BANDWIDTH_GBS="" ;;
  esac
fi

say "gpu-check: $("$INFLUENCE" --version 2>&1 | head -n1)"
say "host: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || echo '?')"
say "gpu: ${GPU_NAME:-none found} ${BANDWIDTH_GBS:+(bandwidth $BANDWIDTH_GBS GB/s)}"
say "scratch: $WORK; results: $OUT"

# Peak GPU memory (MiB) used by process $1, sampled until it exits; written to file $2.
gpu_mem_sampler() {
  local pid="$1" out="$2" peak=0 m
  while kill -0 "$pid" 2>/dev/null; do
    m="$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null \
      | awk -F', *' -v p="$pid" '$1 == p {print $2}' | head -n1)"
    if [ -n "$m" ] && [ "$m" -gt "$peak" ]; then peak="$m"; fi
    sleep 0.5
  done
  echo "$peak" > "$out"
}

# Runs `influence` with a time limit, stdout to $1; samples GPU memory into $1.gpumem.
run_influence() { # out-file limit-seconds args...
  local out="$1" limit="$2"
  shift 2
  echo "+ influence $*" >> "$LOG"
  timeout "$limit" "$INFLUENCE" "$@" > "$out" 2> "$out.err" &
  local pid=$!
  local sampler=""
  if [ "$HAS_SMI" = 1 ]; then
    gpu_mem_sampler "$pid" "$out.gpumem" &
    sampler=$!
  fi
  local rc=0
  wait "$pid" || rc=$?
  if [ -n "$sampler" ]; then wait "$sampler" || true; fi
  cat "$out.err" >> "$LOG"
  if [ "$rc" = 124 ]; then
    echo "  (timed out after ${limit}s)" | tee -a "$LOG" >&2
  elif [ "$rc" != 0 ]; then
    tail -n 3 "$out.err" | sed 's/^/    /' >&2
  fi
  return "$rc"
}

# `run --json` lines → "id top1 lp1 top2 lp2" per step. A `{"id":` with a bare quote only ever
# starts an object (quotes inside strings are escaped), so splitting on it is safe.
steps_of() {
  awk '
    function lp(s,   i, r) {
      i = index(s, "\"logprob\":"); if (!i) return "nan"
      r = substr(s, i + 10); match(r, /^-?[0-9.eE+-]+/); return substr(r, 1, RLENGTH)
    }
    /^\{"id":/ {
      n = split($0, p, /\{"id":/)
      if (n < 4) { print p[2] + 0, p[2] + 0, lp(p[2]), -1, "nan"; next }
      print p[2] + 0, p[3] + 0, lp(p[3]), p[4] + 0, lp(p[4])
    }' "$1"
}

# Compares two devices' steps; prints one verdict line. Exit 1 on a real mismatch.
compare_steps() { # a-steps b-steps a-name b-name
  awk -v an="$3" -v bn="$4" -v want="$STEPS" '
    NR == FNR { a[FNR] = $0; na = FNR; next }
    { b[FNR] = $0; nb = FNR }
    END {
      n = na < nb ? na : nb
      maxd = 0
      for (i = 1; i <= n; i++) {
        split(a[i], x, " "); split(b[i], y, " ")
        if (x[1] != y[1]) {
          ga = x[3] - x[5]; gb = y[3] - y[5]
          kind = (ga < 0.5 && y[1] == x[4]) ? "near tie (float rounding)" : "MISMATCH"
          printf "differ at step %d: %s token %s (top-2 gap %.3f nats, runner-up %s), %s token %s (gap %.3f, runner-up %s): %s\n", \
            i, an, x[1], ga, x[4], bn, y[1], gb, y[4], kind
          exit (kind == "MISMATCH")
        }
        d = x[5] - y[5]; if (d < 0) d = -d
        if (d > maxd) maxd = d
        g = x[3] - x[5]; if (i == 1 || g < ming) ming = g
      }
      if (n < want) { printf "only %d of %d steps to compare (%s %d, %s %d)\n", n, want, an, na, bn, nb; exit 1 }
      # Tokens can agree while the layers compute different numbers: the runner-up
      # log-probability moves with every layer, the structured winner hardly at all.
      warn = maxd > 0.5 ? "; WARNING: large difference, the layers disagree" : ""
      printf "agree %d/%d; smallest top-2 gap %.2f nats; runner-up log-prob differs by <= %.4f%s\n", n, want, ming, maxd, warn
    }' "$1" "$2"
}

json_num() { # key file
  awk -v k="\"$1\":" '{ i = index($0, k); if (i) { r = substr($0, i + length(k)); match(r, /^-?[0-9.eE+-]+/); print substr(r, 1, RLENGTH); exit } }' "$2"
}
json_str() { # key file
  awk -v k="\"$1\":\"" '{ i = index($0, k); if (i) { r = substr($0, i + length(k)); print substr(r, 1, index(r, "\"") - 1); exit } }' "$2"
}

FAILED=0
TABLE="$OUT/table.md"
{
  echo "| model | file GB | device | greedy vs cpu | load s | prompt tok/s | decode tok/s | decode / bandwidth limit | peak RSS MiB | GPU MiB (bench) | peak GPU MiB (nvidia-smi) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
} > "$TABLE"

for m in $MODELS; do
  preset="${m%%:*}"
  quant="${m#*:}"
  name="llama-$preset-$quant"
  file="$WORK/$name.gguf"
  if over_budget; then say "skipped $name: past the ${BUDGET_S}s budget"; FAILED=1; continue; fi

  say ""
  say "== $name"
  if ! timeout 300 "$GEN_GGUF" --preset "$preset" --quant "$quant" --seed "$SEED" -o "$file" 2>&1 | tee -a "$LOG"; then
    say "gen_gguf failed for $name"; FAILED=1; continue
  fi
  size_gb="$(awk -v b="$(stat -c %s "$file")" 'BEGIN { printf "%.2f", b / 1e9 }')"

  # CPU runs are kept short: an 8B model decodes at a few tokens per second there.
  big=0; case "$preset" in 8b|*70b*) big=1 ;; esac

  declare -A verdict=()
  for dev in $DEVICES; do
    if over_budget; then say "skipped $name on $dev: past the budget"; FAILED=1; continue; fi
    limit=120; if [ "$dev" != cuda ] && [ "$big" = 1 ]; then limit=240; fi
    # shellcheck disable=SC2046
    if run_influence "$OUT/greedy-$name-$dev.jsonl" "$limit" $(device_args "$dev") run --model "$file" \
        --json --temperature 0 --repeat-penalty 1 --max-tokens "$STEPS" --raw "$PROMPT"; then
      steps_of "$OUT/greedy-$name-$dev.jsonl" > "$OUT/greedy-$name-$dev.steps"
    else
      say "  $dev: influence run failed (see $LOG)"; FAILED=1
      rm -f "$OUT/greedy-$name-$dev.steps"
    fi
  done
  for dev in $DEVICES; do
    [ "$dev" = cpu ] && continue
    if [ -f "$OUT/greedy-$name-cpu.steps" ] && [ -f "$OUT/greedy-$name-$dev.steps" ]; then
      if v="$(compare_steps "$OUT/greedy-$name-cpu.steps" "$OUT/greedy-$name-$dev.steps" cpu "$dev")"; then :; else FAILED=1; fi
      verdict[$dev]="$v"
      say "  greedy $dev vs cpu: $v"
    else
      verdict[$dev]="not run"
    fi
  done

  for dev in $DEVICES; do
    if over_budget; then say "skipped bench of $name on $dev: past the budget"; FAILED=1; continue; fi
    # A split model decodes at about the speed of its CPU half: kept as short as the CPU's.
    if [ "$dev" != cuda ]; then
      if [ "$big" = 1 ]; then bargs=(--prompt-tokens 128 --gen-tokens 16 --turn2-tokens 8 --runs 1); limit=300
      else bargs=(--prompt-tokens 256 --gen-tokens 32 --turn2-tokens 16 --runs 1); limit=180; fi
    else
      bargs=(--prompt-tokens 512 --gen-tokens 128 --turn2-tokens 32 --runs 3); limit=180
    fi
    bj="$OUT/bench-$name-$dev.json"
    # shellcheck disable=SC2046
    if ! run_influence "$bj" "$limit" $(device_args "$dev") bench --model "$file" --json "${bargs[@]}"; then
      say "  $dev: influence bench failed (see $LOG)"; FAILED=1; continue
    fi
    say "  bench $dev: $(cat "$bj")"
    pp="$(json_num prompt_tok_s "$bj")"; tg="$(json_num gen_tok_s "$bj")"
    load="$(json_num load_ms "$bj")"; rss="$(json_num peak_rss_mib "$bj")"
    shown_dev="$(json_str device "$bj")"; shown_dev="${shown_dev:-$dev}"
    on_gpu="$(json_num gpu_layers "$bj")"
    if [ -n "$on_gpu" ]; then shown_dev="$shown_dev, $on_gpu/$(json_num layers "$bj") layers"; fi
    bench_mem="$(json_num gpu_mem_mib "$bj")"
    if [ -n "$bench_mem" ]; then bench_mem="$(awk -v m="$bench_mem" 'BEGIN { printf "%.0f", m }')"; else bench_mem="-"; fi
    gpu_mem="-"
    if [ "$dev" != cpu ] && [ -s "$bj.gpumem" ]; then gpu_mem="$(cat "$bj.gpumem")"; fi
    frac="-"
    if [ "$dev" = cuda ] && [ -n "$BANDWIDTH_GBS" ]; then
      frac="$(awk -v t="$tg" -v s="$size_gb" -v bw="$BANDWIDTH_GBS" 'BEGIN { printf "%.0f%%", 100 * t * s / bw }')"
    fi
    agree="${verdict[$dev]:-(reference)}"
    awk -v m="$name" -v g="$size_gb" -v d="$shown_dev" -v a="$agree" -v l="$load" -v pp="$pp" -v tg="$tg" \
        -v f="$frac" -v r="$rss" -v bm="$bench_mem" -v gm="$gpu_mem" \
        'BEGIN { printf "| %s | %s | %s | %s | %.1f | %.1f | %.1f | %s | %.0f | %s | %s |\n", m, g, d, a, l / 1000, pp, tg, f, r, bm, gm }' >> "$TABLE"
  done
  unset verdict
  rm -f "$file"
done

say ""
tee -a "$LOG" < "$TABLE"
say ""
say "total $SECONDS s; results in $OUT"
exit "$FAILED"
