"""Host-side bookkeeping of a decode's samples, shared by the eager and the graph loop.

The loops decide tokens on the device; :class:`RowBook` turns each decided token into text,
stop-string and grammar checks, a finish reason and a :class:`~shared_core.types.StreamEvent`.
A *row* is one sample (``row_id = prompt_index * n + sample_index``); the loops keep a list
of the row ids still in their batch, in batch order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .streaming import ResponseText
from .structured import RowMatchers, closing_window
from .types import Generation, StreamEvent, TokenLogprob, TopLogprob, Usage

#: What a loop reports per token when log-probabilities are asked for: the token's
#: log-probability and its ``(token id, log-probability)`` alternatives, most likely first.
Scores = tuple[float, list[tuple[int, float]]]


@dataclass
class Row:
    """Progress of one sample."""

    text: ResponseText
    budget: int  # max_new_tokens after the context-window clamp
    prompt_tokens: int
    tokens: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    completion: int = 0  # tokens decided, end token included
    finished: bool = False
    logprobs: list[TokenLogprob] | None = None  # entries spelled so far (when asked)
    #: tokens whose text is not yet visible: (index in text.pieces, id, from base, scores)
    pending: list[tuple[int, int, bool, Scores]] = field(default_factory=list)
    spelled: int = 0  # characters of the visible text the entries spell


class RowBook:
    """Every row of one decode: its tokens, text, stop strings, finish and events.

    ``model_names`` are the names of the models the decode runs (for NaN errors), in the
    order the loops report their NaN flags (base first). With ``logprobs`` the loops pass
    each token's :data:`Scores`, and every event and generation carries the
    :class:`~shared_core.types.TokenLogprob` s of the tokens whose text it made visible, so
    their ``token`` strings spell the returned text exactly.
    """

    def __init__(
        self,
        rows: list[Row],
        *,
        n: int,
        end_ids: frozenset[int] | set[int] | Sequence[int],
        router: str,
        gamma: float | None,
        model_names: Sequence[str],
        matchers: RowMatchers | None = None,
        logprobs: int | None = None,
        tokenizer: Any = None,
    ) -> None:
        self.rows = rows
        self.n = n
        self.end_ids = set(end_ids)
        self.router = router
        self.gamma = gamma
        self.model_names = list(model_names)
        self.matchers = matchers
        self.logprobs = logprobs
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        if logprobs is not None:
            for row in rows:
                row.logprobs = []

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def max_budget(self) -> int:
        return max(row.budget for row in self.rows)

    def finished(self, row_id: int) -> bool:
        return self.rows[row_id].finished

    def live(self, active: Sequence[int]) -> list[int]:
        """Positions in ``active`` (row ids in batch order) of the rows still decoding."""
        return [position for position, row_id in enumerate(active) if not self.finished(row_id)]

    def check_finite(self, broken: Sequence[Sequence[Any]], active: Sequence[int]) -> None:
        """Raise if a model's distribution became NaN for a row still decoding; ``broken``
        holds one flag list per model (batch order; padding rows past ``active`` ignored)."""
        for name, flags in zip(self.model_names, broken, strict=True):
            pairs = enumerate(zip(active, flags, strict=False))
            bad = [p for p, (row_id, flag) in pairs if flag and not self.finished(row_id)]
            if bad:
                raise FloatingPointError(
                    f"model {name!r} produced NaN/inf logits (rows {bad[:8]}); check its "
                    "weights and dtype (float16 overflow is a common cause; try bfloat16)"
                )

    def near_budget(self, row_id: int) -> bool:
        """Whether a row should be steered to finish its JSON: it is within its
        :func:`~shared_core.structured.closing_window` and writing JSON (the whole response
        is, or it is inside a tool call's markers; free text around calls is left alone)."""
        row, matchers = self.rows[row_id], self.matchers
        if matchers is None or row.budget - len(row.tokens) > closing_window(row.budget):
            return False
        markers = matchers.constraint.protected
        if markers is None:
            return True
        text = "".join(row.text.pieces)
        return text.rfind(markers[0]) > text.rfind(markers[1])

    def drop(self, row_id: int) -> None:
        """End a row without a result (its request was cancelled)."""
        self.rows[row_id].finished = True

    def advance(
        self, row_id: int, token_id: int, from_base: bool, scores: Scores | None = None
    ) -> StreamEvent:
        """Record one decided token of a row and return its stream event."""
        row, matchers = self.rows[row_id], self.matchers
        if matchers is not None and matchers.error(row_id) is not None:
            # The grammar allowed no token at this step: the token is not used.
            return self._finish(row_id, "error", "", None, None)
        row.completion += 1
        if token_id in self.end_ids:
            return self._finish(row_id, "stop", "", None, None)
        row.tokens.append(token_id)
        row.sources.append("base" if from_base else "aligned")
        delta = row.text.push(token_id)
        if scores is not None and row.logprobs is not None:
            row.pending.append((len(row.text.pieces) - 1, token_id, from_base, scores))
        complete = matchers is not None and matchers.advance(row_id, token_id)
        reason = None
        if matchers is not None and matchers.error(row_id) is not None:
            reason = "error"
        elif row.text.stopped or complete:
            reason = "stop"
        elif len(row.tokens) >= row.budget:
            reason = "length"
        if reason is None:
            return self._event(row_id, delta, token_id, from_base, spelled=self._spell(row))
        return self._finish(row_id, reason, delta, token_id, from_base)

    def _finish(
        self,
        row_id: int,
        reason: str,
        delta: str,
        token_id: int | None,
        from_base: bool | None,
    ) -> StreamEvent:
        """End a row: flush its text and return its final event."""
        row = self.rows[row_id]
        row.finished = True
        error = None
        if self.matchers is not None:
            self.matchers.done.add(row_id)
            error = self.matchers.error(row_id)
        delta += row.text.finish()
        spelled = self._spell(row, final=True)
        generation = Generation(
            text=row.text.text,
            token_ids=list(row.tokens),
            sources=list(row.sources),  # type: ignore[arg-type]
            finish_reason=reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=row.prompt_tokens, completion_tokens=row.completion),
            router=self.router,
            gamma=self.gamma,
            prompt_index=row_id // self.n,
            sample_index=row_id % self.n,
            error=error,
            logprobs=None if row.logprobs is None else list(row.logprobs),
        )
        return self._event(row_id, delta, token_id, from_base, generation, spelled)

    def _spell(self, row: Row, *, final: bool = False) -> list[TokenLogprob] | None:
        """Entries of the pending tokens whose text is now visible (at the end: the rest,
        cut to the visible text; tokens past it, e.g. of a stop string, are dropped)."""
        if row.logprobs is None:
            return None
        out: list[TokenLogprob] = []
        visible = len(row.text.text)
        while row.pending:
            piece_index, token_id, from_base, scores = row.pending[0]
            piece = row.text.pieces[piece_index]
            if row.spelled + len(piece) > visible:
                if not final:
                    break
                piece = piece[: visible - row.spelled]
                if not piece:
                    row.pending.clear()
                    break
            row.pending.pop(0)
            row.spelled += len(piece)
            out.append(self._entry(piece, token_id, from_base, scores))
        row.logprobs.extend(out)
        return out

    def _entry(self, piece: str, token_id: int, from_base: bool, scores: Scores) -> TokenLogprob:
        logprob, alternatives = scores
        return TokenLogprob(
            token=piece,
            token_id=token_id,
            logprob=logprob,
            bytes=list(piece.encode("utf-8")),
            source="base" if from_base else "aligned",
            top_logprobs=[
                TopLogprob(self._text(i), i, lp, list(self._text(i).encode("utf-8")))
                for i, lp in alternatives
            ],
        )

    def _text(self, token_id: int) -> str:
        """A token decoded on its own (cached)."""
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text

    def _event(
        self,
        row_id: int,
        delta: str,
        token_id: int | None,
        from_base: bool | None,
        generation: Generation | None = None,
        spelled: list[TokenLogprob] | None = None,
    ) -> StreamEvent:
        source = None if from_base is None else ("base" if from_base else "aligned")
        return StreamEvent(
            row=row_id,
            text_delta=delta,
            token_id=token_id,
            source=source,
            prompt_index=row_id // self.n,
            sample_index=row_id % self.n,
            generation=generation,
            logprobs=spelled,
        )


def row_book(pair: Any, prompts: Sequence[Any], params: Any) -> RowBook:
    """The row book of a request: ``n`` rows per prompt, each with its budget (clamped to the
    context window), stop strings (the base template's too when the base model writes) and,
    for a constrained request, its grammar matcher."""
    spec = params.spec
    stops = params.stop
    if spec.uses_base:
        stops = stops + tuple(s for s in pair.base_template.stop_strings if s not in stops)
    constraint = params.constraint
    if constraint is not None and constraint.whole_response:
        stops = ()
    protect = None if constraint is None else constraint.protected
    rows = []
    for prompt in prompts:
        aligned = len(prompt.aligned_ids) if spec.uses_aligned else 0
        base = len(prompt.base_ids) if spec.uses_base else 0
        budget = min(params.max_new_tokens, pair.context_window - max(aligned, base))
        prompt_tokens = len(prompt.aligned_ids if spec.uses_aligned else prompt.base_ids)
        rows += [
            Row(ResponseText(pair.tokenizer, stops, protect=protect), budget, prompt_tokens)
            for _ in range(params.n)
        ]
    matchers = None
    if constraint is not None:
        vocab = pair.vocab
        matchers = RowMatchers(
            constraint, pair.tokenizer, vocab.end_ids, len(rows), vocab.never_generate, vocab.is_end
        )
    names = [
        name
        for name, used in ((pair.base_name, spec.uses_base), (pair.aligned_name, spec.uses_aligned))
        if used
    ]
    return RowBook(
        rows,
        n=params.n,
        end_ids=pair.vocab.end_ids,
        router=spec.name,
        gamma=spec.gamma,
        model_names=names,
        matchers=matchers,
        logprobs=params.logprobs,
        tokenizer=pair.tokenizer,
    )
