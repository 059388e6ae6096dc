"""Fixtures for the ChatBaco integration tests: the tiny random pair on disk."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Paths of the tiny random base/aligned pair, built once per session."""
    from shared_core.testing import save_tiny_pair

    base, aligned = save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))
    return str(base), str(aligned)
