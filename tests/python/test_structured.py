"""Structured output enforced by a grammar (llguidance), through the official clients, on
the tiny random-weight fixture: a gibberish model's output can only be valid because the
grammar makes it so. `chat.completions.parse` with a pydantic model, `json_object`,
`tool_choice` required / named (OpenAI) and any / tool (Anthropic), bad schemas as 400."""

import json
from typing import Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from test_openai_client import MODEL, Server


class Weather(BaseModel):
    city: Literal["Paris", "Rome", "Oslo"]
    temperature: int = Field(ge=-50, le=50)
    sunny: bool
    note: str = Field(max_length=12)
    tags: list[Literal["warm", "cold", "wet"]] = Field(max_length=3)


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                    "required": ["city", "days"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "Local time",
     "parameters": {"type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}},
                    "required": ["zone"], "additionalProperties": False}}},
]


def valid_call(name, args):
    if name == "get_weather":
        return set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome") and 1 <= args["days"] <= 7
    return name == "get_time" and args == {"zone": args.get("zone")} and args["zone"] in ("UTC", "CET")


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


def test_parse_with_pydantic_20_seeds(server):
    client = server.client()
    for seed in range(20):
        r = client.beta.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": "Weather?"}],
                                               response_format=Weather, seed=seed, max_tokens=300, temperature=1.0)
        assert isinstance(r.choices[0].message.parsed, Weather), r.choices[0].message.content


def test_json_object_always_loads(server):
    client = server.client()
    for seed in range(20):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "JSON please"}],
                                           response_format={"type": "json_object"}, seed=seed, max_tokens=300,
                                           temperature=1.0)
        assert r.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_streamed_json_schema(server):
    schema = Weather.model_json_schema()
    chunks = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Weather?"}], stream=True, seed=5, max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": "weather", "schema": schema, "strict": True}})
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    Weather.model_validate_json(text)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}])
def test_forced_tool_calls(server, choice):
    client = server.client()
    for seed in range(10):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                           tool_choice=choice, seed=seed, max_tokens=100, temperature=1.0)
        assert r.choices[0].finish_reason == "tool_calls"
        call = r.choices[0].message.tool_calls[0].function
        assert valid_call(call.name, json.loads(call.arguments)), call
        if isinstance(choice, dict):
            assert call.name == "get_time"


def test_anthropic_tool_choice_any(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "input_schema": t["function"]["parameters"]} for t in TOOLS]
    for choice in ({"type": "any"}, {"type": "tool", "name": "get_weather"}):
        m = client.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}],
                                   tools=tools, tool_choice=choice)
        assert m.stop_reason == "tool_use"
        block = m.content[0]
        assert block.type == "tool_use" and valid_call(block.name, block.input)


def test_bad_schemas_are_400(server):
    client = server.client()
    unsatisfiable = [{"type": "string", "minLength": 5, "maxLength": 2}, {"type": "integer", "minimum": 5, "maximum": 2},
                     {"allOf": [{"type": "string"}, {"type": "integer"}]}, {"enum": []}]
    for schema in unsatisfiable:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        assert e.value.body["param"] == "response_format" and "nsatisfiable" in e.value.body["message"]
    for fmt in ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
                {"type": "json_schema", "json_schema": {"name": "x"}},
                {"type": "xml"}):
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], response_format=fmt)
        assert e.value.body["param"].startswith("response_format"), e.value.body
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", extra_body={"guided_grammar": "start: ("})
    assert e.value.body["param"] == "guided_grammar"
