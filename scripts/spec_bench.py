#!/usr/bin/env python3
"""Speculative decoding against plain decoding, side by side, interleaved.

    python3 scripts/spec_bench.py --model M [--bin target/release/llama32] [--rounds 3]
    python3 scripts/spec_bench.py --model M --spec draft --draft-model D [--flags "--dtype f32"]

Runs `llama32 chat -p PROMPT --json --temperature 0` with `--spec none` and `--spec ngram`
(or `draft`) on input-grounded prompts (rewrite a passage, fix a line in code, turn a list into JSON)
and on free text, and reports decode tok/s (median of the rounds), the ratio, the
acceptance rate, and whether the two answers are identical (they must be).
"""

import argparse
import json
import statistics
import subprocess

PASSAGE = (
    "The lighthouse stood at the end of the rocky point for more than a hundred years. Every night its keeper "
    "climbed the spiral stairs, trimmed the wick, and polished the great lens until it shone. Ships passing in the "
    "dark water saw the beam sweep across the waves and knew they were close to the harbour. When the storms came "
    "in winter, the keeper stayed awake until dawn, watching the light and listening to the wind."
)
CODE = '''def average(values):
    total = 0
    for value in values:
        total += value
    return total / len(value)


def largest(values):
    best = values[0]
    for value in values[1:]:
        if value > best:
            best = value
    return best
'''
PROMPTS = {
    "rewrite": f"Copy this passage exactly, word for word:\n\n{PASSAGE}",
    "code-edit": f"There is a bug in the first function (len(value) should be len(values)). Output the whole corrected code.\n\n```python\n{CODE}```",
    "extract": "Turn this list into a JSON array of objects with name and city: Alice Smith lives in Paris; Bob Jones lives in Rome; "
               "Carol White lives in Oslo; David Brown lives in Madrid; Eve Black lives in Berlin.",
    "free-text": "Write a short poem about the ocean at night.",
}


def run(binary, model, prompt, spec, max_tokens, flags):
    out = subprocess.run([binary, "chat", "--model", model, "-p", prompt, "--json", "--temperature", "0",
                          "--max-tokens", str(max_tokens), "--spec", spec, *flags], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default="target/release/llama32")
    p.add_argument("--model", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--spec", default="ngram", choices=["ngram", "draft"])
    p.add_argument("--draft-model")
    p.add_argument("--flags", default="", help="more flags for both runs, e.g. '--dtype f32 --spec-k 4'")
    a = p.parse_args()
    flags = a.flags.split() + (["--draft-model", a.draft_model] if a.draft_model else [])
    print(f"{'prompt':<10} {'tokens':>6} {'plain tok/s':>11} {a.spec + ' tok/s':>11} {'ratio':>6} {'accepted':>9} {'same':>5}")
    for name, prompt in PROMPTS.items():
        plain, spec, same, stats = [], [], True, None
        for _ in range(a.rounds):
            x = run(a.bin, a.model, prompt, "none", a.max_tokens, flags)
            y = run(a.bin, a.model, prompt, a.spec, a.max_tokens, flags)
            plain.append(x["timings"]["decode_tokens_per_s"])
            spec.append(y["timings"]["decode_tokens_per_s"])
            same &= x["token_ids"] == y["token_ids"]
            stats = y.get("speculation") or {"drafted": 0, "accepted": 0}
        rate = stats["accepted"] / stats["drafted"] if stats["drafted"] else 0.0
        p_med, s_med = statistics.median(plain), statistics.median(spec)
        print(f"{name:<10} {x['completion_tokens']:>6} {p_med:>11.1f} {s_med:>11.1f} {s_med / p_med:>5.2f}x "
              f"{rate:>8.0%} {str(same):>5}")


if __name__ == "__main__":
    main()
