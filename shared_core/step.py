"""One BACO decode step, as a function of tensors: the eager loop and the graph path share it.

Given both models' next-token logits for every row, :func:`decode_step` masks the tokens that
must not be generated, computes the router signals, routes, draws a candidate from each
model, applies the guards and returns the chosen token and its owner per row. Everything is
vectorised over the batch; with ``StepRules.static_shapes`` it also has fixed shapes and no
host synchronisation, so it can be compiled with ``fullgraph=True`` and captured as a CUDA
graph (:mod:`shared_core.graph`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

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

#: A decode step number: a Python int (eager) or a 0-d long tensor (compiled graphs).
Step = int | torch.Tensor


#: The knobs a compiled graph reads from tensors (:class:`StepInputs`), so one graph serves
#: every value; only whether each is at its neutral value changes the graph (and, for
#: ``top_k``, its power-of-two bucket: see :func:`top_k_bucket`).
KNOBS = ("gamma", "temperature", "top_p", "min_p", "min_new_tokens", "top_k")
#: Sampling knobs whose neutral value means "no transform": the one place that rule lives.
NEUTRAL = {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "min_new_tokens": 0, "top_k": 0}
#: The smallest top-k bucket (top-k values are read from a ``topk`` of the bucket's width).
MIN_TOP_K_BUCKET = 64


def is_neutral(name: str, value: float) -> bool:
    """Whether the sampling knob ``name`` at ``value`` leaves the distribution as it is."""
    if name == "top_p":
        return value >= 1.0
    return value == NEUTRAL[name]


def top_k_bucket(top_k: int, vocab: int) -> int:
    """The ``topk`` width a compiled step reads a ``top_k`` knob from: a power of two (at
    least :data:`MIN_TOP_K_BUCKET`) capped at the vocabulary, so nearby values share a graph;
    0 when top-k is off or keeps the whole vocabulary."""
    if top_k <= 0 or top_k >= vocab:
        return 0
    return min(vocab, max(MIN_TOP_K_BUCKET, 1 << (top_k - 1).bit_length()))


@dataclass(frozen=True)
class StepInputs:
    """γ and the sampling knobs as 0-d tensors at fixed addresses (graph inputs).

    Stored as float64 (``min_new_tokens`` as long), so comparing or scaling a tensor by one
    rounds exactly as a Python number would.
    """

    gamma: torch.Tensor
    temperature: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    min_new_tokens: torch.Tensor
    top_k: torch.Tensor

    @classmethod
    def allocate(cls, device: torch.device) -> StepInputs:
        def zero(name: str) -> torch.Tensor:
            integer = name in ("min_new_tokens", "top_k")
            return torch.zeros((), dtype=torch.long if integer else torch.float64, device=device)

        return cls(*(zero(k) for k in KNOBS))

    def fill(self, rules: StepRules) -> None:
        """Set the knobs to those of ``rules`` (a router without γ stores 0)."""
        values = {k: getattr(rules, k) for k in KNOBS if k != "gamma"}
        values["gamma"] = rules.spec.gamma or 0.0
        for name in KNOBS:
            getattr(self, name).fill_(values[name])

    def copy_(self, other: StepInputs) -> None:
        for name in KNOBS:
            getattr(self, name).copy_(getattr(other, name))


@dataclass(frozen=True)
class StepRules:
    """Everything a step needs that stays fixed for a whole decode.

    With ``inputs`` (the graph path), the knobs' values are read from those tensors; the
    numbers held here then only say which knobs are at their neutral value (temperature 1,
    ``top_p`` 1, ``min_p`` 0, ``min_new_tokens`` 0), which changes what the step computes.
    """

    vocab: VocabTables
    spec: RouterSpec
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    min_new_tokens: int = 0
    aligned_starts: bool = True
    aligned_can_stop: bool = True
    pad_id: int = 0
    static_shapes: bool = False
    inputs: StepInputs | None = None

    @classmethod
    def from_params(cls, params, vocab: VocabTables, pad_id: int) -> StepRules:
        """Rules of a :class:`~shared_core.params.GenerationParams`."""
        return cls(
            vocab=vocab,
            spec=params.spec,
            temperature=params.temperature,
            top_k=params.top_k,
            top_p=params.top_p,
            min_p=params.min_p,
            min_new_tokens=params.min_new_tokens,
            aligned_starts=params.aligned_starts,
            aligned_can_stop=params.aligned_can_stop,
            pad_id=pad_id,
        )

    def with_static_shapes(self) -> StepRules:
        return replace(self, static_shapes=True)

    def for_graph(self, inputs: StepInputs) -> StepRules:
        """Fixed shapes, and the knobs read from ``inputs`` (γ included)."""
        spec = self.spec.with_gamma_input(inputs.gamma)
        return replace(self, static_shapes=True, inputs=inputs, spec=spec)

    def structure(self) -> tuple:
        """What a compiled step depends on besides shapes: everything but the knobs'
        values (see :data:`KNOBS`): which knobs are neutral, and the top-k bucket."""
        spec = self.spec
        neutral = tuple(is_neutral(name, getattr(self, name)) for name in NEUTRAL)
        return (
            (spec.name, spec.content_source, self.temperature == 0.0),
            neutral,
            top_k_bucket(self.top_k, self.vocab.size),
            (self.aligned_starts, self.aligned_can_stop, self.pad_id),
        )

    def knob(self, name: str) -> float | torch.Tensor:
        """A sampling knob as a step reads it: its neutral value as a plain number (the
        transform is then skipped), else the graph input when there are inputs, else the
        number."""
        value = getattr(self, name)
        if name in NEUTRAL and is_neutral(name, value):
            return NEUTRAL[name]
        if name == "top_k" and top_k_bucket(value, self.vocab.size) == 0:
            return 0  # keeps the whole vocabulary
        return value if self.inputs is None else getattr(self.inputs, name)


@dataclass
class RowState:
    """Per-row tensors carried from one step to the next (``[rows]`` each)."""

    seeds: torch.Tensor
    sample_index: torch.Tensor
    owner: torch.Tensor  # True: the last token came from the base model
    prev_token: torch.Tensor
    finished: torch.Tensor

    @classmethod
    def start(cls, seeds: torch.Tensor, sample_index: torch.Tensor, pad_id: int) -> RowState:
        rows = seeds.shape[0]
        device = seeds.device
        return cls(
            seeds=seeds,
            sample_index=sample_index,
            owner=torch.zeros(rows, dtype=torch.bool, device=device),
            prev_token=torch.full((rows,), pad_id, dtype=torch.long, device=device),
            finished=torch.zeros(rows, dtype=torch.bool, device=device),
        )

    def select(self, index: torch.Tensor) -> RowState:
        """The rows at ``index`` (finished rows leave the batch)."""
        return RowState(*(t[index] for t in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.seeds, self.sample_index, self.owner, self.prev_token, self.finished)


@dataclass
class StepResult:
    """What a step chose; ``*_broken`` flag rows whose distribution was NaN (None: not run)."""

    token: torch.Tensor
    owner: torch.Tensor
    base_broken: torch.Tensor | None
    aligned_broken: torch.Tensor | None


def decode_step(
    rules: StepRules,
    rows: RowState,
    base_logits: torch.Tensor | None,
    aligned_logits: torch.Tensor | None,
    step: Step,
    *,
    first_step: bool,
    allowed: torch.Tensor | None = None,
    drawable: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
) -> StepResult:
    """Choose every row's next token from both models' raw logits ``[rows, ≥ vocab]``.

    ``allowed`` (``[rows, vocab]`` bool, e.g. a grammar's mask) restricts both models alike.
    ``drawable`` (base, aligned; ``[rows, vocab]`` bool or None) limits what each model's
    candidate is drawn from without changing the router's signals (a remote model's logits
    hold its top-k and a spread tail: the tail counts for the signals, never for a draw).
    Finished rows get ``rules.pad_id``. Updates nothing in place.
    """
    base = clean_logits(rules, base_logits, step, allowed)
    aligned = clean_logits(rules, aligned_logits, step, allowed)
    base_draw, aligned_draw = (
        logits if mask is None or logits is None else logits.masked_fill(~mask, float("-inf"))
        for logits, mask in ((base, drawable[0]), (aligned, drawable[1]))
    )
    base_probs = None if base is None else torch.softmax(base, -1)
    aligned_probs = None if aligned is None else torch.softmax(aligned, -1)
    spec = rules.spec
    if spec.single_model:
        logits, probs, purpose = (
            (base_draw, base_probs, BASE_DRAW)
            if spec.uses_base
            else (aligned_draw, aligned_probs, ALIGNED_DRAW)
        )
        token = draw_candidate(rules, rows, logits, probs, step, purpose)
        owner = torch.full_like(rows.owner, spec.uses_base)
    else:
        route = route_rows(rules, rows, base, aligned, base_probs, aligned_probs, step)
        base_token = draw_candidate(rules, rows, base_draw, base_probs, step, BASE_DRAW)
        aligned_token = draw_candidate(rules, rows, aligned_draw, aligned_probs, step, ALIGNED_DRAW)
        owner, token = apply_guards(
            route,
            rows.owner,
            base_token,
            aligned_token,
            rows.prev_token,
            rules.vocab,
            first_step=first_step,
            aligned_starts=rules.aligned_starts,
            aligned_can_stop=rules.aligned_can_stop,
        )
    return StepResult(
        token=torch.where(rows.finished, rules.pad_id, token),
        owner=owner,
        base_broken=broken_rows(base_probs),
        aligned_broken=broken_rows(aligned_probs),
    )


def clean_logits(
    rules: StepRules, logits: torch.Tensor | None, step: Step, allowed: torch.Tensor | None
) -> torch.Tensor | None:
    """Slice to the tokenizer's vocabulary (padded output layers) and mask banned tokens:
    never-generated ids, end tokens before ``min_new_tokens``, and what ``allowed`` excludes."""
    if logits is None:
        return None
    vocab = rules.vocab
    banned = vocab.never_generate
    if not is_neutral("min_new_tokens", rules.min_new_tokens):
        banned = banned | (vocab.is_end & (step < rules.knob("min_new_tokens")))
    if allowed is not None:
        banned = banned | ~allowed
    return logits[:, : vocab.size].float().masked_fill(banned, float("-inf"))


def broken_rows(probs: torch.Tensor | None) -> torch.Tensor | None:
    """Rows whose distribution is NaN (a NaN anywhere in the logits spreads to the row)."""
    return None if probs is None else probs[:, 0].isnan()


def route_rows(
    rules: StepRules,
    rows: RowState,
    base: torch.Tensor | None,
    aligned: torch.Tensor | None,
    base_probs: torch.Tensor | None,
    aligned_probs: torch.Tensor | None,
    step: Step,
) -> torch.Tensor:
    """The router's per-row decision (True = base), checked for shape."""
    spec = rules.spec
    signals = compute_signals(
        base_probs,
        aligned_probs,
        base,
        aligned,
        rules.vocab,
        content_source=spec.content_source,
        uniform=row_uniforms(rows.seeds, rows.sample_index, step, ROUTER_DRAW),
        step=step,
    )
    route = spec(signals)
    count = rows.seeds.shape[0]
    if not isinstance(route, torch.Tensor) or route.shape != (count,):
        raise TypeError(
            f"router {spec.name!r} must return a bool tensor of shape [{count}], "
            f"got {getattr(route, 'shape', type(route).__name__)}"
        )
    return route.to(torch.bool)


def draw_candidate(
    rules: StepRules,
    rows: RowState,
    logits: torch.Tensor,
    raw_probs: torch.Tensor,
    step: Step,
    purpose: int,
) -> torch.Tensor:
    """One model's candidate token per row, from the row's own random stream."""
    if rules.temperature == 0.0:
        return logits.argmax(-1)
    probs = sampling_probs(
        logits,
        temperature=rules.knob("temperature"),
        top_k=rules.knob("top_k"),
        top_k_width=top_k_bucket(rules.top_k, rules.vocab.size),
        min_p=rules.knob("min_p"),
        raw_probs=raw_probs,
    )
    streams = row_streams(rows.seeds, rows.sample_index, step, purpose)
    return sample_tokens(
        probs, streams, top_p=rules.knob("top_p"), static_shapes=rules.static_shapes
    )


def token_logprobs(
    rules: StepRules,
    base_logits: torch.Tensor | None,
    aligned_logits: torch.Tensor | None,
    result: StepResult,
    step: Step,
    top: int,
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's chosen-token log-probability under the model that produced it (its
    distribution after temperature, before top-k/top-p/min-p truncation; temperature 1 for
    greedy decoding) and that model's ``top`` most likely tokens: ``([rows], [rows, top]
    log-probabilities, [rows, top] ids)``. Masked tokens (never generated, grammar) count
    as impossible, as they were for the draw."""
    base = clean_logits(rules, base_logits, step, allowed)
    aligned = clean_logits(rules, aligned_logits, step, allowed)
    if base is None or aligned is None:
        logits = base if aligned is None else aligned
    else:
        logits = torch.where(result.owner.unsqueeze(-1), base, aligned)
    temperature = rules.temperature if rules.temperature > 0 else 1.0
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    chosen = logprobs.gather(1, result.token.clamp(max=logits.shape[1] - 1).unsqueeze(-1))
    best, ids = logprobs.topk(min(top, logprobs.shape[1]), dim=-1)
    return chosen.squeeze(-1), best, ids
