"""The event-loop probe of tests/integration/conftest.py catches what it is meant to catch."""

from __future__ import annotations

import asyncio
import threading

import pytest

STEPS = 4
OPTIONS = {"max_new_tokens": STEPS, "min_new_tokens": STEPS}


async def test_probe_passes_a_decode_in_a_worker_thread(tiny_engine, loop_probe) -> None:
    probe = loop_probe()
    await probe.run(asyncio.to_thread(tiny_engine.generate, "Hi", router=probe.router, **OPTIONS))
    probe.check(steps=STEPS)


async def test_probe_catches_a_decode_on_the_event_loop(tiny_engine, loop_probe) -> None:
    probe = loop_probe(timeout=0.2)  # the loop is blocked: each step gives up after 0.2 s

    async def decode_on_the_loop() -> None:  # the mistake: a blocking call inside a coroutine
        tiny_engine.generate("Hi", router=probe.router, **OPTIONS)

    await probe.run(decode_on_the_loop())
    # the decode itself runs on the engine scheduler's thread; the blocking call holds the
    # loop until it ends, so no step gets its tick
    with pytest.raises(AssertionError, match="blocked"):
        probe.check(steps=STEPS)


async def test_probe_catches_a_loop_blocked_until_the_decode_ends(tiny_engine, loop_probe) -> None:
    probe = loop_probe(timeout=0.2)  # each step gives up waiting after 0.2 s
    finished = threading.Event()

    def decode() -> None:
        try:
            tiny_engine.generate("Hi", router=probe.router, **OPTIONS)
        finally:
            finished.set()

    async def wait_blocking() -> None:  # the mistake: a thread-blocking wait on the loop
        worker = threading.Thread(target=decode)
        worker.start()
        assert finished.wait(120)
        worker.join()

    await probe.run(wait_blocking())
    assert probe.unanswered == list(range(STEPS))
    with pytest.raises(AssertionError, match="blocked"):
        probe.check(steps=STEPS)
