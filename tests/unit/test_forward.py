"""One forward pass returning the last logits (shared_core/forward.py)."""

from __future__ import annotations

import inspect
import warnings

import torch

from shared_core.forward import _cache_argument, forward_last_logits, run_with_cache


def test_cache_is_passed_under_the_name_the_model_expects(tiny_pair):
    model = tiny_pair.aligned
    name = _cache_argument(type(model).forward)
    assert name in ("cache", "past_key_values")
    assert name in inspect.signature(type(model).forward).parameters
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no deprecation warning about the cache argument
        _, cache = run_with_cache(model, None, input_ids=ids, use_cache=True)
        assert cache is not None and cache.get_seq_length() == 3
        step, cache = run_with_cache(model, cache, input_ids=torch.tensor([[4]]), use_cache=True)
    assert cache.get_seq_length() == 4
    full = model(torch.tensor([[1, 2, 3, 4]])).logits[0, -1]
    torch.testing.assert_close(step.logits[0, -1], full, rtol=1e-4, atol=1e-4)


def test_forward_last_logits_continues_a_cache(tiny_pair):
    model = tiny_pair.base
    ids = torch.tensor([[5, 6, 7, 8]])
    mask = torch.ones_like(ids)
    positions = torch.arange(4).unsqueeze(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first, cache = forward_last_logits(model, ids[:, :3], mask[:, :3], positions[:, :3], None)
        last, cache = forward_last_logits(model, ids[:, 3:], mask, positions[:, 3:], cache)
    expected = model(ids).logits[0, -1, : last.shape[-1]].float()
    torch.testing.assert_close(last[0], expected, rtol=1e-4, atol=1e-4)
    assert first.shape == last.shape
