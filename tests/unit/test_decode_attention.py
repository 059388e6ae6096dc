"""One-token attention of the graph path (shared_core/decode_attention.py)."""

from __future__ import annotations

import pytest
import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from shared_core import BacoEngine, decode_attention
from shared_core.engine import DecodeOptions
from shared_core.testing import build_tiny_model


class _Attention(torch.nn.Module):
    num_key_value_groups = 4


def _inputs(query_length: int = 1):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(6, 8, query_length, 16, generator=generator)
    key = torch.randn(6, 2, 40, 16, generator=generator)
    value = torch.randn(6, 2, 40, 16, generator=generator)
    mask = torch.ones(6, 1, query_length, 40, dtype=torch.bool)
    mask[:, :, :, 30:] = False  # columns not written yet
    mask[1, :, :, :5] = False  # left padding
    return query, key, value, mask


def test_one_token_attention_equals_attention_on_repeated_heads():
    query, key, value, mask = _inputs()
    out, _ = decode_attention.grouped_one_token_attention(query, key, value, mask, 4, 0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, repeat_kv(key, 4), repeat_kv(value, 4), attn_mask=mask, scale=0.25
    )
    assert out.shape == (6, 1, 8, 16)
    torch.testing.assert_close(out, expected.transpose(1, 2))


@pytest.mark.parametrize("query_length", [1, 3])
def test_outside_compilation_it_is_exactly_transformers_sdpa(query_length):
    """Other threads' eager forwards run while the switch is on: they must not change."""
    query, key, value, mask = _inputs(query_length=query_length)
    module = _Attention()
    got, _ = decode_attention.one_token_attention(module, query, key, value, mask, scaling=0.25)
    expected, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.25)
    assert torch.equal(got, expected)


def test_inside_compilation_one_grouped_token_takes_the_packed_path(monkeypatch):
    query, key, value, mask = _inputs()
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    got, _ = decode_attention.one_token_attention(
        _Attention(), query, key, value, mask, scaling=0.25
    )
    expected, _ = decode_attention.grouped_one_token_attention(query, key, value, mask, 4, 0.25)
    assert torch.equal(got, expected)


def test_overlapping_switches_restore_sdpa_when_the_last_ends():
    config = build_tiny_model(50, 0).config
    first = decode_attention.decode_attention([config])
    second = decode_attention.decode_attention([config])
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert config._attn_implementation == decode_attention.ATTENTION_NAME  # one still runs
    second.__exit__(None, None, None)
    assert config._attn_implementation == "sdpa"


def test_the_context_switches_sdpa_models_only_and_restores_them():
    sdpa = build_tiny_model(50, 0).config
    eager = build_tiny_model(50, 1).config
    eager._attn_implementation = "eager"
    assert sdpa._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), decode_attention.decode_attention([sdpa, eager, sdpa]):
        assert sdpa._attn_implementation == decode_attention.ATTENTION_NAME
        assert eager._attn_implementation == "eager"
        raise RuntimeError
    assert (sdpa._attn_implementation, eager._attn_implementation) == ("sdpa", "eager")


def test_a_model_under_the_context_gives_the_sdpa_logits():
    model = build_tiny_model(50, 0)
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    attention = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        prompt = model(input_ids=ids[:, :4], attention_mask=attention[:, :4], use_cache=True)
        expected = model(input_ids=ids[:, 4:], attention_mask=attention, cache=prompt.cache).logits
        prompt = model(input_ids=ids[:, :4], attention_mask=attention[:, :4], use_cache=True)
        with decode_attention.decode_attention([model.config]):
            got = model(
                input_ids=ids[:, 4:],
                attention_mask=attention,
                cache=prompt.cache,
            ).logits
    torch.testing.assert_close(got, expected)


def test_the_graph_path_decodes_with_one_token_attention(tiny_pair, monkeypatch):
    calls = []
    original = decode_attention.one_token_attention

    def spy(module, query, *args, **kwargs):
        calls.append(query.shape[2])
        return original(module, query, *args, **kwargs)

    monkeypatch.setattr(decode_attention, "one_token_attention", spy)
    # graph_wait: the step is built in the decode, so no eager forward of another thread
    # (which the switch leaves on sdpa, tested above) runs while the switch is on
    options = DecodeOptions(graph=True, graph_backend="eager", graph_wait=True)
    engine = BacoEngine(tiny_pair, options=options)
    engine.generate(["Name a color."], n=2, max_new_tokens=6, seed=0)
    assert calls and set(calls) == {1}  # every graph-step forward; the prompt stays sdpa
    assert tiny_pair.base.config._attn_implementation == "sdpa"  # restored afterwards
