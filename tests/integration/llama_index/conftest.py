"""Fixtures for the LlamaIndex adapter's integration tests: ``Baco`` on the tiny random pair.

The pair itself is ``tiny_pair_paths`` from tests/conftest.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")
torch = pytest.importorskip("torch")

from llama_index_baco import Baco  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> None:
    # The tiny models are latency-bound: on a shared 2-core machine, several intra-op threads
    # make each step ~10x slower than one thread does.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def llm(tiny_pair_paths: tuple[Path, Path]) -> Baco:
    """A ``Baco`` on the tiny pair; ``min_tokens`` keeps the random models from stopping early."""
    base, aligned = map(str, tiny_pair_paths)
    return Baco(base_model=base, aligned_model=aligned, max_tokens=8, min_tokens=4, seed=11)
