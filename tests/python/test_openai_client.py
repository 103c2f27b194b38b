"""`llama32 serve` driven by the official `openai` Python package, unchanged.

The server runs the tiny random-weight fixture (answers are gibberish but deterministic
with temperature 0 or a seed). The binary is `$LLAMA32_BIN` (default target/debug/llama32).
"""

import json
import os
import subprocess
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLAMA32_BIN", str(ROOT / "target" / "debug" / "llama32"))
FIXTURE = str(ROOT / "tests" / "fixtures" / "tied-bf16-llama3")
MODEL = "tiny"
HELLO = [{"role": "user", "content": "Hello!"}]


class Server:
    def __init__(self, *extra):
        env = {k: v for k, v in os.environ.items() if k != "LLAMA32_API_KEY"}
        self.proc = subprocess.Popen(
            [BIN, "serve", "--model", FIXTURE, "--served-model-name", MODEL, "--dtype", "f32", "--port", "0", *extra],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        self.log = []
        for line in self.proc.stderr:
            if line.startswith("ready on "):
                self.url = line.split()[-1]
                break
        else:
            raise RuntimeError("the server exited before listening")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def client(self, key="none", **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120, **kw)

    def health(self):
        with urllib.request.urlopen(self.url + "/health", timeout=10) as r:
            return json.load(r)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def server():
    s = Server("--parallel", "1", "--queue", "32")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


def test_models_and_plain_chat(client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + 8
    assert isinstance(r.choices[0].message.content, str)


def test_streamed_chat_matches_plain(client):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=10, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HELLO,
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10


def test_completions(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    assert r.usage.completion_tokens == 6
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True)
    )
    assert streamed == r.choices[0].text


def test_seeded_determinism_and_n(client):
    def ask(seed, n=1):
        r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=1.0, seed=seed, n=n)
        return [c.message.content for c in r.choices]

    a, b = ask(42), ask(42)
    assert a == b
    assert ask(42, n=2) == [a[0], ask(43)[0]]


def test_tools_round_trip_is_accepted(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    r = client.chat.completions.create(
        model=MODEL, messages=messages, tools=tools, tool_choice="auto", max_tokens=6, temperature=0
    )
    choice = r.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    if choice.finish_reason == "tool_calls":
        json.loads(choice.message.tool_calls[0].function.arguments)
    else:
        assert isinstance(choice.message.content, str)
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=messages, tools=tools, max_tokens=6, temperature=0, stream=True)
    )
    assert chunks[-1].choices[0].finish_reason == choice.finish_reason


def test_error_statuses(server, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=-1)
    assert e.value.status_code == 400 and e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "x"}])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens="many")
    assert e.value.param == "max_tokens"
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.get("/nowhere", cast_to=object)
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL, prompt="x" * (2 << 20), max_tokens=1)
    assert e.value.status_code == 413


def test_prompt_over_the_context_window():
    s = Server("--ctx-size", "64")
    try:
        with pytest.raises(openai.BadRequestError) as e:
            s.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 200}])
        assert e.value.code == "context_length_exceeded"
    finally:
        s.stop()


def test_api_key():
    s = Server("--api-key", "sekrit")
    try:
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert s.client("sekrit").models.list().data[0].id == MODEL
        assert not any("sekrit" in line for line in s.log)
    finally:
        s.stop()


def test_full_queue_is_503():
    s = Server("--parallel", "1", "--queue", "1")
    try:
        client = s.client()

        def long_request(_):
            try:
                client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=150, temperature=0)
                return 200
            except openai.APIStatusError as e:
                if e.status_code == 503:
                    assert e.response.headers.get("retry-after")
                return e.status_code

        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(long_request, range(6)))
        assert statuses.count(503) >= 1, statuses
        assert statuses.count(200) >= 2, statuses
        assert set(statuses) <= {200, 503}, statuses
    finally:
        s.stop()


def test_concurrent_streams_are_not_mixed_up(server, client):
    """N streaming clients at once; each seeded answer equals the one it gets alone."""
    n, tokens = 6, 12

    def prompt(i):
        return [{"role": "user", "content": f"Client {i}: tell me something."}]

    def alone(i):
        r = client.chat.completions.create(model=MODEL, messages=prompt(i), max_tokens=tokens, temperature=0.8, seed=i)
        return r.choices[0].message.content

    expected = [alone(i) for i in range(n)]

    def streamed(i):
        stream = client.chat.completions.create(
            model=MODEL, messages=prompt(i), max_tokens=tokens, temperature=0.8, seed=i, stream=True
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    start = time.time()
    with ThreadPoolExecutor(n) as pool:
        got = list(pool.map(streamed, range(n)))
    assert got == expected
    assert time.time() - start < 120
    assert server.health()["running"] == 0
