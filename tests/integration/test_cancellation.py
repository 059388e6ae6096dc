"""Cancelling async streams of both adapters leaves no worker thread and a usable engine."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from langchain_baco import ChatBaco
from llama_index_baco import Baco
from shared_core import BacoEngine


@pytest.fixture
def produced(monkeypatch) -> list[int]:
    """Counts the events every engine stream yields (to see where a stream stopped)."""
    counts: list[int] = []
    original = BacoEngine.stream

    def counting(self, *args, **kwargs):
        counts.append(0)
        index = len(counts) - 1
        for event in original(self, *args, **kwargs):
            counts[index] += 1
            yield event

    monkeypatch.setattr(BacoEngine, "stream", counting)
    return counts


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "baco-stream"]


def models(tiny_pair_paths) -> dict:
    base, aligned = tiny_pair_paths
    return {"base_model": str(base), "aligned_model": str(aligned)}


async def cancel_after_first(agen) -> None:
    """Consume one chunk, then cancel the consuming task while the stream is mid-way."""
    first = asyncio.Event()

    async def consume():
        async for _ in agen:
            first.set()
            await asyncio.sleep(10)  # cancelled here, mid-stream

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), timeout=120)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_cancelled_langchain_stream_leaves_no_thread(tiny_pair_paths, produced):
    llm = ChatBaco(**models(tiny_pair_paths), max_tokens=450, min_tokens=450, seed=0)
    await cancel_after_first(llm.astream("Tell me a story."))
    for _ in range(50):
        if not stream_threads():
            break
        await asyncio.sleep(0.1)
    assert not stream_threads()
    assert 0 < produced[0] < 450  # the decode stopped early, it did not run to the end
    reply = await llm.ainvoke("Name a color.", max_tokens=4, min_tokens=1)
    assert reply.usage_metadata["output_tokens"] >= 1


async def test_cancelled_llama_index_stream_leaves_no_thread(tiny_pair_paths, produced):
    llm = Baco(**models(tiny_pair_paths), max_tokens=450, min_tokens=450, seed=0)
    await cancel_after_first(await llm.astream_complete("Tell me a story."))
    for _ in range(50):
        if not stream_threads():
            break
        await asyncio.sleep(0.1)
    assert not stream_threads()
    assert 0 < produced[0] < 450  # the decode stopped early, it did not run to the end
    reply = await llm.acomplete("Name a color.", max_tokens=4, min_tokens=1)
    assert reply.text
