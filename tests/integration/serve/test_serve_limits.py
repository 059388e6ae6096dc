"""Request limits and model ids of ``baco serve``: refused before parsing or tokenising."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import TIMEOUT, LiveServer, run_server

from shared_core.serve.limits import ServeLimits, json_depth
from shared_core.serve.openai_schema import supports_json_schema
from shared_core.testing import inject_constraint_failure

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "tiny-baco", "messages": [{"role": "user", "content": "Hi"}], **fields}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


def test_an_oversized_body_gets_413_without_being_read(tiny_engine: Any) -> None:
    limits = ServeLimits(max_request_bytes=4096)
    huge = json.dumps(_chat(messages=[{"role": "user", "content": "word " * 20_000}]))
    with (
        run_server(tiny_engine, model_name="tiny-baco", limits=limits) as live,
        live.client() as http,
    ):
        declared = http.post(CHAT, content=huge, headers={"content-type": "application/json"})
        chunked = http.post(
            CHAT,
            content=iter([huge[i : i + 1000].encode() for i in range(0, len(huge), 1000)]),
            headers={"content-type": "application/json"},
        )
        small = http.post(CHAT, json=_chat(max_tokens=2))
    for response in (declared, chunked):
        assert response.status_code == 413, response.text
        error = response.json()["error"]
        assert error["code"] == "request_too_large"
        assert "4096 bytes" in error["message"] and "--max-request-bytes" in error["message"]
    assert small.status_code == 200


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="needs /proc")
def test_memory_stays_flat_under_a_stream_of_oversized_bodies(server: LiveServer) -> None:
    body = json.dumps(_chat(messages=[{"role": "user", "content": "x " * 4_000_000}])).encode()
    with server.client() as http:
        http.post(CHAT, content=body)  # warm-up: connection, buffers
        before = _rss_bytes()
        codes = {http.post(CHAT, content=body).status_code for _ in range(12)}
        after = _rss_bytes()
    assert codes == {413}
    assert after - before < 64 * 1024 * 1024, f"RSS grew by {(after - before) >> 20} MiB"


def test_deep_nesting_is_refused_before_json_parsing(server: LiveServer) -> None:
    deep = b'{"model": "tiny-baco", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    with server.client() as http:
        response = http.post(CHAT, content=deep, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "json_too_deep" and "--max-json-depth" in error["message"]


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(json.dumps({"a": "[[[{{", "b": ['\\"]]', [1]]}).encode()) == 3
    assert json_depth(b'"\\\\"') == 0
    assert json_depth(b"[[], [[]]]") == 3


@pytest.mark.parametrize(
    ("path", "body", "param", "words"),
    [
        (CHAT, _chat(stop=["a", "b", "c", "d", "e"]), "stop", "at most 4"),
        (CHAT, _chat(stop=["x" * 300]), "stop", "--max-stop-chars"),
        (CHAT, _chat(stop=[f"s{i}" for i in range(100_000)]), "stop", "at most 4"),
        (CHAT, _chat(n=65), "n", "--max-n"),
        (CHAT, _chat(max_tokens=5000), "max_tokens", "--max-tokens-limit"),
        (CHAT, _chat(max_completion_tokens=5000), "max_completion_tokens", "--max-tokens-limit"),
        (
            COMPLETIONS,
            {"model": "tiny-baco", "prompt": ["Hi"] * 65, "max_tokens": 2},
            "prompt",
            "--max-prompts",
        ),
        (
            CHAT,
            _chat(stream=True, stream_options={"include_usage": "yes"}),
            "stream_options.include_usage",
            "boolean",
        ),
        (CHAT, _chat(max_string_length="8"), "max_string_length", "integer"),
        (CHAT, _chat(max_string_length=-1), "max_string_length", ">= 0"),
        (CHAT, _chat(parallel_tool_calls="no"), "parallel_tool_calls", "boolean"),
    ],
)
def test_size_limits_name_the_field_and_the_flag(
    server: LiveServer, path: str, body: dict[str, Any], param: str, words: str
) -> None:
    with server.client() as http:
        response = http.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert words in error["message"]


def test_unknown_model_ids_get_404_and_aliases_are_served(tiny_engine: Any) -> None:
    with run_server(tiny_engine, model_name=["tiny-baco", "alias-2"]) as live:
        with live.client() as http:
            unknown = http.post(CHAT, json=_chat(model="gpt-4o", max_tokens=2))
            alias = http.post(CHAT, json=_chat(model="alias-2", max_tokens=2))
            listed = [m["id"] for m in http.get("/v1/models").json()["data"]]
            one = http.get("/v1/models/alias-2")
            missing = http.get("/v1/models/nope")
        client = openai.OpenAI(base_url=live.base_url, api_key="x", timeout=TIMEOUT, max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="wrong", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "tiny-baco" in unknown.json()["error"]["message"]
    assert alias.status_code == 200 and alias.json()["model"] == "tiny-baco"
    assert listed == ["tiny-baco", "alias-2"]
    assert one.status_code == 200 and missing.status_code == 404


def test_the_default_model_id_is_the_pairs_short_name(tiny_engine: Any) -> None:
    with run_server(tiny_engine, model_name=None) as live, live.client() as http:
        names = [m["id"] for m in http.get("/v1/models").json()["data"]]
    assert names == [tiny_engine.pair.short_name]
    assert "/" not in names[0] and names[0].startswith("baco:")


def test_metrics_need_the_key_when_one_is_set(tiny_engine: Any) -> None:
    with run_server(tiny_engine, model_name="tiny-baco", api_key="k") as live:
        without = httpx.get(f"{live.url}/metrics", timeout=TIMEOUT)
        with_key = httpx.get(
            f"{live.url}/metrics", headers={"Authorization": "Bearer k"}, timeout=TIMEOUT
        )
    assert without.status_code == 401
    assert with_key.status_code == 200 and "baco_" in with_key.text


@pytest.mark.skipif(not supports_json_schema(), reason="needs structured output (llguidance)")
def test_one_failed_sample_does_not_fail_the_request(server: LiveServer, monkeypatch) -> None:
    inject_constraint_failure(monkeypatch, row=1)  # prompt 0, sample 1
    chat_body = _chat(n=2, max_tokens=24, seed=3, response_format={"type": "json_object"})
    with server.client() as http:
        chat = http.post(CHAT, json=chat_body)
    assert chat.status_code == 200, chat.text
    choices = chat.json()["choices"]
    assert [c["finish_reason"] == "error" for c in choices] == [False, True]
    assert choices[1]["error"]["code"] == "constraint"
    assert "injected failure" in choices[1]["error"]["message"]
    assert choices[0]["message"]["content"]
