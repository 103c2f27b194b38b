#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (also runs on CPU, so it cannot rot:
# tests/python/test_gpu_check.py runs it with --device cpu --quick).
#
#   scripts/gpu-check.sh [--device cuda|cpu] [--bin PATH] [--out DIR] [--quick]
#
# 1. Parity: each fixture checkpoint in f32 on DEVICE against the CPU, greedy, 24 tokens:
#    identical token ids, and the largest difference between the two runs' log-probabilities
#    of the 20 most likely tokens at every step (a log-softmax of the logits).
# 2. Speed: `llama32 bench` on synthetic Llama-3.2-1B and 3B shapes (written by `llama32
#    synthetic`, bf16 on the GPU): prefill pp512, decode tg128, then batched decode at 1, 8
#    and 32 sequences. --quick: the tiny fixture instead, small sizes (for the CPU test).
# Writes DIR/gpu-check.json and prints a table. Needs only the llama32 binary (built with
# --features cuda for a GPU) and python3; no network.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda BIN=target/release/llama32 OUT=target/gpu-check QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no binary at $BIN (build with: cargo build --release --features cuda)" >&2; exit 1; }
"$BIN" --version
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "## parity: f32 on $DEVICE vs cpu"
for fixture in tests/fixtures/*/; do
  [ -f "$fixture/config.json" ] || continue
  for dev in cpu "$DEVICE"; do
    "$BIN" generate --model "$fixture" --device "$dev" --dtype f32 --temperature 0 --max-tokens 24 \
      --prompt "The capital of France is" --logprobs 20 --json > "$OUT/parity-$(basename "$fixture")-$dev.json"
  done
done

if [ "$QUICK" = 1 ]; then
  MODELS=("tests/fixtures/tied-bf16-llama3") PP=32 TG=16 BATCHED=1,4 REPS=1
else
  MODELS=() PP=512 TG=128 BATCHED=1,8,32 REPS=3
  for shape in 1b 3b; do
    dir="$OUT/llama-3.2-$shape-synthetic"
    [ -f "$dir/model.safetensors" ] || "$BIN" synthetic --shape "$shape" --out "$dir"
    MODELS+=("$dir")
  done
fi
DTYPE=bf16; [ "$DEVICE" = cpu ] && DTYPE=q8_0
i=0
for model in "${MODELS[@]}"; do
  echo "## bench: $model on $DEVICE ($DTYPE)"
  "$BIN" bench --model "$model" --device "$DEVICE" --dtypes "$DTYPE" -p "$PP" -n "$TG" -r "$REPS" --json > "$OUT/bench-$i.json"
  "$BIN" bench --model "$model" --device "$DEVICE" --dtypes "$DTYPE" -p 64 -n "$TG" -r 1 --batched "$BATCHED" --json > "$OUT/batched-$i.json"
  i=$((i + 1))
done

python3 - "$OUT" "$DEVICE" <<'PY'
import glob, json, math, os, sys
out, device = sys.argv[1], sys.argv[2]
report = {"device": device, "parity": [], "bench": [], "batched": []}
for cpu_file in sorted(glob.glob(os.path.join(out, "parity-*-cpu.json"))):
    name = os.path.basename(cpu_file)[len("parity-"):-len("-cpu.json")]
    cpu = json.load(open(cpu_file))
    dev = json.load(open(os.path.join(out, f"parity-{name}-{device}.json")))
    diff = 0.0
    for a, b in zip(cpu["logprobs"], dev["logprobs"]):
        top_a, top_b = ({t["id"]: t["logprob"] for t in a["top"]}, {t["id"]: t["logprob"] for t in b["top"]})
        for tok in set(top_a) & set(top_b):
            diff = max(diff, abs(top_a[tok] - top_b[tok]))
    report["parity"].append({"fixture": name, "tokens_identical": cpu["token_ids"] == dev["token_ids"],
                             "max_logprob_diff": diff})
for kind in ("bench", "batched"):
    for f in sorted(glob.glob(os.path.join(out, f"{kind}-*.json"))):
        report[kind].append(json.load(open(f)))
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=2)
print(f"{'fixture':<28} {'tokens identical':>16} {'max |dlogprob|':>15}")
for p in report["parity"]:
    print(f"{p['fixture']:<28} {str(p['tokens_identical']):>16} {p['max_logprob_diff']:>15.2e}")
print(json.dumps({"bench": report["bench"], "batched": report["batched"]})[:4000])
ok = all(p["tokens_identical"] and p["max_logprob_diff"] < 1e-3 for p in report["parity"])
print("parity:", "ok" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
