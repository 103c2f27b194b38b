"""Graceful drain (SIGTERM or `POST /admin/drain`), alone and behind a real gateway.

The gateway is LiteLLM's proxy (`litellm[proxy]` from PyPI) started from the running
interpreter's environment; its test skips when litellm or its CLI is absent. Two replicas
sit behind it, 8 clients stream 32 answers through it with the `openai` SDK, and one
replica gets SIGTERM mid-run: no answer may break, the drained replica exits 0, and the
other one takes the rest (the gateway retries the drained replica's 503s there).

The fixture's answers are made to run to `max_tokens` (its end-of-turn tokens banned by
`logit_bias`), so that streams are still running when the drain begins.
"""

import collections
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

from test_edge import scrape, total
from test_openai_client import FIXTURE, HELLO, MODEL, Server

NO_EOS = {str(t): -100 for t in json.loads((Path(FIXTURE) / "config.json").read_text())["eos_token_id"]}
DRAIN_TIMEOUT = 60
KEY = "drain-key"


def call(url, body=None, key=None):
    """GET (or POST `body` as JSON): (status, headers, parsed JSON body or None)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            status, headers, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, headers, raw = e.code, e.headers, e.read()
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        parsed = None
    return status, headers, parsed


def wait_exit(proc, timeout):
    """The exit status, or a failure when the process is still running after `timeout` s."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server still runs {timeout} s after the drain began")


def check_drain(server, start_drain, synchronous, key=None):
    """A slow stream runs; `start_drain()`; the drain's contract holds while it runs; the
    stream then ends normally and the server exits 0 soon after (it is idle by then)."""
    tokens = 600
    stream = server.client(key or "none").chat.completions.create(
        model=MODEL,
        messages=HELLO,
        max_tokens=tokens,
        logit_bias=NO_EOS,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    start_drain()
    began = time.monotonic()

    # A signal is handled a moment after it is sent; `POST /admin/drain` has drained
    # when it answers.
    while (health := call(server.url + "/health"))[0] == 200 and not synchronous:
        assert time.monotonic() - began < 5, "/health still 200 5 s after SIGTERM"
        time.sleep(0.01)
    assert health[::2] == (503, {"status": "draining"}), health
    chat = {"model": MODEL, "messages": HELLO, "max_tokens": 4}
    status, headers, body = call(server.url + "/v1/chat/completions", chat, key)
    assert status == 503, (status, body)
    assert headers.get("Retry-After") == "1", dict(headers)
    assert (headers.get("Connection") or "").lower() == "close", dict(headers)
    status, _, body = call(server.url + "/health")
    assert (status, body) == (503, {"status": "draining"})
    assert call(server.url + "/livez")[0] == 200
    assert server.proc.poll() is None, "the server exited while an answer was running"

    rest = list(chunks)
    ended = time.monotonic()
    finals = [c.choices[0].finish_reason for c in [first, *rest] if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert rest[-1].usage.completion_tokens == tokens
    assert ended - began < DRAIN_TIMEOUT
    assert wait_exit(server.proc, DRAIN_TIMEOUT) == 0
    assert time.monotonic() - ended < 10, "an idle draining server should exit at once"


def test_drain_without_gateway():
    s = Server("--drain-timeout", str(DRAIN_TIMEOUT))
    try:
        check_drain(s, lambda: s.proc.send_signal(signal.SIGTERM), synchronous=False)
    finally:
        s.stop()


def test_admin_drain():
    s = Server("--drain-timeout", str(DRAIN_TIMEOUT), "--api-key", KEY)
    try:
        status, _, _ = call(s.url + "/admin/drain", {})
        assert status == 401
        status, _, _ = call(s.url + "/admin/drain", {}, key="wrong")
        assert status == 401
        assert call(s.url + "/health")[:1] == (200,), "an unauthorized drain request must not drain"

        def drain():
            status, _, body = call(s.url + "/admin/drain", {}, key=KEY)
            assert 200 <= status < 300, (status, body)

        check_drain(s, drain, synchronous=True, key=KEY)
    finally:
        s.stop()


# ---- behind LiteLLM's proxy ----

REQUESTS, CLIENTS, TOKENS = 32, 8, 128


def litellm_cli():
    """The `litellm` command of the running interpreter's environment, or a skip."""
    missing = [m for m in ("litellm", "fastapi", "uvicorn", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"litellm's proxy is not installed ({', '.join(missing)} missing): pip install 'litellm[proxy]'")
    cli = Path(sys.executable).with_name("litellm")
    if not cli.is_file():
        found = shutil.which("litellm")
        if found is None:
            pytest.skip("the litellm CLI is not found next to the interpreter nor on PATH")
        cli = Path(found)
    return cli


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """LiteLLM's proxy in front of `backends`: one model group, offline, one worker (the
    router's cooldowns live in its process), no database."""

    def __init__(self, cli, workdir, backends):
        deployments = [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{url}/v1",
                    "api_key": "none",
                    # No retry on the same replica by the SDK inside LiteLLM: the router
                    # retries on the group, where a drained replica is cooled down.
                    "max_retries": 0,
                },
            }
            for url in backends
        ]
        config = {
            "model_list": deployments,
            "router_settings": {
                "routing_strategy": "simple-shuffle",
                # The first failure (a draining replica's 503, or a connection error
                # once it has exited) cools that replica down for the rest of the test;
                # without `allowed_fails`, LiteLLM cools a deployment down only when
                # most of its recent requests failed, and keeps picking it.
                "allowed_fails": 0,
                "cooldown_time": 600,
                # A retry picks again, at once, among the replicas not cooled down (a
                # request racing the cooldown may pick the same one again).
                "num_retries": 5,
                "retry_after": 0,
            },
            "litellm_settings": {"telemetry": False, "request_timeout": 120},
        }
        path = Path(workdir) / "litellm.yaml"
        path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_", "OPENAI_"))}
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        self.log_path = Path(workdir) / "litellm.log"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(cli), "--config", str(path), "--host", "127.0.0.1", "--port", str(port),
                 "--num_workers", "1", "--telemetry", "False"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"litellm exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if call(self.url + "/health/liveliness")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"litellm not up within 180 s:\n{self.log()}")
            time.sleep(0.25)

    def log(self, tail=4000):
        return self.log_path.read_text(errors="replace")[-tail:]

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


@pytest.fixture
def replicas():
    started = []
    try:
        for _ in range(2):
            started.append(Server("--max-connections-per-ip", "1024", "--drain-timeout", str(DRAIN_TIMEOUT)))
        yield started
    finally:
        for s in started:
            s.stop()


@pytest.fixture
def litellm():
    return litellm_cli()


@pytest.fixture
def gateway(litellm, tmp_path, replicas):
    g = Gateway(litellm, tmp_path, [r.url for r in replicas])
    try:
        yield g
    finally:
        g.stop()


def eventually(get, ok, timeout=5):
    """`get()` once `ok` of it, or its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not ok(got := get()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def chat_statuses(server):
    """Statuses of the chat requests in a replica's request log, in order."""
    found = (re.search(r"POST /v1/chat/completions (\d{3})\b", line) for line in server.log)
    return [int(m.group(1)) for m in found if m]


def test_gateway_drain(litellm, replicas, gateway):
    victim, survivor = replicas
    bases = {victim.url + "/v1": victim, survivor.url + "/v1": survivor}
    cond = threading.Condition()
    records = []
    in_flight = collections.Counter()
    done = collections.Counter()
    next_request = [0]

    def client_loop():
        client = gateway_client()
        while True:
            with cond:
                i = next_request[0]
                if i >= REQUESTS:
                    return
                next_request[0] += 1
            rec = {"i": i, "sent": time.monotonic(), "base": None, "finals": [], "error": None}
            counted = False
            try:
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"Request {i}: tell me a story."}],
                    max_tokens=TOKENS,
                    logit_bias=NO_EOS,
                    stream=True,
                )
                rec["base"] = raw.headers.get("x-litellm-model-api-base")
                with cond:
                    in_flight[rec["base"]] += 1
                    counted = True
                    cond.notify_all()
                for chunk in raw.parse():
                    if chunk.choices and chunk.choices[0].finish_reason:
                        rec["finals"].append(chunk.choices[0].finish_reason)
            except Exception as e:  # noqa: BLE001 - every client error fails the test below
                rec["error"] = repr(e)
            finally:
                rec["ended"] = time.monotonic()
                with cond:
                    if counted:
                        in_flight[rec["base"]] -= 1
                        done[rec["base"]] += 1
                    records.append(rec)
                    cond.notify_all()

    def gateway_client():
        # No SDK retries: what the gateway does not hide, the test sees.
        return openai.OpenAI(base_url=gateway.url + "/v1", api_key="none", max_retries=0, timeout=120)

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(CLIENTS)]
    for t in threads:
        t.start()

    # SIGTERM in the middle: a quarter of the answers done, by both replicas, and the
    # victim streaming some.
    v, s = victim.url + "/v1", survivor.url + "/v1"
    with cond:
        moment = lambda: done[v] >= 1 and done[s] >= 1 and sum(done.values()) >= REQUESTS // 4 and in_flight[v] >= 1
        ready = cond.wait_for(moment, timeout=180)
        assert ready, f"no moment for the SIGTERM: done {dict(done)}, in flight {dict(in_flight)}, {records[:3]}"
        term = time.monotonic()
        victim.proc.send_signal(signal.SIGTERM)
        running_at_term = in_flight[v]

    exited = {}

    def watch():
        try:
            exited["code"] = victim.proc.wait(timeout=DRAIN_TIMEOUT + 30)
        except subprocess.TimeoutExpired:
            exited["code"] = None
        exited["at"] = time.monotonic()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    deadline = time.monotonic() + 300
    for t in threads:
        t.join(timeout=max(0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"clients still running after 300 s: {len(records)} done"
    watcher.join(timeout=DRAIN_TIMEOUT + 40)

    errors = [r for r in records if r["error"]]
    assert not errors, f"{len(errors)} client errors, first: {errors[0]}\n--- litellm log:\n{gateway.log()}"
    assert len(records) == REQUESTS
    assert all(r["finals"] == ["length"] for r in records), [r["finals"] for r in records]
    assert all(r["base"] in bases for r in records), {r["base"] for r in records}

    assert exited.get("code") == 0, f"the drained replica: exit {exited.get('code')}\n{''.join(victim.log[-20:])}"
    assert exited["at"] - term < DRAIN_TIMEOUT

    served = collections.Counter(r["base"] for r in records)
    before = [r for r in records if r["ended"] < term]
    after = [r for r in records if r["sent"] > term]
    assert {r["base"] for r in before} == set(bases), "both replicas answered before the SIGTERM"
    assert running_at_term >= 1
    assert len(after) >= CLIENTS, f"only {len(after)} requests sent after the SIGTERM"
    assert all(r["base"] == s for r in after), "a request sent after the SIGTERM was answered by the drained replica"

    # The replicas' own accounts agree with what the clients saw (a request is logged and
    # counted as its answer ends, a moment after the client may have read its end).
    victim_statuses = eventually(lambda: chat_statuses(victim), lambda got: got.count(200) >= served[v])
    assert victim_statuses.count(200) == served[v], victim_statuses
    assert set(victim_statuses) <= {200, 503}, victim_statuses
    count = lambda: total(scrape(survivor), "llama32_requests_total", route="chat_completions", status="200")
    assert eventually(count, lambda got: got >= served[s]) == served[s]
    print(
        f"served: victim {served[v]} (running at SIGTERM {running_at_term}, 503s while draining "
        f"{victim_statuses.count(503)}), survivor {served[s]}; victim exited "
        f"{exited['at'] - term:.1f} s after SIGTERM"
    )
