"""Each model's decode state on the eager loop: KV cache, attention mask, positions, logits.

:class:`ModelState` prefills one model for a batch of prompts (once per prompt, the cache then
repeated for the ``n`` samples) and appends one token per row per step. :class:`LazyState`
feeds a model only when its logits are read; :class:`JointState` runs both views of a
one-weights (base + LoRA) pair as one batch. :meth:`ModelState.hand_over` gives the state to
the graph path, which copies it into static caches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import NO_ADAPTER, forward_last_logits


@dataclass
class Handover:
    """One model's eager state after the first decode step, for the graph path to copy.

    The model state that made it keeps nothing (:meth:`ModelState.hand_over`), so the eager
    cache is freed as soon as the copy is done and this object is dropped.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [rows, h, c, d]
    columns: int  # cache columns filled
    mask: torch.Tensor  # [rows, ≥ columns]
    next_position: torch.Tensor  # [rows] position of the step-0 token
    logits: torch.Tensor  # [rows, V] next-token logits


class ModelState:
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

    def hand_over(self) -> Handover:
        """Give the cache and logits to the graph path; this state is unusable afterwards."""
        handover = Handover(
            layers=[(layer.keys, layer.values) for layer in self.cache.layers],
            columns=self.cache.get_seq_length(),
            mask=self.mask,
            next_position=self.next_position,
            logits=self.logits,
        )
        self.cache = self.logits = None  # type: ignore[assignment]
        return handover


class LazyState:
    """A model fed only when its logits are read: tokens queue up and go in as one chunk.

    Used for the aligned model of a batch-1 decode with a router that reads only base
    signals: while the base model owns the text and the router keeps choosing it, the aligned
    model's next-token distribution is not needed.
    """

    def __init__(self, state: ModelState):
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


class JointState:
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
        self.state = ModelState(
            peft_model,
            base_ids + aligned_ids,
            n,
            pad_id,
            budget,
            share_prefill=share_prefill,
            adapters=adapters,
        )
        self.base = JointHalf(self, 0)
        self.aligned = JointHalf(self, 1)

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


class JointHalf:
    """The logits of one view of a :class:`JointState`."""

    def __init__(self, joint: JointState, part: int):
        self.joint = joint
        self.part = part

    @property
    def logits(self) -> torch.Tensor:
        half = self.joint.half
        return self.joint.state.logits[half * self.part : half * (self.part + 1)]
