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


# --- every grammar field is honoured or refused (issue 26) -----------------------------------


def test_vllm_and_llama_server_grammar_fields(server):
    client = server.client()
    hi = [{"role": "user", "content": "hi"}]
    forecast = {"type": "object", "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer",
                "minimum": 1, "maximum": 7}}, "required": ["city", "days"]}
    for seed in range(3):
        ask = dict(model=MODEL, messages=hi, seed=seed, temperature=1.0, max_tokens=60)
        r = client.chat.completions.create(**ask, extra_body={"guided_choice": ["yes", "no"]})
        assert r.choices[0].message.content in ("yes", "no")
        r = client.chat.completions.create(**ask, extra_body={"structured_outputs": {"choice": ["red", "blue"]}})
        assert r.choices[0].message.content in ("red", "blue")
        r = client.chat.completions.create(**ask, extra_body={"grammar": 'root ::= ("ab" | "cd") [0-9]{2}'})
        text = r.choices[0].message.content
        assert text[:2] in ("ab", "cd") and text[2:].isdigit() and len(text) == 4, text
        for extra in ({"json_schema": forecast}, {"guided_json": forecast},
                      {"response_format": {"type": "json_object", "schema": forecast}}):
            r = client.chat.completions.create(**ask, extra_body=extra) if "response_format" not in extra else \
                client.chat.completions.create(**ask, response_format=extra["response_format"])
            got = json.loads(r.choices[0].message.content)
            # A missing `additionalProperties` counts as false: no other keys.
            assert set(got) == {"city", "days"} and got["city"] in ("Paris", "Rome"), (extra, got)
    r = client.completions.create(model=MODEL, prompt="x", max_tokens=10, seed=1,
                                  extra_body={"guided_regex": "(yes|no)"})
    assert r.choices[0].text in ("yes", "no")


def test_unhonoured_fields_and_wrong_types_are_400(server):
    client = server.client()
    hi = [{"role": "user", "content": "hi"}]
    cases = [
        (dict(messages=hi, extra_body={"guided_decoding_backend": "xgrammar"}), "guided_decoding_backend"),
        (dict(messages=hi, extra_body={"reasoning_effort": "high"}), "reasoning_effort"),
        (dict(messages=[{"role": "user", "content": 123}]), "messages[0].content"),
        (dict(messages=hi, tools=[{"type": "function", "function": {"name": "f", "parameters": 5}}]),
         "tools[0].function.parameters"),
        (dict(messages=hi, extra_body={"guided_regex": "a", "grammar": 'root ::= "a"'}), "grammar"),
        (dict(messages=hi, extra_body={"grammar": "root = a"}), "grammar"),
        (dict(messages=hi, tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}),
         "response_format"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=MODEL, max_tokens=2, **fields)
        assert e.value.body["param"] == param, (fields, e.value.body)


def test_anthropic_messages_parse_with_output_config(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)

    # The SDK moves numeric bounds into descriptions (Anthropic's schemas take none), so the
    # model has only enums and booleans: a random-weight model then always finishes.
    class Forecast(BaseModel):
        city: Literal["Paris", "Rome"]
        sunny: bool

    for _ in range(3):
        m = client.messages.parse(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Weather?"}],
                                  output_format=Forecast, temperature=1.0)
        assert isinstance(m.parsed_output, Forecast), m.content
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "x"}],
                               thinking={"type": "enabled", "budget_tokens": 1024})


def test_anthropic_thinking_blocks_in_history_are_left_out(server):
    client = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "More."}]
    thought = [plain[0], {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "The user greets me.", "signature": "sig"},
        {"type": "redacted_thinking", "data": "abc"}, {"type": "text", "text": "Hello."}]}, plain[2]]
    n_plain = client.messages.count_tokens(model=MODEL, messages=plain).input_tokens
    assert client.messages.count_tokens(model=MODEL, messages=thought).input_tokens == n_plain
    m = client.messages.create(model=MODEL, max_tokens=3, messages=thought)
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == n_plain


def test_tokenize_and_detokenize(server):
    import httpx

    r = httpx.post(server.url + "/tokenize", json={"content": "Hello world", "with_pieces": True}).json()
    ids = [t["id"] for t in r["tokens"]]
    assert "".join(t["piece"] for t in r["tokens"]) == "Hello world" and r["count"] == len(ids)
    assert httpx.post(server.url + "/detokenize", json={"tokens": ids}).json() == {"content": "Hello world"}
    chat = httpx.post(server.url + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    counted = server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=1).usage.prompt_tokens
    assert chat["count"] == counted and chat["max_model_len"] > 0
    bad = httpx.post(server.url + "/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"


def test_forced_tool_call_with_pydantic_defs(server):
    # pydantic (and zod) write nested models as `$defs` with `$ref`s.
    class Pet(BaseModel):
        kind: Literal["cat", "dog"]
        legs: int = Field(ge=0, le=4)

    class Adopt(BaseModel):
        pet: Pet
        urgent: bool

    tool = openai.pydantic_function_tool(Adopt)
    assert "$defs" in tool["function"]["parameters"]
    client = server.client()
    for seed in range(5):
        r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], tools=[tool],
                                           tool_choice="required", seed=seed, temperature=1.0, max_tokens=100)
        assert r.choices[0].finish_reason == "tool_calls"
        Adopt.model_validate_json(r.choices[0].message.tool_calls[0].function.arguments)
