"""Chunk mode of a :class:`~shared_core.remote.RemotePair`: BACO in few requests per token.

Each round, for every live row at once: the model that owns the text (the source of the
row's last token; the aligned model at the start) proposes up to ``chunk_tokens`` tokens,
sampled by its server with the request's temperature, top-k (the pair's ``top_logprobs``
at most), top-p and min-p and a per-row seed, with its top-k before each token; the other
model scores the proposal in one request (``prompt_logprobs``). Then every position of the
proposal runs the step of per-token BACO (:mod:`shared_core.step`) on both top-k
distributions, with the proposed token as the owner's candidate and the other model's
candidate drawn locally from its top-k. Tokens are kept while the owner stays; at the first
position where the guarded router hands over, the other model's candidate is taken and the
rest of the proposal dropped. A proposed token the local rules forbid (never-generated ids,
an end token before ``min_new_tokens``) is replaced by a local draw from the owner's top-k
without it, and the proposal is cut there.

Every kept token is therefore drawn exactly as per-token BACO draws it: the proposal token
at a position is a draw from the owner's distribution given the text so far, independent of
the router's decision and of the other candidate (docs/design.md, "BACO over two servers").
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .eager_loop import EagerDecode
from .remote import dense_logits
from .remote_client import Proposal, RemoteServerError, TopLogprobs
from .routers import apply_guards
from .rows import Scores
from .sampling import ALIGNED_DRAW, BASE_DRAW, row_streams
from .step import RowState, StepRules, clean_logits, draw_candidate, route_rows, token_logprobs
from .step import StepResult as _StepResult
from .types import StreamEvent

#: The random stream a row's proposal seed is read from (after the base, aligned and
#: router draws of :mod:`shared_core.sampling`).
PROPOSAL_DRAW = 3


@dataclass
class _RowText:
    """One row's contexts on both servers and whose text it is."""

    base: list[int]
    aligned: list[int]
    owner_is_base: bool = False
    prev_token: int = 0
    steps: int = 0


class ChunkDecode(EagerDecode):
    """One chunk-mode decode of ``prompts`` (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.params.constraint is not None:
            raise ValueError(
                "structured output and tools on a RemotePair need mode='token' (a proposal "
                "sampled by the server cannot follow a grammar)"
            )
        self.rules = StepRules.from_params(self.params, self.vocab, self.pad_id)
        self.k = self.pair.top_logprobs
        self.chunk = self.pair.chunk_tokens
        self.rounds = 0

    def run(self) -> Iterator[StreamEvent]:
        book = self.book
        texts = [
            _RowText(list(p.base_ids), list(p.aligned_ids), prev_token=self.pad_id)
            for p in self.prompts
            for _ in range(self.n)
        ]
        while True:
            self.drop_cancelled()
            live = [r for r in range(len(book)) if not book.finished(r)]
            if not live:
                return
            answers = self.pair.run(self._ask([texts[r] for r in live], live))
            self.rounds += 1
            for row_id, (proposal, scored) in zip(live, answers, strict=True):
                if book.finished(row_id):  # cancelled meanwhile
                    continue
                with self.context.device_work():
                    kept = self._walk(row_id, texts[row_id], proposal, scored)
                for token, from_base, scores in kept:
                    yield book.advance(row_id, token, from_base, scores)
                    self._append(texts[row_id], token, from_base)
                    if book.finished(row_id):
                        break

    # ------------------------------------------------------------------ requests

    def _owner(self, text: _RowText) -> str:
        if self.spec.single_model:
            return "base" if self.spec.uses_base else "aligned"
        return "base" if text.owner_is_base else "aligned"

    async def _ask(
        self, texts: list[_RowText], row_ids: list[int]
    ) -> list[tuple[Proposal, list[TopLogprobs] | None]]:
        """One round's requests: a proposal per row (own seeds, so concurrent requests),
        then one scoring request per other model for all rows it scores."""
        asks = (self._propose(t, r) for t, r in zip(texts, row_ids, strict=True))
        proposals = list(await asyncio.gather(*asks))
        scored: list[list[TopLogprobs] | None] = [None] * len(texts)
        if not self.spec.single_model:
            by_model: dict[str, list[int]] = {"base": [], "aligned": []}
            for i, text in enumerate(texts):
                by_model["aligned" if self._owner(text) == "base" else "base"].append(i)
            jobs = {
                role: [self._scored_input(texts[i], role, proposals[i].token_ids) for i in rows]
                for role, rows in by_model.items()
                if rows
            }
            servers = self.pair.servers
            answers = await asyncio.gather(
                *(servers[role].score_many(items, self.k) for role, items in jobs.items())
            )
            for role, answer in zip(jobs, answers, strict=True):
                for i, one in zip(by_model[role], answer, strict=True):
                    scored[i] = one
        return list(zip(proposals, scored, strict=True))

    async def _propose(self, text: _RowText, row_id: int) -> Proposal:
        owner = self._owner(text)
        server = self.pair.servers[owner]
        budget = self.book.rows[row_id].budget - text.steps
        seed = row_streams(
            self.seeds[row_id : row_id + 1],
            self.sample_index[row_id : row_id + 1],
            text.steps,
            PROPOSAL_DRAW,
        )
        params = self.params
        max_tokens = max(1, min(self.chunk, budget))
        proposal = await server.propose(
            text.base if owner == "base" else text.aligned,
            max_tokens=max_tokens,
            top=self.k,
            seed=int(seed[0]) & 0x7FFFFFFF,
            temperature=params.temperature,
            top_k=min(params.top_k or self.k, self.k),
            top_p=params.top_p,
            min_p=params.min_p,
            min_tokens=min(max_tokens, max(0, params.min_new_tokens - text.steps)),
        )
        if not proposal.token_ids:
            raise RemoteServerError(server.label, "a completion with no tokens")
        return proposal

    def _scored_input(
        self, text: _RowText, role: str, tokens: Sequence[int]
    ) -> tuple[list[int], list[int]]:
        """What the other model reads: its context and the proposal (at the first step, an
        aligned proposal is read by the base model after a space, as the eager loop feeds
        it)."""
        if role == "aligned":
            return text.aligned, list(tokens)
        first, extra = self._base_form(tokens[0], text.steps)
        return text.base, [*extra, first, *tokens[1:]]

    def _base_form(self, token: int, steps: int) -> tuple[int, list[int]]:
        """``(token, [space slot])`` the base model reads for an aligned token at ``steps``."""
        if not self.seam or steps != 0:
            return token, []
        spaced, needs_space = self.vocab.after_space(torch.tensor([token]))
        if bool(needs_space[0]) and self.vocab.space_id is not None:
            return token, [self.vocab.space_id]
        return int(spaced[0]), []

    def _append(self, text: _RowText, token: int, from_base: bool) -> None:
        if from_base or not self.spec.uses_base:
            text.base.append(token)
        else:
            first, extra = self._base_form(token, text.steps)
            text.base.extend([*extra, first])
        text.aligned.append(token)
        text.owner_is_base = from_base
        text.prev_token = token
        text.steps += 1

    # ------------------------------------------------------------------ routing

    def _walk(
        self,
        row_id: int,
        text: _RowText,
        proposal: Proposal,
        scored: list[TopLogprobs] | None,
    ) -> list[tuple[int, bool, Scores | None]]:
        """The tokens of ``proposal`` this row keeps, with their owners and scores."""
        tokens = list(proposal.token_ids)
        if not tokens:
            return []
        m = len(tokens)
        owner = self._owner(text)
        owner_is_base = owner == "base"
        size = self.vocab.size
        mine, mine_given = dense_logits(proposal.top, size)
        steps = torch.arange(text.steps, text.steps + m)
        rows = RowState(
            seeds=self.seeds[row_id].repeat(m),
            sample_index=self.sample_index[row_id].repeat(m),
            owner=torch.full((m,), owner_is_base),
            prev_token=torch.tensor([text.prev_token, *tokens[:-1]]),
            finished=torch.zeros(m, dtype=torch.bool),
        )
        proposed = torch.tensor(tokens)
        if scored is None:  # one model: its proposal is the text
            theirs = theirs_given = None
        else:
            skip = len(self._scored_input(text, "base", tokens)[1]) - m if owner != "base" else 0
            picked = [scored[0], *scored[1 + skip : m + skip]] if skip else scored[:m]
            theirs, theirs_given = dense_logits(picked, size)
        base_logits, aligned_logits = (mine, theirs) if owner_is_base else (theirs, mine)
        result, cut = self._decide(
            rules=self.rules,
            rows=rows,
            proposed=proposed,
            base=base_logits,
            aligned=aligned_logits,
            given=(mine_given, theirs_given),
            steps=steps,
            owner_is_base=owner_is_base,
        )
        switched = (result.owner != owner_is_base).nonzero()
        stops = [int(switched[0])] if len(switched) else []
        if cut is not None:
            stops.append(cut)
        last = min(stops) if stops else m - 1
        scores = self._scores(base_logits, aligned_logits, result, steps, last + 1)
        tokens_kept, owners = result.token.tolist(), result.owner.tolist()
        return [
            (tokens_kept[j], owners[j], None if scores is None else scores[j])
            for j in range(last + 1)
        ]

    def _decide(
        self,
        *,
        rules: StepRules,
        rows: RowState,
        proposed: torch.Tensor,
        base: torch.Tensor | None,
        aligned: torch.Tensor | None,
        given: tuple[torch.Tensor, torch.Tensor | None],
        steps: torch.Tensor,
        owner_is_base: bool,
    ) -> tuple[_StepResult, int | None]:
        """Per position: the guarded router's owner and token (the step of
        :func:`~shared_core.step.decode_step` with the owner's candidate given), and the
        first position whose proposed token the rules forbid (None: none). ``given``: the
        tokens each model's server gave (owner's, other's), the only ones drawn from."""
        step = steps.unsqueeze(-1)
        base_c = clean_logits(rules, base, step, None)
        aligned_c = clean_logits(rules, aligned, step, None)
        mine = base_c if owner_is_base else aligned_c
        allowed = torch.isfinite(
            mine.gather(1, proposed.clamp(max=mine.shape[1] - 1).unsqueeze(-1))
        ).squeeze(-1)
        allowed &= proposed < self.vocab.size
        base_p = None if base_c is None else torch.softmax(base_c, -1)
        aligned_p = None if aligned_c is None else torch.softmax(aligned_c, -1)
        purpose = BASE_DRAW if owner_is_base else ALIGNED_DRAW
        mine_given, theirs_given = given
        mine_draw = mine.masked_fill(~mine_given, float("-inf"))
        redrawn = draw_candidate(
            rules, rows, mine_draw, base_p if owner_is_base else aligned_p, steps, purpose
        )
        own = torch.where(allowed, proposed, redrawn)
        cut = None if bool(allowed.all()) else int((~allowed).nonzero()[0])
        if self.spec.single_model:
            owner = torch.full_like(rows.owner, owner_is_base)
            return _StepResult(own, owner, None, None), cut
        route = route_rows(rules, rows, base_c, aligned_c, base_p, aligned_p, steps)
        other_purpose = ALIGNED_DRAW if owner_is_base else BASE_DRAW
        other_logits, other_p = (aligned_c, aligned_p) if owner_is_base else (base_c, base_p)
        assert theirs_given is not None  # two models: the other one scored the proposal
        other_draw = other_logits.masked_fill(~theirs_given, float("-inf"))
        theirs = draw_candidate(rules, rows, other_draw, other_p, steps, other_purpose)
        base_token, aligned_token = (own, theirs) if owner_is_base else (theirs, own)
        guards = {
            "aligned_starts": rules.aligned_starts,
            "aligned_can_stop": rules.aligned_can_stop,
        }
        first = int(steps[0]) == 0
        parts = []
        for lo, hi, is_first in ((0, 1, first), (1, len(steps), False)):
            if hi <= lo:
                continue
            parts.append(
                apply_guards(
                    route[lo:hi],
                    rows.owner[lo:hi],
                    base_token[lo:hi],
                    aligned_token[lo:hi],
                    rows.prev_token[lo:hi],
                    rules.vocab,
                    first_step=is_first,
                    **guards,
                )
            )
        owner = torch.cat([p[0] for p in parts])
        token = torch.cat([p[1] for p in parts])
        return _StepResult(token, owner, None, None), cut

    def _scores(
        self,
        base: torch.Tensor | None,
        aligned: torch.Tensor | None,
        result: _StepResult,
        steps: torch.Tensor,
        count: int,
    ) -> list[Scores] | None:
        """The first ``count`` positions' token log-probabilities (when asked)."""
        top = self.params.logprobs
        if top is None:
            return None
        chosen, best, ids = token_logprobs(
            self.rules, base, aligned, result, steps.unsqueeze(-1), top, None
        )
        pairs = zip(ids[:count].tolist(), best[:count].tolist(), strict=True)
        return [
            (lp, list(zip(i, b, strict=True)))
            for lp, (i, b) in zip(chosen[:count].tolist(), pairs, strict=True)
        ]
