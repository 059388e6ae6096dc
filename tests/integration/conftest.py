"""Shared helpers of the integration tests: event-based proof that async calls keep the event
loop free (no wall-clock thresholds, so the checks mean the same on a slow CPU and a GPU)."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

torch = pytest.importorskip("torch")

from shared_core import BacoEngine  # noqa: E402
from shared_core.routers import RouterSignals  # noqa: E402

T = TypeVar("T")
#: Seconds a decode step waits for the event loop before the probe reports it as blocked;
#: only reached when the test fails.
ROUND_TRIP_TIMEOUT = 60.0


class LoopProbe:
    """Shows, with events and counts, that a call's decode runs while the event loop runs.

    Pass :meth:`router` as the call's router (it keeps the aligned model at every step). At
    every decode step it asks a ticker coroutine on the event loop for its next tick and waits
    for it. If the decode ran on the loop thread, or the loop were otherwise blocked until the
    decode ended, no tick could come: the wait times out and the step is recorded as
    unanswered. :meth:`check` then asserts that no step ran on the loop thread, every step was
    answered, and the tick count rose between every two consecutive steps.
    """

    def __init__(self, timeout: float = ROUND_TRIP_TIMEOUT) -> None:
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.ticks = 0
        self.ticks_at_step: list[int] = []
        self.step_threads: set[int] = set()
        self.unanswered: list[int] = []
        self._want_tick = threading.Event()
        self._ticked = threading.Event()

    def router(self, signals: RouterSignals) -> torch.Tensor:
        """A BACO router (always the aligned model) that waits for one loop tick per step."""
        me = threading.get_ident()
        self.step_threads.add(me)
        if me != self.loop_thread:  # on the loop thread no tick can come: fail fast
            self._ticked.clear()
            self._want_tick.set()
            if not self._ticked.wait(self.timeout):
                step = signals.step  # a [rows] tensor: the rows' own steps
                self.unanswered.append(int(step.reshape(-1)[0]) if torch.is_tensor(step) else step)
        self.ticks_at_step.append(self.ticks)
        return torch.zeros_like(signals.p_base, dtype=torch.bool)

    async def run(self, call: Awaitable[T]) -> T:
        """Await ``call`` next to the ticker coroutine."""
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                await asyncio.sleep(0.001)
                self.ticks += 1
                if self._want_tick.is_set():
                    self._want_tick.clear()
                    self._ticked.set()

        task = asyncio.create_task(ticker())
        try:
            return await call
        finally:
            stop.set()
            await task

    def check(self, steps: int) -> None:
        """Assert that ``steps`` decode steps ran off the loop while the loop kept ticking."""
        assert self.loop_thread not in self.step_threads, "a decode step ran on the event loop"
        assert not self.unanswered, f"the event loop was blocked at steps {self.unanswered}"
        assert len(self.ticks_at_step) == steps
        rises = [b > a for a, b in itertools.pairwise(self.ticks_at_step)]
        assert self.ticks_at_step[0] >= 1 and all(rises), self.ticks_at_step


@pytest.fixture
def loop_probe() -> Callable[[], LoopProbe]:
    """A factory of :class:`LoopProbe` (call it inside the running event loop)."""
    return LoopProbe


class EngineThreads:
    """Thread ids that ran ``BacoEngine.generate`` calls and ``BacoEngine.stream`` steps."""

    def __init__(self) -> None:
        self.generate: set[int] = set()
        self.stream: set[int] = set()
        self.calls = 0


@pytest.fixture
def engine_threads(monkeypatch: pytest.MonkeyPatch) -> EngineThreads:
    """Record which threads run the engine's public decode entry points during a test."""
    seen = EngineThreads()
    generate, stream = BacoEngine.generate, BacoEngine.stream

    def watched_generate(self: BacoEngine, *args: Any, **kwargs: Any) -> Any:
        seen.generate.add(threading.get_ident())
        seen.calls += 1
        return generate(self, *args, **kwargs)

    def watched_stream(self: BacoEngine, *args: Any, **kwargs: Any) -> Iterator[Any]:
        seen.calls += 1
        events = stream(self, *args, **kwargs)
        try:
            while True:
                seen.stream.add(threading.get_ident())
                try:
                    event = next(events)
                except StopIteration:
                    return
                yield event
        finally:
            events.close()

    monkeypatch.setattr(BacoEngine, "generate", watched_generate)
    monkeypatch.setattr(BacoEngine, "stream", watched_stream)
    return seen
