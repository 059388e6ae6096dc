"""A remote pair's rows in token mode: each row's context per server and the top-k after it.

:class:`RemoteRows` is what :meth:`~shared_core.remote.RemotePair.open_rows` returns for the
eager executor: at every step one request per model for all rows that run it (so rows of
concurrent calls share their requests), sent as soon as the tokens are fed, so both models'
requests are in flight together; ``logits`` waits for the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import torch

from .backends import OpenRows, kept_positions, spread, used_rows


class _ServerRows:
    """One model's rows on its server: contexts and the pending next-token distributions."""

    def __init__(self, pair: Any, role: str, contexts: list[list[int]], repeat: list[int]):
        self.pair = pair
        self.server = pair.servers[role]
        self.contexts = [list(c) for c, r in zip(contexts, repeat, strict=True) for _ in range(r)]
        self._answer: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pending: Future[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._send(contexts, repeat)

    def __len__(self) -> int:
        return len(self.contexts)

    def _send(self, prompts: list[list[int]], repeat: list[int] | None = None) -> None:
        from .remote import dense_logits

        top, size = self.pair.top_logprobs, self.pair.vocab_size
        counts = torch.tensor(repeat or [1] * len(prompts))

        async def ask() -> tuple[torch.Tensor, torch.Tensor]:
            tops = await self.server.next_token_logprobs(prompts, top)
            dense, given = dense_logits(tops, size)
            return dense.repeat_interleave(counts, dim=0), given.repeat_interleave(counts, dim=0)

        self._answer = None
        self._pending = self.pair.submit(ask())

    def answer(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._answer is None:
            assert self._pending is not None
            self._answer = self._pending.result()
            self._pending = None
        return self._answer

    def feed(self, tokens: Sequence[int], spaces: Sequence[bool], space_id: int | None) -> None:
        for context, token, space in zip(self.contexts, tokens, spaces, strict=True):
            if space and space_id is not None:
                context.append(space_id)
            context.append(token)
        self._send(self.contexts)

    def select(self, keep: list[int]) -> None:
        dense, given = self.answer()
        index = torch.tensor(keep, dtype=torch.long)
        self.contexts = [self.contexts[i] for i in keep]
        self._answer = dense[index], given[index]

    def merge(self, other: _ServerRows) -> None:
        dense, given = self.answer()
        theirs = other.answer()
        self.contexts += other.contexts
        self._answer = torch.cat([dense, theirs[0]]), torch.cat([given, theirs[1]])


class RemoteRows:
    """Both servers' rows of a batch, in batch order (the :class:`~shared_core.backends.
    RowStates` of a remote pair)."""

    def __init__(self, pair: Any, rows: OpenRows) -> None:
        self.pair = pair
        self.space_id = pair.vocab.space_id
        repeats = list(rows.repeats)
        self.uses_base = rows.per_row(rows.uses_base)
        self.uses_aligned = rows.per_row(rows.uses_aligned)
        self.models: dict[str, _ServerRows | None] = {}
        for role, ids, uses in (
            ("base", "base_ids", rows.uses_base),
            ("aligned", "aligned_ids", rows.uses_aligned),
        ):
            picked = used_rows(uses)
            self.models[role] = (
                _ServerRows(
                    pair,
                    role,
                    [list(getattr(rows.prompts[i], ids)) for i in picked],
                    [repeats[i] for i in picked],
                )
                if picked
                else None
            )

    def __len__(self) -> int:
        return len(self.uses_base)

    def _flags(self, role: str) -> list[bool]:
        return self.uses_base if role == "base" else self.uses_aligned

    def logits(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = []
        for role in ("base", "aligned"):
            model = self.models[role]
            out.append(None if model is None else spread(model.answer()[0], self._flags(role), 0.0))
        return out[0], out[1]

    def drawable(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        out = []
        for role in ("base", "aligned"):
            model = self.models[role]
            out.append(
                None if model is None else spread(model.answer()[1], self._flags(role), True)
            )
        return out[0], out[1]

    def feed(
        self, tokens: torch.Tensor, base_tokens: torch.Tensor, space: torch.Tensor | None
    ) -> None:
        values = {"base": base_tokens.tolist(), "aligned": tokens.tolist()}
        spaced = [False] * len(self) if space is None else space.tolist()
        for role, model in self.models.items():
            if model is None:
                continue
            picked = used_rows(self._flags(role))
            model.feed(
                [values[role][i] for i in picked],
                [spaced[i] if role == "base" else False for i in picked],
                self.space_id,
            )

    def select(self, keep: Sequence[int]) -> None:
        keep = list(keep)
        for role, model in list(self.models.items()):
            if model is None:
                continue
            kept = kept_positions(self._flags(role), keep)
            if not kept:
                self.models[role] = None
            else:
                model.select(kept)
        self.uses_base = [self.uses_base[r] for r in keep]
        self.uses_aligned = [self.uses_aligned[r] for r in keep]

    def merge(self, other: RemoteRows) -> None:
        for role in ("base", "aligned"):
            mine, theirs = self.models[role], other.models[role]
            if theirs is None:
                continue
            if mine is None:
                self.models[role] = theirs
            else:
                mine.merge(theirs)
        self.uses_base = self.uses_base + other.uses_base
        self.uses_aligned = self.uses_aligned + other.uses_aligned
