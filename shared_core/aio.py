"""Async bridges: run the blocking engine in a worker thread without blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


async def iterate_in_thread(make_iterator: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Yield the items of a blocking iterator produced in a dedicated worker thread.

    The event loop only awaits a queue. When the consumer stops early (``break``,
    ``aclose()``, task cancellation), the worker closes the iterator at its next item — which
    releases the engine — and the thread is joined before this generator finishes.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    cancelled = threading.Event()
    finished = loop.create_future()

    def put(item: object) -> None:
        # The loop may be gone (a server cancelled the consumer at shutdown and exited while
        # this thread was inside a decode step); the item then has no reader.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        iterator = None
        try:
            iterator = make_iterator()
            for item in iterator:
                if cancelled.is_set():
                    break
                put(item)
            put(_DONE)
        except BaseException as exc:  # forwarded to the consumer
            put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, finished)

    thread = threading.Thread(target=work, name="baco-stream", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        cancelled.set()
        await asyncio.shield(finished)
        thread.join()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: Most blocking calls in flight at once. asyncio's default executor allows only
#: ``cpu_count + 4`` (6 on a 2-core machine), which would hold the rest back in its own queue
#: instead of letting the engine's scheduler batch them.
MAX_CONCURRENT_CALLS = 64
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _call_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(MAX_CONCURRENT_CALLS, thread_name_prefix="baco-call")
        return _pool


async def run_in_thread(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """``await`` a blocking call made in a worker thread (the loop keeps running)."""
    loop = asyncio.get_running_loop()
    call = contextvars.copy_context().run
    return await loop.run_in_executor(_call_pool(), partial(call, function, *args, **kwargs))
