"""scripts/gpu-check.sh end to end in its CPU mode (--device cpu --quick), so that the
script a GPU machine runs cannot rot: parity files, bench JSON and the report."""

import json
import os
import subprocess
from pathlib import Path

from test_openai_client import BIN, ROOT


def test_gpu_check_script_runs_on_cpu(tmp_path):
    out = subprocess.run([str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--quick", "--bin", BIN,
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["device"] == "cpu"
    assert len(report["parity"]) >= 3
    assert all(p["tokens_identical"] and p["max_logprob_diff"] == 0.0 for p in report["parity"])
    assert report["bench"] and report["batched"]
    assert "parity: ok" in out.stdout
