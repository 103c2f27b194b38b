"""The interactive `llama32 chat` on a real terminal (tmux): line editing (arrow keys move
the cursor instead of reaching the model as `^[[D`), history (Up recalls the last line),
Ctrl-C at an idle prompt says how to leave, Ctrl-D ends the session. Skips without tmux."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLAMA32_BIN", str(ROOT / "target" / "debug" / "llama32"))
FIXTURE = str(ROOT / "tests" / "fixtures" / "tied-bf16-llama3")


def tmux(*args):
    return subprocess.run(["tmux", "-L", "llama32-test", *args], capture_output=True, text=True, check=False).stdout


def screen():
    return [line for line in tmux("capture-pane", "-t", "chat", "-p").splitlines() if line.strip()]


def wait_for(predicate, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate(screen()):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux absent")
def test_line_editing_history_and_keys():
    done = Path("/tmp") / f"llama32-chat-done-{os.getpid()}"
    command = f"{BIN} chat --model {FIXTURE} -n 3 --temperature 0; touch {done}; sleep 60"
    tmux("new-session", "-d", "-s", "chat", "-x", "120", "-y", "30", command)
    try:
        assert wait_for(lambda s: s and s[-1].startswith(">>>")), screen()
        tmux("send-keys", "-t", "chat", "helo", "Left", "Left", "l")
        assert wait_for(lambda s: s[-1] == ">>> hello"), screen()
        tmux("send-keys", "-t", "chat", "Enter")
        assert wait_for(lambda s: len(s) >= 2 and s[-1] == ">>>" and "^[" not in "".join(s)), screen()
        tmux("send-keys", "-t", "chat", "C-c")
        assert wait_for(lambda s: any("Ctrl-D or /exit leaves" in line for line in s)), screen()
        tmux("send-keys", "-t", "chat", "Up")
        assert wait_for(lambda s: s[-1] == ">>> hello"), screen()
        tmux("send-keys", "-t", "chat", "C-u", "C-d")
        deadline = time.time() + 10
        while not done.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert done.exists(), screen()
    finally:
        tmux("kill-server")
        done.unlink(missing_ok=True)
