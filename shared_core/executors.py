"""Executors: what runs a step of the scheduler's batch, behind one interface.

The scheduler (:mod:`shared_core.scheduler`) owns the requests and their row books; each
step it hands an executor a :class:`StepPlan` — which rows of the last batch stay, which
admitted requests join, the resulting rows in batch order, the grammar masks — and applies
the :class:`StepOutput` it gets back (tokens, owners, log-probabilities, failures). Three
executors are siblings: :class:`EagerExecutor` (this module: dynamic caches, one token per
row per step, local or remote token-mode pairs), the graph executor
(:mod:`shared_core.graph_executor`: static caches, compiled steps) and the chunk executor
(:mod:`shared_core.chunk_executor`: a remote pair's proposals and scores). All of them choose
tokens with :func:`shared_core.step.decode_step`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from .rows import Scores
from .step import RowSettings, RowState, StepResult, StepRules, decode_step, token_logprobs

if TYPE_CHECKING:
    from .scheduler import Request

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RowRef:
    """A batch row: a request and the row id in its row book (``prompt * n + sample``)."""

    request: Request
    row: int


@dataclass
class StepPlan:
    """One step of the batch. ``keep``: positions of the last step's rows that stay (the
    rest leave: finished, cancelled or failed); ``joins``: admitted requests whose rows are
    appended; ``rows``: the batch after both; ``allowed``: grammar masks ``[rows, V]``
    (``None``: no row is constrained); ``logprobs``: most alternatives any row asks for;
    ``waiting``: requests still waiting for room (an executor may then keep the batch
    where rows can join)."""

    keep: list[int]
    joins: list[Request]
    rows: list[RowRef]
    allowed: torch.Tensor | None = None
    logprobs: int | None = None
    waiting: int = 0


@dataclass
class StepOutput:
    """What a step decided, per batch position: ``tokens`` and ``owners`` (True: base), one
    or more each (graph and chunk executors decide several per step); ``scores`` per token
    when log-probabilities were asked; ``broken`` names of models whose distribution was NaN
    per position; ``failed`` requests (by ``id``) whose rows could not be decided."""

    tokens: list[list[int]]
    owners: list[list[bool]]
    scores: list[list[Scores | None]] | None = None
    broken: dict[int, list[str]] = field(default_factory=dict)
    failed: dict[int, BaseException] = field(default_factory=dict)


class Executor(Protocol):
    """The interface the scheduler drives."""

    def admit(self, requests: Sequence[Request]) -> dict[int, BaseException]:
        """Prefill the rows of ``requests`` (they join at the next :meth:`execute`); returns
        the requests (by ``id``) that failed, with their errors."""

    def execute(self, plan: StepPlan) -> StepOutput:
        """Apply the plan's leaves and joins, then decide the batch's next tokens."""

    def reset(self) -> None:
        """Drop every row (after a failure that leaves the batch state unknown)."""


def router_table(rows: Sequence[RowRef]) -> tuple[list[Any], list[int]]:
    """The distinct routers of ``rows`` and each row's index into them (host values)."""
    table: list[Any] = []
    keys: dict[Any, int] = {}
    index = []
    for ref in rows:
        spec = ref.request.params.spec
        key = (spec.name, spec.source if isinstance(spec.source, str) else id(spec.source))
        if key not in keys:
            keys[key] = len(table)
            table.append(spec)
        index.append(keys[key])
    return table, index


def batch_rules(
    rows: Sequence[RowRef], vocab: Any, pad_id: int, *, static_shapes: bool = False
) -> tuple[StepRules, list[int]]:
    """The step rules of a batch and each row's router index."""
    table, index = router_table(rows)
    settings = [ref.request.settings for ref in rows]
    rules = StepRules.for_rows(vocab, table, settings, pad_id, static_shapes=static_shapes)
    return rules, index


def new_rows(request: Request, pad_id: int, device: torch.device) -> RowState:
    """The :class:`RowState` of a request's rows at their first step."""
    n = request.params.n
    seeds = [s for s in request.seeds for _ in range(n)]
    samples = [i for _ in request.seeds for i in range(n)]
    settings: RowSettings = request.settings
    return RowState.build(seeds, samples, [settings] * len(seeds), pad_id, device)


def seam_input(
    vocab: Any, token: torch.Tensor, owner: torch.Tensor, first: torch.Tensor, seam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What the base model reads for ``token``: at a row's first step an aligned token is
    written after a space (``Assistant: Paris``), by its spaced form or a space slot
    (returned as the rows that need one)."""
    marked = first & ~owner & seam
    if not bool(marked.any()):
        return token, None
    spaced, needs_space = vocab.after_space(token)
    base_token = torch.where(marked, spaced, token)
    space = needs_space & marked
    if vocab.space_id is None or not bool(space.any()):
        return base_token, None
    return base_token, space


def scores_of(
    rules: StepRules,
    rows: RowState,
    logits: tuple[torch.Tensor | None, torch.Tensor | None],
    result: StepResult,
    top: int,
    allowed: torch.Tensor | None,
    wanted: Sequence[int | None],
) -> list[Scores | None]:
    """Per row, the chosen token's log-probability and its ``wanted[row]`` top alternatives
    (``None``: the row did not ask)."""
    chosen, best, ids = token_logprobs(rules, rows, *logits, result, top, allowed)
    out: list[Scores | None] = []
    for k, lp, i, b in zip(wanted, chosen.tolist(), ids.tolist(), best.tolist(), strict=True):
        out.append(None if k is None else (lp, list(zip(i[:k], b[:k], strict=True))))
    return out


class EagerExecutor:
    """Dynamic caches, one token per row per step: the default executor.

    Each step first feeds the previous step's tokens to the rows that stay (rows that left
    cost no forward), merges the joiners' prefilled states, then decides every row's token
    with one :func:`decode_step`. ``backend`` is the pair (its ``open_rows`` opens states).
    """

    def __init__(self, pair: Any, options: Any, compute: Any) -> None:
        self.pair = pair
        self.options = options
        self.compute = compute
        self.vocab = pair.vocab
        self.pad_id = self.vocab.end_ids[0] if self.vocab.end_ids else 0
        self.device = pair.device
        self.seam_space = bool(getattr(pair.base_template, "cue_space", False))
        self.states: Any = None
        self.rows: RowState | None = None
        self.pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        #: admitted requests' states until they join: (states of their admission group, their
        #: rows, their first row in that group, their row count)
        self.admitted: dict[int, tuple[Any, RowState, int, int]] = {}
        self.rules: StepRules | None = None
        self.members: tuple[int, ...] = ()
        self.forwards = 0
        self.lazy: Any = None  # the aligned model's LazyState in a lazy one-row batch

    def accepts_joins(self) -> bool:
        """Whether rows may join now: not while a lazy one-row batch runs, nor into caches
        whose layers cannot be padded and joined (then requests run one at a time)."""
        if self.lazy is not None:
            return False
        if self.states is None or not hasattr(self.states, "states"):
            return True
        from .backends import can_join

        return can_join(self.states)

    # ------------------------------------------------------------------ admission

    def admit(self, requests: Sequence[Request]) -> dict[int, BaseException]:
        failed: dict[int, BaseException] = {}
        if not requests:
            return failed
        try:
            with self.compute():
                self._open(list(requests))
        except Exception as exc:
            if len(requests) == 1:
                failed[requests[0].id] = exc
                return failed
            for request in requests:  # find the request that failed: each on its own
                try:
                    with self.compute():
                        self._open([request])
                except Exception as one:
                    failed[request.id] = one
        return failed

    def _lazy(self, requests: list[Request]) -> bool:
        """Whether ``requests`` run as a lazy one-row batch (``DecodeOptions.lazy_aligned``:
        one row, a built-in router reading only base signals, no log-probabilities)."""
        if not self.options.lazy_aligned or self.rows is not None or len(requests) != 1:
            return False
        request = requests[0]
        return (
            request.rows == 1
            and request.params.spec.reads_only_base
            and request.params.logprobs is None
        )

    def _open(self, requests: list[Request]) -> None:
        """Prefill ``requests`` together; their states are split per request on join."""
        lazy = self._lazy(requests)
        options = replace(self.options, joint_forward=False) if lazy else self.options
        states = self.pair.open_rows(
            [p for r in requests for p in r.prompts],
            [r.params.n for r in requests for _ in r.prompts],
            [r.params.spec.uses_base for r in requests for _ in r.prompts],
            [r.params.spec.uses_aligned for r in requests for _ in r.prompts],
            self.pad_id,
            options,
        )
        if lazy:
            from .model_state import LazyState

            states.aligned = self.lazy = LazyState(states.aligned)
        start = 0
        for request in requests:
            count = len(request.prompts) * request.params.n
            rows = new_rows(request, self.pad_id, self.device)
            self.admitted[request.id] = (states, rows, start, count)
            start += count

    # ------------------------------------------------------------------ the step

    def execute(self, plan: StepPlan) -> StepOutput:
        with self.compute():
            self._leave_and_feed(plan.keep)
            self._join(plan.joins)
            return self._decide(plan)

    def reset(self) -> None:
        self.states = self.rows = self.pending = self.rules = self.lazy = None
        self.members = ()
        self.admitted.clear()

    def _leave_and_feed(self, keep: list[int]) -> None:
        if self.rows is None:
            return
        if not keep:
            self.states = self.rows = self.pending = self.lazy = None
            return
        count = self.rows.seeds.shape[0]
        if len(keep) < count:
            index = torch.tensor(keep, dtype=torch.long, device=self.device)
            self.rows = self.rows.select(index)
            self.states.select(keep)
            if self.pending is not None:
                token, base_token, space = self.pending
                self.pending = (
                    token[index],
                    base_token[index],
                    None if space is None else space[index],
                )
        if self.pending is not None:
            token, base_token, space = self.pending
            self.states.feed(token, base_token, space)
            self.forwards += 1
            self.pending = None

    def _join(self, joins: list[Request]) -> None:
        groups: dict[int, list[tuple[Any, RowState, int, int]]] = {}
        for request in joins:
            entry = self.admitted.pop(request.id)
            groups.setdefault(id(entry[0]), []).append(entry)
        for entries in groups.values():
            states = entries[0][0]
            kept = [pos for _, _, start, count in entries for pos in range(start, start + count)]
            if len(kept) < len(states):
                states.select(kept)
            rows = entries[0][1]
            for _, more, _, _ in entries[1:]:
                rows = rows.cat(more)
            if self.rows is None:
                self.states, self.rows = states, rows
            else:
                self.states.merge(states)
                self.rows = self.rows.cat(rows)

    def _decide(self, plan: StepPlan) -> StepOutput:
        if self.rows is None:
            return StepOutput([], [])
        rows = self.rows
        members = tuple(id(ref.request) for ref in plan.rows)
        if members != self.members or self.rules is None:
            self.rules, index = batch_rules(plan.rows, self.vocab, self.pad_id)
            rows.router = torch.tensor(index, dtype=torch.long, device=self.device)
            self.members = members
        rules = self.rules
        uses = (
            torch.tensor(self.states.uses_base, device=self.device),
            torch.tensor(self.states.uses_aligned, device=self.device),
        )
        failed: dict[int, BaseException] = {}
        result = self._decide_lazily(rules, rows, plan.allowed)
        if result is not None:
            logits: tuple[Any, Any] = (self.states.base.logits, None)
        else:
            logits = self.states.logits()
            drawable = self.states.drawable()
            try:
                result = decode_step(
                    rules, rows, *logits, allowed=plan.allowed, drawable=drawable, uses=uses
                )
            except Exception:
                result, failed = self._decide_apart(plan, rules, rows, logits, drawable, uses)
        scores = None
        if plan.logprobs is not None:
            wanted = [ref.request.params.logprobs for ref in plan.rows]
            scores = scores_of(rules, rows, logits, result, plan.logprobs, plan.allowed, wanted)
        seam = uses[0] & uses[1] if self.seam_space else torch.zeros_like(uses[0])
        base_token, space = seam_input(self.vocab, result.token, result.owner, rows.step == 0, seam)
        self.pending = (result.token, base_token, space)
        rows.advance(result)
        flags = [
            (name, f.tolist())
            for name, f in (("base", result.base_broken), ("aligned", result.aligned_broken))
            if f is not None
        ]
        host = torch.stack([result.token, result.owner.long()]).tolist()
        broken: dict[int, list[str]] = {}
        for name, values in flags:
            for position, flag in enumerate(values):
                if flag:
                    broken.setdefault(position, []).append(name)
        return StepOutput(
            tokens=[[t] for t in host[0]],
            owners=[[bool(o)] for o in host[1]],
            scores=None if scores is None else [[s] for s in scores],
            broken=broken,
            failed=failed,
        )

    def _decide_lazily(
        self, rules: StepRules, rows: RowState, allowed: torch.Tensor | None
    ) -> StepResult | None:
        """In a lazy one-row batch, the step without the aligned model while the base model
        owns the text and the router keeps it there (the aligned candidate cannot change the
        token then, except through the ``aligned_can_stop`` guard, which is skipped on those
        steps: the trade-off of this mode); ``None`` when the aligned model is needed."""
        if self.lazy is None or not bool(rows.owner[0]) or int(rows.step[0]) == 0:
            return None
        from .step import clean_logits, route_rows

        base_logits = self.states.base.logits
        cleaned = clean_logits(rules, rows, base_logits, allowed)
        probs = torch.softmax(cleaned, -1)
        if not bool(route_rows(rules, rows, cleaned, None, probs, None)[0]):
            return None
        result = decode_step(rules, rows, base_logits, None, allowed=allowed)
        result.aligned_broken = torch.zeros_like(result.base_broken)
        return result

    def _decide_apart(
        self,
        plan: StepPlan,
        rules: StepRules,
        rows: RowState,
        logits: tuple[torch.Tensor | None, torch.Tensor | None],
        drawable: tuple[torch.Tensor | None, torch.Tensor | None],
        uses: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[StepResult, dict[int, BaseException]]:
        """A step that raised (e.g. a custom router's error): each request's rows decided on
        their own, so only the request at fault fails (its rows then take the pad token)."""
        token = torch.full_like(rows.prev_token, self.pad_id)
        owner = torch.zeros_like(rows.owner)
        failed: dict[int, BaseException] = {}
        by_request: dict[int, list[int]] = {}
        for position, ref in enumerate(plan.rows):
            by_request.setdefault(ref.request.id, []).append(position)
        for request_id, positions in by_request.items():
            index = torch.tensor(positions, dtype=torch.long, device=self.device)
            part = rows.select(index)
            refs = [plan.rows[p] for p in positions]
            part_rules, part_index = batch_rules(refs, self.vocab, self.pad_id)
            part.router = torch.tensor(part_index, dtype=torch.long, device=self.device)
            try:
                one = decode_step(
                    part_rules,
                    part,
                    *(None if t is None else t[index] for t in logits),
                    allowed=None if plan.allowed is None else plan.allowed[index],
                    drawable=tuple(None if t is None else t[index] for t in drawable),  # type: ignore[arg-type]
                    uses=(uses[0][index], uses[1][index]),
                )
            except Exception as exc:
                failed[request_id] = exc
                continue
            token[index], owner[index] = one.token, one.owner
        return StepResult(token, owner, None, None), failed
