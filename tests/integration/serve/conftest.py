"""Fixtures for the ``baco serve`` tests: the tiny pair behind a real uvicorn server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import GateRouter, LiveServer, run_server


@pytest.fixture(scope="session")
def server(tiny_engine: Any) -> Iterator[LiveServer]:
    """The tiny pair behind a server with default settings."""
    with run_server(tiny_engine, model_name="tiny-baco") as live:
        yield live


@pytest.fixture(scope="session")
def model_name() -> str:
    return "tiny-baco"


@pytest.fixture
def gate() -> Iterator[GateRouter]:
    """A gate router; opened again after the test so no decode stays held."""
    router = GateRouter()
    yield router
    router.open()


@pytest.fixture
def gated_engine(tiny_pair: Any, gate: GateRouter) -> Any:
    """An engine on the tiny pair whose default router is ``gate``."""
    from shared_core import BacoEngine, GenerationParams

    return BacoEngine(tiny_pair, GenerationParams(router=gate))
