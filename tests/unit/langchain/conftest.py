"""Fixtures for the ChatBaco unit tests: the tiny random pair on disk, and no network."""

from __future__ import annotations

import pytest
from pytest_socket import disable_socket, enable_socket


@pytest.fixture(autouse=True)
def _no_network() -> object:
    """Unit tests run with sockets disabled (AF_UNIX stays allowed for asyncio's loop)."""
    disable_socket(allow_unix_socket=True)
    yield
    enable_socket()
