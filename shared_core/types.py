"""Result and event types returned by the engine (plain dataclasses, framework-free)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Source = Literal["base", "aligned"]
FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class Usage:
    """Token counts of one sample: the aligned prompt and the generated tokens."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position, under the model that produced it."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model that produced it (``source``),
    from that model's distribution after temperature (before top-k/top-p/min-p truncation),
    with its ``top_logprobs`` alternatives. ``token`` is the part of the returned text this
    token contributes: the tokens of a sample spell its text exactly (``""`` for a token
    that only starts a multi-byte character or is leading whitespace the text drops);
    ``bytes`` are its UTF-8 bytes. Alternatives are tokens decoded on their own."""

    token: str
    token_id: int
    logprob: float
    bytes: list[int]
    source: Source
    top_logprobs: list[TopLogprob] = field(default_factory=list)

    def openai(self) -> dict[str, Any]:
        """This entry as an item of OpenAI's chat ``logprobs.content``, plus ``source`` (a
        BACO extension); impossible alternatives at OpenAI's floor of -9999."""
        return {
            "token": self.token,
            "logprob": max(self.logprob, -9999.0),
            "bytes": self.bytes,
            "top_logprobs": [
                {"token": t.token, "logprob": max(t.logprob, -9999.0), "bytes": t.bytes}
                for t in self.top_logprobs
            ],
            "source": self.source,
        }


@dataclass(frozen=True)
class Generation:
    """One finished sample.

    ``token_ids`` and ``sources`` are aligned element by element; ``sources[i]`` names the
    model whose distribution produced ``token_ids[i]``. An end token that finished the
    sample is not part of ``token_ids`` (nor of ``text``), but it is counted in ``usage``.
    ``finish_reason`` is ``"error"`` (with the reason in ``error``) for a grammar-constrained
    sample that could not continue; ``generate`` raises for it, ``stream`` reports it here.
    """

    text: str
    token_ids: list[int]
    sources: list[Source]
    finish_reason: FinishReason
    usage: Usage
    router: str
    gamma: float | None
    prompt_index: int = 0
    sample_index: int = 0
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None

    @property
    def base_share(self) -> float:
        """Fraction of generated tokens that came from the base model."""
        if not self.sources:
            return 0.0
        return sum(s == "base" for s in self.sources) / len(self.sources)

    @property
    def switches(self) -> int:
        """Number of times the producing model changed between consecutive tokens."""
        return sum(a != b for a, b in zip(self.sources, self.sources[1:], strict=False))

    def statistics(self) -> dict[str, object]:
        """BACO statistics as a flat dict (what the adapters put into response metadata)."""
        return {
            "router": self.router,
            "gamma": self.gamma,
            "base_share": self.base_share,
            "switches": self.switches,
        }


@dataclass(frozen=True)
class StreamEvent:
    """One increment of a streamed generation.

    A token event has ``token_id``/``source`` set and ``text_delta`` holding the text that
    became final with it (possibly ``""`` while a multi-byte character or a possible stop
    string is pending). The last event of a sample carries ``generation`` (its complete
    result) and may carry a final ``text_delta`` with no token.
    """

    row: int
    text_delta: str
    token_id: int | None = None
    source: Source | None = None
    prompt_index: int = 0
    sample_index: int = 0
    generation: Generation | None = field(default=None, repr=False)
    #: log-probabilities of the tokens whose text became visible with this event (when asked)
    logprobs: list[TokenLogprob] | None = None

    @property
    def is_final(self) -> bool:
        return self.generation is not None
