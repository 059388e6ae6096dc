"""Validated decoding settings shared by the engine, the CLI and both framework adapters."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from .routers import RouterSpec, canonical_router_name, resolve_router

if TYPE_CHECKING:
    from .structured import Constraint

#: Upper bounds that turn an accidental huge request into a clear error instead of an OOM.
MAX_SAMPLES = 4096
MAX_NEW_TOKENS = 131072
#: OpenAI's limit on ``top_logprobs``.
MAX_TOP_LOGPROBS = 20


def _check_number(name: str, value: Any, *, low: float, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        bounds = f"[{low}, {high}]" if math.isfinite(high) else f">= {low}"
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


def normalise_stop(stop: str | Sequence[str] | None) -> tuple[str, ...]:
    """Stop strings as a tuple; a single string is one stop string."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, Sequence):
        raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    out = []
    for i, s in enumerate(stop):
        if not isinstance(s, str):
            raise TypeError(f"stop[{i}] must be a string, got {type(s).__name__}")
        if not s:
            raise ValueError(f"stop[{i}] is an empty string; remove it")
        out.append(s)
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class GenerationParams:
    """Every per-call decoding option, validated on construction.

    ``gamma=None`` selects the router's default. ``temperature=0`` is greedy decoding.
    ``top_k=0`` and ``top_p=1`` / ``min_p=0`` disable those filters. ``json_schema``
    constrains the response with a grammar: a JSON-schema dict (or its JSON text), ``True``
    for any JSON object, or a :class:`~shared_core.structured.Constraint` (e.g. tool calls);
    it is compiled (and an unsupported schema rejected) here, before any model work.
    ``logprobs`` (``None``: off; 0 … 20) records each generated token's log-probability under
    the model that produced it and that many top alternatives of that model's distribution
    (:class:`~shared_core.types.TokenLogprob`).
    """

    router: str | RouterSpec | Any = "p-punc"
    gamma: float | None = None
    content_source: str = "base"
    aligned_starts: bool = True
    aligned_can_stop: bool = True
    n: int = 1
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: Any = None
    logprobs: int | None = None

    def __post_init__(self) -> None:
        spec = resolve_router(self.router, self.gamma, content_source=self.content_source)
        object.__setattr__(self, "router", spec)
        object.__setattr__(self, "gamma", spec.gamma)
        for flag in ("aligned_starts", "aligned_can_stop"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be a bool")
        _check_int("n", self.n, low=1, high=MAX_SAMPLES)
        _check_int("max_new_tokens", self.max_new_tokens, low=1, high=MAX_NEW_TOKENS)
        _check_int("min_new_tokens", self.min_new_tokens, low=0, high=self.max_new_tokens)
        object.__setattr__(
            self, "temperature", _check_number("temperature", self.temperature, low=0.0)
        )
        object.__setattr__(self, "top_p", _check_number("top_p", self.top_p, low=0.0, high=1.0))
        if self.top_p == 0.0:
            raise ValueError("top_p must be in (0, 1]; use temperature=0 for greedy decoding")
        _check_int("top_k", self.top_k, low=0, high=2**31 - 1)
        object.__setattr__(self, "min_p", _check_number("min_p", self.min_p, low=0.0, high=1.0))
        object.__setattr__(self, "stop", normalise_stop(self.stop))
        if self.seed is not None:
            _check_int("seed", self.seed, low=0, high=2**63 - 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, low=0, high=MAX_TOP_LOGPROBS)
        if self.json_schema is not None:
            from .structured import as_constraint

            object.__setattr__(self, "json_schema", as_constraint(self.json_schema))

    @property
    def constraint(self) -> Constraint | None:
        """The compiled grammar of ``json_schema`` (``None``: unconstrained)."""
        return self.json_schema  # type: ignore[return-value]

    @property
    def spec(self) -> RouterSpec:
        """The resolved router (``router`` after validation)."""
        return self.router  # type: ignore[return-value]

    def _same_router(self, router: Any) -> bool:
        """True if ``router`` names (or is) the router already configured."""
        spec = self.spec
        if isinstance(router, RouterSpec):
            return router.name == spec.name and router.source == spec.source
        if isinstance(router, str):
            try:
                return isinstance(spec.source, str) and canonical_router_name(
                    router
                ) == canonical_router_name(spec.source)
            except (TypeError, ValueError):
                return False  # reported by validation below
        return router is spec.source

    def with_overrides(self, **overrides: Any) -> GenerationParams:
        """A validated copy with ``overrides`` applied; ``None`` values are ignored."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown generation option(s) {unknown}; valid: {sorted(known)}")
        clean = {k: v for k, v in overrides.items() if v is not None}
        if "router" in clean and "gamma" not in clean and not self._same_router(clean["router"]):
            clean["gamma"] = None  # a different router starts from its own default gamma
        if isinstance(self.router, RouterSpec) and "router" not in clean:
            clean["router"] = self.router.source
        return replace(self, **clean)
