"""`llama32 serve`'s Messages API driven by the official `anthropic` Python SDK, unchanged:
plain and streamed messages, stop sequences, a tool-use round trip with `tool_result`,
count_tokens equal to the prompt tokens actually used, and each error status in
Anthropic's shape."""

import json
import urllib.error
import urllib.request

import anthropic
import pytest

from test_openai_client import MODEL, Server

HELLO = [{"role": "user", "content": "Hello!"}]
WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def server():
    s = Server("--api-key", "sekrit")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.url, api_key="sekrit", max_retries=0, timeout=120)


def test_plain_message(client):
    m = client.messages.create(model=MODEL, max_tokens=8, messages=HELLO, temperature=0)
    assert m.type == "message" and m.role == "assistant" and m.model == MODEL
    assert m.id.startswith("msg_")
    assert m.stop_reason == "max_tokens"
    assert m.usage.output_tokens == 8
    assert m.content[0].type == "text" and m.content[0].text
    count = client.messages.count_tokens(model=MODEL, messages=HELLO)
    assert count.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens


def test_system_blocks_and_count_tokens(client):
    system = [{"type": "text", "text": "Be brief."}]
    m = client.messages.create(model=MODEL, max_tokens=2, system=system, messages=HELLO, temperature=0)
    count = client.messages.count_tokens(model=MODEL, system=system, messages=HELLO)
    assert count.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens
    assert count.input_tokens > client.messages.count_tokens(model=MODEL, messages=HELLO).input_tokens


def test_streamed_equals_plain(client):
    plain = client.messages.create(model=MODEL, max_tokens=10, messages=HELLO, temperature=0)
    kinds = []
    with client.messages.stream(model=MODEL, max_tokens=10, messages=HELLO, temperature=0) as stream:
        for event in stream:
            kinds.append(event.type)
        final = stream.get_final_message()
    assert final.content[0].text == plain.content[0].text
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 10
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds


def test_stop_sequence(client):
    plain = client.messages.create(model=MODEL, max_tokens=12, messages=HELLO, temperature=0)
    text = plain.content[0].text
    stop = text[len(text) // 2:][:3].strip() or text[-1]
    m = client.messages.create(model=MODEL, max_tokens=12, messages=HELLO, temperature=0, stop_sequences=[stop])
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert stop not in m.content[0].text


def test_tool_round_trip(client):
    # A gibberish model rarely calls a tool by itself: the history carries the call, and
    # the answer to the tool result must come back as a normal message.
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C, sunny"}]},
    ]
    m = client.messages.create(model=MODEL, max_tokens=6, messages=messages, tools=[WEATHER], temperature=0)
    assert m.stop_reason in ("max_tokens", "end_turn", "tool_use")
    count = client.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER])
    assert count.input_tokens == m.usage.input_tokens + m.usage.cache_read_input_tokens
    # tool_choice none leaves the tools out of the prompt.
    none = client.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER], tool_choice={"type": "none"})
    assert none.input_tokens < count.input_tokens


def test_errors_in_anthropic_shape(server, client):
    with pytest.raises(anthropic.AuthenticationError) as e:
        anthropic.Anthropic(base_url=server.url, api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=4, messages=HELLO)
    assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError) as e:
        client.messages.create(model="claude-x", max_tokens=4, messages=HELLO)
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=4, messages=HELLO, temperature=-1)
    assert e.value.body["error"]["type"] == "invalid_request_error"
    assert "temperature" in e.value.body["error"]["message"]
    # max_tokens is required, as on Anthropic's API (the SDK requires it too: send raw).
    req = urllib.request.Request(server.url + "/v1/messages", method="POST",
                                 data=json.dumps({"model": MODEL, "messages": HELLO}).encode(),
                                 headers={"x-api-key": "sekrit", "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    body = json.loads(e.value.read())
    assert e.value.code == 400 and body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]
    # The shared layers' and the router's errors on the Messages API's paths too.
    for method, path, headers, status, kind in [
        ("POST", "/v1/messages", {"x-api-key": "sekrit", "content-type": "text/plain"}, 415, "invalid_request_error"),
        ("GET", "/v1/messages", {"x-api-key": "sekrit"}, 405, "invalid_request_error"),
        ("POST", "/v1/messages/nothing", {"x-api-key": "sekrit", "content-type": "application/json"}, 404,
         "not_found_error"),
    ]:
        req = urllib.request.Request(server.url + path, method=method, data=b"{}" if method == "POST" else None,
                                     headers=headers)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        body = json.loads(e.value.read())
        assert (e.value.code, body["type"], body["error"]["type"]) == (status, "error", kind), (path, body)


def test_a_prefilled_answer_and_stop_twice_are_refused(client):
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=4, messages=HELLO + [{"role": "assistant", "content": "{"}])
    assert "prefilled" in e.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=4, messages=HELLO, stop_sequences=["a"],
                               extra_body={"stop": ["b"]})
    assert "stop_sequences" in e.value.body["error"]["message"]
