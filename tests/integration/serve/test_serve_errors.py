"""The error table of ``baco serve`` over real HTTP: 400s naming the field, 401, 404, 429."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from serve_helpers import TIMEOUT, GateRouter, LiveServer, run_server, wait_until

from shared_core.serve.openai_schema import supports_json_schema

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-baco", "messages": USER, "max_tokens": 4, **fields}


def _completion(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-baco", "prompt": "Hi", "max_tokens": 4, **fields}


# (path, body, param named by the error, error code or None)
BAD_REQUESTS = [
    (CHAT, _chat(n=0), "n", None),
    (CHAT, _chat(n="2"), "n", None),
    (CHAT, _chat(max_tokens=0), "max_tokens", None),
    (CHAT, _chat(max_completion_tokens=-1), "max_completion_tokens", None),
    (CHAT, _chat(min_tokens=9), "min_tokens", None),
    (CHAT, _chat(temperature=-1), "temperature", None),
    (CHAT, _chat(top_p=0), "top_p", None),
    (CHAT, _chat(top_k=-1), "top_k", None),
    (CHAT, _chat(min_p=2), "min_p", None),
    (CHAT, _chat(router="nope"), "router", None),
    (CHAT, _chat(router="p", gamma=-1), "gamma", None),
    (CHAT, _chat(target_base_share=2.0), "target_base_share", None),
    (CHAT, _chat(stop=[""]), "stop", None),
    (CHAT, _chat(seed=-1), "seed", None),
    (CHAT, _chat(stream="yes"), "stream", None),
    (CHAT, _chat(stream_options={"include_usage": True}), "stream_options", None),
    (CHAT, _chat(messages=[]), "messages", None),
    (CHAT, {"model": "tiny-baco"}, "messages", None),
    (CHAT, _chat(messages=[{"role": "robot", "content": "x"}]), "messages[0].role", None),
    (CHAT, _chat(messages=[{"role": "user", "content": "  "}]), "messages", None),
    (
        CHAT,
        _chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
        "messages[0].content[0]",
        "unsupported_parameter",
    ),
    (CHAT, _chat(logprobs="yes"), "logprobs", None),
    (CHAT, _chat(top_logprobs=2), "top_logprobs", None),  # without logprobs: true
    (CHAT, _chat(logprobs=True, top_logprobs=21), "top_logprobs", None),
    (CHAT, _chat(logit_bias={"5": 10}), "logit_bias", "unsupported_parameter"),
    (CHAT, _chat(presence_penalty=0.5), "presence_penalty", "unsupported_parameter"),
    (CHAT, _chat(frequency_penalty=1), "frequency_penalty", "unsupported_parameter"),
    (CHAT, _chat(temprature=0.5), "temprature", "unknown_parameter"),
    (COMPLETIONS, _completion(best_of=3), "best_of", "unsupported_parameter"),
    (COMPLETIONS, _completion(echo=True), "echo", "unsupported_parameter"),
    (COMPLETIONS, _completion(logprobs=-1), "logprobs", None),
    (COMPLETIONS, _completion(suffix="end"), "suffix", "unsupported_parameter"),
    (COMPLETIONS, _completion(prompt=[1, 2, 3]), "prompt", "unsupported_parameter"),
    (COMPLETIONS, _completion(prompt=""), "prompt", None),
    (COMPLETIONS, {"model": "tiny-baco"}, "prompt", None),
    (CHAT, _chat(messages=[{"role": "user", "content": "word " * 700}]), "messages", None),
]
if not supports_json_schema():
    BAD_REQUESTS += [
        (CHAT, _chat(response_format={"type": "json_object"}), "response_format", None),
        (CHAT, _chat(tools=[TOOL]), "tools", "unsupported_parameter"),
        (CHAT, _chat(tool_choice="required"), "tool_choice", "unsupported_parameter"),
        (
            CHAT,
            _chat(messages=[*USER, {"role": "tool", "content": "x", "tool_call_id": "1"}]),
            "messages[1].role",
            "unsupported_parameter",
        ),
    ]


@pytest.mark.parametrize(("path", "body", "param", "code"), BAD_REQUESTS)
def test_bad_input_answers_400_naming_the_field(
    server: LiveServer, path: str, body: dict[str, Any], param: str, code: str | None
) -> None:
    with server.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]
    if code is not None:
        assert error["code"] == code


def test_over_the_context_window_is_refused_before_model_work(server: LiveServer) -> None:
    before = server.metric("baco_base_share_count")
    body = _chat(messages=[{"role": "user", "content": "word " * 700}])
    with server.client() as http:
        error = http.post(CHAT, json=body).json()["error"]
    assert error["code"] == "context_length_exceeded"
    assert "context window is 512 tokens" in error["message"]
    assert server.metric("baco_base_share_count") == before
    assert server.metric("baco_queue_depth") == 0


def test_malformed_json_and_unknown_route(server: LiveServer) -> None:
    with server.client() as http:
        broken = http.post(CHAT, content=b"{not json", headers={"content-type": "application/json"})
        not_object = http.post(CHAT, json=[1, 2])
        missing = http.get("/v1/nothing")
    assert broken.status_code == 400
    assert "JSON" in broken.json()["error"]["message"]
    assert not_object.status_code == 400
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "fields",
    [
        {"user": "someone", "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0},
        {"store": False, "metadata": {"k": "v"}, "parallel_tool_calls": True, "logprobs": False},
        {"tools": [TOOL], "tool_choice": "none", "response_format": {"type": "text"}},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]},
    ],
)
def test_harmless_fields_are_accepted(server: LiveServer, fields: dict[str, Any]) -> None:
    with server.client() as http:
        response = http.post(CHAT, json=_chat(**fields))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["finish_reason"] in ("stop", "length")


def test_api_key_is_required_on_v1_routes(tiny_engine: Any) -> None:
    with run_server(tiny_engine, api_key="s3cret") as live:
        with live.client() as http:
            missing = http.post(CHAT, json=_chat())
            wrong = http.post(CHAT, json=_chat(), headers={"Authorization": "Bearer nope"})
            models = http.get("/v1/models")
            health = http.get("/health")
            right = http.post(CHAT, json=_chat(), headers={"Authorization": "Bearer s3cret"})
        for response in (missing, wrong, models):
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        assert health.status_code == 200
        assert right.status_code == 200
        bad = openai.OpenAI(base_url=live.base_url, api_key="nope", timeout=TIMEOUT, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(
            base_url=live.base_url, api_key="s3cret", timeout=TIMEOUT, max_retries=0
        )
        assert good.chat.completions.create(**_chat()).choices


def test_full_queue_answers_429_with_retry_after(gated_engine: Any, gate: GateRouter) -> None:
    sdk_options = {"api_key": "unused", "timeout": TIMEOUT, "max_retries": 0}
    with run_server(gated_engine, max_queue=1) as live, live.client() as http:
        sdk = openai.OpenAI(base_url=live.base_url, **sdk_options)
        gate.close()  # the first request's decode waits at its first step
        with http.stream("POST", CHAT, json=_chat(stream=True)) as stream:
            lines = stream.iter_lines()
            first = next(lines)  # the role chunk: the request is in flight
            assert gate.waiting.wait(TIMEOUT)
            assert live.state.in_flight == 1
            refused = http.post(CHAT, json=_chat())
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            assert refused.json()["error"]["code"] == "queue_full"
            assert refused.json()["error"]["type"] == "rate_limit_error"
            with pytest.raises(openai.RateLimitError):
                sdk.chat.completions.create(**_chat())
            gate.open()
            rest = list(lines)
        assert rest[-2:] == ["data: [DONE]", ""]
        assert json.loads(first[len("data: ") :])["object"] == "chat.completion.chunk"
        wait_until(lambda: live.state.in_flight == 0, "the stream to be released")
        assert sdk.chat.completions.create(**_chat()).choices[0].finish_reason


def test_a_model_with_nan_logits_answers_500_and_an_error_event(
    tiny_pair_paths: tuple[Any, Any],
) -> None:
    import torch

    from shared_core import BacoEngine, ModelPair

    base, aligned = tiny_pair_paths
    pair = ModelPair.from_pretrained(str(base), str(aligned))
    with torch.no_grad():
        pair.aligned.lm_head.weight.fill_(float("nan"))
    with run_server(BacoEngine(pair)) as live, live.client() as http:
        reply = http.post(CHAT, json=_chat())
        assert reply.status_code == 500
        error = reply.json()["error"]
        assert error["type"] == "server_error"
        assert "NaN" in error["message"]
        with http.stream("POST", CHAT, json=_chat(stream=True)) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert "data: [DONE]" not in events
        last = json.loads(events[-1][len("data: ") :])
        assert last["error"]["type"] == "server_error"
        assert live.state.in_flight == 0
