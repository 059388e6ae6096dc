"""Shared fixtures: a tiny random model pair built in-process and saved to a temp folder."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

# The tiny test models are far too small to gain from intra-op threads; on a shared 2-core
# machine one thread is ~10x faster. Tests of real models raise this in their own fixtures.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pair_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(base folder, aligned folder) of the tiny pair, saved once per test session."""
    from shared_core.testing import save_tiny_pair

    return save_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


@pytest.fixture(scope="session")
def tiny_tool_pair_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny pair with a 2048-token window: room for tool descriptions (the tiny
    tokenizer needs about a token per two characters). Same weights as ``tiny_pair_paths``."""
    from shared_core.testing import save_tiny_pair

    return save_tiny_pair(tmp_path_factory.mktemp("tiny_tool_pair"), context_window=2048)


@pytest.fixture(scope="session")
def tiny_pair(tiny_pair_paths: tuple[Path, Path]):
    """The tiny pair loaded by path through the public loader."""
    from shared_core import ModelPair

    base, aligned = tiny_pair_paths
    return ModelPair.from_pretrained(str(base), str(aligned))


@pytest.fixture(scope="session")
def tiny_engine(tiny_pair):
    from shared_core import BacoEngine

    return BacoEngine(tiny_pair)


@pytest.fixture(scope="session")
def tiny_one_weights_pair(tiny_pair_paths: tuple[Path, Path], tmp_path_factory):
    """The tiny base model with a random LoRA adapter as its aligned view (one set of
    weights, ``pair.shares_weights``)."""
    pytest.importorskip("peft", reason="one-weights pairs need peft (in the dev extra)")
    from shared_core import ModelPair
    from shared_core.testing import save_tiny_adapter

    base, _ = tiny_pair_paths
    adapter = save_tiny_adapter(base, tmp_path_factory.mktemp("tiny_adapter") / "adapter")
    return ModelPair.from_pretrained(base, aligned_adapter=adapter)


@pytest.fixture(scope="module")
def fake_servers(tiny_pair):
    """In-process completion servers (base, aligned) backed by the tiny pair, for
    ``RemotePair`` tests (one pair per test module)."""
    from shared_core.testing_server import FakeCompletionServer

    ends, tok = tiny_pair.end_ids, tiny_pair.tokenizer
    with (
        FakeCompletionServer(tiny_pair.base, name="tiny-base", end_ids=ends, tokenizer=tok) as base,
        FakeCompletionServer(
            tiny_pair.aligned, name="tiny-aligned", end_ids=ends, tokenizer=tok
        ) as aligned,
    ):
        yield base, aligned


SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _import_script(name: str) -> ModuleType:
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="session")
def import_script():
    """``import_script(name)`` imports ``scripts/<name>.py`` (scripts import each other, so
    the folder is on the path while one loads)."""
    return _import_script
