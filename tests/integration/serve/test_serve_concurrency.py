"""Many clients at once, and clients that leave mid-stream, against a real ``baco serve``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from typing import Any

import httpx
import openai
import pytest
from serve_helpers import TIMEOUT, GateRouter, LiveServer, run_server, wait_until

PROMPTS = ["Name a color.", "Write a haiku.", "Tell me a story.", "Suggest a name for a boat."]
CLIENTS = 32


def _messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]


async def test_32_concurrent_clients_get_their_own_samples(
    server: LiveServer, tiny_engine: Any
) -> None:
    """Each client gets exactly what its seed gives alone; the engine batches them."""
    options = {"max_tokens": 12, "temperature": 0.9, "extra_body": {"router": "rand"}}
    steps_before = server.metric("baco_engine_steps_total")
    rows_before = server.metric("baco_engine_row_steps_total")
    requests_before = server.metric("baco_engine_requests_total")
    clients = [
        openai.AsyncOpenAI(
            base_url=server.base_url, api_key="unused", timeout=TIMEOUT, max_retries=0
        )
        for _ in range(CLIENTS)
    ]

    async def ask(i: int) -> str:
        if i % 8 == 7:  # some clients stream
            stream = await clients[i].chat.completions.create(
                model="tiny-baco", messages=_messages(i), seed=i, stream=True, **options
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        reply = await clients[i].chat.completions.create(
            model="tiny-baco", messages=_messages(i), seed=i, **options
        )
        return reply.choices[0].message.content

    answers = await asyncio.wait_for(asyncio.gather(*(ask(i) for i in range(CLIENTS))), TIMEOUT)
    for client in clients:
        await client.close()
    steps = server.metric("baco_engine_steps_total") - steps_before
    rows = server.metric("baco_engine_row_steps_total") - rows_before
    requests = server.metric("baco_engine_requests_total") - requests_before
    alone = [
        tiny_engine.generate(
            _messages(i), seed=i, max_new_tokens=12, temperature=0.9, router="rand"
        )[0][0].text
        for i in range(CLIENTS)
    ]
    assert answers == alone
    assert requests == CLIENTS  # streamed or not, every request went through the scheduler
    assert rows / steps > 4  # and they were decoded together: several rows per step


def _sse_events(lines: Any) -> Any:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield line


async def test_disconnect_mid_stream_stops_its_rows_and_others_continue(
    gated_engine: Any, gate: GateRouter
) -> None:
    long = {
        "model": "tiny-baco",
        "messages": _messages(0),
        "n": 4,
        "max_tokens": 400,
        "min_tokens": 400,
        "stream": True,
    }
    short = {**long, "n": 1, "max_tokens": 16, "min_tokens": 16, "seed": 1}
    with run_server(gated_engine) as live:
        streamed = live.metric("baco_stream_tokens_total")
        async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
            gate.close()
            leaving = await http.send(
                http.build_request("POST", "/v1/chat/completions", json=long), stream=True
            )
            lines = leaving.aiter_lines()
            assert (await anext(lines)).startswith("data: ")  # in flight
            staying = asyncio.create_task(_collect(http, short))
            assert await asyncio.to_thread(gate.waiting.wait, TIMEOUT)
            # polled in a thread: the event loop must stay free to send the second request
            await asyncio.to_thread(
                wait_until, lambda: live.state.in_flight == 2, "both requests to be admitted"
            )
            await leaving.aclose()  # the client goes away while its decode is held
            wait_until(lambda: live.connections == 1, "the server to see the disconnect")
            gate.open()
            short_lines = await asyncio.wait_for(staying, TIMEOUT)
        wait_until(lambda: live.metric("baco_cancelled_streams_total") == 1, "the cancellation")
        wait_until(lambda: live.state.in_flight == 0, "both requests to be released")
        produced = live.metric("baco_stream_tokens_total") - streamed
    assert short_lines[-1] == "data: [DONE]"
    finishes = [line for line in _sse_events(short_lines) if '"finish_reason":"length"' in line]
    assert len(finishes) == 1
    # The short stream made its 16 tokens; the cancelled one (4 rows x 400 tokens if it had
    # run on) stopped within the step that was held when its client left.
    assert 16 <= produced <= 16 + 4
    expected = gated_engine.generate(_messages(0), max_new_tokens=16, min_new_tokens=16, seed=1)
    text = "".join(_delta(line) for line in _sse_events(short_lines))
    assert text == expected[0][0].text


async def test_a_non_streamed_request_whose_client_leaves_stops_its_rows(
    gated_engine: Any, gate: GateRouter
) -> None:
    body = {"model": "tiny-baco", "messages": _messages(0), "n": 4, "max_tokens": 400}
    body["min_tokens"] = 400
    with run_server(gated_engine) as live:
        async with httpx.AsyncClient(base_url=live.url, timeout=TIMEOUT) as http:
            gate.close()
            leaving = asyncio.create_task(http.post("/v1/chat/completions", json=body))
            assert await asyncio.to_thread(gate.waiting.wait, TIMEOUT)
            wait_until(lambda: live.state.in_flight == 1, "the request to be admitted")
            leaving.cancel()  # the client goes away while its decode is held
            with contextlib.suppress(asyncio.CancelledError):
                await leaving
            wait_until(lambda: live.connections == 0, "the server to see the disconnect")
            time.sleep(0.5)  # the request notices within its poll interval
            steps = gate.calls
            gate.open()
            wait_until(lambda: live.state.in_flight == 0, "the request to be released")
        assert live.metric("baco_cancelled_streams_total") == 1
        # 4 rows x 400 tokens had it run on; it stopped within a step of the disconnect
        assert gate.calls - steps <= 2


async def _collect(http: httpx.AsyncClient, body: dict[str, Any]) -> list[str]:
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        return [line async for line in response.aiter_lines() if line]


def _delta(line: str) -> str:
    import json

    choices = json.loads(line[len("data: ") :])["choices"]
    return "".join(c.get("delta", {}).get("content") or "" for c in choices)


class _Records(logging.Handler):
    """Keeps the messages logged to a logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_shutdown_cancels_a_stream_still_running_after_the_grace_period(
    gated_engine: Any, gate: GateRouter
) -> None:
    records = _Records()
    logger = logging.getLogger("uvicorn.error")
    body = {"model": "tiny-baco", "messages": _messages(0), "max_tokens": 300, "stream": True}
    body["min_tokens"] = 300
    try:
        with run_server(gated_engine, shutdown_timeout=0.2) as live, live.client() as http:
            logger.addHandler(records)  # after uvicorn configured its loggers
            gate.close()
            with http.stream("POST", "/v1/chat/completions", json=body) as stream:
                lines = stream.iter_lines()
                assert next(lines).startswith("data: ")
                assert gate.waiting.wait(TIMEOUT)
                live.server.should_exit = True  # what SIGTERM does
                wait_until(
                    lambda: any("timeout graceful shutdown" in m for m in records.messages),
                    "uvicorn to cancel the stream",
                )
                gate.open()
                rest: list[str] = []
                with pytest.raises(httpx.RemoteProtocolError):  # the response is cut short
                    rest.extend(line for line in lines if line)
            wait_until(lambda: live.state.in_flight == 0, "the stream to be released")
            metrics = live.state.metrics.render()[0].decode()
    finally:
        logger.removeHandler(records)
    assert "data: [DONE]" not in rest
    assert "baco_cancelled_streams_total 1.0" in metrics
    produced = float(re.search(r"^baco_stream_tokens_total (\S+)$", metrics, re.M).group(1))
    assert produced <= 1  # stopped at the step that was held, not after 300 tokens
