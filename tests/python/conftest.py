"""Shared fixtures: one npm install (the Node `openai` SDK and `playwright-core`) per run,
into `$LLAMA32_NODE_DIR` or a temporary directory; tests that need it skip cleanly where
node or npm is absent. And `serve`, which the real-model modules' server fixtures share."""

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

NODE_PACKAGES = ["openai@5", "playwright-core@1"]


@pytest.fixture(scope="session")
def node_dir(tmp_path_factory):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm absent")
    modules = Path(os.environ.get("LLAMA32_NODE_DIR") or tmp_path_factory.mktemp("node"))
    missing = [p for p in NODE_PACKAGES if not (modules / "node_modules" / p.rsplit("@", 1)[0]).is_dir()]
    if missing:
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(modules), *missing],
                       check=True, timeout=600)
    return modules


def serve(binary, args):
    """Runs `BINARY serve ARGS --port 0`, yields the address it reports ready on (its stderr
    drained after that), and stops it: `yield from serve(...)` in a fixture."""
    proc = subprocess.Popen(
        [binary, "serve", *args, "--port", "0"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    for line in proc.stderr:
        if line.startswith("ready on "):
            address = line.split()[-1]
            break
    else:
        raise RuntimeError("the server exited before listening")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    yield address
    proc.kill()
    proc.wait()
