"""The async forms of ``Baco`` decode in a worker thread and never block the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from llama_index.core.base.llms.types import ChatMessage

from llama_index_baco import Baco

PROMPT = "Write a haiku about the sea, the moon and the wind."
STEPS = 24
LONG = {"max_tokens": STEPS, "min_tokens": STEPS}


async def _acomplete(llm: Baco, router: Any) -> Any:
    return (await llm.acomplete(PROMPT, router=router, **LONG)).raw


async def _astream_chat(llm: Baco, router: Any) -> Any:
    stream = await llm.astream_chat(
        [ChatMessage(role="user", content=PROMPT)], router=router, **LONG
    )
    return [chunk async for chunk in stream][-1].raw


@pytest.mark.parametrize("generate", [_acomplete, _astream_chat], ids=["acomplete", "astream_chat"])
async def test_event_loop_keeps_ticking(
    llm: Baco, loop_probe, generate: Callable[[Baco, Any], Awaitable[Any]]
) -> None:
    probe = loop_probe()
    raw = await probe.run(generate(llm, probe.router))
    assert raw["usage"]["output_tokens"] == STEPS
    probe.check(steps=STEPS)


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
