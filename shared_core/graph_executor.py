"""The graph executor: the batch on static caches and one compiled step (:mod:`shared_core.graph`).

A sibling of the eager executor behind the same interface; it holds one and hands the batch
back and forth. The rule for when the graph path runs the batch:

- it **takes** the batch at a step boundary where no rows join, no request waits, every row
  has decided its first token on the eager executor (step 0 feeds the base model's space
  slot and other one-off inputs), every row runs the same models, and the batch qualifies
  (built-in routers, no grammar, no log-probabilities, a bucket and model the graph path
  supports: :func:`batch_fallback_reason`), and a compiled runner for the shape is ready —
  a shape without one is built on a background thread (``DecodeOptions.graph_wait``: in the
  step) while the eager executor goes on;
- it runs chunks of ``graph_sync_every`` steps; rows that leave are marked finished in their
  slot (their tokens become padding);
- it **hands the batch back** to the eager executor (static caches copied into dynamic ones)
  at the first step boundary where rows join, so a request arriving while the graph path
  runs waits at most one chunk.

Per-row settings live in the runner's row tensors, so rows of different routers, γ and
sampling knobs share one compiled step; the step's structure (which transforms some row
needs, which routers the batch holds) is part of the runner's key.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .executors import EagerExecutor, StepOutput, StepPlan, batch_rules
from .forward import NO_ADAPTER
from .graph import (
    BATCH_BUCKETS,
    GraphCache,
    GraphRunner,
    ModelLayout,
    _graph_model_reason,
    batch_bucket,
    static_length,
)
from .lora_split import row_split_unsupported
from .model_state import ModelRows

logger = logging.getLogger(__name__)


def batch_fallback_reason(eager: EagerExecutor, plan: StepPlan, columns: int) -> str | None:
    """Why the graph path cannot run this batch now (``None``: it can)."""
    pair, states = eager.pair, eager.states
    specs = {id(ref.request): ref.request.params.spec for ref in plan.rows}
    if any(not isinstance(spec.source, str) for spec in specs.values()):
        return "a custom router callable (it may branch on tensors or run host code)"
    if plan.allowed is not None:
        return "grammar-constrained decoding (its token mask is filled on the host every step)"
    if plan.logprobs is not None:
        return "log-probabilities requested (read on the host every step)"
    if eager.lazy is not None:
        return "lazy aligned catch-up (data-dependent forwards)"
    if len(set(states.uses_base)) > 1 or len(set(states.uses_aligned)) > 1:
        return "rows of single-model and two-model routers in one batch"
    if states.joint is not None:
        reason = row_split_unsupported(pair.aligned)
        if reason is not None:
            return f"a one-weights pair's joint forward: {reason}"
    elif getattr(pair, "shares_weights", False) and states.base and states.aligned:
        reason = row_split_unsupported(pair.aligned) or "DecodeOptions.joint_forward is off"
        return f"a one-weights pair's two views without the joint forward: {reason}"
    if batch_bucket(len(plan.rows)) is None:
        return f"{len(plan.rows)} rows exceed the largest batch bucket {BATCH_BUCKETS[-1]}"
    for name, model in (("base", pair.base), ("aligned", pair.aligned)):
        used = states.joint is not None or getattr(states, name) is not None
        reason = _graph_model_reason(model, columns) if used else None
        if reason is not None:
            return f"the {name} model: {reason}"
    return None


def _graph_key(rules: Any, options: Any, bucket: int, shapes: tuple) -> tuple:
    """What a compiled runner depends on: the step's structure (router names and the
    transforms some row needs; values are row tensors), compile settings and shapes."""
    structure = (
        tuple(spec.name for spec in rules.routers),
        rules.temperature,
        rules.greedy,
        rules.top_k,
        rules.nucleus,
        rules.min_p,
        rules.min_new_tokens,
        rules.pad_id,
    )
    return (structure, options.graph_backend, options.graph_sync_every, (bucket, shapes))


class GraphExecutor:
    """Runs the batch on the graph path when the rule above allows, else on ``eager``."""

    def __init__(
        self, eager: EagerExecutor, graphs: GraphCache, compute: Any, device_work: Any
    ) -> None:
        self.eager = eager
        self.graphs = graphs
        self.compute = compute
        # a build of a two-model pair's step works on its own buffers: no lock needed; a
        # one-weights pair's switches the shared model's adapter, so it takes the lock
        self.build_work = compute if getattr(eager.pair, "shares_weights", False) else device_work
        self.options = eager.options
        self.runner: GraphRunner | None = None
        self._key_of: dict[int, Any] = {}
        self.slots: list[int] = []  # batch position -> runner row
        self.step = 1  # the ring's next step
        self.wait = self.options.graph_wait
        self.taken = 0  # batches the graph path ran (for tests and metrics)
        self.declined: tuple[int, ...] | None = None  # the batch the graph path last declined
        #: batches kept on the eager executor, by reason (each reason logged once at INFO)
        self.fallbacks: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------ the interface

    def admit(self, requests: Sequence[Any]) -> dict[int, BaseException]:
        return self.eager.admit(requests)

    def accepts_joins(self) -> bool:
        return self.eager.accepts_joins()

    def reset(self) -> None:
        self._release()
        self.eager.reset()

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.runner is not None:
            if plan.joins or not plan.rows:
                self._hand_back(plan.keep)
                plan = replace(plan, keep=list(range(len(plan.keep))))
            else:
                return self._chunk(plan)
        if self._take(plan):
            return self._chunk(replace(plan, keep=list(range(len(plan.rows)))))
        return self.eager.execute(plan)

    # ------------------------------------------------------------------ moving the batch

    def _take(self, plan: StepPlan) -> bool:
        """Move the batch to a ready runner (see the module docstring)."""
        eager = self.eager
        if plan.joins or plan.waiting or eager.rows is None or not plan.rows:
            return False
        if bool((eager.rows.step == 0).any()):
            return False
        members = tuple(sorted({ref.request.id for ref in plan.rows}))
        if members == self.declined:  # asked for this batch already: it stays eager
            return False
        self.declined = members
        budgets = [ref.request.book.rows[ref.row].budget for ref in plan.rows]
        kept_rows = eager.rows.select(torch.tensor(plan.keep, dtype=torch.long))
        remaining = max(b - int(s) for b, s in zip(budgets, kept_rows.step.tolist(), strict=True))
        states = eager.states
        columns = max(s.mask.shape[1] for s in states.states.values()) + max(remaining, 1) + 1
        reason = batch_fallback_reason(eager, plan, columns)
        if reason is not None:
            self._fell_back(reason)
            return False
        rules, index = batch_rules(plan.rows, eager.vocab, eager.pad_id, static_shapes=True)
        runner = self._runner(rules, states, len(plan.rows), columns)
        if runner is None:
            return False
        with self.compute():
            eager._leave_and_feed(plan.keep)  # the last eager tokens go in first
            rows = eager.rows
            rows.router = torch.tensor(index, dtype=torch.long, device=rows.seeds.device)
            handovers = {name: s.hand_over() for name, s in eager.states.states.items()}
            runner.load(rules, rows, budgets, rows.step.tolist(), handovers)
            del handovers
        self.uses = (list(eager.states.uses_base), list(eager.states.uses_aligned))
        eager.states = eager.rows = eager.pending = None
        eager.rules, eager.members = None, ()
        self.runner, self.slots, self.step = runner, list(range(len(plan.rows))), 1
        self.taken += 1
        return True

    def _runner(self, rules: Any, states: Any, rows: int, columns: int) -> GraphRunner | None:
        pair = self.eager.pair
        models = {"base": pair.base, "aligned": pair.aligned, "joint": pair.aligned}
        layouts = {
            name: ModelLayout.of(
                models[name], state.cache.layers, static_length(models[name], columns)
            )
            for name, state in states.states.items()
        }
        runner = self._runner_of(rules, layouts, rows)
        if runner is not None:
            self.rules, self.layouts = rules, layouts
        return runner

    def _runner_of(self, rules: Any, layouts: dict[str, Any], rows: int) -> GraphRunner | None:
        """A ready runner of the bucket holding ``rows`` rows (``None``: being built, or its
        build failed; both logged)."""
        pair, options = self.eager.pair, self.options
        shapes = tuple((name, layout.length) for name, layout in layouts.items())
        bucket = batch_bucket(rows)
        assert bucket is not None
        key = _graph_key(rules, options, bucket, shapes)

        def build() -> GraphRunner:
            with self.build_work():
                runner = GraphRunner(
                    rules,
                    layouts,
                    bucket=bucket,
                    vocab_width=pair.vocab.size,
                    sync_every=options.graph_sync_every,
                    backend=options.graph_backend,
                    device=pair.device,
                    pool=self.graphs.pool(pair.device),
                )
                runner.prepare()
                return runner

        runner = self.graphs.get(key, build, wait=self.wait)
        if runner is None:
            reason = self.graphs.failure(key)
            if reason is not None:
                reason = f"its step failed to compile: {reason}"
            elif self.graphs.frozen:
                reason = "a shape outside the warmed set (BacoEngine.warmup)"
            else:
                reason = "its step is being compiled"
            self._fell_back(f"no graph runner for a {bucket}-row bucket: {reason}")
            return None
        self._key_of[id(runner)] = key
        return runner

    def _fell_back(self, reason: str) -> None:
        """Count a batch kept on the eager executor; log each kind of reason once."""
        kind = reason.split(":")[0].split(" (")[0]
        first = kind not in self.fallbacks
        self.fallbacks[kind] += 1
        log = logger.info if first else logger.debug
        log("baco: eager decode instead of the graph path: %s", reason)

    def _release(self) -> None:
        if self.runner is not None:
            self.graphs.release(self._key_of.pop(id(self.runner)), self.runner)
        self.runner, self.slots = None, []

    def _hand_back(self, keep: list[int]) -> None:
        """Copy the kept rows' static caches into dynamic ones for the eager executor."""
        runner, eager = self.runner, self.eager
        assert runner is not None
        slots = [self.slots[p] for p in keep]
        uses_base = [self.uses[0][p] for p in keep]
        uses_aligned = [self.uses[1][p] for p in keep]
        if not slots:
            self._release()
            return
        with self.compute():
            state = runner.state
            index = torch.tensor(slots, dtype=torch.long, device=state.rows.seeds.device)
            rows = state.rows.select(index)
            from .backends import LocalRows

            named = {}
            for name in ("base", "aligned", "joint"):
                buffers = getattr(state, name)
                if buffers is not None:
                    named[name] = _dynamic(buffers, index, eager.pair)
            eager.states = LocalRows(
                eager.pair,
                named.get("base"),
                named.get("aligned"),
                named.get("joint"),
                uses_base,
                uses_aligned,
                eager.vocab.space_id,
            )
            eager.rows = rows.select(torch.arange(len(slots), device=index.device))
            eager.pending = None
            eager.rules, eager.members = None, ()
        self._release()

    # ------------------------------------------------------------------ a chunk of steps

    def _chunk(self, plan: StepPlan) -> StepOutput:
        runner = self.runner
        assert runner is not None
        leaving = [self.slots[p] for p in range(len(self.slots)) if p not in set(plan.keep)]
        self.slots = [self.slots[p] for p in plan.keep]
        self.uses = ([self.uses[0][p] for p in plan.keep], [self.uses[1][p] for p in plan.keep])
        every = self.options.graph_sync_every
        if leaving:
            smaller = self._compact(runner)
            if smaller is runner:
                with self.compute():
                    runner.finish(leaving)
            runner = smaller
        with self.compute():
            runner.run(every)
            tokens, owners, base_broken, aligned_broken = runner.read(self.step, every)()
        self.step += every
        output = StepOutput(tokens=[], owners=[])
        for position, slot in enumerate(self.slots):
            output.tokens.append(tokens[slot])
            output.owners.append([bool(o) for o in owners[slot]])
            bad = [
                name
                for name, flags, used in (
                    ("base", base_broken, self.uses[0][position]),
                    ("aligned", aligned_broken, self.uses[1][position]),
                )
                if used and any(flags[slot])
            ]
            if bad:
                output.broken[position] = bad
        return output

    def _compact(self, runner: GraphRunner) -> GraphRunner:
        """Move the live rows to a ready runner of a smaller bucket, if they fit one."""
        bucket = batch_bucket(len(self.slots))
        if bucket is None or bucket >= runner.bucket or not self.slots:
            return runner
        smaller = self._runner_of(self.rules, self.layouts, len(self.slots))
        if smaller is None:
            return runner
        with self.compute():
            smaller.load_rows(runner, self.slots)
        live = len(self.slots)
        self._release()
        self.runner, self.slots = smaller, list(range(live))
        return smaller

    def warm(self, engine: Any, prompt: Any, params: Any, rows: int, length: int) -> None:
        """Build the runner of ``rows`` rows whose caches hold ``length`` columns by running
        the first steps of such a decode (waiting for the compile)."""
        longest = max(len(prompt.aligned_ids), len(prompt.base_ids))
        budget = max(3, min(length, engine.pair.context_window) - longest - 3)
        shape = params.with_overrides(n=rows, max_new_tokens=budget, stop=[])
        self.wait = True
        try:
            stream = engine._stream([prompt], shape, [0])
            for seen, _ in enumerate(stream):
                if self.runner is not None or seen > 3 * rows:
                    break
            stream.close()
        finally:
            self.wait = self.options.graph_wait


def _dynamic(buffers: Any, index: torch.Tensor, pair: Any) -> ModelRows:
    """The rows ``index`` of static buffers as a dynamic :class:`ModelRows` (both halves of
    a joint model's buffers: base views first, then aligned views)."""
    from transformers import DynamicCache

    from .forward import _unwrap

    rows = buffers.rows(index)
    columns = int(buffers.column[0])
    model = buffers.model
    config = _unwrap(model).config.get_text_config()
    cache = DynamicCache(config=config)
    for layer, static in zip(cache.layers, buffers.cache.layers, strict=True):
        keys = static.keys[rows, :, :columns].clone()
        values = static.values[rows, :, :columns].clone()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = columns
    adapters = None
    if buffers.halves == 2:
        count = index.shape[0]
        adapters = [NO_ADAPTER] * count + [model.active_adapter] * count
    return ModelRows(
        model,
        cache,
        buffers.mask[rows, :columns].clone(),
        buffers.position[rows].clone(),
        buffers.logits[rows].clone(),
        adapters,
    )
