"""One BACO decode step, as a function of tensors: every executor calls it.

Given both models' next-token logits for every row, :func:`decode_step` masks the tokens that
must not be generated, computes the router signals, routes, draws a candidate from each
model, applies the guards and returns the chosen token and its owner per row. Every setting
is a per-row tensor of :class:`RowState` (temperature, top-k/top-p/min-p, router, γ, guards,
``min_new_tokens``, the row's own step), so rows of different requests share one step.
:class:`StepRules` says only which transforms *some* row needs (so a batch without top-k
never runs one) and which routers the batch holds. With ``StepRules.static_shapes`` the step
has fixed shapes and no host synchronisation, so it can be compiled with ``fullgraph=True``
and captured as a CUDA graph (:mod:`shared_core.graph`). Chunk mode over two servers passes
the token a server proposed (``proposed``), which then stands for the owner's own draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from .routers import RouterSpec, apply_guards, compute_signals
from .sampling import (
    ALIGNED_DRAW,
    BASE_DRAW,
    ROUTER_DRAW,
    row_streams,
    row_uniforms,
    sample_tokens,
    sampling_probs,
)
from .vocab import VocabTables

#: The smallest top-k width a compiled step reads (top-k values come from a ``topk`` of this
#: width or more, a power of two, so nearby values share a graph).
MIN_TOP_K_BUCKET = 64


def top_k_bucket(top_k: int, vocab: int) -> int:
    """The ``topk`` width a compiled step reads a ``top_k`` from: a power of two (at least
    :data:`MIN_TOP_K_BUCKET`) capped at the vocabulary; 0 when top-k is off or keeps the
    whole vocabulary."""
    if top_k <= 0 or top_k >= vocab:
        return 0
    return min(vocab, max(MIN_TOP_K_BUCKET, 1 << (top_k - 1).bit_length()))


@dataclass(frozen=True)
class RowSettings:
    """One row's decoding settings as host values (from its request's ``GenerationParams``).

    ``router`` is an index into the batch's :attr:`StepRules.routers`.
    """

    router: int = 0
    gamma: float = 0.0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    min_new_tokens: int = 0
    content_aligned: bool = False
    aligned_starts: bool = True
    aligned_can_stop: bool = True

    @classmethod
    def of(cls, params, router: int = 0) -> RowSettings:
        """The settings of a :class:`~shared_core.params.GenerationParams`."""
        spec = params.spec
        return cls(
            router=router,
            gamma=spec.gamma or 0.0,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            min_new_tokens=params.min_new_tokens,
            content_aligned=spec.content_source == "aligned",
            aligned_starts=params.aligned_starts,
            aligned_can_stop=params.aligned_can_stop,
        )


@dataclass(frozen=True)
class StepRules:
    """What a step computes for a batch: the vocabulary tables, the batch's routers (rows
    point into this tuple) and which transforms some row needs. Rows at a transform's
    neutral value (temperature 1, ``top_k`` 0, ``min_p`` 0) come out of it unchanged, so a
    row draws the same tokens whatever else shares its batch.

    ``greedy`` / ``sampled``: some row has temperature 0 / above 0; ``top_k``: the width of
    the ``topk`` read (0: no row uses top-k); ``nucleus`` / ``full``: some row samples with
    ``top_p < 1`` / with the whole distribution.
    """

    vocab: VocabTables
    routers: tuple[RouterSpec, ...]
    pad_id: int = 0
    temperature: bool = False
    greedy: bool = False
    sampled: bool = True
    top_k: int = 0
    nucleus: bool = False
    full: bool = True
    min_p: bool = False
    min_new_tokens: bool = False
    static_shapes: bool = False

    @classmethod
    def for_rows(
        cls,
        vocab: VocabTables,
        routers: Sequence[RouterSpec],
        settings: Sequence[RowSettings],
        pad_id: int = 0,
        *,
        static_shapes: bool = False,
    ) -> StepRules:
        """The rules of a batch of rows with ``settings``; with ``static_shapes`` (compiled
        steps) the top-k width is bucketed and both top-p paths are kept."""
        top_k = max((s.top_k for s in settings if 0 < s.top_k < vocab.size), default=0)
        return cls(
            vocab=vocab,
            routers=tuple(routers),
            pad_id=pad_id,
            temperature=any(s.temperature not in (0.0, 1.0) for s in settings),
            greedy=any(s.temperature == 0.0 for s in settings),
            sampled=static_shapes or any(s.temperature > 0.0 for s in settings),
            top_k=top_k_bucket(top_k, vocab.size) if static_shapes else top_k,
            nucleus=any(s.top_p < 1.0 for s in settings),
            full=static_shapes or any(s.top_p >= 1.0 for s in settings),
            min_p=any(s.min_p > 0.0 for s in settings),
            min_new_tokens=any(s.min_new_tokens > 0 for s in settings),
            static_shapes=static_shapes,
        )

    def router_table(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per router of the batch: whether it runs the base / the aligned model."""
        uses_base = torch.tensor([r.uses_base for r in self.routers], device=device)
        uses_aligned = torch.tensor([r.uses_aligned for r in self.routers], device=device)
        return uses_base, uses_aligned

    @property
    def single_router(self) -> RouterSpec | None:
        return self.routers[0] if len(self.routers) == 1 else None

    @property
    def uses_base(self) -> bool:
        return any(r.uses_base for r in self.routers)

    @property
    def uses_aligned(self) -> bool:
        return any(r.uses_aligned for r in self.routers)


_FLOAT = ("temperature", "top_p", "min_p")


@dataclass
class RowState:
    """Per-row tensors (``[rows]`` each): what a step reads and carries to the next.

    ``step`` is the row's own decode step (tokens decided so far): rows that joined the
    batch at different times sit at different steps.
    """

    seeds: torch.Tensor
    sample_index: torch.Tensor
    owner: torch.Tensor  # True: the last token came from the base model
    prev_token: torch.Tensor
    finished: torch.Tensor
    step: torch.Tensor
    router: torch.Tensor
    gamma: torch.Tensor  # float64: γ compares as the Python number would
    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    min_new_tokens: torch.Tensor
    content_aligned: torch.Tensor
    aligned_starts: torch.Tensor
    aligned_can_stop: torch.Tensor

    @classmethod
    def build(
        cls,
        seeds: Sequence[int],
        sample_index: Sequence[int],
        settings: Sequence[RowSettings],
        pad_id: int,
        device: torch.device | str = "cpu",
    ) -> RowState:
        """Rows at their first step, one per entry of ``settings``."""

        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)

        count = len(settings)
        long = torch.long
        return cls(
            seeds=torch.tensor(list(seeds), dtype=long, device=device),
            sample_index=torch.tensor(list(sample_index), dtype=long, device=device),
            owner=torch.zeros(count, dtype=torch.bool, device=device),
            prev_token=torch.full((count,), pad_id, dtype=long, device=device),
            finished=torch.zeros(count, dtype=torch.bool, device=device),
            step=torch.zeros(count, dtype=long, device=device),
            router=column("router", long),
            gamma=column("gamma", torch.float64),
            temperature=column("temperature", torch.float32),
            top_k=column("top_k", long),
            top_p=column("top_p", torch.float32),
            min_p=column("min_p", torch.float32),
            min_new_tokens=column("min_new_tokens", long),
            content_aligned=column("content_aligned", torch.bool),
            aligned_starts=column("aligned_starts", torch.bool),
            aligned_can_stop=column("aligned_can_stop", torch.bool),
        )

    @classmethod
    def start(
        cls,
        seeds: torch.Tensor,
        sample_index: torch.Tensor,
        pad_id: int,
        settings: RowSettings | None = None,
    ) -> RowState:
        """Rows of one setting (default: :class:`RowSettings`) at their first step."""
        count = seeds.shape[0]
        return cls.build(
            seeds.tolist(),
            sample_index.tolist(),
            [settings or RowSettings()] * count,
            pad_id,
            seeds.device,
        )

    @classmethod
    def zeros(cls, rows: int, device: torch.device | str) -> RowState:
        """Fixed-address buffers for ``rows`` rows (graph runners)."""
        settings = [RowSettings()] * rows
        state = cls.build([0] * rows, [0] * rows, settings, 0, device)
        state.finished.fill_(True)
        return state

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def select(self, index: torch.Tensor) -> RowState:
        """The rows at ``index`` (finished rows leave the batch)."""
        return RowState(*(t[index] for t in self.tensors()))

    def cat(self, other: RowState) -> RowState:
        """These rows followed by ``other``'s (rows joining the batch)."""
        pairs = zip(self.tensors(), other.tensors(), strict=True)
        return RowState(*(torch.cat([a, b]) for a, b in pairs))

    def advance(self, result: StepResult) -> None:
        """Carry a step's choice to the next step."""
        self.owner = result.owner
        self.prev_token = result.token
        self.step = self.step + 1


@dataclass
class StepResult:
    """What a step chose. ``*_broken`` flag rows whose distribution was NaN (None: that
    model was not run); ``proposal_kept`` (chunk mode) flags rows whose proposed token the
    rules allowed."""

    token: torch.Tensor
    owner: torch.Tensor
    base_broken: torch.Tensor | None
    aligned_broken: torch.Tensor | None
    proposal_kept: torch.Tensor | None = None


def decode_step(
    rules: StepRules,
    rows: RowState,
    base_logits: torch.Tensor | None,
    aligned_logits: torch.Tensor | None,
    *,
    allowed: torch.Tensor | None = None,
    drawable: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    proposed: tuple[torch.Tensor, torch.Tensor] | None = None,
    uses: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StepResult:
    """Choose every row's next token from both models' logits ``[rows, ≥ vocab]``.

    ``allowed`` (``[rows, vocab]`` bool, e.g. a grammar's mask) restricts both models alike.
    ``drawable`` (base, aligned; ``[rows, vocab]`` bool or None) limits what each model's
    candidate is drawn from without changing the router's signals (a remote model's logits
    hold its top-k and a spread tail: the tail counts for the signals, never for a draw).
    ``proposed`` = ``(tokens, by_base)``: a token per row that the owner's server sampled
    (chunk mode); it stands for that model's candidate where the rules allow it (else the
    candidate is drawn here, and ``proposal_kept`` is False). ``uses`` = (base, aligned)
    ``[rows]`` bool: which rows run each model (default: from the rows' routers); a row's
    logits of a model it does not run are ignored. Finished rows get ``rules.pad_id``.
    Updates nothing in place.
    """
    if uses is None:
        table_base, table_aligned = rules.router_table(rows.router.device)
        uses = (table_base[rows.router], table_aligned[rows.router])
    base = clean_logits(rules, rows, base_logits, allowed)
    aligned = clean_logits(rules, rows, aligned_logits, allowed)
    base_draw, aligned_draw = (
        logits if mask is None or logits is None else logits.masked_fill(~mask, float("-inf"))
        for logits, mask in ((base, drawable[0]), (aligned, drawable[1]))
    )
    base_probs = None if base is None else torch.softmax(base, -1)
    aligned_probs = None if aligned is None else torch.softmax(aligned, -1)
    base_token = aligned_token = None
    if base is not None:
        base_token = draw_candidate(rules, rows, base_draw, base_probs, BASE_DRAW)
    if aligned is not None:
        aligned_token = draw_candidate(rules, rows, aligned_draw, aligned_probs, ALIGNED_DRAW)
    base_token = aligned_token if base_token is None else base_token
    aligned_token = base_token if aligned_token is None else aligned_token
    assert base_token is not None and aligned_token is not None, "no model's logits given"
    kept = None
    if proposed is not None:
        tokens, by_base = proposed
        if base is None or aligned is None:
            mine = base if aligned is None else aligned
        else:
            mine = torch.where(by_base.unsqueeze(-1), base, aligned)
        assert mine is not None
        inside = tokens < rules.vocab.size
        score = mine.gather(1, tokens.clamp(max=mine.shape[1] - 1).unsqueeze(-1)).squeeze(-1)
        kept = inside & torch.isfinite(score)
        base_token = torch.where(by_base & kept, tokens, base_token)
        aligned_token = torch.where(~by_base & kept, tokens, aligned_token)
    base_rows, aligned_rows = uses
    if base is None or aligned is None:
        owner = torch.full_like(rows.owner, base is not None)
    else:
        route = route_rows(rules, rows, base, aligned, base_probs, aligned_probs)
        guarded, _ = apply_guards(
            route,
            rows.owner,
            base_token,
            aligned_token,
            rows.prev_token,
            rules.vocab,
            first_step=rows.step == 0,
            aligned_starts=rows.aligned_starts,
            aligned_can_stop=rows.aligned_can_stop,
        )
        # single-model rows (the base / aligned baselines) take their model's draw, unguarded
        owner = torch.where(base_rows & aligned_rows, guarded, base_rows)
    token = torch.where(owner, base_token, aligned_token)
    return StepResult(
        token=torch.where(rows.finished, rules.pad_id, token),
        owner=owner,
        base_broken=broken_rows(base_probs, base_rows),
        aligned_broken=broken_rows(aligned_probs, aligned_rows),
        proposal_kept=kept,
    )


def clean_logits(
    rules: StepRules, rows: RowState, logits: torch.Tensor | None, allowed: torch.Tensor | None
) -> torch.Tensor | None:
    """Slice to the tokenizer's vocabulary (padded output layers) and mask banned tokens:
    never-generated ids, end tokens before a row's ``min_new_tokens``, and what ``allowed``
    excludes. The router's signals read this constrained distribution (docs/design.md)."""
    if logits is None:
        return None
    vocab = rules.vocab
    banned = vocab.never_generate.unsqueeze(0)
    if rules.min_new_tokens:
        early = (rows.step < rows.min_new_tokens).unsqueeze(-1)
        banned = banned | (vocab.is_end.unsqueeze(0) & early)
    if allowed is not None:
        banned = banned | ~allowed
    return logits[:, : vocab.size].float().masked_fill(banned, float("-inf"))


def broken_rows(probs: torch.Tensor | None, used: torch.Tensor) -> torch.Tensor | None:
    """Rows that run this model and whose distribution is NaN (a NaN anywhere in the logits
    spreads to the row)."""
    return None if probs is None else probs[:, 0].isnan() & used


def route_rows(
    rules: StepRules,
    rows: RowState,
    base: torch.Tensor | None,
    aligned: torch.Tensor | None,
    base_probs: torch.Tensor | None,
    aligned_probs: torch.Tensor | None,
) -> torch.Tensor:
    """Each row's router decision (True = base): one call per router of the batch (not per
    row), each row reading its own router's answer, with its own γ."""
    signals = compute_signals(
        base_probs,
        aligned_probs,
        base,
        aligned,
        rules.vocab,
        content_source=rows.content_aligned,
        uniform=row_uniforms(rows.seeds, rows.sample_index, rows.step, ROUTER_DRAW),
        step=rows.step,
    )
    count = rows.seeds.shape[0]
    route = torch.zeros(count, dtype=torch.bool, device=rows.seeds.device)
    for index, spec in enumerate(rules.routers):
        decision = spec.decide_rows(signals, rows.gamma)
        if not isinstance(decision, torch.Tensor) or decision.shape != (count,):
            raise TypeError(
                f"router {spec.name!r} must return a bool tensor of shape [{count}], "
                f"got {getattr(decision, 'shape', type(decision).__name__)}"
            )
        if len(rules.routers) == 1:
            return decision.to(torch.bool)
        route = torch.where(rows.router == index, decision.to(torch.bool), route)
    return route


def draw_candidate(
    rules: StepRules,
    rows: RowState,
    logits: torch.Tensor,
    raw_probs: torch.Tensor,
    purpose: int,
) -> torch.Tensor:
    """One model's candidate token per row, from the row's own random stream (greedy rows:
    the most likely token)."""
    greedy = logits.argmax(-1) if rules.greedy else None
    if greedy is not None and not rules.sampled:
        return greedy
    temperature = None
    if rules.temperature or rules.greedy:
        temperature = torch.where(rows.temperature > 0, rows.temperature, 1.0).unsqueeze(-1)
    probs = sampling_probs(
        logits,
        temperature=temperature,
        top_k=rows.top_k if rules.top_k else None,
        top_k_width=rules.top_k,
        min_p=rows.min_p.unsqueeze(-1) if rules.min_p else None,
        raw_probs=raw_probs,
    )
    streams = row_streams(rows.seeds, rows.sample_index, rows.step, purpose)
    token = sample_tokens(
        probs,
        streams,
        top_p=rows.top_p.unsqueeze(-1) if rules.nucleus else None,
        full=rules.full,
        static_shapes=rules.static_shapes,
    )
    return token if greedy is None else torch.where(rows.temperature == 0, greedy, token)


def token_logprobs(
    rules: StepRules,
    rows: RowState,
    base_logits: torch.Tensor | None,
    aligned_logits: torch.Tensor | None,
    result: StepResult,
    top: int,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's chosen-token log-probability under the model that produced it (its
    distribution after the row's temperature, before top-k/top-p/min-p truncation;
    temperature 1 for greedy rows) and that model's ``top`` most likely tokens: ``([rows],
    [rows, top] log-probabilities, [rows, top] ids)``. Masked tokens (never generated,
    grammar) count as impossible, as they were for the draw."""
    base = clean_logits(rules, rows, base_logits, allowed)
    aligned = clean_logits(rules, rows, aligned_logits, allowed)
    if base is None or aligned is None:
        logits = base if aligned is None else aligned
    else:
        logits = torch.where(result.owner.unsqueeze(-1), base, aligned)
    assert logits is not None
    temperature = torch.where(rows.temperature > 0, rows.temperature, 1.0).unsqueeze(-1)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    chosen = logprobs.gather(1, result.token.clamp(max=logits.shape[1] - 1).unsqueeze(-1))
    best, ids = logprobs.topk(min(top, logprobs.shape[1]), dim=-1)
    return chosen.squeeze(-1), best, ids
