"""The graph loop: steps 1 … of a decode on the graph path (:mod:`shared_core.graph`).

The eager loop runs step 0 and hands its model states over (:meth:`~shared_core.model_state.
ModelState.hand_over`). Chunks of ``graph_sync_every`` steps then run on the device while the
host turns the previous chunk into events (:class:`~shared_core.rows.RowBook`); when the live
rows fit a smaller batch bucket they move to a runner of that bucket. A shape without a
compiled runner is built by the engine's :class:`~shared_core.graph.GraphCache` (on a
background thread unless ``DecodeOptions.graph_wait``), never under the engine lock.

Runners of a pair with two separate models work on their own buffers without the engine lock;
a one-weights pair's runners take it, since peft's adapter switch is process-wide.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .decode_options import DecodeContext, DecodeOptions
from .graph import GraphRunner, ModelLayout, batch_bucket, static_length
from .rows import RowBook
from .step import RowState, StepRules
from .types import StreamEvent

logger = logging.getLogger(__name__)

#: A launched chunk: its step count and the callable that reads it back.
Chunk = tuple[int, Callable[[], list[list[list[int]]]]]


def graph_key(rules: StepRules, options: DecodeOptions, bucket: int | None, shapes: tuple) -> tuple:
    """What a compiled graph depends on: the rules' structure (not the knobs' values, which
    are graph inputs), the compile settings and the shapes ``(bucket, model lengths)``."""
    return (rules.structure(), options.graph_backend, options.graph_sync_every, (bucket, shapes))


def run_graph(
    context: DecodeContext,
    book: RowBook,
    rules: StepRules,
    row_state: RowState,
    active: list[int],
    states: dict[str, Any],
    drop_cancelled: Callable[[], None] | None = None,
) -> Generator[StreamEvent, None, bool]:
    """Decode steps 1 … of ``book``'s rows on the graph path. ``states``: the eager model
    states after step 0 by name (``base``/``aligned``, or ``joint``); ``active``: the row ids
    in batch order. ``drop_cancelled`` (called once per chunk) ends rows nobody waits for.

    Returns False, having yielded nothing and left ``states`` as they were, when no runner is
    ready for this shape (being compiled, or failed to compile): the eager loop goes on."""
    loop = _GraphLoop(context, book, rules, states, drop_cancelled)
    runner = loop.runner_for(len(active))
    if runner is None:
        return False
    try:
        with loop.work():
            handovers = {name: state.hand_over() for name, state in states.items()}
            budget = [book.rows[r].budget for r in active]
            runner.load(rules, row_state, budget, 1, handovers)
            del handovers  # the eager caches are freed here
        yield from loop.chunks(runner, active)
        return True
    finally:
        loop.release()


class _GraphLoop:
    def __init__(
        self,
        context: DecodeContext,
        book: RowBook,
        rules: StepRules,
        states: dict[str, Any],
        drop_cancelled: Callable[[], None] | None = None,
    ) -> None:
        pair = context.pair
        self.drop_cancelled = drop_cancelled
        self.context, self.book, self.rules = context, book, rules
        self.options = context.options
        models = {"base": pair.base, "aligned": pair.aligned, "joint": pair.aligned}
        self.layouts = {
            name: ModelLayout.of(
                models[name], state.cache.layers, static_length(models[name], state.mask.shape[1])
            )
            for name, state in states.items()
        }
        self.shapes = tuple((name, layout.length) for name, layout in self.layouts.items())
        self.work: Callable[[], AbstractContextManager[None]] = (
            context.compute if pair.shares_weights else context.device_work
        )
        self.held: list[tuple[Any, GraphRunner]] = []

    def runner_for(self, live: int) -> GraphRunner | None:
        """A runner of the bucket holding ``live`` rows, or ``None`` (logged) while it is
        being built or when its build failed."""
        pair, options, graphs = self.context.pair, self.options, self.context.graphs
        bucket = batch_bucket(live)
        key = graph_key(self.rules, options, bucket, self.shapes)

        def build() -> GraphRunner:
            with self.work():
                runner = GraphRunner(
                    self.rules,
                    self.layouts,
                    bucket=bucket,  # type: ignore[arg-type]
                    vocab_width=pair.vocab.size,
                    sync_every=options.graph_sync_every,
                    backend=options.graph_backend,
                    device=pair.device,
                    pool=graphs.pool(pair.device),
                )
                runner.prepare()
                return runner

        runner = graphs.get(key, build, wait=options.graph_wait)
        if runner is None:
            reason = graphs.failure(key) or "its step is being compiled"
            logger.debug("baco: no graph runner for a %s-row bucket: %s", bucket, reason)
        else:
            self.held.append((key, runner))
        return runner

    def release(self) -> None:
        for key, runner in self.held:
            self.context.graphs.release(key, runner)

    def chunks(self, runner: GraphRunner, active: list[int]) -> Iterator[StreamEvent]:
        """Launch chunk t + 1, then turn chunk t into events; move or mark finished rows."""
        book, every = self.book, self.options.graph_sync_every
        step, pending, end = 1, None, book.max_budget
        while pending is not None or step < end:
            launched = None
            if step < end:
                count = min(every, end - step)
                with self.work():
                    runner.run(count)
                launched = (count, runner.read(step, count))
                step += count
            if pending is not None:
                yield from self.events(pending, active)
                if self.drop_cancelled is not None:
                    self.drop_cancelled()
                live = book.live(active)
                if not live:
                    return
                smaller = self.smaller(runner, len(live))
                if smaller is not None:
                    if launched is not None:  # drain: the device state is then final
                        yield from self.events(launched, active)
                        launched, live = None, book.live(active)
                        if not live:
                            return
                    with self.work():
                        smaller.load_rows(runner, live)
                    runner, active = smaller, [active[p] for p in live]
                else:
                    finished = [p for p, row_id in enumerate(active) if book.finished(row_id)]
                    with self.work():
                        runner.finish(finished)
            pending = launched

    def smaller(self, runner: GraphRunner, live: int) -> GraphRunner | None:
        """A ready runner of a smaller bucket for ``live`` rows, if compaction is on."""
        bucket = batch_bucket(live)
        if not self.options.compact_finished or bucket is None or bucket >= runner.bucket:
            return None
        return self.runner_for(live)

    def events(self, chunk: Chunk, active: Sequence[int]) -> Iterator[StreamEvent]:
        """Stream events of one chunk of graph steps read back from the device."""
        count, wait = chunk
        tokens, owners, base_broken, aligned_broken = wait()
        spec, book = self.rules.spec, self.book
        broken = [
            flags
            for flags, used in ((base_broken, spec.uses_base), (aligned_broken, spec.uses_aligned))
            if used
        ]
        for j in range(count):
            book.check_finite([[row[j] for row in flags] for flags in broken], active)
            for position, row_id in enumerate(active):
                if not book.finished(row_id):
                    yield book.advance(row_id, tokens[position][j], bool(owners[position][j]))
