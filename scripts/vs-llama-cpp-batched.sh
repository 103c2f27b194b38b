#!/usr/bin/env bash
# Batched decoding and concurrent serving side by side with llama.cpp on the same machine
# and checkpoint (the synthetic Llama-3.2-1B shape), interleaved round by round:
#   1. llama-batched-bench vs `llama32 bench --batched` (aggregate prefill / decode t/s for
#      1, 2, 4, 8 sequences, PP prompt tokens and TG new tokens each);
#   2. llama-server -np 8 vs `llama32 serve`, both driven by tests/python/loadtest.py
#      (streaming `openai` clients, ~200-token prompts, 64 tokens each, 1/2/4/8 clients;
#      WORDS=60 filler words make the chat prompt ~200 tokens, WORDS=80 ~250).
#
#   scripts/vs-llama-cpp-batched.sh [ROUNDS] [TYPE]     # default 1 round, q8_0 (or q4_k_m)
#
# Needs llama.cpp built by ../shared/peers/llama-cpp.sh (LLAMA_CPP_SH names another copy)
# and the GGUF made by scripts/vs-llama-cpp.sh; the openai venv of .ci/run ($VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
TYPE=${2:-q8_0}
OURS=$([ "$TYPE" = q4_k_m ] && echo q4k || echo q8_0)
PEER=${LLAMA_CPP_SH:-../shared/peers/llama-cpp.sh}
PEERS=${PEERS:-$HOME/.cache/llama32-peers}
BIN=$(dirname "$(ls "$PEERS"/llama_cpp_python-*/vendor/llama.cpp/build/bin/llama-bench)")
VENV=${VENV:-${TMPDIR:-/tmp}/llama32-ci-venv}
DIR=target/llama32-bench
MODEL=$DIR/llama-3.2-1b-synthetic
GGUF=$DIR/$TYPE.gguf
PP=${PP:-64} TG=${TG:-32} WORDS=${WORDS:-60}
cargo build --release --quiet
[ -f "$GGUF" ] || bash "$PEER" gguf "$MODEL" "$GGUF" "$TYPE"
for r in $(seq "$ROUNDS"); do
  [ -n "${SERVE_ONLY:-}" ] || {
  echo "## round $r: batched decode (PP=$PP, TG=$TG)"
  LD_LIBRARY_PATH=$BIN "$BIN/llama-batched-bench" -m "$GGUF" -t "$(nproc)" -c 8192 -b 2048 -ub 512 \
    -npp "$PP" -ntg "$TG" -npl 1,2,4,8 2>/dev/null | grep -E "^\|"
  ./target/release/llama32 bench -m "$MODEL" --dtypes "$OURS" --batched 1,2,4,8 -p "$PP" -n "$TG" | grep -E "^\|"
  }
  echo "## round $r: llama-server -np 8"
  LD_LIBRARY_PATH=$BIN "$BIN/llama-server" -m "$GGUF" -t "$(nproc)" --host 127.0.0.1 --port 8081 \
    -np 8 -c 8192 >/tmp/llama-server.log 2>&1 &
  SERVER=$!
  until curl -sf http://127.0.0.1:8081/health >/dev/null; do sleep 0.5; done
  "$VENV/bin/python" tests/python/loadtest.py --url http://127.0.0.1:8081 --levels 1,2,4,8 --requests 1 \
    --tokens 64 --prompt-words "$WORDS"
  kill $SERVER; wait $SERVER 2>/dev/null || true
  echo "## round $r: llama32 serve"
  "$VENV/bin/python" tests/python/loadtest.py --bin target/release/llama32 --model "$MODEL" --dtype "$OURS" \
    --levels 1,2,4,8 --requests 1 --tokens 64 --prompt-words "$WORDS"
done
