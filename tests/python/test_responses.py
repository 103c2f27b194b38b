"""`POST /v1/responses` (OpenAI's Responses API) through the official `openai` clients,
unchanged: plain and streamed answers (the SDK's `responses.stream` accumulator and
`get_final_response`), `responses.parse` with a pydantic model, forced function calls and
their follow-up turn, `max_output_tokens`, stored responses (`retrieve`,
`previous_response_id`, `store: false`), `POST /v1/responses/input_tokens`, 400s naming
the field, and a Node script through the Node SDK.

The server runs the tiny random-weight fixture: its text is gibberish, deterministic with
temperature 0, and only grammar-constrained output (schemas, tool arguments) is valid JSON.
Answers are kept short (a few tokens; bounded schemas for constrained JSON) so the file
runs in well under two minutes on two slow cores.
"""

import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from test_openai_client import MODEL, Server

ROOT = Path(__file__).resolve().parents[2]
NODE_SCRIPT = ROOT / "tests" / "node" / "openai_responses.mjs"

GET_WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                       "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
    "strict": True,
}
GET_TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Local time",
    "parameters": {
        "type": "object",
        "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
        "required": ["zone"],
        "additionalProperties": False,
    },
    "strict": True,
}
TOOLS = [GET_WEATHER, GET_TIME]
# Different prompts, each with a seed (this server's extension), give varied answers.
PROMPTS = ["hi", "Weather?", "What time is it?", "Paris or Rome?", "Tell me something."]


class Forecast(BaseModel):
    """A schema whose JSON is a few tokens long: no free-text strings."""

    city: Literal["Paris", "Rome", "Oslo"]
    days: int = Field(ge=1, le=7)
    sunny: bool


def valid_call(name, args):
    if name == "get_weather":
        return set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome") and 1 <= args["days"] <= 7
    return name == "get_time" and set(args) == {"zone"} and args["zone"] in ("UTC", "CET")


def count_input_tokens(client, **body):
    """`POST /v1/responses/input_tokens` (this SDK version has no `responses.input_tokens`)."""
    return client.post("/responses/input_tokens", body=body, cast_to=object)


def function_calls(response):
    return [item for item in response.output if item.type == "function_call"]


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return server.client()


@pytest.fixture(scope="module")
def weather_call(client):
    """One forced call of `get_weather`, shared by the follow-up tests."""
    r = client.responses.create(model=MODEL, input="Weather in Rome?", tools=TOOLS, temperature=0,
                                tool_choice={"type": "function", "name": "get_weather"}, max_output_tokens=100)
    assert r.status == "completed", r
    return r, function_calls(r)[0]


# --- the plain answer ----------------------------------------------------------------------


def test_plain_response_shape(client):
    r = client.responses.create(model=MODEL, input="Hello!", max_output_tokens=8, temperature=0)
    assert r.id.startswith("resp_")
    assert r.object == "response"
    assert r.model == MODEL
    assert r.created_at > 1.6e9
    assert r.status in ("completed", "incomplete")
    (item,) = r.output
    assert item.type == "message" and item.role == "assistant"
    assert item.id.startswith("msg_")
    (part,) = item.content
    assert part.type == "output_text" and part.annotations == []
    assert r.output_text == part.text and part.text
    u = r.usage
    assert 1 <= u.output_tokens <= 8
    assert u.input_tokens > 0 and u.total_tokens == u.input_tokens + u.output_tokens
    assert u.output_tokens_details.reasoning_tokens == 0
    assert isinstance(u.input_tokens_details.cached_tokens, int) and u.input_tokens_details.cached_tokens >= 0


def test_wire_shape_has_the_fields_the_sdk_types_require(client):
    # The Python SDK builds its models without validation, so a missing required field is
    # a silent `None` there; other clients (and typed SDKs) refuse it. Check the raw JSON.
    raw = client.responses.with_raw_response.create(model=MODEL, input="Hello!", max_output_tokens=3, temperature=0)
    body = raw.http_response.json()
    required = {"id", "object", "created_at", "status", "model", "output", "usage", "error", "incomplete_details",
                "parallel_tool_calls", "tool_choice", "tools"}
    assert required <= set(body), required - set(body)
    assert isinstance(body["tools"], list) and isinstance(body["parallel_tool_calls"], bool)
    (item,) = body["output"]
    assert {"type", "id", "status", "role", "content"} <= set(item)
    (part,) = item["content"]
    assert {"type", "text", "annotations"} <= set(part)
    assert {"input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details",
            "total_tokens"} <= set(body["usage"])


def test_max_output_tokens_makes_it_incomplete(client):
    r = client.responses.create(model=MODEL, input="Hello!", max_output_tokens=3, temperature=0)
    assert r.status == "incomplete"
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_optional_fields_are_accepted(client):
    r = client.responses.create(model=MODEL, input="Hello!", instructions="Be brief.", max_output_tokens=2,
                                temperature=0.5, top_p=0.9, store=True, metadata={"k": "v"}, user="u-1",
                                parallel_tool_calls=False, text={"format": {"type": "text"}})
    assert r.object == "response" and r.usage.output_tokens <= 2


def test_conversation_items_are_accepted(client):
    r = client.responses.create(model=MODEL, max_output_tokens=2, temperature=0, input=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello."}]},
        {"role": "user", "content": "More, please."},
    ])
    assert r.object == "response" and r.output[0].type == "message"


# --- input forms and token counting ----------------------------------------------------------


def test_input_forms_give_the_same_prompt(client):
    forms = [
        "Hello!",
        [{"role": "user", "content": "Hello!"}],
        [{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}],
        [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}],
    ]
    counts = [count_input_tokens(client, model=MODEL, input=form)["input_tokens"] for form in forms]
    assert len(set(counts)) == 1, counts


def test_instructions_are_a_system_message(client):
    plain = count_input_tokens(client, model=MODEL, input="Hello!")["input_tokens"]
    instructed = count_input_tokens(client, model=MODEL, input="Hello!", instructions="Answer in French.")
    as_system = count_input_tokens(client, model=MODEL, input=[{"role": "system", "content": "Answer in French."},
                                                               {"role": "user", "content": "Hello!"}])
    assert instructed["input_tokens"] == as_system["input_tokens"] > plain


def test_input_tokens_count_matches_usage(client):
    body = dict(model=MODEL, instructions="Be brief.", tools=[GET_TIME], max_output_tokens=3, temperature=0,
                input=[{"role": "user", "content": [{"type": "input_text", "text": "What time is it?"}]}])
    counted = count_input_tokens(client, **body)
    assert counted["object"] == "response.input_tokens"
    assert counted["input_tokens"] == client.responses.create(**body).usage.input_tokens


# --- streaming ---------------------------------------------------------------------------------


def test_streamed_events_match_the_plain_answer(client):
    ask = dict(model=MODEL, input="Hello!", max_output_tokens=8, temperature=0)
    plain = client.responses.create(**ask)
    events = list(client.responses.create(**ask, stream=True))
    types = [e.type for e in events]
    n = types.count("response.output_text.delta")
    terminal = "response.completed" if plain.status == "completed" else types[-1]
    assert terminal in ("response.completed", "response.incomplete")
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * n, "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", terminal], types
    assert n >= 1
    seq = [e.sequence_number for e in events]
    assert seq == list(range(seq[0], seq[0] + len(seq))), seq

    created, in_progress, added, part_added = events[:4]
    assert created.response.status == in_progress.response.status == "in_progress"
    assert created.response.output == [] and created.response.id.startswith("resp_")
    assert added.output_index == 0 and added.item.type == "message"
    assert added.item.content == [] and added.item.status == "in_progress"
    item_id = added.item.id
    assert part_added.item_id == item_id and part_added.part.type == "output_text" and part_added.part.text == ""

    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert all((d.item_id, d.output_index, d.content_index) == (item_id, 0, 0) for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text == plain.output_text

    text_done, part_done, item_done, last = events[-4:]
    assert text_done.text == part_done.part.text == text
    assert item_done.item.id == item_id and item_done.item.content[0].text == text
    assert last.response.id == created.response.id
    assert last.response.status == plain.status and last.response.output_text == text
    assert last.response.usage.output_tokens == plain.usage.output_tokens


def test_sse_event_names_match_the_event_types(server):
    body = {"model": MODEL, "input": "Hello!", "max_output_tokens": 3, "temperature": 0, "stream": True}
    names, datas, name = [], [], None
    with httpx.stream("POST", server.url + "/v1/responses", json=body, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[len("event:"):].strip()
            elif line.startswith("data:") and line[len("data:"):].strip() != "[DONE]":
                names.append(name)
                datas.append(json.loads(line[len("data:"):]))
                name = None
    assert names and names == [d["type"] for d in datas], names
    assert all(isinstance(d["sequence_number"], int) for d in datas)


def test_stream_helper_and_parse_agree(client):
    ask = dict(model=MODEL, input="Weather?", text_format=Forecast, max_output_tokens=200, temperature=0)
    with client.responses.stream(**ask) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    (done,) = [e for e in events if e.type == "response.output_text.done"]
    assert final.status == "completed"
    assert isinstance(final.output_parsed, Forecast) and done.parsed == final.output_parsed
    assert deltas == final.output_text == done.text
    parsed = client.responses.parse(**ask)
    assert parsed.status == "completed"
    assert parsed.output_text == final.output_text and parsed.output_parsed == final.output_parsed


def test_streamed_function_call(client):
    ask = dict(model=MODEL, input="What time is it?", tools=[GET_TIME], max_output_tokens=100, temperature=0,
               tool_choice={"type": "function", "name": "get_time"})
    plain = client.responses.create(**ask)
    with client.responses.stream(**ask) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    n = types.count("response.function_call_arguments.delta")
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * n, "response.function_call_arguments.done",
                     "response.output_item.done", "response.completed"], types
    added = events[2]
    assert added.item.type == "function_call" and added.item.name == "get_time" and added.item.arguments == ""
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert events[-3].arguments == events[-2].item.arguments == arguments
    assert all(e.item_id == added.item.id for e in events if e.type.startswith("response.function_call_arguments"))
    (call,) = function_calls(final)
    assert call.arguments == arguments == function_calls(plain)[0].arguments
    assert call.call_id.startswith("call_") and call.id == added.item.id
    # `strict: true` tools: the SDK parses the arguments itself.
    assert call.parsed_arguments == json.loads(arguments) and valid_call("get_time", call.parsed_arguments)


# --- tools ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_time"}])
def test_forced_function_calls_are_valid(client, choice):
    for prompt in PROMPTS:
        r = client.responses.create(model=MODEL, input=prompt, tools=TOOLS, tool_choice=choice, temperature=1.0,
                                    max_output_tokens=100, extra_body={"seed": len(prompt)})
        assert r.status == "completed", r
        calls = function_calls(r)
        assert calls and len(calls) == len(r.output), r.output
        for call in calls:
            assert call.id.startswith("fc_") and call.call_id.startswith("call_") and call.status == "completed"
            assert valid_call(call.name, json.loads(call.arguments)), call
            if isinstance(choice, dict):
                assert call.name == "get_time"


def test_tool_choice_none_answers_in_text(client):
    r = client.responses.create(model=MODEL, input="Weather in Rome?", tools=TOOLS, tool_choice="none",
                                max_output_tokens=4, temperature=0)
    assert [item.type for item in r.output] == ["message"]


def test_function_call_output_follow_up(client, weather_call):
    _, call = weather_call
    r = client.responses.create(model=MODEL, max_output_tokens=4, temperature=0, tools=TOOLS, input=[
        {"role": "user", "content": "Weather in Rome?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"sky": "clear"})},
    ])
    assert r.object == "response" and r.usage.output_tokens >= 1


def test_sdk_output_items_can_be_sent_back(client, weather_call):
    # The documented idiom: `input += response.output`. The SDK sends each item as it came,
    # `id` and `status` included.
    first, call = weather_call
    r = client.responses.create(model=MODEL, max_output_tokens=4, temperature=0, tools=TOOLS, input=[
        {"role": "user", "content": "Weather in Rome?"},
        *first.output,
        {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
    ])
    assert r.object == "response"


# --- structured output ---------------------------------------------------------------------------


def test_json_schema_format(client):
    schema = Forecast.model_json_schema()
    for seed, prompt in enumerate(PROMPTS[:3]):
        # `seed` is this server's extension (as in chat completions).
        r = client.responses.create(model=MODEL, input=prompt, temperature=1.0, max_output_tokens=200,
                                    extra_body={"seed": seed}, text={
            "format": {"type": "json_schema", "name": "forecast", "schema": schema, "strict": True}})
        assert r.status == "completed", r.output_text
        Forecast.model_validate_json(r.output_text)


def test_json_object_format(client):
    for seed in range(3):
        r = client.responses.create(model=MODEL, input="JSON please", temperature=1.0, max_output_tokens=300,
                                    extra_body={"seed": seed}, text={"format": {"type": "json_object"}})
        assert r.status == "completed", r.output_text
        assert isinstance(json.loads(r.output_text), dict)


# --- stored responses ----------------------------------------------------------------------------


def test_retrieve_a_stored_response(client):
    r = client.responses.create(model=MODEL, input="Hello!", max_output_tokens=4, temperature=0)
    got = client.responses.retrieve(r.id)
    assert (got.id, got.object, got.status) == (r.id, "response", r.status)
    assert got.output_text == r.output_text
    assert got.usage.input_tokens == r.usage.input_tokens and got.usage.output_tokens == r.usage.output_tokens


def test_unstored_responses_are_not_retrievable(client):
    r = client.responses.create(model=MODEL, input="Hello!", max_output_tokens=2, temperature=0, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


def test_previous_response_id_continues_the_conversation(client):
    first = client.responses.create(model=MODEL, input="Hello!", max_output_tokens=4, temperature=0)
    second = client.responses.create(model=MODEL, input="Tell me more.", previous_response_id=first.id,
                                     max_output_tokens=4, temperature=0)
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens


def test_unknown_previous_response_id_is_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hello!", previous_response_id="resp_doesnotexist",
                                max_output_tokens=2)


# --- bad requests --------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, param", [
    ({"extra_body": {"foo": 1}}, "foo"),
    ({"input": 5}, "input"),
    ({"input": [{"role": "user", "content": 5}]}, "input[0].content"),
    ({"temperature": "hot"}, "temperature"),
    ({"max_output_tokens": "many"}, "max_output_tokens"),
    ({"tool_choice": "sometimes", "tools": [GET_TIME]}, "tool_choice"),
])
def test_bad_fields_are_400_naming_the_field(client, fields, param):
    ask = {"model": MODEL, "input": "Hello!", "max_output_tokens": 2, **fields}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(**ask)
    assert e.value.body["param"] == param, e.value.body


def test_unknown_text_format_is_400(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=MODEL, input="Hello!", max_output_tokens=2, text={"format": {"type": "xml"}})
    assert e.value.body["param"].startswith("text"), e.value.body


# --- the Node SDK --------------------------------------------------------------------------------


def test_node_openai_sdk_responses(server, node_dir):
    script = node_dir / NODE_SCRIPT.name
    shutil.copy(NODE_SCRIPT, script)
    out = subprocess.run(["node", str(script), server.url + "/v1", MODEL], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)

    plain = result["plain"]
    assert plain["id"].startswith("resp_") and plain["object"] == "response"
    assert plain["item_types"] == ["message"] and plain["text"]
    assert plain["output_tokens"] <= 6

    stream = result["stream"]
    assert stream["first"] == "response.created" and stream["last"] in ("response.completed", "response.incomplete")
    assert stream["deltas"] >= 1 and stream["sequence_consecutive"]
    assert stream["text"] == stream["final_text"] == plain["text"]
    assert stream["final_status"] == plain["status"]
    assert result["helper"]["text"] == plain["text"]

    tool = result["tool"]
    assert tool["status"] == "completed" and tool["item_types"] == ["function_call"]
    assert tool["name"] == "get_time" and tool["call_id"].startswith("call_")
    assert valid_call(tool["name"], json.loads(tool["arguments"])), tool
