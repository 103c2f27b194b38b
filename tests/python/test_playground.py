"""The playground page (`GET /`) in a real browser: Debian's chromium driven by
`playwright-core` (tests/browser/playground.mjs): example prompt, streamed answer and stats,
Stop (the server logs the cancelled request as 499), the server's 400 shown, parameters kept
across a reload, hostile text shown as text, phone width. Skips where chromium is absent."""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from test_openai_client import Server

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium absent")
def test_playground_in_a_browser(node_dir, tmp_path):
    server = Server()
    try:
        script = node_dir / "playground.mjs"
        shutil.copy(ROOT / "tests" / "browser" / "playground.mjs", script)
        shot = Path(os.environ.get("LLAMA32_SCREENSHOT") or tmp_path / "playground.png")
        out = subprocess.run(["node", str(script), server.url + "/", str(shot)],
                             capture_output=True, text=True, timeout=180, env={**os.environ, "CHROMIUM": CHROMIUM})
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        assert "temperature" in result["error"]
        assert shot.stat().st_size > 10_000
        deadline = time.time() + 10
        while not any(" 499 " in line for line in server.log) and time.time() < deadline:
            time.sleep(0.1)
        assert any("POST /v1/chat/completions 499" in line for line in server.log), "".join(server.log)
        assert server.health()["running"] == 0
    finally:
        server.stop()


def test_no_playground_flag():
    server = Server("--no-playground")
    try:
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(server.url + "/", timeout=10)
        assert e.value.code == 404
    finally:
        server.stop()
