"""Each model's decode state on the eager executor: KV cache, attention mask, positions, logits.

:class:`ModelRows` holds one model's cache over a set of rows (left-padded, explicit
``attention_mask`` and per-row positions). Rows join (:meth:`ModelRows.merge`: the shorter
cache is left-padded to the longer one's columns, masked out) and leave
(:meth:`ModelRows.select`) at any step, and columns no row attends to any more are dropped
(:meth:`ModelRows.trim`), so requests of any length share one batch. :class:`PairRows` holds
both models' rows of a batch (or both views of a one-weights pair in one ``ModelRows``, with
a LoRA adapter switched per row). :meth:`ModelRows.hand_over` gives a state to the graph
path, which copies it into static caches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .forward import NO_ADAPTER, forward_last_logits

#: transformers cache layers whose tensors :class:`ModelRows` can pad, join and trim.
_MERGEABLE = {"DynamicLayer", "DynamicSlidingWindowLayer"}


@dataclass
class Handover:
    """One model's eager state, for the graph path to copy (the state keeps nothing)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, h, c, d]
    columns: int  # cache columns filled
    mask: torch.Tensor  # [rows, ≥ columns]
    next_position: torch.Tensor  # [rows] position of the next token fed
    logits: torch.Tensor  # [rows, V] next-token logits


def mergeable(cache) -> bool:
    """Whether rows of ``cache`` can join and leave another batch (plain dynamic layers)."""
    return all(type(layer).__name__ in _MERGEABLE for layer in cache.layers)


def _pad_left(tensor: torch.Tensor, columns: int, dim: int) -> torch.Tensor:
    missing = columns - tensor.shape[dim]
    if missing <= 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _stored(layer, columns: int) -> int:
    """Columns a layer keeps for a sequence of ``columns`` (a sliding layer: its window)."""
    window = getattr(layer, "sliding_window", None)
    return columns if window is None else min(columns, window - 1)


class ModelRows:
    """One model's KV cache, attention mask and positions over a set of rows.

    ``adapters`` (one per row: a LoRA adapter name or :data:`NO_ADAPTER`) runs a PEFT model
    as a mixed-adapter batch (a one-weights pair's two views in one forward).
    """

    def __init__(
        self,
        model,
        cache,
        mask: torch.Tensor,
        next_position: torch.Tensor,
        logits: torch.Tensor,
        adapters: list[str] | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.mask = mask
        self.next_position = next_position
        self.logits = logits
        self.adapters = adapters

    @classmethod
    def prefill(
        cls,
        model,
        prompt_ids: Sequence[Sequence[int]],
        repeats: Sequence[int],
        pad_id: int,
        *,
        adapters: Sequence[str] | None = None,
        share_prefill: bool = True,
    ) -> ModelRows:
        """Prefill each prompt once and repeat its cache ``repeats[i]`` times (the samples of
        that prompt); without ``share_prefill`` each copy is prefilled on its own."""
        prompt_ids = [list(ids) for ids in prompt_ids]
        repeats = list(repeats)
        adapter_list = None if adapters is None else list(adapters)
        if not share_prefill:
            prompt_ids = [ids for ids, r in zip(prompt_ids, repeats, strict=True) for _ in range(r)]
            if adapter_list is not None:
                adapter_list = [
                    a for a, r in zip(adapter_list, repeats, strict=True) for _ in range(r)
                ]
            repeats = [1] * len(prompt_ids)
        device = next(model.parameters()).device
        width = max(len(ids) for ids in prompt_ids)
        batch = len(prompt_ids)
        input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        logits, cache = forward_last_logits(
            model, input_ids, mask, positions, None, adapter_names=adapter_list
        )
        next_position = mask.sum(-1)
        if any(r != 1 for r in repeats):
            index = torch.repeat_interleave(
                torch.arange(batch, device=device), torch.tensor(repeats, device=device)
            )
            if all(r == repeats[0] for r in repeats):
                cache.batch_repeat_interleave(repeats[0])
            else:
                cache.batch_select_indices(index)
            logits, mask, next_position = logits[index], mask[index], next_position[index]
            if adapter_list is not None:
                adapter_list = [adapter_list[i] for i in index.tolist()]
        return cls(model, cache, mask, next_position, logits, adapter_list)

    def __len__(self) -> int:
        return self.mask.shape[0]

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def feed(self, tokens: torch.Tensor, space: tuple[int, torch.Tensor] | None = None) -> None:
        """Append one token per row and compute the next logits. ``space`` = ``(space_id,
        rows)`` feeds ``space_id`` before the token on the marked rows, in a column that the
        other rows leave masked out."""
        rows = len(self)
        if space is None or not bool(space[1].any()):
            new_mask = torch.ones((rows, 1), dtype=self.mask.dtype, device=self.mask.device)
            inputs = tokens.unsqueeze(-1)
            positions = self.next_position.unsqueeze(-1)
            advance = 1
        else:
            space_id, marked = space
            marked = marked.long()
            new_mask = torch.stack([marked, torch.ones_like(marked)], -1)
            inputs = torch.stack([torch.full_like(tokens, space_id), tokens], -1)
            positions = torch.stack([self.next_position, self.next_position + marked], -1)
            advance = 1 + marked
        self.mask = torch.cat([self.mask, new_mask], dim=1)
        self.logits, self.cache = forward_last_logits(
            self.model, inputs, self.mask, positions, self.cache, adapter_names=self.adapters
        )
        self.next_position = self.next_position + advance

    def extend(self, tokens: torch.Tensor) -> None:
        """Append ``tokens`` ``[rows, k]`` in one forward (a lazy model catching up)."""
        count = tokens.shape[1]
        ones = torch.ones((len(self), count), dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, ones], dim=1)
        steps = torch.arange(count, device=self.mask.device)
        positions = self.next_position.unsqueeze(-1) + steps
        self.logits, self.cache = forward_last_logits(
            self.model, tokens, self.mask, positions, self.cache, adapter_names=self.adapters
        )
        self.next_position = self.next_position + count

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the rows at indices ``keep`` (rows leaving the batch), then drop the
        columns none of the rest attends to."""
        if self.adapters is not None:
            self.adapters = [self.adapters[i] for i in keep.tolist()]
        self.cache.batch_select_indices(keep)
        self.mask = self.mask[keep]
        self.next_position = self.next_position[keep]
        self.logits = self.logits[keep]
        self.trim()

    def merge(self, other: ModelRows) -> None:
        """Append ``other``'s rows (same model): the shorter cache is left-padded to the
        longer's columns, the padding masked out. Positions are per row, so each row's
        tokens keep their own positions."""
        columns = max(self.columns, other.columns)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            if not getattr(mine, "is_initialized", True):
                continue
            stored = _stored(mine, columns)
            mine.keys = torch.cat(
                [_pad_left(mine.keys, stored, 2), _pad_left(theirs.keys, stored, 2)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, stored, 2), _pad_left(theirs.values, stored, 2)]
            )
            if hasattr(mine, "cumulative_length"):
                mine.cumulative_length = columns
        self.mask = torch.cat([_pad_left(self.mask, columns, 1), _pad_left(other.mask, columns, 1)])
        self.next_position = torch.cat([self.next_position, other.next_position])
        self.logits = torch.cat([self.logits, other.logits])
        if self.adapters is not None or other.adapters is not None:
            self.adapters = (self.adapters or [NO_ADAPTER] * (len(self.mask) - len(other))) + (
                other.adapters or [NO_ADAPTER] * len(other)
            )

    def trim(self) -> None:
        """Drop the leading columns that no row attends to (left by rows that left)."""
        if len(self) == 0:
            return
        used = self.mask.any(0)
        first = int(used.int().argmax()) if bool(used.any()) else self.columns
        if first < 8 and first * 4 < self.columns:  # not worth a copy of the cache
            return
        columns = self.columns - first
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", True):
                continue
            keep = _stored(layer, columns)
            if layer.keys.shape[2] > keep:
                layer.keys = layer.keys[:, :, layer.keys.shape[2] - keep :]
                layer.values = layer.values[:, :, layer.values.shape[2] - keep :]
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = columns
        self.mask = self.mask[:, first:]

    def hand_over(self) -> Handover:
        """Give the cache and logits to the graph path; this state is unusable afterwards."""
        handover = Handover(
            layers=[(layer.keys, layer.values) for layer in self.cache.layers],
            columns=self.columns,
            mask=self.mask,
            next_position=self.next_position,
            logits=self.logits,
        )
        self.cache = self.logits = None  # type: ignore[assignment]
        return handover


class LazyState:
    """A model fed only when its logits are read: tokens queue up and go in as one chunk.

    Used for the aligned model of a one-row batch with a router that reads only base
    signals (``DecodeOptions.lazy_aligned``): while the base model owns the text and the
    router keeps choosing it, the aligned model's next-token distribution is not needed.
    """

    def __init__(self, state: ModelRows) -> None:
        self.state = state
        self.pending: list[torch.Tensor] = []
        self.forwards = 0

    def __len__(self) -> int:
        return len(self.state)

    def feed(self, tokens: torch.Tensor, space: tuple[int, torch.Tensor] | None = None) -> None:
        """Queue ``tokens``; they are fed when the logits are next read."""
        self.pending.append(tokens)

    @property
    def logits(self) -> torch.Tensor:
        if self.pending:
            self.state.extend(torch.stack(self.pending, dim=-1))
            self.pending.clear()
            self.forwards += 1
        return self.state.logits

    @property
    def cache(self):
        return self.state.cache

    @property
    def mask(self) -> torch.Tensor:
        return self.state.mask

    def select(self, keep: torch.Tensor) -> None:
        self.logits  # noqa: B018  (catch up before rows are dropped)
        self.state.select(keep)
