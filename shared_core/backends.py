"""The pair backend protocol: what a pair can do and how it holds the running rows' states.

A backend is a local :class:`~shared_core.pair.ModelPair` (both models in this process) or a
:class:`~shared_core.remote.RemotePair` (each model behind a completion server). Executors
(:mod:`shared_core.executors`) never ask which one they have: they read
:class:`Capabilities` and work through a backend's :class:`RowStates` — open rows for new
requests (prefill), read each model's next-token logits, feed the chosen tokens, let rows
leave and join.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .decode_options import PreparedPrompt
from .forward import NO_ADAPTER, supports_row_adapters
from .model_state import ModelRows, mergeable


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do.

    ``grammars``: token masks from a grammar every step; ``logprobs_limit``: the most
    alternatives a row may ask for (``None``: no limit); ``top_k_limit``: distributions are
    top-k only (the step samples with at most this top-k); ``graphs``: the compiled graph
    executor can run it; ``joins``: rows may join a running batch (its caches can be merged);
    ``executor``: ``"eager"`` or ``"chunk"``.
    """

    grammars: bool = True
    logprobs_limit: int | None = None
    top_k_limit: int | None = None
    graphs: bool = True
    joins: bool = True
    executor: str = "eager"


@dataclass(frozen=True)
class OpenRows:
    """What a backend needs to open rows: per prompt its ids, its number of samples and which
    models its router runs."""

    prompts: Sequence[PreparedPrompt]
    repeats: Sequence[int]
    uses_base: Sequence[bool]
    uses_aligned: Sequence[bool]

    def per_row(self, flags: Sequence[bool]) -> list[bool]:
        """Per-prompt ``flags`` repeated for each prompt's samples (one per row)."""
        return [f for f, r in zip(flags, self.repeats, strict=True) for _ in range(r)]


class RowStates(Protocol):
    """The running rows' model states on one backend, in batch order."""

    def __len__(self) -> int: ...

    def logits(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Each model's next-token logits ``[rows, V]`` (``None``: no row runs it)."""

    def drawable(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Per model, ``[rows, V]`` tokens a candidate may be drawn from (``None``: all)."""

    def feed(
        self, tokens: torch.Tensor, base_tokens: torch.Tensor, space: torch.Tensor | None
    ) -> None:
        """Append the chosen tokens (``base_tokens``: what the base model reads; ``space``:
        rows whose base model reads a space first) and compute the next logits."""

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows at positions ``keep`` (the others leave)."""

    def merge(self, other: Any) -> None:
        """Append ``other``'s rows (opened by the same backend)."""


def used_rows(flags: Sequence[bool]) -> list[int]:
    """Positions of the rows (or prompts) whose flag is set: a model's rows in batch order."""
    return [i for i, used in enumerate(flags) if used]


def kept_positions(flags: Sequence[bool], keep: Sequence[int]) -> list[int]:
    """Where the kept batch rows ``keep`` sit among a model's rows (those with ``flags``)."""
    position = {row: i for i, row in enumerate(used_rows(flags))}
    return [position[r] for r in keep if r in position]


def spread(part: torch.Tensor, flags: Sequence[bool], fill: float | bool = 0.0) -> torch.Tensor:
    """A model's ``[its rows, V]`` tensor as ``[batch rows, V]``: its rows where ``flags`` are
    set, ``fill`` elsewhere (those rows' routers never read this model; 0 logits are a flat
    distribution)."""
    if all(flags):
        return part
    full = part.new_full((len(flags), part.shape[1]), fill)
    full[torch.tensor(used_rows(flags), device=part.device)] = part
    return full


class LocalRows:
    """Both models' rows on a local pair: a :class:`ModelRows` per model, or for a
    one-weights pair with the joint forward one ``ModelRows`` whose first part holds the base
    views (adapter off) and the rest the aligned views of the rows."""

    def __init__(
        self,
        pair: Any,
        base: ModelRows | None,
        aligned: ModelRows | None,
        joint: ModelRows | None,
        uses_base: list[bool],
        uses_aligned: list[bool],
        space_id: int | None,
    ) -> None:
        self.pair = pair
        self.base, self.aligned, self.joint = base, aligned, joint
        self.uses_base, self.uses_aligned = uses_base, uses_aligned
        self.space_id = space_id

    @classmethod
    def open(
        cls, pair: Any, rows: OpenRows, pad_id: int, *, joint: bool, share_prefill: bool
    ) -> LocalRows:
        uses_base, uses_aligned = rows.per_row(rows.uses_base), rows.per_row(rows.uses_aligned)
        prompts, repeats = rows.prompts, rows.repeats
        b = used_rows(rows.uses_base)
        a = used_rows(rows.uses_aligned)
        space_id = pair.vocab.space_id
        if joint and b and a:
            name = pair.aligned.active_adapter
            state = ModelRows.prefill(
                pair.aligned,
                [prompts[i].base_ids for i in b] + [prompts[i].aligned_ids for i in a],
                [repeats[i] for i in b] + [repeats[i] for i in a],
                pad_id,
                adapters=[NO_ADAPTER] * len(b) + [name] * len(a),
                share_prefill=share_prefill,
            )
            return cls(pair, None, None, state, uses_base, uses_aligned, space_id)

        def one(model: Any, index: list[int], ids: str) -> ModelRows | None:
            if not index:
                return None
            return ModelRows.prefill(
                model,
                [getattr(prompts[i], ids) for i in index],
                [repeats[i] for i in index],
                pad_id,
                share_prefill=share_prefill,
            )

        base = one(pair.base, b, "base_ids")
        aligned = one(pair.aligned, a, "aligned_ids")
        return cls(pair, base, aligned, None, uses_base, uses_aligned, space_id)

    def __len__(self) -> int:
        return len(self.uses_base)

    @property
    def states(self) -> dict[str, ModelRows]:
        """The model states by name (``base``/``aligned``, or ``joint``)."""
        named = (("base", self.base), ("aligned", self.aligned), ("joint", self.joint))
        return {name: state for name, state in named if state is not None}

    @property
    def _base_count(self) -> int:
        return sum(self.uses_base)

    def logits(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.joint is not None:
            split = self._base_count
            base, aligned = self.joint.logits[:split], self.joint.logits[split:]
            base = base if split else None
            aligned = aligned if split < len(self.joint) else None
        else:
            base = None if self.base is None else self.base.logits
            aligned = None if self.aligned is None else self.aligned.logits
        return (
            None if base is None else spread(base, self.uses_base),
            None if aligned is None else spread(aligned, self.uses_aligned),
        )

    def drawable(self) -> tuple[None, None]:
        return None, None

    def _parts(self, values: torch.Tensor, flags: list[bool]) -> torch.Tensor:
        if all(flags):
            return values
        return values[torch.tensor(used_rows(flags), device=values.device, dtype=torch.long)]

    def feed(
        self, tokens: torch.Tensor, base_tokens: torch.Tensor, space: torch.Tensor | None
    ) -> None:
        base_space = None
        if space is not None and self.space_id is not None:
            base_space = self._parts(space, self.uses_base)
        if self.joint is not None:
            base_part = self._parts(base_tokens, self.uses_base)
            aligned_part = self._parts(tokens, self.uses_aligned)
            joint_space = None
            if base_space is not None:
                joint_space = (
                    self.space_id,
                    torch.cat([base_space, torch.zeros_like(aligned_part, dtype=torch.bool)]),
                )
            self.joint.feed(torch.cat([base_part, aligned_part]), joint_space)
            return
        if self.base is not None:
            self.base.feed(
                self._parts(base_tokens, self.uses_base),
                None if base_space is None else (self.space_id, base_space),
            )
        if self.aligned is not None:
            self.aligned.feed(self._parts(tokens, self.uses_aligned))

    def select(self, keep: Sequence[int]) -> None:
        keep = list(keep)
        base_keep = kept_positions(self.uses_base, keep)
        aligned_keep = kept_positions(self.uses_aligned, keep)
        split = self._base_count  # before the flags shrink to the kept rows
        self.uses_base = [self.uses_base[r] for r in keep]
        self.uses_aligned = [self.uses_aligned[r] for r in keep]
        if self.joint is not None:
            self.joint.select(
                torch.tensor(
                    base_keep + [split + i for i in aligned_keep],
                    dtype=torch.long,
                    device=self.joint.mask.device,
                )
            )
            return
        for name, kept in (("base", base_keep), ("aligned", aligned_keep)):
            state = getattr(self, name)
            if state is None:
                continue
            if not kept:
                setattr(self, name, None)
            elif len(kept) < len(state):
                state.select(torch.tensor(kept, dtype=torch.long, device=state.mask.device))

    def to_joint(self) -> None:
        """Turn one-view rows of a one-weights pair into the joint form (the base view's
        cache is the shared model's with the adapter off), so they can join joint rows."""
        if self.joint is not None:
            return
        peft_model = self.pair.aligned
        parts = []
        if self.base is not None:
            self.base.model, self.base.adapters = peft_model, [NO_ADAPTER] * len(self.base)
            parts.append(self.base)
        if self.aligned is not None:
            name = peft_model.active_adapter
            self.aligned.adapters = [name] * len(self.aligned)
            parts.append(self.aligned)
        joint = parts[0]
        for part in parts[1:]:
            joint.merge(part)
        self.base = self.aligned = None
        self.joint = joint

    def merge(self, other: LocalRows) -> None:
        if self.joint is not None or other.joint is not None:
            self.to_joint()
            other.to_joint()
            assert self.joint is not None and other.joint is not None
            mine_b, theirs_b = self._base_count, other._base_count
            mine_total, theirs_total = len(self.joint), len(other.joint)
            self.joint.merge(other.joint)
            # rows are [my base, my aligned, their base, their aligned]: put views together
            order = (
                list(range(mine_b))
                + [mine_total + i for i in range(theirs_b)]
                + list(range(mine_b, mine_total))
                + [mine_total + i for i in range(theirs_b, theirs_total)]
            )
            self.joint.select(torch.tensor(order, dtype=torch.long, device=self.joint.mask.device))
        else:
            for name in ("base", "aligned"):
                mine, theirs = getattr(self, name), getattr(other, name)
                if theirs is None:
                    continue
                if mine is None:
                    setattr(self, name, theirs)
                else:
                    mine.merge(theirs)
        self.uses_base = self.uses_base + other.uses_base
        self.uses_aligned = self.uses_aligned + other.uses_aligned


def can_join(rows: LocalRows) -> bool:
    """Whether other rows can join ``rows`` (their caches are plain dynamic caches)."""
    return all(mergeable(state.cache) for state in rows.states.values())


def joint_forward(pair: Any, enabled: bool) -> bool:
    """Whether a local pair runs both views of its one set of weights as one batch."""
    return (
        enabled
        and getattr(pair, "shares_weights", False)
        and supports_row_adapters(getattr(pair, "aligned", None))
    )
