"""The chunk executor: a remote pair's BACO in few requests per token (``mode="chunk"``).

Each step (a *round*), for every row of the batch at once — rows of every running request:
the model that owns the text (the source of the row's last token; the aligned model at the
start) proposes up to ``chunk_tokens`` tokens, sampled by its server with the row's
temperature, top-k (the pair's ``top_logprobs`` at most), top-p and min-p and a per-row seed,
with its top-k before each token; the other model scores the proposals in one request per
server for all rows (``prompt_logprobs``). Then every position of a proposal runs
:func:`~shared_core.step.decode_step` — the step of per-token BACO — on both top-k
distributions, with the proposed token given as the owner's candidate (``proposed``) and the
other model's candidate drawn locally from its top-k. Tokens are kept while the owner stays;
at the first position where the guarded router hands over, the other model's candidate is
taken and the rest of the proposal dropped. A proposed token the rules forbid (never-generated
ids, an end token before ``min_new_tokens``) is replaced by the local draw that per-token
BACO makes there, and the proposal is cut at it.

So every kept token is chosen by the same step function as token mode, from a draw of the
owner's distribution given the text so far (docs/design.md, "BACO over two servers"); with
greedy sampling the two modes give the same tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .executors import RowRef, StepOutput, StepPlan, batch_rules, new_rows, seam_input
from .remote import dense_logits
from .remote_client import Proposal, RemoteServerError, TopLogprobs
from .rows import Scores
from .sampling import row_streams
from .step import RowState, StepRules, decode_step, token_logprobs

#: The random stream a row's proposal seed is read from (after the base, aligned and
#: router draws of :mod:`shared_core.sampling`).
PROPOSAL_DRAW = 3


@dataclass
class _RowText:
    """One row's contexts on both servers and whose text it is."""

    base: list[int]
    aligned: list[int]
    single: str | None  # "base"/"aligned" for a single-model router, else None
    seam: bool  # the base model reads an aligned first token after a space
    owner_is_base: bool = False
    prev_token: int = 0
    steps: int = 0

    @property
    def owner(self) -> str:
        if self.single is not None:
            return self.single
        return "base" if self.owner_is_base else "aligned"


class ChunkExecutor:
    """Rounds of proposals and scores over every row of the batch (see the module doc)."""

    def __init__(self, pair: Any, device_work: Any) -> None:
        self.pair = pair
        self.device_work = device_work
        self.vocab = pair.vocab
        self.pad_id = self.vocab.end_ids[0] if self.vocab.end_ids else 0
        self.k = pair.top_logprobs
        self.chunk = pair.chunk_tokens
        self.cue_space = bool(getattr(pair.base_template, "cue_space", False))
        self.texts: list[_RowText] = []
        self.rows: RowState | None = None
        self.admitted: dict[int, tuple[list[_RowText], RowState]] = {}
        self.rounds = 0

    # ------------------------------------------------------------------ the interface

    def admit(self, requests: Sequence[Any]) -> dict[int, BaseException]:
        """Rows start from their prompts (the servers prefill on the first proposal)."""
        for request in requests:
            spec = request.params.spec
            single = None if not spec.single_model else ("base" if spec.uses_base else "aligned")
            seam = single is None and self.cue_space
            texts = [
                _RowText(list(p.base_ids), list(p.aligned_ids), single, seam, False, self.pad_id)
                for p in request.prompts
                for _ in range(request.params.n)
            ]
            self.admitted[request.id] = (texts, new_rows(request, self.pad_id, self.pair.device))
        return {}

    def reset(self) -> None:
        self.texts, self.rows = [], None
        self.admitted.clear()

    def execute(self, plan: StepPlan) -> StepOutput:
        if self.rows is not None:
            index = torch.tensor(plan.keep, dtype=torch.long)
            self.rows = self.rows.select(index) if plan.keep else None
            self.texts = [self.texts[i] for i in plan.keep]
        for request in plan.joins:
            texts, rows = self.admitted.pop(request.id)
            self.texts += texts
            self.rows = rows if self.rows is None else self.rows.cat(rows)
        if self.rows is None or not plan.rows:
            self.rows, self.texts = None, []
            return StepOutput([], [])
        rules, index = batch_rules(plan.rows, self.vocab, self.pad_id)
        self.rows.router = torch.tensor(index, dtype=torch.long)
        answers = self.pair.run(self._ask(plan.rows))
        self.rounds += 1
        output = StepOutput(tokens=[], owners=[], scores=[] if plan.logprobs is not None else None)
        for position, (proposal, scored) in enumerate(answers):
            with self.device_work():
                kept = self._walk(plan.rows[position], rules, position, proposal, scored)
            output.tokens.append([t for t, _, _ in kept])
            output.owners.append([o for _, o, _ in kept])
            if output.scores is not None:
                output.scores.append([s for _, _, s in kept])
            text = self.texts[position]
            for token, from_base, _ in kept:
                self._append(text, token, from_base)
        return output

    # ------------------------------------------------------------------ requests

    async def _ask(self, refs: list[RowRef]) -> list[tuple[Proposal, list[TopLogprobs] | None]]:
        """One round's requests: a proposal per row (own seeds, so concurrent requests),
        then one scoring request per other model for all rows it scores (rows of every
        request share them)."""
        texts = self.texts
        asks = (self._propose(ref, position) for position, ref in enumerate(refs))
        proposals = list(await asyncio.gather(*asks))
        scored: list[list[TopLogprobs] | None] = [None] * len(texts)
        by_model: dict[str, list[int]] = {"base": [], "aligned": []}
        for i, text in enumerate(texts):
            if text.single is None:
                by_model["aligned" if text.owner == "base" else "base"].append(i)
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

    async def _propose(self, ref: RowRef, position: int) -> Proposal:
        text = self.texts[position]
        assert self.rows is not None
        owner = text.owner
        server = self.pair.servers[owner]
        book_row = ref.request.book.rows[ref.row]
        budget = book_row.budget - text.steps
        seed = row_streams(
            self.rows.seeds[position : position + 1],
            self.rows.sample_index[position : position + 1],
            text.steps,
            PROPOSAL_DRAW,
        )
        params = ref.request.params
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
        aligned proposal is read by the base model after a space, as token mode feeds it)."""
        if role == "aligned":
            return text.aligned, list(tokens)
        first, extra = self._base_form(text, tokens[0])
        return text.base, [*extra, first, *tokens[1:]]

    def _base_form(self, text: _RowText, token: int) -> tuple[int, list[int]]:
        """``(token, [space slot])`` the base model reads for an aligned token (the rule of
        :func:`~shared_core.executors.seam_input`, which token mode applies too)."""
        if not text.seam or text.steps != 0:
            return token, []
        flag = torch.tensor([True])
        base_token, space = seam_input(self.vocab, torch.tensor([token]), ~flag, flag, flag)
        if space is not None and bool(space[0]):
            return token, [self.vocab.space_id]
        return int(base_token[0]), []

    def _append(self, text: _RowText, token: int, from_base: bool) -> None:
        if from_base or text.single == "aligned":
            text.base.append(token)
        else:
            first, extra = self._base_form(text, token)
            text.base.extend([*extra, first])
        text.aligned.append(token)
        text.owner_is_base = from_base
        text.prev_token = token
        text.steps += 1

    # ------------------------------------------------------------------ routing

    def _walk(
        self,
        ref: RowRef,
        rules: StepRules,
        position: int,
        proposal: Proposal,
        scored: list[TopLogprobs] | None,
    ) -> list[tuple[int, bool, Scores | None]]:
        """The tokens of ``proposal`` this row keeps, with their owners and scores: each
        position decided by :func:`decode_step` with the proposed token given."""
        assert self.rows is not None
        text = self.texts[position]
        tokens = list(proposal.token_ids)
        m = len(tokens)
        owner_is_base = text.owner == "base"
        size = self.vocab.size
        mine, mine_given = dense_logits(proposal.top, size)
        rows = self.rows.select(torch.full((m,), position, dtype=torch.long))
        rows.step = torch.arange(text.steps, text.steps + m)
        rows.owner = torch.full((m,), owner_is_base)
        rows.prev_token = torch.tensor([text.prev_token, *tokens[:-1]])
        theirs = theirs_given = None
        if scored is not None:
            skip = len(self._scored_input(text, "base", tokens)[1]) - m if not owner_is_base else 0
            picked = [scored[0], *scored[1 + skip : m + skip]] if skip else scored[:m]
            theirs, theirs_given = dense_logits(picked, size)
        base, aligned = (mine, theirs) if owner_is_base else (theirs, mine)
        base_given, aligned_given = (
            (mine_given, theirs_given) if owner_is_base else (theirs_given, mine_given)
        )
        result = decode_step(
            rules,
            rows,
            base,
            aligned,
            drawable=(base_given, aligned_given),
            proposed=(torch.tensor(tokens), torch.full((m,), owner_is_base)),
            uses=(torch.full((m,), base is not None), torch.full((m,), aligned is not None)),
        )
        assert result.proposal_kept is not None
        stops = []
        switched = (result.owner != owner_is_base).nonzero()
        if len(switched):
            stops.append(int(switched[0]))
        cut = (~result.proposal_kept).nonzero()
        if len(cut):
            stops.append(int(cut[0]))
        last = min(stops) if stops else m - 1
        scores: list[Scores | None] = [None] * (last + 1)
        top = ref.request.params.logprobs
        if top is not None:
            chosen, best, ids = token_logprobs(rules, rows, base, aligned, result, top)
            scores = [
                (lp, list(zip(i, b, strict=True)))
                for lp, i, b in zip(
                    chosen[: last + 1].tolist(),
                    ids[: last + 1].tolist(),
                    best[: last + 1].tolist(),
                    strict=True,
                )
            ]
        kept_tokens, owners = result.token.tolist(), result.owner.tolist()
        return [(kept_tokens[j], owners[j], scores[j]) for j in range(last + 1)]
