#!/usr/bin/env bash
# Batched decoding and concurrent serving side by side with llama.cpp and ik_llama.cpp
# (-fa 1 -rtr, its fast path), whichever of them is built, on the same machine and
# checkpoint (the synthetic Llama 3.2 1B or 3B shape), interleaved round by round:
#   1. llama-batched-bench vs `llama32 bench --batched` (aggregate prefill / decode t/s for
#      1, 2, 4, 8 sequences, PP prompt tokens and TG new tokens each);
#   2. llama-server -np 8 vs `llama32 serve`, both driven by tests/python/loadtest.py
#      (streaming `openai` clients, ~200-token prompts, 64 tokens each, 1/2/4/8 clients;
#      WORDS=60 filler words make the chat prompt ~200 tokens, WORDS=80 ~250). API=completions
#      (the default) sends every server the same chat text on /v1/completions: ik_llama.cpp's
#      chat endpoint aborts the server on a random-weight model's answers; API=chat for
#      /v1/chat/completions, each server with its own template.
#
#   scripts/vs-llama-cpp-batched.sh [ROUNDS] [TYPE] [SHAPE]   # default 1 round, q8_0 (or q4_k_m), 1b (or 3b)
#   SERVE_ONLY=1 LEVELS=8 scripts/vs-llama-cpp-batched.sh 2 q8_0 3b
#
# Needs a peer built (see scripts/vs-llama-cpp.sh, which also makes the GGUFs: run it once
# for the shape) and the openai venv of .ci/run ($VENV).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-1}
TYPE=${2:-q8_0}
SHAPE=${3:-1b}
OURS=$([ "$TYPE" = q4_k_m ] && echo q4k || echo q8_0)
PEERS=${PEERS:-$HOME/.cache/llama32-peers}
LCPP=$(ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp/build/bin 2>/dev/null | tail -1 || true)
IK=$PEERS/ik/src/build/bin
[ -x "$IK/llama-server" ] || IK=
[ -n "$LCPP$IK" ] || { echo "no peer built: run ../shared/peers/llama-cpp.sh build or ik-llama-cpp.sh build" >&2; exit 2; }
VENV=${VENV:-${TMPDIR:-/tmp}/llama32-ci-venv}
DIR=target/llama32-bench
MODEL=$DIR/llama-3.2-$SHAPE-synthetic
GGUF=$DIR/$TYPE.gguf
[ "$SHAPE" = 1b ] || GGUF=$DIR/$TYPE-$SHAPE.gguf
[ -f "$GGUF" ] || { echo "no $GGUF: run TYPES=$TYPE scripts/vs-llama-cpp.sh 1 $SHAPE first" >&2; exit 2; }
PP=${PP:-64} TG=${TG:-32} WORDS=${WORDS:-60} LEVELS=${LEVELS:-1,2,4,8} API=${API:-completions}
cargo build --release --quiet

# Runs peer NAME's binaries from BIN with EXTRA flags (its fast path) against ours.
peer_batched() {
  local name=$1 bin=$2; shift 2
  LD_LIBRARY_PATH=$bin "$bin/llama-batched-bench" -m "$GGUF" -t "$(nproc)" -c 8192 -b 2048 -ub 512 \
    -npp "$PP" -ntg "$TG" -npl 1,2,4,8 "$@" 2>&1 | grep -E "^\|  *[0-9]" | sed "s/^/$name /"
}
peer_serve() {
  local name=$1 bin=$2; shift 2
  echo "## $name llama-server -np 8 $*"
  ! curl -s http://127.0.0.1:8081/ >/dev/null || { echo "port 8081 is taken: stop what serves it" >&2; exit 2; }
  LD_LIBRARY_PATH=$bin "$bin/llama-server" -m "$GGUF" -t "$(nproc)" --host 127.0.0.1 --port 8081 \
    -np 8 -c 8192 "$@" >"/tmp/$name-server.log" 2>&1 &
  SERVER=$!
  until curl -sf http://127.0.0.1:8081/health >/dev/null; do
    kill -0 $SERVER 2>/dev/null || { echo "llama-server exited: see /tmp/$name-server.log" >&2; exit 2; }
    sleep 0.5
  done
  "$VENV/bin/python" tests/python/loadtest.py --url http://127.0.0.1:8081 --levels "$LEVELS" --requests 1 \
    --tokens 64 --prompt-words "$WORDS" --api "$API"
  kill $SERVER; wait $SERVER 2>/dev/null || true
  SERVER=
}
SERVER=
trap '[ -z "$SERVER" ] || kill $SERVER 2>/dev/null || true' EXIT

echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; shape $SHAPE, $TYPE; $(date -u +%F)"
for r in $(seq "$ROUNDS"); do
  [ -n "${SERVE_ONLY:-}" ] || {
  echo "## round $r: batched decode (PP=$PP, TG=$TG)"
  [ -z "$LCPP" ] || peer_batched llama.cpp "$LCPP"
  [ -z "$IK" ] || peer_batched ik_llama.cpp "$IK" -fa 1 -rtr
  ./target/release/llama32 bench -m "$MODEL" --dtypes "$OURS" --batched 1,2,4,8 -p "$PP" -n "$TG" | grep -E "^\|" | sed "s/^/llama32 /"
  }
  echo "## round $r: serving"
  [ -z "$LCPP" ] || peer_serve llama.cpp "$LCPP"
  [ -z "$IK" ] || peer_serve ik_llama.cpp "$IK" -fa 1 -rtr
  echo "## llama32 serve"
  "$VENV/bin/python" tests/python/loadtest.py --bin target/release/llama32 --model "$MODEL" --dtype "$OURS" \
    --levels "$LEVELS" --requests 1 --tokens 64 --prompt-words "$WORDS" --api "$API"
done
