#!/usr/bin/env bash
# GGUF files made by llama.cpp's own converter (convert_hf_to_gguf.py, from the peers
# script's llama.cpp source; needs its venv with torch) against our safetensors path:
# greedy tokens of F32 GGUFs of the three fixtures against the fixtures in f32, Q8_0 GGUFs
# against our q8_0 of the same weights, and the tokenizer rebuilt from GGUF metadata
# against tokenizer.json on tests/fixtures/tokenizer_cases.json. (On these random-weight
# fixtures Q8_0 tokens part ways after a few steps: llama.cpp rounds the 8-bit values against
# the f32 scale where we use the stored f16 one, and its file quantizes the embedding table
# too; their logits are peaked enough that such differences flip ties. On a trained model,
# SmolLM2, the converter's Q8_0 file gives our q8_0's tokens exactly.)
#
#   scripts/gguf-vs-converter.sh [target/release/llama32]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/llama32}
PEERS=${PEERS:-$HOME/.cache/llama32-peers}
SRC=$(ls -d "$PEERS"/llama_cpp_python-*/vendor/llama.cpp | tail -1)
PY=$PEERS/venv/bin/python
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ids() {
  "$BIN" generate --model "$1" --prompt "The quick brown fox jumps over the lazy dog. Once upon a time" \
    --max-tokens 48 --temperature 0 --dtype "$2" --json 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)['token_ids'])"
}
for f in tied-f32-mha untied-f16-sharded tied-bf16-llama3; do
  for t in f32 q8_0; do
    "$PY" "$SRC/convert_hf_to_gguf.py" "tests/fixtures/$f" --outtype $t --outfile "$OUT/$f.$t.gguf" >/dev/null 2>&1
    if [ "$(ids "tests/fixtures/$f" $t)" == "$(ids "$OUT/$f.$t.gguf" $t)" ]; then r=same; else r=DIFFERENT; fi
    echo "$f $t: greedy tokens $r"
  done
done
python3 - "$BIN" "$OUT/tied-f32-mha.f32.gguf" <<'PY'
import json, subprocess, sys
binary, gguf = sys.argv[1], sys.argv[2]
cases = json.load(open("tests/fixtures/tokenizer_cases.json"))
def tok(model, text):
    out = subprocess.run([binary, "tokenize", "--model", model, "--prompt", text, "--json"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["ids"]
same = sum(tok(gguf, c["text"]) == c["ids"] for c in cases)
print(f"tokenizer from GGUF metadata: {same} of {len(cases)} cases equal tokenizer.json")
PY
