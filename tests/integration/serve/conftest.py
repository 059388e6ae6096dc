"""Fixtures for the ``baco serve`` tests: the tiny pair behind a real uvicorn server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from serve_helpers import LiveServer, run_server


@pytest.fixture(scope="session")
def server(tiny_engine: Any) -> Iterator[LiveServer]:
    """The tiny pair behind a server with default settings."""
    with run_server(tiny_engine, model_name="tiny-baco") as live:
        yield live


@pytest.fixture(scope="session")
def model_name() -> str:
    return "tiny-baco"
