"""Structured output over ``baco serve``: ``response_format`` and ``tools`` / ``tool_choice``
mapped onto the engine's grammar-constrained decoding, with real OpenAI and LangChain clients.
"""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import openai
import pytest
from serve_helpers import TIMEOUT, LiveServer

from shared_core.serve.openai_schema import supports_json_schema

pytestmark = pytest.mark.skipif(
    not supports_json_schema(), reason="the engine has no structured output"
)
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"type": "string", "maxLength": 8},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["color", "count"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
        },
    },
}


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def test_json_schema_response_format_gives_valid_json(server: LiveServer) -> None:
    reply = _client(server).chat.completions.create(
        model="tiny-baco",
        messages=MESSAGES,
        max_tokens=64,
        n=3,
        seed=1,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True},
        },
    )
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_json_object_response_format(server: LiveServer) -> None:
    reply = _client(server).chat.completions.create(
        model="tiny-baco",
        messages=MESSAGES,
        max_tokens=64,
        seed=2,
        response_format={"type": "json_object"},
        extra_body={"max_string_length": 8},
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


def test_required_tool_call_in_reply_and_stream(server: LiveServer) -> None:
    client = _client(server)
    options: dict[str, Any] = {
        "model": "tiny-baco",
        "messages": MESSAGES,
        "max_tokens": 80,
        "seed": 3,
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    reply = client.chat.completions.create(**options)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    streamed: dict[int, dict[str, str]] = defaultdict(lambda: {"name": "", "arguments": ""})
    finish = None
    for chunk in client.chat.completions.create(**options, stream=True):
        for delta_choice in chunk.choices:
            for delta in delta_choice.delta.tool_calls or []:
                streamed[delta.index]["name"] += delta.function.name or ""
                streamed[delta.index]["arguments"] += delta.function.arguments or ""
            finish = delta_choice.finish_reason or finish
    assert finish == "tool_calls"
    assert dict(streamed) == {0: {"name": "get_weather", "arguments": call.function.arguments}}


def test_tool_history_round_trip(server: LiveServer) -> None:
    history = [
        *MESSAGES,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    reply = _client(server).chat.completions.create(
        model="tiny-baco", messages=history, max_tokens=8, seed=4, tools=[WEATHER]
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.prompt_tokens > 40  # the tools block and the rendered history


def test_langchain_bind_tools_gets_tool_calls(server: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=server.base_url,
        api_key="unused",
        model="tiny-baco",
        max_tokens=80,
        seed=5,
        timeout=TIMEOUT,
        max_retries=0,
    )
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Oslo?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    assert set(call["args"]) == {"city"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": "x"}}},
         "response_format.json_schema.schema"),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"not": {}}}}},
         "response_format"),
        ({"response_format": {"type": "json_object"}, "tools": [WEATHER],
          "tool_choice": "required"}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "get_time"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools"),
        ({"tools": [WEATHER], "max_string_length": -1}, "max_string_length"),
    ],
)  # fmt: skip
def test_structured_errors_name_the_field(
    server: LiveServer, fields: dict[str, Any], param: str
) -> None:
    body = {"model": "tiny-baco", "messages": MESSAGES, "max_tokens": 8, **fields}
    with server.client() as http:
        response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize("budget", [3, 7, 12])
def test_a_cut_call_is_a_partial_tool_call_and_no_markup_reaches_content(
    server: LiveServer, budget: int
) -> None:
    body = {
        "model": "tiny-baco",
        "messages": MESSAGES,
        "max_tokens": budget,
        "seed": 2,
        "tools": [WEATHER],
        "tool_choice": "required",
    }
    with server.client() as http:
        whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            chunks = [
                json.loads(line[6:])
                for line in r.iter_lines()
                if line.startswith("data: {") and '"choices":[{' in line
            ]
    assert whole["finish_reason"] == "length"
    assert whole["message"]["content"] is None  # never '<tool_ca' or a partial call
    assert "invalid_tool_calls" not in whole
    streamed_text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert streamed_text == ""
    streamed_calls = [
        call for c in chunks for call in c["choices"][0]["delta"].get("tool_calls") or []
    ]
    calls = whole["message"].get("tool_calls") or []
    assert [c["function"]["arguments"] for c in streamed_calls] == [
        c["function"]["arguments"] for c in calls
    ]
    for call in calls:  # the partial arguments as written, cut by max_tokens
        assert call["function"]["name"] in ("get_weather", "")
        with pytest.raises(json.JSONDecodeError):
            json.loads(call["function"]["arguments"] or "{")


ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    },
}
NAMED_ADD = {"type": "function", "function": {"name": "add"}}


def _calls(calls: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    return [(c["function"]["name"], c["function"]["arguments"]) for c in calls or []]


def _streamed(http: Any, body: dict[str, Any]) -> tuple[str, list[tuple[str, str]], str | None]:
    """Text, calls and finish reason of one streamed choice, as a client would join them."""
    text, calls, finish = "", [], None
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta", {})
                text += delta.get("content") or ""
                calls += _calls(delta.get("tool_calls"))
                finish = choice.get("finish_reason") or finish
    return text, calls, finish


def test_stream_and_whole_reply_agree_over_seeds_budgets_and_tool_choices(
    server: LiveServer,
) -> None:
    """For a seed, the streamed and the whole reply carry the same text, the same calls and
    the same finish reason, whatever the budget (cuts inside markers and arguments included)
    and the tool choice; no markup reaches the text; parallel calls off gives at most one."""
    cases = [
        (seed, budget, choice, parallel)
        for seed in range(3)
        for budget in (3, 9, 20, 48)
        for choice in ("auto", "required", NAMED_ADD)
        for parallel in (True, False)
    ]
    differ, markup, too_many = [], [], []
    with server.client() as http:
        for seed, budget, choice, parallel in cases:
            body = {
                "model": "tiny-baco",
                "messages": MESSAGES,
                "max_tokens": budget,
                "seed": seed,
                "tools": [WEATHER, ADD],
                "tool_choice": choice,
                "parallel_tool_calls": parallel,
            }
            whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
            whole_text = whole["message"]["content"] or ""
            whole_calls = _calls(whole["message"].get("tool_calls"))
            streamed = _streamed(http, body)
            case = (seed, budget, choice, parallel)
            if (whole_text, whole_calls, whole["finish_reason"]) != streamed:
                differ.append((case, whole_text, whole_calls, whole["finish_reason"], streamed))
            if "<tool" in whole_text + streamed[0] or "</tool" in whole_text + streamed[0]:
                markup.append((case, whole_text, streamed[0]))
            if not parallel and len(whole_calls) > 1:
                too_many.append((case, whole_calls))
    assert not differ, differ[:3]
    assert not markup, markup[:3]
    assert not too_many, too_many[:3]
