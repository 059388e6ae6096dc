"""The lockstep dual-model decoding loop (BACO).

Each prompt is prefilled once per model; the KV caches are repeated for the ``n`` samples;
several prompts share one left-padded batch. Every step runs one forward per model with one
new token per row, computes the router signals, samples a candidate from each model, applies
the guards and appends the chosen token to both contexts.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .batching import RequestQueue
from .forward import NO_ADAPTER, forward_last_logits, supports_row_adapters
from .graph import (
    GraphCache,
    GraphRunner,
    ModelSource,
    batch_bucket,
    graph_fallback_reason,
    static_length,
)
from .memory import check_fits
from .pair import ModelPair
from .params import GenerationParams
from .prompts import Prompt, aligned_prompt_ids, base_prompt_ids, normalise_messages
from .routers import RouterSpec, apply_guards
from .sampling import ALIGNED_DRAW, BASE_DRAW, prompt_seeds
from .step import (
    RowState,
    StepResult,
    StepRules,
    broken_rows,
    clean_logits,
    decode_step,
    draw_candidate,
    route_rows,
)
from .streaming import ResponseText
from .structured import ConstraintError, RowMatchers
from .types import Generation, StreamEvent, Usage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeOptions:
    """Engine-level switches that change speed, never outputs (benchmarked in benchmarks/).

    ``share_prefill``: prefill each prompt once and repeat its KV cache for the ``n`` samples.
    ``compact_finished``: drop finished rows from the batch (and the caches) as they finish.
    ``joint_forward``: for a one-weights (base + LoRA) pair, run both views as one batch with
    the adapter switched per row, reading the shared weights once per step.
    ``batch_requests``: merge concurrent ``generate`` calls with the same settings into one
    batched decode of at most ``max_batch_rows`` rows (see :mod:`shared_core.batching`).
    ``lazy_aligned`` (opt-in; changes outputs): in a batch-1 decode (one prompt, ``n=1``)
    with a built-in router that reads only base signals, run the aligned model only when its
    distribution can matter, catching it up on the skipped tokens in one chunk. The
    ``aligned_can_stop`` guard is then not checked while the base model owns the text, so
    the aligned model cannot end the response in the middle of a base span; with
    ``aligned_can_stop=False`` the outputs are those of the eager decode.
    ``graph``: decode on the device with static KV caches and one compiled step, replayed as
    a CUDA graph on a GPU (:mod:`shared_core.graph`); ``None`` (default) turns it on for
    CUDA pairs only. A one-weights pair's joint forward runs there as a fixed row split
    (:mod:`shared_core.lora_split`). Requests it cannot hold (custom router callables, grammar
    constraints, LoRA variants other than plain LoRA on linear layers, lazy mode, a
    sliding-window model's decode longer than its window) take the eager loop, with the
    reason in a debug log.
    ``graph_sync_every``: steps between host reads of the chosen tokens (stream events arrive
    in chunks of this many tokens). ``graph_backend``: the ``torch.compile`` backend
    (``"eager"`` runs the static-cache step uncompiled).
    """

    share_prefill: bool = True
    compact_finished: bool = True
    joint_forward: bool = True
    batch_requests: bool = True
    max_batch_rows: int = 64
    lazy_aligned: bool = False
    graph: bool | None = None
    graph_sync_every: int = 8
    graph_backend: str = "inductor"


@dataclass(frozen=True)
class PreparedPrompt:
    """A validated prompt with both models' token ids."""

    messages: list[dict[str, str]]
    aligned_ids: list[int]
    base_ids: list[int]


def _seed(params: GenerationParams) -> int:
    """The request's seed, or a fresh random one."""
    return params.seed if params.seed is not None else secrets.randbits(63)


def _constraint_failure(samples: list[Generation], index: int) -> ConstraintError | None:
    """The error of a prompt with a constrained sample that could not continue, if any."""
    failed = [g for g in samples if g.finish_reason == "error"]
    if not failed:
        return None
    first = failed[0]
    error = ConstraintError(
        f"prompt {index}, sample {first.sample_index}: constrained decoding failed: "
        f"{first.error} ({len(failed)} of {len(samples)} samples failed)"
    )
    error.generations = samples  # type: ignore[attr-defined]
    return error


def is_single_prompt(prompts: Any) -> bool:
    """True for one prompt (a string or a message list), False for a list of prompts."""
    if isinstance(prompts, str):
        return True
    return (
        isinstance(prompts, Sequence)
        and len(prompts) > 0
        and all(hasattr(m, "keys") for m in prompts)
    )


class BacoEngine:
    """Batched BACO decoding over a :class:`ModelPair`.

    One engine may be shared by threads and coroutines. Concurrent ``generate`` calls with the
    same settings are merged into one batched decode (:class:`~shared_core.batching.
    RequestQueue`); other decodes and streams interleave step by step, since each step's model
    work runs under a lock and a stream holds nothing between events (an abandoned stream
    blocks no one). Each decode batches all samples of all its prompts. ``autocast_dtype``
    (e.g. ``torch.bfloat16``) runs the forwards under autocast, which is faster on CPUs with
    bf16 units but changes numerics.
    """

    def __init__(
        self,
        pair: ModelPair,
        defaults: GenerationParams | None = None,
        *,
        autocast_dtype: torch.dtype | None = None,
        options: DecodeOptions | None = None,
    ) -> None:
        self.pair = pair
        self.defaults = defaults or GenerationParams()
        self.autocast_dtype = autocast_dtype
        self.options = options or DecodeOptions()
        self._lock = threading.Lock()
        self._graphs = GraphCache()
        self._queue = (
            RequestQueue(self._run_batch, max_rows=self.options.max_batch_rows)
            if self.options.batch_requests
            else None
        )

    @property
    def tokenizer(self) -> Any:
        return self.pair.tokenizer

    def params(self, **options: Any) -> GenerationParams:
        """The engine defaults with per-call ``options`` applied and validated."""
        return self.defaults.with_overrides(**options)

    def prepare(
        self, prompt: Prompt, index: int = 0, *, params: GenerationParams
    ) -> PreparedPrompt:
        """Validate and tokenize one prompt for both models (no model work)."""
        messages = normalise_messages(prompt, index=index)
        aligned_ids = aligned_prompt_ids(self.pair.tokenizer, prompt, messages)
        base_ids = base_prompt_ids(self.pair.base_tokenizer, messages, self.pair.base_template)
        window = self.pair.context_window
        longest = max(
            len(aligned_ids) if params.spec.uses_aligned else 0,
            len(base_ids) if params.spec.uses_base else 0,
        )
        if longest >= window:
            raise ValueError(
                f"prompt {index} is {longest} tokens long but the model context window is "
                f"{window} tokens; shorten the prompt"
            )
        return PreparedPrompt(messages=messages, aligned_ids=aligned_ids, base_ids=base_ids)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` in the pair's tokenizer (no special tokens)."""
        return len(self.pair.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        *,
        return_exceptions: bool = False,
        **options: Any,
    ) -> list[list[Generation]]:
        """Generate ``n`` samples for each prompt; returns one list of samples per prompt.

        ``prompts`` is one prompt (a string or a list of ``{"role", "content"}`` messages) or
        a list of prompts, decoded together in one batch. ``options`` are
        :class:`GenerationParams` fields. Everything is validated before any model work: a bad
        prompt raises an error naming its index, or, with ``return_exceptions=True``, takes the
        exception's place in the result while the other prompts are still generated.
        """
        params, prepared, failures = self._prepare_all(prompts, options, return_exceptions)
        results: list[list[Generation]] = []
        if prepared:
            batch = [p for _, p in prepared]
            if self._queue is not None:
                results = self._queue.submit(batch, params)
            else:
                results = self._run_batch(batch, params, prompt_seeds(_seed(params), batch))
        out: list[Any] = [None] * (len(prepared) + len(failures))
        for (index, _), row in zip(prepared, results, strict=True):
            out[index] = row
        for index, error in failures.items():
            out[index] = error
        for index, row in enumerate(out):
            failed = None if isinstance(row, Exception) else _constraint_failure(row, index)
            if failed is not None:
                if not return_exceptions:
                    raise failed
                out[index] = failed
        return out

    def _run_batch(
        self, prompts: Sequence[PreparedPrompt], params: GenerationParams, seeds: Sequence[int]
    ) -> list[list[Generation]]:
        """Decode ``prompts`` (one seed each, see :func:`prompt_seeds`) in one batch; ``n``
        samples per prompt."""
        prompts = list(prompts)
        self._check_memory(prompts, params)
        results: list[list[Generation | None]] = [[None] * params.n for _ in prompts]
        for event in self._decode(prompts, params, seeds):
            if event.generation is not None:
                results[event.prompt_index][event.sample_index] = event.generation
        return [[g for g in row if g is not None] for row in results]

    def stream(self, prompts: Prompt | Sequence[Prompt], **options: Any) -> Iterator[StreamEvent]:
        """Stream the samples of one prompt (or of several, batched) as :class:`StreamEvent` s.

        Validation happens eagerly, when ``stream`` is called. Closing the iterator early
        (``break``, ``close()``) stops the decode and releases the engine.
        """
        params, prepared, _ = self._prepare_all(prompts, options, False)
        batch = [p for _, p in prepared]
        self._check_memory(batch, params)
        return self._decode(batch, params, prompt_seeds(_seed(params), batch))

    def _prepare_all(
        self, prompts: Prompt | Sequence[Prompt], options: dict[str, Any], keep_going: bool
    ) -> tuple[GenerationParams, list[tuple[int, PreparedPrompt]], dict[int, Exception]]:
        """Validate options and every prompt; collect per-prompt errors when ``keep_going``."""
        batch = [prompts] if is_single_prompt(prompts) else list(prompts)  # type: ignore[list-item]
        if not batch:
            raise ValueError("no prompts given")
        params = self.params(**options)
        prepared: list[tuple[int, PreparedPrompt]] = []
        failures: dict[int, Exception] = {}
        for index, prompt in enumerate(batch):
            try:
                prepared.append((index, self.prepare(prompt, index, params=params)))
            except (ValueError, TypeError) as exc:
                if not keep_going:
                    raise
                failures[index] = exc
        return params, prepared, failures

    def _check_memory(self, prompts: list[PreparedPrompt], params: GenerationParams) -> None:
        """Refuse, with advice, a batch whose KV caches and logits cannot fit in free memory."""
        spec = params.spec
        models = [
            m
            for m, used in (
                (self.pair.base, spec.uses_base),
                (self.pair.aligned, spec.uses_aligned),
            )
            if used
        ]
        longest = max(max(len(p.aligned_ids), len(p.base_ids)) for p in prompts)
        check_fits(
            models,
            len(prompts) * params.n,
            longest + params.max_new_tokens,
            self.pair.vocab_size,
            self.pair.device,
        )

    # ------------------------------------------------------------------ decoding loop

    def _decode(
        self, prompts: list[PreparedPrompt], params: GenerationParams, seeds: Sequence[int]
    ) -> Iterator[StreamEvent]:
        return _Decode(
            self.pair, prompts, params, seeds, self.options, self._compute, self._graphs
        ).run()

    @contextmanager
    def _compute(self) -> Iterator[None]:
        """Model work of one step: under the engine lock, inference mode and autocast.

        The lock is held per step, never across a ``yield``: an abandoned or slow stream never
        blocks other calls, and concurrent decodes interleave step by step. (It also keeps the
        two views of a one-weights pair from toggling the adapter under each other.)
        """
        autocast = (
            nullcontext()
            if self.autocast_dtype is None
            else torch.autocast(self.pair.device.type, dtype=self.autocast_dtype)
        )
        with self._lock, torch.inference_mode(), autocast:
            yield


class _ModelState:
    """One model's KV cache, attention mask and positions for the rows still decoding."""

    def __init__(
        self,
        model,
        prompt_ids: list[list[int]],
        n: int,
        pad_id: int,
        budget: int,
        *,
        share_prefill: bool = True,
        adapters: list[str] | None = None,
    ):
        if not share_prefill:  # the naive way: prefill every sample's copy of the prompt
            prompt_ids = [ids for ids in prompt_ids for _ in range(n)]
            adapters = None if adapters is None else [a for a in adapters for _ in range(n)]
            n = 1
        device = next(model.parameters()).device
        self.model = model
        self.adapters = adapters
        width = max(len(ids) for ids in prompt_ids)
        batch = len(prompt_ids)
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
        # One spare column: the optional space slot fed before the first response token.
        mask = torch.zeros((batch, width + budget + 1), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) : width] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask[:, :width].cumsum(-1) - 1).clamp_(min=0)
        logits, self.cache = forward_last_logits(
            model, input_ids, mask[:, :width], positions, None, adapter_names=adapters
        )
        self.width = width
        self.shift = 0  # 1 once a space slot was fed at the first step
        self.next_position = mask[:, :width].sum(-1)
        if n > 1:
            if self.adapters is not None:
                self.adapters = [a for a in self.adapters for _ in range(n)]
            self.cache.batch_repeat_interleave(n)
            logits = logits.repeat_interleave(n, dim=0)
            mask = mask.repeat_interleave(n, dim=0)
            self.next_position = self.next_position.repeat_interleave(n)
        self.mask = mask
        self.logits = logits

    def step(
        self, tokens: torch.Tensor, step: int, space: tuple[int, torch.Tensor] | None = None
    ) -> None:
        """Append ``tokens`` (one per row) at decode step ``step`` and compute next logits.

        ``space`` = ``(space_id, rows)`` (first step only) feeds ``space_id`` before the token
        on the marked rows, in a slot that the other rows leave masked out.
        """
        if space is None:
            self.extend(tokens.unsqueeze(-1), step)
            return
        space_id, rows = space
        start = self.width
        self.mask[:, start] = rows.long()
        self.mask[:, start + 1] = 1
        positions = torch.stack([self.next_position, self.next_position + rows.long()], -1)
        inputs = torch.stack([torch.full_like(tokens, space_id), tokens], -1)
        self.logits, self.cache = forward_last_logits(
            self.model,
            inputs,
            self.mask[:, : start + 2],
            positions,
            self.cache,
            adapter_names=self.adapters,
        )
        self.next_position = self.next_position + rows.long()
        self.shift = 1

    def extend(self, tokens: torch.Tensor, first_step: int) -> None:
        """Append ``tokens`` ``[rows, k]`` generated at steps ``first_step …`` in one forward."""
        begin = self.width + self.shift + first_step
        end = begin + tokens.shape[1]
        self.mask[:, begin:end] = 1
        steps = torch.arange(first_step, first_step + tokens.shape[1], device=self.mask.device)
        positions = self.next_position.unsqueeze(-1) + steps
        self.logits, self.cache = forward_last_logits(
            self.model,
            tokens,
            self.mask[:, :end],
            positions,
            self.cache,
            adapter_names=self.adapters,
        )

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows at indices ``keep`` (finished rows leave the batch)."""
        if self.adapters is not None:
            self.adapters = [self.adapters[i] for i in keep.tolist()]
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        self.next_position = self.next_position[keep]
        self.logits = self.logits[keep]


class _LazyState:
    """A model fed only when its logits are read: tokens queue up and go in as one chunk.

    Used for the aligned model of a batch-1 decode with a router that reads only base
    signals: while the base model owns the text and the router keeps choosing it, the aligned
    model's next-token distribution is not needed.
    """

    def __init__(self, state: _ModelState):
        self.state = state
        self.pending: list[torch.Tensor] = []
        self.first_pending = 0
        self.forwards = 0

    def step(self, tokens: torch.Tensor, step: int) -> None:
        """Queue ``tokens`` of step ``step``; they are fed when the logits are next read."""
        if not self.pending:
            self.first_pending = step
        self.pending.append(tokens)

    @property
    def logits(self) -> torch.Tensor:
        if self.pending:
            self.state.extend(torch.stack(self.pending, dim=-1), self.first_pending)
            self.pending.clear()
            self.forwards += 1
        return self.state.logits

    @property
    def mask(self) -> torch.Tensor:
        return self.state.mask

    def select(self, keep: torch.Tensor) -> None:
        self.logits  # noqa: B018  (catch up before rows are dropped)
        self.state.select(keep)


class _JointState:
    """Both views of a one-weights pair decoded as one batch with a LoRA adapter per row.

    The first half of the rows is the base view (adapter off), the second half the aligned
    view, so each step reads the shared weights once instead of once per view.
    """

    def __init__(
        self,
        peft_model,
        base_ids: list[list[int]],
        aligned_ids: list[list[int]],
        n: int,
        pad_id: int,
        budget: int,
        *,
        share_prefill: bool = True,
    ):
        adapter = peft_model.active_adapter
        adapters = [NO_ADAPTER] * len(base_ids) + [adapter] * len(aligned_ids)
        self.state = _ModelState(
            peft_model,
            base_ids + aligned_ids,
            n,
            pad_id,
            budget,
            share_prefill=share_prefill,
            adapters=adapters,
        )
        self.base = _JointHalf(self, 0)
        self.aligned = _JointHalf(self, 1)

    @property
    def half(self) -> int:
        return self.state.logits.shape[0] // 2

    def step(
        self,
        tokens: torch.Tensor,
        step: int,
        base_tokens: torch.Tensor | None = None,
        space: tuple[int, torch.Tensor] | None = None,
    ) -> None:
        """Feed ``tokens`` to both views (``base_tokens`` to the base rows when given)."""
        base_tokens = tokens if base_tokens is None else base_tokens
        if space is not None:
            space_id, rows = space
            space = (space_id, torch.cat([rows, torch.zeros_like(rows)]))
        self.state.step(torch.cat([base_tokens, tokens]), step, space)

    def select(self, keep: torch.Tensor) -> None:
        self.state.select(torch.cat([keep, keep + self.half]))


class _JointHalf:
    """The logits of one view of a :class:`_JointState`."""

    def __init__(self, joint: _JointState, part: int):
        self.joint = joint
        self.part = part

    @property
    def logits(self) -> torch.Tensor:
        half = self.joint.half
        return self.joint.state.logits[half * self.part : half * (self.part + 1)]


@dataclass
class _Row:
    """Host-side progress of one sample."""

    text: ResponseText
    budget: int
    tokens: list[int]
    sources: list[str]
    completion: int = 0
    finished: bool = False


class _Decode:
    """State of one batched decode; :meth:`run` yields stream events."""

    def __init__(
        self,
        pair: ModelPair,
        prompts: list[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        options: DecodeOptions,
        compute: Callable[[], AbstractContextManager[None]],
        graphs: GraphCache | None = None,
    ):
        self.compute = compute
        self.graphs = graphs
        self.pair = pair
        self.prompts = prompts
        self.params = params
        self.options = options
        self.spec: RouterSpec = params.spec
        self.n = params.n
        self.rows = len(prompts) * params.n
        self.vocab = pair.vocab
        self.device = pair.device
        self.seeds = torch.tensor(list(seeds), dtype=torch.long, device=self.device)
        self.seeds = self.seeds.repeat_interleave(self.n)
        self.sample_index = torch.arange(self.n, device=self.device).repeat(len(prompts))
        stops = params.stop
        if self.spec.uses_base:
            stops = stops + tuple(s for s in pair.base_template.stop_strings if s not in stops)
        self.stops = stops
        self.constraint = params.constraint
        self.matchers: RowMatchers | None = None
        # The base prompt ends ``Assistant:``; an aligned first token reads after a space.
        self.seam = self.spec.uses_base and self.spec.uses_aligned and pair.base_template.cue_space
        self.lazy = options.lazy_aligned and self.rows == 1 and self.spec.reads_only_base
        self.joint = (
            options.joint_forward
            and not self.lazy
            and pair.shares_weights
            and self.spec.uses_base
            and self.spec.uses_aligned
            and supports_row_adapters(pair.aligned)
        )

    def _budget(self, prompt: PreparedPrompt) -> int:
        room = self.pair.context_window - max(
            len(prompt.aligned_ids) if self.spec.uses_aligned else 0,
            len(prompt.base_ids) if self.spec.uses_base else 0,
        )
        return min(self.params.max_new_tokens, room)

    def run(self) -> Iterator[StreamEvent]:
        n, vocab = self.n, self.vocab
        constraint = self.constraint
        stops = () if constraint is not None and constraint.whole_response else self.stops
        protect = None if constraint is None else constraint.protected
        rows = [
            _Row(
                ResponseText(self.pair.tokenizer, stops, protect=protect),
                self._budget(p),
                [],
                [],
            )
            for p in self.prompts
            for _ in range(n)
        ]
        if constraint is not None:
            self.matchers = RowMatchers(
                constraint,
                self.pair.tokenizer,
                vocab.end_ids,
                self.rows,
                vocab.never_generate,
                vocab.is_end,
            )
        max_budget = max(row.budget for row in rows)
        pad_id = vocab.end_ids[0] if vocab.end_ids else 0
        share = self.options.share_prefill
        base = aligned = None
        base_ids = [p.base_ids for p in self.prompts]
        aligned_ids = [p.aligned_ids for p in self.prompts]
        with self.compute():
            if self.joint:
                joint = _JointState(
                    self.pair.aligned,
                    base_ids,
                    aligned_ids,
                    n,
                    pad_id,
                    max_budget,
                    share_prefill=share,
                )
                base, aligned, models = joint.base, joint.aligned, [joint]
            else:
                if self.spec.uses_base:
                    base = _ModelState(
                        self.pair.base, base_ids, n, pad_id, max_budget, share_prefill=share
                    )
                if self.spec.uses_aligned:
                    aligned = _ModelState(
                        self.pair.aligned, aligned_ids, n, pad_id, max_budget, share_prefill=share
                    )
                    if self.lazy:
                        aligned = _LazyState(aligned)
                models = [m for m in (base, aligned) if m is not None]

        active = list(range(self.rows))  # batch position -> row id
        rules = StepRules.from_params(self.params, vocab, pad_id)
        state = RowState.start(self.seeds, self.sample_index, pad_id)

        for step in range(max_budget):
            allowed = None
            if self.matchers is not None:  # host work, outside the engine lock
                allowed = self.matchers.allowed(
                    active, self.device, ban_ends=step < self.params.min_new_tokens
                )
            with self.compute():
                if self.lazy:
                    result = self._step_lazy(rules, state, base, aligned, step, allowed)
                else:
                    result = decode_step(
                        rules,
                        state,
                        None if base is None else base.logits,
                        None if aligned is None else aligned.logits,
                        step,
                        first_step=step == 0,
                        allowed=allowed,
                    )
                state.owner, state.prev_token = result.owner, result.token
                broken = [
                    flags.long()
                    for flags in (result.base_broken, result.aligned_broken)
                    if flags is not None
                ]
                host = torch.stack([result.token, result.owner.long(), *broken]).tolist()
            self._check_finite(host[2:], [rows[r].finished for r in active])
            events = [
                self._advance(row_id, rows[row_id], host[0][position], bool(host[1][position]))
                for position, row_id in enumerate(active)
                if not rows[row_id].finished
            ]
            yield from events
            keep = [i for i, r in enumerate(active) if not rows[r].finished]
            if not keep:
                return
            with self.compute():
                if len(keep) < len(active):
                    if self.options.compact_finished:
                        index = torch.tensor(keep, device=self.device)
                        for model_state in models:
                            model_state.select(index)
                        state = state.select(index)
                        active = [active[i] for i in keep]
                    state.finished = torch.tensor(
                        [rows[r].finished for r in active], dtype=torch.bool, device=self.device
                    )
                token = state.prev_token
                base_token, space = self._base_input(token, state.owner, step)
                if self.joint:
                    joint.step(token, step, base_token, space)
                else:
                    if base is not None:
                        base.step(base_token, step, space)
                    if aligned is not None:
                        aligned.step(token, step)
            if step == 0 and max_budget > 1:
                states = (
                    {"joint": joint.state} if self.joint else {"base": base, "aligned": aligned}
                )
                states = {name: m for name, m in states.items() if m is not None}
                columns = max(m.mask.shape[1] for m in states.values())
                if self._use_graph(len(active), columns):
                    ran = yield from self._run_graph(rules, state, rows, active, states, max_budget)
                    if ran:
                        return

    def _use_graph(self, live_rows: int, columns: int) -> bool:
        """Whether the rest of this decode runs on the graph path (reason logged if not)."""
        wanted = self.options.graph
        if wanted is None:
            wanted = self.device.type == "cuda"
        if not wanted or self.graphs is None:
            return False
        reason = graph_fallback_reason(
            self.pair,
            self.params,
            rows=live_rows,
            joint=self.joint,
            lazy=self.lazy,
            constrained=self.constraint is not None,
            columns=columns,
        )
        if reason is not None:
            logger.debug("baco: eager decode instead of the graph path: %s", reason)
        return reason is None

    def _run_graph(
        self,
        rules: StepRules,
        state: RowState,
        rows: list[_Row],
        active: list[int],
        model_states: dict[str, _ModelState],
        max_budget: int,
    ) -> Generator[StreamEvent, None, bool]:
        """Steps 1 … of a decode on the graph path: chunks of ``graph_sync_every`` steps run
        on the device while the host turns the previous chunk into events; when the live
        rows fit a smaller batch bucket, they move to it. ``model_states``: the eager states
        after step 0 by name (``base``/``aligned``, or ``joint`` for a one-weights pair).

        Returns False, having yielded nothing and left ``model_states`` as they were, when
        the step cannot be compiled or captured for this shape: the eager loop goes on."""
        models = {"base": self.pair.base, "aligned": self.pair.aligned, "joint": self.pair.aligned}
        sources = {
            name: ModelSource(
                models[name], m.cache.layers, static_length(models[name], m.mask.shape[1])
            )
            for name, m in model_states.items()
        }
        shapes = tuple((name, source.length) for name, source in sources.items())
        width = next(iter(model_states.values())).logits.shape[1]
        held: list[tuple[Any, GraphRunner]] = []

        def ready_runner(live: int, load: Callable[[GraphRunner], None]) -> GraphRunner | None:
            """A prepared runner for ``live`` rows, filled by ``load``; ``None`` (logged) when
            this shape's step fails to compile or capture, now or in an earlier decode."""
            bucket = batch_bucket(live)
            key = self._graph_key(rules, bucket, shapes)
            failure = self.graphs.failure(key)
            if failure is not None:
                logger.debug("baco: eager decode instead of the graph path: %s", failure)
                return None
            runner = self.graphs.acquire(key) or GraphRunner(
                rules,
                sources,
                bucket=bucket,
                vocab_width=width,
                sync_every=self.options.graph_sync_every,
                backend=self.options.graph_backend,
                device=self.device,
            )
            try:
                load(runner)
                runner.prepare()
            except Exception as error:  # any compiler or capture failure
                reason = self.graphs.record_failure(key, error)
                logger.warning(
                    "baco: the graph path could not compile or capture this decode's step "
                    "(%s); the eager loop runs it and later decodes of this shape",
                    reason,
                )
                return None
            held.append((key, runner))
            return runner

        budget = torch.tensor([rows[r].budget for r in active], device=self.device)
        try:
            with self.compute():
                runner = ready_runner(
                    len(active), lambda r: r.load(rules, state, budget, 1, model_states)
                )
                if runner is None:
                    return False
                for model_state in model_states.values():  # the static caches hold it all now
                    model_state.cache = model_state.logits = None
            step, pending = 1, None
            while pending is not None or step < max_budget:
                launched = None
                if step < max_budget:
                    count = min(self.options.graph_sync_every, max_budget - step)
                    with self.compute():
                        runner.run(count)
                        launched = (count, runner.read(step, count))
                    step += count
                if pending is not None:
                    yield from self._graph_events(pending, rows, active)
                    live = [p for p, r in enumerate(active) if not rows[r].finished]
                    if not live:
                        return True
                    smaller = None
                    if self.options.compact_finished and batch_bucket(len(live)) < runner.bucket:
                        if launched is not None:  # drain: the device state is then final
                            yield from self._graph_events(launched, rows, active)
                            launched = None
                            live = [p for p, r in enumerate(active) if not rows[r].finished]
                            if not live:
                                return True
                        with self.compute():
                            smaller = ready_runner(
                                len(live), lambda r, big=runner, live=live: r.load_rows(big, live)
                            )
                    if smaller is not None:
                        runner, active = smaller, [active[p] for p in live]
                    else:  # no compaction (off, same bucket, or the smaller one failed)
                        with self.compute():
                            runner.finish([p for p, r in enumerate(active) if rows[r].finished])
                pending = launched
            return True
        finally:
            for key, held_runner in held:
                self.graphs.release(key, held_runner)

    def _graph_key(self, rules: StepRules, bucket: int | None, shapes: tuple) -> tuple:
        """What a compiled graph depends on: the rules' structure (not the knobs' values,
        which are graph inputs) and shapes."""
        options = self.options
        return (
            rules.structure(),
            options.graph_backend,
            options.graph_sync_every,
            (bucket, shapes),
        )

    def _graph_events(
        self, chunk: tuple[int, Callable[[], Any]], rows: list[_Row], active: list[int]
    ) -> Iterator[StreamEvent]:
        """Stream events of one chunk of graph steps read back from the device."""
        count, wait = chunk
        tokens, owners, base_broken, aligned_broken = wait()
        broken = [
            flags
            for flags, used in (
                (base_broken, self.spec.uses_base),
                (aligned_broken, self.spec.uses_aligned),
            )
            if used
        ]
        for j in range(count):
            self._check_finite(
                [[f[j] for f in flags] for flags in broken], [rows[r].finished for r in active]
            )
            for position, row_id in enumerate(active):
                row = rows[row_id]
                if not row.finished:
                    token, owner = tokens[position][j], bool(owners[position][j])
                    yield self._advance(row_id, row, token, owner)

    def _base_input(
        self, token: torch.Tensor, owner: torch.Tensor, step: int
    ) -> tuple[torch.Tensor, tuple[int, torch.Tensor] | None]:
        """What the base model reads for ``token``: at the first step an aligned token is
        written after a space (``Assistant: Paris``), by its spaced form or a space slot."""
        if not self.seam or step != 0:
            return token, None
        spaced, needs_space = self.vocab.after_space(token)
        from_aligned = ~owner
        base_token = torch.where(from_aligned, spaced, token)
        rows = needs_space & from_aligned
        if self.vocab.space_id is None or not bool(rows.any()):
            return base_token, None
        return base_token, (self.vocab.space_id, rows)

    def _advance(self, row_id: int, row: _Row, token_id: int, from_base: bool) -> StreamEvent:
        """Record one generated token of a row and return its stream event."""
        matchers = self.matchers
        if matchers is not None and matchers.error(row_id) is not None:
            # The grammar allowed no token at this step: the token is not used.
            return self._finish(row_id, row, "error", "", None, None)
        row.completion += 1
        reason = None
        delta = ""
        ended = token_id in self.vocab.end_ids
        if ended:
            reason = "stop"
        else:
            row.tokens.append(token_id)
            row.sources.append("base" if from_base else "aligned")
            delta = row.text.push(token_id)
            complete = matchers is not None and matchers.advance(row_id, token_id)
            if matchers is not None and matchers.error(row_id) is not None:
                reason = "error"
            elif row.text.stopped or complete:
                reason = "stop"
            elif len(row.tokens) >= row.budget:
                reason = "length"
        if reason is None:
            return self._event(row_id, delta, token_id, from_base)
        if ended:
            return self._finish(row_id, row, reason, delta, None, None)
        return self._finish(row_id, row, reason, delta, token_id, from_base)

    def _finish(
        self,
        row_id: int,
        row: _Row,
        reason: str,
        delta: str,
        token_id: int | None,
        from_base: bool | None,
    ) -> StreamEvent:
        """End a row: flush its text and return its final event."""
        row.finished = True
        if self.matchers is not None:
            self.matchers.done.add(row_id)
        delta += row.text.finish()
        error = self.matchers.error(row_id) if self.matchers is not None else None
        generation = self._generation(row_id, row, reason, error)
        return self._event(row_id, delta, token_id, from_base, generation)

    def _check_finite(self, broken: list[list[int]], finished: list[bool]) -> None:
        """Raise if a model's distribution became NaN for a row still generating."""
        names = [
            name
            for name, used in (
                (self.pair.base_name, self.spec.uses_base),
                (self.pair.aligned_name, self.spec.uses_aligned),
            )
            if used
        ]
        for name, flags in zip(names, broken, strict=True):
            rows = [r for r, bad in enumerate(flags) if bad and not finished[r]]
            if rows:
                raise FloatingPointError(
                    f"model {name!r} produced NaN/inf logits (rows {rows[:8]}); check its "
                    "weights and dtype (float16 overflow is a common cause; try bfloat16)"
                )

    def _step_lazy(
        self,
        rules: StepRules,
        state: RowState,
        base: _ModelState,
        aligned: _LazyState,
        step: int,
        allowed: torch.Tensor | None,
    ) -> StepResult:
        """:func:`decode_step` for a batch-1 decode that reads the aligned model only when
        needed. When the base model owns the text and the router keeps it there, the aligned
        candidate cannot change the token, except through the ``aligned_can_stop`` guard,
        which is skipped on those steps (the trade-off of this mode)."""
        base_logits = clean_logits(rules, base.logits, step, allowed)
        base_probs = torch.softmax(base_logits, -1)
        route = route_rows(rules, state, base_logits, None, base_probs, None, step)
        base_token = draw_candidate(rules, state, base_logits, base_probs, step, BASE_DRAW)
        base_broken = broken_rows(base_probs)
        if step > 0 and bool(state.owner[0]) and bool(route[0]):
            token = torch.where(state.finished, rules.pad_id, base_token)
            return StepResult(token, state.owner, base_broken, torch.zeros_like(base_broken))
        aligned_logits = clean_logits(rules, aligned.logits, step, allowed)
        aligned_probs = torch.softmax(aligned_logits, -1)
        aligned_token = draw_candidate(
            rules, state, aligned_logits, aligned_probs, step, ALIGNED_DRAW
        )
        owner, token = apply_guards(
            route,
            state.owner,
            base_token,
            aligned_token,
            state.prev_token,
            self.vocab,
            first_step=step == 0,
            aligned_starts=rules.aligned_starts,
            aligned_can_stop=rules.aligned_can_stop,
        )
        token = torch.where(state.finished, rules.pad_id, token)
        return StepResult(token, owner, base_broken, broken_rows(aligned_probs))

    def _event(self, row, delta, token_id, from_base, generation=None) -> StreamEvent:
        source = None if from_base is None else ("base" if from_base else "aligned")
        return StreamEvent(
            row=row,
            text_delta=delta,
            token_id=token_id,
            source=source,
            prompt_index=row // self.n,
            sample_index=row % self.n,
            generation=generation,
        )

    def _generation(
        self, row_id: int, row: _Row, reason: str, error: str | None = None
    ) -> Generation:
        prompt = self.prompts[row_id // self.n]
        prompt_tokens = len(prompt.aligned_ids if self.spec.uses_aligned else prompt.base_ids)
        return Generation(
            text=row.text.text,
            token_ids=list(row.tokens),
            sources=list(row.sources),
            finish_reason=reason,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=row.completion),
            router=self.spec.name,
            gamma=self.spec.gamma,
            prompt_index=row_id // self.n,
            sample_index=row_id % self.n,
            error=error,
        )
