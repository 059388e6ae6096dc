"""Fixtures for the LlamaIndex adapter's unit tests: tiny pair configs and a fake engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from shared_core.testing import engine_stream_events
from shared_core.types import Generation, StreamEvent, Usage


class FakeEngine:
    """Records the options it is called with and answers with fixed text (no model).

    Streams follow ``BacoEngine.stream``: with ``finish_reason="length"`` (the default) the
    last token's event is the final one; with ``"stop"`` the sample ended on an end token and
    a final event without a token follows.
    """

    PIECES = ("Hel", "", "lo", " world")

    def __init__(self, finish_reason: str = "length") -> None:
        self.finish_reason = finish_reason
        self.pair = SimpleNamespace(context_window=1024)
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def _generation(self, index: int, options: dict[str, Any]) -> Generation:
        text = "".join(self.PIECES) + ("" if index == 0 else f" #{index}")
        return Generation(
            text=text,
            token_ids=[1, 2, 3, 4],
            sources=["aligned", "base", "base", "aligned"],
            finish_reason=self.finish_reason,  # type: ignore[arg-type]
            usage=Usage(prompt_tokens=5, completion_tokens=4),
            router=str(options.get("router", "p-punc")),
            gamma=options.get("gamma"),
            sample_index=index,
        )

    def generate(
        self, prompt: Any, *, return_exceptions: bool = False, **options: Any
    ) -> list[list[Generation]]:
        self.calls.append(("generate", prompt, options))
        return [[self._generation(i, options) for i in range(options.get("n", 1))]]

    def stream(self, prompt: Any, **options: Any) -> Iterator[StreamEvent]:
        self.calls.append(("stream", prompt, options))
        return engine_stream_events(self._generation(0, options), self.PIECES)


@pytest.fixture
def fake_engine(monkeypatch: pytest.MonkeyPatch) -> FakeEngine:
    """Make every ``Baco`` use a :class:`FakeEngine` instead of loading models."""
    engine = FakeEngine()
    monkeypatch.setattr("llama_index_baco.base.get_engine", lambda **_: engine)
    return engine


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything asks for an engine (i.e. would load weights)."""

    def refuse(**_: Any) -> None:
        raise AssertionError("an engine was requested: weights would be loaded")

    monkeypatch.setattr("llama_index_baco.base.get_engine", refuse)
    monkeypatch.setattr("shared_core.registry.get_engine", refuse)


@pytest.fixture
def empty_baco_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``$BACO_HOME`` where the demo base has not been built."""
    monkeypatch.setenv("BACO_HOME", str(tmp_path))
    return tmp_path
