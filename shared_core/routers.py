"""Routers: which model's distribution to sample from at each step (True = base).

A router is any callable ``(RouterSignals) -> torch.BoolTensor[batch]``. The built-in ones
are the heuristics of BACO (arXiv 2511.05650) and are looked up by name through
:func:`resolve_router`. Everything here is vectorised over the batch.

==========  ==============================================  ======================
name        routes to the base model when                   gamma
==========  ==============================================  ======================
aligned     never                                           -
base        always                                          -
rand        with probability gamma                          [0, 1]
p           base top-1 probability < gamma (>= 1: always)   >= 0
h           base entropy (nats) > gamma                     >= 0
punc        top-1 token is not punctuation/formatting       -
fc          top-1 token is not a function word              -
p-punc      punc says base and p says base                  >= 0
h-punc      punc says base and h says base                  >= 0
p-fc        fc says base and p says base                    >= 0
nudging     base top-1 probability >= gamma (Nudging)       [0, 1]
==========  ==============================================  ======================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from .vocab import VocabTables


@dataclass(frozen=True)
class RouterSignals:
    """Per-row signals computed from each model's constrained (temperature-1) distribution:
    the logits with never-generated tokens, end tokens before ``min_new_tokens`` and a
    grammar's exclusions removed, before temperature and truncation (docs/design.md §2).

    Tensors have shape ``[batch]``. ``top1`` is the argmax token of the content-source model;
    ``uniform`` is a per-row random number in (0, 1) from the sample's own random stream.
    Logits are ``None`` for a model that is not run by a single-model router.
    """

    p_base: torch.Tensor
    h_base: torch.Tensor
    p_aligned: torch.Tensor
    h_aligned: torch.Tensor
    top1: torch.Tensor
    top1_is_punct: torch.Tensor
    top1_is_function_word: torch.Tensor
    uniform: torch.Tensor
    step: int | torch.Tensor
    base_logits: torch.Tensor | None
    aligned_logits: torch.Tensor | None
    vocab: VocabTables


RouterFn = Callable[[RouterSignals], torch.Tensor]


@dataclass(frozen=True)
class RouterSpec:
    """A resolved router: the decision function plus what the engine needs to know about it."""

    name: str
    gamma: float | None
    decide: RouterFn
    uses_base: bool = True
    uses_aligned: bool = True
    content_source: str = "base"
    source: object = None

    @property
    def reads_only_base(self) -> bool:
        """True for a built-in two-model router whose decision reads only base signals
        (every built-in with ``content_source="base"``); a callable may read anything."""
        return (
            isinstance(self.source, str)
            and not self.single_model
            and (self.content_source == "base")
        )

    @property
    def single_model(self) -> bool:
        """True for the ``base``/``aligned`` baselines (exact single-model decoding)."""
        return not (self.uses_base and self.uses_aligned)

    def __call__(self, signals: RouterSignals) -> torch.Tensor:
        return self.decide(signals)

    def decide_rows(self, signals: RouterSignals, gamma: torch.Tensor) -> torch.Tensor:
        """The decision with γ read per row from ``gamma`` (``[rows]`` float64): rows of
        one built-in router with different γ share one call. Callables decide as they are."""
        if self.gamma is None or not isinstance(self.source, str):
            return self.decide(signals)
        return _BUILTINS[self.name].build(gamma)(signals)

    def with_gamma_input(self, gamma: torch.Tensor) -> RouterSpec:
        """This built-in router deciding with γ read from ``gamma`` (a 0-d float64 tensor)
        instead of a constant, so one compiled graph serves every γ. Routers without a knob,
        and callables, are returned unchanged."""
        if self.gamma is None or not isinstance(self.source, str):
            return self
        return replace(self, decide=_BUILTINS[self.name].build(gamma))


@dataclass(frozen=True)
class _Builtin:
    gamma_low: float | None
    gamma_high: float | None
    default_gamma: float | None
    build: Callable[[float | None], RouterFn]
    doc: str


def _content_rule(signals: RouterSignals) -> torch.Tensor:
    return ~(signals.top1_is_punct | signals.vocab.is_special[signals.top1])


def _fc_rule(signals: RouterSignals) -> torch.Tensor:
    return ~(signals.top1_is_function_word | signals.vocab.is_special[signals.top1])


def _p_rule(gamma: float | torch.Tensor) -> Callable[[RouterSignals], torch.Tensor]:
    """Base where ``p_base < γ``; every row at γ >= 1 (a top-1 probability of exactly 1
    would otherwise still go to the aligned model at γ = 1). ``gamma`` may be a 0-d tensor
    (a graph input), so the γ >= 1 case is a tensor operation, not a branch."""
    return lambda s: (s.p_base < gamma) | (gamma >= 1.0)


_BUILTINS: dict[str, _Builtin] = {
    "aligned": _Builtin(
        None,
        None,
        None,
        lambda g: lambda s: torch.zeros_like(s.p_base, dtype=torch.bool),
        "aligned model only",
    ),
    "base": _Builtin(
        None,
        None,
        None,
        lambda g: lambda s: torch.ones_like(s.p_base, dtype=torch.bool),
        "base model only",
    ),
    "rand": _Builtin(0.0, 1.0, 0.5, lambda g: lambda s: s.uniform < g, "base with probability γ"),
    "p": _Builtin(0.0, math.inf, 0.3, _p_rule, "base if p_base < γ"),
    "h": _Builtin(0.0, math.inf, 2.0, lambda g: lambda s: s.h_base > g, "base if h_base > γ"),
    "punc": _Builtin(None, None, None, lambda g: _content_rule, "base unless top-1 is punct"),
    "fc": _Builtin(None, None, None, lambda g: _fc_rule, "base unless top-1 is a function word"),
    "p-punc": _Builtin(
        0.0, math.inf, 0.3, lambda g: lambda s: _content_rule(s) & _p_rule(g)(s), "punc and p"
    ),
    "h-punc": _Builtin(
        0.0, math.inf, 2.0, lambda g: lambda s: _content_rule(s) & (s.h_base > g), "punc and h"
    ),
    "p-fc": _Builtin(
        0.0, math.inf, 0.3, lambda g: lambda s: _fc_rule(s) & _p_rule(g)(s), "fc and p"
    ),
    "nudging": _Builtin(0.0, 1.0, 0.3, lambda g: lambda s: s.p_base >= g, "aligned if p_base < γ"),
}

#: Valid router names, in the order of the table above.
ROUTER_NAMES: tuple[str, ...] = tuple(_BUILTINS)
CONTENT_SOURCES = ("base", "aligned")


def canonical_router_name(name: str) -> str:
    """Lower-case, ``_``→``-``; raise ``ValueError`` listing valid names for an unknown one."""
    if not isinstance(name, str):
        raise TypeError(f"router must be a name or a callable, got {type(name).__name__}")
    key = name.strip().lower().replace("_", "-")
    if key not in _BUILTINS:
        raise ValueError(f"unknown router {name!r}; valid routers: {', '.join(ROUTER_NAMES)}")
    return key


def default_gamma(name: str) -> float | None:
    """The gamma a router uses when none is given (``None`` for routers without one)."""
    return _BUILTINS[canonical_router_name(name)].default_gamma


def resolve_router(
    router: str | RouterSpec | RouterFn,
    gamma: float | None = None,
    *,
    content_source: str = "base",
) -> RouterSpec:
    """Turn a router name (or callable) and gamma into a validated :class:`RouterSpec`.

    The ``p``-family accepts any gamma >= 0 (a gamma above 1 routes every step to the base,
    which is useful as an extreme); ``rand`` and ``nudging`` need gamma in [0, 1]; ``h``
    takes nats >= 0. Routers without a knob ignore ``gamma``.
    """
    if content_source not in CONTENT_SOURCES:
        raise ValueError(f"content_source must be one of {CONTENT_SOURCES}, got {content_source!r}")
    if isinstance(router, RouterSpec):
        router = router.source
    if callable(router) and not isinstance(router, str):
        if gamma is not None:
            gamma = _check_gamma("custom router", gamma, 0.0, math.inf)
        name = getattr(router, "__name__", type(router).__name__)
        return RouterSpec(
            name=str(name),
            gamma=gamma,
            decide=router,
            content_source=content_source,
            source=router,
        )
    name = canonical_router_name(router)  # type: ignore[arg-type]
    builtin = _BUILTINS[name]
    if builtin.gamma_low is None:
        gamma = None  # routers without a knob ignore gamma (e.g. a model-wide default)
    else:
        gamma = builtin.default_gamma if gamma is None else gamma
        gamma = _check_gamma(name, gamma, builtin.gamma_low, builtin.gamma_high)
    return RouterSpec(
        name=name,
        gamma=gamma,
        decide=builtin.build(gamma),
        uses_base=name != "aligned",
        uses_aligned=name != "base",
        content_source=content_source,
        source=name,
    )


def _check_gamma(name: str, gamma: object, low: float, high: float) -> float:
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
        raise TypeError(f"gamma must be a number, got {type(gamma).__name__}")
    if not math.isfinite(gamma) or not low <= gamma <= high:
        allowed = f"[{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"gamma for router {name!r} must be finite and {allowed}, got {gamma}")
    return float(gamma)


def compute_signals(
    base_probs: torch.Tensor | None,
    aligned_probs: torch.Tensor | None,
    base_logits: torch.Tensor | None,
    aligned_logits: torch.Tensor | None,
    vocab: VocabTables,
    *,
    content_source: str | torch.Tensor,
    uniform: torch.Tensor,
    step: int | torch.Tensor,
) -> RouterSignals:
    """Signals from each model's next-token distribution ``[batch, vocab]`` (the engine
    passes the constrained one, see :class:`RouterSignals`).

    ``*_probs`` are the temperature-1 softmax of ``*_logits`` (passed in because the engine
    reuses them for sampling). A model that is not run contributes NaN signals.
    ``content_source`` is ``"base"``/``"aligned"``, or per row a bool tensor (True: the
    aligned model's top-1 token); ``step`` is the decode step (per row: a tensor).
    """
    reference = base_probs if base_probs is not None else aligned_probs
    if reference is None:
        raise ValueError("compute_signals needs at least one model's distribution")
    nan = torch.full(reference.shape[:1], float("nan"), device=reference.device)

    def stats(probs: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if probs is None:
            return nan, nan
        return probs.max(-1).values, torch.special.entr(probs).sum(-1)

    p_base, h_base = stats(base_probs)
    p_aligned, h_aligned = stats(aligned_probs)
    if isinstance(content_source, torch.Tensor):  # per row: True reads the aligned model
        if base_probs is None or aligned_probs is None:
            top1 = reference.argmax(-1)
        else:
            top1 = torch.where(content_source, aligned_probs.argmax(-1), base_probs.argmax(-1))
    else:
        content = aligned_probs if content_source == "aligned" else base_probs
        top1 = (content if content is not None else reference).argmax(-1)
    return RouterSignals(
        p_base=p_base,
        h_base=h_base,
        p_aligned=p_aligned,
        h_aligned=h_aligned,
        top1=top1,
        top1_is_punct=vocab.is_punct[top1],
        top1_is_function_word=vocab.is_function_word[top1],
        uniform=uniform,
        step=step,
        base_logits=base_logits,
        aligned_logits=aligned_logits,
        vocab=vocab,
    )


def apply_guards(
    route_to_base: torch.Tensor,
    prev_owner_base: torch.Tensor,
    base_candidate: torch.Tensor,
    aligned_candidate: torch.Tensor,
    prev_token: torch.Tensor,
    vocab: VocabTables,
    *,
    first_step: bool | torch.Tensor,
    aligned_starts: bool | torch.Tensor,
    aligned_can_stop: bool | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the word-boundary, start and end guards; return ``(owner_is_base, token)``.

    A change of owner takes effect only where both candidates start a new word, or right
    after a token that ends in whitespace/newline. The aligned model owns the first word
    (``aligned_starts``) and may always end the response (``aligned_can_stop``). Each flag
    is one bool for the batch or a ``[rows]`` bool tensor.
    """
    boundary = (
        vocab.is_word_start[base_candidate] & vocab.is_word_start[aligned_candidate]
    ) | vocab.ends_with_space[prev_token]
    later = torch.where(boundary, route_to_base, prev_owner_base)
    if isinstance(aligned_starts, torch.Tensor):
        first = route_to_base & ~aligned_starts
    else:
        first = torch.zeros_like(route_to_base) if aligned_starts else route_to_base
    if isinstance(first_step, torch.Tensor):
        owner = torch.where(first_step, first, later)
    else:
        owner = first if first_step else later
    stops = vocab.is_end[aligned_candidate]
    if isinstance(aligned_can_stop, torch.Tensor):
        owner = owner & ~(stops & aligned_can_stop)
    elif aligned_can_stop:
        owner = owner & ~stops
    token = torch.where(owner, base_candidate, aligned_candidate)
    return owner, token
