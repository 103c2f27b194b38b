"""Structured output through the frameworks people put in front of an OpenAI-compatible
server, on the real SmolLM2-135M-Instruct (CI sets LLAMA32_REAL_GGUF, see test_real_model.py):
instructor's default mode (TOOLS: a named forced tool call), LangChain's
`with_structured_output` with every method (function_calling, json_schema, json_mode) and a
forced tool call (`tool_choice="required"`) with `openai.pydantic_function_tool`. Each runs
ten seeded samples at temperature 0.7; at least nine must finish (stop / tool_calls, never
length) with JSON that validates as the pydantic model. Any field the framework sends that
the server refuses (400 Unrecognized request argument) fails every run, naming the field.
Skips when instructor or langchain-openai is not installed."""

import os
import pathlib

import openai
import pytest
from conftest import serve
from pydantic import BaseModel

instructor = pytest.importorskip("instructor")
langchain_openai = pytest.importorskip("langchain_openai")

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("LLAMA32_BIN", str(ROOT / "target" / "debug" / "llama32"))
GGUF = os.environ.get("LLAMA32_REAL_GGUF")

pytestmark = pytest.mark.skipif(not GGUF, reason="set LLAMA32_REAL_GGUF=$(scripts/fetch-real-model.sh)")

SEEDS = range(10)
NEEDED = 9
TEMPERATURE = 0.7
MAX_TOKENS = 200
PROMPT = "Extract: John is 31 years old."
JSON_PROMPT = PROMPT + ' Answer with a JSON object with the keys "name" (a string) and "age" (an integer).'


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def url():
    yield from serve(BIN, ["--model", GGUF, "--served-model-name", "smollm2"])


def openai_client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)


def at_least_nine(run):
    """Calls run(seed) for each seed; run returns None when the answer is right, else why not
    (an exception, e.g. a 400 or instructor's InstructorRetryException, counts as a failure
    with its text)."""
    failures = {}
    for seed in SEEDS:
        try:
            why = run(seed)
        except Exception as e:  # noqa: BLE001 - a refused request or an invalid answer is one failed run
            why = f"{type(e).__name__}: {e}"
        if why is not None:
            failures[seed] = why
    passed = len(SEEDS) - len(failures)
    assert passed >= NEEDED, f"{passed}/{len(SEEDS)} valid: {failures}"


def test_instructor_default_mode(url):
    client = instructor.from_openai(openai_client(url))
    assert client.mode == instructor.Mode.TOOLS

    def run(seed):
        person, completion = client.chat.completions.create_with_completion(
            model="smollm2", response_model=Person, max_retries=0, seed=seed, temperature=TEMPERATURE,
            max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}],
        )
        # OpenAI answers a named tool_choice with "stop", a chosen call with "tool_calls".
        finish = completion.choices[0].finish_reason
        if finish not in ("tool_calls", "stop"):
            return f"finish_reason {finish}"
        return None if isinstance(person, Person) else f"parsed {person!r}"

    at_least_nine(run)


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_langchain_with_structured_output(url, method):
    def run(seed):
        llm = langchain_openai.ChatOpenAI(base_url=url + "/v1", api_key="none", model="smollm2", seed=seed,
                                          temperature=TEMPERATURE, max_tokens=MAX_TOKENS, max_retries=0, timeout=120)
        out = llm.with_structured_output(Person, method=method, include_raw=True).invoke(
            JSON_PROMPT if method == "json_mode" else PROMPT)
        if out["parsing_error"] is not None:
            return f"parsing error {out['parsing_error']!r} in {out['raw']!r}"
        finish = out["raw"].response_metadata.get("finish_reason")
        wanted = ("tool_calls", "stop") if method == "function_calling" else ("stop",)
        if finish not in wanted:
            return f"finish_reason {finish}: {out['raw']!r}"
        if not isinstance(out["parsed"], Person):
            return f"parsed {out['parsed']!r}"
        return None

    at_least_nine(run)


def test_openai_forced_tool_call_with_pydantic_schema(url):
    client = openai_client(url)
    tool = openai.pydantic_function_tool(Person)

    def run(seed):
        r = client.chat.completions.create(
            model="smollm2", tools=[tool], tool_choice="required", seed=seed, temperature=TEMPERATURE,
            max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": PROMPT}],
        )
        choice = r.choices[0]
        if choice.finish_reason != "tool_calls":
            return f"finish_reason {choice.finish_reason}: {choice.message}"
        calls = choice.message.tool_calls or []
        if len(calls) != 1 or calls[0].function.name != "Person":
            return f"tool calls {calls}"
        Person.model_validate_json(calls[0].function.arguments)
        return None

    at_least_nine(run)
