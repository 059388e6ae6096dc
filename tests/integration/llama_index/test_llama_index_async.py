"""The async forms of ``Baco`` decode in a worker thread and never block the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage

from llama_index_baco import Baco

PROMPT = "Write a haiku about the sea, the moon and the wind."
LONG = {"max_tokens": 96, "min_tokens": 96}  # long enough to see a blocked loop


async def _drain(result: Any) -> None:
    async for _ in result:
        pass


async def _acomplete(llm: Baco) -> None:
    await llm.acomplete(PROMPT, **LONG)


async def _astream_chat(llm: Baco) -> None:
    await _drain(await llm.astream_chat([ChatMessage(role="user", content=PROMPT)], **LONG))


@pytest.mark.parametrize("generate", [_acomplete, _astream_chat], ids=["acomplete", "astream_chat"])
async def test_event_loop_keeps_ticking(
    llm: Baco, generate: Callable[[Baco], Awaitable[None]]
) -> None:
    llm.complete("warm up")  # load the engine outside the measurement
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick_task = asyncio.create_task(ticker())
    start = time.perf_counter()
    await generate(llm)
    elapsed = time.perf_counter() - start
    done.set()
    await tick_task
    assert len(gaps) >= 10
    assert max(gaps) < elapsed / 4, (max(gaps), elapsed)


async def test_concurrent_calls_share_one_engine(llm: Baco) -> None:
    texts = await asyncio.gather(
        llm.acomplete(PROMPT, seed=1),
        llm.achat([ChatMessage(role="user", content=PROMPT)], seed=2),
        llm.acomplete(PROMPT, seed=1, router="aligned"),
    )
    assert all(r.raw["usage"]["output_tokens"] >= llm.min_tokens for r in texts)
    assert texts[0].text == (await llm.acomplete(PROMPT, seed=1)).text


async def test_abandoned_stream_releases_the_engine(llm: Baco) -> None:
    stream = await llm.astream_complete(PROMPT, max_tokens=64, min_tokens=64)
    async for _ in stream:
        break
    await stream.aclose()
    response = await asyncio.wait_for(llm.acomplete(PROMPT), timeout=60)
    assert response.text
