"""A request queue that merges concurrent ``generate`` calls into one batched decode.

Calls with the same settings (everything but the seed) that arrive while such a decode is
running wait for it and then run together as one batch: one forward per model per step for
all of them instead of one per call. A lone call starts at once. Each request keeps its own
seed, its prompts get their seeds from it (:func:`~shared_core.sampling.prompt_seeds`) and
sampling is keyed by (prompt seed, sample, step), so a request gets the same samples as it
would alone. If a merged decode fails, each request is run again on its own, so one bad
request never costs the others their results.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .params import GenerationParams
from .sampling import prompt_seeds
from .types import Generation

#: ``cancelled()``: positions (in a decode's prompts) of prompts nobody waits for any more.
Cancelled = Callable[[], set[int]]
#: ``run(prompts, params, seeds, cancelled)``: decode ``prompts`` (one seed per prompt) in one
#: batch, dropping the rows of prompts ``cancelled`` names (``None``: none can be).
BatchRunner = Callable[
    [Sequence[Any], GenerationParams, Sequence[int], Cancelled | None], list[list[Generation]]
]


def _cancelled(owners: Sequence[_Request]) -> Cancelled | None:
    """Which prompts of a decode over ``owners``' prompts (one entry per prompt) belong to
    a cancelled request."""
    if all(r.cancel is None for r in owners):
        return None
    return lambda: {i for i, r in enumerate(owners) if r.cancel is not None and r.cancel.is_set()}


def batch_key(params: GenerationParams) -> tuple[Any, ...]:
    """What two requests must share to be decoded together: every setting but the seed."""
    spec = params.spec
    rest = tuple(
        getattr(params, f.name) for f in fields(params) if f.name not in ("router", "seed")
    )
    return (spec.name, spec.source, spec.gamma, spec.content_source, *rest)


@dataclass(eq=False)
class _Request:
    key: tuple[Any, ...]
    prompts: Sequence[Any]
    params: GenerationParams
    seed: int
    rows: int
    cancel: threading.Event | None = None
    result: list[list[Generation]] | None = None
    error: BaseException | None = None
    finished: bool = field(default=False)


class RequestQueue:
    """Runs ``generate`` requests, merging concurrent compatible ones into one decode.

    ``max_rows`` caps the rows (prompts × ``n``) of a merged batch; a request larger than
    that still runs, alone.
    """

    def __init__(self, run: BatchRunner, *, max_rows: int = 64) -> None:
        self._run = run
        self._max_rows = max_rows
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._running: list[tuple[Any, ...]] = []
        self.batches_run = 0
        self.requests_run = 0

    def submit(
        self,
        prompts: Sequence[Any],
        params: GenerationParams,
        cancel: threading.Event | None = None,
    ) -> list[list[Generation]]:
        """Decode ``prompts`` with ``params``; blocks until this request's samples are ready.
        Once ``cancel`` is set, this request's rows stop at the next step (the others in its
        batch go on) and its prompts come back with the samples finished so far."""
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        rows = len(prompts) * params.n
        request = _Request(batch_key(params), prompts, params, seed, rows=rows, cancel=cancel)
        with self._cond:
            self._pending.append(request)
            while not request.finished and request.key in self._running:
                self._cond.wait()
            if request.finished:
                return self._outcome(request)
            self._running.append(request.key)
            batch = self._take_batch(request)
        try:
            self._execute(batch)
        finally:
            with self._cond:
                self._running.remove(request.key)
                self._cond.notify_all()
        return self._outcome(request)

    def _take_batch(self, leader: _Request) -> list[_Request]:
        """The leader plus waiting requests with its settings, up to ``max_rows`` rows, in
        arrival order (whichever waiter wakes first leads, but rows keep the queue's order)."""
        same = [r for r in self._pending if r.key == leader.key]
        chosen, rows = {id(leader)}, leader.rows
        for other in same:
            if other is leader:
                continue
            if rows + other.rows > self._max_rows:
                break
            chosen.add(id(other))
            rows += other.rows
        batch = [r for r in same if id(r) in chosen]
        for request in batch:
            self._pending.remove(request)
        return batch

    def _execute(self, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                self._run_alone(batch[0])
                return
            prompts = [p for r in batch for p in r.prompts]
            seeds = [s for r in batch for s in prompt_seeds(r.seed, r.prompts)]
            owners = [r for r in batch for _ in r.prompts]
            try:
                results = self._run(prompts, batch[0].params, seeds, _cancelled(owners))
            except Exception:
                for request in batch:  # isolate the failure: each request on its own
                    self._run_alone(request)
                return
            start = 0
            for request in batch:
                request.result = results[start : start + len(request.prompts)]
                start += len(request.prompts)
            self._count(1, len(batch))
        except BaseException as exc:  # e.g. KeyboardInterrupt: nobody may wait forever
            for request in batch:
                if request.result is None and request.error is None:
                    request.error = exc
            raise
        finally:
            with self._cond:
                for request in batch:
                    request.finished = True

    def _run_alone(self, request: _Request) -> None:
        try:
            request.result = self._run(
                request.prompts,
                request.params,
                prompt_seeds(request.seed, request.prompts),
                _cancelled([request] * len(request.prompts)),
            )
        except Exception as exc:
            request.error = exc
        self._count(1, 1)

    def _count(self, batches: int, requests: int) -> None:
        with self._cond:
            self.batches_run += batches
            self.requests_run += requests

    @staticmethod
    def _outcome(request: _Request) -> list[list[Generation]]:
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result
