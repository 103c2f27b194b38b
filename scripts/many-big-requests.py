#!/usr/bin/env python3
"""Send 50 concurrent chat requests of ~1 MB each to `llama32 serve` started here and print
the server's resident memory before and at its peak, with the statuses that came back.

usage: scripts/many-big-requests.py BINARY [--model DIR] [--port N] [--clients N]
"""
import argparse
import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--model", default="tests/fixtures/tied-bf16-llama3")
    ap.add_argument("--port", type=int, default=18191)
    ap.add_argument("--clients", type=int, default=50)
    a = ap.parse_args()
    server = subprocess.Popen([a.binary, "serve", "--model", a.model, "--port", str(a.port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{a.port}"

    def rss_mib():
        with open(f"/proc/{server.pid}/status") as f:
            return int(f.read().split("VmRSS:")[1].split()[0]) // 1024

    body = json.dumps({"messages": [{"role": "user", "content": "word " * 200000}], "max_tokens": 1}).encode()
    codes = []

    def one():
        req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=300).read()
            codes.append(200)
        except urllib.error.HTTPError as e:
            codes.append(e.code)
        except OSError as e:
            codes.append(type(e).__name__)

    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        before = rss_mib()
        peak = before
        clients = [threading.Thread(target=one) for _ in range(a.clients)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            peak = max(peak, rss_mib())
            time.sleep(0.05)
        print(f"{a.binary}: RSS before {before} MiB, peak {peak} MiB, statuses {dict(Counter(codes))}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
