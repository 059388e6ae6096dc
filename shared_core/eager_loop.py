"""The eager decode loop: prefill, then one BACO step per iteration, read back to the host.

Each prompt is prefilled once per model and its KV cache repeated for the ``n`` samples;
several prompts share one left-padded batch. Every step runs :func:`~shared_core.step.
decode_step` on both models' logits, reads the chosen tokens to the host (text, stop
strings, grammar, events: :class:`~shared_core.rows.RowBook`) and feeds them to both models.
After the first step the decode moves to the graph loop (:mod:`shared_core.graph_loop`) when
that can hold it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

import torch

from .decode_options import DecodeContext, PreparedPrompt
from .forward import supports_row_adapters
from .graph import graph_fallback_reason
from .graph_loop import run_graph
from .model_state import JointState, LazyState, ModelState
from .params import GenerationParams
from .routers import resolve_router
from .rows import Row, RowBook, Scores
from .step import (
    RowState,
    StepResult,
    StepRules,
    clean_logits,
    decode_step,
    route_rows,
    token_logprobs,
)
from .streaming import ResponseText
from .structured import RowMatchers
from .types import StreamEvent

logger = logging.getLogger(__name__)


class EagerDecode:
    """One batched decode of ``prompts`` (one seed each, ``n`` samples per prompt)."""

    def __init__(
        self,
        context: DecodeContext,
        prompts: list[PreparedPrompt],
        params: GenerationParams,
        seeds: Sequence[int],
        cancelled: Callable[[], set[int]] | None = None,
    ) -> None:
        pair, options = context.pair, context.options
        self.remote = getattr(pair, "remote", False)
        if self.remote:  # sampling reads the servers' top-k: the local engine with top_k=k
            k = pair.top_logprobs
            if params.logprobs is not None and params.logprobs > k:
                raise ValueError(
                    f"logprobs={params.logprobs} exceeds the remote pair's top_logprobs={k}: "
                    "ask for at most k alternatives (or raise top_logprobs)"
                )
            params = replace(params, top_k=min(params.top_k or k, k))
        self.cancelled = cancelled
        self.context = context
        self.pair = pair
        self.prompts = prompts
        self.params = params
        self.spec = spec = params.spec
        self.n = params.n
        self.vocab = pair.vocab
        self.device = pair.device
        self.seeds = torch.tensor(list(seeds), dtype=torch.long, device=self.device)
        self.seeds = self.seeds.repeat_interleave(self.n)
        self.sample_index = torch.arange(self.n, device=self.device).repeat(len(prompts))
        self.pad_id = self.vocab.end_ids[0] if self.vocab.end_ids else 0
        rows = len(prompts) * self.n
        # The base prompt ends ``Assistant:``; an aligned first token reads after a space.
        self.seam = spec.uses_base and spec.uses_aligned and pair.base_template.cue_space
        self.lazy = (
            not self.remote
            and options.lazy_aligned
            and rows == 1
            and spec.reads_only_base
            and params.logprobs is None  # log-probabilities read the aligned model too
        )
        self.joint = (
            options.joint_forward
            and not self.lazy
            and pair.shares_weights
            and spec.uses_base
            and spec.uses_aligned
            and supports_row_adapters(pair.aligned)
        )
        self.book = self._row_book()

    def _row_book(self) -> RowBook:
        params, spec, pair = self.params, self.spec, self.pair
        stops = params.stop
        if spec.uses_base:
            stops = stops + tuple(s for s in pair.base_template.stop_strings if s not in stops)
        constraint = params.constraint
        if constraint is not None and constraint.whole_response:
            stops = ()
        protect = None if constraint is None else constraint.protected
        rows = []
        for prompt in self.prompts:
            aligned = len(prompt.aligned_ids) if spec.uses_aligned else 0
            base = len(prompt.base_ids) if spec.uses_base else 0
            budget = min(params.max_new_tokens, pair.context_window - max(aligned, base))
            prompt_tokens = len(prompt.aligned_ids if spec.uses_aligned else prompt.base_ids)
            rows += [
                Row(ResponseText(pair.tokenizer, stops, protect=protect), budget, prompt_tokens)
                for _ in range(self.n)
            ]
        matchers = None
        if constraint is not None:
            vocab = self.vocab
            matchers = RowMatchers(
                constraint,
                pair.tokenizer,
                vocab.end_ids,
                len(rows),
                vocab.never_generate,
                vocab.is_end,
            )
        names = [
            name
            for name, used in (
                (pair.base_name, spec.uses_base),
                (pair.aligned_name, spec.uses_aligned),
            )
            if used
        ]
        return RowBook(
            rows,
            n=self.n,
            end_ids=self.vocab.end_ids,
            router=spec.name,
            gamma=spec.gamma,
            model_names=names,
            matchers=matchers,
            logprobs=params.logprobs,
            tokenizer=pair.tokenizer,
        )

    def _prefill(self) -> dict[str, Any]:
        """Each model's state after the prompts: ``base``/``aligned``, or ``joint``."""
        budget, share = self.book.max_budget, self.context.options.share_prefill
        base_ids = [p.base_ids for p in self.prompts]
        aligned_ids = [p.aligned_ids for p in self.prompts]
        if self.remote:
            from .remote import RemoteModelState

            roles = (
                ("base", base_ids, self.spec.uses_base),
                ("aligned", aligned_ids, self.spec.uses_aligned),
            )
            return {
                role: RemoteModelState(self.pair, role, ids, self.n)
                for role, ids, used in roles
                if used
            }
        if self.joint:
            joint = JointState(
                self.pair.aligned,
                base_ids,
                aligned_ids,
                self.n,
                self.pad_id,
                budget,
                share_prefill=share,
            )
            return {"joint": joint}
        models: dict[str, Any] = {}
        if self.spec.uses_base:
            models["base"] = ModelState(
                self.pair.base, base_ids, self.n, self.pad_id, budget, share_prefill=share
            )
        if self.spec.uses_aligned:
            aligned = ModelState(
                self.pair.aligned, aligned_ids, self.n, self.pad_id, budget, share_prefill=share
            )
            models["aligned"] = LazyState(aligned) if self.lazy else aligned
        return models

    def run(self) -> Iterator[StreamEvent]:
        book, compute = self.book, self.context.compute
        with compute():
            models = self._prefill()
        joint = models.get("joint")
        base = joint.base if joint is not None else models.get("base")
        aligned = joint.aligned if joint is not None else models.get("aligned")
        active = list(range(len(book)))  # batch position -> row id
        rules = StepRules.from_params(self.params, self.vocab, self.pad_id)
        row_state = RowState.start(self.seeds, self.sample_index, self.pad_id)
        for step in range(book.max_budget):
            allowed = None
            if book.matchers is not None:  # host work, outside the engine lock
                ban_ends = step < self.params.min_new_tokens
                closing = [r for r in active if book.near_budget(r)]
                allowed = book.matchers.allowed(
                    active, self.device, ban_ends=ban_ends, closing=closing
                )
            with compute():
                result = self._step(rules, row_state, base, aligned, step, allowed)
                row_state.owner, row_state.prev_token = result.owner, result.token
                scores = self._scores(rules, base, aligned, result, step, allowed)
                flags = [
                    f.long() for f in (result.base_broken, result.aligned_broken) if f is not None
                ]
                host = torch.stack([result.token, result.owner.long(), *flags]).tolist()
            book.check_finite(host[2:], active)
            self.drop_cancelled()
            yield from [
                book.advance(
                    row_id,
                    host[0][position],
                    bool(host[1][position]),
                    None if scores is None else scores[position],
                )
                for position, row_id in enumerate(active)
                if not book.finished(row_id)
            ]
            keep = book.live(active)
            if not keep:
                return
            with compute():
                if len(keep) < len(active):
                    if self.context.options.compact_finished:
                        index = torch.tensor(keep, device=self.device)
                        for model in models.values():
                            model.select(index)
                        row_state = row_state.select(index)
                        active = [active[i] for i in keep]
                    finished = [book.finished(r) for r in active]
                    row_state.finished = torch.tensor(
                        finished, dtype=torch.bool, device=self.device
                    )
                self._feed(models, row_state, step)
            if step == 0 and book.max_budget > 1:
                states = {name: m.state if name == "joint" else m for name, m in models.items()}
                if self._use_graph(len(active), states) and (
                    yield from run_graph(
                        self.context, book, rules, row_state, active, states, self.drop_cancelled
                    )
                ):
                    return

    def drop_cancelled(self) -> None:
        """Stop the rows of cancelled prompts (no events: nobody reads them)."""
        if self.cancelled is not None:
            for prompt in self.cancelled():
                for row_id in range(prompt * self.n, (prompt + 1) * self.n):
                    self.book.drop(row_id)

    def _step(
        self,
        rules: StepRules,
        row_state: RowState,
        base: Any,
        aligned: Any,
        step: int,
        allowed: torch.Tensor | None,
    ) -> StepResult:
        """:func:`decode_step`; in lazy mode, without the aligned model while the base model
        owns the text and the router keeps it there (the aligned candidate cannot change the
        token then, except through the ``aligned_can_stop`` guard, which is skipped on those
        steps: the trade-off of this mode)."""
        base_logits = None if base is None else base.logits
        if self.lazy and step > 0 and bool(row_state.owner[0]):
            cleaned = clean_logits(rules, base_logits, step, allowed)
            probs = torch.softmax(cleaned, -1)
            if bool(route_rows(rules, row_state, cleaned, None, probs, None, step)[0]):
                base_only = replace(rules, spec=resolve_router("base"))
                result = decode_step(
                    base_only, row_state, base_logits, None, step, first_step=False, allowed=allowed
                )
                result.aligned_broken = torch.zeros_like(result.base_broken)
                return result
        drawable = (None, None)
        if self.remote:
            drawable = tuple(None if m is None else m.drawable for m in (base, aligned))
        return decode_step(
            rules,
            row_state,
            base_logits,
            None if aligned is None else aligned.logits,
            step,
            first_step=step == 0,
            allowed=allowed,
            drawable=drawable,
        )

    def _scores(
        self,
        rules: StepRules,
        base: Any,
        aligned: Any,
        result: StepResult,
        step: int,
        allowed: torch.Tensor | None,
    ) -> list[Scores] | None:
        """Per row, the chosen token's log-probability and top alternatives (when asked)."""
        top = self.params.logprobs
        if top is None:
            return None
        chosen, best, ids = token_logprobs(
            rules,
            None if base is None else base.logits,
            None if aligned is None else aligned.logits,
            result,
            step,
            top,
            allowed,
        )
        pairs = zip(ids.tolist(), best.tolist(), strict=True)
        return [
            (lp, list(zip(i, b, strict=True)))
            for lp, (i, b) in zip(chosen.tolist(), pairs, strict=True)
        ]

    def _feed(self, models: dict[str, Any], row_state: RowState, step: int) -> None:
        """Append the chosen tokens to every model's context."""
        token = row_state.prev_token
        base_token, space = self._base_input(token, row_state.owner, step)
        if "joint" in models:
            models["joint"].step(token, step, base_token, space)
            return
        if "base" in models:
            models["base"].step(base_token, step, space)
        if "aligned" in models:
            models["aligned"].step(token, step)

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

    def _use_graph(self, live_rows: int, states: dict[str, Any]) -> bool:
        """Whether the rest of this decode runs on the graph path (reason logged if not)."""
        wanted = self.context.options.graph
        if wanted is None:
            wanted = self.device.type == "cuda"
        if not wanted or self.remote:
            return False
        reason = graph_fallback_reason(
            self.pair,
            self.params,
            rows=live_rows,
            joint=self.joint,
            lazy=self.lazy,
            constrained=self.book.matchers is not None,
            columns=max(m.mask.shape[1] for m in states.values()),
        )
        if reason is not None:
            logger.debug("baco: eager decode instead of the graph path: %s", reason)
        return reason is None
