"""Shared fixtures: one npm install (the Node `openai` SDK and `playwright-core`) per run,
into `$LLAMA32_NODE_DIR` or a temporary directory; tests that need it skip cleanly where
node or npm is absent."""

import os
import shutil
import subprocess
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
