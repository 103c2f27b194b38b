"""`logprobs` through the official `openai` client: chat (`logprobs` + `top_logprobs`) and
completions (`logprobs: int`), plain and streamed, in OpenAI's shapes."""

import math

import openai
import pytest

from test_openai_client import HELLO, MODEL, Server


@pytest.fixture(scope="module")
def client():
    s = Server()
    yield s.client()
    s.stop()


def test_chat_logprobs_plain_and_streamed(client):
    r = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                       logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 6
    for entry in content:
        assert entry.logprob <= 0 and math.exp(entry.logprob) <= 1
        assert len(entry.top_logprobs) == 3
        # Greedy: the most likely alternative is the token chosen.
        assert entry.top_logprobs[0].token == entry.token
        assert abs(entry.top_logprobs[0].logprob - entry.logprob) < 1e-6
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        assert isinstance(entry.bytes, list)
    assert b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace") == r.choices[0].message.content
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0,
                                                logprobs=True, top_logprobs=3, stream=True):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed.extend(chunk.choices[0].logprobs.content)
    # Same tokens; values equal up to float noise (the second request reuses cached KV).
    assert [e.token for e in streamed] == [e.token for e in content]
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(streamed, content))
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(t) <= 2 for t in lp.top_logprobs)
    assert lp.text_offset == sorted(lp.text_offset)
    # With `echo`, the prompt's tokens come first (the first has no log-probability).
    echo = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=2, logprobs=1, echo=True,
                                     temperature=0)
    lp = echo.choices[0].logprobs
    n = len(lp.tokens) - 2
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:]) and all(len(t) == 1 for t in lp.top_logprobs[1:])
    assert lp.text_offset[0] == 0 and lp.text_offset[n] == len("Once upon a time")
    assert echo.choices[0].text.startswith("Once upon a time")
    # `max_tokens: 0` scores the prompt only (what evaluation harnesses send).
    scored = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=0, logprobs=1, echo=True)
    assert scored.choices[0].text == "Once upon a time" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[:n]


def test_bad_logprobs_requests(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=HELLO, logprobs=True, top_logprobs=21)
    assert e.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=HELLO, top_logprobs=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", logprobs=50)
    assert e.value.body["param"] == "logprobs"
