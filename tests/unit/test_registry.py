"""The process-wide engine cache (shared_core/registry.py)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from shared_core import registry


@pytest.fixture
def fake_loads(monkeypatch, tiny_pair):
    """``ModelPair.from_pretrained`` replaced by a loader that records calls and can block."""
    calls: list[str] = []
    gates: dict[str, threading.Event] = {}

    def load(base, aligned, **kwargs):
        calls.append(base)
        gate = gates.get(base)
        if gate is not None:
            assert gate.wait(10), "test gate never opened"
        return tiny_pair

    monkeypatch.setattr(registry.ModelPair, "from_pretrained", staticmethod(load))
    registry.clear_engines()
    yield calls, gates
    registry.clear_engines()


def test_dtype_spellings_share_one_engine(fake_loads):
    calls, _ = fake_loads
    one = registry.get_engine("b", "a", dtype=torch.bfloat16)
    two = registry.get_engine("b", "a", dtype="bfloat16")
    three = registry.get_engine("b", "a", dtype="torch.bfloat16")
    assert one is two is three and calls == ["b"]
    assert registry.get_engine("b", "a", dtype="float32") is not one


def test_loading_one_pair_does_not_block_another(fake_loads):
    calls, gates = fake_loads
    gates["slow"] = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(registry.get_engine, "slow", "a")
        while "slow" not in calls:  # the slow load has started and holds its own lock only
            threading.Event().wait(0.01)
        fast = pool.submit(registry.get_engine, "fast", "a")
        fast.result(10)  # returns while the slow pair is still loading
        assert not slow.done()
        gates["slow"].set()
        slow.result(10)
    assert sorted(calls) == ["fast", "slow"]


def test_concurrent_callers_of_one_pair_load_it_once(fake_loads):
    calls, gates = fake_loads
    gates["same"] = threading.Event()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(registry.get_engine, "same", "a") for _ in range(4)]
        while "same" not in calls:
            threading.Event().wait(0.01)
        gates["same"].set()
        engines = {id(f.result(10)) for f in futures}
    assert len(engines) == 1 and calls == ["same"]


def test_only_one_model_is_an_error_before_any_load(fake_loads):
    calls, _ = fake_loads
    with pytest.raises(ValueError, match="aligned"):
        registry.get_engine("b", None)
    assert calls == []
