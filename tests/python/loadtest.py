"""Load test for `llama32 serve` from a second process (not collected by pytest).

Starts the server on a checkpoint, then for each concurrency level runs that many streaming
clients (the `openai` package, one thread each), each asking `--requests` seeded questions.
Every streamed answer must equal the answer the same request gets alone (no lost or
mixed-up responses), the server's resident memory is sampled before and after, and the
aggregate decode throughput (completion tokens / wall time) is printed per level.

    python tests/python/loadtest.py --model tests/fixtures/tied-bf16-llama3 --dtype f32
    python tests/python/loadtest.py --model target/llama32-bench/llama-3.2-1b-synthetic --dtype q8_0 --tokens 32
    python tests/python/loadtest.py --url http://127.0.0.1:8081 --levels 1,8   # another server (llama-server)

Also reports the median and 95th percentile time to first token per level. `--prompt-words N`
makes each user message about N words longer (distinct per request, so no prefix is shared
beyond the chat template's header). `--api completions` sends the same conversation as
Llama 3's chat text to /v1/completions instead (for a server whose chat endpoint fails on
a random-weight model's output: ik_llama.cpp's parses every answer for tool calls).
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
    p.add_argument("--model", help="checkpoint to serve (not needed with --url)")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--parallel", type=int, default=None, help="the server's --parallel (default: its own)")
    p.add_argument("--prompt-words", type=int, default=0)
    p.add_argument("--url", default=None, help="measure this running server instead of starting one")
    p.add_argument("--levels", default="1,4,8")
    p.add_argument("--requests", type=int, default=2, help="requests per client per level")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--time-limit", type=float, default=600)
    p.add_argument("--api", choices=["chat", "completions"], default="chat")
    a = p.parse_args()

    proc, url = None, a.url
    if url is None:
        cmd = [a.bin, "serve", "--model", a.model, "--served-model-name", "m", "--dtype", a.dtype, "--port", "0",
               "--queue", "64"]
        if a.parallel:
            cmd += ["--parallel", str(a.parallel)]
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if line.startswith("ready on "):
                url = line.split()[-1]
                break
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=a.time_limit)
    deadline = time.time() + a.time_limit

    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()

    def ask(i, stream):
        filler = " ".join(words[(i * 7 + k * 3) % len(words)] + str(i) for k in range(a.prompt_words))
        content = f"Request {i}: write a short story. {filler}"
        kw = dict(model="m", max_tokens=a.tokens, temperature=0.8, seed=i)
        if a.api == "chat":
            create, kw["messages"] = client.chat.completions.create, [{"role": "user", "content": content}]
            piece = lambda c: c.choices[0].delta.content if c.choices else None  # noqa: E731
            whole = lambda r: r.choices[0].message.content  # noqa: E731
        else:  # the chat template's text; the server adds the BOS
            create = client.completions.create
            kw["prompt"] = (f"<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>"
                            "<|start_header_id|>assistant<|end_header_id|>\n\n")
            piece = lambda c: c.choices[0].text if c.choices else None  # noqa: E731
            whole = lambda r: r.choices[0].text  # noqa: E731
        if not stream:
            r = create(**kw)
            return whole(r), r.usage.completion_tokens, 0.0
        text, tokens, t0, ttft = "", 0, time.time(), None
        for c in create(stream=True, stream_options={"include_usage": True}, **kw):
            if piece(c):
                ttft = ttft or time.time() - t0
                text += piece(c)
            if c.usage:
                tokens = c.usage.completion_tokens
        return text, tokens, ttft or time.time() - t0

    levels = [int(x) for x in a.levels.split(",")]
    ask(-1, True)  # warm-up
    rss = (lambda: rss_mib(proc.pid)) if proc else (lambda: float("nan"))
    rss0 = rss()
    print(f"server RSS after warm-up: {rss0:.0f} MiB")
    ok = True
    # Every stream is a request never seen before (nothing in a prefix cache); the same
    # requests are asked again alone afterwards and must give the same answers.
    rounds, base = [], 0
    for n in levels:
        ids = list(range(base, base + n * a.requests))
        base += len(ids)
        start = time.time()
        with ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda i: ask(i, True), ids))
        wall = time.time() - start
        rounds.append((n, ids, results))
        tokens = sum(t for _, t, _ in results)
        ttfts = sorted(t for _, _, t in results)
        p50, p95 = ttfts[len(ttfts) // 2], ttfts[min(len(ttfts) - 1, int(0.95 * len(ttfts)))]
        ok &= time.time() < deadline
        print(f"{n} concurrent clients: {len(ids)} streams, {tokens} tokens in {wall:.1f} s = "
              f"{tokens / wall:.1f} tok/s aggregate, TTFT p50 {p50:.2f} s p95 {p95:.2f} s, RSS {rss():.0f} MiB")
    def alone(i):
        try:
            return ask(i, False)[0]
        except openai.APIError as e:  # counted as differing
            print(f"request {i} alone failed: {e}")
            return None

    for n, ids, results in rounds:
        mixed = sum(text != alone(i) for i, (text, _, _) in zip(ids, results))
        ok &= mixed == 0 or proc is None
        print(f"{n} concurrent clients: {mixed} of {len(ids)} answers differ from the same request alone")
    rss1 = rss()
    print(f"server RSS at the end: {rss1:.0f} MiB (change {rss1 - rss0:+.0f} MiB)")
    if proc:
        proc.kill()
        proc.wait()
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
