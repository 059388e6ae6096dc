"""Fixtures for the ChatBaco unit tests: the tiny random pair on disk, and no network."""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Paths of the tiny random base/aligned pair, built once per session."""
    from shared_core.testing import save_tiny_pair

    base, aligned = save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))
    return str(base), str(aligned)


@pytest.fixture(autouse=True)
def _no_network() -> object:
    """Unit tests run with sockets disabled (AF_UNIX stays allowed for asyncio's loop)."""
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()
