"""Fixtures for the LlamaIndex adapter's integration tests: the tiny random pair, saved to disk."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")
torch = pytest.importorskip("torch")

from llama_index_baco import Baco  # noqa: E402
from shared_core.testing import save_tiny_pair  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # The tiny models are latency-bound: on a shared 2-core machine, several intra-op threads
    # make each step ~10x slower than one thread does.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """Folders of the tiny random pair (built once per session, loaded by path)."""
    base, aligned = save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))
    return str(base), str(aligned)


@pytest.fixture
def llm(tiny_pair: tuple[str, str]) -> Baco:
    """A ``Baco`` on the tiny pair; ``min_tokens`` keeps the random models from stopping early."""
    base, aligned = tiny_pair
    return Baco(base_model=base, aligned_model=aligned, max_tokens=8, min_tokens=4, seed=11)
