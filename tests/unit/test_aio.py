"""Async bridges to the blocking engine (shared_core/aio.py)."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from shared_core.aio import iterate_in_thread, run_in_thread

REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def test_many_blocking_calls_are_in_flight_at_once():
    """16 calls must all be running together (asyncio's default pool has cpu_count + 4)."""
    barrier = threading.Barrier(16)

    def call(i: int) -> int:
        barrier.wait(timeout=10)  # breaks (and raises) unless all 16 arrive together
        return i

    assert await asyncio.gather(*(run_in_thread(call, i) for i in range(16))) == list(range(16))


async def test_calls_see_the_callers_context_variables():
    REQUEST.set("abc")
    assert await run_in_thread(REQUEST.get) == "abc"


async def test_stream_items_arrive_in_order_and_errors_propagate():
    def items():
        yield from range(5)
        raise ValueError("row 3 failed")

    seen = []
    try:
        async for item in iterate_in_thread(items):
            seen.append(item)
    except ValueError as exc:
        assert "row 3" in str(exc)
    else:
        raise AssertionError("the worker's error was not raised")
    assert seen == [0, 1, 2, 3, 4]
