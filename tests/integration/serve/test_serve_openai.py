"""The official ``openai`` SDK against a real ``baco serve`` app (sync, async, streaming, n)."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any

import openai
import pytest
from serve_helpers import TIMEOUT, LiveServer

MESSAGES = [{"role": "user", "content": "Name a color."}]


def _client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0)


def _async_client(server: LiveServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0
    )


def test_models_lists_the_served_model(server: LiveServer, model_name: str) -> None:
    client = _client(server)
    assert [m.id for m in client.models.list().data] == [model_name]
    assert client.models.retrieve(model_name).id == model_name
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    with server.client() as http:
        health = http.get("/health").json()
    assert health["status"] == "ok"
    assert health["model"] == model_name


def test_chat_completion_matches_the_engine(server: LiveServer, tiny_engine: Any) -> None:
    reply = _client(server).chat.completions.create(
        model="tiny-baco", messages=MESSAGES, max_tokens=16, seed=7
    )
    expected = tiny_engine.generate(MESSAGES, max_new_tokens=16, seed=7)[0][0]
    choice = reply.choices[0]
    assert reply.object == "chat.completion"
    assert reply.model == "tiny-baco"
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert reply.usage.prompt_tokens == expected.usage.prompt_tokens
    assert reply.usage.completion_tokens == expected.usage.completion_tokens
    extra = choice.model_extra
    assert extra["base_share"] == expected.base_share
    assert extra["switches"] == expected.switches
    assert "sources" not in extra


def test_n_samples_with_baco_options_and_sources(server: LiveServer, tiny_engine: Any) -> None:
    reply = _client(server).chat.completions.create(
        model="tiny-baco",
        messages=MESSAGES,
        max_tokens=24,
        n=3,
        seed=11,
        temperature=0.9,
        top_p=0.95,
        extra_body={"router": "rand", "gamma": 0.5, "top_k": 50, "return_sources": True},
    )
    expected = tiny_engine.generate(
        MESSAGES,
        n=3,
        max_new_tokens=24,
        seed=11,
        temperature=0.9,
        top_p=0.95,
        router="rand",
        gamma=0.5,
        top_k=50,
    )[0]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert [c.message.content for c in reply.choices] == [g.text for g in expected]
    for choice, generation in zip(reply.choices, expected, strict=True):
        sources = choice.model_extra["sources"]
        assert sources == generation.sources
        assert choice.model_extra["base_share"] == pytest.approx(
            sources.count("base") / len(sources)
        )
    assert reply.model_extra["baco"] == {"router": "rand", "gamma": 0.5}
    assert reply.usage.completion_tokens == sum(g.usage.completion_tokens for g in expected)


def test_stream_with_n_and_usage_equals_the_unstreamed_reply(server: LiveServer) -> None:
    client = _client(server)
    options: dict[str, Any] = {"model": "tiny-baco", "messages": MESSAGES, "max_tokens": 20}
    options.update(n=2, seed=3, extra_body={"router": "rand", "gamma": 0.4})
    whole = client.chat.completions.create(**options)
    texts: dict[int, str] = defaultdict(str)
    finish: dict[int, str] = {}
    roles: dict[int, str] = {}
    usage = None
    chunks = client.chat.completions.create(
        **options, stream=True, stream_options={"include_usage": True}
    )
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles[choice.index] = choice.delta.role
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
                assert "base_share" in choice.model_extra
    assert roles == {0: "assistant", 1: "assistant"}
    assert [texts[i] for i in (0, 1)] == [c.message.content for c in whole.choices]
    assert [finish[i] for i in (0, 1)] == [c.finish_reason for c in whole.choices]
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


async def test_async_client_chat_and_stream(server: LiveServer, tiny_engine: Any) -> None:
    client = _async_client(server)
    reply = await client.chat.completions.create(
        model="tiny-baco", messages=MESSAGES, max_tokens=12, seed=5
    )
    expected = tiny_engine.generate(MESSAGES, max_new_tokens=12, seed=5)[0][0]
    assert reply.choices[0].message.content == expected.text
    stream = await client.chat.completions.create(
        model="tiny-baco", messages=MESSAGES, max_tokens=12, seed=5, stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == expected.text
    await client.close()


def test_completions_endpoint_with_prompt_list_and_n(server: LiveServer, tiny_engine: Any) -> None:
    prompts = ["Write a haiku.", "Name a color."]
    reply = _client(server).completions.create(
        model="tiny-baco", prompt=prompts, n=2, max_tokens=10, seed=2, user="someone"
    )
    expected = tiny_engine.generate(prompts, n=2, max_new_tokens=10, seed=2)
    assert reply.object == "text_completion"
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text for c in reply.choices] == [g.text for row in expected for g in row]
    prompt_tokens = sum(row[0].usage.prompt_tokens for row in expected)
    assert reply.usage.prompt_tokens == prompt_tokens


def test_completions_stream(server: LiveServer) -> None:
    client = _client(server)
    whole = client.completions.create(model="tiny-baco", prompt="Hi", max_tokens=10, seed=4)
    stream = client.completions.create(
        model="tiny-baco", prompt="Hi", max_tokens=10, seed=4, stream=True
    )
    parts = [c.choices[0].text for c in stream if c.choices]
    assert "".join(parts) == whole.choices[0].text


def test_sdk_sees_openai_error_fields(server: LiveServer) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _client(server).chat.completions.create(model="tiny-baco", messages=MESSAGES, n=0)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "n"
    assert info.value.body["type"] == "invalid_request_error"


def _metrics(server: LiveServer) -> dict[str, float]:
    """Every sample of ``GET /metrics``: ``name{labels}`` -> value."""
    with server.client() as http:
        text = http.get("/metrics").text
    return {
        key: float(value)
        for line in text.splitlines()
        if line and not line.startswith("#")
        for key, value in [line.rsplit(" ", 1)]
    }


def test_metrics_count_requests_tokens_and_batches(server: LiveServer) -> None:
    # The server is shared with the other tests of this module: measure what this request
    # adds to each counter, not the counters' totals.
    chat_ok = 'baco_requests_total{endpoint="chat",status="200"}'
    before = _metrics(server)
    reply = _client(server).chat.completions.create(
        model="tiny-baco", messages=MESSAGES, max_tokens=8, seed=1, n=2
    )
    after = _metrics(server)

    def added(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert added(chat_ok) == 1
    assert added("baco_generated_tokens_total") == reply.usage.completion_tokens > 0
    assert added("baco_prompt_tokens_total") == reply.usage.prompt_tokens > 0
    assert added("baco_base_share_count") == 2  # one observation per sample
    assert added("baco_request_rows_count") == 1 and added("baco_request_rows_sum") == 2
    assert added("baco_engine_requests_total") == 1
    steps = added("baco_engine_steps_total")
    assert 1 <= steps <= 8  # at most max_tokens steps
    assert added("baco_engine_row_steps_total") == pytest.approx(
        reply.usage.completion_tokens, abs=2
    )  # the request's two rows, one token per step each (an end token is a step too)
    assert after["baco_engine_mean_batch_rows"] == pytest.approx(
        after["baco_engine_row_steps_total"] / after["baco_engine_steps_total"]
    )
    assert after["baco_queue_depth"] == 0


def test_chat_logprobs_spell_the_reply_and_name_the_model(
    server: LiveServer, tiny_engine: Any
) -> None:
    client = _client(server)
    options: dict[str, Any] = {"model": "tiny-baco", "messages": MESSAGES, "max_tokens": 16}
    options.update(n=2, seed=5, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(**options)
    expected = tiny_engine.generate(MESSAGES, n=2, max_new_tokens=16, seed=5, logprobs=3)[0]
    for choice, generation in zip(whole.choices, expected, strict=True):
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content
        assert [t.logprob for t in content] == pytest.approx(
            [e.logprob for e in generation.logprobs]
        )
        assert all(len(t.top_logprobs) == 3 for t in content)
        assert [t.model_extra["source"] for t in content] == generation.sources[: len(content)]
        assert all(t.bytes == list(t.token.encode()) for t in content)
    streamed: dict[int, list] = defaultdict(list)
    for chunk in client.chat.completions.create(**options, stream=True):
        for choice in chunk.choices:
            if choice.logprobs is not None:
                streamed[choice.index] += choice.logprobs.content
    for index, choice in enumerate(whole.choices):
        assert [(t.token, t.logprob) for t in streamed[index]] == [
            (t.token, t.logprob) for t in choice.logprobs.content
        ]


def test_completion_logprobs_in_the_legacy_shape(server: LiveServer) -> None:
    client = _client(server)
    reply = client.completions.create(
        model="tiny-baco", prompt="Hi", max_tokens=12, seed=4, logprobs=2
    )
    choice = reply.choices[0]
    logprobs = choice.logprobs
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens) == len(logprobs.top_logprobs)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)
    offsets = [sum(len(t) for t in logprobs.tokens[:i]) for i in range(len(logprobs.tokens))]
    assert logprobs.text_offset == offsets
    plain = client.completions.create(model="tiny-baco", prompt="Hi", max_tokens=12, seed=4)
    assert plain.choices[0].logprobs is None and plain.choices[0].text == choice.text


def test_streamed_completion_logprobs_spell_the_streamed_text(server: LiveServer) -> None:
    body = {
        "model": "tiny-baco",
        "prompt": ["Hi", "Tell"],
        "max_tokens": 20,
        "seed": 3,
        "logprobs": 2,
        "n": 2,
        "stop": ["e"],
    }
    texts: dict[int, str] = {}
    tokens: dict[int, list[str]] = {}
    sources: dict[int, list[str]] = {}
    with server.client() as http:
        whole = http.post("/v1/completions", json=body).json()["choices"]
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                for choice in json.loads(line[6:]).get("choices", []):
                    index = choice["index"]
                    texts[index] = texts.get(index, "") + (choice.get("text") or "")
                    logprobs = choice.get("logprobs")
                    if logprobs:
                        assert len(logprobs["tokens"]) == len(logprobs["token_logprobs"])
                        tokens.setdefault(index, []).extend(logprobs["tokens"])
                        sources.setdefault(index, []).extend(logprobs["sources"])
    assert len(whole) == 4
    for choice in whole:
        index, logprobs = choice["index"], choice["logprobs"]
        assert texts[index] == choice["text"] == "".join(tokens.get(index, []))
        assert sources.get(index, []) == logprobs["sources"]
        assert set(logprobs["sources"]) <= {"base", "aligned"}
