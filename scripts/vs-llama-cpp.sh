#!/usr/bin/env bash
# Side-by-side speed against llama.cpp on the same machine and the same checkpoint (the
# synthetic Llama-3.2-1B shape), interleaved round by round so both share the machine's
# noise: llama-bench on Q8_0 / Q4_K_M GGUFs, then `llama32 bench` on q8_0 / q4k.
#
#   scripts/vs-llama-cpp.sh [ROUNDS]     # default 2 rounds
#
# Needs llama.cpp built by ../shared/peers/llama-cpp.sh (LLAMA_CPP_SH names another copy,
# e.g. one built without -DGGML_AVX_VNNI=ON on CPUs that lack AVX-VNNI) and, the first time,
# torch for the GGUF conversion. Everything is written under target/llama32-bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
PEER=${LLAMA_CPP_SH:-../shared/peers/llama-cpp.sh}
DIR=target/llama32-bench
MODEL=$DIR/llama-3.2-1b-synthetic
cargo build --release --quiet
[ -d "$MODEL" ] || LLAMA32_BENCH_DTYPES=q8_0 cargo bench --bench generate
for t in q8_0 q4_k_m; do
  [ -f "$DIR/$t.gguf" ] || bash "$PEER" gguf "$MODEL" "$DIR/$t.gguf" "$t"
done
for r in $(seq "$ROUNDS"); do
  echo "## round $r"
  for pair in "q8_0 q8_0" "q4_k_m q4k"; do
    set -- $pair
    bash "$PEER" bench "$DIR/$1.gguf" -p 512 -n 128 -r 3 | grep -E "pp512|tg128"
    ./target/release/llama32 bench -m "$MODEL" --dtypes "$2" -r 3 | grep "^| $2"
  done
done
