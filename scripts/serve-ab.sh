#!/usr/bin/env bash
# Two `llama32 serve` binaries side by side, interleaved, under tests/python/loadtest.py
# (1 and 8 streaming clients, 64 tokens each, ~200-token prompts; WORDS=80 for ~250).
# Usage: scripts/serve-ab.sh OLD_BIN NEW_BIN [ROUNDS] [MODEL_DIR]
# The model defaults to the synthetic 1B that `cargo bench --bench generate` writes.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1 NEW=$2 ROUNDS=${3:-2} MODEL=${4:-target/llama32-bench/llama-3.2-1b-synthetic} WORDS=${WORDS:-60}
PY=${PYTHON:-python3}
for r in $(seq "$ROUNDS"); do
  for side in old new; do
    bin=$OLD; [ "$side" = new ] && bin=$NEW
    echo "## round $r: $side ($bin)"
    "$bin" serve --model "$MODEL" --dtype q8_0 --port 8090 --served-model-name m 2>/dev/null &
    server=$!
    until curl -sf http://127.0.0.1:8090/health >/dev/null; do sleep 0.5; done
    "$PY" tests/python/loadtest.py --url http://127.0.0.1:8090 --levels 1,8 --requests 1 \
      --tokens 64 --prompt-words "$WORDS" | grep concurrent
    kill "$server"; wait "$server" 2>/dev/null || true
  done
done
