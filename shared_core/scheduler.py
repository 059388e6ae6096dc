"""The scheduler: one loop that owns all of an engine's model work (continuous batching).

Every request — ``generate`` or ``stream``, sync or async, any settings — enters a waiting
queue. The scheduler's thread runs the batch step by step, the way vLLM's engine core owns its
step: at each step boundary it admits waiting requests (prefilled, their rows join the running
batch), drops rows that finished, stopped, failed or were cancelled (their cache rows are
freed before the next forward), and asks its executor (:mod:`shared_core.executors`) to
decide the next token of every row at once. Rows of one batch may differ in every setting
(router, γ, sampling, guards, budgets, stop strings, logprobs, grammar, seed): each row
carries its own as tensors, and sampling is keyed by (prompt seed, sample, step), so a
seeded request gets the samples it would get alone.

Admission is first come, first served: the oldest waiting request joins as soon as the batch
has room for its rows (``max_batch_rows``) and memory for its caches
(:func:`~shared_core.memory.check_fits`); a request larger than the cap runs when the batch
is empty. A request arriving while a long batch decodes therefore gets its first token after
its own prefill and one step. Failures stay with their request: a prefill that fails fails
its request, a NaN distribution or a router error fails the request of that row, and only an
error the executor cannot attribute fails the whole batch.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .executors import Executor, RowRef, StepOutput, StepPlan
from .params import GenerationParams
from .rows import RowBook
from .step import RowSettings
from .types import StreamEvent

logger = logging.getLogger(__name__)

_ids = itertools.count()
#: How long the loop's thread waits for work before it ends (a new one starts on demand).
IDLE_EXIT_SECONDS = 1.0


class EngineClosed(RuntimeError):
    """The engine was closed while a request waited or ran."""


class Request:
    """One call's prompts, settings and row book, and where its events go.

    ``emit`` receives every :class:`~shared_core.types.StreamEvent`; ``done`` is set when
    every row has finished or the request failed (``error``) or was cancelled.
    """

    def __init__(
        self,
        prompts: Sequence[Any],
        params: GenerationParams,
        seeds: Sequence[int],
        book: RowBook,
        *,
        emit: Callable[[StreamEvent], None] | None = None,
        cancel: threading.Event | None = None,
        tokens_per_row: int = 0,
    ) -> None:
        self.id = next(_ids)
        self.prompts = list(prompts)
        self.params = params
        self.seeds = list(seeds)
        self.book = book
        self.settings = RowSettings.of(params)
        self.rows = len(self.prompts) * params.n
        self.cancel = cancel or threading.Event()
        self.tokens_per_row = tokens_per_row
        self.steps = 0
        #: the scheduler's step count when this request was queued and at its first token
        self.queued_at: int | None = None
        self.first_token_at: int | None = None
        self.finished_rows = 0
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._emit = emit
        self._on_done: list[Callable[[Request], None]] = []

    def emit(self, event: StreamEvent) -> None:
        if event.generation is not None:
            self.finished_rows += 1
        if self._emit is not None:
            self._emit(event)

    def on_done(self, callback: Callable[[Request], None]) -> None:
        self._on_done.append(callback)

    def finish(self, error: BaseException | None = None) -> None:
        """End the request (once): with ``error`` it failed; its live rows are dropped."""
        if self.done.is_set():
            return
        self.error = error
        for row in range(self.rows):
            if not self.book.finished(row):
                self.book.drop(row)
        self.done.set()
        for callback in self._on_done:
            callback(self)

    @property
    def complete(self) -> bool:
        return self.finished_rows >= self.rows


class Scheduler:
    """Runs an :class:`~shared_core.executors.Executor` over every admitted request's rows.

    ``fits(requests)`` raises ``ValueError`` when the caches of ``requests``' rows together
    cannot fit in memory. ``batch_requests=False`` admits a request only into an empty batch
    (one request at a time: the baseline the benchmarks compare against).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        max_rows: int = 64,
        batch_requests: bool = True,
        joins: bool = True,
        fits: Callable[[Sequence[Request]], None] | None = None,
        device: torch.device | None = None,
        name: str = "baco-scheduler",
    ) -> None:
        self.executor = executor
        self.max_rows = max_rows
        self.batch_requests = batch_requests
        self.joins = joins
        self.fits = fits
        self.device = device or torch.device("cpu")
        self.name = name
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._batch: list[RowRef] = []
        self._joining: list[Request] = []  # admitted, not yet in the batch
        self._thread: threading.Thread | None = None
        self._closed = False
        #: steps run, rows over all steps, requests admitted and finished, most rows in a step
        self.steps = 0
        self.row_steps = 0
        self.admitted = 0
        self.finished = 0
        self.peak_rows = 0
        _live.add(self)

    # ------------------------------------------------------------------ public

    def submit(self, request: Request) -> Request:
        """Queue ``request``; it is admitted at the next step boundary."""
        with self._cond:
            if self._closed:
                raise EngineClosed("the engine is closed")
            request.queued_at = self.steps
            self._waiting.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return request

    @property
    def running_rows(self) -> int:
        return len(self._batch)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the loop after its current step; waiting and running requests fail with
        :class:`EngineClosed`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._iterate():
                        break
                except Exception as exc:  # host work outside the step failed (a bug)
                    logger.exception("baco: the scheduler's loop failed; failing its batch")
                    requests = [r.request for r in self._batch] + self._joining
                    for request in {id(r): r for r in requests}.values():
                        request.finish(exc)
                    self._joining = []
                    self.executor.reset()
                    self._set_batch([])
        finally:
            if self._closed:
                error = EngineClosed("the engine is closed")
                with self._cond:
                    pending = list(self._waiting)
                    self._waiting.clear()
                for request in pending + [ref.request for ref in self._batch]:
                    request.finish(error)
                self._batch = []

    def _iterate(self) -> bool:
        with self._cond:
            while not self._waiting and not self._batch and not self._closed:
                idle = not self._cond.wait(timeout=IDLE_EXIT_SECONDS)
                if idle and not self._waiting and not self._batch and not self._closed:
                    # the thread ends (the next submit starts another, under this lock), so
                    # nothing keeps an engine nobody uses, and its models, alive
                    self._thread = None
                    return False
            if self._closed:
                return False
            admitted = self._take_admissible()
        self._joining = admitted
        failed = self.executor.admit(admitted) if admitted else {}
        joins = []
        for request in admitted:
            if request.id in failed:
                request.finish(failed[request.id])
            else:
                joins.append(request)
        self.admitted += len(joins)
        for ref in self._batch:
            if ref.request.cancel.is_set() and not ref.request.done.is_set():
                ref.request.finish()
        keep = [
            p
            for p, ref in enumerate(self._batch)
            if not ref.request.done.is_set() and not ref.request.book.finished(ref.row)
        ]
        rows = [self._batch[p] for p in keep] + [RowRef(r, i) for r in joins for i in range(r.rows)]
        if not rows:
            self.executor.execute(StepPlan(keep=[], joins=[], rows=[]))
            self._set_batch([])
            return True
        asked = [ref.request.params.logprobs for ref in rows]
        plan = StepPlan(
            keep=keep,
            joins=joins,
            rows=rows,
            allowed=self._allowed(rows),
            logprobs=max((k for k in asked if k is not None), default=None),
            waiting=len(self._waiting),
        )
        try:
            output = self.executor.execute(plan)
        except Exception as exc:  # the batch state is unknown: every request in it fails
            logger.exception("baco: a decode step failed; failing the %d rows' requests", len(rows))
            for request in {id(ref.request): ref.request for ref in rows}.values():
                request.finish(exc)
            self.executor.reset()
            self._set_batch([])
            return True
        self._set_batch(rows)
        self._joining = []
        self.steps += 1
        self.row_steps += len(rows)
        self.peak_rows = max(self.peak_rows, len(rows))
        self._apply(rows, output)
        return True

    def _set_batch(self, rows: list[RowRef]) -> None:
        with self._cond:
            self._batch = rows

    def _take_admissible(self) -> list[Request]:
        """Waiting requests that join now, oldest first (called under the lock)."""
        running = {id(ref.request): ref.request for ref in self._batch}
        taken: list[Request] = []
        rows = sum(r.rows for r in running.values())
        while self._waiting:
            request = self._waiting[0]
            if request.cancel.is_set():
                self._waiting.popleft()
                request.finish()
                continue
            busy = bool(running) or bool(taken)
            accepts = getattr(self.executor, "accepts_joins", lambda: True)()
            if busy and (not self.batch_requests or not self.joins or not accepts):
                break
            if busy and rows + request.rows > self.max_rows:
                break
            if self.fits is not None:
                try:
                    self.fits([*running.values(), *taken, request])
                except ValueError as exc:
                    if busy:
                        break  # room comes back as rows finish
                    self._waiting.popleft()
                    request.finish(exc)
                    continue
            self._waiting.popleft()
            taken.append(request)
            rows += request.rows
        return taken

    def _allowed(self, rows: list[RowRef]) -> torch.Tensor | None:
        """Grammar masks ``[rows, V]`` of the constrained rows (the others allow all)."""
        by_request: dict[int, list[int]] = {}
        requests: dict[int, Any] = {}
        for position, ref in enumerate(rows):
            if ref.request.book.matchers is not None:
                by_request.setdefault(ref.request.id, []).append(position)
                requests[ref.request.id] = ref.request
        if not by_request:
            return None
        allowed: torch.Tensor | None = None
        for request_id, positions in by_request.items():
            request = requests[request_id]
            book = request.book
            active = [rows[p].row for p in positions]
            closing = [r for r in active if book.near_budget(r)]
            mask = book.matchers.allowed(
                active,
                self.device,
                ban_ends=request.steps < request.params.min_new_tokens,
                closing=closing,
            )
            if allowed is None:
                allowed = torch.ones(
                    (len(rows), mask.shape[1]), dtype=torch.bool, device=mask.device
                )
            allowed[torch.tensor(positions, device=mask.device)] = mask
        return allowed

    def _apply(self, rows: list[RowRef], output: StepOutput) -> None:
        """Turn the step's decisions into each request's events; end complete requests."""
        for request_id, error in output.failed.items():
            for ref in rows:
                if ref.request.id == request_id:
                    ref.request.finish(error)
                    break
        seen: dict[int, Request] = {}
        broken: dict[int, dict[str, list[int]]] = {}
        for position, names in output.broken.items():
            ref = rows[position]
            if not ref.request.book.finished(ref.row):
                for name in names:
                    broken.setdefault(ref.request.id, {}).setdefault(name, []).append(ref.row)
        for position, ref in enumerate(rows):
            request = ref.request
            seen[request.id] = request
            if request.done.is_set():
                continue
            if request.id in broken:
                name, bad = next(iter(broken[request.id].items()))
                request.finish(
                    FloatingPointError(
                        f"model {_model_name(request, name)!r} produced NaN/inf logits (rows "
                        f"{bad[:8]}); check its weights and dtype (float16 overflow is a "
                        "common cause; try bfloat16)"
                    )
                )
                continue
            book = request.book
            if request.first_token_at is None:
                request.first_token_at = self.steps
            scores = None if output.scores is None else output.scores[position]
            for j, token in enumerate(output.tokens[position]):
                if book.finished(ref.row):
                    break
                score = None if scores is None else scores[j]
                request.emit(book.advance(ref.row, token, output.owners[position][j], score))
        for request in seen.values():
            request.steps += 1
            if not request.done.is_set() and request.complete:
                self.finished += 1
                request.finish()


def _model_name(request: Request, role: str) -> str:
    names = request.book.model_names
    if role == "base" or len(names) == 1:
        return names[0]
    return names[-1]


_live: weakref.WeakSet[Scheduler] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Stop every scheduler loop at interpreter exit, so no thread is inside torch then."""
    for scheduler in list(_live):
        scheduler.close(timeout=10.0)
