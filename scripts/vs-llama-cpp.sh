#!/usr/bin/env bash
# Side-by-side speed against llama.cpp and ik_llama.cpp (its fastest CPU fork, on its fast
# path: -fa 1 -rtr 1), whichever of them is built, on the same machine and the same
# checkpoint (the synthetic Llama 3.2 1B or 3B shape), interleaved round by round so that
# all share the machine's noise: llama-bench on Q8_0 / Q4_K_M GGUFs, then `llama32 bench`
# on q8_0 / q4k (pp512, tg128); with DEPTHS, decode at those depths too, Q8_0 weights, for
# each KV type in KV (llama-batched-bench -npp DEPTH -ntg 32 against `llama32 bench --batched 1
# -p DEPTH -n 32`: prefill speed of the DEPTH-token prompt and decode speed after it).
#
#   scripts/vs-llama-cpp.sh [ROUNDS] [SHAPE]       # default 2 rounds of 1b (or 3b)
#   DEPTHS="4096 16384" KV="f16 q8_0 q8_0-q4_0" TYPES=q8_0 scripts/vs-llama-cpp.sh 1 1b
#
# Peers: ../shared/peers/llama-cpp.sh build (LLAMA_CPP_SH names another copy) and
# ../shared/peers/ik-llama-cpp.sh build GITDIR; both under $PEERS. The GGUFs are converted
# once by whichever peer is built (torch in $PEERS/venv). Written under target/llama32-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
SHAPE=${2:-1b}
TYPES=${TYPES-q8_0 q4_k_m}
DEPTHS=${DEPTHS:-}
KV=${KV:-f16 q8_0}
PEER=${LLAMA_CPP_SH:-../shared/peers/llama-cpp.sh}
PEERS=${PEERS:-$HOME/.cache/llama32-peers}
LCPP=$(ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp/build/bin 2>/dev/null | tail -1 || true)
IK=$PEERS/ik/src/build/bin
[ -x "$IK/llama-bench" ] || IK=
[ -n "$LCPP$IK" ] || { echo "no peer built: run ../shared/peers/llama-cpp.sh build or ik-llama-cpp.sh build" >&2; exit 2; }
DIR=target/llama32-bench
MODEL=$DIR/llama-3.2-$SHAPE-synthetic
N=$(nproc)
cargo build --release --quiet
[ -f "$MODEL/model.safetensors" ] || ./target/release/llama32 synthetic --shape "$SHAPE" --out "$MODEL" --force

# One GGUF of TYPE for the shape: llama.cpp's converter (from the llama-cpp-python source
# package, fetched when missing: ik_llama.cpp's converter fails on Llama) to bf16, then the
# llama-quantize of whichever peer is built.
gguf() {
  local out=$DIR/$1.gguf bf16=$DIR/$SHAPE.bf16.gguf
  [ "$SHAPE" = 1b ] || out=$DIR/$1-$SHAPE.gguf
  if [ ! -f "$out" ]; then
    local src
    # The converter's Python (ik-llama-cpp.sh alone does not make this venv).
    [ -x "$PEERS/venv/bin/pip" ] || python3 -m venv "$PEERS/venv"
    src=$(ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp 2>/dev/null | tail -1 || true)
    if [ -z "$src" ]; then
      # Reading the source package's metadata needs its build backend.
      "$PEERS/venv/bin/pip" install -q scikit-build-core cmake
      "$PEERS/venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation -d "$PEERS" llama-cpp-python==0.3.36
      tar -xzf "$PEERS"/llama_cpp_python-0.3.36.tar.gz -C "$PEERS"
      src=$PEERS/llama_cpp_python-0.3.36/vendor/llama.cpp
    fi
    "$PEERS/venv/bin/python" -c 'import torch' 2>/dev/null || "$PEERS/venv/bin/pip" install -q torch transformers numpy sentencepiece safetensors
    [ -f "$bf16" ] || "$PEERS/venv/bin/python" "$src/convert_hf_to_gguf.py" "$MODEL" --outtype bf16 --outfile "$bf16" >/dev/null 2>&1
    LD_LIBRARY_PATH=${LCPP:-$IK} "${LCPP:-$IK}/llama-quantize" "$bf16" "$out" "${1^^}" >/dev/null 2>&1
  fi
  echo "$out"
}
ours() { [ "$1" = q4_k_m ] && echo q4k || echo "$1"; }

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $N threads; shape $SHAPE; $(date -u +%F)"
for r in $(seq "$ROUNDS"); do
  echo "## round $r"
  for t in $TYPES; do
    g=$(gguf "$t")
    [ -z "$LCPP" ] || { echo "llama.cpp $t"; LD_LIBRARY_PATH=$LCPP "$LCPP/llama-bench" -m "$g" -t "$N" -fa 1 -p 512 -n 128 -r 3 | grep -E "pp512|tg128"; }
    [ -z "$IK" ] || { echo "ik_llama.cpp $t"; "$IK/llama-bench" -m "$g" -t "$N" -fa 1 -rtr 1 -p 512 -n 128 -r 3 | grep -E "pp512|tg128"; }
    echo "llama32 $(ours "$t")"
    ./target/release/llama32 bench -m "$MODEL" --dtypes "$(ours "$t")" -r 3 | grep "^| $(ours "$t")"
  done
  for depth in $DEPTHS; do
    g=$(gguf q8_0)
    for kv in $KV; do
      echo "### prefill $depth tokens, then decode 32 at that depth; KV $kv"
      # Our q8_0-q4_0 (8-bit keys, 4-bit values) is the peers' -ctk q8_0 -ctv q4_0 (ik_llama.cpp
      # needs -DGGML_IQK_FA_ALL_QUANTS=ON for it; as built otherwise it refuses and prints nothing).
      ctk=${kv%-*} ctv=${kv#*-}
      batched=(-m "$g" -t "$N" -fa 1 -ctk "$ctk" -ctv "$ctv" -c $((depth + 64)) -b 2048 -ub 512 -npp "$depth" -ntg 32 -npl 1)
      [ -z "$LCPP" ] || LD_LIBRARY_PATH=$LCPP "$LCPP/llama-batched-bench" "${batched[@]}" 2>&1 | grep -E "^\|  *[0-9]" | sed 's/^/llama.cpp /'
      [ -z "$IK" ] || "$IK/llama-batched-bench" "${batched[@]}" -rtr 2>&1 | grep -E "^\|  *[0-9]" | sed 's/^/ik_llama.cpp /'
      ./target/release/llama32 bench -m "$MODEL" --dtypes q8_0 --kv-dtype "$kv" --batched 1 -p "$depth" \
        -n 32 -r 1 | grep "^| q8_0" | sed 's/^/llama32 /'
    done
  done
done
