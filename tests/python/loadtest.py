"""Load test for `llama32 serve` from a second process (not collected by pytest).

Starts the server on a checkpoint, then for each concurrency level runs that many streaming
clients (the `openai` package, one thread each), each asking `--requests` seeded questions.
Every streamed answer must equal the answer the same request gets alone (no lost or
mixed-up responses), the server's resident memory is sampled before and after, and the
aggregate decode throughput (completion tokens / wall time) is printed per level.

    python tests/python/loadtest.py --model tests/fixtures/tied-bf16-llama3 --dtype f32
    python tests/python/loadtest.py --model target/llama32-bench/llama-3.2-1b-synthetic --dtype q8_0 --tokens 32
"""

import argparse
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[2]


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", default=os.environ.get("LLAMA32_BIN", str(ROOT / "target/debug/llama32")))
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="f32")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--levels", default="1,4,8")
    p.add_argument("--requests", type=int, default=2, help="requests per client per level")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=600)
    a = p.parse_args()

    proc = subprocess.Popen(
        [a.bin, "serve", "--model", a.model, "--served-model-name", "m", "--dtype", a.dtype, "--port", "0",
         "--parallel", str(a.parallel), "--queue", "64"],
        stderr=subprocess.PIPE, text=True,
    )
    url = None
    for line in proc.stderr:
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=a.time_limit)
    deadline = time.time() + a.time_limit

    def ask(i, stream):
        messages = [{"role": "user", "content": f"Request {i}: write a short story."}]
        kw = dict(model="m", messages=messages, max_tokens=a.tokens, temperature=0.8, seed=i)
        if not stream:
            r = client.chat.completions.create(**kw)
            return r.choices[0].message.content, r.usage.completion_tokens
        text, tokens = "", 0
        for c in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw):
            if c.choices:
                text += c.choices[0].delta.content or ""
            if c.usage:
                tokens = c.usage.completion_tokens
        return text, tokens

    levels = [int(x) for x in a.levels.split(",")]
    total = max(levels) * a.requests
    expected = {i: ask(i, False)[0] for i in range(total)}
    ask(0, True)  # warm-up
    rss0 = rss_mib(proc.pid)
    print(f"server RSS after warm-up: {rss0:.0f} MiB")
    ok = True
    for n in levels:
        ids = list(range(n * a.requests))
        start = time.time()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: ask(i, True), ids))
        wall = time.time() - start
        tokens = sum(t for _, t in results)
        mixed = sum(text != expected[i] for i, (text, _) in zip(ids, results))
        ok &= mixed == 0 and time.time() < deadline
        print(f"{n} concurrent clients: {len(ids)} streams, {tokens} tokens in {wall:.1f} s = "
              f"{tokens / wall:.1f} tok/s aggregate, {mixed} mismatched, RSS {rss_mib(proc.pid):.0f} MiB")
    rss1 = rss_mib(proc.pid)
    print(f"server RSS at the end: {rss1:.0f} MiB (change {rss1 - rss0:+.0f} MiB)")
    proc.kill()
    proc.wait()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
