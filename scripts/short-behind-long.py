#!/usr/bin/env python3
"""Time a short completion alone, then sent 1 s after a long one (both `max_tokens: 1`),
against `llama32 serve` started here: how much a long prompt holds back a short one.

usage: scripts/short-behind-long.py BINARY [--model DIR] [--port N] [--words N]
"""
import argparse
import json
import subprocess
import threading
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--model", default="tests/fixtures/tied-bf16-llama3")
    ap.add_argument("--port", type=int, default=18190)
    ap.add_argument("--words", type=int, default=40000)
    a = ap.parse_args()
    server = subprocess.Popen([a.binary, "serve", "--model", a.model, "--port", str(a.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{a.port}"

    def post(body):
        req = urllib.request.Request(f"{base}/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        start = time.time()
        urllib.request.urlopen(req, timeout=900).read()
        return time.time() - start

    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        alone = post({"prompt": "Hi there", "max_tokens": 1})
        long_took = {}
        long = threading.Thread(
            target=lambda: long_took.setdefault("s", post({"prompt": "hello " * a.words, "max_tokens": 1})))
        long.start()
        time.sleep(1.0)
        during = post({"prompt": "Hi there", "max_tokens": 1})
        long.join()
        print(f"{a.binary}: short alone {alone:.3f} s, during a {a.words}-word prompt {during:.3f} s, "
              f"the long prompt {long_took['s']:.1f} s")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
