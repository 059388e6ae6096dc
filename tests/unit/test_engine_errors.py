"""Bad input is rejected with a clear error before any model work (shared_core/engine.py)."""

from __future__ import annotations

import math

import pytest

import shared_core.model_state as engine_module

BAD_CALLS = [
    ({"router": "judge"}, ValueError, "valid routers: aligned, base, rand, p, h"),
    ({"router": "p", "gamma": 2e9 * -1}, ValueError, "gamma"),
    ({"router": "rand", "gamma": 1.5}, ValueError, r"gamma .*\[0, 1\]"),
    ({"gamma": math.inf}, ValueError, "gamma"),
    ({"n": 0}, ValueError, "n must be"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    ({"stop": 7}, TypeError, "stop must be a string or a list of strings"),
    ({"stop": ["x", None]}, TypeError, r"stop\[1\]"),
    ({"temperature": math.nan}, ValueError, "temperature"),
    ({"tempreature": 1.0}, TypeError, "unknown generation option"),
]
BAD_PROMPTS = [
    ("", ValueError, "empty"),
    ([], ValueError, "no prompts|empty"),
    ([{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], ValueError, "role"),
    ([{"role": "user", "content": ["not", "text"]}], TypeError, "content must be a string"),
    ("word " * 700, ValueError, "context window"),
    (["fine", ""], ValueError, "prompt 1"),
]


@pytest.fixture
def no_model_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("model work started before validation")

    monkeypatch.setattr(engine_module, "forward_last_logits", fail)


@pytest.mark.parametrize(("options", "error", "match"), BAD_CALLS)
def test_bad_options(tiny_engine, no_model_work, options, error, match):
    with pytest.raises(error, match=match):
        tiny_engine.generate("hi", **options)
    with pytest.raises(error, match=match):
        tiny_engine.stream("hi", **options)


@pytest.mark.parametrize(("prompt", "error", "match"), BAD_PROMPTS)
def test_bad_prompts(tiny_engine, no_model_work, prompt, error, match):
    with pytest.raises(error, match=match):
        tiny_engine.generate(prompt)


def test_request_too_large_for_memory_is_refused_before_work(tiny_engine, no_model_work):
    with pytest.raises(ValueError, match="lower n, max_new_tokens"):
        tiny_engine.generate(["hi"] * 64, n=4096, max_new_tokens=131072)


def test_one_bad_prompt_in_a_batch_with_return_exceptions(tiny_engine):
    prompts = ["Tell me a story.", "", "word " * 700, "Name a color."]
    result = tiny_engine.generate(prompts, return_exceptions=True, n=2, max_new_tokens=6, seed=1)
    assert isinstance(result[1], ValueError) and "prompt 1" in str(result[1])
    assert isinstance(result[2], ValueError) and "context window" in str(result[2])
    good = tiny_engine.generate([prompts[0], prompts[3]], n=2, max_new_tokens=6, seed=1)
    assert [g.token_ids for g in result[0]] == [g.token_ids for g in good[0]]
    assert [g.token_ids for g in result[3]] == [g.token_ids for g in good[1]]
    only_bad = tiny_engine.generate(["", []], return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in only_bad)
